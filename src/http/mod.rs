//! HTTP routes: the WebSocket upgrade at `/ws`, its HTTP fallback at `/sse`, probes, metrics and the
//! key-protected HTTP API, as one hyper and tower service, so an existing axum
//! or hyper app can mount it.
//!
//! - [`upgrade`]: `GET /ws`, handing sockets to connection tasks.
//! - [`probes`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`api`]: `/api/publish`, `/api/tell`, `/api/cluster`.
//! - [`assets`]: the JavaScript client at `/scaled-sockets.js` and the app's
//!   static pages.
//! - [`sse`]: the HTTP fallback, `GET /sse` and `POST /sse/send`.
//! - [`response`]: response and body helpers.

mod api;
mod assets;
mod probes;
mod response;
mod sse;
mod upgrade;

pub use response::ResponseBody;

use crate::connection::Endpoint;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use response::{BoxError, text};
use std::{convert::Infallible, task::Poll};

/// Serves every route of one instance (`/ws`, `/healthz`, `/readyz`,
/// `/metrics`, `/api/*`). Implements both `hyper::service::Service` and
/// `tower_service::Service`, for any request body.
#[derive(Clone, Debug)]
pub struct ScaledSocketsService {
    pub(crate) endpoint: Endpoint,
    /// Upgrade on any path (for mounting at a route of the host app's choice).
    pub(crate) websocket_only: bool,
}

impl ScaledSocketsService {
    async fn handle<B>(self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        if self.websocket_only {
            return self.upgrade(req);
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/ws") => self.upgrade(req),
            (&Method::GET, "/sse") => self.sse_stream(&req),
            (&Method::POST, "/sse/send") => self.sse_send(req).await,
            (&Method::GET, "/healthz") => probes::healthz(),
            (&Method::GET, "/readyz") => probes::readyz(&self.endpoint.hub).await,
            (&Method::GET, "/metrics") => probes::metrics(&self.endpoint.hub).await,
            (&Method::GET, "/scaled-sockets.js") => assets::client_module(),
            (_, path) if path.starts_with("/api/") => self.api(req).await,
            (&Method::GET, path) => match self.endpoint.app.pages.get(path) {
                Some((content_type, body)) => assets::page(content_type, body),
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl<B> hyper::service::Service<Request<B>> for ScaledSocketsService
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

impl<B> tower_service::Service<Request<B>> for ScaledSocketsService
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        hyper::service::Service::call(&*self, req)
    }
}
