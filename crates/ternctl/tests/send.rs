//! `ternctl send` against a real ingest gRPC server in front of a real redis-server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::net::SocketAddr;
use std::process::Output;
mod common;

use common::{Server, redis_queue, stderr, stdout};
use tern_ingest::CancellationToken;
use tern_ingest::grpc::{GrpcServer, GrpcSettings};
use tern_queue::RedisQueueOptions;

async fn ingest(keys_file: Option<std::path::PathBuf>) -> Server {
    let (redis, queue) = redis_queue(RedisQueueOptions::default().shards).await;
    let settings = GrpcSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_keys_file: keys_file,
        ..GrpcSettings::default()
    };
    let server = GrpcServer::bind(&settings, queue.clone()).await.unwrap();
    let url = format!("http://{}", server.local_addr());
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    Server {
        redis,
        queue,
        url,
        stop,
    }
}

async fn ternctl(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ternctl"))
        .args(args)
        .env_remove("TERN_TOKEN")
        .env_remove("TERN_ADMIN_TOKEN")
        .env_remove("TERN_INGEST")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn send_composed_prints_the_message_id_and_queues_it_with_tags() {
    let ing = ingest(None).await;
    let dir = tempfile::tempdir().unwrap();
    let attachment = dir.path().join("report.csv");
    std::fs::write(&attachment, "a,b\n1,2\n").unwrap();
    let out = ternctl(&[
        "send",
        "--ingest",
        &ing.url,
        "--from",
        "app@sender.test",
        "--to",
        "one@a.test",
        "--to",
        "two@b.test",
        "--subject",
        "Receipt",
        "--text",
        "Thanks",
        "--attach",
        attachment.to_str().unwrap(),
        "--tag",
        "tenant=acme",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    assert_eq!(id.len(), 26, "{id}");
    let info = ing
        .queue
        .get_message(id.parse().unwrap())
        .await
        .unwrap()
        .expect("queued");
    assert_eq!(info.jobs.len(), 2, "one job per domain");
    assert_eq!(info.jobs[0].tags.get("tenant").map(String::as_str), Some("acme"));
}

#[tokio::test]
async fn send_with_json_prints_one_json_document() {
    let ing = ingest(None).await;
    let out = ternctl(&[
        "--json", "send", "--ingest", &ing.url, "--from", "a@s.test", "--to", "r@d.test", "--text", "hi",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(doc["message_id"].as_str().unwrap().len(), 26);
    assert_eq!(doc["accepted"], serde_json::json!(["r@d.test"]));
}

#[tokio::test]
async fn send_raw_file_takes_the_envelope_from_the_headers() {
    let ing = ingest(None).await;
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("m.eml");
    std::fs::write(
        &raw,
        "From: a@s.test\r\nTo: r@d.test\r\nSubject: raw\r\n\r\nbody\r\n",
    )
    .unwrap();
    let out = ternctl(&["send", "--ingest", &ing.url, "--raw-file", raw.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let info = ing
        .queue
        .get_message(stdout(&out).trim().parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.jobs[0].domain, "d.test");
}

#[tokio::test]
async fn invalid_address_exits_1_with_a_one_line_reason() {
    let ing = ingest(None).await;
    let out = ternctl(&[
        "send",
        "--ingest",
        &ing.url,
        "--from",
        "a@s.test",
        "--to",
        "not an address",
        "--text",
        "x",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("invalid") && err.contains("not an address"), "{err}");
}

#[tokio::test]
async fn unreachable_server_exits_1_promptly() {
    let port = tern_testkit::free_port().unwrap();
    let started = std::time::Instant::now();
    let url = format!("http://127.0.0.1:{port}");
    let out = ternctl(&[
        "send", "--ingest", &url, "--from", "a@s.test", "--to", "r@d.test", "--text", "x",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn wrong_key_exits_1_saying_the_key_was_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    // Some key's hash; "wrong-key" is not that key.
    std::fs::write(
        &keys,
        "app:7d1d8e1bc5d1c32b05ef1ff4bd2f6e0d2abb4e5e7d4e1e6fd61e4b1b48b9e2c4\n",
    )
    .unwrap();
    let ing = ingest(Some(keys)).await;
    let out = ternctl(&[
        "--token",
        "wrong-key",
        "send",
        "--ingest",
        &ing.url,
        "--from",
        "a@s.test",
        "--to",
        "r@d.test",
        "--text",
        "x",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("refused the key"), "{}", stderr(&out));
}

#[tokio::test]
async fn missing_content_is_a_usage_error() {
    let out = ternctl(&["send", "--from", "a@s.test", "--to", "r@d.test"]).await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn a_repeated_idempotency_key_is_said_to_be_a_duplicate() {
    let ing = ingest(None).await;
    // host:port works as well as a URL; --json and the key may follow `send`.
    let bare = ing.url.trim_start_matches("http://").to_string();
    let send = |json: bool| {
        let bare = bare.clone();
        async move {
            let mut args = vec![
                "send",
                "--ingest",
                &bare,
                "--from",
                "a@s.test",
                "--to",
                "r@d.test",
                "--text",
                "x",
                "--idempotency-key",
                "order-42",
            ];
            if json {
                args.push("--json");
            }
            ternctl(&args).await
        }
    };
    let first = send(false).await;
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(!stderr(&first).contains("duplicate"), "{}", stderr(&first));
    let again = send(false).await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again), stdout(&first), "the first message's id");
    assert!(stderr(&again).contains("duplicate"), "{}", stderr(&again));
    let doc: serde_json::Value = serde_json::from_str(stdout(&send(true).await).trim()).unwrap();
    assert_eq!(doc["duplicate"], true);
}

#[tokio::test]
async fn the_ingest_key_comes_from_token_or_tern_token_and_a_missing_one_says_so() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let digest = hex::encode(sha2::Sha256::digest(b"ingest-key"));
    std::fs::write(&keys, format!("app:{digest}\n")).unwrap();
    let ing = ingest(Some(keys)).await;
    let args = [
        "send", "--ingest", &ing.url, "--from", "a@s.test", "--to", "r@d.test", "--text", "x",
    ];
    let out = ternctl(&args).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("the ingest node needs an ingest API key: pass --token or set TERN_TOKEN"),
        "{err}"
    );
    let mut with_flag = args.to_vec();
    with_flag.extend(["--token", "ingest-key"]);
    let out = ternctl(&with_flag).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let run_with = |var: &'static str| {
        let args = args.map(str::to_string);
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_ternctl"))
                .args(args)
                .env_remove("TERN_TOKEN")
                .env_remove("TERN_ADMIN_TOKEN")
                .env(var, "ingest-key")
                .output()
                .await
                .unwrap()
        }
    };
    let out = run_with("TERN_TOKEN").await;
    assert!(out.status.success(), "{}", stderr(&out));
    // The admin key's variable is not send's.
    let out = run_with("TERN_ADMIN_TOKEN").await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}
