//! Python peers: a virtual environment with the PyPI packages a test drives (grpcio, dkimpy, aiosmtpd, ...).
//!
//! Each set of packages gets its own environment under a directory the caller names (tests pass their
//! `CARGO_TARGET_TMPDIR`), made on first use and reused after, so only the first test run pays for `pip`.
//! `.ci/run` installs `python3` and `python3-venv`; PyPI must be reachable the first time. When the
//! environment cannot be made, the error says what is missing: a test that needs the peer fails, it never
//! passes without checking anything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// Serialises the making of environments within one test binary: two tests asking for the same packages
/// at once must not both run `pip` into one directory.
static MAKING: Mutex<()> = Mutex::new(());

/// The `python` of a virtual environment under `base_dir` holding `packages`, made if it is not there yet.
///
/// The environment's directory is named after the packages, so tests asking for the same set share one.
pub fn python_with_packages(base_dir: &Path, packages: &[&str]) -> Result<PathBuf> {
    let name = format!(
        "venv-{}",
        packages.join("-").replace(['=', '<', '>', '.', '[', ']'], "_")
    );
    let venv = base_dir.join(name);
    let python = venv.join("bin/python");
    let ready = venv.join(".installed");
    let _guard = MAKING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if ready.exists() {
        return Ok(python);
    }
    let python3 = crate::require_tool("python3")?;
    let made = Command::new(&python3)
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .output()
        .context("running python3 -m venv")?;
    if !made.status.success() {
        bail!(
            "python3 -m venv failed (install python3-venv: apt-get install python3-venv): {}",
            String::from_utf8_lossy(&made.stderr).trim()
        );
    }
    let pip = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(packages)
        .output()
        .context("running pip")?;
    if !pip.status.success() {
        bail!(
            "pip could not install {} (PyPI must be reachable): {}",
            packages.join(" "),
            String::from_utf8_lossy(&pip.stderr).trim()
        );
    }
    std::fs::write(&ready, "").context("marking the virtual environment ready")?;
    Ok(python)
}
