//! AUTH towards a server that wants it (a relay): PLAIN with an initial response (RFC 4954, RFC 4616).

use base64::Engine as _;
use tern_smtp::{AuthMechanism, Command};

use super::client::SmtpClient;
use super::connect::ConnectError;
use super::wire::reply_line;

impl SmtpClient {
    /// AUTH PLAIN as `user`. Credentials never go out in plain text: without TLS nothing is sent and the
    /// session ends, as it does when the server refuses them. The transcript shows `AUTH PLAIN <masked>`.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<(), ConnectError> {
        if self.tls.is_none() {
            self.hang_up().await;
            return Err(ConnectError::Tls(format!(
                "not sending credentials to {} without TLS",
                self.server
            )));
        }
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let auth = Command::Auth {
            mechanism: AuthMechanism::Plain,
            initial_response: Some(token),
        };
        let r = self.wire.command(&auth, self.timeouts.command).await?;
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
