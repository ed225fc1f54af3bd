//! The WebSocket upgrade (`GET /ws`): checks the request, refuses it while
//! draining, and hands the upgraded socket to a connection task.

use super::{
    ScaledSocketsService,
    response::{ResponseBody, text},
};
use crate::connection;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

impl ScaledSocketsService {
    pub(super) fn upgrade<B>(&self, mut req: Request<B>) -> Response<ResponseBody> {
        // The accept gate's slot (when served by `Server::serve`) goes with
        // the socket, to be freed once the handshake is over.
        let slot = req.extensions_mut().remove::<crate::admission::Slot>();
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
        let Some(guard) = self.endpoint.hub.drain_guard() else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        };
        let accept = derive_accept_key(key.as_bytes());
        let endpoint = self.endpoint.clone();
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(connection::serve_upgrade(endpoint, on_upgrade, guard, slot));
        let mut res = Response::new(ResponseBody::default());
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = res.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        res
    }
}
