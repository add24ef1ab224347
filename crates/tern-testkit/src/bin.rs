//! Locating the workspace's own binaries (`tern`, `ternctl`) for end-to-end tests.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// The path of the workspace binary `name` in the same target profile directory as the running test.
///
/// Integration tests run from `target/<profile>/deps/`, so this looks at `target/<profile>/<name>`.
/// `env!("CARGO_BIN_EXE_<name>")` only exists in the binary's own package, hence this helper.
///
/// Cargo builds a binary before a test only when the test belongs to the binary's own package, or when that
/// package is built in the same invocation (`cargo test --workspace`). A dependency on a binary-only package is
/// ignored by Cargo, so it does not help. The error says how to build the binary when it is missing.
pub fn cargo_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the running test executable")?;
    let mut dir = exe
        .parent()
        .context("the test executable has no parent directory")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps" || n == "examples") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "binary {name:?} not found at {}: build it first (`cargo build --bin {name}`, same profile), or run \
             the tests with `cargo test --workspace`",
            path.display()
        );
    }
    Ok(path)
}
