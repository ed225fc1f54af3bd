//! [`JwtAuthenticator`]: HS256 tokens as docs/protocol.md describes them.

use super::{Authenticator, Identity, unauthorized};
use crate::{error::CommandError, pattern::Permission};
use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use std::time::{Duration, UNIX_EPOCH};

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
}

/// HS256 JWTs as docs/protocol.md describes; optionally lets token-less connects in
/// as anonymous.
#[derive(Clone)]
pub struct JwtAuthenticator {
    key: DecodingKey,
    validation: Validation,
    allow_anonymous: bool,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("allow_anonymous", &self.allow_anonymous)
            .finish_non_exhaustive()
    }
}

/// Most leeway allowed on `exp`.
pub const TOKEN_LEEWAY: Duration = Duration::from_secs(30);

impl JwtAuthenticator {
    /// Verifies tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = TOKEN_LEEWAY.as_secs();
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
            allow_anonymous: false,
        }
    }

    /// Also accept connects without a token, as anonymous users allowed
    /// everything (development only).
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.allow_anonymous = allow;
        self
    }
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, token: Option<&str>) -> Result<Identity, CommandError> {
        let Some(token) = token else {
            return if self.allow_anonymous {
                Ok(Identity::anonymous())
            } else {
                Err(unauthorized("a token is required"))
            };
        };
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => unauthorized("token expired"),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    unauthorized("token must be signed with HS256")
                }
                ErrorKind::InvalidSignature => unauthorized("token signature is invalid"),
                ErrorKind::MissingRequiredClaim(c) => {
                    unauthorized(format!("token lacks the `{c}` claim"))
                }
                _ => unauthorized("token is malformed"),
            },
        )?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(unauthorized("token `sub` is empty"));
        }
        // Expiry checks during the connection use the same leeway as at connect.
        let expires_at = UNIX_EPOCH + Duration::from_secs(claims.exp) + TOKEN_LEEWAY;
        Ok(Identity {
            user: Some(claims.sub),
            subscribe: Permission::Patterns(claims.channels.unwrap_or_default()),
            publish: Permission::Patterns(claims.publish.unwrap_or_default()),
            expires_at: Some(expires_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::time::SystemTime;

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(claims: serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn valid_token_gives_patterns() {
        let auth = JwtAuthenticator::new(b"s3cret");
        let t = token(
            json!({"sub":"alice","exp":now()+60,"channels":["chat:*"],"publish":["chat:lobby"]}),
            b"s3cret",
        );
        let id = auth.authenticate(Some(&t)).await.unwrap();
        assert_eq!(id.user.as_deref(), Some("alice"));
        assert!(id.subscribe.allows("chat:x"));
        assert!(!id.subscribe.allows("news"));
        assert!(id.publish.allows("chat:lobby"));
        assert!(!id.publish.allows("chat:other"));
    }

    #[tokio::test]
    async fn bad_tokens_are_unauthorized() {
        let auth = JwtAuthenticator::new(b"s3cret");
        let expired = token(json!({"sub":"a","exp":now()-120}), b"s3cret");
        let wrong_key = token(json!({"sub":"a","exp":now()+60}), b"other");
        let no_sub = token(json!({"exp":now()+60}), b"s3cret");
        let no_exp = token(json!({"sub":"a"}), b"s3cret");
        // alg none: header {"alg":"none"} and an empty signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        for t in [
            expired.as_str(),
            &wrong_key,
            &no_sub,
            &no_exp,
            none,
            "garbage",
            "",
        ] {
            let err = auth.authenticate(Some(t)).await.unwrap_err();
            assert_eq!(err.code, crate::ErrorCode::Unauthorized, "{t}");
        }
        assert!(auth.authenticate(None).await.is_err());
        assert!(auth.allow_anonymous(true).authenticate(None).await.is_ok());
    }

    #[tokio::test]
    async fn leeway_is_30_seconds() {
        let auth = JwtAuthenticator::new(b"k");
        let recent = token(json!({"sub":"a","exp":now()-10}), b"k");
        assert!(auth.authenticate(Some(&recent)).await.is_ok());
    }
}
