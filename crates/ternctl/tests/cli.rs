//! `ternctl`'s global flags, fixed now so that scripts can rely on them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::process::Command;

fn ternctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ternctl"))
        .args(args)
        .env_remove("TERN_SERVER")
        .output()
        .unwrap()
}

#[test]
fn without_a_command_it_prints_help_with_the_global_flags() {
    let out = ternctl(&[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--server",
        "--token",
        "--json",
        "TERN_SERVER",
        "TERN_TOKEN",
        "http://127.0.0.1:7070",
    ] {
        assert!(help.contains(flag), "missing {flag} in:\n{help}");
    }
}

#[test]
fn global_flags_are_accepted() {
    let out = ternctl(&["--server", "http://127.0.0.1:1", "--token", "k", "--json"]);
    assert!(out.status.success());
}

#[test]
fn unknown_flag_is_a_usage_error_with_exit_2() {
    let out = ternctl(&["--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}
