//! OAuth 2.0 bearer tokens for SMTP AUTH (XOAUTH2 and OAUTHBEARER, RFC 7628): verifying a JWT against the
//! identity provider's JSON Web Key Set (`[ingest.oauth]`).
//!
//! A token is accepted when its signature verifies with the JWKS key its header names (`kid`; without one,
//! the set's only key for the algorithm), by an algorithm in `allowed_algorithms` that the key allows; `exp`
//! is present and not past and `nbf`, when present, not ahead (both with `leeway`); `iss` is `issuer`; `aud`
//! holds `audience`; and the `user_claim` claim is a non-empty string, which names the user. With the
//! default claim `email`, a token with `"email_verified": false` is refused.
//!
//! | module | what |
//! |---|---|
//! | [`jwks`] | the key set: from a file, or a URL cached and refreshed |
//! | [`fetch`] | the HTTPS GET of a `jwks_url` |
//! | [`wire`] | the SASL messages of the two mechanisms and the error challenge |

pub mod fetch;
pub mod jwks;
pub mod wire;

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use tern_config::IngestConfig;

use crate::IngestError;
use jwks::{JwksCache, KeyMiss, KeySet, KeySource};

/// Why a token was refused; [`TokenError::reason`] is the log field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT (three base64url parts with a JSON header and claims).
    Malformed,
    /// Its `alg` is not in `allowed_algorithms`, or not the one its key allows.
    AlgorithmNotAllowed,
    /// Its `kid` is not in the key set.
    UnknownKid,
    /// It has no `kid`, and the key set has more than one key for its algorithm.
    NoKid,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is past.
    Expired,
    /// `nbf` is ahead.
    NotYetValid,
    /// `iss` is not `issuer`.
    WrongIssuer,
    /// `aud` does not hold `audience`.
    WrongAudience,
    /// `exp`, `iss` or `aud` is missing.
    MissingClaim,
    /// The user claim is missing, empty or not a string.
    NoUser,
    /// `email_verified` is false.
    EmailNotVerified,
    /// The key set could not be fetched (a temporary failure: not the client's fault).
    KeysUnavailable,
}

impl TokenError {
    /// A short word for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::NoKid => "no_kid",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::MissingClaim => "missing_claim",
            TokenError::NoUser => "no_user_claim",
            TokenError::EmailNotVerified => "email_not_verified",
            TokenError::KeysUnavailable => "jwks_unavailable",
        }
    }
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user claim's value.
    pub user: String,
    /// The key id that verified it, for the log.
    pub kid: Option<String>,
}

/// Verifies tokens. One per server, shared by the sessions.
pub struct OauthVerifier {
    issuer: String,
    audience: String,
    user_claim: String,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    scope: Option<String>,
    keys: KeySource,
}

impl std::fmt::Debug for OauthVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OauthVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl OauthVerifier {
    /// The verifier of `[ingest.oauth]` (the section already validated), reading a `jwks_file` now; `None`
    /// when the table is unset.
    pub fn from_config(config: &IngestConfig) -> Result<Option<Arc<OauthVerifier>>, IngestError> {
        let Some(o) = &config.oauth else {
            return Ok(None);
        };
        let bad = |key: &str, message: String| IngestError::Config {
            key: format!("ingest.oauth.{key}"),
            message,
        };
        let algorithms = o
            .allowed_algorithms
            .iter()
            .map(|a| {
                a.parse::<Algorithm>()
                    .map_err(|_| bad("allowed_algorithms", format!("{a:?} is unknown")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = match (&o.jwks_file, &o.jwks_url) {
            (Some(path), _) => KeySource::File(Arc::new(
                KeySet::load(path).map_err(|m| bad("jwks_file", format!("{}: {m}", path.display())))?,
            )),
            (None, Some(url)) => {
                let fetcher = fetch::JwksFetcher::new(url).map_err(|m| bad("jwks_url", m))?;
                KeySource::Url(Box::new(JwksCache::new(fetcher, o.jwks_refresh.get())))
            }
            (None, None) => {
                return Err(bad(
                    "jwks_file",
                    "one of jwks_file and jwks_url is required".into(),
                ));
            }
        };
        Ok(Some(Arc::new(OauthVerifier {
            issuer: o.issuer.clone(),
            audience: o.audience.clone(),
            user_claim: o.user_claim.clone(),
            algorithms,
            leeway: o.leeway.get().as_secs(),
            scope: o.scope.clone(),
            keys,
        })))
    }

    /// The scope named in error challenges.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The provider's OpenID discovery document, named in OAUTHBEARER error challenges when the issuer is
    /// an https URL (OpenID Connect Discovery 1.0, section 4).
    pub fn openid_configuration(&self) -> Option<String> {
        self.issuer.starts_with("https://").then(|| {
            format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            )
        })
    }

    /// Verifies `token`; see the module docs.
    pub async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        let kid = header.kid;
        let set = match &self.keys {
            KeySource::File(set) => Arc::clone(set),
            KeySource::Url(cache) => cache
                .keys(kid.as_deref())
                .await
                .ok_or(TokenError::KeysUnavailable)?,
        };
        let key = set.select(kid.as_deref(), header.alg).map_err(|m| match m {
            KeyMiss::UnknownKid => TokenError::UnknownKid,
            KeyMiss::NoKid => TokenError::NoKid,
            KeyMiss::WrongAlgorithm => TokenError::AlgorithmNotAllowed,
        })?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, &v)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim,
                ErrorKind::InvalidAlgorithm => TokenError::AlgorithmNotAllowed,
                // A signature of the wrong length and the like: ring says no without saying why.
                ErrorKind::Crypto(_) | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
                    TokenError::BadSignature
                }
                _ => TokenError::Malformed,
            })?;
        let claims = data.claims;
        let user = claims
            .get(&self.user_claim)
            .and_then(|u| u.as_str())
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .ok_or(TokenError::NoUser)?;
        if self.user_claim == "email"
            && claims.get("email_verified").and_then(serde_json::Value::as_bool) == Some(false)
        {
            return Err(TokenError::EmailNotVerified);
        }
        Ok(Verified {
            user: user.to_owned(),
            kid,
        })
    }
}

/// The sender domains of a user authenticated by a token, whose user claim is `user`: the users file's
/// entry for that user when there is one (its domains, or any domain when it lists none, as for password
/// users); otherwise the domain of `user` when it is an address (`a@example.com` may send from
/// `example.com`); otherwise none, so that every MAIL FROM gets `553 5.7.1`.
pub fn sender_domains(users: Option<&crate::smtp::auth::UserDb>, user: &str) -> Option<Vec<String>> {
    if let Some(listed) = users.and_then(|u| u.domains_of(user)) {
        return listed;
    }
    let domain = user
        .rsplit_once('@')
        .map(|(_, d)| d.trim().trim_end_matches('.').to_lowercase())
        .filter(|d| !d.is_empty());
    Some(domain.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};
    use serde_json::{Value, json};

    use super::*;

    struct Key {
        pkcs8: Vec<u8>,
        x: String,
    }

    fn key() -> Key {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Key {
            pkcs8: pkcs8.as_ref().to_vec(),
            x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        }
    }

    fn sign(k: &Key, kid: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_ed_der(&k.pkcs8)).unwrap()
    }

    fn verifier(keys: &str, algorithms: &[Algorithm]) -> OauthVerifier {
        OauthVerifier {
            issuer: "https://idp".into(),
            audience: "smtp".into(),
            user_claim: "email".into(),
            algorithms: algorithms.to_vec(),
            leeway: 60,
            scope: None,
            keys: KeySource::File(Arc::new(KeySet::parse(keys.as_bytes(), "test").unwrap())),
        }
    }

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
    }

    #[tokio::test]
    async fn each_refusal_names_its_reason() {
        let k = key();
        let stranger = key();
        let jwks = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": k.x, "kid": "a"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "enc", "use": "enc"},
        ]})
        .to_string();
        let v = verifier(&jwks, &[Algorithm::EdDSA, Algorithm::ES256]);
        let good =
            json!({"iss": "https://idp", "aud": ["x", "smtp"], "email": "a@b.test", "exp": now() + 60});
        let with = |key: &str, value: Value| {
            let mut c = good.clone();
            c[key] = value;
            c
        };
        let ok = v.verify(&sign(&k, Some("a"), &good)).await.unwrap();
        assert_eq!(ok.user, "a@b.test");
        // Without a kid: the set's only EdDSA key.
        assert!(v.verify(&sign(&k, None, &good)).await.is_ok());
        let reason = |t: String| {
            let v = &v;
            async move { v.verify(&t).await.unwrap_err().reason() }
        };
        assert_eq!(reason("a.b.c".into()).await, "malformed");
        assert_eq!(reason(sign(&stranger, Some("a"), &good)).await, "bad_signature");
        assert_eq!(reason(sign(&k, Some("b"), &good)).await, "unknown_kid");
        assert_eq!(reason(sign(&k, Some("hmac"), &good)).await, "unknown_kid");
        assert_eq!(
            reason(sign(&k, Some("a"), &with("exp", json!(now() - 120)))).await,
            "expired"
        );
        assert_eq!(
            reason(sign(&k, Some("a"), &with("nbf", json!(now() + 600)))).await,
            "not_yet_valid"
        );
        assert_eq!(
            reason(sign(&k, Some("a"), &with("iss", json!("https://x")))).await,
            "wrong_issuer"
        );
        assert_eq!(
            reason(sign(&k, Some("a"), &with("aud", json!("web")))).await,
            "wrong_audience"
        );
        assert_eq!(
            reason(sign(&k, Some("a"), &with("email", json!("")))).await,
            "no_user_claim"
        );
        assert_eq!(
            reason(sign(&k, Some("a"), &with("email_verified", json!(false)))).await,
            "email_not_verified"
        );
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(reason(sign(&k, Some("a"), &no_exp)).await, "missing_claim");
        let strict = verifier(&jwks, &[Algorithm::RS256]);
        assert_eq!(
            strict
                .verify(&sign(&k, Some("a"), &good))
                .await
                .unwrap_err()
                .reason(),
            "algorithm_not_allowed"
        );
    }

    #[test]
    fn a_users_domains_come_from_the_users_file_or_its_address() {
        let db = crate::smtp::auth::UserDb::parse("listed@a.test:!:b.test\nany@a.test:!\n").unwrap();
        assert_eq!(
            sender_domains(Some(&db), "listed@a.test"),
            Some(vec!["b.test".into()])
        );
        assert_eq!(sender_domains(Some(&db), "any@a.test"), None);
        assert_eq!(
            sender_domains(Some(&db), "x@Other.Test."),
            Some(vec!["other.test".into()])
        );
        assert_eq!(sender_domains(None, "opaque-subject"), Some(vec![]));
    }
}
