//! The HTTP fallback's routes: `GET /sse` opens a connection whose server
//! frames come as an event stream; `POST /sse/send` carries client frames to
//! that connection from whichever instance receives the POST.

use super::{
    ScaledSocketsService,
    response::{BoxError, ResponseBody, api_error, text},
};
use crate::{connection, error::ErrorCode, metrics::Metrics, protocol};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Frames one POST may carry.
const MAX_FRAMES_PER_POST: usize = 64;

/// The longest client or session id accepted (ours are far shorter).
const MAX_ID_BYTES: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody<'a> {
    #[serde(borrow)]
    session: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    client: std::borrow::Cow<'a, str>,
    seq: u64,
    frames: Vec<Box<RawValue>>,
}

impl ScaledSocketsService {
    /// `GET /sse?connect=…`: 400 for a bad `connect`, 503 while draining,
    /// else a 200 event stream driven by a connection task.
    pub(super) fn sse_stream<B>(&self, req: &Request<B>) -> Response<ResponseBody> {
        let max = self.endpoint.hub.config.max_frame_bytes;
        let query = req.uri().query().unwrap_or("");
        // Percent-encoding at most triples a frame.
        if query.len() > max.saturating_mul(3) + 16 {
            return bad_request("the connect parameter is too large");
        }
        let Some(connect) = form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "connect")
            .map(|(_, value)| value.into_owned())
        else {
            return bad_request("missing the connect parameter");
        };
        if connect.len() > max {
            return bad_request("the connect frame is too large");
        }
        match protocol::parse_client_frame(&connect) {
            Ok(protocol::ClientFrame::Connect { .. }) => {}
            Ok(_) => return bad_request("the connect parameter must be a `connect` frame"),
            Err(bad) => return bad_request(&bad.message),
        }
        let Some(guard) = self.endpoint.hub.drain_guard() else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        };
        let body = connection::serve_sse(self.endpoint.clone(), connect, guard);
        let mut res = Response::new(body.boxed());
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // NGINX would otherwise buffer the stream and hold events back.
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        res
    }

    /// `POST /sse/send`: 204 once the stream's instance took the frames.
    pub(super) async fn sse_send<B>(self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let hub = &self.endpoint.hub;
        Metrics::inc(&hub.metrics.sse_posts_total);
        let limit = hub
            .config
            .max_frame_bytes
            .saturating_mul(MAX_FRAMES_PER_POST)
            .min(4 << 20);
        let body = match Limited::new(req.into_body(), limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return bad_request("body unreadable or too large"),
        };
        let parsed: SendBody<'_> = match serde_json::from_slice(&body) {
            Ok(parsed) => parsed,
            Err(e) => return bad_request(&format!("bad body: {e}")),
        };
        if parsed.seq == 0 {
            return bad_request("seq starts at 1");
        }
        if parsed.session.len() > MAX_ID_BYTES || parsed.client.len() > MAX_ID_BYTES {
            return bad_request("session or client too long");
        }
        if parsed.frames.len() > MAX_FRAMES_PER_POST {
            return bad_request("too many frames in one POST");
        }
        if parsed
            .frames
            .iter()
            .any(|f| f.get().len() > hub.config.max_frame_bytes)
        {
            return bad_request("a frame is larger than the frame limit");
        }
        if crate::hub::instance_of(&parsed.client) != Some(&*hub.id) {
            Metrics::inc(&hub.metrics.sse_posts_forwarded_total);
        }
        match hub
            .upload(&parsed.session, &parsed.client, parsed.seq, parsed.frames)
            .await
        {
            Ok(()) => {
                let mut res = Response::new(ResponseBody::default());
                *res.status_mut() = StatusCode::NO_CONTENT;
                res
            }
            Err(e) => {
                let status = match e.code {
                    ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
                    ErrorCode::NotFound => StatusCode::NOT_FOUND,
                    ErrorCode::RateLimited | ErrorCode::LimitExceeded => {
                        StatusCode::TOO_MANY_REQUESTS
                    }
                    ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
                    ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                api_error(status, e.code, &e.message)
            }
        }
    }
}

fn bad_request(message: &str) -> Response<ResponseBody> {
    api_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
}
