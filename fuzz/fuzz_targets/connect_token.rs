//! The `connect` path's token check on arbitrary tokens: a `connect` frame
//! carrying the token is parsed, and the token is checked by
//! `JwtAuthenticator::new(b"k")`. Never panics; a token is accepted only with
//! a non-empty `sub`, and the resulting permissions can be queried.
//!
//! The first input byte picks the mode:
//! - even: the rest is the token text, as a client would send it (mostly
//!   refused on its signature);
//! - odd: the rest is a JWT *payload* (any bytes) signed correctly with
//!   HS256 and the key `k`, so the claim checks behind the signature
//!   (`sub`, `exp`, `channels`, `publish`, odd JSON) are reached too.

#![no_main]

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use scaled_sockets::{Authenticator, JwtAuthenticator};
use scaled_sockets_protocol::{ClientFrame, parse_client_frame};
use sha2::Sha256;
use std::sync::LazyLock;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("current-thread runtime")
});

static AUTH: LazyLock<JwtAuthenticator> = LazyLock::new(|| JwtAuthenticator::new(b"k"));

/// An HS256 token with this header and payload, signed with `k`.
fn signed(header: &[u8], payload: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(b"k").expect("any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        signed(br#"{"alg":"HS256","typ":"JWT"}"#, rest)
    };
    // The connect frame a client sends with it.
    let frame = serde_json::json!({
        "type": "connect",
        "token": token,
        "subscriptions": [{"channel": "news"}],
    })
    .to_string();
    let carried = match parse_client_frame(&frame) {
        Ok(ClientFrame::Connect { token: Some(t), .. }) => {
            assert_eq!(&*t, token.as_str(), "the token arrives unchanged");
            Some(t.into_owned())
        }
        Ok(other) => panic!("a connect frame parsed as {other:?}"),
        // Refused frames (e.g. an over-long token) answer bad_request.
        Err(_) => None,
    };
    let checked = carried.unwrap_or(token);
    let result = RUNTIME.block_on(AUTH.authenticate(Some(&checked)));
    if let Ok(identity) = result {
        let user = identity.user.as_deref().expect("a token names its user");
        assert!(!user.is_empty(), "an empty `sub` is refused");
        for channel in ["news", "chat:lobby", "", "*"] {
            let _ = identity.subscribe.allows(channel);
            let _ = identity.publish.allows(channel);
        }
    }
});
