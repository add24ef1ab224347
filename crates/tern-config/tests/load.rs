//! Loading configuration from files and the environment, and the errors a bad one gets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::io::Write;

use tern_config::{Config, ConfigError, sections::LogFormat};

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn empty_file_gives_every_default() {
    let c = Config::from_toml_str("", "t.toml", no_env()).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.telemetry.log_level, "info");
}

#[test]
fn the_shipped_example_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/tern.toml");
    let c = Config::load_with_env(std::path::Path::new(path), no_env()).unwrap();
    c.validate().unwrap();
}

#[test]
fn unknown_key_names_the_key_and_the_file() {
    let err =
        Config::from_toml_str("[telemetry]\nlog_levle = \"info\"\n", "tern.toml", no_env()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, ConfigError::Key { key, .. } if key == "telemetry.log_levle"),
        "{msg}"
    );
    assert!(
        msg.contains("tern.toml") && msg.contains("telemetry.log_levle"),
        "{msg}"
    );
}

#[test]
fn unknown_section_names_the_section() {
    let err = Config::from_toml_str("[deliveyr]\n", "tern.toml", no_env()).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Key { key, .. } if key == "deliveyr"),
        "{err}"
    );
}

#[test]
fn bad_value_names_the_key() {
    let err = Config::from_toml_str("[telemetry]\nlog_format = \"xml\"\n", "a/b.toml", no_env()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("a/b.toml") && msg.contains("telemetry.log_format"),
        "{msg}"
    );
    let err = Config::from_toml_str(
        "[telemetry]\nlog_level = \"tern_queue=loud\"\n",
        "a/b.toml",
        no_env(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("telemetry.log_level"), "{err}");
}

#[test]
fn toml_syntax_error_names_the_file_and_line() {
    let err = Config::from_toml_str("[telemetry\n", "broken.toml", no_env()).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }));
    let msg = err.to_string();
    assert!(msg.contains("broken.toml") && msg.contains("line 1"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn environment_overrides_the_file() {
    let text = "[telemetry]\nlog_level = \"info\"\n";
    let c = Config::from_toml_str(
        text,
        "t.toml",
        env(&[
            ("TERN_TELEMETRY__LOG_LEVEL", "debug"),
            ("TERN_TELEMETRY__LOG_FORMAT", "json"),
        ]),
    )
    .unwrap();
    assert_eq!(c.telemetry.log_level, "debug");
    assert_eq!(c.telemetry.log_format, LogFormat::Json);
}

#[test]
fn environment_error_names_the_variable() {
    let err = Config::from_toml_str("", "t.toml", env(&[("TERN_TELEMETRY__LOG_FORMAT", "xml")])).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("TERN_TELEMETRY__LOG_FORMAT") && msg.contains("telemetry.log_format"),
        "{msg}"
    );
    let err = Config::from_toml_str("", "t.toml", env(&[("TERN_TELEMETRY__NOPE", "1")])).unwrap_err();
    assert!(err.to_string().contains("TERN_TELEMETRY__NOPE"), "{err}");
    let err = Config::from_toml_str("", "t.toml", env(&[("TERN___X", "1")])).unwrap_err();
    assert!(err.to_string().contains("TERN___X"), "{err}");
}

#[test]
fn variables_without_double_underscore_are_ignored() {
    let c = Config::from_toml_str(
        "",
        "t.toml",
        env(&[("TERN_SERVER", "http://x"), ("TERN_TOKEN", "t")]),
    )
    .unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let err = Config::load_with_env(std::path::Path::new("/nonexistent/tern.toml"), no_env()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/tern.toml"));
}

#[test]
fn file_on_disk_loads() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "[telemetry]\nlog_format = \"json\"").unwrap();
    let c = Config::load_with_env(f.path(), no_env()).unwrap();
    assert_eq!(c.telemetry.log_format, LogFormat::Json);
}

#[test]
fn queue_defaults_match_the_documentation() {
    let q = Config::default().queue;
    assert_eq!(q.url, "");
    assert_eq!(q.backend(), tern_config::QueueBackend::Embedded);
    assert!(!q.cluster);
    assert_eq!(q.shards, 16);
    assert_eq!(q.lease.to_string(), "5m");
    assert_eq!(q.key_prefix, "tern");
    assert_eq!(q.wait_replicas, 0);
}

#[test]
fn queue_values_out_of_range_name_the_key() {
    for (text, key) in [
        ("[queue]\nshards = 0\n", "queue.shards"),
        ("[queue]\nlease = \"0s\"\n", "queue.lease"),
        ("[queue]\nlease = \"soon\"\n", "queue.lease"),
        ("[queue]\nurl = \"http://x\"\n", "queue.url"),
        ("[queue]\nurl = \"redis://a:1,redis://b:2\"\n", "queue.url"),
        ("[queue]\nkey_prefix = \"{x}\"\n", "queue.key_prefix"),
    ] {
        let err = Config::from_toml_str(text, "q.toml", no_env()).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Key { key: k, .. } if k == key),
            "{text}: {err}"
        );
    }
    let ok = "[queue]\ncluster = true\nurl = \"redis://a:1,redis://b:2\"\n";
    assert!(Config::from_toml_str(ok, "q.toml", no_env()).is_ok());
}

#[test]
fn redis_url_from_the_environment_is_a_string_and_its_password_is_redacted() {
    let c = Config::from_toml_str(
        "",
        "t.toml",
        env(&[("TERN_QUEUE__URL", "redis://u:hunter2@127.0.0.1:7000/2")]),
    )
    .unwrap();
    assert_eq!(c.queue.url, "redis://u:hunter2@127.0.0.1:7000/2");
    let printed = tern_config::redact::to_redacted_toml(&c).unwrap();
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("redis://u:<redacted>@127.0.0.1:7000/2"),
        "{printed}"
    );
}

#[test]
fn ingest_keys_load_from_file_and_environment_and_are_validated() {
    let text = "[ingest]\nsmtp_listen = [\"0.0.0.0:587\"]\nrelay_networks = [\"10.0.0.0/8\"]\nidle_timeout = \"90s\"\n";
    let c = Config::from_toml_str(text, "t.toml", env(&[("TERN_INGEST__MAX_RECIPIENTS", "5")])).unwrap();
    assert_eq!(c.ingest.smtp_listen[0].to_string(), "0.0.0.0:587");
    assert_eq!(c.ingest.relay_networks[0].to_string(), "10.0.0.0/8");
    assert_eq!(c.ingest.idle_timeout.get(), std::time::Duration::from_secs(90));
    assert_eq!(c.ingest.max_recipients, 5);
    c.validate().unwrap();
    let err = Config::from_toml_str(
        "[ingest]\nsmtps_listen = [\"127.0.0.1:465\"]\n",
        "t.toml",
        no_env(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ConfigError::Key { key, .. } if key == "ingest.smtps_listen"),
        "{err}"
    );
    let err =
        Config::from_toml_str("[ingest]\nrelay_networks = [\"nope\"]\n", "t.toml", no_env()).unwrap_err();
    assert!(err.to_string().contains("ingest.relay_networks"), "{err}");
}
