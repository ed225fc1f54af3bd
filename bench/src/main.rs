//! `bench`: drives the real `scaled-sockets` binary and a bare "floor" server
//! over loopback with the same load client, and reports both side by side.
//!
//! Module map:
//! - [`cli`] — flags.
//! - [`stats`] — percentiles and medians (pure).
//! - [`results`] — the results JSON and the printed table; [`results_chart`]: the SVG chart.
//! - [`procs`] — child processes (private redis-server, servers), /proc sampling,
//!   the file-descriptor limit.
//! - [`load`] — the load client (source-address spreading, handshake, subscribers,
//!   publishers).
//! - [`publisher`] — publishers with a fixed number of publishes in flight.
//! - [`workloads`] — W1..W9.
//! - [`floor`] — the floor server (`bench floor ...`, started by the bench itself).
//! - [`storm_cmd`] — `bench storm`, the reconnect storm (the driver itself is
//!   in the library, [`scaled_sockets_bench::storm`], shared with tests/storm.rs).
//!
//! [`load`] and [`procs`] live in the library too.

mod cli;
mod floor;
mod publisher;
mod results;
mod results_chart;
mod stats;
mod storm_cmd;
mod workloads;

use scaled_sockets_bench::{load, procs};

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Some(cli::Command::Floor(args)) => runtime.block_on(floor::serve(args)),
        Some(cli::Command::Storm(args)) => {
            runtime.block_on(storm_cmd::run(args, &workloads::workspace_root()))
        }
        None => runtime.block_on(workloads::run_all(cli.run)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
