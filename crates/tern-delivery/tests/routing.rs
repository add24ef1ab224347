//! Routing against real DNS servers on loopback: dnsmasq, authoritative (its negative answers carry the
//! zone's SOA) or answering from its own records (no SOA in its NODATA answers), and a scriptable server for
//! what dnsmasq will not send (a referral, NXDOMAIN for AAAA alone). Which failures are final and which wait.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};

use common::fake_dns::{Answer, FakeDns};
use hickory_resolver::proto::rr::RData;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::proto::rr::rdata::A;
use tern_config::DeliveryConfig;
use tern_config::sections::{IpVersion, RouteConfig};
use tern_delivery::route::{RouteFailure, Router};
use tern_testkit::{Dnsmasq, DnsmasqBuilder};

fn router(dns: SocketAddr, edit: impl FnOnce(&mut DeliveryConfig)) -> Router {
    let mut cfg = DeliveryConfig {
        dns_servers: vec![dns],
        smtp_port: 25,
        ..Default::default()
    };
    edit(&mut cfg);
    Router::new(&cfg, "tern.a.test").expect("router")
}

/// dnsmasq authoritative for `test`: its NODATA and NXDOMAIN answers carry `test. SOA ns.test.
/// hostmaster.ns.test. ...` in the authority section (answering from its own records alone, as
/// `--local`, it sends no SOA).
fn authoritative(b: DnsmasqBuilder) -> Dnsmasq {
    b.arg("--auth-server=ns.test,127.0.0.1")
        .arg("--auth-zone=test")
        .start()
        .expect("dnsmasq")
}

fn assert_temporary(r: Result<Vec<tern_delivery::route::Host>, RouteFailure>, status: &str) -> RouteFailure {
    let e = r.expect_err("no route");
    assert_eq!((e.is_permanent(), e.status()), (false, status), "{e:?}");
    e
}

/// A domain with a TXT record only, from an authoritative server: NODATA with SOA for MX, A and AAAA. It
/// exists, can never take mail, and bounces at once.
#[tokio::test]
async fn nodata_with_the_zones_soa_for_mx_and_addresses_bounces_with_5_4_4() {
    let dns = authoritative(Dnsmasq::builder().txt("nodata.test", "v=spf1 -all"));
    let e = router(dns.addr(), |_| {}).route("nodata.test").await.unwrap_err();
    assert_eq!((e.is_permanent(), e.status()), (true, "5.4.4"), "{e:?}");
}

/// The same records served by dnsmasq from its own records (`--local`): NOERROR without records and without
/// SOA. That is no proof (hickory reports a CNAME chain it gave up on the same way): the mail waits.
#[tokio::test]
async fn an_empty_answer_without_soa_defers_instead_of_bouncing() {
    let dns = Dnsmasq::builder()
        .txt("nodata.test", "v=spf1 -all")
        .start()
        .unwrap();
    let e = assert_temporary(router(dns.addr(), |_| {}).route("nodata.test").await, "4.4.3");
    assert!(e.text().contains("do not prove"), "{e:?}");
}

/// A server that does not recurse answers with a referral (NS records, no SOA) for every question: that is
/// no answer, and the mail waits instead of bouncing as if the domain had no MX and no address.
#[tokio::test]
async fn a_referral_defers_instead_of_bouncing() {
    let dns = FakeDns::start(vec![
        ("referral.test", RecordType::MX, Answer::Referral),
        ("referral.test", RecordType::A, Answer::Referral),
        ("referral.test", RecordType::AAAA, Answer::Referral),
    ])
    .await;
    let e = assert_temporary(router(dns.addr, |_| {}).route("referral.test").await, "4.4.3");
    assert!(e.text().contains("referral"), "{e:?}");
}

/// A broken server answers NXDOMAIN for AAAA but has an A record: A is asked all the same, and used.
#[tokio::test]
async fn nxdomain_for_aaaa_alone_does_not_hide_the_a_record() {
    let dns = FakeDns::start(vec![
        ("brokenaaaa.test", RecordType::MX, Answer::NoData),
        ("brokenaaaa.test", RecordType::AAAA, Answer::NxDomain),
        (
            "brokenaaaa.test",
            RecordType::A,
            Answer::Records(vec![RData::A(A::new(127, 0, 0, 9))]),
        ),
    ])
    .await;
    let hosts = router(dns.addr, |_| {})
        .route("brokenaaaa.test")
        .await
        .expect("a route");
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].addrs, vec![SocketAddr::from(([127, 0, 0, 9], 25))]);
    assert!(
        dns.asked().contains(&"brokenaaaa.test AAAA".to_string()),
        "{:?}",
        dns.asked()
    );
}

/// A domain without MX whose only address is IPv6, under `ip_version = "v4"`: it has an address, so it is
/// not bounced as having none; the mail waits (4.4.4) with a reason that names the setting. The same the
/// other way round.
#[tokio::test]
async fn addresses_only_of_the_family_ip_version_leaves_out_defer_saying_so() {
    let v6: IpAddr = "2001:db8::25".parse().unwrap();
    let v4: IpAddr = "127.0.0.9".parse().unwrap();
    let dns = authoritative(Dnsmasq::builder().host("v6only.test", v6).host("v4only.test", v4));
    let e = assert_temporary(
        router(dns.addr(), |c| c.ip_version = IpVersion::V4)
            .route("v6only.test")
            .await,
        "4.4.4",
    );
    assert!(e.text().contains("only IPv6 addresses"), "{e:?}");
    let e = assert_temporary(
        router(dns.addr(), |c| c.ip_version = IpVersion::V6)
            .route("v4only.test")
            .await,
        "4.4.4",
    );
    assert!(e.text().contains("only IPv4 addresses"), "{e:?}");
    let hosts = router(dns.addr(), |_| {})
        .route("v6only.test")
        .await
        .expect("a route");
    assert_eq!(hosts[0].addrs, vec![SocketAddr::new(v6, 25)]);
}

/// NXDOMAIN for the relay or for a route's host is a mistake in configuration or DNS, perhaps brief: the
/// mail waits, it never bounces for it.
#[tokio::test]
async fn a_relay_or_route_host_that_does_not_exist_defers() {
    let dns = authoritative(Dnsmasq::builder());
    let relayed = router(dns.addr(), |c| {
        c.relay_host = Some("[relay.nowhere.test]:2525".into());
    });
    let e = assert_temporary(relayed.route("b.test").await, "4.4.3");
    assert!(e.text().contains("does not exist"), "{e:?}");
    let routed = router(dns.addr(), |c| {
        c.routes = vec![RouteConfig {
            domain: "routed.test".into(),
            host: "smtp.nowhere.test".into(),
        }];
    });
    assert_temporary(routed.route("routed.test").await, "4.4.3");
    // The recipient's own domain not existing is final.
    let e = router(dns.addr(), |_| {})
        .route("nowhere.test")
        .await
        .unwrap_err();
    assert_eq!((e.is_permanent(), e.status()), (true, "5.1.2"), "{e:?}");
}

/// An operator's reroute names a host (looked up for A, not MX) or an address, with a port or the
/// configured one; a name without an address defers, as a configured host's does.
#[tokio::test]
async fn a_reroute_goes_to_its_host_by_address_lookup_on_its_port_or_the_configured_one() {
    let dns = authoritative(Dnsmasq::builder().host("relay.ops.test", [127, 0, 0, 9]));
    let r = router(dns.addr(), |c| c.smtp_port = 2525);
    let route = |host: &str, port: Option<u16>| tern_queue::Route {
        domain: "b.test".into(),
        host: host.into(),
        port,
        ..Default::default()
    };
    let hosts = r.route_to(&route("Relay.Ops.test.", None)).await.expect("a host");
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].name, "relay.ops.test");
    assert_eq!(hosts[0].addrs, vec![SocketAddr::from(([127, 0, 0, 9], 2525))]);
    assert!(!hosts[0].relay && !hosts[0].implicit_tls);
    let hosts = r.route_to(&route("::1", Some(26))).await.expect("an address");
    assert_eq!(hosts[0].addrs, vec!["[::1]:26".parse::<SocketAddr>().unwrap()]);
    let hosts = r
        .route_to(&route("[192.0.2.7]", Some(27)))
        .await
        .expect("a bracketed address");
    assert_eq!(
        hosts[0].addrs,
        vec!["192.0.2.7:27".parse::<SocketAddr>().unwrap()]
    );
    assert_temporary(r.route_to(&route("smtp.nowhere.test", None)).await, "4.4.3");
}
