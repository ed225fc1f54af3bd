//! The shared conformance suite against a private `nats-server -js` per test.

use futures_util::future::BoxFuture;
use scaled_sockets_conformance::TestBackend;
use scaled_sockets_nats::{NatsConfig, NatsScaler};
use scaled_sockets_scaler::Scaler;
use scaled_sockets_test_harness::NatsServer;
use std::sync::{Arc, Mutex};

struct Nats {
    server: Mutex<NatsServer>,
    url: String,
    prefix: String,
}

impl Nats {
    async fn start() -> Self {
        let server = tokio::task::spawn_blocking(NatsServer::start)
            .await
            .expect("start nats-server");
        let url = server.url();
        Self {
            server: Mutex::new(server),
            url,
            prefix: format!("t{}", &uuid_like()[..10]),
        }
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}{:x}", std::process::id())
}

impl TestBackend for Nats {
    fn connect(&self) -> BoxFuture<'_, Arc<dyn Scaler>> {
        Box::pin(async {
            let config = NatsConfig::from_url(&self.url).with_prefix(&self.prefix);
            Arc::new(NatsScaler::connect(config).await.expect("connect")) as Arc<dyn Scaler>
        })
    }
    fn stop(&self) -> BoxFuture<'_, bool> {
        Box::pin(async {
            self.server.lock().expect("server lock").stop();
            true
        })
    }
    fn start(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {
            self.server.lock().expect("server lock").start_again();
        })
    }
}

scaled_sockets_conformance::conformance_tests!(Nats::start());
