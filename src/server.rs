//! [`Server`]: starting an instance, accepting connections, shutting down
//! gracefully.

use crate::{
    admission::{Admission, Slot},
    app::App,
    config::Config,
    connection::Endpoint,
    cores::Cores,
    error::Error,
    http::ScaledSocketsService,
    hub::{Hub, ShutdownGuard},
    sockets::Sockets,
};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use scaled_sockets_scaler::{Scaler, TimeoutScaler};
use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One running instance: its hub (cluster link and connections), its app,
/// and the HTTP front. Start it with [`Server::start`], then either
/// [`Server::serve`] it on a listener or mount [`Server::service`] in your own
/// hyper or axum app.
///
/// Dropping a `Server` without [`Server::drain`] still stops its background
/// tasks, closes its connections (1012, reconnect) and takes the instance out
/// of the cluster registry: no ghost instance stays behind.
#[derive(Debug)]
pub struct Server {
    endpoint: Endpoint,
    _shutdown: ShutdownGuard,
}

impl Server {
    /// Joins the cluster through `scaler` (opens the feed, registers the
    /// instance) and starts the background tasks.
    pub async fn start(config: Config, scaler: Arc<dyn Scaler>, app: App) -> Result<Self, Error> {
        app.validate()?;
        // Every scaler call is bounded once, here, rather than at each call
        // site: a backend that hangs answers `timeout` instead of stalling.
        let scaler: Arc<dyn Scaler> = Arc::new(TimeoutScaler::new(scaler, config.scaler_timeout));
        let (hub, shutdown) = Hub::start(config, scaler).await?;
        let cores = Cores::start(hub.clone(), app.cores.clone()).await;
        Ok(Self {
            endpoint: Endpoint {
                hub,
                cores,
                app: Arc::new(app),
            },
            _shutdown: shutdown,
        })
    }

    /// The app-facing handle: publish, tell, ask... anywhere in the cluster.
    pub fn sockets(&self) -> Sockets {
        Sockets::new(self.endpoint.hub.clone(), self.endpoint.cores.clone())
    }

    /// Every route (`/ws`, `/healthz`, `/readyz`, `/metrics`, `/api/*`) as a
    /// hyper and tower service.
    pub fn service(&self) -> ScaledSocketsService {
        ScaledSocketsService {
            endpoint: self.endpoint.clone(),
            websocket_only: false,
        }
    }

    /// Only the WebSocket endpoint, answering upgrades on whatever path it is
    /// mounted at.
    pub fn websocket_service(&self) -> ScaledSocketsService {
        ScaledSocketsService {
            endpoint: self.endpoint.clone(),
            websocket_only: true,
        }
    }

    /// Drains: new upgrades and `/readyz` answer 503, clients get `disconnect`
    /// (1012, reconnect) and are closed, the instance leaves the cluster. Waits at
    /// most the configured drain timeout. Use it when you mount the service in
    /// your own server; [`Server::serve`] calls it for you.
    pub async fn drain(&self) {
        drain(&self.endpoint).await;
    }

    /// Serves HTTP and WebSocket on `listener` until `shutdown` resolves, then
    /// drains. While draining it keeps answering, so new upgrades and `/readyz`
    /// get 503 rather than a refused connection.
    ///
    /// Accepting goes through a gate ([`Config::max_handshakes`] handshakes
    /// in flight, [`Config::handshake_rate`] accepts per second): beyond it,
    /// connections wait in the listen backlog instead of being refused.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        // Plain HTTP connections stop at the end; upgraded sockets are drained
        // by the node (they have left hyper by then).
        let accept = Acceptor {
            service: self.service(),
            stop_http: CancellationToken::new(),
            http_root: crate::shutdown::drain_pair(),
        };
        let config = &self.endpoint.hub.config;
        let mut gate = Admission::new(config.max_handshakes, config.handshake_rate);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                (slot, accepted) = admitted(&mut gate, &listener) => accept.handle(accepted, slot).await,
            }
        }
        tracing::info!("draining");
        let drain = drain(&self.endpoint);
        tokio::pin!(drain);
        loop {
            tokio::select! {
                () = &mut drain => break,
                (slot, accepted) = admitted(&mut gate, &listener) => accept.handle(accepted, slot).await,
            }
        }
        drop(listener);
        accept.stop_http.cancel();
        let (root, waiter) = accept.http_root;
        drop(root);
        let _ = tokio::time::timeout(Duration::from_millis(500), waiter.wait()).await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Waits for the gate, then accepts. The slot is taken before `accept`, so
/// while the gate is shut connections stay in the kernel's listen backlog.
/// Dropping this future (shutdown won the race) gives the slot back.
async fn admitted(
    gate: &mut Admission,
    listener: &TcpListener,
) -> (
    Slot,
    std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>,
) {
    let slot = gate.admit().await;
    (slot, listener.accept().await)
}

/// Hands the cores over (within a third of the drain bound), then drains
/// the hub: members are told to rejoin before their connections close.
async fn drain(endpoint: &Endpoint) {
    let budget = endpoint.hub.config.drain_timeout / 3;
    endpoint.cores.drain(budget).await;
    endpoint.hub.drain().await;
}

/// Serves accepted TCP connections with hyper.
struct Acceptor {
    service: ScaledSocketsService,
    stop_http: CancellationToken,
    http_root: (crate::shutdown::DrainGuard, crate::shutdown::DrainWaiter),
}

impl Acceptor {
    async fn handle(
        &self,
        accepted: std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>,
        slot: Slot,
    ) {
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        // The first request carries the handshake slot (an upgrade hands it
        // to the connection task, any other request frees it when answered);
        // a connection that sends no request holds it until hyper's header
        // read timeout closes it.
        let first = Mutex::new(Some(slot));
        let service = self.service.clone();
        let service =
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                if let Some(slot) = first.lock().ok().and_then(|mut s| s.take()) {
                    req.extensions_mut().insert(slot);
                }
                hyper::service::Service::call(&service, req)
            });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = self.stop_http.clone();
        let guard = self.http_root.0.clone();
        tokio::spawn(async move {
            let _guard = guard;
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}
