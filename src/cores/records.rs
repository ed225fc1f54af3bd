//! What the cores layer keeps in the scaler, under which keys.
//!
//! - lease `core/<id>`: the owner of a running core, with its fencing token.
//! - KV `cores/spec/<id>`: `{"kind","params"}`, the core should run (written
//!   by `spawn_core`, deleted by `stop_core`); the respawn scan reads these.
//! - KV `cores/snap/<id>`: `{"s": snapshot}` (no `s`: none saved), written
//!   with `PutMode::Fenced(token)` only.
//! - KV `cores/kinds/<instance>`: `{"kinds":[…]}`, the kinds an instance
//!   offers, with a TTL; deleted when it starts draining.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub(super) const LEASE_PREFIX: &str = "core/";
pub(super) const SPEC_PREFIX: &str = "cores/spec/";
pub(super) const SNAP_PREFIX: &str = "cores/snap/";
pub(super) const KINDS_PREFIX: &str = "cores/kinds/";

pub(super) fn lease_key(id: &str) -> String {
    format!("{LEASE_PREFIX}{id}")
}
pub(super) fn spec_key(id: &str) -> String {
    format!("{SPEC_PREFIX}{id}")
}
pub(super) fn snap_key(id: &str) -> String {
    format!("{SNAP_PREFIX}{id}")
}
pub(super) fn kinds_key(instance: &str) -> String {
    format!("{KINDS_PREFIX}{instance}")
}

/// A core that should run.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Spec {
    pub kind: String,
    pub params: Box<RawValue>,
}

/// A saved snapshot (`s` absent: none yet; the record then only holds the
/// fence of the latest owner).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Snapshot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<Box<RawValue>>,
}

/// The kinds an instance offers.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Kinds {
    pub kinds: Vec<String>,
}
