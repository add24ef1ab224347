#![allow(clippy::unwrap_used, clippy::expect_used)]
//! AUTH XOAUTH2 to the smart host (`delivery.relay_auth = "xoauth2"`) against Python peers on loopback
//! (`common/oauth_peers.py`): a relay over implicit TLS that checks the exact XOAUTH2 string and plays the
//! 334 JSON error challenge for a wrong token, and an OAuth 2.0 token endpoint that counts its requests.

mod common;

use std::path::Path;
use std::time::Duration;

use common::py_peer::PyPeer;
use common::*;
use tern_config::DeliveryConfig;
use tern_config::sections::RelayTls;
use tern_queue::EventKind;
use tern_testkit::{Dnsmasq, RedisServer, TestCa, free_port};

/// A relay peer at 127.0.0.`last` accepting `tokens`, and its DNS; the CA file goes in `dir`.
fn relay(dir: &Path, last: u8, port: u16, tokens: &[&str]) -> (PyPeer, Dnsmasq, std::path::PathBuf) {
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_to(dir).unwrap();
    let cert = ca.issue(&["relay.oauth.test"]).unwrap();
    let (c, k) = (dir.join("relay.crt"), dir.join("relay.key"));
    std::fs::write(&c, &cert.cert_pem).unwrap();
    std::fs::write(&k, &cert.key_pem).unwrap();
    let mut extra = vec![
        "--cert".to_string(),
        c.display().to_string(),
        "--key".into(),
        k.display().to_string(),
    ];
    for t in tokens {
        extra.push("--accept".into());
        extra.push(t.to_string());
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let peer = PyPeer::start(
        "oauth-relay",
        "oauth_peers.py",
        &["relay"],
        sa(last, port),
        &extra,
    );
    let dns = Dnsmasq::builder()
        .host("relay.oauth.test", ip(last))
        .start()
        .unwrap();
    (peer, dns, ca_file)
}

/// A worker configuration relaying through `relay.oauth.test` with XOAUTH2 as `mailer@a.test`, one
/// message per connection (so that each message authenticates).
fn xoauth2_config(dns: &Dnsmasq, port: u16, ca_file: &Path) -> DeliveryConfig {
    let mut cfg = config(dns, port);
    cfg.relay_host = Some(format!("[relay.oauth.test]:{port}"));
    cfg.relay_tls = RelayTls::Implicit;
    cfg.extra_ca_file = Some(ca_file.to_path_buf());
    cfg.relay_username = Some("mailer@a.test".into());
    cfg.relay_auth = Some(serde_json::from_value(serde_json::json!("xoauth2")).unwrap());
    cfg.messages_per_connection = 1;
    cfg
}

fn auth_payloads(peer: &PyPeer) -> Vec<String> {
    peer.log("auth.log")
        .iter()
        .map(|l| serde_json::from_str::<String>(l).unwrap())
        .collect()
}

/// The token comes from a file: the relay gets exactly `user=...^Aauth=Bearer <token>^A^A`, and once the
/// file is rewritten the next connection uses the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn xoauth2_with_a_token_file_reaches_the_relay_and_a_rewritten_file_is_picked_up() {
    let port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (peer, dns, ca_file) = relay(dir.path(), 150, port, &["ya29.first", "ya29.second-token"]);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "ya29.first\n").unwrap();
    let mut cfg = xoauth2_config(&dns, port, &ca_file);
    cfg.relay_oauth.token_file = Some(token_file.clone());
    assert_eq!(cfg.validate(), Ok(()));
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "xo-file", Duration::from_secs(30)).await;
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@b.test"]).await;
    wait_for("the first message at the relay", WAIT, || {
        peer.log("messages.log").len() == 1
    })
    .await;
    std::fs::write(&token_file, "ya29.second-token\n").unwrap();
    send(&q, "s@a.test", &["r@c.test"]).await;
    wait_for("the second message at the relay", WAIT, || {
        peer.log("messages.log").len() == 2
    })
    .await;
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
    assert_eq!(
        auth_payloads(&peer),
        vec![
            "user=mailer@a.test\u{1}auth=Bearer ya29.first\u{1}\u{1}".to_string(),
            "user=mailer@a.test\u{1}auth=Bearer ya29.second-token\u{1}\u{1}".to_string(),
        ]
    );
}

/// A token the relay refuses: its 334 JSON challenge gets the empty line, the 535 follows, and the mail
/// waits (deferred) rather than going out unauthenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_token_gets_the_empty_reply_and_the_mail_is_deferred() {
    let port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (peer, dns, ca_file) = relay(dir.path(), 151, port, &["ya29.good"]);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "ya29.expired").unwrap();
    let mut cfg = xoauth2_config(&dns, port, &ca_file);
    cfg.relay_oauth.token_file = Some(token_file);
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "xo-bad", Duration::from_secs(30)).await;
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@b.test"]).await;
    let deferred = wait_event(&q, EventKind::Deferred).await;
    w.stop().await;
    let commands = peer.log("commands.log");
    let auth = commands
        .iter()
        .position(|c| c.starts_with("AUTH XOAUTH2 "))
        .expect("AUTH");
    assert_eq!(commands[auth + 1], "<empty>", "{commands:?}");
    assert!(!commands.iter().any(|c| c.starts_with("MAIL")), "{commands:?}");
    assert!(peer.log("messages.log").is_empty());
    let text = format!("{deferred:?}");
    assert!(text.contains("535 5.7.8"), "{text}");
}

/// The client-credentials grant: one POST to the token endpoint (form-encoded, with the client id, its
/// secret and the scope) serves five deliveries over five connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_token_fetch_serves_many_deliveries_with_the_client_credentials_grant() {
    let port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (peer, dns, ca_file) = relay(dir.path(), 152, port, &["eyJ.granted"]);
    let token_port = free_port().unwrap();
    let endpoint = PyPeer::start(
        "token-endpoint",
        "oauth_peers.py",
        &["token"],
        sa(1, token_port),
        &[
            "--client-id",
            "tern-client",
            "--secret",
            "s3cr&t",
            "--token",
            "eyJ.granted",
        ],
    );
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "s3cr&t\n").unwrap();
    let mut cfg = xoauth2_config(&dns, port, &ca_file);
    cfg.relay_oauth.token_url = Some(format!("http://127.0.0.1:{token_port}/oauth2/token"));
    cfg.relay_oauth.client_id = Some("tern-client".into());
    cfg.relay_oauth.client_secret_file = Some(secret_file);
    cfg.relay_oauth.scope = Some("https://outlook.office365.com/.default".into());
    assert_eq!(cfg.validate(), Ok(()));
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "xo-grant", Duration::from_secs(30)).await;
    for i in 0..5 {
        send(&q, "s@a.test", &[&format!("r{i}@b.test")]).await;
    }
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    wait_for("five messages at the relay", WAIT, || {
        peer.log("messages.log").len() == 5
    })
    .await;
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
    let requests = endpoint.log("requests.log");
    assert_eq!(requests.len(), 1, "{requests:?}");
    let req: serde_json::Value = serde_json::from_str(&requests[0]).unwrap();
    assert_eq!(req["path"], "/oauth2/token");
    assert_eq!(req["type"], "application/x-www-form-urlencoded");
    let form = req["form"].as_str().unwrap();
    assert!(form.contains("grant_type=client_credentials"), "{form}");
    assert!(form.contains("client_secret=s3cr%26t"), "{form}");
    assert!(
        form.contains("scope=https%3A%2F%2Foutlook.office365.com%2F.default"),
        "{form}"
    );
    let payloads = auth_payloads(&peer);
    assert_eq!(payloads.len(), 5, "{payloads:?}");
    assert!(
        payloads
            .iter()
            .all(|p| p.ends_with("auth=Bearer eyJ.granted\u{1}\u{1}"))
    );
}

/// A token the relay refuses before it expires (revoked or rotated at the provider) is forgotten: the next
/// attempt fetches a new one instead of repeating the refused one until its expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_granted_token_the_relay_refuses_is_fetched_anew_for_the_next_attempt() {
    let port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (peer, dns, ca_file) = relay(dir.path(), 153, port, &["eyJ.rotated"]);
    let token_port = free_port().unwrap();
    let endpoint = PyPeer::start(
        "token-endpoint",
        "oauth_peers.py",
        &["token"],
        sa(1, token_port),
        &[
            "--client-id",
            "tern-client",
            "--secret",
            "s3cr3t",
            "--token",
            "eyJ.revoked",
            "--token",
            "eyJ.rotated",
        ],
    );
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "s3cr3t\n").unwrap();
    let mut cfg = xoauth2_config(&dns, port, &ca_file);
    cfg.relay_oauth.token_url = Some(format!("http://127.0.0.1:{token_port}/oauth2/token"));
    cfg.relay_oauth.client_id = Some("tern-client".into());
    cfg.relay_oauth.client_secret_file = Some(secret_file);
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "xo-rotated", Duration::from_secs(30)).await;
    send(&q, "s@a.test", &["r@b.test"]).await;
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    wait_event(&q, EventKind::Deferred).await;
    q.retry_now(&tern_queue::Target::Domain("b.test".into()))
        .await
        .unwrap();
    wait_for("the message at the relay", WAIT, || {
        peer.log("messages.log").len() == 1
    })
    .await;
    w.stop().await;
    assert_eq!(
        endpoint.log("requests.log").len(),
        2,
        "a second fetch after the refusal"
    );
    let payloads = auth_payloads(&peer);
    assert_eq!(payloads.len(), 2, "{payloads:?}");
    assert!(
        payloads[0].ends_with("auth=Bearer eyJ.revoked\u{1}\u{1}"),
        "{payloads:?}"
    );
    assert!(
        payloads[1].ends_with("auth=Bearer eyJ.rotated\u{1}\u{1}"),
        "{payloads:?}"
    );
}
