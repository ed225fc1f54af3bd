//! Building server frames (the server's side of the protocol).
//!
//! Every builder returns the frame's JSON text. A server that sends through
//! tungstenite turns it into a text message with `Utf8Bytes::from(String)`,
//! which takes the buffer without copying; a publication frame is built once
//! per instance and shared by every local subscriber.
//!
//! `data` arguments are raw JSON text, written verbatim (the value the client
//! sent, integers beyond 64 bits included).

use crate::codes::ErrorCode;
use crate::writer::FrameWriter;

/// The `ping` push's text.
pub const PING: &str = "{\"type\":\"ping\"}";

/// `{"type":"reply","id":N}` plus fields added by the caller.
pub fn reply(id: u64) -> FrameWriter {
    FrameWriter::new("reply").u64("id", id)
}

/// `{"type":"reply","id":N,"data":…}` (answers `ask`, `join`, `presence`).
pub fn reply_data(id: u64, data: &str) -> String {
    reply(id).raw("data", data).finish()
}

/// `{"type":"reply","id":N,"offset":N,"epoch":"E"}`, plus `"recovered":B`
/// when given (answers `subscribe` and `publish`).
pub fn reply_position(id: u64, offset: u64, epoch: &str, recovered: Option<bool>) -> String {
    let w = reply(id).u64("offset", offset).str("epoch", epoch);
    match recovered {
        Some(recovered) => w.bool("recovered", recovered),
        None => w,
    }
    .finish()
}

/// `{"type":"error","id":N,"code":…,"message":…}`, without `id` when `None`.
pub fn error(id: Option<u64>, code: ErrorCode, message: &str) -> String {
    let mut w = FrameWriter::new("error");
    if let Some(id) = id {
        w = w.u64("id", id);
    }
    w.str("code", code.as_str())
        .str("message", message)
        .finish()
}

/// The `welcome` frame answering `connect`; `user` is `null` when anonymous.
pub fn welcome(
    session: &str,
    client: &str,
    instance: &str,
    user: Option<&str>,
    ping_interval_ms: u64,
    resumed: bool,
) -> String {
    FrameWriter::new("welcome")
        .str("session", session)
        .str("client", client)
        .str("instance", instance)
        .opt_str("user", user)
        .u64("ping_interval", ping_interval_ms)
        .bool("resumed", resumed)
        .finish()
}

/// A channel publication frame, encoded once per instance.
pub fn message(channel: &str, data: &str, offset: u64, epoch: &str) -> String {
    FrameWriter::new("message")
        .str("channel", channel)
        .raw("data", data)
        .u64("offset", offset)
        .str("epoch", epoch)
        .finish()
}

/// A server `tell` frame (with `core` when a core sent it).
pub fn tell(event: &str, data: &str, core: Option<&str>) -> String {
    let mut w = FrameWriter::new("tell")
        .str("event", event)
        .raw("data", data);
    if let Some(core) = core {
        w = w.str("core", core);
    }
    w.finish()
}

/// A server `ask` frame; the client answers `reply` or `error` with `id`.
pub fn ask(id: u64, event: &str, data: &str, core: Option<&str>) -> String {
    let mut w = FrameWriter::new("ask")
        .u64("id", id)
        .str("event", event)
        .raw("data", data);
    if let Some(core) = core {
        w = w.str("core", core);
    }
    w.finish()
}

/// A `subscribed` push.
pub fn subscribed(channel: &str, offset: u64, epoch: &str, recovered: bool) -> String {
    FrameWriter::new("subscribed")
        .str("channel", channel)
        .u64("offset", offset)
        .str("epoch", epoch)
        .bool("recovered", recovered)
        .finish()
}

/// An `unsubscribed` push.
pub fn unsubscribed(channel: &str, reason: &str) -> String {
    FrameWriter::new("unsubscribed")
        .str("channel", channel)
        .str("reason", reason)
        .finish()
}

/// A `left` push: the client is no longer a member of `core`.
pub fn left(core: &str, reason: &str, rejoin: bool) -> String {
    FrameWriter::new("left")
        .str("core", core)
        .str("reason", reason)
        .bool("rejoin", rejoin)
        .finish()
}

/// A `disconnect` push, sent just before the server closes with `code`.
pub fn disconnect(code: u16, reason: &str, reconnect: bool) -> String {
    FrameWriter::new("disconnect")
        .u64("code", u64::from(code))
        .str("reason", reason)
        .bool("reconnect", reconnect)
        .finish()
}

/// The `ping` push ([`PING`] as a `String`).
pub fn ping() -> String {
    PING.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn value(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn strings_are_escaped_and_data_is_verbatim() {
        let f = message("c\"1", r#"{"a":123456789012345678901234567890}"#, 4, "e");
        assert!(f.contains(r#""data":{"a":123456789012345678901234567890}"#));
        let v = value(&f);
        assert_eq!(v["channel"], "c\"1");
        assert_eq!(v["offset"], 4);
    }

    #[test]
    fn error_without_id_has_no_id_field() {
        let v = value(&error(None, ErrorCode::BadRequest, "x"));
        assert!(v.get("id").is_none());
        assert_eq!(v["code"], "bad_request");
        let v = value(&error(Some(3), ErrorCode::Other("new_code".into()), "y"));
        assert_eq!(
            (v["id"].as_u64(), v["code"].as_str()),
            (Some(3), Some("new_code"))
        );
    }

    #[test]
    fn optional_fields_are_omitted() {
        assert!(value(&tell("e", "1", None)).get("core").is_none());
        assert!(value(&ask(1, "e", "1", None)).get("core").is_none());
        assert!(
            value(&reply_position(1, 2, "E", None))
                .get("recovered")
                .is_none()
        );
        assert_eq!(value(&ping()), value(PING));
    }
}
