//! Parsing client frames (the server's side of the protocol).
//!
//! Client frames are parsed without building a JSON tree: every field is
//! borrowed as raw JSON text first, then checked for its type. That keeps a
//! publication's `data` as the exact bytes the client sent (integers beyond
//! 64 bits included) and costs one pass over the frame.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

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
    #[serde(default, borrow, deserialize_with = "present")]
    redirect: Option<&'a RawValue>,
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
#[derive(Debug, Clone)]
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
        /// `"redirect": true` (an addition to the contract): when the core
        /// runs on another instance, answer with its address instead of
        /// joining through this one. `false` when absent or `null`.
        redirect: bool,
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
        /// Error code as sent (empty when missing or not a string).
        code: Cow<'a, str>,
        /// Message as sent (empty when missing or not a string).
        message: Cow<'a, str>,
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

pub(crate) const NULL: &str = "null";

pub(crate) fn null_raw<'a>() -> &'a RawValue {
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

    /// `redirect`: a boolean; absent or `null` is `false`.
    fn redirect(&self) -> Result<bool, String> {
        match self.redirect.map(|r| r.get()) {
            None | Some("null") | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err("`redirect` must be a boolean".into()),
        }
    }
}

/// Parses one text frame.
pub fn parse_client_frame<'a>(text: &'a str) -> Result<ClientFrame<'a>, BadFrame> {
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
                .and_then(|core| Ok((core, raw.redirect()?)))
                .map(|(core, redirect)| ClientFrame::Join {
                    id,
                    core,
                    data: raw.data_or_null(),
                    redirect,
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
            let text = |r: Option<&'a RawValue>| {
                r.and_then(|r| serde_json::from_str::<Cow<'a, str>>(r.get()).ok())
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
    fn join_redirect_is_an_optional_boolean() {
        let redirect = |text: &str| match parse_client_frame(text) {
            Ok(ClientFrame::Join { redirect, .. }) => Ok(redirect),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.message),
        };
        assert_eq!(redirect(r#"{"type":"join","id":1,"core":"m"}"#), Ok(false));
        let with = |v: &str| format!(r#"{{"type":"join","id":1,"core":"m","redirect":{v}}}"#);
        assert_eq!(redirect(&with("null")), Ok(false));
        assert_eq!(redirect(&with("false")), Ok(false));
        assert_eq!(redirect(&with("true")), Ok(true));
        for bad in ["1", "\"true\"", "{}"] {
            let err = redirect(&with(bad)).unwrap_err();
            assert!(err.contains("redirect"), "{bad}: {err}");
        }
        // Encoded only when set; the encoding parses back.
        let data = RawValue::from_string("{}".into()).unwrap();
        for flag in [false, true] {
            let frame = ClientFrame::Join {
                id: 2,
                core: "m".into(),
                data: &data,
                redirect: flag,
            };
            let text = frame.encode();
            assert_eq!(text.contains("redirect"), flag, "{text}");
            assert_eq!(redirect(&text), Ok(flag));
        }
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("chat:lobby", "channel").is_ok());
        assert!(validate_name("", "channel").is_err());
        assert!(validate_name("a\nb", "channel").is_err());
        assert!(validate_name(&"x".repeat(256), "channel").is_err());
    }
}
