//! Mapping async-nats errors onto [`ScalerError`].
//!
//! async-nats has one error type per operation; what callers need to know is only
//! whether retrying later may help (the server is down, slow or JetStream is not
//! ready: `Unavailable`/`Timeout`) or not (`Backend`).

use scaled_sockets_scaler::ScalerError;
use std::time::Duration;

/// The full text of an error and its sources.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Classifies an async-nats error raised while doing `what`.
pub fn classify(
    what: &str,
    err: &(dyn std::error::Error + 'static),
    timeout: Duration,
) -> ScalerError {
    let text = chain(err);
    let lower = text.to_ascii_lowercase();
    if lower.contains("timed out") || lower.contains("timeout") {
        return ScalerError::Timeout(timeout);
    }
    const UNAVAILABLE: [&str; 11] = [
        "no responders",
        "broken pipe",
        "disconnect",
        "connection",
        "closed",
        "not enabled",
        "unavailable",
        "no suitable peers",
        "leader",
        // A vanished stream: retryable, the scaler re-creates it.
        "stream not found",
        "no stream found",
    ];
    if UNAVAILABLE.iter().any(|needle| lower.contains(needle)) {
        return ScalerError::Unavailable(format!("{what}: {text}"));
    }
    ScalerError::Backend(format!("{what}: {text}"))
}

/// True when `err` says a stream is missing (or nobody answers on its subject):
/// the scaler then checks and re-creates its streams.
pub fn suggests_missing_stream(err: &ScalerError) -> bool {
    match err {
        ScalerError::Unavailable(text) | ScalerError::Backend(text) => {
            let lower = text.to_ascii_lowercase();
            lower.contains("stream not found")
                || lower.contains("no stream found")
                || lower.contains("no responders")
        }
        _ => false,
    }
}

/// `map_err` adapter: `.map_err(to_scaler("publish", timeout))`.
pub fn to_scaler<E: std::error::Error + 'static>(
    what: &'static str,
    timeout: Duration,
) -> impl Fn(E) -> ScalerError {
    move |err| classify(what, &err, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct E(&'static str);

    #[test]
    fn classification() {
        let t = Duration::from_secs(3);
        assert_eq!(
            classify("x", &E("request timed out"), t),
            ScalerError::Timeout(t)
        );
        assert!(matches!(
            classify("x", &E("no responders"), t),
            ScalerError::Unavailable(_)
        ));
        assert!(matches!(
            classify("x", &E("invalid json"), t),
            ScalerError::Backend(_)
        ));
    }
}
