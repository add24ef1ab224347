//! The MTA-STS code's DNS queries (TXT, and a policy host's AAAA and A), sent by `tern_mta_sts::HickoryDns`
//! to a real dnsmasq, are counted in `tern_dns_lookups` once telemetry is set up, by kind and outcome.
//!
//! Its own test binary: `Telemetry::init` installs the process's logger, instruments and lookup observer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::net::{IpAddr, Ipv4Addr};

use prometheus::{Encoder, TextEncoder};
use tern_config::TelemetryConfig;
use tern_mta_sts::{HickoryDns, HostResolver, TxtLookup, TxtResolver};
use tern_telemetry::Telemetry;
use tern_testkit::Dnsmasq;

#[tokio::test]
async fn mta_sts_lookups_are_counted_by_kind_and_outcome() {
    let telemetry = Telemetry::init(&TelemetryConfig::default(), "test").unwrap();
    let server = Dnsmasq::builder()
        .txt("_mta-sts.one.test", "v=STSv1; id=20260101")
        .host("mta-sts.one.test", Ipv4Addr::new(127, 0, 0, 7))
        .start()
        .unwrap();
    let dns = HickoryDns::from_servers(&[server.addr()]).unwrap();

    assert_eq!(
        dns.lookup_txt("_mta-sts.one.test").await,
        TxtLookup::Records(vec!["v=STSv1; id=20260101".into()])
    );
    assert_eq!(dns.lookup_txt("_mta-sts.missing.test").await, TxtLookup::NotFound);
    // dnsmasq refuses names outside its local domains: no answer.
    let refused = dns.lookup_txt("_mta-sts.example.org").await;
    assert!(matches!(refused, TxtLookup::Failed(_)), "{refused:?}");
    // The policy host: an A record, no AAAA.
    assert_eq!(
        dns.resolve("mta-sts.one.test").await.unwrap(),
        vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7))]
    );

    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&telemetry.registry().gather(), &mut out)
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    for line in [
        r#"tern_dns_lookups_total{kind="txt",outcome="ok"} 1"#,
        r#"tern_dns_lookups_total{kind="txt",outcome="nxdomain"} 1"#,
        r#"tern_dns_lookups_total{kind="txt",outcome="error"} 1"#,
        r#"tern_dns_lookups_total{kind="a",outcome="ok"} 1"#,
        r#"tern_dns_lookups_total{kind="aaaa",outcome="nodata"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
    }
    telemetry.shutdown().await;
}
