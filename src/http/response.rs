//! Response helpers shared by the routes.

use crate::error::ErrorCode;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use serde::Serialize;

/// Largest accepted HTTP API body.
const MAX_API_BODY: usize = 1 << 20;

/// Errors of request bodies, as hyper and tower bodies give them.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of every route: a whole body, or the event stream of
/// `/sse`.
pub type ResponseBody = BoxBody<Bytes, std::convert::Infallible>;

pub(super) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut res = Response::new(Full::new(body.into()).boxed());
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

pub(super) fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    respond(status, "application/json", body)
}

pub(super) fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    respond(status, "text/plain; charset=utf-8", body)
}

pub(super) fn api_error(
    status: StatusCode,
    code: ErrorCode,
    message: &str,
) -> Response<ResponseBody> {
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
pub(super) async fn read_body<B>(req: Request<B>) -> Result<Bytes, Response<ResponseBody>>
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
