//! The floor: the least a server can do for the same job, to measure ours
//! against. tokio-tungstenite, JSON `connect`/`subscribe`/`publish` with the
//! wire protocol's frame shapes, one Redis SUBSCRIBE per channel per process,
//! one encoded frame per message shared by every local subscriber, one flush
//! per batch of queued frames. No history, no auth, no presence, no sessions:
//! offsets are always 0 and the epoch is `"floor"`.
//!
//! - [`hub`] — channel -> local subscribers, and the Redis side.
//! - [`conn`] — one WebSocket connection.

mod conn;
mod hub;

use crate::cli::FloorArgs;
use hub::Hub;
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn serve(args: FloorArgs) -> Result<(), String> {
    let hub = Hub::connect(&args.redis).await?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("floor: bind {}: {e}", args.listen))?;
    eprintln!("floor listening on {}", args.listen);
    let mut next_id = 0u64;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: report and keep serving.
                eprintln!("floor: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        next_id += 1;
        let _ = stream.set_nodelay(true);
        tokio::spawn(conn::run(stream, next_id, Arc::clone(&hub)));
    }
}
