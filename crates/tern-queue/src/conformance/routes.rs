//! The conformance cases of operators' domain routes ([`RouteStore`]): every store that implements it must
//! pass them. Each case gets a fresh, empty store from the caller's factory.
//!
//! ```text
//! let factory = Arc::new(|name: String| Box::pin(async move { make_store(&name).await }));
//! tern_queue::conformance::routes::run_all(factory).await;
//! ```

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tern_core::time::now_ms;

use crate::QueueError;
use crate::routes::{Route, RouteStore};

/// Makes a fresh, empty route store for the named case.
pub type Factory = Arc<dyn Fn(String) -> BoxFuture<'static, Arc<dyn RouteStore>> + Send + Sync>;

/// One case.
pub type Case = fn(Arc<dyn RouteStore>) -> BoxFuture<'static, ()>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, by name.
        pub fn cases() -> Vec<(&'static str, Case)> {
            vec![$((stringify!($name), (|s| Box::pin($name(s))) as Case)),*]
        }
    };
}

cases!(
    routes_a_set_route_is_listed_whole_under_its_lower_case_domain,
    routes_a_set_replaces_the_domains_route,
    routes_are_listed_in_domain_order,
    routes_remove_in_any_case_and_say_whether_one_was_in_force,
    routes_an_expired_route_is_no_longer_listed,
    routes_without_a_domain_or_a_host_are_refused,
);

/// Runs every case (four at a time), each on a fresh store, and panics listing the cases that failed.
pub async fn run_all(factory: Factory) {
    run_some(factory, |_| true).await;
}

/// Runs the cases whose name `select` accepts.
pub async fn run_some(factory: Factory, select: impl Fn(&str) -> bool) {
    let selected: Vec<_> = cases().into_iter().filter(|(n, _)| select(n)).collect();
    super::run_cases(move |name| factory(name), selected).await;
}

// ---------------------------------------------------------------------------------------------- helpers

/// A route of `domain` to `host`, set now, until removed.
fn route(domain: &str, host: &str) -> Route {
    Route {
        domain: domain.to_string(),
        host: host.to_string(),
        port: None,
        since_ms: now_ms(),
        until_ms: None,
        reason: String::new(),
    }
}

async fn set(s: &Arc<dyn RouteStore>, route: &Route) {
    s.set_route(route).await.expect("set_route");
}

async fn list(s: &Arc<dyn RouteStore>) -> Vec<Route> {
    s.routes().await.expect("routes")
}

async fn domains(s: &Arc<dyn RouteStore>) -> Vec<String> {
    list(s).await.into_iter().map(|r| r.domain).collect()
}

// ---------------------------------------------------------------------------------------------- cases

/// No route is listed at first; a set route is listed with every field as given, its domain lower-cased.
async fn routes_a_set_route_is_listed_whole_under_its_lower_case_domain(s: Arc<dyn RouteStore>) {
    assert!(list(&s).await.is_empty());
    let given = Route {
        port: Some(2525),
        until_ms: Some(now_ms() + 3_600_000),
        reason: "incident 42: mx.example.test refuses".into(),
        ..route("Example.TEST", "relay.example.net")
    };
    set(&s, &given).await;
    let want = Route {
        domain: "example.test".into(),
        ..given
    };
    assert_eq!(list(&s).await, std::slice::from_ref(&want));
    assert_eq!(list(&s).await, [want], "reading changes nothing");
}

/// Setting a route for a domain that has one (in any case) replaces it: one route per domain.
async fn routes_a_set_replaces_the_domains_route(s: Arc<dyn RouteStore>) {
    set(&s, &route("replace.test", "first.example.net")).await;
    let second = Route {
        port: Some(587),
        reason: "moved".into(),
        ..route("REPLACE.test", "2001:db8::25")
    };
    set(&s, &second).await;
    let got = list(&s).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0],
        Route {
            domain: "replace.test".into(),
            ..second
        }
    );
    assert_eq!(got[0].target(), "[2001:db8::25]:587");
    let third = Route {
        until_ms: Some(now_ms() + 60_000),
        ..route("replace.test", "third.example.net")
    };
    set(&s, &third).await;
    assert_eq!(
        list(&s).await,
        [third],
        "a route until removed becomes one with an end"
    );
}

/// Routes are listed in domain order, each once.
async fn routes_are_listed_in_domain_order(s: Arc<dyn RouteStore>) {
    for domain in ["c.test", "A.test", "b.test", "d.test", "c.test"] {
        set(&s, &route(domain, "relay.example.net")).await;
    }
    assert_eq!(domains(&s).await, ["a.test", "b.test", "c.test", "d.test"]);
}

/// Removing takes the domain's route away (any case) and says whether there was one in force; removing
/// again, or a domain without a route, says no and changes nothing else.
async fn routes_remove_in_any_case_and_say_whether_one_was_in_force(s: Arc<dyn RouteStore>) {
    set(&s, &route("gone.test", "relay.example.net")).await;
    set(&s, &route("stay.test", "relay.example.net")).await;
    assert!(s.remove_route("Gone.TEST").await.expect("remove"));
    assert_eq!(domains(&s).await, ["stay.test"]);
    assert!(
        !s.remove_route("gone.test").await.expect("remove again"),
        "safe to repeat"
    );
    assert!(!s.remove_route("never.test").await.expect("remove unknown"));
    assert!(!s.remove_route("").await.expect("remove no domain"));
    assert_eq!(domains(&s).await, ["stay.test"]);
    set(&s, &route("gone.test", "other.example.net")).await;
    assert_eq!(domains(&s).await, ["gone.test", "stay.test"], "back after a set");
}

/// A route ends by itself at its `until_ms`: no longer listed, and removing it finds none in force; one set
/// with an end already past is never listed; a later set of the domain stands.
async fn routes_an_expired_route_is_no_longer_listed(s: Arc<dyn RouteStore>) {
    let now = now_ms();
    let brief = Route {
        until_ms: Some(now + 1_000),
        ..route("brief.test", "relay.example.net")
    };
    set(&s, &brief).await;
    set(
        &s,
        &Route {
            until_ms: Some(now + 3_600_000),
            ..route("long.test", "relay.example.net")
        },
    )
    .await;
    set(
        &s,
        &Route {
            until_ms: Some(now - 1),
            ..route("past.test", "relay.example.net")
        },
    )
    .await;
    set(&s, &route("forever.test", "relay.example.net")).await;
    assert_eq!(domains(&s).await, ["brief.test", "forever.test", "long.test"]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(domains(&s).await, ["forever.test", "long.test"]);
    assert_eq!(domains(&s).await, ["forever.test", "long.test"], "still gone");
    assert!(
        !s.remove_route("brief.test").await.expect("remove"),
        "an expired route is not in force"
    );
    assert!(!s.remove_route("past.test").await.expect("remove"));
    let again = route("brief.test", "relay2.example.net");
    set(&s, &again).await;
    assert_eq!(domains(&s).await, ["brief.test", "forever.test", "long.test"]);
    assert!(list(&s).await.contains(&again), "the new route, not the old one");
}

/// A route needs a domain and a host; a refused one stores nothing.
async fn routes_without_a_domain_or_a_host_are_refused(s: Arc<dyn RouteStore>) {
    for bad in [
        route("", "relay.example.net"),
        route("x.test", ""),
        route("  ", " "),
    ] {
        let err = s.set_route(&bad).await;
        assert!(
            matches!(err, Err(QueueError::InvalidMessage(_))),
            "{bad:?}: {err:?}"
        );
    }
    assert!(list(&s).await.is_empty());
}
