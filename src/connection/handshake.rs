//! The start of a connection: waiting for `connect`, authenticating it,
//! resuming or creating the session, registering with the hub, `welcome`.

use super::{Conn, SubTable, io::Socket, session, transport::Transport};
use crate::{
    app::App,
    auth::Identity,
    error::ErrorCode,
    hub::Hub,
    mailbox::Mailbox,
    protocol::{self, ClientFrame, SubscriptionRequest, close},
    rate_limit::TokenBucket,
};
use futures_util::StreamExt;
use scaled_sockets_scaler::Topic;
use std::{borrow::Cow, collections::HashSet, sync::Arc};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

async fn send_frame(t: &mut impl Transport, frame: String) -> bool {
    t.send_frame(frame.into()).await
}

async fn send_close(t: &mut impl Transport, code: u16, reason: &str) {
    t.send_close(code, reason).await;
}

/// What `connect` asked for besides authentication.
pub(super) struct ConnectRequest {
    session: Option<String>,
    subscriptions: Vec<SubscriptionRequest>,
}

/// Waits for `connect` and authenticates it.
pub(super) async fn handshake(
    hub: &Hub,
    app: &App,
    ws: &mut Socket,
) -> Option<(Identity, ConnectRequest)> {
    let deadline = tokio::time::Instant::now() + hub.config.handshake_timeout;
    let text = loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                send_close(
                    ws,
                    close::HANDSHAKE_TIMEOUT,
                    "no connect within the handshake timeout",
                )
                .await;
                return None;
            }
            Ok(None) | Ok(Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))) => {
                return None;
            }
            Ok(Some(Err(WsError::Capacity(_)))) => {
                send_close(ws, close::TOO_LARGE, "frame too large").await;
                return None;
            }
            Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Text(text)))) => break text,
            Ok(Some(Ok(Message::Binary(_)))) => {
                send_close(ws, close::BINARY, "binary frames are not accepted").await;
                return None;
            }
            Ok(Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(_))) => continue,
        }
    };
    authenticate(app, ws, &text, deadline).await
}

/// Parses the `connect` frame and authenticates it, whatever transport
/// carried it (a WebSocket frame, or the query of an SSE stream).
pub(super) async fn authenticate(
    app: &App,
    ws: &mut impl Transport,
    text: &str,
    deadline: tokio::time::Instant,
) -> Option<(Identity, ConnectRequest)> {
    let (token, session, subscriptions) = match protocol::parse_client_frame(text) {
        Ok(ClientFrame::Connect {
            id: _,
            token,
            session,
            subscriptions,
        }) => (
            token.map(Cow::into_owned),
            session.map(Cow::into_owned),
            subscriptions,
        ),
        Ok(_) => {
            send_frame(
                ws,
                protocol::error(
                    None,
                    ErrorCode::BadRequest,
                    "the first frame must be `connect`",
                ),
            )
            .await;
            send_close(ws, close::PROTOCOL, "the first frame must be connect").await;
            return None;
        }
        Err(bad) => {
            let message = if bad.was_connect {
                bad.message
            } else {
                format!("the first frame must be `connect`: {}", bad.message)
            };
            send_frame(ws, protocol::error(bad.id, ErrorCode::BadRequest, &message)).await;
            send_close(
                ws,
                close::PROTOCOL,
                "the first frame must be a valid connect",
            )
            .await;
            return None;
        }
    };
    let auth = app.authenticator.clone();
    let identity =
        match tokio::time::timeout_at(deadline, auth.authenticate(token.as_deref())).await {
            Ok(Ok(identity)) => identity,
            Ok(Err(e)) => {
                let code = if e.code == ErrorCode::Unauthorized || e.code == ErrorCode::Forbidden {
                    ErrorCode::Unauthorized
                } else {
                    e.code
                };
                send_frame(ws, protocol::error(None, code, &e.message)).await;
                send_close(ws, close::UNAUTHORIZED, "unauthorized").await;
                return None;
            }
            Err(_) => {
                send_close(
                    ws,
                    close::HANDSHAKE_TIMEOUT,
                    "authentication did not finish in time",
                )
                .await;
                return None;
            }
        };
    Some((
        identity,
        ConnectRequest {
            session,
            subscriptions,
        },
    ))
}

/// Resumes or creates the session, registers the connection and sends `welcome`.
pub(super) async fn welcome(
    hub: Arc<Hub>,
    app: Arc<App>,
    cores: Arc<crate::cores::Cores>,
    ws: &mut impl Transport,
    identity: Identity,
    connect: ConnectRequest,
) -> Option<Conn> {
    let mut restored = Vec::new();
    let mut taken = Vec::new();
    let mut resumed = false;
    let mut session_id = None;
    if let Some(requested) = connect.session.as_deref() {
        // A live session is joined, and `resumed` says so, even when none of
        // its subscriptions come back (the tabs holding them are open): its
        // data and its identity are the session's.
        if let Some(found) = session::restore(&hub, requested, &identity.user).await {
            restored = found.subscriptions;
            taken = found.taken;
            resumed = true;
            session_id = Some(requested.to_owned());
        }
    }
    let session: Arc<str> = session_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
        .into();
    let expires_at_ms = identity
        .expires_at
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    let handle = Arc::new(Mailbox::new(
        hub.next_id(),
        hub.new_client_id(),
        identity.user.as_deref().map(Arc::from),
        session.clone(),
        expires_at_ms,
        hub.clock_ms(),
        hub.config.outbound_queue,
    ));
    // Join the user's topic before welcoming, so a tell sent right after the
    // welcome is not missed. (Sessions need no topic: see Sockets::tell_session.)
    let topics: Vec<Topic> = handle
        .user
        .iter()
        .map(|user| Topic::User(user.clone()))
        .collect();
    // A new session's head is written before the welcome (beside the topic
    // joins, so it costs no extra round trip): a second tab may join the
    // session the moment the first is welcomed. A joined session's head
    // exists and is renewed in the background.
    let new_head = async {
        if !resumed {
            session::put_head(&hub, &session, identity.user.clone()).await;
        }
    };
    let joins = async {
        for topic in &topics {
            hub.join_topic(topic, &handle).await?;
        }
        Ok::<(), scaled_sockets_scaler::ScalerError>(())
    };
    let ((), joined) = tokio::join!(new_head, joins);
    if let Err(e) = joined {
        for t in &topics {
            hub.leave_topic(t, handle.key);
        }
        tracing::warn!(error = %e, "cannot register connection with the scaler");
        send_frame(
            ws,
            protocol::error(
                None,
                ErrorCode::Unavailable,
                "the cluster backend is unavailable",
            ),
        )
        .await;
        send_close(
            ws,
            close::RESTARTING,
            "backend unavailable: reconnect later",
        )
        .await;
        return None;
    }
    hub.register(&handle);
    let frame = protocol::welcome(
        &session,
        &handle.client,
        &hub.id,
        handle.user.as_deref(),
        hub.config.ping_interval.as_millis() as u64,
        resumed,
    );
    let publish_rate = hub.config.publish_rate;
    let subscribe_rate = hub.config.subscribe_rate;
    let mut conn = Conn {
        handle: handle.clone(),
        identity,
        subs: SubTable::default(),
        pending: HashSet::new(),
        rare: None,
        next_generation: 1,
        bucket: TokenBucket::new(publish_rate, publish_rate.saturating_mul(2)),
        command_bucket: TokenBucket::new(subscribe_rate, subscribe_rate.saturating_mul(2)),
        publishes: None,
        presence_chain: None,
        session_chain: None,
        saved_fingerprint: 0,
        saved_at_ms: 0,
        data_touched_at_ms: hub.clock_ms(),
        hub,
        app,
        cores,
    };
    if !send_frame(ws, frame).await {
        conn.cleanup();
        return None;
    }
    if let Some(hook) = conn.app.on_connect.clone() {
        tokio::spawn(hook(conn.context()));
    }
    // Restored subscriptions first, then the client's own list, which wins for
    // channels in both (it knows what it last saw).
    let mut wanted: Vec<SubscriptionRequest> = Vec::new();
    for request in restored.into_iter().chain(connect.subscriptions) {
        if let Some(existing) = wanted.iter_mut().find(|r| r.channel == request.channel) {
            *existing = request;
        } else {
            wanted.push(request);
        }
    }
    // The session is live (resumable by another tab or after a crash) from
    // now on, not only after this connection closes; later saves follow the
    // delivered positions.
    conn.start_session_records(wanted.clone(), taken, !resumed);
    let mut out = Vec::new();
    for request in wanted {
        conn.server_subscribe(request, &mut out);
    }
    for frame in out {
        if !ws.send_frame(frame).await {
            conn.cleanup();
            return None;
        }
    }
    Some(conn)
}
