//! SMTP AUTH (RFC 4954): the users file, SASL PLAIN (RFC 4616) and LOGIN decoding, password verification and
//! the failure lockout.
//!
//! The users file (`ingest.users_file`) has one user per line, `user:<argon2id PHC hash>` (as printed by
//! `tern passwd`), optionally followed by `:domain,domain,...`: the only sender domains that user may put in
//! `MAIL FROM` (`553 5.7.1` otherwise; the null sender is then refused too). Empty lines and lines starting
//! with `#` are ignored. The hash `!` marks a user without a password (`alice@example.com:!:example.com`):
//! PLAIN and LOGIN never accept it, and the line only gives the sender domains of a user who authenticates
//! with an OAuth token (see [`crate::oauth::sender_domains`]).
//!
//! Verification runs argon2 on the blocking pool. An unknown user is verified against another user's hash,
//! so that the reply takes as long as for a known user with a wrong password.
//!
//! [`Lockout`]: every failure from a client address is answered after a growing delay (250 ms, doubling, at
//! most 4 s); after `ingest.auth_max_failures` failures within [`LOCKOUT`] the address is locked out for
//! [`LOCKOUT`], during which AUTH gets `454 4.7.0` without a password being checked. The table is per
//! process.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordVerifier;
use argon2::password_hash::phc::PasswordHash;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tern_smtp::ReversePath;

use crate::IngestError;

/// How long an address stays locked out, and the window in which its failures are counted.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);

/// The hash of a user who has no password (an OAuth-only user).
const NO_PASSWORD: &str = "!";

/// One line of the users file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UserEntry {
    hash: String,
    domains: Option<Vec<String>>,
}

/// The users allowed to authenticate.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    users: HashMap<String, UserEntry>,
    /// Password checks running at once. Each argon2id check takes ~19 MiB and a core for a while: without a
    /// cap, clients that never authenticate could fill the blocking pool (512 threads) with them.
    checks: CheckLimit,
}

/// One password check per core at a time, shared by clones of the database.
#[derive(Debug, Clone)]
struct CheckLimit(Arc<tokio::sync::Semaphore>);

impl Default for CheckLimit {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        CheckLimit(Arc::new(tokio::sync::Semaphore::new(cores)))
    }
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthedUser {
    /// The user name.
    pub name: String,
    /// The sender domains the user may use (lower-case); `None`: any.
    pub domains: Option<Vec<String>>,
}

impl AuthedUser {
    /// Whether the user may use `sender` as the reverse path.
    pub fn may_send_from(&self, sender: &ReversePath) -> bool {
        let Some(domains) = &self.domains else {
            return true;
        };
        match sender.mailbox() {
            None => false,
            Some(m) => {
                let d = m.domain_for_routing();
                domains.contains(&d)
            }
        }
    }
}

impl UserDb {
    /// Reads and parses the users file.
    pub fn load(path: &Path) -> Result<UserDb, IngestError> {
        let text = std::fs::read_to_string(path).map_err(|e| IngestError::UsersFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        UserDb::parse(&text).map_err(|message| IngestError::UsersFile {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses the users file's text; the error names the line.
    pub fn parse(text: &str) -> Result<UserDb, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split(':');
            let (Some(user), Some(hash)) = (parts.next(), parts.next()) else {
                return Err(format!("line {}: expected user:hash[:domains]", n + 1));
            };
            let domains = parts.next().map(|d| {
                d.split(',')
                    .map(|s| s.trim().trim_end_matches('.').to_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
            });
            if parts.next().is_some() || user.is_empty() {
                return Err(format!("line {}: expected user:hash[:domains]", n + 1));
            }
            if hash != NO_PASSWORD && (PasswordHash::new(hash).is_err() || !hash.starts_with("$argon2")) {
                return Err(format!(
                    "line {}: the hash of {user:?} is not an argon2 PHC string",
                    n + 1
                ));
            }
            if users
                .insert(
                    user.to_owned(),
                    UserEntry {
                        hash: hash.to_owned(),
                        domains,
                    },
                )
                .is_some()
            {
                return Err(format!("line {}: user {user:?} is listed twice", n + 1));
            }
        }
        Ok(UserDb {
            users,
            checks: CheckLimit::default(),
        })
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there is no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether some user has a password (PLAIN and LOGIN are offered only then).
    pub fn has_passwords(&self) -> bool {
        self.users.values().any(|e| e.hash != NO_PASSWORD)
    }

    /// The sender domains of `user` if the file lists it (the name compared without ASCII case, as user
    /// names from tokens are often addresses): `Some(None)` when its line names none (any domain).
    pub fn domains_of(&self, user: &str) -> Option<Option<Vec<String>>> {
        let entry = self.users.get(user).or_else(|| {
            self.users
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(user))
                .map(|(_, e)| e)
        })?;
        Some(entry.domains.clone())
    }

    /// Checks `password` for `user` on the blocking pool, at most one check per core at a time (the others
    /// wait their turn; the session's idle timeout still applies around the whole command).
    pub async fn verify(self: &Arc<Self>, user: &str, password: &str) -> Option<AuthedUser> {
        let _turn = self.checks.0.acquire().await.ok()?;
        let db = Arc::clone(self);
        let user = user.to_owned();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || db.verify_blocking(&user, &password))
            .await
            .ok()
            .flatten()
    }

    /// Checks `password` for `user` on the calling thread (CPU-heavy).
    pub fn verify_blocking(&self, user: &str, password: &str) -> Option<AuthedUser> {
        let with_password = |e: &&UserEntry| e.hash != NO_PASSWORD;
        let (entry, known) = match self.users.get(user).filter(with_password) {
            Some(e) => (e, true),
            // Spend the same time as for a wrong password.
            None => (self.users.values().find(with_password)?, false),
        };
        let hash = PasswordHash::new(&entry.hash).ok()?;
        let ok = argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok();
        (ok && known).then(|| AuthedUser {
            name: user.to_owned(),
            domains: entry.domains.clone(),
        })
    }
}

/// Why a SASL response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*`: `501 5.7.0`.
    Cancelled,
    /// Not base64, not UTF-8, or not the mechanism's shape: `501 5.5.2`.
    Malformed,
}

/// Decodes one base64 SASL response (`*` cancels) into text.
pub fn decode_response(line: &str) -> Result<String, SaslError> {
    let line = line.trim_end();
    if line == "*" {
        return Err(SaslError::Cancelled);
    }
    let bytes = STANDARD.decode(line).map_err(|_| SaslError::Malformed)?;
    String::from_utf8(bytes).map_err(|_| SaslError::Malformed)
}

/// Splits a PLAIN message `authzid NUL authcid NUL passwd` (RFC 4616) into the user and password. An
/// authorization identity other than the user itself is refused as malformed (tern has no proxy users).
pub fn split_plain(msg: &str) -> Result<(String, String), SaslError> {
    let mut parts = msg.split('\0');
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if user.is_empty() || (!authz.is_empty() && authz != user) {
        return Err(SaslError::Malformed);
    }
    Ok((user.to_owned(), pass.to_owned()))
}

/// Base64 of `text`, for 334 challenges.
pub fn encode(text: &str) -> String {
    STANDARD.encode(text)
}

/// Failed AUTH attempts per client address. See the module docs.
#[derive(Debug)]
pub struct Lockout {
    max_failures: u32,
    table: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

impl Lockout {
    /// A table that locks an address out after `max_failures` failures.
    pub fn new(max_failures: u32) -> Self {
        Lockout {
            max_failures: max_failures.max(1),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` is locked out at `now`.
    pub fn is_locked(&self, ip: IpAddr, now: Instant) -> bool {
        let t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        t.get(&ip.to_canonical())
            .and_then(|f| f.locked_until)
            .is_some_and(|until| now < until)
    }

    /// Records a failure from `ip` at `now`; returns how long to wait before answering it.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if t.len() > 100_000 {
            t.retain(|_, f| now.duration_since(f.last) < LOCKOUT);
        }
        let f = t.entry(ip.to_canonical()).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        if now.duration_since(f.last) >= LOCKOUT || f.locked_until.is_some_and(|u| now >= u) {
            *f = Failures {
                count: 0,
                last: now,
                locked_until: None,
            };
        }
        f.count += 1;
        f.last = now;
        if f.count >= self.max_failures {
            f.locked_until = Some(now + LOCKOUT);
        }
        let shift = (f.count - 1).min(4);
        Duration::from_millis(250 << shift)
    }

    /// Forgets the failures of `ip` after a success.
    pub fn record_success(&self, ip: IpAddr) {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&ip.to_canonical());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordHasher;

    fn cheap_hash(pw: &str) -> String {
        let params = argon2::Params::new(256, 1, 1, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        a.hash_password(pw.as_bytes()).unwrap().to_string()
    }

    #[test]
    fn users_file_parses_and_verifies() {
        let text = format!(
            "# comment\n\nalice:{}\nbob:{}:Example.com, example.org\n",
            cheap_hash("pw1"),
            cheap_hash("pw2")
        );
        let db = UserDb::parse(&text).unwrap();
        assert_eq!(db.len(), 2);
        let alice = db.verify_blocking("alice", "pw1").unwrap();
        assert_eq!(alice.domains, None);
        assert!(db.verify_blocking("alice", "pw2").is_none());
        assert!(db.verify_blocking("carol", "pw1").is_none());
        let bob = db.verify_blocking("bob", "pw2").unwrap();
        assert_eq!(
            bob.domains,
            Some(vec!["example.com".into(), "example.org".into()])
        );
        let from = |s: &str| ReversePath::Mailbox(s.parse().unwrap());
        assert!(bob.may_send_from(&from("x@EXAMPLE.org")));
        assert!(!bob.may_send_from(&from("x@example.net")));
        assert!(!bob.may_send_from(&ReversePath::Null));
        assert!(alice.may_send_from(&ReversePath::Null));
    }

    #[test]
    fn a_user_without_password_gives_domains_but_never_logs_in() {
        let text = format!(
            "alice@example.com:!:example.com,example.org\nbob:{}\ncarol@x.test:!\n",
            cheap_hash("pw")
        );
        let db = UserDb::parse(&text).unwrap();
        assert!(db.has_passwords());
        assert!(db.verify_blocking("alice@example.com", "!").is_none());
        assert!(db.verify_blocking("alice@example.com", "").is_none());
        assert_eq!(
            db.domains_of("Alice@Example.com"),
            Some(Some(vec!["example.com".into(), "example.org".into()]))
        );
        assert_eq!(db.domains_of("carol@x.test"), Some(None));
        assert_eq!(db.domains_of("dave@x.test"), None);
        assert!(!UserDb::parse("a:!\n").unwrap().has_passwords());
    }

    #[test]
    fn bad_users_file_lines_are_named() {
        assert!(UserDb::parse("alice\n").unwrap_err().contains("line 1"));
        assert!(
            UserDb::parse("\nalice:plaintext\n")
                .unwrap_err()
                .contains("line 2")
        );
        let h = cheap_hash("x");
        assert!(
            UserDb::parse(&format!("a:{h}\na:{h}\n"))
                .unwrap_err()
                .contains("twice")
        );
    }

    #[test]
    fn sasl_responses_decode() {
        assert_eq!(decode_response("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_response("!!"), Err(SaslError::Malformed));
        let plain = decode_response(&encode("\0alice\0secret")).unwrap();
        assert_eq!(split_plain(&plain), Ok(("alice".into(), "secret".into())));
        assert_eq!(split_plain("alice\0alice\0pw"), Ok(("alice".into(), "pw".into())));
        assert_eq!(split_plain("bob\0alice\0pw"), Err(SaslError::Malformed));
        assert_eq!(split_plain("alice\0pw"), Err(SaslError::Malformed));
    }

    #[test]
    fn failures_slow_down_then_lock_out() {
        let l = Lockout::new(3);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let t = Instant::now();
        assert_eq!(l.record_failure(ip, t), Duration::from_millis(250));
        assert_eq!(l.record_failure(ip, t), Duration::from_millis(500));
        assert!(!l.is_locked(ip, t));
        l.record_failure(ip, t);
        assert!(l.is_locked(ip, t));
        assert!(l.is_locked(ip, t + LOCKOUT - Duration::from_secs(1)));
        assert!(!l.is_locked(ip, t + LOCKOUT));
        let other: IpAddr = "192.0.2.10".parse().unwrap();
        l.record_failure(other, t);
        l.record_success(other);
        assert!(!l.is_locked(other, t));
    }
}
