//! Client behaviours exercised against a scripted in-process peer: things a
//! real server rarely does on demand (dropping sockets, replaying duplicates,
//! going silent, …).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Conn, Peer, within};
use futures_util::StreamExt;
use scaled_sockets_client::{
    AskError, AskRequest, Client, ClientBuilder, Error, ErrorCode, Event, Events, Subscription,
};
use serde_json::{Value, json};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn builder(peer: &Peer) -> ClientBuilder {
    Client::builder(&peer.url).reconnect_backoff(ms(10), ms(50))
}

/// Connects `builder` to `peer` with session `s1`.
async fn connect(peer: &Peer, builder: ClientBuilder) -> (Client, Conn, Value) {
    let (client, (conn, connect)) =
        tokio::join!(builder.connect(), peer.accept_welcome("s1", false));
    (client.expect("connect"), conn, connect)
}

async fn subscribe(
    client: &Client,
    conn: &mut Conn,
    channel: &str,
    offset: u64,
    epoch: &str,
) -> Subscription {
    let (sub, ()) = tokio::join!(client.subscribe(channel), async {
        let f = conn.recv().await;
        assert_eq!(f["type"], "subscribe", "{f}");
        assert_eq!(f["channel"], channel);
        conn.send(json!({"type":"reply","id":f["id"],"offset":offset,"epoch":epoch}))
            .await;
    });
    sub.expect("subscribe")
}

async fn message(conn: &mut Conn, channel: &str, offset: u64, epoch: &str) {
    conn.send(json!({"type":"message","channel":channel,"data":{"n":offset},"offset":offset,"epoch":epoch}))
        .await;
}

async fn next_offset(sub: &mut Subscription) -> u64 {
    within("a message", sub.next())
        .await
        .expect("subscription ended")
        .offset
}

/// The next event matching `pred`, skipping others.
async fn wait_event(events: &mut Events, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    within(what, async {
        loop {
            let e = events.recv().await.expect("event stream ended");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
}

#[tokio::test]
async fn connect_sends_token_and_resolves_after_welcome() {
    let peer = Peer::bind().await;
    let connecting = tokio::spawn(builder(&peer).token("tok-1").connect());
    let mut conn = peer.accept().await;
    let connect = conn.recv().await;
    assert_eq!(connect, json!({"type":"connect","token":"tok-1"}));
    tokio::time::sleep(ms(50)).await;
    assert!(!connecting.is_finished(), "resolved before welcome");
    conn.welcome("s1", false, 25_000).await;
    let client = within("connect", connecting).await.unwrap().unwrap();
    let info = client.connection_info().expect("connected");
    assert_eq!(
        (
            info.session.as_str(),
            info.client.as_str(),
            info.instance.as_str(),
            info.user.as_deref()
        ),
        ("s1", "c-s1", "i1", Some("alice"))
    );
    assert_eq!(info.ping_interval, Some(ms(25_000)));
    assert!(client.is_connected());
}

#[tokio::test]
async fn session_option_is_sent() {
    let peer = Peer::bind().await;
    let (_client, _conn, connect) = connect(&peer, builder(&peer).session("old")).await;
    assert_eq!(connect, json!({"type":"connect","session":"old"}));
}

#[tokio::test]
async fn rejected_token_fails_connect_with_unauthorized() {
    let peer = Peer::bind().await;
    let (res, ()) = tokio::join!(builder(&peer).token("bad").connect(), async {
        let mut conn = peer.accept().await;
        conn.recv().await;
        conn.send(json!({"type":"error","code":"unauthorized","message":"bad token"}))
            .await;
        conn.close(4001, "unauthorized").await;
    });
    match res {
        Err(Error::Server {
            code: ErrorCode::Unauthorized,
            message,
        }) => assert_eq!(message, "bad token"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn close_4001_alone_fails_connect_with_unauthorized() {
    let peer = Peer::bind().await;
    let (res, ()) = tokio::join!(builder(&peer).connect(), async {
        let mut conn = peer.accept().await;
        conn.recv().await;
        conn.close(4001, "token expired").await;
    });
    assert!(
        matches!(
            res,
            Err(Error::Server {
                code: ErrorCode::Unauthorized,
                ..
            })
        ),
        "{res:?}"
    );
}

#[tokio::test]
async fn commands_get_unique_ids_and_their_own_answers() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let results = tokio::join!(
        client.ask("echo", &json!({"a":1})),
        client.ask_core("m1", "get", &json!(null)),
        client.publish("news", &json!("hi")),
        client.join("m1", &json!({"as":"x"})),
        client.leave("m2"),
        client.presence("news"),
        async {
            let mut frames = Vec::new();
            for _ in 0..6 {
                frames.push(conn.recv().await);
            }
            let ids: HashSet<u64> = frames.iter().map(|f| f["id"].as_u64().unwrap()).collect();
            assert_eq!(ids.len(), 6, "ids not unique: {frames:?}");
            assert!(ids.iter().all(|id| *id >= 1));
            // Answer in reverse order.
            for f in frames.iter().rev() {
                let id = &f["id"];
                let answer = match f["type"].as_str().unwrap() {
                    "ask" if f["core"].is_null() => {
                        assert_eq!(f["event"], "echo");
                        json!({"type":"reply","id":id,"data":f["data"]})
                    }
                    "ask" => {
                        assert_eq!(
                            (f["core"].as_str(), f["event"].as_str()),
                            (Some("m1"), Some("get"))
                        );
                        json!({"type":"reply","id":id,"data":{"value":3}})
                    }
                    "publish" => {
                        assert_eq!(
                            (f["channel"].as_str(), f["data"].as_str()),
                            (Some("news"), Some("hi"))
                        );
                        json!({"type":"reply","id":id,"offset":42})
                    }
                    "join" => {
                        assert_eq!(f["data"], json!({"as":"x"}));
                        json!({"type":"reply","id":id,"data":{"value":0}})
                    }
                    "leave" => {
                        assert_eq!(f["core"], "m2");
                        json!({"type":"reply","id":id})
                    }
                    "presence" => json!({"type":"reply","id":id,
                        "data":{"clients":[{"client":"c1","user":"alice"},{"client":"c2","user":null}]}}),
                    other => panic!("unexpected {other}"),
                };
                conn.send(answer).await;
            }
        }
    );
    let (echo, get, offset, join, leave, presence, ()) = results;
    assert_eq!(echo.unwrap().get(), r#"{"a":1}"#);
    assert_eq!(get.unwrap().get(), r#"{"value":3}"#);
    assert_eq!(offset.unwrap(), 42);
    assert_eq!(join.unwrap().get(), r#"{"value":0}"#);
    leave.unwrap();
    let presence = presence.unwrap();
    assert_eq!(presence.len(), 2);
    assert_eq!(presence[0].user.as_deref(), Some("alice"));
    assert_eq!(presence[1].user, None);
}

#[tokio::test]
async fn server_errors_are_mapped_to_codes() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let (forbidden, unknown, ()) =
        tokio::join!(client.publish("secret", &1), client.ask("x", &1), async {
            let a = conn.recv().await;
            let b = conn.recv().await;
            conn.send(
                json!({"type":"error","id":a["id"],"code":"forbidden","message":"no publish"}),
            )
            .await;
            conn.send(json!({"type":"error","id":b["id"],"code":"shiny_new","message":"?"}))
                .await;
        });
    match forbidden {
        Err(Error::Server { code, message }) => {
            assert_eq!(code, ErrorCode::Forbidden);
            assert_eq!(message, "no publish");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        unknown.unwrap_err().code(),
        Some(&ErrorCode::Other("shiny_new".into()))
    );
}

#[tokio::test]
async fn pong_answers_ping() {
    let peer = Peer::bind().await;
    let (_client, mut conn, _) = connect(&peer, builder(&peer)).await;
    for _ in 0..3 {
        conn.send(json!({"type":"ping"})).await;
        assert_eq!(conn.recv_any().await, json!({"type":"pong"}));
    }
}

#[tokio::test]
async fn on_ask_handler_replies() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    client.on_ask("confirm", |req: AskRequest| async move {
        let q: String = req.data()?;
        Ok::<_, AskError>(json!({"ok": q == "sure?", "core": req.core}))
    });
    client.on_ask("refuse", |_req: AskRequest| async move {
        Err::<(), _>(AskError::new(ErrorCode::Forbidden, "not today"))
    });

    conn.send(json!({"type":"ask","id":7,"event":"confirm","data":"sure?"}))
        .await;
    assert_eq!(
        conn.recv().await,
        json!({"type":"reply","id":7,"data":{"ok":true,"core":null}})
    );
    conn.send(json!({"type":"ask","id":8,"event":"confirm","data":5,"core":"m1"}))
        .await;
    let bad = conn.recv().await;
    assert_eq!(
        (
            bad["type"].as_str(),
            bad["id"].as_u64(),
            bad["code"].as_str()
        ),
        (Some("error"), Some(8), Some("bad_request"))
    );
    conn.send(json!({"type":"ask","id":9,"event":"refuse","data":null}))
        .await;
    assert_eq!(
        conn.recv().await,
        json!({"type":"error","id":9,"code":"forbidden","message":"not today"})
    );
    conn.send(json!({"type":"ask","id":10,"event":"nobody","data":null}))
        .await;
    let missing = conn.recv().await;
    assert_eq!(
        (missing["id"].as_u64(), missing["code"].as_str()),
        (Some(10), Some("not_found"))
    );

    assert!(client.off_ask("refuse"));
    conn.send(json!({"type":"ask","id":11,"event":"refuse","data":null}))
        .await;
    assert_eq!(conn.recv().await["code"], "not_found");
}

#[tokio::test]
async fn tells_are_sent_and_received() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let mut events = client.events();
    client.tell("move", &json!({"x":1})).await.unwrap();
    assert_eq!(
        conn.recv().await,
        json!({"type":"tell","event":"move","data":{"x":1}})
    );
    client.tell_core("m1", "incr", &json!(null)).await.unwrap();
    assert_eq!(
        conn.recv().await,
        json!({"type":"tell","event":"incr","core":"m1","data":null})
    );
    conn.send(json!({"type":"tell","core":"m1","event":"value","data":{"value":1}}))
        .await;
    match wait_event(&mut events, "tell", |e| matches!(e, Event::Tell { .. })).await {
        Event::Tell { event, data, core } => {
            assert_eq!(
                (event.as_str(), data.get(), core.as_deref()),
                ("value", r#"{"value":1}"#, Some("m1"))
            );
        }
        _ => unreachable!(),
    }
    conn.send(json!({"type":"left","core":"m1","reason":"moved","rejoin":true}))
        .await;
    let left = wait_event(&mut events, "left", |e| matches!(e, Event::Left { .. })).await;
    assert!(matches!(left, Event::Left { rejoin: true, .. }), "{left:?}");
}

#[tokio::test]
async fn data_is_relayed_unchanged() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let mut sub = subscribe(&client, &mut conn, "big", 0, "e").await;
    let big = r#"{"n":123456789012345678901234567890,"f":1.5e300,"s":"é\u0000"}"#;
    conn.send_text(&format!(
        r#"{{"type":"message","channel":"big","data":{big},"offset":1,"epoch":"e"}}"#
    ))
    .await;
    let msg = within("message", sub.next()).await.unwrap();
    assert_eq!(msg.data.get(), big);

    let raw = scaled_sockets_client::RawValue::from_string(big.to_owned()).unwrap();
    let (published, text) = tokio::join!(client.publish("big", &raw), async {
        let text = conn.recv_text().await;
        let f: Value = serde_json::from_str(&text).unwrap();
        conn.send(json!({"type":"reply","id":f["id"],"offset":2}))
            .await;
        text
    });
    assert_eq!(published.unwrap(), 2);
    assert!(text.contains(big), "{text}");
}

#[tokio::test]
async fn pending_ask_fails_with_disconnected_when_the_socket_drops() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let ask = tokio::spawn({
        let client = client.clone();
        async move { client.ask("slow", &json!(null)).await }
    });
    assert_eq!(conn.recv().await["type"], "ask");
    conn.kill();
    let res = within("the ask to fail", ask).await.unwrap();
    assert!(matches!(res, Err(Error::Disconnected)), "{res:?}");
    // And the client reconnects on its own.
    let (_conn, connect) = peer.accept_welcome("s1", true).await;
    assert_eq!(connect["session"], "s1");
}

#[tokio::test]
async fn commands_issued_while_reconnecting_wait_for_the_new_connection() {
    let peer = Peer::bind().await;
    let (client, conn, _) = connect(&peer, builder(&peer)).await;
    let mut events = client.events();
    conn.kill();
    wait_event(&mut events, "disconnect", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    let ask = tokio::spawn({
        let client = client.clone();
        async move { client.ask("echo", &json!(1)).await }
    });
    let (mut conn, _) = peer.accept_welcome("s1", true).await;
    let f = conn.recv().await;
    assert_eq!(
        (f["type"].as_str(), f["id"].as_u64()),
        (Some("ask"), Some(1)),
        "ids restart per connection"
    );
    conn.send(json!({"type":"reply","id":f["id"],"data":"back"}))
        .await;
    assert_eq!(
        within("ask", ask).await.unwrap().unwrap().get(),
        r#""back""#
    );
}

#[tokio::test]
async fn reconnect_resends_session_and_last_offsets_and_drops_duplicates() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer).token("tok")).await;
    let mut news = subscribe(&client, &mut conn, "news", 5, "e1").await;
    assert_eq!((news.offset(), news.epoch()), (5, "e1"));
    let _quiet = subscribe(&client, &mut conn, "quiet", 0, "e9").await;
    message(&mut conn, "news", 5, "e1").await; // not newer than the reply: dropped
    message(&mut conn, "news", 6, "e1").await;
    message(&mut conn, "news", 7, "e1").await;
    assert_eq!(next_offset(&mut news).await, 6);
    assert_eq!(next_offset(&mut news).await, 7);

    let mut events = client.events();
    conn.kill();

    let mut conn = peer.accept().await;
    let connect = conn.recv().await;
    assert_eq!(connect["type"], "connect");
    assert_eq!(connect["session"], "s1");
    assert_eq!(connect["token"], "tok");
    let mut subs = connect["subscriptions"].as_array().unwrap().clone();
    subs.sort_by_key(|s| s["channel"].as_str().unwrap().to_owned());
    assert_eq!(
        subs,
        vec![
            json!({"channel":"news","offset":7,"epoch":"e1"}),
            json!({"channel":"quiet","offset":0,"epoch":"e9"}),
        ]
    );
    conn.welcome("s1", true, 25_000).await;
    conn.send(
        json!({"type":"subscribed","channel":"news","offset":9,"epoch":"e1","recovered":true}),
    )
    .await;
    for offset in [6, 7, 8, 9, 9, 8, 10] {
        message(&mut conn, "news", offset, "e1").await;
    }
    assert_eq!(next_offset(&mut news).await, 8);
    assert_eq!(next_offset(&mut news).await, 9);
    assert_eq!(next_offset(&mut news).await, 10);

    let e = wait_event(&mut events, "disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    assert!(matches!(e, Event::Disconnected { code: 1006, .. }), "{e:?}");
    let e = wait_event(&mut events, "connected", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;
    assert!(
        matches!(e, Event::Connected { resumed: true, ref session, .. } if session == "s1"),
        "{e:?}"
    );
    let e = wait_event(&mut events, "subscribed", |e| {
        matches!(e, Event::Subscribed { .. })
    })
    .await;
    assert!(
        matches!(e, Event::Subscribed { ref channel, offset: 9, recovered: true, .. } if channel == "news"),
        "{e:?}"
    );

    // The next reconnect carries the newest delivered offset.
    conn.kill();
    let mut conn = peer.accept().await;
    let connect = conn.recv().await;
    let subs = connect["subscriptions"].as_array().unwrap();
    assert!(
        subs.contains(&json!({"channel":"news","offset":10,"epoch":"e1"})),
        "{connect}"
    );
}

#[tokio::test]
async fn unrecoverable_gap_is_reported_and_the_stream_continues() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let mut news = subscribe(&client, &mut conn, "news", 3, "e1").await;
    let mut events = client.events();
    conn.kill();
    let (mut conn, _) = peer.accept_welcome("s2", false).await;
    conn.send(
        json!({"type":"subscribed","channel":"news","offset":20,"epoch":"e2","recovered":false}),
    )
    .await;
    message(&mut conn, "news", 15, "e2").await; // before the announced latest: not delivered
    message(&mut conn, "news", 21, "e2").await;
    assert_eq!(next_offset(&mut news).await, 21);
    let e = wait_event(&mut events, "disconnected", |_| true).await;
    assert!(matches!(e, Event::Disconnected { .. }), "{e:?}");
    let e = wait_event(&mut events, "connected", |_| true).await;
    assert!(
        matches!(e, Event::Connected { resumed: false, .. }),
        "{e:?}"
    );
    let e = wait_event(&mut events, "subscribed", |_| true).await;
    assert!(
        matches!(
            e,
            Event::Subscribed {
                recovered: false,
                offset: 20,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(client.connection_info().unwrap().session, "s2");
    // The stream goes on in the new epoch.
    message(&mut conn, "news", 21, "e2").await;
    message(&mut conn, "news", 22, "e2").await;
    assert_eq!(next_offset(&mut news).await, 22);
}

#[tokio::test]
async fn dropping_a_subscription_unsubscribes() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let sub = subscribe(&client, &mut conn, "news", 0, "e").await;
    let second = within("second subscribe", client.subscribe("news"))
        .await
        .unwrap();
    drop(sub);
    // Another stream still uses the channel: nothing sent yet.
    message(&mut conn, "news", 1, "e").await;
    let mut second = second;
    assert_eq!(next_offset(&mut second).await, 1);
    drop(second);
    let f = conn.recv().await;
    assert_eq!(
        (f["type"].as_str(), f["channel"].as_str()),
        (Some("unsubscribe"), Some("news"))
    );
    conn.send(json!({"type":"reply","id":f["id"]})).await;

    // Explicit unsubscribe waits for the answer.
    let sub = subscribe(&client, &mut conn, "other", 0, "e").await;
    let (res, ()) = tokio::join!(sub.unsubscribe(), async {
        let f = conn.recv().await;
        assert_eq!(f["type"], "unsubscribe");
        conn.send(json!({"type":"reply","id":f["id"]})).await;
    });
    res.unwrap();
}

#[tokio::test]
async fn server_side_unsubscribe_ends_the_stream() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let mut sub = subscribe(&client, &mut conn, "news", 0, "e").await;
    let mut events = client.events();
    conn.send(json!({"type":"unsubscribed","channel":"news","reason":"kicked"}))
        .await;
    assert!(within("end of stream", sub.next()).await.is_none());
    let e = wait_event(&mut events, "unsubscribed", |_| true).await;
    assert!(
        matches!(e, Event::Unsubscribed { ref reason, .. } if reason == "kicked"),
        "{e:?}"
    );
}

#[tokio::test]
async fn subscribe_error_is_returned() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let (res, ()) = tokio::join!(client.subscribe("secret"), async {
        let f = conn.recv().await;
        conn.send(json!({"type":"error","id":f["id"],"code":"forbidden","message":"no"}))
            .await;
    });
    assert_eq!(res.unwrap_err().code(), Some(&ErrorCode::Forbidden));
    // A later subscribe to the same channel asks the server again.
    let _sub = subscribe(&client, &mut conn, "secret", 0, "e").await;
}

#[tokio::test]
async fn ask_times_out() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer).ask_timeout(ms(100))).await;
    let res = client.ask("never", &json!(null)).await;
    assert!(matches!(res, Err(Error::Timeout)), "{res:?}");
    // A late answer is ignored and the connection keeps working.
    let first = conn.recv().await;
    conn.send(json!({"type":"reply","id":first["id"],"data":1}))
        .await;
    let (res, ()) = tokio::join!(client.ask("now", &json!(null)), async {
        let f = conn.recv().await;
        conn.send(json!({"type":"reply","id":f["id"],"data":2}))
            .await;
    });
    assert_eq!(res.unwrap().get(), "2");
}

#[tokio::test]
async fn close_sends_1000_and_fails_later_calls() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let mut events = client.events();
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.ask("slow", &json!(null)).await }
    });
    assert_eq!(conn.recv().await["type"], "ask");
    let (_, frame) = tokio::join!(client.close(), conn.closed());
    assert!(!client.is_connected());
    assert_eq!(u16::from(frame.expect("close frame").code), 1000);
    assert!(matches!(
        within("pending", pending).await.unwrap(),
        Err(Error::Closed)
    ));
    assert!(matches!(client.publish("x", &1).await, Err(Error::Closed)));
    assert!(client.is_closed());
    let e = wait_event(&mut events, "closed", |e| matches!(e, Event::Closed { .. })).await;
    assert!(matches!(e, Event::Closed { error: None }));
    assert!(within("end of events", events.recv()).await.is_none());
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let peer = Peer::bind().await;
    let (client, conn, _) = connect(&peer, builder(&peer)).await;
    drop(client);
    let frame = conn.closed().await;
    assert_eq!(u16::from(frame.expect("close frame").code), 1000);
}

#[tokio::test]
async fn protocol_violation_close_is_fatal() {
    let peer = Peer::bind().await;
    let (client, conn, _) = connect(&peer, builder(&peer)).await;
    let mut events = client.events();
    conn.close(4000, "too many bad frames").await;
    let e = wait_event(&mut events, "closed", |e| matches!(e, Event::Closed { .. })).await;
    assert!(
        matches!(
            e,
            Event::Closed {
                error: Some(Error::ConnectionClosed { code: 4000, .. })
            }
        ),
        "{e:?}"
    );
    let res = client.ask("x", &1).await;
    assert!(
        matches!(res, Err(Error::ConnectionClosed { code: 4000, .. })),
        "{res:?}"
    );
}

#[tokio::test]
async fn expired_token_without_provider_is_fatal() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer).token("old")).await;
    let mut events = client.events();
    conn.send(json!({"type":"error","code":"unauthorized","message":"token expired"}))
        .await;
    conn.close(4001, "").await;
    let e = wait_event(&mut events, "closed", |e| matches!(e, Event::Closed { .. })).await;
    assert!(
        matches!(
            e,
            Event::Closed {
                error: Some(Error::Server {
                    code: ErrorCode::Unauthorized,
                    ..
                })
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        client.tell("x", &1).await.unwrap_err().code(),
        Some(&ErrorCode::Unauthorized)
    );
}

#[tokio::test]
async fn expired_token_with_provider_reconnects_with_a_new_token() {
    let peer = Peer::bind().await;
    let calls = Arc::new(AtomicU32::new(0));
    let provider = {
        let calls = calls.clone();
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, std::io::Error>(format!("tok-{n}")) }
        }
    };
    let (client, conn, connect) = connect(&peer, builder(&peer).token_provider(provider)).await;
    assert_eq!(connect["token"], "tok-1");
    conn.close(4001, "token expired").await;
    // The first retry is refused too; the provider is asked each time.
    let mut refused = peer.accept().await;
    assert_eq!(refused.recv().await["token"], "tok-2");
    refused
        .send(json!({"type":"error","code":"unauthorized","message":"still bad"}))
        .await;
    refused.close(4001, "unauthorized").await;
    let (_conn, connect) = peer.accept_welcome("s1", true).await;
    assert_eq!(connect["token"], "tok-3");
    assert_eq!(connect["session"], "s1");
    let mut events = client.events();
    if !client.is_connected() {
        wait_event(&mut events, "connected", |e| {
            matches!(e, Event::Connected { .. })
        })
        .await;
    }
    assert!(!client.is_closed());
}

#[tokio::test]
async fn restart_notice_reconnects() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let mut events = client.events();
    conn.send(json!({"type":"disconnect","code":1012,"reason":"restarting","reconnect":true}))
        .await;
    conn.close(1012, "restarting").await;
    let (_conn, connect) = peer.accept_welcome("s1", true).await;
    assert_eq!(connect["session"], "s1");
    let e = wait_event(&mut events, "disconnect", |_| true).await;
    assert!(
        matches!(
            e,
            Event::Disconnect {
                code: 1012,
                reconnect: true,
                ..
            }
        ),
        "{e:?}"
    );
    let e = wait_event(&mut events, "disconnected", |_| true).await;
    assert!(matches!(e, Event::Disconnected { code: 1012, .. }), "{e:?}");
    let e = wait_event(&mut events, "connected", |_| true).await;
    assert!(matches!(e, Event::Connected { resumed: true, .. }), "{e:?}");
}

#[tokio::test]
async fn disconnect_without_reconnect_is_fatal() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let mut events = client.events();
    conn.send(json!({"type":"disconnect","code":4008,"reason":"slow consumer","reconnect":false}))
        .await;
    conn.close(4008, "slow consumer").await;
    let e = wait_event(&mut events, "closed", |e| matches!(e, Event::Closed { .. })).await;
    assert!(
        matches!(
            e,
            Event::Closed {
                error: Some(Error::ConnectionClosed { code: 4008, .. })
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn silent_server_counts_as_dead() {
    let peer = Peer::bind().await;
    let connecting = tokio::spawn(builder(&peer).connect());
    let mut conn = peer.accept().await;
    conn.recv().await;
    conn.welcome("s1", false, 100).await; // then say nothing at all
    let client = within("connect", connecting).await.unwrap().unwrap();
    let mut events = client.events();
    let (_conn2, connect) = peer.accept_welcome("s1", true).await;
    assert_eq!(connect["session"], "s1");
    let e = wait_event(&mut events, "disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    assert!(matches!(e, Event::Disconnected { code: 1006, .. }), "{e:?}");
    drop(conn);
}

#[tokio::test]
async fn connect_failure_is_reported() {
    // Nothing listens there any more.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let res = Client::connect(format!("ws://{addr}/ws")).await;
    assert!(matches!(res, Err(Error::Transport(_))), "{res:?}");
    let res = Client::connect("wss://example.invalid/ws").await;
    assert!(matches!(res, Err(Error::Config(_))), "{res:?}");
}

#[tokio::test]
async fn subscription_dropped_while_offline_is_not_resumed() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let gone = subscribe(&client, &mut conn, "gone", 4, "e").await;
    let kept = subscribe(&client, &mut conn, "kept", 2, "e").await;
    let mut events = client.events();
    conn.kill();
    wait_event(&mut events, "disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    drop(gone);
    // Give the task a moment to see the drop before it reconnects; the
    // assertions below hold either way.
    tokio::task::yield_now().await;
    let mut conn = peer.accept().await;
    let connect = conn.recv().await;
    let subs = connect["subscriptions"].as_array().unwrap().clone();
    assert!(
        subs.contains(&json!({"channel":"kept","offset":2,"epoch":"e"})),
        "{connect}"
    );
    let listed_gone = subs.iter().any(|s| s["channel"] == "gone");
    conn.welcome("s1", true, 25_000).await;
    // The resumed session may still hold `gone`: the client unsubscribes it
    // (or, had it listed it, drops it on its first message).
    if listed_gone {
        message(&mut conn, "gone", 5, "e").await;
    }
    let f = conn.recv().await;
    assert_eq!(
        (f["type"].as_str(), f["channel"].as_str()),
        (Some("unsubscribe"), Some("gone")),
        "{f}"
    );
    conn.send(json!({"type":"reply","id":f["id"]})).await;
    drop(kept);
}

#[tokio::test]
async fn messages_for_unknown_channels_unsubscribe_them() {
    let peer = Peer::bind().await;
    let (_client, mut conn, _) = connect(&peer, builder(&peer)).await;
    message(&mut conn, "stale", 3, "e").await;
    let f = conn.recv().await;
    assert_eq!(
        (f["type"].as_str(), f["channel"].as_str()),
        (Some("unsubscribe"), Some("stale"))
    );
    // More stragglers before the answer do not repeat it.
    message(&mut conn, "stale", 4, "e").await;
    conn.send(json!({"type":"reply","id":f["id"]})).await;
    conn.send(json!({"type":"ping"})).await;
    assert_eq!(conn.recv_any().await, json!({"type":"pong"}));
}

#[tokio::test]
async fn server_made_subscriptions_are_kept_and_attachable() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let mut events = client.events();
    conn.send(json!({"type":"subscribed","channel":"user:alice","offset":10,"epoch":"e"}))
        .await;
    let e = wait_event(&mut events, "subscribed", |_| true).await;
    assert!(
        matches!(
            e,
            Event::Subscribed {
                offset: 10,
                recovered: true,
                ..
            }
        ),
        "{e:?}"
    );
    // Attaching needs no round trip.
    let mut sub = within("attach", client.subscribe("user:alice"))
        .await
        .unwrap();
    assert_eq!((sub.offset(), sub.epoch()), (10, "e"));
    message(&mut conn, "user:alice", 11, "e").await;
    assert_eq!(next_offset(&mut sub).await, 11);
    // It survives a reconnect.
    conn.kill();
    let mut conn = peer.accept().await;
    let connect = conn.recv().await;
    assert_eq!(
        connect["subscriptions"],
        json!([{"channel":"user:alice","offset":11,"epoch":"e"}])
    );
}

#[tokio::test]
async fn subscribe_from_sends_the_position() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let (sub, ()) = tokio::join!(client.subscribe_from("news", 7, "e1"), async {
        let f = conn.recv().await;
        assert_eq!(
            (f["offset"].as_u64(), f["epoch"].as_str()),
            (Some(7), Some("e1")),
            "{f}"
        );
        conn.send(json!({"type":"reply","id":f["id"],"offset":9,"epoch":"e1","recovered":true}))
            .await;
        for offset in [7, 8, 9] {
            message(&mut conn, "news", offset, "e1").await;
        }
    });
    let mut sub = sub.unwrap();
    assert_eq!(sub.recovered(), Some(true));
    assert_eq!(next_offset(&mut sub).await, 8);
    assert_eq!(next_offset(&mut sub).await, 9);
}

#[tokio::test]
async fn concurrent_subscribes_to_one_channel_share_one_request() {
    let peer = Peer::bind().await;
    let (client, mut conn, _) = connect(&peer, builder(&peer)).await;
    let (a, b, ()) = tokio::join!(client.subscribe("news"), client.subscribe("news"), async {
        let f = conn.recv().await;
        assert_eq!(f["type"], "subscribe");
        // Published before the reply, already counted in it: not delivered.
        message(&mut conn, "news", 3, "e").await;
        conn.send(json!({"type":"reply","id":f["id"],"offset":3,"epoch":"e"}))
            .await;
        message(&mut conn, "news", 4, "e").await;
    });
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    assert_eq!(next_offset(&mut a).await, 4);
    assert_eq!(next_offset(&mut b).await, 4);
    // Only one subscribe went out: the next frame is this ping's pong.
    conn.send(json!({"type":"ping"})).await;
    assert_eq!(conn.recv_any().await, json!({"type":"pong"}));
}
