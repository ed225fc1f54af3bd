//! [`Data`]: a JSON value relayed exactly as it was sent.

use crate::error::CommandError;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use std::fmt;

/// A JSON value relayed exactly as it was sent (integers beyond 64 bits and all).
#[derive(Clone)]
pub struct Data(Box<RawValue>);

impl Data {
    /// JSON `null`.
    pub fn null() -> Self {
        Self::from_json_str("null").unwrap_or_else(|_| unreachable!("null is valid JSON"))
    }

    /// Wraps raw JSON.
    pub fn from_raw(raw: Box<RawValue>) -> Self {
        Self(raw)
    }

    /// Parses JSON text (it is checked, not re-formatted).
    pub fn from_json_str(json: &str) -> Result<Self, CommandError> {
        RawValue::from_string(json.to_owned())
            .map(Self)
            .map_err(|e| CommandError::bad_request(format!("invalid JSON: {e}")))
    }

    /// Serializes a value.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, CommandError> {
        serde_json::value::to_raw_value(value)
            .map(Self)
            .map_err(|e| CommandError::internal(format!("cannot encode reply: {e}")))
    }

    /// Deserializes into `T`; a mismatch is a `bad_request`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, CommandError> {
        serde_json::from_str(self.0.get())
            .map_err(|e| CommandError::bad_request(format!("unexpected data: {e}")))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for Data {}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl From<&RawValue> for Data {
    fn from(raw: &RawValue) -> Self {
        Self(raw.to_owned())
    }
}

/// Serializes as the JSON it holds, unchanged: a handler may return [`Data`]
/// wherever any `Serialize` value is accepted.
impl Serialize for Data {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Deserializes any JSON value, kept as it was written (a `Data` field of a
/// typed input holds that field's raw JSON).
impl<'de> serde::Deserialize<'de> for Data {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trips_big_integers_unchanged() {
        let text = r#"{"n":123456789012345678901234567890,"f":1.50}"#;
        let data = Data::from_json_str(text).unwrap();
        assert_eq!(data.get(), text);
        assert_eq!(
            Data::json(&data).unwrap().get(),
            text,
            "Serialize keeps it raw"
        );
    }
}
