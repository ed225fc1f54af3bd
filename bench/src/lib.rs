//! The bench's reusable parts, shared by the `bench` binary and the storm
//! test (tests/storm.rs at the workspace root):
//!
//! - [`procs`] — child processes (private redis-server, servers), /proc
//!   sampling, the file-descriptor limit.
//! - [`load`] — the load client (source-address spreading, handshake,
//!   subscribers, publishers).
//! - [`storm`] — the reconnect storm (kill one of three instances under N
//!   clients; time until they are back, failures, losses, survivors' peaks).

pub mod load;
pub mod procs;
pub mod storm;
