//! The standalone server's command line, shared by the `scaled-sockets` binary
//! and the `demo` example (which adds its handlers to the [`App`]).
//!
//! Precedence: flags, then environment, then the TOML config file, then the
//! defaults of [`Config`].

use crate::{app::App, auth::JwtAuthenticator, config::Config, error::Error, server::Server};
use clap::Parser;
use scaled_sockets_scaler::{MemoryScaler, Scaler};
use serde::Deserialize;
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

/// Bound of `--write-delay-us`: a coalescing window, not a place to park frames.
const MAX_WRITE_DELAY: Duration = Duration::from_millis(50);

/// Flags of the standalone server (docs/protocol.md, "The standalone server").
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "scaled-sockets",
    version,
    about = "Run WebSocket applications on many instances as if they were one."
)]
pub struct Args {
    /// HTTP + WebSocket address [default: 127.0.0.1:8080]
    #[arg(long, env = "SCALED_SOCKETS_LISTEN")]
    pub listen: Option<String>,
    /// memory:// | redis://[:pass@]host:port[/db] | rediss://… | redis+cluster://[:pass@]host:port[,host:port…] | redis+sentinel://host:port[,…]/service | nats://host:port[,host:port…] [default: memory://]
    #[arg(long, env = "SCALED_SOCKETS_SCALER")]
    pub scaler: Option<String>,
    /// This instance's id in the cluster [default: a new UUID]
    #[arg(long, env = "SCALED_SOCKETS_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// HS256 secret for connection tokens
    #[arg(long, env = "SCALED_SOCKETS_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Only accept tokens whose `aud` claim names this audience
    #[arg(long, env = "SCALED_SOCKETS_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,
    /// Only accept tokens whose `iss` claim is this issuer
    #[arg(long, env = "SCALED_SOCKETS_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,
    /// Accept `connect` without a token (development only)
    #[arg(
        long,
        env = "SCALED_SOCKETS_ALLOW_ANONYMOUS",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_anonymous: bool,
    /// Enables the HTTP API (/api/*) with this bearer key
    #[arg(long, env = "SCALED_SOCKETS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Larger frames close the connection with 1009 [default: 65536]
    #[arg(long, env = "SCALED_SOCKETS_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Subscriptions per connection [default: 128]
    #[arg(long, env = "SCALED_SOCKETS_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// Publishes per second per connection, burst 2N, 0 = no limit [default: 1000]
    #[arg(long, env = "SCALED_SOCKETS_PUBLISH_RATE")]
    pub publish_rate: Option<u32>,
    /// Server ping period in ms [default: 25000]
    #[arg(long, env = "SCALED_SOCKETS_PING_INTERVAL_MS")]
    pub ping_interval_ms: Option<u64>,
    /// Time allowed for `connect` in ms [default: 10000]
    #[arg(long, env = "SCALED_SOCKETS_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Graceful shutdown bound in ms [default: 10000]
    #[arg(long, env = "SCALED_SOCKETS_DRAIN_TIMEOUT_MS")]
    pub drain_timeout_ms: Option<u64>,
    /// Publications kept per channel for recovery [default: 1000]
    #[arg(long, env = "SCALED_SOCKETS_HISTORY_SIZE")]
    pub history_size: Option<usize>,
    /// Channel history lifetime after its last publication, in ms [default: 600000]
    #[arg(long, env = "SCALED_SOCKETS_HISTORY_TTL_MS")]
    pub history_ttl_ms: Option<u64>,
    /// How long a closed session stays resumable, in ms [default: 120000]
    #[arg(long, env = "SCALED_SOCKETS_RESUME_WINDOW_MS")]
    pub resume_window_ms: Option<u64>,
    /// Frames queued per connection before it is closed as a slow consumer (4008) [default: 1024]
    #[arg(long, env = "SCALED_SOCKETS_OUTBOUND_QUEUE")]
    pub outbound_queue: Option<usize>,
    /// Write coalescing window in µs: a woken connection waits this long for more frames before writing them together, at most 50000 (fewer system calls, up to this much added latency) [default: 0]
    #[arg(long, env = "SCALED_SOCKETS_WRITE_DELAY_US")]
    pub write_delay_us: Option<u64>,
    /// Largest `data` in a publication, tell, ask or reply the server sends; larger: limit_exceeded (HTTP 413) [default: 65536]
    #[arg(long, env = "SCALED_SOCKETS_MAX_DATA_BYTES")]
    pub max_data_bytes: Option<usize>,
    /// Commands with an id awaiting their answer per connection; more: limit_exceeded [default: 64]
    #[arg(long, env = "SCALED_SOCKETS_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// subscribe, unsubscribe and presence per second per connection, burst 2N, 0 = no limit [default: 100]
    #[arg(long, env = "SCALED_SOCKETS_SUBSCRIBE_RATE")]
    pub subscribe_rate: Option<u32>,
    /// Most entries in a presence answer (then `truncated: true`) [default: 1000]
    #[arg(long, env = "SCALED_SOCKETS_MAX_PRESENCE")]
    pub max_presence: Option<usize>,
    /// Period of the check of every subscribed channel against its stream's top, in ms [default: 10000]
    #[arg(long, env = "SCALED_SOCKETS_GAP_CHECK_INTERVAL_MS")]
    pub gap_check_interval_ms: Option<u64>,
    /// Connections between accept and the end of their handshake at once; more wait in the listen backlog, 0 = no bound [default: 256]
    #[arg(long, env = "SCALED_SOCKETS_MAX_HANDSHAKES")]
    pub max_handshakes: Option<usize>,
    /// Connections accepted per second; more wait in the listen backlog, 0 = no limit [default: 10000]
    #[arg(long, env = "SCALED_SOCKETS_HANDSHAKE_RATE")]
    pub handshake_rate: Option<u32>,
    /// Prefix of every key and channel in the scaler backend [default: ss]
    #[arg(long, env = "SCALED_SOCKETS_SCALER_PREFIX")]
    pub scaler_prefix: Option<String>,
    /// TOML file; its keys are the long flag names with `_` for `-`
    #[arg(long, env = "SCALED_SOCKETS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The TOML config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    scaler: Option<String>,
    instance_id: Option<String>,
    token_secret: Option<String>,
    token_audience: Option<String>,
    token_issuer: Option<String>,
    allow_anonymous: Option<bool>,
    api_key: Option<String>,
    max_frame_bytes: Option<usize>,
    max_subscriptions: Option<usize>,
    publish_rate: Option<u32>,
    ping_interval_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    history_size: Option<usize>,
    history_ttl_ms: Option<u64>,
    resume_window_ms: Option<u64>,
    outbound_queue: Option<usize>,
    write_delay_us: Option<u64>,
    max_data_bytes: Option<usize>,
    max_in_flight: Option<usize>,
    subscribe_rate: Option<u32>,
    max_presence: Option<usize>,
    gap_check_interval_ms: Option<u64>,
    max_handshakes: Option<usize>,
    handshake_rate: Option<u32>,
    scaler_prefix: Option<String>,
}

/// Everything the standalone server needs, resolved from flags, env and file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to listen.
    pub listen: String,
    /// The scaler URL.
    pub scaler: String,
    /// Key prefix in the backend.
    pub scaler_prefix: String,
    /// HS256 secret, if any.
    pub token_secret: Option<String>,
    /// Required `aud` of tokens, if any.
    pub token_audience: Option<String>,
    /// Required `iss` of tokens, if any.
    pub token_issuer: Option<String>,
    /// Whether token-less connects are accepted.
    pub allow_anonymous: bool,
    /// The server configuration.
    pub config: Config,
}

impl Args {
    /// Merges flags/env with the config file and the defaults, and checks the
    /// result.
    pub fn resolve(self) -> Result<Settings, Error> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };
        let mut config = Config::default();
        if let Some(id) = self.instance_id.or(file.instance_id) {
            config.instance_id = id;
        }
        config.api_key = self.api_key.or(file.api_key).filter(|k| !k.is_empty());
        macro_rules! take {
            ($field:ident => $target:expr, $map:expr) => {
                if let Some(v) = self.$field.or(file.$field) {
                    $target = $map(v);
                }
            };
        }
        take!(max_frame_bytes => config.max_frame_bytes, |v| v);
        take!(max_subscriptions => config.max_subscriptions, |v| v);
        take!(publish_rate => config.publish_rate, |v| v);
        take!(ping_interval_ms => config.ping_interval, Duration::from_millis);
        take!(handshake_timeout_ms => config.handshake_timeout, Duration::from_millis);
        take!(drain_timeout_ms => config.drain_timeout, Duration::from_millis);
        take!(history_size => config.history.history_size, |v| v);
        take!(history_ttl_ms => config.history.history_ttl, Duration::from_millis);
        take!(resume_window_ms => config.resume_window, Duration::from_millis);
        take!(outbound_queue => config.outbound_queue, |v| v);
        take!(write_delay_us => config.write_delay, Duration::from_micros);
        take!(max_data_bytes => config.max_data_bytes, |v| v);
        take!(max_in_flight => config.max_in_flight, |v| v);
        take!(subscribe_rate => config.subscribe_rate, |v| v);
        take!(max_presence => config.max_presence, |v| v);
        take!(gap_check_interval_ms => config.gap_check_interval, Duration::from_millis);
        take!(max_handshakes => config.max_handshakes, |v| v);
        take!(handshake_rate => config.handshake_rate, |v| v);
        if config.max_in_flight == 0 || config.gap_check_interval.is_zero() {
            return Err(Error::Config(
                "max-in-flight and gap-check-interval-ms must be > 0".into(),
            ));
        }
        if config.max_frame_bytes < 128 {
            return Err(Error::Config("max-frame-bytes must be at least 128".into()));
        }
        if config.ping_interval.is_zero() || config.handshake_timeout.is_zero() {
            return Err(Error::Config(
                "ping-interval-ms and handshake-timeout-ms must be > 0".into(),
            ));
        }
        if config.outbound_queue == 0 {
            return Err(Error::Config("outbound-queue must be > 0".into()));
        }
        if config.write_delay > MAX_WRITE_DELAY {
            return Err(Error::Config(format!(
                "write-delay-us must be at most {}",
                MAX_WRITE_DELAY.as_micros()
            )));
        }
        config.recovery_limit = config.history.history_size.max(1);
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let token_secret = self
            .token_secret
            .or(file.token_secret)
            .filter(|s| !s.is_empty());
        let allow_anonymous = self.allow_anonymous || file.allow_anonymous.unwrap_or(false);
        if token_secret.is_none() && !allow_anonymous {
            return Err(Error::Config(
                "refusing to start: set --token-secret (HS256 secret for connection tokens) \
                 or --allow-anonymous (development only)"
                    .into(),
            ));
        }
        Ok(Settings {
            listen,
            scaler: self
                .scaler
                .or(file.scaler)
                .unwrap_or_else(|| "memory://".into()),
            scaler_prefix: self
                .scaler_prefix
                .or(file.scaler_prefix)
                .unwrap_or_else(|| "ss".into()),
            token_secret,
            token_audience: self.token_audience.or(file.token_audience),
            token_issuer: self.token_issuer.or(file.token_issuer),
            allow_anonymous,
            config,
        })
    }
}

/// Builds the scaler a URL names.
pub async fn scaler_from_url(url: &str, prefix: &str) -> Result<Arc<dyn Scaler>, Error> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or_default();
    match scheme {
        "memory" => Ok(Arc::new(MemoryScaler::new())),
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" | "redis+sentinel" => {
            let mut config = scaled_sockets_redis::RedisConfig::from_url(url)?;
            config.prefix = prefix.to_owned();
            Ok(Arc::new(
                scaled_sockets_redis::RedisScaler::connect(config).await?,
            ))
        }
        #[cfg(feature = "nats")]
        "nats" => {
            let mut config = scaled_sockets_nats::NatsConfig::from_url(url);
            config.prefix = prefix.to_owned();
            Ok(Arc::new(
                scaled_sockets_nats::NatsScaler::connect(config).await?,
            ))
        }
        _ => {
            let _ = prefix;
            Err(Error::Config(format!(
                "unsupported scaler URL `{url}`: use memory://, redis://, rediss://, redis+cluster://, redis+sentinel:// or nats:// \
                 (redis and nats need the crate features of the same name)"
            )))
        }
    }
}

/// Runs the standalone server with `app`'s handlers until SIGTERM or SIGINT,
/// then drains. Returns the process exit code.
pub async fn run(app: App) -> std::process::ExitCode {
    init_logging();
    match run_inner(app, Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("scaled-sockets: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .try_init();
}

async fn run_inner(app: App, args: Args) -> Result<(), Error> {
    let settings = args.resolve()?;
    let mut auth = match &settings.token_secret {
        Some(secret) => {
            JwtAuthenticator::new(secret.as_bytes()).allow_anonymous(settings.allow_anonymous)
        }
        // No secret: tokens cannot be verified, so they are refused, never
        // trusted; connects without one are anonymous.
        None => JwtAuthenticator::anonymous_only(),
    };
    if let Some(audience) = &settings.token_audience {
        auth = auth.audience(audience);
    }
    if let Some(issuer) = &settings.token_issuer {
        auth = auth.issuer(issuer);
    }
    if settings.allow_anonymous {
        tracing::warn!(
            "anonymous connections are allowed to subscribe and publish anywhere: development only"
        );
    }
    let app = app.authenticator(auth);
    let addr: SocketAddr = settings
        .listen
        .parse()
        .map_err(|e| Error::Config(format!("--listen {}: {e}", settings.listen)))?;
    let listener = listen(addr)?;
    let local = listener.local_addr()?;
    let mut config = settings.config;
    config.advertised_address = local.to_string();
    let scaler = scaler_from_url(&settings.scaler, &settings.scaler_prefix).await?;
    let server = Server::start(config, scaler, app).await?;
    tracing::info!("listening on {local}");
    server.serve(listener, shutdown_signal()).await
}

/// Connections the kernel may queue for `accept` (capped by the system's
/// `net.core.somaxconn`). Large, because the accept gate leaves a reconnect
/// storm waiting there; a full backlog makes clients retry their SYN, later.
pub const LISTEN_BACKLOG: u32 = 8192;

/// Binds `addr` with a [`LISTEN_BACKLOG`]-deep accept queue.
pub fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's and tokio's `bind` do: a restarted server can take its port
    // back while old connections linger in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(LISTEN_BACKLOG)?)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_without_auth() {
        let err = Args::default().resolve().unwrap_err();
        assert!(err.to_string().contains("--token-secret"));
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = std::env::temp_dir().join(format!("ss-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9\"\nmax_subscriptions = 7\npublish_rate = 3\nallow_anonymous = true\n").unwrap();
        let args = Args {
            config: Some(path),
            publish_rate: Some(5),
            ..Args::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.listen, "127.0.0.1:9");
        assert_eq!(s.config.max_subscriptions, 7);
        assert_eq!(s.config.publish_rate, 5);
        assert!(s.allow_anonymous);
        assert_eq!(s.config.max_frame_bytes, 65_536);
        assert_eq!(s.scaler, "memory://");
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = std::env::temp_dir().join(format!("ss-cli-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "listn = \"x\"\n").unwrap();
        let args = Args {
            config: Some(path),
            allow_anonymous: true,
            ..Args::default()
        };
        assert!(args.resolve().is_err());
    }

    #[test]
    fn the_write_delay_is_bounded() {
        let with = |us| Args {
            allow_anonymous: true,
            write_delay_us: Some(us),
            ..Args::default()
        };
        let s = with(500).resolve().unwrap();
        assert_eq!(s.config.write_delay, Duration::from_micros(500));
        let err = with(50_001).resolve().unwrap_err();
        assert!(err.to_string().contains("write-delay-us"), "{err}");
        let default = Args {
            allow_anonymous: true,
            ..Args::default()
        };
        assert!(default.resolve().unwrap().config.write_delay.is_zero());
    }
}
