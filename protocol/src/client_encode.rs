//! Encoding client frames (the client's side of the protocol).
//!
//! The same [`ClientFrame`] type the server parses is what a client encodes,
//! so both sides share one definition of every frame's fields. Encoding
//! writes `data` verbatim and omits optional fields that are `None`;
//! [`parse_client_frame`](crate::parse_client_frame) of the result gives the
//! frame back.

use crate::client_frame::ClientFrame;
use crate::writer::FrameWriter;

fn opt_str(w: FrameWriter, key: &str, value: Option<&str>) -> FrameWriter {
    match value {
        Some(v) => w.str(key, v),
        None => w,
    }
}

impl ClientFrame<'_> {
    /// The frame's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Publish { .. } => "publish",
            Self::Ask { .. } => "ask",
            Self::Tell { .. } => "tell",
            Self::Join { .. } => "join",
            Self::Leave { .. } => "leave",
            Self::Presence { .. } => "presence",
            Self::Reply { .. } => "reply",
            Self::Error { .. } => "error",
            Self::Pong => "pong",
        }
    }

    /// The frame's id, when it has one.
    pub fn id(&self) -> Option<u64> {
        match self {
            Self::Connect { id, .. } => *id,
            Self::Subscribe { id, .. }
            | Self::Unsubscribe { id, .. }
            | Self::Publish { id, .. }
            | Self::Ask { id, .. }
            | Self::Join { id, .. }
            | Self::Leave { id, .. }
            | Self::Presence { id, .. }
            | Self::Reply { id, .. }
            | Self::Error { id, .. } => Some(*id),
            Self::Tell { .. } | Self::Pong => None,
        }
    }

    /// The frame as JSON text.
    pub fn encode(&self) -> String {
        let mut w = FrameWriter::new(self.kind());
        if let Some(id) = self.id() {
            w = w.u64("id", id);
        }
        match self {
            Self::Connect {
                id: _,
                token,
                session,
                subscriptions,
            } => {
                w = opt_str(w, "token", token.as_deref());
                w = opt_str(w, "session", session.as_deref());
                if !subscriptions.is_empty() {
                    w = w.json("subscriptions", subscriptions);
                }
            }
            Self::Subscribe { id: _, request } => {
                w = w.str("channel", &request.channel);
                if let Some(offset) = request.offset {
                    w = w.u64("offset", offset);
                }
                w = opt_str(w, "epoch", request.epoch.as_deref());
            }
            Self::Unsubscribe { id: _, channel } | Self::Presence { id: _, channel } => {
                w = w.str("channel", channel);
            }
            Self::Publish {
                id: _,
                channel,
                data,
            } => w = w.str("channel", channel).raw("data", data.get()),
            Self::Ask {
                id: _,
                event,
                data,
                core,
            }
            | Self::Tell { event, data, core } => {
                w = opt_str(w.str("event", event), "core", core.as_deref()).raw("data", data.get());
            }
            Self::Join {
                id: _,
                core,
                data,
                redirect,
            } => {
                w = w.str("core", core).raw("data", data.get());
                if *redirect {
                    w = w.bool("redirect", true);
                }
            }
            Self::Leave { id: _, core } => w = w.str("core", core),
            Self::Reply { id: _, data } => w = w.raw("data", data.get()),
            Self::Error {
                id: _,
                code,
                message,
            } => w = w.str("code", code).str("message", message),
            Self::Pong => {}
        }
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::client_frame::SubscriptionRequest;
    use crate::{ClientFrame, parse_client_frame};
    use serde_json::value::RawValue;
    use serde_json::{Value, json};

    fn value(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn encodes_connect() {
        let anonymous = ClientFrame::Connect {
            id: None,
            token: None,
            session: None,
            subscriptions: Vec::new(),
        };
        assert_eq!(anonymous.encode(), r#"{"type":"connect"}"#);
        let resuming = ClientFrame::Connect {
            id: None,
            token: Some("tok".into()),
            session: Some("s1".into()),
            subscriptions: vec![SubscriptionRequest {
                channel: "news".into(),
                offset: Some(17),
                epoch: Some("e1".into()),
            }],
        };
        assert_eq!(
            value(&resuming.encode()),
            json!({"type":"connect","token":"tok","session":"s1",
                   "subscriptions":[{"channel":"news","offset":17,"epoch":"e1"}]})
        );
    }

    #[test]
    fn data_is_written_verbatim() {
        let data: &RawValue =
            serde_json::from_str(r#"{"n":123456789012345678901234567890}"#).unwrap();
        let text = ClientFrame::Publish {
            id: 3,
            channel: "c".into(),
            data,
        }
        .encode();
        assert_eq!(
            text,
            r#"{"type":"publish","id":3,"channel":"c","data":{"n":123456789012345678901234567890}}"#
        );
        match parse_client_frame(&text) {
            Ok(ClientFrame::Publish { data: back, .. }) => assert_eq!(back.get(), data.get()),
            other => panic!("{other:?}"),
        }
    }
}
