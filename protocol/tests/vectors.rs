//! Runs every vector of `protocol/vectors/` (format in its README) through the
//! client-frame parser and encoder, the server-frame decoder and the builders.

use std::collections::{BTreeMap, BTreeSet};

use scaled_sockets_protocol::{
    ClientFrame, ErrorCode, RawValue, ServerFrame, decode_server_frame, parse_client_frame,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    frame: String,
    #[serde(default)]
    built: bool,
    expect: Value,
}

fn load(file: &str) -> Vec<Case> {
    let path = format!("{}/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let cases: Vec<Case> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names.len(),
        cases.len(),
        "{path}: case names must be unique"
    );
    cases
}

/// Inserts `key` when `value` is `Some`.
fn put<T: Into<Value>>(m: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(v) = value {
        m.insert(key.to_owned(), v.into());
    }
}

fn client_summary(frame: &ClientFrame<'_>) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), frame.kind().into());
    put(&mut m, "id", frame.id());
    match frame {
        ClientFrame::Connect {
            token,
            session,
            subscriptions,
            ..
        } => {
            put(&mut m, "token", token.as_deref());
            put(&mut m, "session", session.as_deref());
            m.insert("subscriptions".into(), json!(subscriptions));
        }
        ClientFrame::Subscribe { request, .. } => {
            put(&mut m, "channel", Some(request.channel.as_str()));
            put(&mut m, "offset", request.offset);
            put(&mut m, "epoch", request.epoch.as_deref());
        }
        ClientFrame::Unsubscribe { channel, .. } | ClientFrame::Presence { channel, .. } => {
            put(&mut m, "channel", Some(channel.as_ref()));
        }
        ClientFrame::Publish { channel, data, .. } => {
            put(&mut m, "channel", Some(channel.as_ref()));
            put(&mut m, "data", Some(data.get()));
        }
        ClientFrame::Ask {
            event, data, core, ..
        }
        | ClientFrame::Tell { event, data, core } => {
            put(&mut m, "event", Some(event.as_ref()));
            put(&mut m, "core", core.as_deref());
            put(&mut m, "data", Some(data.get()));
        }
        ClientFrame::Join { core, data, .. } => {
            put(&mut m, "core", Some(core.as_ref()));
            put(&mut m, "data", Some(data.get()));
        }
        ClientFrame::Leave { core, .. } => put(&mut m, "core", Some(core.as_ref())),
        ClientFrame::Reply { data, .. } => put(&mut m, "data", Some(data.get())),
        ClientFrame::Error { code, message, .. } => {
            put(&mut m, "code", Some(code.as_ref()));
            put(&mut m, "message", Some(message.as_ref()));
        }
        ClientFrame::Pong => {}
    }
    Value::Object(m)
}

fn client_outcome(text: &str) -> Value {
    match parse_client_frame(text) {
        Ok(frame) => json!({ "ok": client_summary(&frame) }),
        Err(bad) => {
            let mut e = json!({ "id": bad.id, "code": ErrorCode::BadRequest.as_str() });
            if bad.was_connect {
                e["connect"] = true.into();
            }
            assert!(!bad.message.is_empty(), "{text}: an error needs a message");
            json!({ "error": e })
        }
    }
}

#[test]
fn client_frame_vectors() {
    let cases = load("client_frames.json");
    let mut ok_kinds = BTreeSet::new();
    let mut error_kinds = BTreeSet::new();
    for case in &cases {
        assert_eq!(
            client_outcome(&case.frame),
            case.expect,
            "case {}",
            case.name
        );
        match parse_client_frame(&case.frame) {
            Ok(frame) => {
                ok_kinds.insert(frame.kind());
                // The encoder writes the same frame back: parsing its output
                // gives the same summary (data verbatim included).
                let encoded = frame.encode();
                assert_eq!(
                    client_outcome(&encoded),
                    case.expect,
                    "case {} re-encoded as {encoded}",
                    case.name
                );
            }
            Err(_) => {
                let kind = serde_json::from_str::<Value>(&case.frame)
                    .ok()
                    .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned));
                error_kinds.insert(kind.unwrap_or_default());
            }
        }
    }
    let all = [
        "connect",
        "subscribe",
        "unsubscribe",
        "publish",
        "ask",
        "tell",
        "join",
        "leave",
        "presence",
        "reply",
        "error",
        "pong",
    ];
    for kind in all {
        assert!(ok_kinds.contains(kind), "no valid `{kind}` vector");
        if kind != "pong" {
            assert!(error_kinds.contains(kind), "no invalid `{kind}` vector");
        }
    }
}

fn server_summary(frame: &ServerFrame) -> Value {
    let mut m = Map::new();
    let raw = |d: &RawValue| Value::from(d.get());
    let kind = match frame {
        ServerFrame::Welcome(w) => {
            m.insert("session".into(), w.session.as_str().into());
            m.insert("client".into(), w.client.as_str().into());
            m.insert("instance".into(), w.instance.as_str().into());
            m.insert("user".into(), json!(w.user));
            m.insert("ping_interval".into(), json!(w.ping_interval));
            m.insert("resumed".into(), w.resumed.into());
            "welcome"
        }
        ServerFrame::Reply(r) => {
            m.insert("id".into(), r.id.into());
            put(&mut m, "data", r.data.as_deref().map(raw));
            put(&mut m, "offset", r.offset);
            put(&mut m, "epoch", r.epoch.as_deref());
            put(&mut m, "recovered", r.recovered);
            "reply"
        }
        ServerFrame::Error { id, code, message } => {
            m.insert("id".into(), json!(id));
            m.insert("code".into(), code.as_str().into());
            m.insert("message".into(), message.as_str().into());
            "error"
        }
        ServerFrame::Message {
            channel,
            data,
            offset,
            epoch,
        } => {
            m.insert("channel".into(), channel.as_str().into());
            m.insert("data".into(), raw(data));
            m.insert("offset".into(), (*offset).into());
            m.insert("epoch".into(), epoch.as_str().into());
            "message"
        }
        ServerFrame::Tell { event, data, core } => {
            m.insert("event".into(), event.as_str().into());
            m.insert("data".into(), raw(data));
            put(&mut m, "core", core.as_deref());
            "tell"
        }
        ServerFrame::Ask {
            id,
            event,
            data,
            core,
        } => {
            m.insert("id".into(), (*id).into());
            m.insert("event".into(), event.as_str().into());
            m.insert("data".into(), raw(data));
            put(&mut m, "core", core.as_deref());
            "ask"
        }
        ServerFrame::Subscribed {
            channel,
            offset,
            epoch,
            recovered,
        } => {
            m.insert("channel".into(), channel.as_str().into());
            m.insert("offset".into(), (*offset).into());
            m.insert("epoch".into(), epoch.as_str().into());
            put(&mut m, "recovered", *recovered);
            "subscribed"
        }
        ServerFrame::Unsubscribed { channel, reason } => {
            m.insert("channel".into(), channel.as_str().into());
            m.insert("reason".into(), reason.as_str().into());
            "unsubscribed"
        }
        ServerFrame::Left {
            core,
            reason,
            rejoin,
        } => {
            m.insert("core".into(), core.as_str().into());
            m.insert("reason".into(), reason.as_str().into());
            m.insert("rejoin".into(), (*rejoin).into());
            "left"
        }
        ServerFrame::Ping => "ping",
        ServerFrame::Disconnect {
            code,
            reason,
            reconnect,
        } => {
            m.insert("code".into(), (*code).into());
            m.insert("reason".into(), reason.as_str().into());
            m.insert("reconnect".into(), (*reconnect).into());
            "disconnect"
        }
        ServerFrame::Unknown(kind) => {
            m.insert("unknown".into(), true.into());
            kind.as_str()
        }
    };
    m.insert("type".into(), kind.into());
    Value::Object(m)
}

fn server_outcome(text: &str) -> Value {
    match decode_server_frame(text) {
        Ok(frame) => json!({ "ok": server_summary(&frame) }),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            json!({ "error": {} })
        }
    }
}

/// Builds a frame with the server-side builders from a decoded summary.
fn build(s: &Value) -> String {
    use scaled_sockets_protocol as p;
    let text = |k: &str| s[k].as_str().unwrap_or_else(|| panic!("{s}: `{k}`"));
    let opt = |k: &str| s.get(k).and_then(Value::as_str);
    let int = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{s}: `{k}`"));
    let flag = |k: &str| s[k].as_bool().unwrap_or_else(|| panic!("{s}: `{k}`"));
    match text("type") {
        "welcome" => p::welcome(
            text("session"),
            text("client"),
            text("instance"),
            opt("user"),
            int("ping_interval"),
            flag("resumed"),
        ),
        "reply" if s.get("data").is_some() => p::reply_data(int("id"), text("data")),
        "reply" if s.get("offset").is_some() => p::reply_position(
            int("id"),
            int("offset"),
            text("epoch"),
            s.get("recovered").and_then(Value::as_bool),
        ),
        "reply" => p::reply(int("id")).finish(),
        "error" => p::error(
            s["id"].as_u64(),
            ErrorCode::from(text("code")),
            text("message"),
        ),
        "message" => p::message(text("channel"), text("data"), int("offset"), text("epoch")),
        "tell" => p::tell(text("event"), text("data"), opt("core")),
        "ask" => p::ask(int("id"), text("event"), text("data"), opt("core")),
        "subscribed" => p::subscribed(
            text("channel"),
            int("offset"),
            text("epoch"),
            flag("recovered"),
        ),
        "unsubscribed" => p::unsubscribed(text("channel"), text("reason")),
        "left" => p::left(text("core"), text("reason"), flag("rejoin")),
        "disconnect" => p::disconnect(
            u16::try_from(int("code")).expect("close code"),
            text("reason"),
            flag("reconnect"),
        ),
        "ping" => p::ping(),
        other => panic!("no builder for `{other}`"),
    }
}

/// A frame as its top-level fields, each as JSON text: equal objects whatever
/// the key order, with `data` compared byte for byte.
fn fields(text: &str) -> BTreeMap<String, String> {
    let map: BTreeMap<String, &RawValue> =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    map.into_iter()
        .map(|(k, v)| (k, v.get().to_owned()))
        .collect()
}

#[test]
fn server_frame_vectors() {
    let cases = load("server_frames.json");
    let mut built_kinds = BTreeSet::new();
    for case in &cases {
        assert_eq!(
            server_outcome(&case.frame),
            case.expect,
            "case {}",
            case.name
        );
        if case.built {
            let summary = &case.expect["ok"];
            let built = build(summary);
            assert_eq!(fields(&built), fields(&case.frame), "case {}", case.name);
            built_kinds.insert(summary["type"].as_str().unwrap_or_default().to_owned());
        }
    }
    for kind in [
        "welcome",
        "reply",
        "error",
        "message",
        "tell",
        "ask",
        "subscribed",
        "unsubscribed",
        "left",
        "ping",
        "disconnect",
    ] {
        assert!(built_kinds.contains(kind), "no built `{kind}` vector");
    }
    // Every error code of the contract has a vector.
    for code in [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::LimitExceeded,
        ErrorCode::RateLimited,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ] {
        assert!(
            cases
                .iter()
                .any(|c| c.built && c.expect["ok"]["code"] == code.as_str()),
            "no vector for {code}"
        );
    }
}
