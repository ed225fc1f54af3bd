//! [`ClientBuilder`]: configuration, and opening the first connection.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::Client;
use crate::connection::{self, BoxError, Config, Shared, Task, TokenSource};
use crate::error::{Error, Result};

/// Commands queued while the connection is down (or busy) before callers wait.
const COMMAND_QUEUE: usize = 256;

/// Configures and opens a [`Client`]. Created by [`Client::builder`].
pub struct ClientBuilder {
    url: String,
    token: TokenSource,
    session: Option<String>,
    ask_timeout: Duration,
    connect_timeout: Duration,
    reconnect: bool,
    backoff_min: Duration,
    backoff_max: Duration,
    max_message_size: usize,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field(
                "token",
                &match self.token {
                    TokenSource::None => "none",
                    TokenSource::Static(_) => "static",
                    TokenSource::Provider(_) => "provider",
                },
            )
            .field("session", &self.session)
            .field("ask_timeout", &self.ask_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect", &self.reconnect)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

impl ClientBuilder {
    pub(crate) fn new(url: String) -> Self {
        ClientBuilder {
            url,
            token: TokenSource::None,
            session: None,
            ask_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            reconnect: true,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_message_size: 16 << 20,
        }
    }

    /// Connects with this token (a JWT). Without a token the client connects
    /// anonymously.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = TokenSource::Static(token.into());
        self
    }

    /// Fetches a fresh token before every connection attempt (the first one
    /// and each reconnect). With a provider, a connection closed with 4001
    /// (token expired) is reconnected with a new token instead of giving up.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), scaled_sockets_client::Error> {
    /// use scaled_sockets_client::Client;
    /// let client = Client::builder("ws://127.0.0.1:8080/ws")
    ///     .token_provider(|| async {
    ///         // e.g. ask your auth service
    ///         Ok::<_, std::io::Error>("eyJ…".to_string())
    ///     })
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let provider = Arc::new(provider);
        self.token = TokenSource::Provider(Arc::new(move || {
            let fut = provider();
            Box::pin(async move { fut.await.map_err(Into::into) })
        }));
        self
    }

    /// Resumes this session (from [`ConnectionInfo::session`](crate::ConnectionInfo::session) of an earlier
    /// client) if the server still holds it.
    pub fn session(mut self, session: impl Into<String>) -> Self {
        self.session = Some(session.into());
        self
    }

    /// How long a command waits for its answer, queueing included (default
    /// 10 s). Applies to every command with an answer: `ask`, `publish`,
    /// `subscribe`, `join`, … Past it the call fails with [`Error::Timeout`].
    pub fn ask_timeout(mut self, timeout: Duration) -> Self {
        self.ask_timeout = timeout;
        self
    }

    /// Bound on one connection attempt: TCP, WebSocket upgrade and `connect`
    /// → `welcome` (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Reconnect delays: the first retry waits between `min` and `2·min`,
    /// the ceiling doubles on each failure up to `max`, and each delay is
    /// drawn at random below the ceiling (default 100 ms .. 10 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Whether to reconnect after a lost connection (default true). With
    /// `false` the client stops at the first disconnect.
    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Largest incoming message accepted (default 16 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Connects and waits for the server's `welcome`.
    ///
    /// Fails with the server's error (e.g. [`Error::Server`] with
    /// [`ErrorCode::Unauthorized`](crate::ErrorCode::Unauthorized) for a
    /// rejected token) or the transport's; the first connection is not
    /// retried. Must be called within a Tokio runtime.
    pub async fn connect(self) -> Result<Client> {
        if self.url.starts_with("wss://") {
            return Err(Error::Config(
                "wss:// URLs need TLS support, which this build does not include".into(),
            ));
        }
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size));
        let cfg = Arc::new(Config {
            url: self.url,
            token: self.token,
            connect_timeout: self.connect_timeout,
            reconnect: self.reconnect,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            ws_config,
        });
        let (ws, welcome) = connection::establish(&cfg, self.session, Vec::new()).await?;
        let shared = Arc::new(Shared::new());
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let mut task = Task::new(cfg, shared.clone(), cmd_rx, ctl_rx, ctl_tx.clone());
        task.announce(&welcome, false);
        tokio::spawn(task.run(ws, welcome));
        Ok(Client {
            cmd: cmd_tx,
            ctl: ctl_tx,
            shared,
            ask_timeout: self.ask_timeout,
        })
    }
}
