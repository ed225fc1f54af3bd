//! HTTP routes: the WebSocket upgrade at `/ws`, health, readiness, metrics and
//! the key-protected HTTP API. Exposed as a hyper service and a tower service,
//! so an existing axum or hyper app can mount it.

use crate::{connection, error::ErrorCode, node::Node};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::{convert::Infallible, sync::Arc, task::Poll};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest accepted HTTP API body.
const MAX_API_BODY: usize = 1 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of every route.
pub type ResponseBody = Full<Bytes>;

/// Serves every route of one instance (`/ws`, `/healthz`, `/readyz`,
/// `/metrics`, `/api/*`). Implements both `hyper::service::Service` and
/// `tower_service::Service`, for any request body.
#[derive(Clone, Debug)]
pub struct ScaledSocketsService {
    pub(crate) node: Arc<Node>,
    /// Upgrade on any path (for mounting at a route of the host app's choice).
    pub(crate) websocket_only: bool,
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    respond(status, "application/json", body)
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn api_error(status: StatusCode, code: ErrorCode, message: &str) -> Response<ResponseBody> {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
        message: &'a str,
    }
    let body = serde_json::to_vec(&Body {
        error: code.as_str(),
        message,
    })
    .unwrap_or_default();
    json(status, body)
}

/// Reads an API request body of at most [`MAX_API_BODY`] bytes.
async fn read_body<B>(req: Request<B>) -> Result<Bytes, Response<ResponseBody>>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    match Limited::new(req.into_body(), MAX_API_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "body unreadable or larger than 1 MiB",
        )),
    }
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
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => {
                if self.node.ready().await {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            (&Method::GET, "/metrics") => {
                let ready = self.node.ready().await;
                let body = self
                    .node
                    .metrics
                    .render(&self.node.id, self.node.scaler.name(), ready);
                respond(StatusCode::OK, "text/plain; version=0.0.4", body)
            }
            (_, path) if path.starts_with("/api/") => self.api(req).await,
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn upgrade<B>(&self, req: Request<B>) -> Response<ResponseBody> {
        let headers = req.headers();
        let has_token = |name: header::HeaderName, token: &str| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|v| v.trim().eq_ignore_ascii_case(token))
        };
        let is_upgrade = req.method() == Method::GET
            && has_token(header::CONNECTION, "upgrade")
            && has_token(header::UPGRADE, "websocket");
        if !is_upgrade {
            return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            let mut res = text(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported WebSocket version\n",
            );
            res.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return res;
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
        };
        let Some(guard) = self.node.drain_guard() else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        };
        let accept = derive_accept_key(key.as_bytes());
        let node = self.node.clone();
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(connection::serve_upgrade(node, on_upgrade, guard));
        let mut res = Response::new(Full::new(Bytes::new()));
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = res.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        res
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(key) = &self.node.config.api_key else {
            return false;
        };
        let Some(given) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        // Compare without an early exit, so timing does not reveal the key.
        given.len() == key.len()
            && given
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    async fn api<B>(self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        if self.node.config.api_key.is_none() {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if !self.authorized(&req) {
            let mut res = api_error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "missing or wrong API key",
            );
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return res;
        }
        match (req.method().clone(), req.uri().path()) {
            (Method::POST, "/api/publish") => self.api_publish(req).await,
            (Method::POST, "/api/tell") => self.api_tell(req).await,
            (Method::GET, "/api/cluster") => self.api_cluster().await,
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn api_publish<B>(self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let body = match read_body(req).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        #[derive(Deserialize)]
        struct PublishBody<'a> {
            channel: String,
            #[serde(borrow)]
            data: &'a RawValue,
        }
        let parsed: PublishBody<'_> = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    &format!("expected {{\"channel\": string, \"data\": any}}: {e}"),
                );
            }
        };
        match self.node.publish(&parsed.channel, parsed.data.get()).await {
            Ok(pos) => {
                #[derive(Serialize)]
                struct Published<'a> {
                    offset: u64,
                    epoch: &'a str,
                }
                let body = serde_json::to_vec(&Published {
                    offset: pos.offset,
                    epoch: &pos.epoch,
                })
                .unwrap_or_default();
                json(StatusCode::OK, body)
            }
            Err(e) if e.code == ErrorCode::Unavailable => {
                api_error(StatusCode::SERVICE_UNAVAILABLE, e.code, &e.message)
            }
            Err(e) if e.code == ErrorCode::BadRequest => {
                api_error(StatusCode::BAD_REQUEST, e.code, &e.message)
            }
            Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.code, &e.message),
        }
    }

    /// `POST /api/tell` `{"user"|"session"|"client": id, "event": e, "data": …}`:
    /// a `tell` to every connection of a user or session, or to one client,
    /// wherever they are connected. 200 `{}`; 400 bad body; 503 when the
    /// backend is down; 404 for an unknown client.
    async fn api_tell<B>(self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let body = match read_body(req).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        #[derive(Deserialize)]
        struct TellBody<'a> {
            user: Option<String>,
            session: Option<String>,
            client: Option<String>,
            event: String,
            #[serde(borrow)]
            data: Option<&'a RawValue>,
        }
        let parsed: TellBody<'_> = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    &format!(
                        "expected {{\"user\"|\"session\"|\"client\": string, \"event\": string, \"data\": any}}: {e}"
                    ),
                );
            }
        };
        let data = match parsed.data {
            Some(raw) => crate::Data::from(raw),
            None => crate::Data::null(),
        };
        let sockets = crate::Sockets {
            node: self.node.clone(),
        };
        let result = match (parsed.user, parsed.session, parsed.client) {
            (Some(user), None, None) => sockets.tell_user(&user, &parsed.event, &data).await,
            (None, Some(session), None) => {
                sockets.tell_session(&session, &parsed.event, &data).await
            }
            (None, None, Some(client)) => sockets.tell_client(&client, &parsed.event, &data).await,
            _ => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    "name exactly one of `user`, `session` or `client`",
                );
            }
        };
        match result {
            Ok(()) => json(StatusCode::OK, "{}"),
            Err(e) => {
                let status = match e.code {
                    ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
                    ErrorCode::NotFound => StatusCode::NOT_FOUND,
                    ErrorCode::Unavailable | ErrorCode::Timeout => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                api_error(status, e.code, &e.message)
            }
        }
    }

    async fn api_cluster(self) -> Response<ResponseBody> {
        #[derive(Serialize)]
        struct Instance {
            id: String,
            address: String,
            connections: u64,
            cores: u64,
        }
        #[derive(Serialize)]
        struct Core {
            id: String,
            kind: String,
            instance: String,
        }
        #[derive(Serialize)]
        struct Cluster {
            instances: Vec<Instance>,
            cores: Vec<Core>,
        }
        let timeout = self.node.config.scaler_timeout;
        let instances = match crate::node::bounded(timeout, self.node.scaler.instances()).await {
            Ok(list) => list,
            Err(e) => {
                return api_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    &e.to_string(),
                );
            }
        };
        let mut instances: Vec<Instance> = instances
            .into_iter()
            .map(|i| Instance {
                id: i.id,
                address: i.address,
                connections: i.connections,
                cores: i.cores,
            })
            .collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        let body = serde_json::to_vec(&Cluster {
            instances,
            cores: Vec::new(),
        })
        .unwrap_or_default();
        json(StatusCode::OK, body)
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
