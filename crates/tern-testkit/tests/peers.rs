//! Proves each harness peer works for real: every test starts real programs on loopback, talks to them, and
//! relies on the guards to stop them.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use redis::AsyncCommands;
use tern_testkit::dns::{RecordData, TYPE_A, TYPE_MX, TYPE_TXT};
use tern_testkit::{
    Dnsmasq, RedisCluster, RedisServer, SmtpSink, TestCa, free_port, require_tool, run_smtp_source,
};

/// A raw SMTP client: one command, one (possibly multi-line) reply.
struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    fn connect(addr: SocketAddr) -> Result<(Self, String)> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let writer = stream.try_clone()?;
        let mut smtp = Self {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = smtp.reply()?;
        Ok((smtp, greeting))
    }

    /// Reads one reply; an empty string means the server closed the connection.
    fn reply(&mut self) -> Result<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Ok(all);
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(all);
            }
        }
    }

    fn cmd(&mut self, line: &str) -> Result<String> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }
}

fn expect_code(reply: &str, code: &str, what: &str) -> Result<()> {
    ensure!(reply.starts_with(code), "{what}: expected {code}, got {reply:?}");
    Ok(())
}

#[tokio::test]
async fn redis_answers_ping_through_the_redis_crate() -> Result<()> {
    let server = RedisServer::start()?;
    let client = redis::Client::open(server.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    assert_eq!(pong, "PONG");
    assert!(server.url().starts_with("redis://127.0.0.1:"));
    assert_eq!(server.cli(&["PING"])?, "PONG");
    Ok(())
}

#[tokio::test]
async fn redis_durable_keeps_acknowledged_writes_across_sigkill_and_restart() -> Result<()> {
    let mut server = RedisServer::start_durable()?;
    let port = server.port();
    {
        let client = redis::Client::open(server.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let () = conn.set("tern:test:durable", "survives").await?;
    }
    server.kill_hard()?;
    assert!(!server.is_running(), "redis-server still runs after SIGKILL");
    ensure!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still answers after SIGKILL"
    );

    server.restart()?;
    assert_eq!(server.port(), port, "restart must reuse the port");
    let client = redis::Client::open(server.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let value: Option<String> = conn.get("tern:test:durable").await?;
    assert_eq!(
        value.as_deref(),
        Some("survives"),
        "AOF not reloaded; log:\n{}",
        server.logs()
    );
    assert!(
        server.dir().join("appendonlydir").is_dir(),
        "no AOF directory in {}",
        server.dir().display()
    );
    Ok(())
}

#[tokio::test]
async fn redis_cluster_reaches_state_ok_and_serves_keys_on_every_slot_owner() -> Result<()> {
    let cluster = RedisCluster::start(3)?;
    assert_eq!(cluster.seed_urls().len(), 3);
    assert_eq!(cluster.urls_comma().split(',').count(), 3);
    for node in cluster.nodes() {
        let info = node.cli(&["cluster", "info"])?;
        assert!(info.contains("cluster_state:ok"), "node {}: {info}", node.port());
    }

    let client = redis::cluster::ClusterClient::new(cluster.seed_urls())?;
    let mut conn = client.get_async_connection().await?;
    // Keys in many slots, so more than one master is written to.
    for i in 0..20 {
        let () = conn.set(format!("tern:key:{i}"), i).await?;
    }
    for i in 0..20 {
        let v: i64 = conn.get(format!("tern:key:{i}")).await?;
        assert_eq!(v, i);
    }
    // redis-cli -c follows the MOVED redirections to read a key from whichever node owns it.
    assert_eq!(cluster.cli(&["get", "tern:key:7"])?, "7");
    let owners = cluster
        .nodes()
        .iter()
        .filter(|n| n.cli(&["dbsize"]).is_ok_and(|s| s != "0"))
        .count();
    assert!(owners >= 2, "20 keys landed on only {owners} master(s)");
    Ok(())
}

#[test]
fn smtp_sink_counts_and_dumps_one_message_sent_over_raw_smtp() -> Result<()> {
    let sink = SmtpSink::builder(Ipv4Addr::new(127, 0, 0, 22), free_port()?)
        .dump_to_tempdir()
        .start()?;
    assert_eq!(sink.message_count(), 0);
    let (mut smtp, greeting) = Smtp::connect(sink.addr())?;
    expect_code(&greeting, "220", "greeting")?;
    expect_code(&smtp.cmd("EHLO client.test")?, "250", "EHLO")?;
    expect_code(&smtp.cmd("MAIL FROM:<s@a.test>")?, "250", "MAIL")?;
    expect_code(&smtp.cmd("RCPT TO:<r@b.test>")?, "250", "RCPT")?;
    expect_code(&smtp.cmd("DATA")?, "354", "DATA")?;
    expect_code(
        &smtp.cmd("Subject: testkit\r\n\r\nhello from the testkit\r\n.")?,
        "250",
        "end of DATA",
    )?;
    expect_code(&smtp.cmd("QUIT")?, "221", "QUIT")?;

    let count = sink.wait_for_messages(1, Duration::from_secs(5))?;
    assert_eq!(count, 1, "{}", sink.logs());
    let dumped = sink.dumped_messages()?;
    assert_eq!(dumped.len(), 1, "dump dir: {:?}", sink.dump_dir());
    let text = std::fs::read_to_string(&dumped[0])?;
    assert!(text.contains("hello from the testkit"), "{text}");
    assert!(text.contains("X-Mail-Args: <s@a.test>"), "{text}");
    assert!(text.contains("X-Rcpt-Args: <r@b.test>"), "{text}");
    // Readiness was checked without connecting, so the only session counted is ours.
    tern_testkit::ports::wait_until(
        "smtp-sink to count our session",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok(sink.counters().sessions == 1),
    )?;
    assert_eq!(sink.counters().quits, 1);
    Ok(())
}

#[test]
fn smtp_sink_faults_answer_as_configured() -> Result<()> {
    let port = free_port()?;
    // -f RCPT with a custom hard reply: RCPT gets a 5xx.
    let hard = SmtpSink::builder(Ipv4Addr::new(127, 0, 0, 31), port)
        .hard_reject("RCPT")
        .hard_reply("550 5.1.1 User unknown")
        .start()?;
    // -r RCPT: a 4xx.
    let soft = SmtpSink::builder(Ipv4Addr::new(127, 0, 0, 32), port)
        .soft_reject("RCPT")
        .soft_reply("450 4.2.1 Try later")
        .start()?;
    // -Q DATA: 421 and hang up.
    let gone = SmtpSink::builder(Ipv4Addr::new(127, 0, 0, 33), port)
        .disconnect_421("DATA")
        .start()?;

    for (sink, want) in [(&hard, "550 5.1.1 User unknown"), (&soft, "450 4.2.1 Try later")] {
        let (mut smtp, _) = Smtp::connect(sink.addr())?;
        smtp.cmd("EHLO client.test")?;
        expect_code(&smtp.cmd("MAIL FROM:<s@a.test>")?, "250", "MAIL")?;
        let rcpt = smtp.cmd("RCPT TO:<r@b.test>")?;
        assert!(rcpt.starts_with(want), "RCPT on {}: {rcpt:?}", sink.addr());
    }

    let (mut smtp, _) = Smtp::connect(gone.addr())?;
    smtp.cmd("EHLO client.test")?;
    smtp.cmd("MAIL FROM:<s@a.test>")?;
    smtp.cmd("RCPT TO:<r@b.test>")?;
    expect_code(&smtp.cmd("DATA")?, "421", "DATA with -Q DATA")?;
    assert_eq!(smtp.reply()?, "", "connection should be closed after the 421");
    assert_eq!(
        hard.message_count() + soft.message_count() + gone.message_count(),
        0
    );
    Ok(())
}

#[test]
fn smtp_source_delivers_every_message_to_a_sink() -> Result<()> {
    let sink = SmtpSink::start(Ipv4Addr::new(127, 0, 0, 41), free_port()?)?;
    let out = run_smtp_source(sink.addr(), 4, 40, 512, "s@a.test", "r@b.test", true)?;
    assert!(out.status.success(), "smtp-source failed: {out:?}");
    assert_eq!(sink.wait_for_messages(40, Duration::from_secs(10))?, 40);
    Ok(())
}

#[tokio::test]
async fn dnsmasq_serves_mx_host_txt_null_mx_and_nxdomain() -> Result<()> {
    use hickory_resolver::Resolver;
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::proto::rr::RData;

    let dns = Dnsmasq::builder()
        .mx("ok.test", "mx1.ok.test", 10)
        .mx("ok.test", "mx2.ok.test", 20)
        .host("mx1.ok.test", Ipv4Addr::new(127, 0, 0, 21))
        .host("mx2.ok.test", Ipv4Addr::new(127, 0, 0, 22))
        .txt("_mta-sts.sts.test", "v=STSv1; id=1;")
        .null_mx("nullmx.test")
        .start()?;

    // An independent resolver (hickory) pointed at the dnsmasq port.
    let mut ns = NameServerConfig::udp_and_tcp(dns.addr().ip());
    for conn in &mut ns.connections {
        conn.port = dns.port();
    }
    let resolver = Resolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .build()?;
    let lookup = resolver
        .mx_lookup("ok.test.")
        .await
        .context("MX ok.test via hickory")?;
    let mut mx: Vec<(u16, String)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
            _ => None,
        })
        .collect();
    mx.sort();
    assert_eq!(
        mx,
        vec![(10, "mx1.ok.test.".to_owned()), (20, "mx2.ok.test.".to_owned())]
    );

    // The built-in stub agrees, and covers the rest.
    assert_eq!(dns.query("ok.test", TYPE_MX)?.mx().len(), 2);
    assert_eq!(
        dns.query("mx2.ok.test", TYPE_A)?.ips(),
        vec![Ipv4Addr::new(127, 0, 0, 22)]
    );
    assert_eq!(
        dns.query("_mta-sts.sts.test", TYPE_TXT)?.txt(),
        vec!["v=STSv1; id=1;".to_owned()]
    );
    let null = dns.query("nullmx.test", TYPE_MX)?;
    assert_eq!(null.answers.len(), 1);
    assert_eq!(
        null.answers[0].data,
        RecordData::Mx {
            preference: 0,
            exchange: String::new()
        }
    );
    assert_eq!(
        dns.query("nothing.test", TYPE_A)?.rcode,
        3,
        "unknown .test name must be NXDOMAIN"
    );
    Ok(())
}

#[test]
fn dnsmasq_rejects_txt_with_a_comma() {
    let err = Dnsmasq::builder().txt("x.test", "a,b").start().unwrap_err();
    assert!(err.to_string().contains("comma"), "{err}");
}

#[test]
fn test_ca_issues_certificates_that_parse_and_verify() -> Result<()> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let ca = TestCa::new()?;
    let server = ca.issue(&["mx1.ok.test", "127.0.0.1"])?;

    // rustls' own PEM parsing accepts them.
    let certs: Vec<CertificateDer<'_>> =
        CertificateDer::pem_slice_iter(server.chain_pem(&ca).as_bytes()).collect::<Result<_, _>>()?;
    assert_eq!(certs.len(), 2);
    let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes())?;
    assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
    assert_eq!(
        CertificateDer::from_pem_slice(ca.cert_pem().as_bytes())?.as_ref(),
        ca.cert_der()
    );

    // OpenSSL verifies the chain for the names it was issued for.
    let dir = tempfile::tempdir()?;
    let ca_path = ca.write_to(dir.path())?;
    let paths = server.write_to(dir.path(), "mx1")?;
    let openssl = require_tool("openssl")?;
    let out = Command::new(&openssl)
        .arg("verify")
        .arg("-CAfile")
        .arg(&ca_path)
        .args(["-verify_hostname", "mx1.ok.test", "-purpose", "sslserver"])
        .arg(&paths.cert)
        .output()?;
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&openssl)
        .args(["verify", "-verify_ip", "127.0.0.1", "-CAfile"])
        .arg(&ca_path)
        .arg(&paths.cert)
        .output()?;
    assert!(
        out.status.success(),
        "IP SAN: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&openssl)
        .args(["verify", "-verify_hostname", "other.test", "-CAfile"])
        .arg(&ca_path)
        .arg(&paths.cert)
        .output()?;
    assert!(!out.status.success(), "a name not issued must not verify");
    let out = Command::new(&openssl)
        .args(["pkey", "-noout", "-in"])
        .arg(&paths.key)
        .output()?;
    assert!(out.status.success(), "openssl cannot read the key");
    Ok(())
}

#[test]
fn cargo_bin_reports_a_missing_binary_clearly() {
    let err = tern_testkit::cargo_bin("no-such-tern-binary").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-tern-binary") && msg.contains("cargo build"),
        "{msg}"
    );
}

#[test]
fn a_peer_that_fails_to_start_reports_what_was_awaited_and_its_log() -> Result<()> {
    let err = RedisServer::start_with_args(free_port()?, &["--no-such-directive", "x"]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("to answer PING"), "{msg}");
    assert!(msg.contains("exited early"), "{msg}");
    assert!(
        msg.contains("no-such-directive"),
        "server log missing from: {msg}"
    );
    Ok(())
}
