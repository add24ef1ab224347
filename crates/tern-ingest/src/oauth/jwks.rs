//! The identity provider's public keys: a JSON Web Key Set (RFC 7517) from a file, or from a URL fetched on
//! first use and cached.
//!
//! Keys that cannot verify a token here are left out, each with a warning, rather than failing the whole
//! set: a provider's JWKS may also hold encryption keys or curves this build does not know. Symmetric
//! (`oct`) keys are always left out: a JWKS is public, so a secret in it would let anyone mint tokens.
//!
//! The URL cache ([`JwksCache`]) is fetched again when it is older than `jwks_refresh`, and when a token names
//! a key id it does not hold (key rotation); in both cases at most once per [`MIN_REFETCH`], whatever the
//! number of sessions asking, and one fetch at a time. A failed fetch keeps the keys already held.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tracing::{info, warn};

use super::fetch::JwksFetcher;

/// The shortest time between two fetches of a `jwks_url`.
pub const MIN_REFETCH: Duration = Duration::from_secs(60);

/// One usable key of the set.
struct Key {
    kid: Option<String>,
    /// The key's `alg`, when the set names one: tokens must then use exactly it.
    alg: Option<String>,
    family: Family,
    decoding: DecodingKey,
}

/// What kind of signature a key can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

/// The key family of a signature algorithm; `None` for HMAC.
fn family_of(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Ed),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
    }
}

/// The JWA name of an algorithm (`RS256`, `EdDSA`, ...).
pub fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
    }
}

/// Why no key was found for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMiss {
    /// The token's `kid` is not in the set.
    UnknownKid,
    /// The token has no `kid`, and the set does not hold exactly one key for its algorithm.
    NoKid,
    /// The key named by `kid` is for another algorithm.
    WrongAlgorithm,
}

/// A parsed JSON Web Key Set, without the keys that cannot be used.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("keys", &self.keys.len()).finish()
    }
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`); `origin` (a file or URL) names it in warnings. An error when
    /// it is not one, or when it holds no usable key.
    pub fn parse(text: &[u8], origin: &str) -> Result<KeySet, String> {
        let doc: serde_json::Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
        let Some(entries) = doc.get("keys").and_then(|k| k.as_array()) else {
            return Err("not a JWKS: no \"keys\" array".into());
        };
        let mut keys = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match parse_key(entry) {
                Ok(k) => keys.push(k),
                Err(why) => warn!(jwks = origin, index = i, reason = why, "JWKS key left out"),
            }
        }
        if keys.is_empty() {
            return Err("holds no usable signing key (RSA, EC P-256/P-384 or Ed25519)".into());
        }
        Ok(KeySet { keys })
    }

    /// Reads and parses a JWKS file.
    pub fn load(path: &Path) -> Result<KeySet, String> {
        let text = std::fs::read(path).map_err(|e| e.to_string())?;
        KeySet::parse(&text, &path.display().to_string())
    }

    /// How many usable keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the set holds a key with this id.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The key to check a token signed with `alg` by: the one named `kid`, or without a `kid` the only key
    /// for that algorithm.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&DecodingKey, KeyMiss> {
        let fits = |k: &Key| {
            family_of(alg) == Some(k.family) && k.alg.as_deref().is_none_or(|a| a == algorithm_name(alg))
        };
        match kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_none() {
                    return Err(KeyMiss::UnknownKid);
                }
                named
                    .find(|k| fits(k))
                    .map(|k| &k.decoding)
                    .ok_or(KeyMiss::WrongAlgorithm)
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| fits(k));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Ok(&k.decoding),
                    _ => Err(KeyMiss::NoKid),
                }
            }
        }
    }
}

fn parse_key(entry: &serde_json::Value) -> Result<Key, &'static str> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|_| "not a JWK this build supports")?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (\"use\": \"enc\")");
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(_) => Family::Ec,
        AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
        AlgorithmParameters::OctetKey(_) => return Err("a symmetric key (kty oct) in a public key set"),
    };
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|_| "key parameters that do not decode")?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        alg: jwk.common.key_algorithm.map(|a| a.to_string()),
        family,
        decoding,
    })
}

/// Where the keys come from.
pub enum KeySource {
    /// `jwks_file`, read at start.
    File(Arc<KeySet>),
    /// `jwks_url`.
    Url(Box<JwksCache>),
}

/// The keys of a `jwks_url`. See the module docs.
pub struct JwksCache {
    fetcher: JwksFetcher,
    refresh: Duration,
    state: Mutex<CacheState>,
    /// Held while fetching, so that sessions that all find the cache stale make one fetch between them.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Clone, Default)]
struct CacheState {
    keys: Option<Arc<KeySet>>,
    /// When the keys were fetched.
    fetched: Option<Instant>,
    /// When the last fetch (successful or not) started, and how many there were.
    attempted: Option<Instant>,
    attempts: u64,
}

impl JwksCache {
    /// A cache of the keys at the fetcher's URL, fetched again every `refresh`.
    pub fn new(fetcher: JwksFetcher, refresh: Duration) -> JwksCache {
        JwksCache {
            fetcher,
            refresh,
            state: Mutex::new(CacheState::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn snapshot(&self) -> CacheState {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The keys to check a token with `kid` by, fetching them first when none are held, when they are older
    /// than `refresh`, or when they lack `kid` (each at most once per [`MIN_REFETCH`]). `None`: no keys could
    /// be had.
    pub async fn keys(&self, kid: Option<&str>) -> Option<Arc<KeySet>> {
        let before = self.snapshot();
        if !self.wants_fetch(&before, kid) {
            return before.keys;
        }
        let _turn = self.fetching.lock().await;
        // Another session may have fetched while this one waited for its turn.
        let now = self.snapshot();
        if now.attempts != before.attempts || !self.wants_fetch(&now, kid) {
            return now.keys;
        }
        let started = Instant::now();
        {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            s.attempted = Some(started);
            s.attempts += 1;
        }
        let url = self.fetcher.url();
        let fetched = self
            .fetcher
            .fetch()
            .await
            .and_then(|body| KeySet::parse(&body, url));
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match fetched {
            Ok(set) => {
                info!(jwks = url, keys = set.len(), "fetched the OAuth JWKS");
                s.keys = Some(Arc::new(set));
                s.fetched = Some(started);
            }
            Err(error) => {
                warn!(
                    jwks = url,
                    error,
                    kept = s.keys.is_some(),
                    "fetching the OAuth JWKS failed"
                );
            }
        }
        s.keys.clone()
    }

    fn wants_fetch(&self, s: &CacheState, kid: Option<&str>) -> bool {
        let may = s.attempted.is_none_or(|t| t.elapsed() >= MIN_REFETCH);
        let stale = s.fetched.is_none_or(|t| t.elapsed() >= self.refresh);
        let missing = match (&s.keys, kid) {
            (None, _) => true,
            (Some(k), Some(kid)) => !k.has_kid(kid),
            (Some(_), None) => false,
        };
        may && (stale || missing)
    }
}
