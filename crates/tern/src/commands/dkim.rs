//! `tern dkim keygen --domain D --selector S [--algorithm rsa|ed25519] [--bits N] [--out FILE] [--force]`:
//! make a DKIM signing key.
//!
//! The private key goes to FILE (PKCS#8 PEM, mode 0600; an existing file is kept unless `--force`).
//! Standard output gets the zone file line that publishes the public key, then a blank line, then the
//! `[[dkim]]` entry to add to the configuration:
//!
//! ```text
//! S._domainkey.D. IN TXT "v=DKIM1; k=rsa; p=MIIBIjAN..." "...rest of the key"
//!
//! [[dkim]]
//! domain = "D"
//! selector = "S"
//! key_file = "/absolute/path/to/FILE"
//! algorithm = "rsa-sha256"
//! ```
//!
//! An RSA record is longer than the 255 octets one TXT string holds, so it is split into several strings,
//! which resolvers join. Instructions go to standard error. Bad arguments exit 2, as clap's own usage
//! errors do.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use tern_config::sections::dkim::{check_domain, check_selector};
use tern_dkim::keygen::GeneratedKey;

use crate::cli::{DkimCommand, DkimKeyAlgorithm};

/// The exit code of a usage error (clap's).
const USAGE: u8 = 2;

/// The RSA key size when `--bits` is not given.
const DEFAULT_RSA_BITS: usize = 2048;

/// Runs a `tern dkim` subcommand.
pub fn run(command: DkimCommand) -> anyhow::Result<ExitCode> {
    match command {
        DkimCommand::Keygen {
            domain,
            selector,
            algorithm,
            bits,
            out,
            force,
        } => keygen(&domain, &selector, algorithm, bits, out, force),
    }
}

fn keygen(
    domain: &str,
    selector: &str,
    algorithm: DkimKeyAlgorithm,
    bits: Option<usize>,
    out: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if let Err(why) = check_domain(&domain) {
        return usage(&format!("--domain: {why}"));
    }
    if let Err(why) = check_selector(selector) {
        return usage(&format!("--selector: {why}"));
    }
    let bits = match (algorithm, bits) {
        (DkimKeyAlgorithm::Ed25519, Some(_)) => {
            return usage("--bits is for RSA keys; Ed25519 keys have no size");
        }
        (DkimKeyAlgorithm::Rsa, Some(b))
            if !(tern_dkim::RSA_MIN_BITS..=tern_dkim::RSA_MAX_BITS).contains(&b) =>
        {
            return usage(&format!(
                "--bits {b}: RSA DKIM keys have {} to {} bits",
                tern_dkim::RSA_MIN_BITS,
                tern_dkim::RSA_MAX_BITS
            ));
        }
        (_, b) => b.unwrap_or(DEFAULT_RSA_BITS),
    };
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{selector}._domainkey.{domain}.pem")));
    // Refuse before spending seconds on an RSA key.
    if !force && out.symlink_metadata().is_ok() {
        bail!("{} exists; give --force to overwrite it", out.display());
    }

    let key = match algorithm {
        DkimKeyAlgorithm::Rsa => GeneratedKey::rsa(bits)?,
        DkimKeyAlgorithm::Ed25519 => GeneratedKey::ed25519()?,
    };
    write_private_key(&out, &key.private_key_pem, force)?;
    let key_file = std::path::absolute(&out).unwrap_or(out);

    eprintln!(
        "Wrote the private key to {} (mode 0600). Publish the TXT record below at \
         {selector}._domainkey.{domain}, then add the [[dkim]] lines to the configuration.",
        key_file.display()
    );
    println!("{}", key.dns_record(&domain, selector));
    println!();
    println!("[[dkim]]");
    println!("domain = {}", toml_string(&domain));
    println!("selector = {}", toml_string(selector));
    println!("key_file = {}", toml_string(&key_file.to_string_lossy()));
    println!("algorithm = {}", toml_string(key.algorithm.as_str()));
    Ok(ExitCode::SUCCESS)
}

/// Prints a usage error the way `main` prints errors, and gives clap's usage exit code.
fn usage(message: &str) -> anyhow::Result<ExitCode> {
    eprintln!("tern: error: {message}");
    Ok(ExitCode::from(USAGE))
}

/// Writes `pem` to `path`, readable by its owner only. Without `force` the file must not exist (not even as
/// a symbolic link); with it, an existing file is truncated and its mode set to 0600 before the key is
/// written, so the key is never readable by others.
fn write_private_key(path: &Path, pem: &str, force: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!("{} exists; give --force to overwrite it", path.display())
        } else {
            anyhow::Error::new(e).context(format!("cannot create {}", path.display()))
        }
    })?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private (mode 0600)", path.display()))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(toml_string("a.b"), "\"a.b\"");
        assert_eq!(toml_string("C:\\k \"x\"\n"), "\"C:\\\\k \\\"x\\\"\\u000A\"");
    }
}
