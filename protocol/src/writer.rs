//! [`FrameWriter`]: writes one frame's JSON object straight into a buffer.

use serde::Serialize;

use crate::client_frame::NULL;

/// Builds one frame as JSON text, field by field, without building a JSON
/// tree. Field order is the order of the calls, which keeps frames readable in
/// logs; peers must not depend on it.
///
/// Keys are written as given: callers pass ASCII identifiers (`"offset"`), not
/// user input. Values written with [`str`](Self::str) and
/// [`json`](Self::json) are escaped; [`raw`](Self::raw) values must already be
/// valid JSON text (a `data` field as received).
#[derive(Debug)]
pub struct FrameWriter {
    buf: Vec<u8>,
}

impl FrameWriter {
    /// Starts `{"type":"<kind>"`.
    pub fn new(kind: &str) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(b"{\"type\":");
        // Writing a &str to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut buf, kind);
        Self { buf }
    }

    fn key(&mut self, key: &str) {
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// Adds a string field.
    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        // Writing a &str to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, value);
        self
    }

    /// Adds a string-or-null field.
    pub fn opt_str(self, key: &str, value: Option<&str>) -> Self {
        match value {
            Some(v) => self.str(key, v),
            None => self.raw(key, NULL),
        }
    }

    /// Adds an integer field.
    pub fn u64(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        self.buf.extend_from_slice(value.to_string().as_bytes());
        self
    }

    /// Adds a boolean field.
    pub fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// Adds a field holding JSON text that is already valid (raw `data`).
    pub fn raw(mut self, key: &str, json: &str) -> Self {
        self.key(key);
        self.buf.extend_from_slice(json.as_bytes());
        self
    }

    /// Adds any serializable value (`null` if it cannot be serialized).
    pub fn json<T: Serialize + ?Sized>(mut self, key: &str, value: &T) -> Self {
        self.key(key);
        let mark = self.buf.len();
        if serde_json::to_writer(&mut self.buf, value).is_err() {
            // A failed serializer may have written part of the value.
            self.buf.truncate(mark);
            self.buf.extend_from_slice(NULL.as_bytes());
        }
        self
    }

    /// Closes the object and returns the frame's text.
    pub fn finish(mut self) -> String {
        self.buf.push(b'}');
        // Only valid UTF-8 was written: ASCII punctuation, `&str` keys, serde
        // JSON output and `&str` raw JSON, so this never takes the error path.
        String::from_utf8(self.buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn writes_every_field_kind() {
        let text = FrameWriter::new("x")
            .str("s", "a\"b\n")
            .opt_str("none", None)
            .opt_str("some", Some("v"))
            .u64("n", u64::MAX)
            .bool("t", true)
            .bool("f", false)
            .raw("raw", r#"{"big":123456789012345678901234567890}"#)
            .json("list", &["a", "b"])
            .finish();
        assert!(text.contains(r#""raw":{"big":123456789012345678901234567890}"#));
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["type"], "x");
        assert_eq!(value["s"], "a\"b\n");
        assert_eq!(value["none"], Value::Null);
        assert_eq!(value["some"], "v");
        assert_eq!(value["n"], json!(u64::MAX));
        assert_eq!(value["t"], true);
        assert_eq!(value["f"], false);
        assert_eq!(value["list"], json!(["a", "b"]));
    }

    #[test]
    fn failed_serialization_writes_null() {
        struct Failing;
        impl Serialize for Failing {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        let text = FrameWriter::new("x").json("v", &[Failing]).finish();
        assert_eq!(text, r#"{"type":"x","v":null}"#);
    }
}
