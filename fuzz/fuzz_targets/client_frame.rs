//! `parse_client_frame` on arbitrary input: never panics, and a frame it
//! accepts encodes to text that parses back to the same frame (and encodes to
//! the same text again).

#![no_main]

use libfuzzer_sys::fuzz_target;
use scaled_sockets_protocol::parse_client_frame;

fn check(text: &str) {
    let Ok(frame) = parse_client_frame(text) else {
        return;
    };
    let encoded = frame.encode();
    let again = parse_client_frame(&encoded).unwrap_or_else(|e| {
        panic!("encode() of an accepted frame does not parse: {e:?}\ninput: {text:?}\nencoded: {encoded:?}")
    });
    assert_eq!(
        format!("{frame:?}"),
        format!("{again:?}"),
        "the re-parsed frame differs\ninput: {text:?}\nencoded: {encoded:?}"
    );
    assert_eq!(encoded, again.encode(), "encode() is not a fixpoint");
}

fuzz_target!(|data: &[u8]| {
    // Bytes as a WebSocket text frame would carry them (only valid UTF-8
    // reaches the parser), and the lossy view so every input exercises it.
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    } else {
        check(&String::from_utf8_lossy(data));
    }
});
