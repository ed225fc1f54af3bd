//! Mounting Scaled Sockets in an existing axum app.
//!
//! ```text
//! cargo run --example axum_mount
//! # then: a WebSocket client on ws://127.0.0.1:3000/ws, and
//! curl -X POST 127.0.0.1:3000/announce -d 'hello'   # published on channel "news"
//! ```

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use scaled_sockets::{AllowAnonymous, App, Config, Context, Data, MemoryScaler, Server, Sockets};
use std::sync::Arc;

async fn announce(
    State(sockets): State<Sockets>,
    body: String,
) -> Result<String, (StatusCode, String)> {
    let data = Data::json(&body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let position = sockets
        .publish("news", &data)
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(format!("published at offset {}\n", position.offset))
}

/// Builds the host app's router with the WebSocket endpoint mounted at `/ws`.
pub fn router(server: &Server) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { "the host app's own routes still work\n" }),
        )
        .route("/announce", post(announce))
        .route_service("/ws", server.websocket_service())
        .with_state(server.sockets())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let app = App::new()
        .authenticator(AllowAnonymous)
        .ask("echo", |_cx: Context, data: Data| async move { Ok(data) });
    let server = Server::start(Config::default(), Arc::new(MemoryScaler::new()), app).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    tracing::info!("listening on {}", listener.local_addr()?);
    axum::serve(listener, router(&server))
        .with_graceful_shutdown(async move {
            scaled_sockets::cli::shutdown_signal().await;
            // Tell WebSocket clients to reconnect elsewhere, leave the cluster.
            server.drain().await;
        })
        .await?;
    Ok(())
}
