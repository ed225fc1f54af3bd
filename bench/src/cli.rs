//! The bench's flags.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Benchmarks scaled-sockets against a bare floor server over loopback."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the floor server (the bench starts this itself).
    Floor(FloorArgs),
    /// The reconnect storm: N clients lose their instance (kill -9), and come
    /// back on the two survivors (scripts/storm).
    Storm(StormArgs),
}

#[derive(Debug, Args)]
pub struct StormArgs {
    /// Clients on the instance that is killed
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Storms in a row; medians are reported
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Channels the clients spread over
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// The scaled-sockets binary [default: <workspace>/target/release/scaled-sockets]
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// The redis-server binary
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Loopback source addresses for client sockets (127.0.0.2 ..)
    #[arg(long, default_value_t = 16)]
    pub source_addrs: u8,
    /// --max-handshakes for every instance [default: the server's]
    #[arg(long)]
    pub max_handshakes: Option<usize>,
    /// --handshake-rate for every instance [default: the server's]
    #[arg(long)]
    pub handshake_rate: Option<u32>,
    /// Where storm.json and the server logs go
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct FloorArgs {
    /// HTTP + WebSocket address
    #[arg(long)]
    pub listen: String,
    /// redis://host:port of the Redis to relay through
    #[arg(long)]
    pub redis: String,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The scaled-sockets binary [default: <workspace>/target/release/scaled-sockets]
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// The demo example binary, for W4 and W8 [default: <workspace>/target/release/examples/demo]
    #[arg(long)]
    pub demo_bin: Option<PathBuf>,
    /// Comma-separated workloads: W1,W2,W3,W4,W5,W6,W7,W8,W9
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "W1,W2,W3,W4,W5,W6,W7,W8,W9"
    )]
    pub workloads: Vec<String>,
    /// Interleaved runs per workload (ours, floor, ours, floor, ...); medians are reported
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where results.json, results.svg and the server logs go
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Measured seconds per load phase (after a warm-up)
    #[arg(long, default_value_t = 6.0)]
    pub seconds: f64,
    /// Warm-up seconds before each measured phase
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// W3 connection counts (comma-separated)
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub idle_conns: Vec<usize>,
    /// Loopback source addresses to spread client sockets over (127.0.0.2 ..)
    #[arg(long, default_value_t = 16)]
    pub source_addrs: u8,
    /// The redis-server binary
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// The redis-benchmark binary (W6)
    #[arg(long, default_value = "redis-benchmark")]
    pub redis_benchmark: String,
}
