//! AUTH XOAUTH2 and OAUTHBEARER (RFC 7628) in a session, when `[ingest.oauth]` is set.
//!
//! tern-smtp's parser knows only PLAIN and LOGIN, so these two arrive as an unknown mechanism and are taken
//! from the raw command line here. They follow PLAIN's rules: offered only after TLS (unless
//! `allow_plaintext_auth`), `503` out of sequence, `454 4.7.0` while the address is locked out.
//!
//! | situation | reply |
//! |---|---|
//! | token verified (and the `user=` / `a=` the client named, if any, is the token's user) | `235 2.7.0` |
//! | token refused | `334 <base64 JSON error>` (RFC 7628 3.2.2; Google's form for XOAUTH2), then, whatever the client answers, `535 5.7.8` after the lockout's delay |
//! | the JWKS URL could not be fetched and no keys are held | `454 4.7.0` (not counted as a failure) |
//! | undecodable or malformed response / `*` | `501 5.5.2` / `501 5.7.0` |
//!
//! A user's sender domains: see [`crate::oauth::sender_domains`]. The token is never logged.

use tern_smtp::Reply;
use tracing::{info, warn};

use super::super::auth::{self, AuthedUser, SaslError};
use super::{Flow, Session};
use crate::oauth::wire::{self, OauthMechanism};
use crate::oauth::{self, TokenError};

/// Why an exchange failed, for the log.
enum Failure {
    Token(TokenError),
    /// The token is valid, but names another user than the client did.
    AuthzidMismatch,
}

impl Session {
    /// The SASL mechanisms EHLO lists on this connection now.
    pub(super) fn auth_mechanisms(&self) -> Vec<String> {
        if !self.auth_offered() {
            return Vec::new();
        }
        let mut m = Vec::new();
        if self.shared.users.as_ref().is_some_and(|u| u.has_passwords()) {
            m.extend(["PLAIN".to_string(), "LOGIN".to_string()]);
        }
        if self.shared.oauth.is_some() {
            m.extend(["XOAUTH2".to_string(), "OAUTHBEARER".to_string()]);
        }
        m
    }

    /// Whether `name` (an AUTH mechanism tern-smtp does not parse) is an OAuth mechanism this server has.
    pub(super) fn offers_oauth(&self, name: &str) -> bool {
        self.shared.oauth.is_some() && OauthMechanism::from_name(name).is_some()
    }

    /// `AUTH XOAUTH2 [initial-response]` or `AUTH OAUTHBEARER [initial-response]`, from the command line.
    pub(super) async fn oauth_auth(&mut self, line: &[u8]) -> Flow {
        let Some((mechanism, initial)) = parse_auth_line(line) else {
            return self.reply(Reply::new(
                501,
                "5.5.2",
                "Syntax error: initial response is not base64",
            ));
        };
        if let Some(r) = self.auth_sequence_error() {
            return self.reply(r);
        }
        let Some(verifier) = self.shared.oauth.clone() else {
            return self.reply(Reply::new(504, "5.5.4", "Unrecognized authentication type"));
        };
        if let Some(r) = self.auth_transport_error() {
            return self.reply(r);
        }
        let first = match initial {
            Some(r) => r,
            None => match self.challenge("").await {
                None => return Flow::Close,
                Some(Ok(line)) => line,
                Some(Err(_)) => {
                    return self.reply(Reply::new(501, "5.5.2", "Invalid authentication response"));
                }
            },
        };
        let response = match auth::decode_response(&first) {
            Ok(text) => wire::parse_response(mechanism, text.as_bytes()),
            Err(SaslError::Cancelled) => {
                return self.reply(Reply::new(501, "5.7.0", "Authentication cancelled"));
            }
            Err(SaslError::Malformed) => None,
        };
        let Some(response) = response else {
            return self.reply(Reply::new(501, "5.5.2", "Invalid authentication response"));
        };
        let verified = verifier.verify(&response.token).await;
        let claimed = response
            .authzid
            .as_deref()
            .unwrap_or("-")
            .escape_debug()
            .to_string();
        let failure = match verified {
            Ok(v)
                if response
                    .authzid
                    .as_deref()
                    .is_none_or(|a| a.eq_ignore_ascii_case(&v.user)) =>
            {
                self.shared.lockout.record_success(self.ip);
                let domains = oauth::sender_domains(self.shared.users.as_deref(), &v.user);
                info!(
                    user = %v.user.escape_debug(), mechanism = mechanism.as_str(),
                    kid = %v.kid.as_deref().unwrap_or("-").escape_debug(), "authenticated"
                );
                if domains.as_ref().is_some_and(Vec::is_empty) {
                    warn!(
                        user = %v.user.escape_debug(),
                        "OAuth user is not an address and not in the users file: it may send from no domain"
                    );
                }
                self.user = Some(AuthedUser {
                    name: v.user,
                    domains,
                });
                return self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
            }
            Ok(_) => Failure::AuthzidMismatch,
            Err(TokenError::KeysUnavailable) => {
                warn!(
                    mechanism = mechanism.as_str(),
                    "AUTH deferred: no OAuth keys (the JWKS fetch failed)"
                );
                return self.reply(Reply::new(454, "4.7.0", "Temporary authentication failure"));
            }
            Err(e) => Failure::Token(e),
        };
        let reason = match &failure {
            Failure::Token(e) => e.reason(),
            Failure::AuthzidMismatch => "authzid_mismatch",
        };
        let kid = jsonwebtoken::decode_header(&response.token)
            .ok()
            .and_then(|h| h.kid)
            .unwrap_or_else(|| "-".into());
        let delay = self
            .shared
            .lockout
            .record_failure(self.ip, std::time::Instant::now());
        self.auth_failures += 1;
        warn!(
            mechanism = mechanism.as_str(), reason, user = %claimed, kid = %kid.escape_debug(),
            failures = self.auth_failures, "authentication failed"
        );
        let error = wire::error_challenge(
            mechanism,
            verifier.scope(),
            verifier.openid_configuration().as_deref(),
        );
        // RFC 7628 3.2.3: the client answers the error challenge (with ^A); whatever it sends, the exchange
        // ends in failure.
        if self.challenge(&error).await.is_none() {
            return Flow::Close;
        }
        self.auth_failed(delay).await
    }
}

/// The mechanism and the initial response (`=` is an empty one) of an `AUTH` line; `None` when the response
/// is not base64 or more words follow.
fn parse_auth_line(line: &[u8]) -> Option<(OauthMechanism, Option<String>)> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches(['\r', '\n']);
    let mut words = text.split(' ').filter(|w| !w.is_empty()).skip(1);
    let mechanism = OauthMechanism::from_name(words.next()?)?;
    let initial = match words.next() {
        None => None,
        Some("=") => Some(String::new()),
        Some(r)
            if r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) =>
        {
            Some(r.to_owned())
        }
        Some(_) => return None,
    };
    if words.next().is_some() {
        return None;
    }
    Some((mechanism, initial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_lines_parse() {
        assert_eq!(
            parse_auth_line(b"AUTH xoauth2 dXNlcj0=\r\n"),
            Some((OauthMechanism::Xoauth2, Some("dXNlcj0=".into())))
        );
        assert_eq!(
            parse_auth_line(b"auth OAUTHBEARER\r\n"),
            Some((OauthMechanism::OauthBearer, None))
        );
        assert_eq!(
            parse_auth_line(b"AUTH OAUTHBEARER =\r\n"),
            Some((OauthMechanism::OauthBearer, Some(String::new())))
        );
        assert_eq!(parse_auth_line(b"AUTH XOAUTH2 a$b\r\n"), None);
        assert_eq!(parse_auth_line(b"AUTH XOAUTH2 ab cd\r\n"), None);
    }
}
