//! What the scaler stores in Redis values and pub/sub messages.
//!
//! - Publication envelope (pub/sub message on a channel topic):
//!   `<offset>:<epoch>:<payload bytes>`, offset in decimal; epochs never contain
//!   `:`, the payload is raw and may contain anything.
//! - Other topics (user, session, instance): the raw payload.
//! - Instance registration and presence entries: the JSON of
//!   `scaled_sockets_scaler::records`.

/// Splits a publication envelope into `(offset, epoch, payload)`.
pub(crate) fn decode_envelope(message: &[u8]) -> Option<(u64, &str, &[u8])> {
    let first = message.iter().position(|&b| b == b':')?;
    let offset = std::str::from_utf8(&message[..first]).ok()?.parse().ok()?;
    let rest = &message[first + 1..];
    let second = rest.iter().position(|&b| b == b':')?;
    let epoch = std::str::from_utf8(&rest[..second]).ok()?;
    Some((offset, epoch, &rest[second + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip() {
        assert_eq!(
            decode_envelope(b"42:abc123:{\"a\":\"x:y\"}"),
            Some((42, "abc123", &b"{\"a\":\"x:y\"}"[..]))
        );
        assert_eq!(decode_envelope(b"1:e:"), Some((1, "e", &b""[..])));
        assert_eq!(decode_envelope(b"x:e:p"), None);
        assert_eq!(decode_envelope(b"1e"), None);
        assert!(!scaled_sockets_scaler::types::new_epoch().contains(':'));
    }
}
