//! Argument checks every backend applies the same way (a backend may add its own
//! limits on top, e.g. the NATS name length).

use crate::{PutMode, Result, ScalerError, Topic};

/// A channel name must not be empty.
pub fn check_channel(channel: &str) -> Result<()> {
    if channel.is_empty() {
        return Err(ScalerError::InvalidArgument("empty channel name".into()));
    }
    Ok(())
}

/// [`crate::Scaler::send`] is for user, session and instance topics only.
pub fn check_send_topic(topic: &Topic) -> Result<()> {
    if matches!(topic, Topic::Channel(_)) {
        return Err(ScalerError::InvalidArgument(
            "send is for user, session and instance topics; publish to channels".into(),
        ));
    }
    Ok(())
}

/// A lease or key-value key must not be empty; `what` names it in the error.
pub fn check_key(key: &str, what: &str) -> Result<()> {
    if key.is_empty() {
        return Err(ScalerError::InvalidArgument(format!("empty {what}")));
    }
    Ok(())
}

/// A lease owner must not be empty (an empty owner could not be told apart from
/// "nobody").
pub fn check_owner(owner: &str) -> Result<()> {
    if owner.is_empty() {
        return Err(ScalerError::InvalidArgument("empty lease owner".into()));
    }
    Ok(())
}

/// [`PutMode::Create`] makes no sense for a delete.
pub fn check_delete_mode(mode: PutMode) -> Result<()> {
    if mode == PutMode::Create {
        return Err(ScalerError::InvalidArgument(
            "kv_delete does not take PutMode::Create".into(),
        ));
    }
    Ok(())
}

/// Decides a key-value precondition against the key's current state, the same
/// way on every backend. `current` is `(revision, fence)` of the live value, or
/// `None` when the key is absent or expired.
pub fn mode_holds(mode: PutMode, current: Option<(u64, u64)>) -> Result<()> {
    match (mode, current) {
        (PutMode::Any, _) | (PutMode::Create, None) => Ok(()),
        (PutMode::Create, Some((rev, _))) => Err(ScalerError::Conflict(format!(
            "create-only put: the key exists (revision {rev})"
        ))),
        (PutMode::IfRevision(want), Some((rev, _))) if rev == want => Ok(()),
        (PutMode::IfRevision(want), current) => Err(ScalerError::Conflict(format!(
            "expected revision {want}, found {}",
            current.map_or_else(|| "no value".to_owned(), |(r, _)| format!("revision {r}"))
        ))),
        (PutMode::Fenced(token), Some((_, fence))) if token < fence => Err(ScalerError::Conflict(
            format!("fencing token {token} is below the key's fence {fence}"),
        )),
        (PutMode::Fenced(_), _) => Ok(()),
    }
}

/// The fence a write stores: the token of a fenced write, otherwise the key's
/// current fence (0 when absent).
pub fn fence_after(mode: PutMode, current_fence: u64) -> u64 {
    match mode {
        PutMode::Fenced(token) => token.max(current_fence),
        _ => current_fence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert!(mode_holds(PutMode::Any, Some((3, 9))).is_ok());
        assert!(mode_holds(PutMode::Create, None).is_ok());
        assert!(
            mode_holds(PutMode::Create, Some((1, 0)))
                .unwrap_err()
                .is_conflict()
        );
        assert!(mode_holds(PutMode::IfRevision(4), Some((4, 0))).is_ok());
        assert!(
            mode_holds(PutMode::IfRevision(4), Some((5, 0)))
                .unwrap_err()
                .is_conflict()
        );
        assert!(
            mode_holds(PutMode::IfRevision(4), None)
                .unwrap_err()
                .is_conflict()
        );
        assert!(mode_holds(PutMode::Fenced(7), Some((1, 7))).is_ok());
        assert!(
            mode_holds(PutMode::Fenced(6), Some((1, 7)))
                .unwrap_err()
                .is_conflict()
        );
        assert!(mode_holds(PutMode::Fenced(1), None).is_ok());
        assert_eq!(fence_after(PutMode::Fenced(8), 7), 8);
        assert_eq!(fence_after(PutMode::Any, 7), 7);
        assert!(check_delete_mode(PutMode::Create).is_err());
        assert!(check_channel("").is_err());
        assert!(check_send_topic(&Topic::channel("c")).is_err());
        assert!(check_send_topic(&Topic::user("u")).is_ok());
    }
}
