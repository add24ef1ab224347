//! `tern passwd`: hash a password for the SMTP users file.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{Context, bail};
use argon2::password_hash::PasswordHasher;

/// Reads one line from standard input and prints its argon2id PHC string (`$argon2id$v=19$...`).
///
/// The line's end (LF or CRLF) is not part of the password; every other byte is, spaces included, so that
/// what a user types is what is hashed.
pub fn run() -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password (echoed): ");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line
        .strip_suffix('\n')
        .map_or(line.as_str(), |l| l.strip_suffix('\r').unwrap_or(l));
    if password.is_empty() {
        bail!("empty password: give the password on standard input, e.g. `echo secret | tern passwd`");
    }
    println!("{}", hash(password)?);
    Ok(ExitCode::SUCCESS)
}

/// The argon2id hash of `password` with a fresh random salt, in PHC string form.
pub fn hash(password: &str) -> anyhow::Result<String> {
    let argon = argon2::Argon2::default();
    let hash = argon
        .hash_password(password.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot hash: {e}"))?;
    Ok(hash.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordVerifier, phc::PasswordHash};

    #[test]
    fn hash_is_argon2id_and_verifies() {
        let h = hash("secret").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(
            argon2::Argon2::default()
                .verify_password(b"secret", &parsed)
                .is_ok()
        );
        assert!(
            argon2::Argon2::default()
                .verify_password(b"wrong", &parsed)
                .is_err()
        );
    }

    #[test]
    fn each_hash_has_its_own_salt() {
        assert_ne!(hash("secret").unwrap(), hash("secret").unwrap());
    }
}
