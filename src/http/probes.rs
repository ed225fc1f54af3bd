//! Probes for orchestrators and scrapers: liveness, readiness, metrics.

use super::response::{ResponseBody, respond, text};
use crate::hub::Hub;
use http::{Response, StatusCode};

/// `GET /healthz`: 200 while the process runs.
pub(super) fn healthz() -> Response<ResponseBody> {
    text(StatusCode::OK, "ok\n")
}

/// `GET /readyz`: 200 while the backend answers and the feed is live, 503
/// otherwise and while draining.
pub(super) async fn readyz(hub: &Hub) -> Response<ResponseBody> {
    if hub.ready().await {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// `GET /metrics`: the Prometheus text format.
pub(super) async fn metrics(hub: &Hub) -> Response<ResponseBody> {
    let ready = hub.ready().await;
    let body = hub.metrics.render(&hub.id, hub.scaler.name(), ready);
    respond(StatusCode::OK, "text/plain; version=0.0.4", body)
}
