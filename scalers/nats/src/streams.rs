//! Creating, checking and re-creating the scaler's JetStream streams.

use crate::errors::{classify, to_scaler};
use async_nats::jetstream::{
    Context,
    stream::{Config, Stream},
};
use scaled_sockets_scaler::Result;
use std::time::Duration;

/// True when `current` lacks a setting the scaler relies on.
fn differs(current: &Config, wanted: &Config) -> bool {
    current.subjects != wanted.subjects
        || current.max_messages_per_subject != wanted.max_messages_per_subject
        || current.max_age != wanted.max_age
        || current.max_bytes != wanted.max_bytes
        || current.max_message_size != wanted.max_message_size
        || current.republish != wanted.republish
        || current.num_replicas != wanted.num_replicas
        || current.allow_rollup != wanted.allow_rollup
        || current.allow_direct != wanted.allow_direct
        || current.discard != wanted.discard
}

/// Opens the stream `wanted.name`: creates it when missing (tolerating a
/// concurrent creator) and updates it when its settings differ from `wanted`
/// (the instance that connects last applies its configuration).
pub async fn ensure(js: &Context, wanted: &Config, timeout: Duration) -> Result<Stream> {
    match js.get_stream(&wanted.name).await {
        Ok(stream) if !differs(&stream.cached_info().config, wanted) => Ok(stream),
        Ok(_) => {
            tracing::info!(stream = %wanted.name, "updating the stream's configuration");
            js.update_stream(wanted.clone())
                .await
                .map_err(to_scaler("update stream", timeout))?;
            js.get_stream(&wanted.name)
                .await
                .map_err(to_scaler("open stream", timeout))
        }
        Err(_) => match js.create_stream(wanted.clone()).await {
            Ok(stream) => Ok(stream),
            // Someone else created it meanwhile (or the server is not answering:
            // then this fails too).
            Err(err) => js
                .get_stream(&wanted.name)
                .await
                .map_err(|_| classify("create stream", &err, timeout)),
        },
    }
}

/// A duplicate window JetStream accepts next to `max_age` (zero = unlimited).
pub fn duplicate_window(max_age: Duration) -> Duration {
    let window = Duration::from_secs(5);
    if max_age.is_zero() {
        window
    } else {
        window.min(max_age)
    }
}
