//! The log line of a `530` (issue #16): it names `ingest.relay_networks`, its value, and that the default
//! allows loopback only, with structured fields. The events are captured by a small `tracing` subscriber
//! installed for this test binary alone (a global default: the server runs on a multi-threaded runtime).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Client, Harness};
use tracing::field::{Field, Visit};
use tracing::span;
use tracing::{Event, Metadata, Subscriber};

/// Every event's fields, the text under `message`.
type Captured = Arc<Mutex<Vec<BTreeMap<String, String>>>>;

/// A subscriber that keeps every event's fields and ignores spans.
struct Capture(Captured);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(fields);
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

/// A client from 127.0.0.2, outside the harness's relay network 127.0.0.1/32.
fn client_from_127_0_0_2(h: &Harness) -> Client<std::net::TcpStream> {
    let tcp = h.rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        socket.connect(h.smtp).await.unwrap()
    });
    let std = tcp.into_std().unwrap();
    std.set_nonblocking(false).unwrap();
    std.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c = Client::new(std);
    assert_eq!(c.read_reply().code, 220);
    c
}

#[test]
fn the_530_log_line_names_relay_networks_its_value_and_the_loopback_default() {
    let captured = Captured::default();
    tracing::subscriber::set_global_default(Capture(Arc::clone(&captured))).unwrap();
    let h = Harness::start(false, &[], |_| {});
    let mut c = client_from_127_0_0_2(&h);
    c.expect("EHLO client.test", 250);
    let r = c.expect("MAIL FROM:<app@sender.test>", 530);
    assert_eq!(r.enhanced.unwrap().to_string(), "5.7.0", "{r}");

    let events = captured.lock().unwrap().clone();
    let line = events
        .iter()
        .find(|e| e.get("message").is_some_and(|m| m.starts_with("MAIL refused")))
        .unwrap_or_else(|| panic!("no MAIL refused line in {events:#?}"));
    assert_eq!(
        line["message"],
        "MAIL refused: not authenticated, and relaying is allowed from ingest.relay_networks only (default: loopback)",
        "{line:?}"
    );
    assert_eq!(line["relay_networks"], "127.0.0.1/32", "{line:?}");
    assert_eq!(line["relay_networks_default"], "127.0.0.0/8,::1/128", "{line:?}");
    assert_eq!(line["client"], "127.0.0.2", "{line:?}");
    assert_eq!(line["sender"], "<app@sender.test>", "{line:?}");
    assert_eq!(line["reply"], "530", "{line:?}");
}
