//! Static assets: the browser client, embedded in the binary at build time
//! (no Node is needed to run the server), and the app's static pages.

use super::response::{ResponseBody, respond};
use http::{HeaderValue, Response, StatusCode, header};

/// The JavaScript client (client/js), one ES module.
const CLIENT_MODULE: &str = include_str!("../../client/js/scaled-sockets.js");

/// `GET /scaled-sockets.js`.
pub(super) fn client_module() -> Response<ResponseBody> {
    let mut res = respond(
        StatusCode::OK,
        "text/javascript; charset=utf-8",
        CLIENT_MODULE,
    );
    // Cached briefly: a deploy updates it within minutes.
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    res
}

/// A page the app registered with `App::page`.
pub(super) fn page(content_type: &'static str, body: &'static str) -> Response<ResponseBody> {
    let mut res = respond(StatusCode::OK, content_type, body);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}
