//! AUTH towards a server that wants it (a relay, RFC 4954): PLAIN with an initial response (RFC 4616),
//! LOGIN, and XOAUTH2 with an OAuth 2.0 access token (Google's and Microsoft's SASL mechanism). Credentials
//! only go out over TLS; the transcript shows the mechanism, never the payloads.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tern_smtp::{AuthMechanism, Command, Reply};
use tracing::warn;

use super::client::SmtpClient;
use super::connect::ConnectError;
use super::transcript::MASK;
use super::wire::reply_line;

impl SmtpClient {
    /// AUTH PLAIN as `user`. Credentials never go out in plain text: without TLS nothing is sent and the
    /// session ends, as it does when the server refuses them. The transcript shows `AUTH PLAIN <masked>`.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<(), ConnectError> {
        self.tls_for_auth().await?;
        let token = STANDARD.encode(format!("\0{user}\0{password}"));
        let auth = Command::Auth {
            mechanism: AuthMechanism::Plain,
            initial_response: Some(token),
        };
        let r = self.wire.command(&auth, self.timeouts.command).await?;
        self.auth_done(r).await
    }

    /// AUTH LOGIN as `user`: the user name and the password each after a 334 challenge, each shown as
    /// `<masked>` in the transcript. Over TLS only, as [`SmtpClient::auth_plain`].
    pub async fn auth_login(&mut self, user: &str, password: &str) -> Result<(), ConnectError> {
        self.tls_for_auth().await?;
        let auth = Command::Auth {
            mechanism: AuthMechanism::Login,
            initial_response: None,
        };
        let t = self.timeouts.command;
        let mut r = self.wire.command(&auth, t).await?;
        for secret in [user, password] {
            if r.code != 334 {
                break;
            }
            self.wire
                .send_line(&STANDARD.encode(secret), MASK, t, "AUTH")
                .await?;
            r = self.wire.read_reply(t, "AUTH").await?;
        }
        self.auth_done(r).await
    }

    /// AUTH XOAUTH2 as `user` with the access token `token`: the initial response is
    /// `base64("user=" user ^A "auth=Bearer " token ^A ^A)`. A refusing server first sends a 334 whose text
    /// is a base64 JSON error (its `status`, `schemes`, `scope`), logged at warn; the client answers it with
    /// an empty line and the server then gives its final reply. Over TLS only; the transcript shows
    /// `AUTH XOAUTH2 <masked>`.
    pub async fn auth_xoauth2(&mut self, user: &str, token: &str) -> Result<(), ConnectError> {
        self.tls_for_auth().await?;
        let payload = STANDARD.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"));
        let t = self.timeouts.command;
        self.wire
            .send_line(
                &format!("AUTH XOAUTH2 {payload}"),
                &format!("AUTH XOAUTH2 {MASK}"),
                t,
                "AUTH",
            )
            .await?;
        let mut r = self.wire.read_reply(t, "AUTH").await?;
        if r.code == 334 {
            log_xoauth2_error(&self.server, user, &r);
            self.wire.send_line("", "", t, "AUTH").await?;
            r = self.wire.read_reply(t, "AUTH").await?;
        }
        self.auth_done(r).await
    }

    /// Credentials go over TLS only: without it, the session ends and nothing is sent.
    async fn tls_for_auth(&mut self) -> Result<(), ConnectError> {
        if self.tls.is_none() {
            self.hang_up().await;
            return Err(ConnectError::Tls(format!(
                "not sending credentials to {} without TLS",
                self.server
            )));
        }
        Ok(())
    }

    /// The final reply to AUTH: 235, or the session ends with the refusal.
    async fn auth_done(&mut self, r: Reply) -> Result<(), ConnectError> {
        if r.code != 235 {
            self.hang_up().await;
            return Err(ConnectError::Rejected(format!(
                "AUTH at {} failed: {}",
                self.server,
                reply_line(&r)
            )));
        }
        Ok(())
    }
}

/// Logs the JSON error of an XOAUTH2 334 challenge (`{"status":"401","schemes":"bearer","scope":"..."}`)
/// with its fields; a challenge that is no base64 JSON is logged as such.
fn log_xoauth2_error(server: &str, user: &str, r: &Reply) {
    let text = r.lines.join("");
    let decoded = STANDARD.decode(text.trim()).ok();
    let json = decoded
        .as_deref()
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(d).ok());
    let field = |k: &str| {
        json.as_ref()
            .and_then(|j| j.get(k))
            .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
            .unwrap_or_default()
    };
    warn!(
        relay = %server,
        user,
        status = %field("status"),
        schemes = %field("schemes"),
        scope = %field("scope"),
        error = %decoded.map(|d| String::from_utf8_lossy(&d).into_owned()).unwrap_or(text),
        "the relay refused the XOAUTH2 token"
    );
}
