//! `decode_server_frame` (the client's side) on arbitrary input: never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use scaled_sockets_protocol::decode_server_frame;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(frame) = decode_server_frame(&text) {
        // Whatever was decoded can be inspected without panicking.
        let _ = format!("{frame:?}");
    }
});
