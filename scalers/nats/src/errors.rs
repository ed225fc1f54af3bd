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
        return ScalerError::unavailable(format!("{what}: {text}"));
    }
    ScalerError::backend(format!("{what}: {text}"))
}

/// [`classify`], keeping `err` as the source.
pub fn classify_owned<E: std::error::Error + Send + Sync + 'static>(
    what: &str,
    err: E,
    timeout: Duration,
) -> ScalerError {
    classify(what, &err, timeout).with_source(err)
}

/// True when `err` says a stream is missing (or nobody answers on its subject):
/// the scaler then checks and re-creates its streams.
pub fn suggests_missing_stream(err: &ScalerError) -> bool {
    err.message().is_some_and(|text| {
        let lower = text.to_ascii_lowercase();
        lower.contains("stream not found")
            || lower.contains("no stream found")
            || lower.contains("no responders")
    })
}

/// `map_err` adapter: `.map_err(to_scaler("publish", timeout))`; keeps the
/// error as the source.
pub fn to_scaler<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
    timeout: Duration,
) -> impl Fn(E) -> ScalerError {
    move |err| classify_owned(what, err, timeout)
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
            ScalerError::Unavailable { .. }
        ));
        assert!(matches!(
            classify("x", &E("invalid json"), t),
            ScalerError::Backend { .. }
        ));
        let kept = classify_owned("x", E("no responders"), t);
        assert!(std::error::Error::source(&kept).is_some(), "source kept");
        assert!(suggests_missing_stream(&kept));
    }
}
