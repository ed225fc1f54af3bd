//! Per-channel stream positions: de-duplication and resynchronisation.

use std::fmt;

/// The last position the client delivered (or was told about) on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) epoch: String,
    pub(crate) offset: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.offset, self.epoch)
    }
}

impl Position {
    pub(crate) fn new(epoch: impl Into<String>, offset: u64) -> Self {
        Position {
            epoch: epoch.into(),
            offset,
        }
    }

    /// Whether a message at (`epoch`, `offset`) is new, in which case the
    /// position moves to it. Within an epoch, offsets at or below the current
    /// one are duplicates (e.g. replayed twice across a reconnect). A message
    /// of another epoch means the channel's history was reset: it is new.
    pub(crate) fn advance(&mut self, epoch: &str, offset: u64) -> bool {
        if self.epoch == epoch {
            if offset <= self.offset {
                return false;
            }
        } else {
            epoch.clone_into(&mut self.epoch);
        }
        self.offset = offset;
        true
    }

    /// The position after a subscribe answer or `subscribed` push saying the
    /// channel's latest publication is `offset` in `epoch`.
    ///
    /// When the client already had a position in the same epoch and the
    /// server did not say `recovered: false`, the missed messages are about to
    /// be replayed: keep the old position so they are delivered. Otherwise
    /// (fresh subscription, new epoch, or a gap that cannot be replayed) the
    /// stream continues after `offset`.
    pub(crate) fn resync(
        last: Option<Position>,
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
    ) -> Position {
        match last {
            Some(p) if p.epoch == epoch && recovered != Some(false) => p,
            _ => Position::new(epoch, offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_duplicates_within_an_epoch() {
        let mut p = Position::new("e1", 5);
        assert!(!p.advance("e1", 4));
        assert!(!p.advance("e1", 5));
        assert!(p.advance("e1", 6));
        assert!(!p.advance("e1", 6));
        assert!(p.advance("e1", 9), "gaps are not invented: deliver");
        assert!(!p.advance("e1", 7));
        assert_eq!(p, Position::new("e1", 9));
    }

    #[test]
    fn new_epoch_restarts_the_stream() {
        let mut p = Position::new("e1", 50);
        assert!(p.advance("e2", 1));
        assert_eq!(p, Position::new("e2", 1));
        assert!(!p.advance("e2", 1));
        assert!(p.advance("e2", 2));
    }

    #[test]
    fn resync_keeps_position_when_replay_follows() {
        let last = Some(Position::new("e1", 7));
        assert_eq!(
            Position::resync(last.clone(), "e1", 9, Some(true)),
            Position::new("e1", 7)
        );
        assert_eq!(
            Position::resync(last.clone(), "e1", 9, None),
            Position::new("e1", 7)
        );
        // Not recoverable: continue after the latest publication.
        assert_eq!(
            Position::resync(last.clone(), "e1", 9, Some(false)),
            Position::new("e1", 9)
        );
        // History reset.
        assert_eq!(
            Position::resync(last, "e2", 3, Some(true)),
            Position::new("e2", 3)
        );
        // Fresh subscription.
        assert_eq!(
            Position::resync(None, "e1", 4, None),
            Position::new("e1", 4)
        );
    }
}
