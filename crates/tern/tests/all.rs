//! `tern all`: a whole single-node tern in one process. Mail submitted over SMTP is delivered to the
//! recipient domain's MX (a real Postfix smtp-sink found through a real dnsmasq), the control plane sees the
//! queue drain, and SIGTERM stops everything.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{Node, SOON, smtp_submit};
use tern_testkit::{Dnsmasq, SmtpSink, free_port};

#[test]
fn all_roles_in_one_process_deliver_submitted_mail_and_stop_on_sigterm() {
    let mx_port = free_port().unwrap();
    let sink = SmtpSink::start(Ipv4Addr::new(127, 0, 0, 41), mx_port).unwrap();
    let dns = Dnsmasq::builder()
        .mx("dest.test", "mx1.dest.test", 10)
        .host("mx1.dest.test", [127, 0, 0, 41])
        .start()
        .unwrap();
    let mut node = Node::start(dns, mx_port, "", "");

    let queued = smtp_submit(
        node.smtp,
        "app@sender.test",
        "someone@dest.test",
        "Subject: all in one\r\n\r\nhello",
    );
    assert!(queued.starts_with("250 2.0.0 Ok: queued as "), "{queued}");

    let delivered = sink.wait_for_messages(1, SOON);
    assert!(
        delivered.is_ok(),
        "not delivered: {delivered:?}\n{}",
        node.tern.logs()
    );
    // The control plane sees the queue drained.
    node.wait("the queue to drain", SOON, || {
        node.status()["totals"]["total"].as_u64().unwrap_or(1) == 0
    });

    let status = node.tern.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "exit {status:?}\n{}", node.tern.logs());
}

/// Redis loses tern's function library while tern runs (`FUNCTION FLUSH`, as after a restart without
/// persistence or a failover to a replica without it): the next message is still accepted and delivered,
/// because the first call that misses the library loads it again and repeats itself.
#[test]
fn a_flushed_function_library_is_loaded_again_and_mail_still_flows() {
    let mx_port = free_port().unwrap();
    let sink = SmtpSink::start(Ipv4Addr::new(127, 0, 0, 42), mx_port).unwrap();
    let dns = Dnsmasq::builder()
        .mx("flush.test", "mx1.flush.test", 10)
        .host("mx1.flush.test", [127, 0, 0, 42])
        .start()
        .unwrap();
    let node = Node::start(dns, mx_port, "", "");
    let listed = node.redis.cli(&["FUNCTION", "LIST"]).unwrap();
    assert!(listed.contains("tern_"), "tern's library after start: {listed}");

    // No check that the library is gone after the flush: the running node's next call (a worker's claim,
    // the reaper, the readiness probe) may load it again at once, which is the behaviour under test.
    let flushed = node.redis.cli(&["FUNCTION", "FLUSH"]).unwrap();
    assert!(flushed.contains("OK"), "FUNCTION FLUSH: {flushed}");

    let queued = smtp_submit(
        node.smtp,
        "app@sender.test",
        "someone@flush.test",
        "Subject: after a flush\r\n\r\nhello",
    );
    assert!(
        queued.starts_with("250 2.0.0 Ok: queued as "),
        "{queued}\n{}",
        node.tern.logs()
    );
    sink.wait_for_messages(1, SOON)
        .unwrap_or_else(|e| panic!("not delivered after the flush: {e:#}\n{}", node.tern.logs()));
    assert!(node.redis.cli(&["FUNCTION", "LIST"]).unwrap().contains("tern_"));
}
