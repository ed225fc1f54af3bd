//! The shared conformance suite against a private Redis Cluster (3 primaries,
//! 3 replicas): every check in sequence on one cluster (six processes per
//! check would be too many), restart checks included (the whole cluster is
//! killed and started again).

use futures_util::future::BoxFuture;
use scaled_sockets_conformance::TestBackend;
use scaled_sockets_redis::{RedisConfig, RedisScaler};
use scaled_sockets_scaler::Scaler;
use scaled_sockets_test_harness::RedisCluster;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

struct Cluster {
    cluster: Mutex<RedisCluster>,
    url: String,
    prefix: String,
}

impl Cluster {
    fn lock(&self) -> std::sync::MutexGuard<'_, RedisCluster> {
        self.cluster.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl TestBackend for Cluster {
    fn connect(&self) -> BoxFuture<'_, Arc<dyn Scaler>> {
        Box::pin(async {
            let config = RedisConfig::from_url(&self.url)
                .expect("url")
                .with_prefix(&self.prefix);
            let scaler = RedisScaler::connect(config)
                .await
                .expect("connect to the redis cluster");
            Arc::new(scaler) as Arc<dyn Scaler>
        })
    }
    fn stop(&self) -> BoxFuture<'_, bool> {
        Box::pin(async {
            self.lock().stop();
            true
        })
    }
    fn start(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {
            // Blocking waits (redis-cli) off the runtime threads.
            let this = &self.cluster;
            tokio::task::block_in_place(|| {
                this.lock().unwrap_or_else(|p| p.into_inner()).start_again()
            });
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_redis_cluster() {
    let cluster =
        tokio::task::block_in_place(|| RedisCluster::start(3, Duration::from_millis(1000)));
    let backend = Cluster {
        url: cluster.url(),
        cluster: Mutex::new(cluster),
        prefix: format!("conf-{}", uuid::Uuid::new_v4().simple()),
    };
    scaled_sockets_conformance::run_all(&backend).await;
}
