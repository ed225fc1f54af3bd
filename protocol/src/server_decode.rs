//! Decoding server frames (the client's side of the protocol).
//!
//! `data` values are kept as [`RawValue`] so they are relayed byte for byte
//! (integers beyond 64 bits included). Unknown fields are ignored and unknown
//! frame types decode to [`ServerFrame::Unknown`]: the protocol may add both.

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;

/// The `welcome` frame answering `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Session id (send it in `connect.session` to resume).
    pub session: String,
    /// This connection's id (empty when the server left it out).
    pub client: String,
    /// The instance holding the connection (empty when left out).
    pub instance: String,
    /// The user id; `None` when anonymous.
    pub user: Option<String>,
    /// Ping interval in milliseconds, when given.
    pub ping_interval: Option<u64>,
    /// True when `connect.session` named a live session.
    pub resumed: bool,
}

/// A `reply` frame: the answer to the command with the same `id`.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The command's id.
    pub id: u64,
    /// `data`, when present (`null` included).
    pub data: Option<Box<RawValue>>,
    /// `offset` (subscribe and publish replies).
    pub offset: Option<u64>,
    /// `epoch` (subscribe and publish replies).
    pub epoch: Option<String>,
    /// `recovered` (subscribe replies with a position).
    pub recovered: Option<bool>,
}

/// A decoded server frame.
#[derive(Debug, Clone)]
pub enum ServerFrame {
    /// `welcome`.
    Welcome(Welcome),
    /// `reply`.
    Reply(Reply),
    /// `error`: answers the command `id`, or nothing when `id` is `None`.
    Error {
        /// The command's id, if the error answers one.
        id: Option<u64>,
        /// The code (a missing code is `Other("")`, a numeric one its digits).
        code: ErrorCode,
        /// Human text (empty when missing).
        message: String,
    },
    /// `message`: a publication on a subscribed channel.
    Message {
        /// The channel.
        channel: String,
        /// The publication's data (`null` when missing).
        data: Box<RawValue>,
        /// Its offset.
        offset: u64,
        /// Its epoch.
        epoch: String,
    },
    /// `tell`: a server-to-client event.
    Tell {
        /// Event name.
        event: String,
        /// Data (`null` when missing).
        data: Box<RawValue>,
        /// The core that sent it, if any.
        core: Option<String>,
    },
    /// `ask`: the server asks; answer `reply` or `error` with `id`.
    Ask {
        /// The server ask's id.
        id: u64,
        /// Event name.
        event: String,
        /// Data (`null` when missing).
        data: Box<RawValue>,
        /// The core that asks, if any.
        core: Option<String>,
    },
    /// `subscribed`: a subscription the server made or restored.
    Subscribed {
        /// The channel.
        channel: String,
        /// Offset of the channel's latest publication.
        offset: u64,
        /// The channel's epoch.
        epoch: String,
        /// `false` when missed messages could not be replayed.
        recovered: Option<bool>,
    },
    /// `unsubscribed`: the server ended a subscription.
    Unsubscribed {
        /// The channel.
        channel: String,
        /// Why (empty when missing).
        reason: String,
    },
    /// `left`: the client is no longer a member of a core.
    Left {
        /// The core.
        core: String,
        /// Why (empty when missing).
        reason: String,
        /// True when the client should `join` again.
        rejoin: bool,
    },
    /// `ping`.
    Ping,
    /// `disconnect`: sent just before the server closes with `code`.
    Disconnect {
        /// The close code that follows.
        code: u16,
        /// Why (empty when missing).
        reason: String,
        /// True when the client should reconnect.
        reconnect: bool,
    },
    /// A frame type this version does not know (the protocol may add some).
    Unknown(String),
}

/// A server frame that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// `code` is a string in `error` frames and an integer in `disconnect` ones.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Code {
    Num(u16),
    Str(String),
}

/// Every field any server frame may carry; unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct Wire {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, deserialize_with = "raw_present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    code: Option<Code>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    core: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    reconnect: Option<bool>,
    #[serde(default)]
    rejoin: Option<bool>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    ping_interval: Option<u64>,
    #[serde(default)]
    resumed: Option<bool>,
}

/// A present `data` field, `null` included, is `Some`; only a missing one is
/// `None` (through `#[serde(default)]`).
fn raw_present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

fn null() -> Box<RawValue> {
    crate::client_frame::null_raw().to_owned()
}

fn missing(ty: &str, field: &str) -> DecodeError {
    DecodeError(format!("`{ty}` frame without `{field}`"))
}

/// Decodes one server text frame.
pub fn decode_server_frame(text: &str) -> Result<ServerFrame, DecodeError> {
    let w: Wire =
        serde_json::from_str(text).map_err(|e| DecodeError(format!("undecodable frame: {e}")))?;
    let ty = w.ty.as_str();
    let req = |v: Option<String>, field: &str| v.ok_or_else(|| missing(ty, field));
    let frame = match ty {
        "welcome" => ServerFrame::Welcome(Welcome {
            session: req(w.session, "session")?,
            client: w.client.unwrap_or_default(),
            instance: w.instance.unwrap_or_default(),
            user: w.user,
            ping_interval: w.ping_interval,
            resumed: w.resumed.unwrap_or(false),
        }),
        "reply" => ServerFrame::Reply(Reply {
            id: w.id.ok_or_else(|| missing(ty, "id"))?,
            data: w.data,
            offset: w.offset,
            epoch: w.epoch,
            recovered: w.recovered,
        }),
        "error" => ServerFrame::Error {
            id: w.id,
            code: match w.code {
                Some(Code::Str(code)) => ErrorCode::from(code),
                Some(Code::Num(n)) => ErrorCode::Other(n.to_string()),
                None => ErrorCode::Other(String::new()),
            },
            message: w.message.unwrap_or_default(),
        },
        "message" => ServerFrame::Message {
            channel: req(w.channel, "channel")?,
            data: w.data.unwrap_or_else(null),
            offset: w.offset.ok_or_else(|| missing(ty, "offset"))?,
            epoch: req(w.epoch, "epoch")?,
        },
        "tell" => ServerFrame::Tell {
            event: req(w.event, "event")?,
            data: w.data.unwrap_or_else(null),
            core: w.core,
        },
        "ask" => ServerFrame::Ask {
            id: w.id.ok_or_else(|| missing(ty, "id"))?,
            event: req(w.event, "event")?,
            data: w.data.unwrap_or_else(null),
            core: w.core,
        },
        "subscribed" => ServerFrame::Subscribed {
            channel: req(w.channel, "channel")?,
            offset: w.offset.ok_or_else(|| missing(ty, "offset"))?,
            epoch: req(w.epoch, "epoch")?,
            recovered: w.recovered,
        },
        "unsubscribed" => ServerFrame::Unsubscribed {
            channel: req(w.channel, "channel")?,
            reason: w.reason.unwrap_or_default(),
        },
        "left" => ServerFrame::Left {
            core: req(w.core, "core")?,
            reason: w.reason.unwrap_or_default(),
            rejoin: w.rejoin.unwrap_or(false),
        },
        "ping" => ServerFrame::Ping,
        "disconnect" => ServerFrame::Disconnect {
            code: match w.code {
                Some(Code::Num(n)) => n,
                _ => return Err(missing(ty, "code")),
            },
            reason: w.reason.unwrap_or_default(),
            reconnect: w.reconnect.unwrap_or(false),
        },
        other => ServerFrame::Unknown(other.to_owned()),
    };
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_welcome() {
        let f = decode_server_frame(
            r#"{"type":"welcome","session":"s","client":"c","instance":"i","user":null,"ping_interval":25000,"resumed":false,"extra":1}"#,
        )
        .unwrap();
        let ServerFrame::Welcome(w) = f else {
            panic!("{f:?}")
        };
        assert_eq!(
            w,
            Welcome {
                session: "s".into(),
                client: "c".into(),
                instance: "i".into(),
                user: None,
                ping_interval: Some(25000),
                resumed: false,
            }
        );
    }

    #[test]
    fn decodes_replies_and_errors() {
        let ServerFrame::Reply(r) = decode_server_frame(
            r#"{"type":"reply","id":1,"offset":5,"epoch":"E","recovered":true}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.id, r.offset, r.epoch.as_deref(), r.recovered),
            (1, Some(5), Some("E"), Some(true))
        );
        assert!(r.data.is_none());

        let ServerFrame::Reply(r) =
            decode_server_frame(r#"{"type":"reply","id":2,"data":null}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.data.unwrap().get(), "null");

        let ServerFrame::Error { id, code, message } =
            decode_server_frame(r#"{"type":"error","id":3,"code":"forbidden","message":"no"}"#)
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (id, code, message.as_str()),
            (Some(3), ErrorCode::Forbidden, "no")
        );

        let ServerFrame::Error { id, code, .. } =
            decode_server_frame(r#"{"type":"error","id":null,"code":"shiny_new","message":""}"#)
                .unwrap()
        else {
            panic!()
        };
        assert_eq!((id, code), (None, ErrorCode::Other("shiny_new".into())));
    }

    #[test]
    fn decodes_pushes() {
        let big = r#"{"type":"message","channel":"c","data":{"n":123456789012345678901234567890, "x":[1, 2]},"offset":7,"epoch":"E"}"#;
        let ServerFrame::Message {
            channel,
            data,
            offset,
            epoch,
        } = decode_server_frame(big).unwrap()
        else {
            panic!()
        };
        assert_eq!((channel.as_str(), offset, epoch.as_str()), ("c", 7, "E"));
        assert_eq!(
            data.get(),
            r#"{"n":123456789012345678901234567890, "x":[1, 2]}"#
        );

        assert!(matches!(
            decode_server_frame(r#"{"type":"ping"}"#).unwrap(),
            ServerFrame::Ping
        ));
        assert!(matches!(
            decode_server_frame(
                r#"{"type":"disconnect","code":1012,"reason":"restart","reconnect":true}"#
            )
            .unwrap(),
            ServerFrame::Disconnect {
                code: 1012,
                reconnect: true,
                ..
            }
        ));
        assert!(matches!(
            decode_server_frame(
                r#"{"type":"subscribed","channel":"c","offset":3,"epoch":"E","recovered":false}"#
            )
            .unwrap(),
            ServerFrame::Subscribed {
                offset: 3,
                recovered: Some(false),
                ..
            }
        ));
        assert!(matches!(
            decode_server_frame(r#"{"type":"left","core":"m","reason":"moved","rejoin":true}"#)
                .unwrap(),
            ServerFrame::Left { rejoin: true, .. }
        ));
        assert!(matches!(
            decode_server_frame(r#"{"type":"unsubscribed","channel":"c","reason":"kicked"}"#)
                .unwrap(),
            ServerFrame::Unsubscribed { .. }
        ));
        let ServerFrame::Ask {
            id,
            event,
            data,
            core,
        } = decode_server_frame(r#"{"type":"ask","id":4,"event":"confirm","data":{"a":1}}"#)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (id, event.as_str(), data.get(), core),
            (4, "confirm", r#"{"a":1}"#, None)
        );
        let ServerFrame::Tell { event, data, core } =
            decode_server_frame(r#"{"type":"tell","core":"m","event":"value","data":{"value":2}}"#)
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (event.as_str(), data.get(), core.as_deref()),
            ("value", r#"{"value":2}"#, Some("m"))
        );
        assert!(matches!(
            decode_server_frame(r#"{"type":"future_thing","x":1}"#).unwrap(),
            ServerFrame::Unknown(t) if t == "future_thing"
        ));
    }

    #[test]
    fn rejects_bad_frames() {
        assert!(decode_server_frame("not json").is_err());
        assert!(decode_server_frame(r#"{"no":"type"}"#).is_err());
        assert!(decode_server_frame(r#"{"type":"message","channel":"c","data":1}"#).is_err());
        assert!(decode_server_frame(r#"{"type":"reply"}"#).is_err());
        assert!(decode_server_frame(r#"{"type":"welcome"}"#).is_err());
    }
}
