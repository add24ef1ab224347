//! Printing a configuration without its secrets.
//!
//! A key is secret when its name ends in `password`, `secret` or `token`; its value prints as `"<redacted>"`.
//! A URL with a password in it (`redis://user:pass@host`) keeps everything but the password. Paths to files
//! holding secrets (`tls_key`, `users_file`) are not secret themselves and print as they are.

use serde::Serialize;

/// What a redacted value prints as.
pub const REDACTED: &str = "<redacted>";

const SECRET_SUFFIXES: [&str; 3] = ["password", "secret", "token"];

/// `value` serialised as a TOML document, with secrets redacted.
pub fn to_redacted_toml<T: Serialize>(value: &T) -> Result<String, toml::ser::Error> {
    let mut v = toml::Value::try_from(value)?;
    redact_value(None, &mut v);
    toml::to_string_pretty(&v)
}

fn redact_value(key: Option<&str>, v: &mut toml::Value) {
    if key.is_some_and(|k| SECRET_SUFFIXES.iter().any(|s| k.ends_with(s))) {
        *v = toml::Value::String(REDACTED.into());
        return;
    }
    match v {
        toml::Value::Table(t) => t.iter_mut().for_each(|(k, v)| redact_value(Some(k), v)),
        toml::Value::Array(a) => a.iter_mut().for_each(|v| redact_value(None, v)),
        toml::Value::String(s) => *s = redact_url_passwords(s),
        _ => {}
    }
}

/// Replaces the password of every `scheme://user:password@host` URL in `s` (comma lists included).
pub fn redact_url_passwords(s: &str) -> String {
    s.split(',').map(redact_one_url).collect::<Vec<_>>().join(",")
}

fn redact_one_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_string();
    };
    format!(
        "{}{}:{REDACTED}{}",
        &url[..scheme_end + 3],
        &userinfo[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact_url_passwords("redis://u:p@h:6379/0"),
            "redis://u:<redacted>@h:6379/0"
        );
        assert_eq!(redact_url_passwords("rediss://:p@h"), "rediss://:<redacted>@h");
        assert_eq!(redact_url_passwords("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url_passwords("redis://u@h"), "redis://u@h");
        assert_eq!(
            redact_url_passwords("redis://a:x@h1,redis://b:y@h2"),
            "redis://a:<redacted>@h1,redis://b:<redacted>@h2"
        );
        assert_eq!(redact_url_passwords("not a url"), "not a url");
    }

    #[test]
    fn secret_named_keys_are_redacted() {
        #[derive(Serialize)]
        struct S {
            relay_password: String,
            tls_key: String,
            nested: Vec<std::collections::BTreeMap<String, String>>,
        }
        let s = S {
            relay_password: "hunter2".into(),
            tls_key: "/etc/tern/key.pem".into(),
            nested: vec![[("api_token".to_string(), "t".to_string())].into_iter().collect()],
        };
        let out = to_redacted_toml(&s).unwrap();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("/etc/tern/key.pem"), "{out}");
        assert!(!out.contains("\"t\""), "{out}");
        assert_eq!(out.matches(REDACTED).count(), 2, "{out}");
    }
}
