//! [`HickoryDns`] against a real dnsmasq: what TXT answers mean for discovery, and the policy host's
//! addresses.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::net::{IpAddr, Ipv4Addr};

use tern_mta_sts::{HickoryDns, HostResolver, TxtLookup, TxtResolver};
use tern_testkit::Dnsmasq;

fn dnsmasq() -> Dnsmasq {
    Dnsmasq::builder()
        .txt("_mta-sts.one.test", "v=STSv1; id=20260101")
        .txt("_mta-sts.two.test", "v=spf1 -all")
        .txt("_mta-sts.two.test", "v=STSv1; id=two")
        // Two character strings in one record (dnsmasq splits the text at the comma).
        .arg("--txt-record=_mta-sts.split.test,v=STSv1; ,id=split")
        // The name exists (it has an address) but has no TXT record: NODATA.
        .host("_mta-sts.nodata.test", Ipv4Addr::new(127, 0, 0, 9))
        .host("mta-sts.one.test", Ipv4Addr::new(127, 0, 0, 7))
        .start()
        .expect("dnsmasq")
}

#[tokio::test]
async fn txt_records_come_back_one_string_per_record() {
    let server = dnsmasq();
    let dns = HickoryDns::from_servers(&[server.addr()]).unwrap();
    assert_eq!(
        dns.lookup_txt("_mta-sts.one.test").await,
        TxtLookup::Records(vec!["v=STSv1; id=20260101".into()])
    );
    let TxtLookup::Records(mut two) = dns.lookup_txt("_mta-sts.two.test").await else {
        panic!("no records for two.test");
    };
    two.sort();
    assert_eq!(two, ["v=STSv1; id=two", "v=spf1 -all"]);
    assert_eq!(
        dns.lookup_txt("_mta-sts.split.test.").await,
        TxtLookup::Records(vec!["v=STSv1; id=split".into()]),
        "the strings of one record are joined"
    );
}

#[tokio::test]
async fn nxdomain_and_nodata_are_no_record_and_a_refusal_is_a_failure() {
    let server = dnsmasq();
    let dns = HickoryDns::from_servers(&[server.addr()]).unwrap();
    assert_eq!(dns.lookup_txt("_mta-sts.missing.test").await, TxtLookup::NotFound);
    assert_eq!(dns.lookup_txt("_mta-sts.nodata.test").await, TxtLookup::NotFound);
    // dnsmasq refuses names outside its local domains (it has no upstream): that proves nothing.
    let refused = dns.lookup_txt("_mta-sts.example.org").await;
    assert!(matches!(refused, TxtLookup::Failed(_)), "{refused:?}");
}

#[tokio::test]
async fn the_policy_host_resolves_to_its_addresses() {
    let server = dnsmasq();
    let dns = HickoryDns::from_servers(&[server.addr()]).unwrap();
    assert_eq!(
        dns.resolve("mta-sts.one.test").await.unwrap(),
        vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7))]
    );
    assert!(dns.resolve("mta-sts.missing.test").await.unwrap().is_empty());
    assert!(dns.resolve("mta-sts.example.org").await.is_err());
}
