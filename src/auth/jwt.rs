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
    // Any JSON number jsonwebtoken accepted; turned into a time without
    // overflowing (a huge `exp` must not panic the connection's task).
    exp: f64,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
}

/// HS256 JWTs as docs/protocol.md describes; optionally lets token-less connects in
/// as anonymous.
///
/// With an empty secret no token can be verified (anyone could sign one), so
/// every token is refused: `unauthorized`, never trusted.
#[derive(Clone)]
pub struct JwtAuthenticator {
    key: DecodingKey,
    validation: Validation,
    allow_anonymous: bool,
    /// False for an empty secret: tokens are then refused, not verified.
    verifies: bool,
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
        validation.validate_nbf = true;
        // `aud` is checked when an audience is configured, and otherwise
        // allowed (tokens minted for several services carry one).
        validation.validate_aud = false;
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
            allow_anonymous: false,
            verifies: !secret.is_empty(),
        }
    }

    /// A server without a token secret: connects without a token are
    /// anonymous, and a token (which it cannot verify) is refused.
    pub fn anonymous_only() -> Self {
        Self::new(&[]).allow_anonymous(true)
    }

    /// Only accept tokens whose `aud` claim names `audience`.
    pub fn audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.validation
            .required_spec_claims
            .insert("aud".to_owned());
        self
    }

    /// Only accept tokens whose `iss` claim is `issuer`.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation
            .required_spec_claims
            .insert("iss".to_owned());
        self
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
        if !self.verifies {
            return Err(unauthorized(
                "this server has no token secret and cannot verify tokens: connect without one",
            ));
        }
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
                ErrorKind::ImmatureSignature => unauthorized("token is not valid yet (`nbf`)"),
                ErrorKind::InvalidAudience => unauthorized("token is for another audience (`aud`)"),
                ErrorKind::InvalidIssuer => unauthorized("token is from another issuer (`iss`)"),
                _ => unauthorized("token is malformed"),
            },
        )?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(unauthorized("token `sub` is empty"));
        }
        // Expiry checks during the connection use the same leeway as at connect.
        let expires_at = Duration::try_from_secs_f64(claims.exp)
            .ok()
            .and_then(|exp| UNIX_EPOCH.checked_add(exp)?.checked_add(TOKEN_LEEWAY));
        Ok(Identity {
            user: Some(claims.sub),
            subscribe: Permission::Patterns(claims.channels.unwrap_or_default()),
            publish: Permission::Patterns(claims.publish.unwrap_or_default()),
            // An `exp` too far away to represent never expires in practice.
            expires_at,
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

    /// Without a secret, a token signed with the empty key is not trusted:
    /// anyone could mint `sub: "alice"` and take her tells and sessions.
    #[tokio::test]
    async fn without_a_secret_tokens_are_refused_not_trusted() {
        let auth = JwtAuthenticator::anonymous_only();
        let forged = token(json!({"sub":"alice","exp":now()+60}), b"");
        let err = auth.authenticate(Some(&forged)).await.unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::Unauthorized);
        let anonymous = auth.authenticate(None).await.unwrap();
        assert_eq!(anonymous.user, None);
        // The same through `new` with an empty secret.
        let err = JwtAuthenticator::new(b"")
            .authenticate(Some(&forged))
            .await
            .unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::Unauthorized);
    }

    #[tokio::test]
    async fn audience_issuer_and_not_before() {
        let plain = JwtAuthenticator::new(b"k");
        // `aud` is accepted when no audience is configured.
        let with_aud = token(json!({"sub":"a","exp":now()+60,"aud":"chat"}), b"k");
        assert!(plain.authenticate(Some(&with_aud)).await.is_ok());

        let strict = JwtAuthenticator::new(b"k")
            .audience("chat")
            .issuer("auth.example");
        let good = token(
            json!({"sub":"a","exp":now()+60,"aud":"chat","iss":"auth.example"}),
            b"k",
        );
        assert!(strict.authenticate(Some(&good)).await.is_ok());
        for claims in [
            json!({"sub":"a","exp":now()+60,"aud":"other","iss":"auth.example"}),
            json!({"sub":"a","exp":now()+60,"iss":"auth.example"}),
            json!({"sub":"a","exp":now()+60,"aud":"chat","iss":"evil"}),
            json!({"sub":"a","exp":now()+60,"aud":"chat"}),
        ] {
            let t = token(claims.clone(), b"k");
            let err = strict.authenticate(Some(&t)).await.unwrap_err();
            assert_eq!(err.code, crate::ErrorCode::Unauthorized, "{claims}");
        }

        let later = token(json!({"sub":"a","exp":now()+600,"nbf":now()+300}), b"k");
        let err = plain.authenticate(Some(&later)).await.unwrap_err();
        assert!(err.message.contains("nbf"), "{}", err.message);
    }

    /// An `exp` beyond what a clock can hold neither panics nor expires.
    #[tokio::test]
    async fn a_huge_exp_does_not_panic() {
        let auth = JwtAuthenticator::new(b"k");
        for exp in [
            json!(u64::MAX),
            json!(i64::MAX),
            json!(9_999_999_999_999u64),
        ] {
            let t = token(json!({"sub":"a","exp":exp}), b"k");
            let result = auth.authenticate(Some(&t)).await;
            if let Ok(identity) = result {
                assert!(identity.expires_at.is_none_or(|t| t > SystemTime::now()));
            }
        }
    }
}
