//! Wire protocol v1: parsing client frames and encoding server frames.
//!
//! Client frames are parsed without building a JSON tree: every field is
//! borrowed as raw JSON text first, then checked for its type. That keeps a
//! publication's `data` as the exact bytes the client sent (integers beyond
//! 64 bits included) and costs one pass over the frame.
//!
//! Server frames are written straight into a byte buffer; a publication frame
//! is encoded once per instance and shared by every local subscriber.

use crate::error::ErrorCode;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Close codes of the wire protocol (docs/protocol.md).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// A binary frame was received.
    pub const BINARY: u16 = 1003;
    /// A frame was larger than the limit.
    pub const TOO_LARGE: u16 = 1009;
    /// The instance is restarting: reconnect (anywhere).
    pub const RESTARTING: u16 = 1012;
    /// Protocol violation.
    pub const PROTOCOL: u16 = 4000;
    /// Unauthorized, or the token expired.
    pub const UNAUTHORIZED: u16 = 4001;
    /// Policy: rate limit or slow consumer.
    pub const POLICY: u16 = 4008;
    /// No `connect` within the handshake timeout.
    pub const HANDSHAKE_TIMEOUT: u16 = 4009;
    /// No sign of life for two ping intervals.
    pub const NO_PONG: u16 = 4010;
}

/// Longest accepted channel, event, core or session name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Every field a client frame may carry, borrowed as raw JSON. A field that is
/// present with the value `null` is `Some("null")`, not `None`.
#[derive(Debug, Default, Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    session: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    subscriptions: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    offset: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    epoch: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    event: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    core: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    code: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    message: Option<&'a RawValue>,
}

/// A subscription position sent by a client (in `connect.subscriptions` or
/// `subscribe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRequest {
    /// The channel.
    pub channel: String,
    /// Last offset the client saw, if it wants recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Epoch of that offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// A parsed, type-checked client frame.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// `connect` (only valid as the first frame).
    Connect {
        /// The frame's id, if it had a usable one (only answered after the
        /// handshake, when a second `connect` is refused).
        id: Option<u64>,
        /// JWT, when given.
        token: Option<Cow<'a, str>>,
        /// Session to resume.
        session: Option<Cow<'a, str>>,
        /// Channels to (re)subscribe with positions.
        subscriptions: Vec<SubscriptionRequest>,
    },
    /// `subscribe`.
    Subscribe {
        /// Command id.
        id: u64,
        /// Channel and optional recovery position.
        request: SubscriptionRequest,
    },
    /// `unsubscribe`.
    Unsubscribe {
        /// Command id.
        id: u64,
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// `publish`.
    Publish {
        /// Command id.
        id: u64,
        /// The channel.
        channel: Cow<'a, str>,
        /// The raw JSON data.
        data: &'a RawValue,
    },
    /// `ask`.
    Ask {
        /// Command id.
        id: u64,
        /// Event name.
        event: Cow<'a, str>,
        /// Raw JSON data (`null` when absent).
        data: &'a RawValue,
        /// Target core, if any.
        core: Option<Cow<'a, str>>,
    },
    /// `tell` (no answer).
    Tell {
        /// Event name.
        event: Cow<'a, str>,
        /// Raw JSON data (`null` when absent).
        data: &'a RawValue,
        /// Target core, if any.
        core: Option<Cow<'a, str>>,
    },
    /// `join` a core.
    Join {
        /// Command id.
        id: u64,
        /// Core id.
        core: Cow<'a, str>,
        /// Raw JSON data (`null` when absent).
        data: &'a RawValue,
    },
    /// `leave` a core.
    Leave {
        /// Command id.
        id: u64,
        /// Core id.
        core: Cow<'a, str>,
    },
    /// `presence` of a channel.
    Presence {
        /// Command id.
        id: u64,
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// The client's answer to a server `ask`.
    Reply {
        /// The server ask's id.
        id: u64,
        /// Raw JSON data (`null` when absent).
        data: &'a RawValue,
    },
    /// The client's error answer to a server `ask`.
    Error {
        /// The server ask's id.
        id: u64,
        /// Error code as sent.
        code: String,
        /// Message as sent.
        message: String,
    },
    /// Answer to a server ping.
    Pong,
}

/// Why a frame was rejected: answered `error` `bad_request`, with the id when
/// the frame had a usable one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    /// The frame's id, if usable.
    pub id: Option<u64>,
    /// Human text.
    pub message: String,
    /// True when the frame was a `connect` (before the handshake that is fatal).
    pub was_connect: bool,
}

const NULL: &str = "null";

fn null_raw<'a>() -> &'a RawValue {
    // `null` is valid JSON and 'static text; this cannot fail.
    serde_json::from_str::<&'static RawValue>(NULL).unwrap_or_else(|_| unreachable!())
}

fn as_string<'a>(raw: &'a RawValue, field: &str) -> Result<Cow<'a, str>, String> {
    serde_json::from_str::<Cow<'a, str>>(raw.get())
        .map_err(|_| format!("`{field}` must be a string"))
}

fn as_u64(raw: &RawValue, field: &str) -> Result<u64, String> {
    serde_json::from_str::<u64>(raw.get())
        .map_err(|_| format!("`{field}` must be a non-negative integer"))
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == NULL
}

/// Checks a channel, event, core or session name: a non-empty string of at most
/// [`MAX_NAME_BYTES`] bytes without control characters.
pub fn validate_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("`{what}` must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("`{what}` is longer than {MAX_NAME_BYTES} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("`{what}` must not contain control characters"));
    }
    Ok(())
}

impl<'a> RawFrame<'a> {
    fn required_name(
        &self,
        raw: Option<&'a RawValue>,
        field: &str,
    ) -> Result<Cow<'a, str>, String> {
        let raw = raw
            .filter(|r| !is_null(r))
            .ok_or_else(|| format!("`{field}` is required"))?;
        let name = as_string(raw, field)?;
        validate_name(&name, field)?;
        Ok(name)
    }

    fn optional_name(
        &self,
        raw: Option<&'a RawValue>,
        field: &str,
    ) -> Result<Option<Cow<'a, str>>, String> {
        match raw.filter(|r| !is_null(r)) {
            None => Ok(None),
            Some(_) => self.required_name(raw, field).map(Some),
        }
    }

    fn data_or_null(&self) -> &'a RawValue {
        self.data.unwrap_or_else(null_raw)
    }
}

/// Parses one text frame.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame<'_>, BadFrame> {
    let bad = |id, message: String| BadFrame {
        id,
        message,
        was_connect: false,
    };
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        let message = if serde_json::from_str::<&RawValue>(text).is_ok() {
            "a frame must be a JSON object".to_owned()
        } else {
            "a frame must be valid JSON".to_owned()
        };
        return Err(bad(None, message));
    }
    let raw: RawFrame<'_> = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) => return Err(bad(None, format!("invalid JSON frame: {e}"))),
    };
    // A usable id is an integer >= 1; anything else (or none) means the error is
    // answered without an id.
    let id = raw
        .id
        .filter(|r| !is_null(r))
        .and_then(|r| serde_json::from_str::<u64>(r.get()).ok())
        .filter(|id| *id >= 1);
    let id_field_present_but_bad = raw.id.is_some_and(|r| !is_null(r)) && id.is_none();
    let kind = match raw.kind.filter(|r| !is_null(r)) {
        None => return Err(bad(id, "`type` is required".into())),
        Some(k) => as_string(k, "type").map_err(|m| bad(id, m))?,
    };
    let need_id = |kind: &str| -> Result<u64, BadFrame> {
        if id_field_present_but_bad {
            return Err(bad(None, "`id` must be an integer >= 1".into()));
        }
        id.ok_or_else(|| bad(None, format!("`{kind}` needs an `id`")))
    };
    match kind.as_ref() {
        "connect" => {
            let token = raw.optional_name_any(raw.token, "token");
            let session = raw.optional_name(raw.session, "session");
            let subscriptions = match raw.subscriptions.filter(|r| !is_null(r)) {
                None => Ok(Vec::new()),
                Some(r) => serde_json::from_str::<Vec<SubscriptionRequest>>(r.get())
                    .map_err(|_| {
                        "`subscriptions` must be an array of {channel, offset?, epoch?}".to_owned()
                    })
                    .and_then(|subs| {
                        subs.iter()
                            .try_for_each(|s| validate_name(&s.channel, "channel"))
                            .map(|()| subs)
                    }),
            };
            match (token, session, subscriptions) {
                (Ok(token), Ok(session), Ok(subscriptions)) => Ok(ClientFrame::Connect {
                    id,
                    token,
                    session,
                    subscriptions,
                }),
                (Err(m), _, _) | (_, Err(m), _) | (_, _, Err(m)) => Err(BadFrame {
                    id,
                    message: m,
                    was_connect: true,
                }),
            }
        }
        "subscribe" => {
            let id = need_id("subscribe")?;
            let fields = (|| {
                let channel = raw.required_name(raw.channel, "channel")?;
                let offset = match raw.offset.filter(|r| !is_null(r)) {
                    None => None,
                    Some(r) => Some(as_u64(r, "offset")?),
                };
                let epoch = match raw.epoch.filter(|r| !is_null(r)) {
                    None => None,
                    Some(r) => Some(as_string(r, "epoch")?.into_owned()),
                };
                Ok::<_, String>(SubscriptionRequest {
                    channel: channel.into_owned(),
                    offset,
                    epoch,
                })
            })();
            fields
                .map(|request| ClientFrame::Subscribe { id, request })
                .map_err(|m| bad(Some(id), m))
        }
        "unsubscribe" => {
            let id = need_id("unsubscribe")?;
            raw.required_name(raw.channel, "channel")
                .map(|channel| ClientFrame::Unsubscribe { id, channel })
                .map_err(|m| bad(Some(id), m))
        }
        "publish" => {
            let id = need_id("publish")?;
            let channel = raw
                .required_name(raw.channel, "channel")
                .map_err(|m| bad(Some(id), m))?;
            let data = raw
                .data
                .ok_or_else(|| bad(Some(id), "`data` is required".into()))?;
            Ok(ClientFrame::Publish { id, channel, data })
        }
        "ask" => {
            let id = need_id("ask")?;
            let fields = (|| {
                Ok::<_, String>((
                    raw.required_name(raw.event, "event")?,
                    raw.optional_name(raw.core, "core")?,
                ))
            })();
            fields
                .map(|(event, core)| ClientFrame::Ask {
                    id,
                    event,
                    data: raw.data_or_null(),
                    core,
                })
                .map_err(|m| bad(Some(id), m))
        }
        "tell" => {
            let fields = (|| {
                Ok::<_, String>((
                    raw.required_name(raw.event, "event")?,
                    raw.optional_name(raw.core, "core")?,
                ))
            })();
            fields
                .map(|(event, core)| ClientFrame::Tell {
                    event,
                    data: raw.data_or_null(),
                    core,
                })
                .map_err(|m| bad(id, m))
        }
        "join" => {
            let id = need_id("join")?;
            raw.required_name(raw.core, "core")
                .map(|core| ClientFrame::Join {
                    id,
                    core,
                    data: raw.data_or_null(),
                })
                .map_err(|m| bad(Some(id), m))
        }
        "leave" => {
            let id = need_id("leave")?;
            raw.required_name(raw.core, "core")
                .map(|core| ClientFrame::Leave { id, core })
                .map_err(|m| bad(Some(id), m))
        }
        "presence" => {
            let id = need_id("presence")?;
            raw.required_name(raw.channel, "channel")
                .map(|channel| ClientFrame::Presence { id, channel })
                .map_err(|m| bad(Some(id), m))
        }
        "reply" => {
            let id = need_id("reply")?;
            Ok(ClientFrame::Reply {
                id,
                data: raw.data_or_null(),
            })
        }
        "error" => {
            let id = need_id("error")?;
            let text = |r: Option<&RawValue>| {
                r.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
                    .unwrap_or_default()
            };
            Ok(ClientFrame::Error {
                id,
                code: text(raw.code),
                message: text(raw.message),
            })
        }
        "pong" => Ok(ClientFrame::Pong),
        other => Err(bad(
            id,
            format!(
                "unknown frame type `{}`",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

impl<'a> RawFrame<'a> {
    /// A token may be long (it is a JWT), so it is not held to the name limits.
    fn optional_name_any(
        &self,
        raw: Option<&'a RawValue>,
        field: &str,
    ) -> Result<Option<Cow<'a, str>>, String> {
        match raw.filter(|r| !is_null(r)) {
            None => Ok(None),
            Some(r) => as_string(r, field).map(Some),
        }
    }
}

// ----- server frames ------------------------------------------------------------

/// Builds one server frame as JSON text. Field order is stable, which keeps
/// frames readable in logs; clients must not depend on it.
#[derive(Debug)]
pub struct FrameWriter {
    buf: Vec<u8>,
    first: bool,
}

impl FrameWriter {
    /// Starts `{"type":"<kind>"`.
    pub fn new(kind: &str) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(b"{\"type\":\"");
        buf.extend_from_slice(kind.as_bytes());
        buf.push(b'"');
        Self { buf, first: false }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        self.buf.push(b'"');
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// Adds a string field.
    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        // Writing a &str to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, value);
        self
    }

    /// Adds a string-or-null field.
    pub fn opt_str(self, key: &str, value: Option<&str>) -> Self {
        match value {
            Some(v) => self.str(key, v),
            None => self.raw(key, NULL),
        }
    }

    /// Adds an integer field.
    pub fn u64(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        self.buf.extend_from_slice(value.to_string().as_bytes());
        self
    }

    /// Adds a boolean field.
    pub fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// Adds a field holding JSON text that is already valid (raw `data`).
    pub fn raw(mut self, key: &str, json: &str) -> Self {
        self.key(key);
        self.buf.extend_from_slice(json.as_bytes());
        self
    }

    /// Adds any serializable value.
    pub fn json<T: Serialize + ?Sized>(mut self, key: &str, value: &T) -> Self {
        self.key(key);
        if serde_json::to_writer(&mut self.buf, value).is_err() {
            self.buf.extend_from_slice(NULL.as_bytes());
        }
        self
    }

    /// Closes the object.
    pub fn finish(mut self) -> Utf8Bytes {
        self.buf.push(b'}');
        // Only valid UTF-8 was written: ASCII punctuation, &str and JSON text.
        Utf8Bytes::try_from(bytes::Bytes::from(self.buf))
            .unwrap_or_else(|_| Utf8Bytes::from_static("{}"))
    }
}

/// `{"type":"reply","id":N}` plus fields added by the caller.
pub fn reply(id: u64) -> FrameWriter {
    FrameWriter::new("reply").u64("id", id)
}

/// `{"type":"reply","id":N,"data":…}`.
pub fn reply_data(id: u64, data: &str) -> Utf8Bytes {
    reply(id).raw("data", data).finish()
}

/// `{"type":"error","id":N,"code":…,"message":…}`, without `id` when `None`.
pub fn error(id: Option<u64>, code: ErrorCode, message: &str) -> Utf8Bytes {
    let mut w = FrameWriter::new("error");
    if let Some(id) = id {
        w = w.u64("id", id);
    }
    w.str("code", code.as_str())
        .str("message", message)
        .finish()
}

/// A channel publication frame, encoded once per instance.
pub fn message(channel: &str, data: &str, offset: u64, epoch: &str) -> Utf8Bytes {
    FrameWriter::new("message")
        .str("channel", channel)
        .raw("data", data)
        .u64("offset", offset)
        .str("epoch", epoch)
        .finish()
}

/// A server `tell` frame.
pub fn tell(event: &str, data: &str, core: Option<&str>) -> Utf8Bytes {
    let mut w = FrameWriter::new("tell")
        .str("event", event)
        .raw("data", data);
    if let Some(core) = core {
        w = w.str("core", core);
    }
    w.finish()
}

/// A `subscribed` push.
pub fn subscribed(channel: &str, offset: u64, epoch: &str, recovered: bool) -> Utf8Bytes {
    FrameWriter::new("subscribed")
        .str("channel", channel)
        .u64("offset", offset)
        .str("epoch", epoch)
        .bool("recovered", recovered)
        .finish()
}

/// An `unsubscribed` push.
pub fn unsubscribed(channel: &str, reason: &str) -> Utf8Bytes {
    FrameWriter::new("unsubscribed")
        .str("channel", channel)
        .str("reason", reason)
        .finish()
}

/// A `disconnect` push.
pub fn disconnect(code: u16, reason: &str, reconnect: bool) -> Utf8Bytes {
    FrameWriter::new("disconnect")
        .u64("code", u64::from(code))
        .str("reason", reason)
        .bool("reconnect", reconnect)
        .finish()
}

/// The `ping` push (shared by every connection).
pub fn ping() -> Utf8Bytes {
    Utf8Bytes::from_static("{\"type\":\"ping\"}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_keeps_raw_data() {
        let frame = r#"{"type":"publish","id":3,"channel":"c","data":{"n":123456789012345678901234567890}}"#;
        match parse_client_frame(frame) {
            Ok(ClientFrame::Publish { id, channel, data }) => {
                assert_eq!(id, 3);
                assert_eq!(channel, "c");
                assert_eq!(data.get(), r#"{"n":123456789012345678901234567890}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn usable_id_is_reported_on_errors() {
        let err = parse_client_frame(r#"{"type":"nope","id":7}"#).unwrap_err();
        assert_eq!(err.id, Some(7));
        let err = parse_client_frame(r#"{"type":"subscribe","id":7,"channel":5}"#).unwrap_err();
        assert_eq!(err.id, Some(7));
        let err = parse_client_frame(r#"{"type":"subscribe","id":0,"channel":"c"}"#).unwrap_err();
        assert_eq!(err.id, None);
        let err = parse_client_frame(r#"{"type":"subscribe","id":"1","channel":"c"}"#).unwrap_err();
        assert_eq!(err.id, None);
        let err = parse_client_frame(r#"{"type":"publish","channel":"c","data":1}"#).unwrap_err();
        assert_eq!(err.id, None);
    }

    #[test]
    fn non_objects_are_rejected() {
        for text in ["[]", "1", "\"x\"", "not json", "{", ""] {
            let err = parse_client_frame(text).unwrap_err();
            assert_eq!(err.id, None, "{text}");
        }
    }

    #[test]
    fn data_null_is_present() {
        match parse_client_frame(r#"{"type":"publish","id":1,"channel":"c","data":null}"#) {
            Ok(ClientFrame::Publish { data, .. }) => assert_eq!(data.get(), "null"),
            other => panic!("{other:?}"),
        }
        assert!(parse_client_frame(r#"{"type":"publish","id":1,"channel":"c"}"#).is_err());
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("chat:lobby", "channel").is_ok());
        assert!(validate_name("", "channel").is_err());
        assert!(validate_name("a\nb", "channel").is_err());
        assert!(validate_name(&"x".repeat(256), "channel").is_err());
    }

    #[test]
    fn frames_encode_as_json() {
        let f = message("c\"1", r#"{"a":1}"#, 4, "e");
        let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
        assert_eq!(v["channel"], "c\"1");
        assert_eq!(v["offset"], 4);
        let e = error(None, ErrorCode::BadRequest, "x");
        let v: serde_json::Value = serde_json::from_str(e.as_str()).unwrap();
        assert!(v.get("id").is_none());
        assert_eq!(v["code"], "bad_request");
    }
}
