//! The demo: the standalone server plus a few handlers written with the library.
//!
//! ```text
//! cargo run --release --example demo -- --allow-anonymous
//! ```
//!
//! - ask `echo`: replies with its data.
//! - ask `whoami`: replies `{"user", "client", "instance"}`.
//! - tell `echo`: tells the same client `echo` with the same data.
//! - ask `spawn`: answers `not_found` until cores land.

use scaled_sockets::{App, CommandError, Context, Data};
use serde::Serialize;

/// Raw `Data` in and out: the value comes back exactly as it was sent.
async fn echo(_cx: Context, data: Data) -> Result<Data, CommandError> {
    Ok(data)
}

#[derive(Serialize)]
struct WhoAmI {
    user: Option<String>,
    client: String,
    instance: String,
}

/// Any `Serialize` value is a reply.
async fn whoami(cx: Context, _data: Data) -> Result<WhoAmI, CommandError> {
    Ok(WhoAmI {
        user: cx.user.as_deref().map(str::to_owned),
        client: cx.client.to_string(),
        instance: cx.instance().to_owned(),
    })
}

async fn tell_echo(cx: Context, data: Data) {
    if let Err(e) = cx.sockets.tell_client(&cx.client, "echo", &data).await {
        tracing::warn!(error = %e, "echo tell failed");
    }
}

async fn spawn(_cx: Context, _data: Data) -> Result<Data, CommandError> {
    Err(CommandError::not_found(
        "cores are not available in this version",
    ))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let app = App::new()
        .ask("echo", echo)
        .ask("whoami", whoami)
        .ask("spawn", spawn)
        .tell("echo", tell_echo)
        // The page a person can use: chat with presence, a counter core, the
        // connection state. It loads the client from /scaled-sockets.js.
        .page(
            "/",
            "text/html; charset=utf-8",
            include_str!("../client/js/demo/index.html"),
        );
    scaled_sockets::cli::run(app).await
}
