//! Opening a connection: WebSocket upgrade, `connect`, waiting for `welcome`;
//! and which failures are worth another attempt.

use std::borrow::Cow;

use futures_util::{SinkExt, StreamExt};
use scaled_sockets_protocol::{
    ClientFrame, ErrorCode, ServerFrame, SubscriptionRequest, Welcome, decode_server_frame,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::debug;

use super::{ABNORMAL, Config, FATAL_CLOSE_CODES, TokenSource, Ws};
use crate::error::Error;

/// Opens a WebSocket, sends `connect` and waits for `welcome`.
pub(crate) async fn establish(
    cfg: &Config,
    session: Option<String>,
    subscriptions: Vec<SubscriptionRequest>,
) -> Result<(Ws, Welcome), Error> {
    let token = match &cfg.token {
        TokenSource::None => None,
        TokenSource::Static(t) => Some(t.clone()),
        TokenSource::Provider(provider) => {
            Some(provider().await.map_err(|e| Error::Token(e.to_string()))?)
        }
    };
    let handshake = async {
        let (mut ws, _response) = tokio_tungstenite::connect_async_with_config(
            cfg.url.as_str(),
            Some(cfg.ws_config),
            true,
        )
        .await?;
        let connect = ClientFrame::Connect {
            id: None,
            token: token.as_deref().map(Cow::Borrowed),
            session: session.as_deref().map(Cow::Borrowed),
            subscriptions,
        };
        ws.send(WsMessage::text(connect.encode())).await?;
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => match decode_server_frame(text.as_str())? {
                    ServerFrame::Welcome(welcome) => return Ok((ws, welcome)),
                    ServerFrame::Error { code, message, .. } => {
                        return Err(Error::Server { code, message });
                    }
                    ServerFrame::Ping => {
                        ws.send(WsMessage::text(ClientFrame::Pong.encode())).await?
                    }
                    other => debug!(frame = ?other, "frame before welcome ignored"),
                },
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(match frame {
                        Some(f) => close_error(f.code.into(), f.reason.to_string()),
                        None => close_error(1005, String::new()),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(Error::ConnectionClosed {
                        code: ABNORMAL,
                        reason: "closed during the handshake".into(),
                    });
                }
            }
        }
    };
    tokio::time::timeout(cfg.connect_timeout, handshake)
        .await
        .map_err(|_| Error::Timeout)?
}

pub(super) fn close_error(code: u16, reason: String) -> Error {
    if code == 4001 {
        Error::Server {
            code: ErrorCode::Unauthorized,
            message: reason,
        }
    } else {
        Error::ConnectionClosed { code, reason }
    }
}

/// Whether a failed reconnect attempt is worth repeating.
pub(super) fn retryable(err: &Error, has_provider: bool) -> bool {
    match err {
        Error::Server {
            code: ErrorCode::Unauthorized,
            ..
        } => has_provider,
        Error::ConnectionClosed { code, .. } => !FATAL_CLOSE_CODES.contains(code),
        Error::Config(_) | Error::Closed => false,
        _ => true,
    }
}
