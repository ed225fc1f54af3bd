//! The reconnect storm, small enough for CI: three real `scaled-sockets`
//! processes on a private Redis, 1,000 clients on one of them, which is
//! killed (SIGKILL). Every client must be back on the survivors within 15 s,
//! with no failed connection attempt and, for the half that resume with
//! their positions, no publication lost. The full-size storm (10,000
//! clients, release build) is `scripts/storm`; both run the same driver
//! (the bench crate's `storm` module).
//!
//! The second test shows the accept gate at work: with a tight gate the same
//! storm takes measurably longer, and still nothing fails.

use scaled_sockets_bench::storm::{self, StormConfig, StormReport};
use std::{path::PathBuf, time::Duration};

/// Both tests start three servers and a Redis: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(name: &str, clients: usize) -> StormConfig {
    let logs = std::env::temp_dir().join(format!("ss-storm-{name}-{}", std::process::id()));
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_scaled-sockets"));
    let mut cfg = StormConfig::new(bin, logs, clients);
    cfg.give_up_after = Duration::from_secs(30);
    cfg
}

fn check(report: &StormReport) {
    assert_eq!(
        report.failed_connections, 0,
        "no connection may fail: {:?}",
        report.failure_samples
    );
    assert_eq!(report.back, report.clients, "every client comes back");
    assert_eq!(
        report.lost, 0,
        "nothing lost for clients resuming with positions"
    );
    assert_eq!(
        report.not_recovered, 0,
        "every resumed position is recovered"
    );
    assert_eq!(
        report.out_of_order, 0,
        "no duplicate or reordered publication"
    );
    assert!(
        report.published > 0,
        "the publisher published during the storm"
    );
    assert_eq!(report.survivors.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_are_back_on_the_survivors_within_15_s() {
    let _serial = SERIAL.lock().await;
    let cfg = config("thousand", 1000);
    let logs = cfg.logs.clone();
    let report = storm::run(cfg)
        .await
        .unwrap_or_else(|e| panic!("storm: {e}"));
    eprintln!("{report:#?}");
    check(&report);
    let t100 = report.t100_ms.expect("all back");
    assert!(t100 <= 15_000.0, "100 % back after {t100} ms");
    // The servers' logs stay behind only when the test fails.
    let _ = std::fs::remove_dir_all(logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_gate_makes_the_storm_wait_not_fail() {
    let _serial = SERIAL.lock().await;
    // 400 clients through two survivors taking 40 accepts per second each
    // (burst 4), 4 handshakes at a time: the last cannot be back before
    // ~4.9 s, and none may fail.
    let mut cfg = config("gate", 400);
    cfg.server_flags = ["--max-handshakes", "4", "--handshake-rate", "40"]
        .map(String::from)
        .to_vec();
    let logs = cfg.logs.clone();
    let report = storm::run(cfg)
        .await
        .unwrap_or_else(|e| panic!("storm: {e}"));
    eprintln!("{report:#?}");
    check(&report);
    let t100 = report.t100_ms.expect("all back");
    assert!(
        t100 >= 4_500.0,
        "400 clients through 2 x 40 accepts/s cannot all be back in {t100} ms: is the gate applied?"
    );
    let _ = std::fs::remove_dir_all(logs);
}
