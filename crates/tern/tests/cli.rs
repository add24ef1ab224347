//! The `tern` binary as an operator meets it: exit codes, output, and one-line errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn tern(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A developer's own TERN_* variables must not leak into what the test checks.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TERN_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("spawn tern");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn example() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/tern.toml").to_string()
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let out = tern(&["check-config", "--config", &example()], None, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for section in ["[queue]", "[ingest]", "[delivery]", "[control]", "[telemetry]"] {
        assert!(stdout.contains(section), "missing {section} in:\n{stdout}");
    }
    assert!(stdout.contains("log_level = \"info\""), "{stdout}");
    // What it prints is itself a valid configuration.
    let body: String = stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    tern_config::Config::from_toml_str(&body, "printed", Vec::new()).unwrap();
}

#[test]
fn check_config_applies_environment_overrides() {
    let out = tern(
        &["check-config", "--config", &example()],
        None,
        &[("TERN_TELEMETRY__LOG_FORMAT", "json")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("log_format = \"json\""));
}

#[test]
fn invalid_configuration_exits_1_with_a_one_line_reason_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[telemetry]\nlog_levle = \"debug\"\n").unwrap();
    let out = tern(&["check-config", "--config", path.to_str().unwrap()], None, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("telemetry.log_levle") && err.contains("bad.toml"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// `check-config` with `body` as the configuration file: its exit code and one-line stderr.
fn check(body: &str) -> (Option<i32>, String) {
    check_with(body, &[])
}

/// [`check`] with more arguments (`--role`).
fn check_with(body: &str, args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tern.toml");
    std::fs::write(&path, body).unwrap();
    let mut all = vec!["check-config", "--config", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = tern(&all, None, &[]);
    let err = text(&out.stderr);
    assert!(err.trim_end().lines().count() <= 1, "one line at most: {err}");
    (out.status.code(), err)
}

#[test]
fn check_config_refuses_what_startup_refuses_without_binding_or_connecting() {
    let cases = [
        (
            "[ingest]\ngrpc_listen = \"0.0.0.0:7071\"\n",
            "ingest.api_keys_file",
        ),
        (
            "[ingest]\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n",
            "/nonexistent/cert.pem",
        ),
        (
            "[ingest]\nusers_file = \"/nonexistent/users\"\n",
            "/nonexistent/users",
        ),
        (
            "[ingest]\napi_keys_file = \"/nonexistent/keys\"\n",
            "/nonexistent/keys",
        ),
        (
            "[control]\ngrpc_listen = \"0.0.0.0:7070\"\n",
            "control.api_keys_file",
        ),
        (
            "[control]\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n",
            "/nonexistent/c.pem",
        ),
        (
            "[delivery]\nextra_ca_file = \"/nonexistent/ca.pem\"\n",
            "/nonexistent/ca.pem",
        ),
        ("[queue]\nurl = \"http://not-redis\"\n", "queue.url"),
    ];
    for (body, named) in cases {
        let (code, err) = check(body);
        assert_eq!(code, Some(1), "{body}: {err}");
        assert!(
            err.contains(named),
            "{body}: the reason should name {named}: {err}"
        );
    }
    // A loopback listener needs no keys, and nothing is contacted: the default queue URL may be unreachable.
    let (code, err) = check("[queue]\nurl = \"redis://127.0.0.1:1\"\n");
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn check_config_checks_only_the_roles_named_with_role() {
    // A worker-only host of a Redis cluster: it has no ingest users file, which only `tern ingest` reads.
    let body = "[queue]\nurl = \"redis://127.0.0.1:1\"\n[ingest]\nusers_file = \"/nonexistent/users\"\n";
    for args in [
        &["--role", "worker"][..],
        &["--role", "worker,control"],
        &["--role", "worker", "--role", "control"],
    ] {
        let (code, err) = check_with(body, args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
    }
    for args in [
        &[][..],
        &["--role", "all"],
        &["--role", "ingest"],
        &["--role", "worker,all"],
    ] {
        let (code, err) = check_with(body, args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains("/nonexistent/users"), "{args:?}: {err}");
    }
    // What every role needs is checked whatever the roles.
    let (code, err) = check_with("[queue]\nurl = \"http://not-redis\"\n", &["--role", "worker"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("queue.url"), "{err}");
    let out = tern(&["check-config", "--role", "gateway"], None, &[]);
    assert_eq!(out.status.code(), Some(2), "an unknown role is a usage error");
    assert!(text(&out.stderr).contains("gateway"), "{}", text(&out.stderr));
}

#[test]
fn check_config_refuses_a_log_filter_that_startup_refuses() {
    // The configuration's check parses the filter as startup does: a field value that is no regular
    // expression (`[`) is refused too.
    for args in [&[][..], &["--role", "worker"]] {
        let (code, err) = check_with("[telemetry]\nlog_level = \"tern_ingest[{peer=[}]\"\n", args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains("telemetry.log_level"), "{args:?}: {err}");
    }
    let (code, err) = check("[telemetry]\nlog_level = \"info,tern_queue=debug\"\n");
    assert_eq!(code, Some(0), "{err}");
    // A bare target is RUST_LOG syntax too (that target at every level).
    let (code, err) = check("[telemetry]\nlog_level = \"warn,tern_ingest\"\n");
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_bare_address_in_relay_networks_is_answered_with_its_cidr_form() {
    let (code, err) = check("[ingest]\nrelay_networks = [\"127.0.0.1\"]\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("\"127.0.0.1/32\""), "{err}");
}

/// `tern control` started with its gRPC port already taken, so that it stops at once: its output.
fn control_on_a_taken_port() -> Output {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tern.toml");
    std::fs::write(
        &path,
        format!("[queue]\nurl = \"redis://127.0.0.1:1\"\n[control]\ngrpc_listen = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["control", "--config", path.to_str().unwrap()]);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TERN_")) {
        cmd.env_remove(k);
    }
    cmd.env("TERN_TELEMETRY__METRICS_LISTEN", "127.0.0.1:0");
    cmd.env_remove("TOKIO_WORKER_THREADS");
    tern_testkit::run_with_timeout("tern-control", cmd, std::time::Duration::from_secs(30)).unwrap()
}

#[test]
fn a_port_in_use_is_reported_with_the_os_error_once() {
    let out = control_on_a_taken_port();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let last = err.trim_end().lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("tern: error:"), "{err}");
    assert_eq!(last.matches("os error 98").count(), 1, "{last}");
}

#[test]
fn a_bad_runtime_thread_count_is_a_one_line_error_not_a_panic() {
    // tokio itself panics on these; tern must answer before it builds the runtime.
    for (bad, command) in [("0", "control"), ("two", "control"), ("0", "check-config")] {
        let out = tern(
            &[command, "--config", &example()],
            None,
            &[("TOKIO_WORKER_THREADS", bad)],
        );
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!(
                "TOKIO_WORKER_THREADS must be a whole number of at least 1, not \"{bad}\""
            )),
            "{err}"
        );
    }
}

#[test]
fn missing_config_file_exits_1() {
    let out = tern(&["check-config", "--config", "/nonexistent/tern.toml"], None, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/tern.toml"));
}

#[test]
fn passwd_prints_an_argon2id_hash_of_stdin() {
    let out = tern(&["passwd"], Some("secret\n"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hash = text(&out.stdout).trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    use argon2::password_hash::{PasswordVerifier, phc::PasswordHash};
    let parsed = PasswordHash::new(&hash).unwrap();
    assert!(
        argon2::Argon2::default()
            .verify_password(b"secret", &parsed)
            .is_ok(),
        "newline must not be hashed"
    );
}

#[test]
fn passwd_with_empty_input_exits_1() {
    let out = tern(&["passwd"], Some(""), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("empty password"));
}

#[test]
fn version_prints_the_package_version() {
    let out = tern(&["version"], None, &[]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("tern {}", env!("CARGO_PKG_VERSION"))
    );
}

/// The allocator the tern binary under test was built with (the tests are built with the same features).
fn built_allocator() -> &'static str {
    if cfg!(feature = "jemalloc") {
        "jemalloc"
    } else {
        "system"
    }
}

#[test]
fn version_verbose_names_the_allocator_the_binary_was_built_with() {
    let out = tern(&["version", "--verbose"], None, &[]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!(
            "tern {}\nallocator: {}",
            env!("CARGO_PKG_VERSION"),
            built_allocator()
        )
    );
}

#[test]
fn a_role_logs_its_version_allocator_threads_and_roles_when_it_starts() {
    let out = control_on_a_taken_port();
    let err = text(&out.stderr);
    // One role: one runtime thread, whatever the machine (runtime_threads.rs checks the rest).
    let expected = format!(
        "starting version={} allocator={} threads=1 roles=control",
        env!("CARGO_PKG_VERSION"),
        built_allocator()
    );
    assert!(err.contains(&expected), "{err}");
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let out = tern(&["frobnicate"], None, &[]);
    assert_eq!(out.status.code(), Some(2));
}
