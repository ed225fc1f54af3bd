//! The demo: the standalone server plus a few handlers written with the library.
//!
//! ```text
//! cargo run --release --example demo -- --allow-anonymous
//! ```
//!
//! - ask `echo`: replies with its data.
//! - ask `whoami`: replies `{"user", "client", "instance"}`.
//! - tell `echo`: tells the same client `echo` with the same data.
//! - ask `spawn` `{"kind","core"}`: spawns the core on the least-loaded
//!   instance; replies `{"core","instance"}`.
//! - core kind `counter`: `join` replies `{"value"}`; tell `incr` adds one and
//!   tells every member `value`; ask `get` replies `{"value","instance"}`.

use scaled_sockets::{App, CommandError, Context, Core, CoreContext, Data, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;

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

#[derive(Deserialize)]
struct Spawn {
    kind: String,
    core: String,
}

#[derive(Serialize)]
struct Spawned {
    core: String,
    instance: String,
}

async fn spawn(cx: Context, Json(spawn): Json<Spawn>) -> Result<Spawned, CommandError> {
    let instance = cx
        .sockets
        .spawn_core(&spawn.kind, &spawn.core, &Data::null())
        .await?;
    Ok(Spawned {
        core: spawn.core,
        instance,
    })
}

/// A counter shared by its members. It saves no snapshot: a respawned
/// counter starts again at 0.
#[derive(Default)]
struct Counter {
    value: u64,
}

#[scaled_sockets::async_trait]
impl Core for Counter {
    async fn join(
        &mut self,
        _cx: &CoreContext,
        _member: &str,
        _data: Data,
    ) -> Result<Data, CommandError> {
        Data::json(&json!({ "value": self.value }))
    }

    async fn tell(&mut self, cx: &CoreContext, _member: &str, event: &str, _data: Data) {
        if event == "incr" {
            self.value += 1;
            if let Ok(data) = Data::json(&json!({ "value": self.value })) {
                let _ = cx.broadcast("value", &data);
            }
        }
    }

    async fn ask(
        &mut self,
        cx: &CoreContext,
        _member: &str,
        event: &str,
        _data: Data,
    ) -> Result<Data, CommandError> {
        match event {
            "get" => Data::json(&json!({ "value": self.value, "instance": cx.instance() })),
            _ => Err(CommandError::not_found(format!(
                "counter has no ask `{event}`"
            ))),
        }
    }
}

#[derive(Deserialize)]
struct SessionSet {
    key: String,
    value: Data,
}

/// ask `session_set`: stores a value in the caller's session data, shared by
/// every connection of the session and kept in the scaler.
async fn session_set(
    cx: Context,
    Json(set): Json<SessionSet>,
) -> Result<serde_json::Value, CommandError> {
    cx.session().set(&set.key, &set.value).await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct SessionGet {
    key: String,
}

#[derive(Serialize)]
struct SessionValue {
    value: Option<Data>,
}

/// ask `session_get`: `{"value": V}`, `null` when absent.
async fn session_get(
    cx: Context,
    Json(get): Json<SessionGet>,
) -> Result<SessionValue, CommandError> {
    Ok(SessionValue {
        value: cx.session().get(&get.key).await?,
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let app = App::new()
        .ask("echo", echo)
        .ask("whoami", whoami)
        .ask("spawn", spawn)
        .ask("session_set", session_set)
        .ask("session_get", session_get)
        .tell("echo", tell_echo)
        .core("counter", Counter::default)
        // The page a person can use: chat with presence, a counter core, the
        // connection state. It loads the client from /scaled-sockets.js.
        .page(
            "/",
            "text/html; charset=utf-8",
            include_str!("../client/js/demo/index.html"),
        );
    scaled_sockets::cli::run(app).await
}
