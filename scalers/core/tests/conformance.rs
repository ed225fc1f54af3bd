//! The shared conformance suite against the in-memory scaler.

use futures_util::future::BoxFuture;
use scaled_sockets_conformance::TestBackend;
use scaled_sockets_scaler::{MemoryScaler, Scaler};
use std::sync::Arc;

struct Memory(MemoryScaler);

impl TestBackend for Memory {
    fn connect(&self) -> BoxFuture<'_, Arc<dyn Scaler>> {
        Box::pin(async { Arc::new(self.0.clone()) as Arc<dyn Scaler> })
    }
    fn stop(&self) -> BoxFuture<'_, bool> {
        Box::pin(async {
            self.0.set_available(false);
            true
        })
    }
    fn start(&self) -> BoxFuture<'_, ()> {
        Box::pin(async { self.0.set_available(true) })
    }
}

scaled_sockets_conformance::conformance_tests!(async { Memory(MemoryScaler::new()) });
