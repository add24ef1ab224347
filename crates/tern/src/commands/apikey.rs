//! `tern apikey NAME`: make a key for the gRPC Send API.
//!
//! The key is 32 random bytes from the operating system, written as unpadded base64url (43 characters of
//! `A-Z a-z 0-9 - _`). Standard output gets exactly two lines:
//!
//! ```text
//! <the key>
//! NAME:<lowercase hex SHA-256 of the key text>
//! ```
//!
//! The key is printed this once and stored nowhere: the operator hands it to the application, which sends
//! it as the metadata `authorization: Bearer <key>`. The second line goes into the API keys file
//! (`ingest.api_keys_file`); with `--domains` it ends in `:domain,domain`, the only sender domains the key
//! may use. What is hashed is the key text exactly as sent (the 43 characters), not the bytes it encodes.
//! Instructions go to standard error, so `tern apikey billing | { read key; read line; }` works.

use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine;
use rand::TryRng;
use tern_server::auth::key_line;

/// Prints a new key for `name` and its keys-file line.
pub fn run(name: &str, domains: &[String]) -> anyhow::Result<ExitCode> {
    check_name(name)?;
    let domains = check_domains(domains)?;
    let key = new_key()?;
    let mut line = key_line(name, &key);
    if !domains.is_empty() {
        line.push(':');
        line.push_str(&domains.join(","));
    }
    eprintln!(
        "API key {name:?}: shown only now, store it safely. Clients send `authorization: Bearer <key>`.\n\
         Add the second line to the API keys file (ingest.api_keys_file)."
    );
    println!("{key}");
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

/// 32 bytes from the operating system's generator, as unpadded base64url.
fn new_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .context("cannot read random bytes from the operating system")?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Key names are letters, digits, `.`, `_` and `-` (they sit before a `:` in the keys file and appear in
/// logs).
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        bail!("invalid key name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-'");
    }
    Ok(())
}

/// Lower-cases the domains and checks that each is a plausible domain name.
fn check_domains(domains: &[String]) -> anyhow::Result<Vec<String>> {
    domains
        .iter()
        .flat_map(|d| d.split(','))
        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .map(|d| {
            let ok = d.len() <= 253
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if ok {
                Ok(d)
            } else {
                bail!("invalid sender domain {d:?}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_43_base64url_characters_and_distinct() {
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{a}"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn names_and_domains_are_checked() {
        assert!(check_name("billing-prod_1.a").is_ok());
        for bad in ["", "a:b", "a b", "ä"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_domains(&["Example.COM.,b.test".into(), "c.test".into()]).unwrap(),
            ["example.com", "b.test", "c.test"]
        );
        assert!(check_domains(&["bad domain".into()]).is_err());
        assert!(check_domains(&["a:b".into()]).is_err());
    }
}
