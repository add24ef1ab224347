//! `ternctl`'s flags, usage errors and completions: fixed now so that scripts can rely on them. None of
//! these needs a server: a usage error is found before connecting.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::process::{Command, Output};

fn ternctl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ternctl"));
    cmd.args(args)
        .env_remove("TERN_SERVER")
        .env_remove("TERN_TOKEN")
        .env_remove("TERN_ADMIN_TOKEN")
        .env_remove("TERN_INGEST")
        .env_remove("COMPLETE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ternctl(args: &[&str]) -> Output {
    ternctl_env(args, &[])
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 2, nothing on stdout, the reason and the usage on stderr; returns stderr.
fn usage_error(args: &[&str]) -> String {
    let o = ternctl(args);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{args:?}: stdout {} stderr {}",
        out(&o),
        err(&o)
    );
    assert!(out(&o).is_empty(), "{args:?}: {}", out(&o));
    err(&o)
}

#[test]
fn without_a_command_it_is_a_usage_error_with_a_short_usage() {
    let e = usage_error(&[]);
    assert!(
        e.contains("no command given") && e.contains("Usage: ternctl"),
        "{e}"
    );
    assert!(e.lines().count() < 8, "short, not the whole help: {e}");
    let e = usage_error(&["--json"]);
    assert!(e.contains("Usage: ternctl"), "{e}");
}

#[test]
fn help_lists_the_flags_and_their_variables() {
    let o = ternctl(&["--help"]);
    assert!(o.status.success());
    let help = out(&o);
    for flag in [
        "--server",
        "--token",
        "--json",
        "TERN_SERVER",
        "TERN_ADMIN_TOKEN",
        "TERN_TOKEN",
        "127.0.0.1:7070",
    ] {
        assert!(help.contains(flag), "missing {flag} in:\n{help}");
    }
    let o = ternctl(&["queue", "status", "--help"]);
    let help = out(&o);
    for flag in ["--server", "--token", "--json", "TERN_SERVER", "TERN_ADMIN_TOKEN"] {
        assert!(help.contains(flag), "missing {flag} in:\n{help}");
    }
}

#[test]
fn send_help_lists_its_own_server_and_key_only() {
    let o = ternctl(&["send", "--help"]);
    assert!(o.status.success());
    let help = out(&o);
    for flag in ["--ingest", "TERN_INGEST", "--token", "TERN_TOKEN", "--json"] {
        assert!(help.contains(flag), "missing {flag} in:\n{help}");
    }
    assert!(
        !help.contains("--server") && !help.contains("TERN_ADMIN_TOKEN"),
        "{help}"
    );
    // send does not take --server, after its name or before.
    let e = usage_error(&[
        "send",
        "--server",
        "127.0.0.1:1",
        "--from",
        "a@b.example",
        "--to",
        "c@d.example",
        "--text",
        "x",
    ]);
    assert!(e.contains("--server"), "{e}");
    let e = usage_error(&[
        "--server",
        "127.0.0.1:1",
        "send",
        "--from",
        "a@b.example",
        "--to",
        "c@d.example",
        "--text",
        "x",
    ]);
    assert!(e.contains("--ingest") && e.contains("TERN_INGEST"), "{e}");
}

#[test]
fn unknown_flag_is_a_usage_error_with_exit_2() {
    let e = usage_error(&["--bogus"]);
    assert!(e.contains("--bogus"), "{e}");
}

#[test]
fn bad_values_are_usage_errors_that_name_the_flag() {
    for (args, flag) in [
        (
            &["queue", "delete", "--older-than", "1x", "--yes"][..],
            "--older-than",
        ),
        (&["queue", "list", "--older-than", "soon"], "--older-than"),
        (&["queue", "list", "--state", "bogus"], "--state"),
        (&["queue", "hold", "--state", "bogus"], "--state"),
        (&["queue", "retry", "--tag", "=v"], "--tag"),
        (&["queue", "list", "--tag", ""], "--tag"),
        (&["queue", "shape", "--by", "rcpt"], "--by"),
        (&["msg", "find", "--since", "lately"], "--since"),
        (&["msg", "find", "--limit", "0"], "--limit"),
        (&["msg", "find", "--tag", "=x"], "--tag"),
        (&["domain", "suspend", "a.example", "--for", "a while"], "--for"),
        (
            &["domain", "route", "a.example", "relay.example:0"],
            "HOST[:PORT]",
        ),
        (
            &["domain", "route", "a.example", "relay.example", "--for", "2x"],
            "--for",
        ),
        (&["events", "--type", "bogus"], "--type"),
        (&["events", "--tag", "=x"], "--tag"),
        (&["--server", "ftp://x", "queue", "status"], "--server"),
        (&["queue", "status", "--server", ""], "--server"),
        (
            &[
                "send",
                "--ingest",
                "ftp://x",
                "--from",
                "a@b.example",
                "--to",
                "c@d.example",
                "--text",
                "x",
            ],
            "--ingest",
        ),
        (
            &[
                "send",
                "--tag",
                "novalue",
                "--from",
                "a@b.example",
                "--to",
                "c@d.example",
                "--text",
                "x",
            ],
            "--tag",
        ),
    ] {
        let e = usage_error(args);
        assert!(e.contains(flag), "{args:?}: {e}");
    }
}

#[test]
fn missing_arguments_are_usage_errors() {
    // A bulk action needs a filter: the whole queue is never a target.
    let e = usage_error(&["queue", "delete", "--yes"]);
    assert!(e.contains("--domain") && e.contains("--older-than"), "{e}");
    usage_error(&["queue", "bounce", "--dry-run"]);
    usage_error(&["msg", "hold"]);
    usage_error(&["msg", "release"]);
    usage_error(&["domain", "route", "a.example"]);
    usage_error(&["domain", "unroute"]);
    // --reason is bounce's only.
    usage_error(&["queue", "delete", "--domain", "a.example", "--reason", "x"]);
    usage_error(&["msg", "retry", "01KB0000000000000000000000", "--reason", "x"]);
}

#[test]
fn a_bad_server_variable_is_a_usage_error() {
    let o = ternctl_env(&["queue", "status"], &[("TERN_SERVER", "ftp://x")]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("TERN_SERVER"), "{}", err(&o));
}

#[test]
fn the_connection_flags_go_before_or_after_the_command() {
    // Nobody listens on port 1: each fails to connect (exit 1), past the parsing.
    for args in [
        &[
            "--server",
            "127.0.0.1:1",
            "--token",
            "k",
            "--json",
            "queue",
            "status",
        ][..],
        &[
            "queue",
            "status",
            "--server",
            "127.0.0.1:1",
            "--token",
            "k",
            "--json",
        ],
        &["queue", "--server", "127.0.0.1:1", "list", "--state", "held"],
        &[
            "msg",
            "show",
            "01KB0000000000000000000000",
            "--server",
            "http://127.0.0.1:1",
        ],
        &["events", "--server", "[::1]:1"],
        &["trace", "--server", "127.0.0.1:1", "--domain", "a.example"],
    ] {
        let o = ternctl(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", err(&o));
        assert!(err(&o).contains("cannot reach http://"), "{args:?}: {}", err(&o));
    }
    let o = ternctl_env(&["queue", "status"], &[("TERN_SERVER", "127.0.0.1:1")]);
    assert!(err(&o).contains("cannot reach http://127.0.0.1:1"), "{}", err(&o));
}

/// What the completion engine offers for `words`, the last one being completed.
fn complete(words: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let index = (words.len() - 1).to_string();
    let mut all = vec![
        ("COMPLETE", "bash"),
        ("_CLAP_COMPLETE_INDEX", index.as_str()),
        ("_CLAP_IFS", "\n"),
    ];
    all.extend_from_slice(env);
    let mut args = vec!["--"];
    args.extend_from_slice(words);
    let o = ternctl_env(&args, &all);
    assert!(o.status.success(), "{}", err(&o));
    out(&o).lines().map(str::to_string).collect()
}

#[test]
fn completions_offer_states_and_event_kinds_not_file_names() {
    let states = complete(&["ternctl", "queue", "list", "--state", ""], &[]);
    assert_eq!(states, ["queued", "deferred", "inflight", "held", "suspended"]);
    let states = complete(&["ternctl", "queue", "hold", "--state", "s"], &[]);
    assert_eq!(states, ["suspended"]);
    let kinds = complete(&["ternctl", "events", "--type", "de"], &[]);
    assert_eq!(kinds, ["delivered", "deferred", "deleted"]);
    let by = complete(&["ternctl", "queue", "shape", "--by", ""], &[]);
    assert_eq!(by, ["domain", "sender"]);
    let sts = complete(&["ternctl", "sts", ""], &[]);
    for want in ["show", "refresh", "list", "evict", "report", "send-reports"] {
        assert!(sts.iter().any(|s| s == want), "{want} missing in {sts:?}");
    }
    let queue = complete(&["ternctl", "queue", "re"], &[]);
    assert_eq!(queue, ["release", "retry"]);
    // No control plane: no domains, and no hang.
    let started = std::time::Instant::now();
    let domains = complete(
        &["ternctl", "domain", "resume", "x"],
        &[("TERN_SERVER", "127.0.0.1:1")],
    );
    assert!(domains.is_empty(), "{domains:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// A key may start with `-` (`tern apikey` writes base64url, whose alphabet has it): `--token -Tx` is the
/// key, not an unknown flag (a usage error, exit 2); here the server cannot be reached (exit 1).
#[test]
fn a_key_that_starts_with_a_hyphen_is_taken_as_the_key() {
    let port = tern_testkit::ports::free_port().unwrap();
    for args in [
        vec!["--token", "-Tx", "queue", "status", "--server"],
        vec!["queue", "status", "--token", "-Tx", "--server"],
    ] {
        let server = format!("127.0.0.1:{port}");
        let mut args = args.clone();
        args.push(&server);
        let o = ternctl(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", err(&o));
    }
}
