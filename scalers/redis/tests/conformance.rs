//! The shared conformance suite against a private redis-server per test.

use futures_util::future::BoxFuture;
use scaled_sockets_conformance::TestBackend;
use scaled_sockets_redis::{RedisConfig, RedisScaler};
use scaled_sockets_scaler::Scaler;
use scaled_sockets_test_harness::RedisServer;
use std::sync::{Arc, Mutex};

/// One private redis-server; every handle gets its own scaler on it, all under
/// one unique prefix (so they see each other, as instances of one cluster do).
struct Redis {
    server: Mutex<RedisServer>,
    url: String,
    prefix: String,
}

impl Redis {
    fn start() -> Self {
        let server = RedisServer::start();
        Self {
            url: server.url(),
            server: Mutex::new(server),
            prefix: format!("conf-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn server(&self) -> std::sync::MutexGuard<'_, RedisServer> {
        self.server.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl TestBackend for Redis {
    fn connect(&self) -> BoxFuture<'_, Arc<dyn Scaler>> {
        Box::pin(async {
            let config = RedisConfig::from_url(&self.url)
                .expect("url")
                .with_prefix(&self.prefix);
            let scaler = RedisScaler::connect(config)
                .await
                .expect("connect to redis");
            Arc::new(scaler) as Arc<dyn Scaler>
        })
    }
    fn stop(&self) -> BoxFuture<'_, bool> {
        Box::pin(async {
            self.server().stop();
            true
        })
    }
    fn start(&self) -> BoxFuture<'_, ()> {
        Box::pin(async { self.server().start_again() })
    }
}

scaled_sockets_conformance::conformance_tests!(async { Redis::start() });
