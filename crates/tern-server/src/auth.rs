//! API keys: the keys file, the `authorization: Bearer <key>` check, and per-key sender domains. The ingest
//! role's Send API (`ingest.api_keys_file`) and the control plane (`control.api_keys_file`, admin keys) use the
//! same format and the same check, with separate files.
//!
//! The keys file has one key per line:
//!
//! ```text
//! # name:sha256-of-the-key[:allowed,sender,domains]
//! billing:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08:billing.example.com
//! newsletter:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
//! ```
//!
//! The hash is the lowercase hex SHA-256 of the key exactly as the client sends it after `Bearer ` (the
//! text that `tern apikey` prints, not the bytes it encodes). Blank lines and lines starting with `#` are
//! skipped. Without the third field a key may send from any domain (the control plane ignores the field).
//!
//! A presented key is hashed and its digest compared with every listed digest in constant time, so neither
//! the comparison nor the position of a match in the file shows in the response time.
//!
//! A server checks the key in [`AuthInterceptor`], which sees only the call's metadata: a call without a
//! valid key is refused before tonic reads, let alone decodes, a byte of its body. The [`Principal`] it
//! authenticated travels to the handler in the request's extensions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tern_core::ReversePath;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The keys file could not be read, or has a bad line.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct KeysFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong (with the line number).
    pub message: String,
}

/// Why a listener's authenticator could not be set up. `section` is the configuration section whose
/// `api_keys_file` and `grpc_listen` keys are at fault (`ingest`, `control`), so that the message names the
/// key to fix.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The keys file could not be read or has a bad line.
    #[error("{section}.api_keys_file: {error}")]
    KeysFile {
        /// The configuration section.
        section: &'static str,
        /// What is wrong with the file.
        error: KeysFileError,
    },
    /// No keys file, and the listener is not on loopback: anyone who can reach it could use it.
    #[error(
        "{section}.grpc_listen {listen} is not a loopback address but {section}.api_keys_file is not set: set \
         a keys file (see `tern apikey`) or listen on 127.0.0.1"
    )]
    NoKeysOnPublicListener {
        /// The configuration section.
        section: &'static str,
        /// The listener's address.
        listen: SocketAddr,
    },
}

/// One key of the keys file.
#[derive(Clone, Debug)]
struct KeyEntry {
    name: String,
    digest: [u8; 32],
    domains: Option<Vec<String>>,
}

/// The caller a request was authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The key's name from the keys file; `None` for an unauthenticated caller on a loopback listener
    /// without a keys file.
    pub name: Option<String>,
    /// The sender domains allowed (lower-case); `None`: any.
    pub domains: Option<Vec<String>>,
}

impl Principal {
    /// Whether this caller may use `sender` as the envelope sender: always without a domain list; with one,
    /// only a mailbox whose domain is listed (the null sender is refused).
    pub fn may_send_from(&self, sender: &ReversePath) -> bool {
        let Some(domains) = &self.domains else {
            return true;
        };
        sender
            .mailbox()
            .is_some_and(|m| domains.contains(&m.domain_for_routing()))
    }
}

/// How callers are authenticated.
#[derive(Clone, Debug)]
pub enum Authenticator {
    /// No keys file and a loopback listener: every call is allowed.
    Open,
    /// Calls must carry one of these keys.
    Keys(ApiKeys),
}

impl Authenticator {
    /// The authenticator for the listener of configuration section `section` on `listen`, with the keys file
    /// `keys_file`: the keys when there is a file (with a warning when it lists none, as every call will then
    /// be refused); [`Authenticator::Open`] without one only on a loopback address, otherwise an error (a
    /// public listener must not serve anyone who can reach it).
    pub fn for_listener(
        section: &'static str,
        listen: SocketAddr,
        keys_file: Option<&Path>,
    ) -> Result<Authenticator, AuthError> {
        match keys_file {
            Some(path) => {
                let keys = ApiKeys::load(path).map_err(|error| AuthError::KeysFile { section, error })?;
                if keys.is_empty() {
                    tracing::warn!(
                        section,
                        "the API keys file lists no key: every call will be refused"
                    );
                }
                Ok(Authenticator::Keys(keys))
            }
            None if listen.ip().is_loopback() => Ok(Authenticator::Open),
            None => Err(AuthError::NoKeysOnPublicListener { section, listen }),
        }
    }

    /// Checks the request's `authorization` metadata: `UNAUTHENTICATED` when a key is needed and missing or
    /// unknown.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        let keys = match self {
            Authenticator::Open => {
                return Ok(Principal {
                    name: None,
                    domains: None,
                });
            }
            Authenticator::Keys(keys) => keys,
        };
        let Some(value) = metadata.get("authorization") else {
            return Err(Status::unauthenticated(
                "missing API key: send the metadata `authorization: Bearer <key>`",
            ));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated("malformed authorization metadata: expected `Bearer <key>`")
            })?;
        keys.find(key)
            .ok_or_else(|| Status::unauthenticated("invalid API key"))
    }
}

/// The server's key check: authenticates each call from its metadata and, when it passes, puts the
/// [`Principal`] into the request's extensions for the handler; otherwise answers with the `UNAUTHENTICATED`
/// status of [`Authenticator::authenticate`]. Run by tonic before the request body is read.
#[derive(Clone, Debug)]
pub struct AuthInterceptor {
    auth: Arc<Authenticator>,
}

impl AuthInterceptor {
    /// An interceptor checking calls with `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        AuthInterceptor { auth }
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = self.auth.authenticate(request.metadata())?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The parsed keys file.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    keys: Vec<KeyEntry>,
}

impl ApiKeys {
    /// Reads and parses the keys file.
    pub fn load(path: &Path) -> Result<ApiKeys, KeysFileError> {
        let error = |message| KeysFileError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        ApiKeys::parse(&text).map_err(error)
    }

    /// Parses the keys file's text; the error names the line.
    pub fn parse(text: &str) -> Result<ApiKeys, String> {
        let mut keys: Vec<KeyEntry> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = n + 1;
            let mut parts = line.split(':');
            let (Some(name), Some(hash)) = (parts.next(), parts.next()) else {
                return Err(format!("line {n}: expected name:sha256hex[:domains]"));
            };
            let domains = parts.next().map(|d| {
                d.split(',')
                    .map(|s| s.trim().trim_end_matches('.').to_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
            });
            if parts.next().is_some() || name.is_empty() {
                return Err(format!("line {n}: expected name:sha256hex[:domains]"));
            }
            let digest = parse_digest(hash).ok_or_else(|| {
                format!("line {n}: the hash of {name:?} is not 64 lowercase hex digits (a SHA-256)")
            })?;
            if keys.iter().any(|k| k.name == name) {
                return Err(format!("line {n}: key {name:?} is listed twice"));
            }
            keys.push(KeyEntry {
                name: name.to_owned(),
                digest,
                domains,
            });
        }
        Ok(ApiKeys { keys })
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the file lists no key (then every call is refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The entry whose digest is SHA-256(`key`). Every entry is compared, in constant time each.
    fn find(&self, key: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for entry in &self.keys {
            if constant_time_eq(&entry.digest, &digest) && found.is_none() {
                found = Some(Principal {
                    name: Some(entry.name.clone()),
                    domains: entry.domains.clone(),
                });
            }
        }
        found
    }
}

/// The 32 bytes of a lowercase hex SHA-256.
fn parse_digest(hash: &str) -> Option<[u8; 32]> {
    if hash.len() != 64
        || !hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hash, &mut out).ok()?;
    Some(out)
}

/// Compares two digests without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The keys-file line for a key named `name`: `name:<lowercase hex SHA-256 of key>`.
pub fn key_line(name: &str, key: &str) -> String {
    format!("{name}:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(key: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", format!("Bearer {key}").parse().unwrap());
        m
    }

    #[test]
    fn keys_file_parses_names_hashes_and_domains() {
        let text = format!(
            "# comment\n\n{}\n{}:Example.COM., other.test\n",
            key_line("a", "k1"),
            key_line("b", "k2")
        );
        let keys = ApiKeys::parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        let auth = Authenticator::Keys(keys);
        let a = auth.authenticate(&bearer("k1")).unwrap();
        assert_eq!(
            a,
            Principal {
                name: Some("a".into()),
                domains: None
            }
        );
        let b = auth.authenticate(&bearer("k2")).unwrap();
        assert_eq!(b.domains, Some(vec!["example.com".into(), "other.test".into()]));
        assert!(b.may_send_from(&ReversePath::Mailbox("x@EXAMPLE.com".parse().unwrap())));
        assert!(!b.may_send_from(&ReversePath::Mailbox("x@evil.test".parse().unwrap())));
        assert!(!b.may_send_from(&ReversePath::Null));
        assert!(a.may_send_from(&ReversePath::Null));
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, want) in [
            ("justname\n", "line 1: expected"),
            ("a:ABCDEF\n", "line 1: the hash"),
            (
                &*format!("{}\n{}\n", key_line("a", "x"), key_line("a", "y")),
                "line 2: key \"a\" is listed twice",
            ),
            (&*format!("{}:d:extra\n", key_line("a", "x")), "line 1: expected"),
            (
                &*key_line("a", "x").to_uppercase().replace("A:", "a:"),
                "line 1: the hash",
            ),
        ] {
            let err = ApiKeys::parse(text).unwrap_err();
            assert!(err.starts_with(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn missing_malformed_and_wrong_keys_are_unauthenticated() {
        let auth = Authenticator::Keys(ApiKeys::parse(&key_line("a", "right")).unwrap());
        for md in [MetadataMap::new(), bearer("wrong"), bearer("")] {
            assert_eq!(
                auth.authenticate(&md).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        let mut basic = MetadataMap::new();
        basic.insert("authorization", "Basic right".parse().unwrap());
        assert_eq!(
            auth.authenticate(&basic).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut lower = MetadataMap::new();
        lower.insert("authorization", "bearer right".parse().unwrap());
        assert!(auth.authenticate(&lower).is_ok());
    }

    #[test]
    fn open_only_on_loopback() {
        let lo: SocketAddr = "127.0.0.1:7071".parse().unwrap();
        let lo6: SocketAddr = "[::1]:7071".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7071".parse().unwrap();
        assert!(matches!(
            Authenticator::for_listener("ingest", lo, None),
            Ok(Authenticator::Open)
        ));
        assert!(matches!(
            Authenticator::for_listener("ingest", lo6, None),
            Ok(Authenticator::Open)
        ));
        let err = Authenticator::for_listener("control", any, None).unwrap_err();
        assert!(matches!(err, AuthError::NoKeysOnPublicListener { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with("control.grpc_listen 0.0.0.0:7071 "),
            "{message}"
        );
        assert!(message.contains("control.api_keys_file is not set"), "{message}");
        let open = Authenticator::Open.authenticate(&MetadataMap::new()).unwrap();
        assert_eq!(open.name, None);
    }

    #[test]
    fn an_unreadable_or_bad_keys_file_names_the_section_the_file_and_the_line() {
        let lo: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.keys");
        let err = Authenticator::for_listener("control", lo, Some(&missing)).unwrap_err();
        assert!(matches!(err, AuthError::KeysFile { .. }), "{err}");
        let message = err.to_string();
        assert!(message.starts_with("control.api_keys_file: "), "{message}");
        assert!(message.contains("missing.keys"), "{message}");

        let bad = dir.path().join("bad.keys");
        std::fs::write(&bad, format!("{}\nnot-a-key\n", key_line("a", "k"))).unwrap();
        let err = Authenticator::for_listener("ingest", lo, Some(&bad)).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("ingest.api_keys_file: "), "{message}");
        assert!(
            message.ends_with("line 2: expected name:sha256hex[:domains]"),
            "{message}"
        );

        let good = dir.path().join("good.keys");
        std::fs::write(&good, key_line("a", "k")).unwrap();
        let auth = Authenticator::for_listener("ingest", "0.0.0.0:1".parse().unwrap(), Some(&good)).unwrap();
        assert_eq!(
            auth.authenticate(&bearer("k")).unwrap().name.as_deref(),
            Some("a")
        );
    }

    #[test]
    fn interceptor_passes_the_principal_on_and_refuses_without_a_key() {
        let auth = Arc::new(Authenticator::Keys(
            ApiKeys::parse(&key_line("a", "right")).unwrap(),
        ));
        let mut interceptor = AuthInterceptor::new(auth);
        let mut request = Request::new(());
        *request.metadata_mut() = bearer("right");
        let passed = interceptor.call(request).unwrap();
        assert_eq!(
            passed
                .extensions()
                .get::<Principal>()
                .and_then(|p| p.name.as_deref()),
            Some("a")
        );
        let refused = interceptor.call(Request::new(())).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(refused.message().starts_with("missing API key"), "{refused:?}");
    }

    #[test]
    fn sha256_hex_is_lowercase_and_known() {
        assert_eq!(
            key_line("t", "test"),
            "t:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
