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

mod cli;
mod floor;
mod load;
mod procs;
mod publisher;
mod results;
mod results_chart;
mod stats;
mod workloads;

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
