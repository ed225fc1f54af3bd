//! Frame encoding and decoding (wire protocol v1).
//!
//! Outgoing frames are serialized from [`Outgoing`]; incoming text frames are
//! decoded into [`Incoming`]. `data` values are kept as [`RawValue`] so they
//! are relayed byte for byte (integers beyond 64 bits included).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, ErrorCode};

/// A channel position sent in `connect.subscriptions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SubPos {
    pub(crate) channel: String,
    pub(crate) offset: u64,
    pub(crate) epoch: String,
}

/// A frame the client sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Outgoing<'a> {
    Connect {
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        session: Option<&'a str>,
        #[serde(skip_serializing_if = "<[SubPos]>::is_empty")]
        subscriptions: &'a [SubPos],
    },
    Subscribe {
        id: u64,
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    Unsubscribe {
        id: u64,
        channel: &'a str,
    },
    Publish {
        id: u64,
        channel: &'a str,
        data: &'a RawValue,
    },
    Ask {
        id: u64,
        event: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        core: Option<&'a str>,
        data: &'a RawValue,
    },
    Tell {
        event: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        core: Option<&'a str>,
        data: &'a RawValue,
    },
    Join {
        id: u64,
        core: &'a str,
        data: &'a RawValue,
    },
    Leave {
        id: u64,
        core: &'a str,
    },
    Presence {
        id: u64,
        channel: &'a str,
    },
    /// Answers a server `ask`.
    Reply {
        id: u64,
        data: &'a RawValue,
    },
    /// Answers a server `ask` with a failure.
    Error {
        id: u64,
        code: &'a str,
        message: &'a str,
    },
    Pong,
}

impl Outgoing<'_> {
    /// The frame as JSON text.
    pub(crate) fn encode(&self) -> String {
        // Only strings, integers and already-valid raw JSON: cannot fail.
        serde_json::to_string(self).expect("frame serialization cannot fail")
    }
}

/// The `welcome` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Welcome {
    pub(crate) session: String,
    pub(crate) client: String,
    pub(crate) instance: String,
    pub(crate) user: Option<String>,
    pub(crate) ping_interval: Option<u64>,
    pub(crate) resumed: bool,
}

/// A `reply` frame.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) id: u64,
    pub(crate) data: Option<Box<RawValue>>,
    pub(crate) offset: Option<u64>,
    pub(crate) epoch: Option<String>,
    pub(crate) recovered: Option<bool>,
}

/// A frame the server sends.
#[derive(Debug)]
pub(crate) enum Incoming {
    Welcome(Welcome),
    Reply(Reply),
    Error {
        id: Option<u64>,
        code: ErrorCode,
        message: String,
    },
    Message {
        channel: String,
        data: Box<RawValue>,
        offset: u64,
        epoch: String,
    },
    Tell {
        event: String,
        data: Box<RawValue>,
        core: Option<String>,
    },
    Ask {
        id: u64,
        event: String,
        data: Box<RawValue>,
        core: Option<String>,
    },
    Subscribed {
        channel: String,
        offset: u64,
        epoch: String,
        recovered: Option<bool>,
    },
    Unsubscribed {
        channel: String,
        reason: String,
    },
    Left {
        core: String,
        reason: String,
        rejoin: bool,
    },
    Ping,
    Disconnect {
        code: u16,
        reason: String,
        reconnect: bool,
    },
    /// A frame type this client does not know (the protocol may add some).
    Unknown(String),
}

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
    RawValue::from_string("null".to_owned()).expect("null is valid JSON")
}

fn missing(ty: &str, field: &str) -> Error {
    Error::Protocol(format!("`{ty}` frame without `{field}`"))
}

/// Decodes one text frame.
pub(crate) fn decode(text: &str) -> Result<Incoming, Error> {
    let w: Wire = serde_json::from_str(text)
        .map_err(|e| Error::Protocol(format!("undecodable frame: {e}")))?;
    let ty = w.ty.as_str();
    let req = |v: Option<String>, field: &str| v.ok_or_else(|| missing(ty, field));
    let frame = match ty {
        "welcome" => Incoming::Welcome(Welcome {
            session: req(w.session, "session")?,
            client: w.client.unwrap_or_default(),
            instance: w.instance.unwrap_or_default(),
            user: w.user,
            ping_interval: w.ping_interval,
            resumed: w.resumed.unwrap_or(false),
        }),
        "reply" => Incoming::Reply(Reply {
            id: w.id.ok_or_else(|| missing(ty, "id"))?,
            data: w.data,
            offset: w.offset,
            epoch: w.epoch,
            recovered: w.recovered,
        }),
        "error" => Incoming::Error {
            id: w.id,
            code: match w.code {
                Some(Code::Str(code)) => ErrorCode::from(code),
                Some(Code::Num(n)) => ErrorCode::Other(n.to_string()),
                None => ErrorCode::Other(String::new()),
            },
            message: w.message.unwrap_or_default(),
        },
        "message" => Incoming::Message {
            channel: req(w.channel, "channel")?,
            data: w.data.unwrap_or_else(null),
            offset: w.offset.ok_or_else(|| missing(ty, "offset"))?,
            epoch: req(w.epoch, "epoch")?,
        },
        "tell" => Incoming::Tell {
            event: req(w.event, "event")?,
            data: w.data.unwrap_or_else(null),
            core: w.core,
        },
        "ask" => Incoming::Ask {
            id: w.id.ok_or_else(|| missing(ty, "id"))?,
            event: req(w.event, "event")?,
            data: w.data.unwrap_or_else(null),
            core: w.core,
        },
        "subscribed" => Incoming::Subscribed {
            channel: req(w.channel, "channel")?,
            offset: w.offset.ok_or_else(|| missing(ty, "offset"))?,
            epoch: req(w.epoch, "epoch")?,
            recovered: w.recovered,
        },
        "unsubscribed" => Incoming::Unsubscribed {
            channel: req(w.channel, "channel")?,
            reason: w.reason.unwrap_or_default(),
        },
        "left" => Incoming::Left {
            core: req(w.core, "core")?,
            reason: w.reason.unwrap_or_default(),
            rejoin: w.rejoin.unwrap_or(false),
        },
        "ping" => Incoming::Ping,
        "disconnect" => Incoming::Disconnect {
            code: match w.code {
                Some(Code::Num(n)) => n,
                _ => return Err(missing(ty, "code")),
            },
            reason: w.reason.unwrap_or_default(),
            reconnect: w.reconnect.unwrap_or(false),
        },
        other => Incoming::Unknown(other.to_owned()),
    };
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn encodes_connect() {
        let subs = vec![SubPos {
            channel: "news".into(),
            offset: 17,
            epoch: "e1".into(),
        }];
        let text = Outgoing::Connect {
            token: Some("tok"),
            session: Some("s1"),
            subscriptions: &subs,
        }
        .encode();
        assert_eq!(
            parse(&text),
            json!({"type":"connect","token":"tok","session":"s1",
                   "subscriptions":[{"channel":"news","offset":17,"epoch":"e1"}]})
        );
        let anon = Outgoing::Connect {
            token: None,
            session: None,
            subscriptions: &[],
        }
        .encode();
        assert_eq!(parse(&anon), json!({"type":"connect"}));
    }

    #[test]
    fn encodes_commands() {
        let data = raw(r#"{"n":123456789012345678901234567890}"#);
        let cases = [
            (
                Outgoing::Subscribe {
                    id: 1,
                    channel: "chat:lobby",
                    offset: None,
                    epoch: None,
                },
                json!({"type":"subscribe","id":1,"channel":"chat:lobby"}),
            ),
            (
                Outgoing::Subscribe {
                    id: 1,
                    channel: "c",
                    offset: Some(3),
                    epoch: Some("E"),
                },
                json!({"type":"subscribe","id":1,"channel":"c","offset":3,"epoch":"E"}),
            ),
            (
                Outgoing::Unsubscribe {
                    id: 2,
                    channel: "chat:lobby",
                },
                json!({"type":"unsubscribe","id":2,"channel":"chat:lobby"}),
            ),
            (
                Outgoing::Ask {
                    id: 4,
                    event: "get_score",
                    core: Some("m"),
                    data: &raw("[1,2]"),
                },
                json!({"type":"ask","id":4,"event":"get_score","core":"m","data":[1,2]}),
            ),
            (
                Outgoing::Tell {
                    event: "move",
                    core: None,
                    data: &raw("null"),
                },
                json!({"type":"tell","event":"move","data":null}),
            ),
            (
                Outgoing::Join {
                    id: 5,
                    core: "match-42",
                    data: &raw("{}"),
                },
                json!({"type":"join","id":5,"core":"match-42","data":{}}),
            ),
            (
                Outgoing::Leave {
                    id: 6,
                    core: "match-42",
                },
                json!({"type":"leave","id":6,"core":"match-42"}),
            ),
            (
                Outgoing::Presence {
                    id: 7,
                    channel: "chat:lobby",
                },
                json!({"type":"presence","id":7,"channel":"chat:lobby"}),
            ),
            (
                Outgoing::Reply {
                    id: 9,
                    data: &raw("\"ok\""),
                },
                json!({"type":"reply","id":9,"data":"ok"}),
            ),
            (
                Outgoing::Error {
                    id: 9,
                    code: "not_found",
                    message: "nope",
                },
                json!({"type":"error","id":9,"code":"not_found","message":"nope"}),
            ),
            (Outgoing::Pong, json!({"type":"pong"})),
        ];
        for (frame, expected) in cases {
            assert_eq!(parse(&frame.encode()), expected);
        }
        // Raw data is written verbatim: big integers survive.
        let text = Outgoing::Publish {
            id: 3,
            channel: "c",
            data: &data,
        }
        .encode();
        assert_eq!(
            text,
            r#"{"type":"publish","id":3,"channel":"c","data":{"n":123456789012345678901234567890}}"#
        );
    }

    #[test]
    fn decodes_welcome() {
        let f = decode(
            r#"{"type":"welcome","session":"s","client":"c","instance":"i","user":null,"ping_interval":25000,"resumed":false,"extra":1}"#,
        )
        .unwrap();
        let Incoming::Welcome(w) = f else {
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
        let Incoming::Reply(r) =
            decode(r#"{"type":"reply","id":1,"offset":5,"epoch":"E","recovered":true}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (r.id, r.offset, r.epoch.as_deref(), r.recovered),
            (1, Some(5), Some("E"), Some(true))
        );
        assert!(r.data.is_none());

        let Incoming::Reply(r) = decode(r#"{"type":"reply","id":2,"data":null}"#).unwrap() else {
            panic!()
        };
        assert_eq!(r.data.unwrap().get(), "null");

        let Incoming::Error { id, code, message } =
            decode(r#"{"type":"error","id":3,"code":"forbidden","message":"no"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (id, code, message.as_str()),
            (Some(3), ErrorCode::Forbidden, "no")
        );

        let Incoming::Error { id, code, .. } =
            decode(r#"{"type":"error","id":null,"code":"shiny_new","message":""}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!((id, code), (None, ErrorCode::Other("shiny_new".into())));
    }

    #[test]
    fn decodes_pushes() {
        let big = r#"{"type":"message","channel":"c","data":{"n":123456789012345678901234567890, "x":[1, 2]},"offset":7,"epoch":"E"}"#;
        let Incoming::Message {
            channel,
            data,
            offset,
            epoch,
        } = decode(big).unwrap()
        else {
            panic!()
        };
        assert_eq!((channel.as_str(), offset, epoch.as_str()), ("c", 7, "E"));
        assert_eq!(
            data.get(),
            r#"{"n":123456789012345678901234567890, "x":[1, 2]}"#
        );

        assert!(matches!(
            decode(r#"{"type":"ping"}"#).unwrap(),
            Incoming::Ping
        ));
        assert!(matches!(
            decode(r#"{"type":"disconnect","code":1012,"reason":"restart","reconnect":true}"#)
                .unwrap(),
            Incoming::Disconnect {
                code: 1012,
                reconnect: true,
                ..
            }
        ));
        assert!(matches!(
            decode(
                r#"{"type":"subscribed","channel":"c","offset":3,"epoch":"E","recovered":false}"#
            )
            .unwrap(),
            Incoming::Subscribed {
                offset: 3,
                recovered: Some(false),
                ..
            }
        ));
        assert!(matches!(
            decode(r#"{"type":"left","core":"m","reason":"moved","rejoin":true}"#).unwrap(),
            Incoming::Left { rejoin: true, .. }
        ));
        assert!(matches!(
            decode(r#"{"type":"unsubscribed","channel":"c","reason":"kicked"}"#).unwrap(),
            Incoming::Unsubscribed { .. }
        ));
        let Incoming::Ask {
            id,
            event,
            data,
            core,
        } = decode(r#"{"type":"ask","id":4,"event":"confirm","data":{"a":1}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (id, event.as_str(), data.get(), core),
            (4, "confirm", r#"{"a":1}"#, None)
        );
        let Incoming::Tell { event, data, core } =
            decode(r#"{"type":"tell","core":"m","event":"value","data":{"value":2}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (event.as_str(), data.get(), core.as_deref()),
            ("value", r#"{"value":2}"#, Some("m"))
        );
        assert!(matches!(
            decode(r#"{"type":"future_thing","x":1}"#).unwrap(),
            Incoming::Unknown(t) if t == "future_thing"
        ));
    }

    #[test]
    fn rejects_bad_frames() {
        assert!(decode("not json").is_err());
        assert!(decode(r#"{"no":"type"}"#).is_err());
        assert!(decode(r#"{"type":"message","channel":"c","data":1}"#).is_err());
        assert!(decode(r#"{"type":"reply"}"#).is_err());
        assert!(decode(r#"{"type":"welcome"}"#).is_err());
    }
}
