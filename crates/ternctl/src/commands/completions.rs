//! `ternctl completions bash|zsh|fish|...`: a completion script on stdout.
//!
//! By default the script registers ternctl itself as the completer (clap_complete's `COMPLETE=<shell>`
//! engine), so that completions include the control plane's domains and message ids; `--static` prints a
//! script that knows the commands, flags and fixed values only.

use std::io::Write;

use clap::CommandFactory;
use clap_complete::env::{Bash, Elvish, EnvCompleter, Fish, Powershell, Zsh};

use crate::cli::Cli;

/// The variable the dynamic engine is driven by (`COMPLETE=bash ternctl` prints the same registration).
const VAR: &str = "COMPLETE";

/// Prints the completion script for `shell`.
pub fn run(shell: clap_complete::Shell, static_script: bool) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    // Generated into memory first: clap_complete panics on a write error (such as `| head`).
    let mut script = Vec::new();
    if static_script {
        clap_complete::generate(shell, &mut cmd, "ternctl", &mut script);
    } else {
        let completer: &dyn EnvCompleter = match shell {
            clap_complete::Shell::Bash => &Bash,
            clap_complete::Shell::Elvish => &Elvish,
            clap_complete::Shell::Fish => &Fish,
            clap_complete::Shell::PowerShell => &Powershell,
            clap_complete::Shell::Zsh => &Zsh,
            other => anyhow::bail!("no dynamic completions for {other}: use --static"),
        };
        // The script calls ternctl by name, so that it follows upgrades of the binary on the PATH.
        completer.write_registration(VAR, "ternctl", "ternctl", "ternctl", &mut script)?;
    }
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&script).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
