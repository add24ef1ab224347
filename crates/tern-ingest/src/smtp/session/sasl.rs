//! AUTH PLAIN and LOGIN (RFC 4954) in a session: the 334 challenges, reading the responses, checking the
//! credentials (with the lockout and the delay after a failure).

use std::time::Instant;

use tern_smtp::command::MAX_AUTH_LINE;
use tern_smtp::{AuthMechanism, Reply};
use tracing::{info, warn};

use super::super::auth::{self, SaslError};
use super::{Flow, Input, MAX_SESSION_AUTH_FAILURES, Session, bad_sequence};

impl Session {
    /// Sends a 334 challenge and reads the response line. `None`: the connection ended.
    pub(super) async fn challenge(&mut self, text: &str) -> Option<Result<String, SaslError>> {
        self.reply(Reply::new(334, None, auth::encode(text)));
        loop {
            match self.framer.next_line_with_limit(MAX_AUTH_LINE) {
                Some(Ok(line)) => {
                    self.line_clock.reset();
                    return Some(String::from_utf8(line).map_err(|_| SaslError::Malformed));
                }
                Some(Err(_)) => {
                    self.line_clock.reset();
                    return Some(Err(SaslError::Malformed));
                }
                None => {
                    let deadline = self.line_deadline();
                    match self.read_input(true, deadline).await {
                        Input::Data(n) => self.framer.push(&self.rbuf[..n]),
                        Input::Closed => return None,
                    }
                }
            }
        }
    }

    /// Reads the credentials of a PLAIN or LOGIN exchange. `None`: the connection ended.
    async fn credentials(
        &mut self,
        mechanism: AuthMechanism,
        initial: Option<String>,
    ) -> Option<Result<(String, String), SaslError>> {
        let first = match initial {
            Some(r) => r,
            None => {
                let text = if mechanism == AuthMechanism::Login {
                    "Username:"
                } else {
                    ""
                };
                match self.challenge(text).await? {
                    Ok(line) => line,
                    Err(e) => return Some(Err(e)),
                }
            }
        };
        match mechanism {
            AuthMechanism::Plain => Some(auth::decode_response(&first).and_then(|m| auth::split_plain(&m))),
            AuthMechanism::Login => {
                let user = match auth::decode_response(&first) {
                    Ok(u) if !u.is_empty() => u,
                    Ok(_) => return Some(Err(SaslError::Malformed)),
                    Err(e) => return Some(Err(e)),
                };
                let password = match self.challenge("Password:").await? {
                    Ok(line) => auth::decode_response(&line),
                    Err(e) => Err(e),
                };
                Some(password.map(|p| (user, p)))
            }
        }
    }

    /// The refusal of an AUTH out of sequence: before EHLO, after a success, inside a transaction.
    pub(super) fn auth_sequence_error(&self) -> Option<Reply> {
        if !self.helo.as_ref().is_some_and(|h| h.esmtp) {
            return Some(bad_sequence("Send EHLO first"));
        }
        if self.user.is_some() {
            return Some(bad_sequence("Already authenticated"));
        }
        if self.tx.is_some() {
            return Some(bad_sequence("AUTH not allowed during a mail transaction"));
        }
        None
    }

    /// The refusal of an AUTH on this connection now: without TLS (unless `allow_plaintext_auth`), or from a
    /// client address locked out.
    pub(super) fn auth_transport_error(&self) -> Option<Reply> {
        if !self.auth_offered() {
            return Some(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ));
        }
        if self.shared.lockout.is_locked(self.ip, Instant::now()) {
            info!("AUTH refused: address locked out");
            return Some(Reply::new(
                454,
                "4.7.0",
                "Too many authentication failures, try again later",
            ));
        }
        None
    }

    /// AUTH PLAIN / LOGIN (RFC 4954).
    pub(super) async fn auth(&mut self, mechanism: AuthMechanism, initial: Option<String>) -> Flow {
        if let Some(r) = self.auth_sequence_error() {
            return self.reply(r);
        }
        let Some(users) = self.shared.users.clone().filter(|u| u.has_passwords()) else {
            return self.reply(Reply::new(502, "5.5.1", "AUTH not available"));
        };
        if let Some(r) = self.auth_transport_error() {
            return self.reply(r);
        }
        let (user, password) = match self.credentials(mechanism, initial).await {
            None => return Flow::Close,
            Some(Ok(c)) => c,
            Some(Err(SaslError::Cancelled)) => {
                return self.reply(Reply::new(501, "5.7.0", "Authentication cancelled"));
            }
            Some(Err(SaslError::Malformed)) => {
                return self.reply(Reply::new(501, "5.5.2", "Invalid authentication response"));
            }
        };
        if let Some(authed) = users.verify(&user, &password).await {
            self.shared.lockout.record_success(self.ip);
            info!(user = %authed.name, mechanism = %mechanism, "authenticated");
            self.user = Some(authed);
            return self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
        }
        let delay = self.shared.lockout.record_failure(self.ip, Instant::now());
        self.auth_failures += 1;
        // Escaped (control characters and quotes, without Rust's debug quoting): the name is the client's
        // text (and sometimes a mistyped password).
        warn!(user = %user.escape_debug(), failures = self.auth_failures, "authentication failed");
        self.auth_failed(delay).await
    }

    /// The end of a failed AUTH, after the delay the lockout asks for: `535 5.7.8`, and after the
    /// [`MAX_SESSION_AUTH_FAILURES`]th in the session, `421 4.7.0` and close.
    pub(super) async fn auth_failed(&mut self, delay: std::time::Duration) -> Flow {
        tokio::time::sleep(delay).await;
        let flow = self.reply(Reply::new(535, "5.7.8", "Authentication credentials invalid"));
        if flow == Flow::Continue && self.auth_failures >= MAX_SESSION_AUTH_FAILURES {
            self.out.extend_from_slice(
                &Reply::new(
                    421,
                    "4.7.0",
                    "Too many authentication failures, closing connection",
                )
                .to_bytes(),
            );
            return Flow::Close;
        }
        flow
    }
}
