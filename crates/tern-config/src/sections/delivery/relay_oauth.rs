//! `delivery.relay_auth` and `[delivery.relay_oauth]`: how tern authenticates to `relay_host`, and where
//! an OAuth 2.0 access token for AUTH XOAUTH2 comes from (Microsoft 365, Google Workspace).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::DeliveryConfig;

/// The AUTH mechanism used towards `relay_host`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayAuth {
    /// AUTH PLAIN with `relay_username` and `relay_password` (RFC 4616).
    Plain,
    /// AUTH LOGIN with `relay_username` and `relay_password`.
    Login,
    /// AUTH XOAUTH2 with `relay_username` and an access token from `[delivery.relay_oauth]`.
    Xoauth2,
}

impl RelayAuth {
    /// The name as written in the configuration: `plain`, `login` or `xoauth2`.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayAuth::Plain => "plain",
            RelayAuth::Login => "login",
            RelayAuth::Xoauth2 => "xoauth2",
        }
    }
}

/// `[delivery.relay_oauth]`: the access token for `relay_auth = "xoauth2"`. Either `token_file` (a file
/// another program keeps fresh, re-read whenever it changes), or the OAuth 2.0 client-credentials grant
/// (RFC 6749 4.4): `token_url`, `client_id`, `client_secret_file` and optionally `scope`; the token is
/// cached until a minute before it expires.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayOAuthConfig {
    /// A file holding the access token (surrounding white space ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The token endpoint (`https://`; `http://` only to a loopback address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// The OAuth client id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// A file holding the client secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// The scope asked for (e.g. `https://outlook.office365.com/.default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl RelayOAuthConfig {
    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        *self == RelayOAuthConfig::default()
    }

    /// Checks what serde cannot express; returns the offending key (within `[delivery.relay_oauth]`) and
    /// why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        match (&self.token_file, &self.token_url) {
            (Some(_), Some(_)) => return err("token_file", "token_file and token_url exclude each other"),
            (None, None) => return err("token_file", "set token_file, or token_url with client_id"),
            (Some(f), None) => {
                if f.as_os_str().is_empty() {
                    return err("token_file", "must not be empty");
                }
                for (k, set) in [
                    ("client_id", self.client_id.is_some()),
                    ("client_secret_file", self.client_secret_file.is_some()),
                    ("scope", self.scope.is_some()),
                ] {
                    if set {
                        return err(k, "only used with token_url");
                    }
                }
            }
            (None, Some(url)) => {
                if !token_url_allowed(url) {
                    return err(
                        "token_url",
                        "must be an https:// URL (http:// only to a loopback address)",
                    );
                }
                if self.client_id.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    return err("client_id", "needed with token_url");
                }
                if self.client_secret_file.is_none() {
                    return err("client_secret_file", "needed with token_url");
                }
            }
        }
        Ok(())
    }
}

impl DeliveryConfig {
    /// The AUTH mechanism towards `relay_host`, if any: `relay_auth`, or `plain` when only the user name
    /// and password are set.
    pub fn relay_auth_mechanism(&self) -> Option<RelayAuth> {
        self.relay_auth
            .or_else(|| self.relay_username.as_ref().map(|_| RelayAuth::Plain))
    }

    /// Checks `relay_username`, `relay_password`, `relay_auth` and `[delivery.relay_oauth]` together.
    pub(super) fn validate_relay_auth(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        let xoauth2 = self.relay_auth == Some(RelayAuth::Xoauth2);
        if xoauth2 {
            if self.relay_username.is_none() {
                return err("relay_username", "relay_auth = \"xoauth2\" needs relay_username");
            }
            if self.relay_password.is_some() {
                return err(
                    "relay_password",
                    "not used with relay_auth = \"xoauth2\" (the token comes from [delivery.relay_oauth])",
                );
            }
            if self.relay_oauth.is_empty() {
                return err(
                    "relay_oauth",
                    "relay_auth = \"xoauth2\" needs [delivery.relay_oauth] with token_file or token_url",
                );
            }
            self.relay_oauth
                .validate()
                .map_err(|(k, m)| (format!("relay_oauth.{k}"), m))?;
        } else {
            if !self.relay_oauth.is_empty() {
                return err("relay_oauth", "only used with relay_auth = \"xoauth2\"");
            }
            if self.relay_username.is_some() != self.relay_password.is_some() {
                return err("relay_username", "relay_username and relay_password go together");
            }
            if self.relay_auth.is_some() && self.relay_username.is_none() {
                return err("relay_auth", "needs relay_username and relay_password");
            }
        }
        if self.relay_username.is_some() && self.relay_host.is_none() {
            return err("relay_username", "needs relay_host");
        }
        Ok(())
    }
}

/// `https://host...`, or `http://` to 127.0.0.0/8, `[::1]` or `localhost`.
fn token_url_allowed(url: &str) -> bool {
    if let Some(rest) = url.strip_prefix("https://") {
        return !rest.is_empty();
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    fn file() -> RelayOAuthConfig {
        RelayOAuthConfig {
            token_file: Some("/run/tern/token".into()),
            ..Default::default()
        }
    }

    fn grant(url: &str) -> RelayOAuthConfig {
        RelayOAuthConfig {
            token_url: Some(url.into()),
            client_id: Some("tern".into()),
            client_secret_file: Some("/run/tern/secret".into()),
            scope: Some("https://outlook.office365.com/.default".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_token_file_or_a_grant_is_valid() {
        assert_eq!(file().validate(), Ok(()));
        assert_eq!(grant("https://login.example/token").validate(), Ok(()));
        assert_eq!(grant("http://127.0.0.1:8080/token").validate(), Ok(()));
        assert_eq!(grant("http://[::1]:8080/token").validate(), Ok(()));
    }

    #[test]
    fn bad_sources_name_their_key() {
        let both = RelayOAuthConfig {
            token_file: Some("/t".into()),
            ..grant("https://x/t")
        };
        assert_eq!(both.validate().unwrap_err().0, "token_file");
        assert_eq!(
            RelayOAuthConfig::default().validate().unwrap_err().0,
            "token_file"
        );
        assert_eq!(
            grant("http://login.example/t").validate().unwrap_err().0,
            "token_url"
        );
        assert_eq!(grant("ftp://x").validate().unwrap_err().0, "token_url");
        let no_id = RelayOAuthConfig {
            client_id: None,
            ..grant("https://x/t")
        };
        assert_eq!(no_id.validate().unwrap_err().0, "client_id");
        let no_secret = RelayOAuthConfig {
            client_secret_file: None,
            ..grant("https://x/t")
        };
        assert_eq!(no_secret.validate().unwrap_err().0, "client_secret_file");
        let stray = RelayOAuthConfig {
            scope: Some("s".into()),
            ..file()
        };
        assert_eq!(stray.validate().unwrap_err().0, "scope");
    }

    #[test]
    fn relay_auth_defaults_to_plain_and_xoauth2_needs_a_user_and_a_token_source() {
        let relay = DeliveryConfig {
            relay_host: Some("[smtp.example]:587".into()),
            ..Default::default()
        };
        assert_eq!(relay.relay_auth_mechanism(), None);
        let plain = DeliveryConfig {
            relay_username: Some("u".into()),
            relay_password: Some("p".into()),
            ..relay.clone()
        };
        assert_eq!(plain.validate(), Ok(()));
        assert_eq!(plain.relay_auth_mechanism(), Some(RelayAuth::Plain));
        let c: DeliveryConfig = toml::from_str(
            r#"
            relay_host = "[smtp.office365.com]:587"
            relay_auth = "xoauth2"
            relay_username = "mailer@example.com"
            [relay_oauth]
            token_file = "/run/tern/token"
            "#,
        )
        .unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.relay_auth_mechanism(), Some(RelayAuth::Xoauth2));
        for (bad, key) in [
            (
                DeliveryConfig {
                    relay_username: None,
                    ..c.clone()
                },
                "relay_username",
            ),
            (
                DeliveryConfig {
                    relay_oauth: RelayOAuthConfig::default(),
                    ..c.clone()
                },
                "relay_oauth",
            ),
            (
                DeliveryConfig {
                    relay_password: Some("p".into()),
                    ..c.clone()
                },
                "relay_password",
            ),
            (
                DeliveryConfig {
                    relay_oauth: RelayOAuthConfig {
                        token_url: Some("http://login.example/t".into()),
                        client_id: Some("id".into()),
                        client_secret_file: Some("/s".into()),
                        ..Default::default()
                    },
                    ..c.clone()
                },
                "relay_oauth.token_url",
            ),
            (
                DeliveryConfig {
                    relay_auth: Some(RelayAuth::Login),
                    ..c.clone()
                },
                "relay_oauth",
            ),
            (
                DeliveryConfig {
                    relay_auth: Some(RelayAuth::Login),
                    ..relay.clone()
                },
                "relay_auth",
            ),
        ] {
            assert_eq!(bad.validate().unwrap_err().0, key);
        }
        #[derive(Serialize, Deserialize)]
        struct Wrap {
            delivery: DeliveryConfig,
        }
        let text = toml::to_string(&Wrap { delivery: c.clone() }).unwrap();
        assert!(text.contains("[delivery.relay_oauth]"), "{text}");
        assert_eq!(toml::from_str::<Wrap>(&text).unwrap().delivery, c, "{text}");
    }
}
