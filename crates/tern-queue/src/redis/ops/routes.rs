//! Operators' domain routes ([`RouteStore`]) in Redis: one hash, `routes` in shard 0 (`{<prefix>:s00}:routes`,
//! see `keys.rs`), field = the lower-cased domain, value = the [`Route`] as JSON.
//!
//! **Why one hash in a fixed shard.** Every worker reads every route every few seconds: one `HGETALL` of one
//! key is the cheapest read there is, and the routes of a cluster are a handful (an operator's incident
//! tool), not a data set that needs spreading over the masters. A master that holds shard 0 and is down
//! takes the routes with it for that time, as it takes shard 0's mail; workers keep the routes they last
//! read (their business, not the store's).
//!
//! **Expiry.** A route's `until_ms` is checked by the reader (a route whose time has passed is left out of
//! [`RouteStore::routes`]), and the reader that meets one deletes it, with a compare-and-delete (a short
//! `EVAL` script: `HDEL` only if the field still holds what was read), so that a route set again meanwhile
//! by an operator is never lost to that cleanup. `remove_route` reads and deletes in one script too, to
//! answer whether a route in force was removed. These scripts are plain `EVALSHA` (loaded by the redis
//! crate on `NOSCRIPT`), not functions of the library: they touch one key and no queue state.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::{Script, Value};
use tern_core::time::now_ms;

use super::codec;
use crate::QueueError;
use crate::redis::RedisQueue;
use crate::redis::conn::redis_error;
use crate::routes::{Route, RouteStore, route_domain, stored_route};

/// The hash's name in shard 0.
const ROUTES: &str = "routes";

/// Deletes field ARGV[1] of hash KEYS[1] if it still holds ARGV[2]; 1 if it did.
static DELETE_IF_SAME: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
           return redis.call('HDEL', KEYS[1], ARGV[1]) \
         end \
         return 0",
    )
});

/// Deletes field ARGV[1] of hash KEYS[1] and answers what it held (nil: nothing).
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local v = redis.call('HGET', KEYS[1], ARGV[1]) \
         if v then redis.call('HDEL', KEYS[1], ARGV[1]) end \
         return v",
    )
});

impl RedisQueue {
    /// Runs a script on one key (bounded like every call).
    async fn run_script(&self, script: &Script, key: &str, args: &[&str]) -> Result<Value, QueueError> {
        self.timed(async {
            let mut conn = self.backend.get().await?;
            let mut call = script.key(key);
            for a in args {
                call.arg(*a);
            }
            call.invoke_async::<Value>(&mut conn).await.map_err(redis_error)
        })
        .await
    }

    /// Deletes `field` of hash `key` if it still holds `value` (what a reader found stale); whether it did.
    pub(crate) async fn delete_if_same(
        &self,
        key: &str,
        field: &str,
        value: &str,
    ) -> Result<bool, QueueError> {
        let v = self.run_script(&DELETE_IF_SAME, key, &[field, value]).await?;
        Ok(codec::int(&v).unwrap_or(0) > 0)
    }
}

/// A stored route from its field (the domain) and value (JSON); `None` (logged) for a value that does not
/// read as a route, which is skipped rather than failing every reader.
pub(crate) fn decode_route(domain: &str, json: &str) -> Option<Route> {
    match serde_json::from_str::<Route>(json) {
        Ok(route) => Some(Route {
            domain: domain.to_string(),
            ..route
        }),
        Err(e) => {
            tracing::warn!(domain, error = %e, "skipping a route that does not read");
            None
        }
    }
}

/// The routes in force at `now` in domain order, and the fields (domain, value) of those whose time has
/// passed.
pub(crate) fn split_routes(v: &Value, now: u64) -> (Vec<Route>, Vec<(String, String)>) {
    let mut live = Vec::new();
    let mut stale = Vec::new();
    for (domain, json) in codec::fields(v) {
        let Some(route) = decode_route(&domain, &json) else {
            continue;
        };
        if route.in_force(now) {
            live.push(route);
        } else {
            stale.push((domain, json));
        }
    }
    live.sort_by(|a, b| a.domain.cmp(&b.domain));
    (live, stale)
}

fn encode(route: &Route) -> Result<String, QueueError> {
    serde_json::to_string(route).map_err(|e| QueueError::Backend(format!("route: {e}")))
}

#[async_trait]
impl RouteStore for RedisQueue {
    async fn set_route(&self, route: &Route) -> Result<(), QueueError> {
        let route = stored_route(route)?;
        let mut set = redis::cmd("HSET");
        set.arg(self.keys.key(0, ROUTES))
            .arg(&route.domain)
            .arg(encode(&route)?);
        self.command(set).await?;
        Ok(())
    }

    async fn remove_route(&self, domain: &str) -> Result<bool, QueueError> {
        let domain = route_domain(domain);
        if domain.is_empty() {
            return Ok(false);
        }
        let key = self.keys.key(0, ROUTES);
        let old = self.run_script(&TAKE, &key, &[&domain]).await?;
        Ok(codec::text(&old)
            .and_then(|json| decode_route(&domain, &json))
            .is_some_and(|route| route.in_force(now_ms())))
    }

    async fn routes(&self) -> Result<Vec<Route>, QueueError> {
        let key = self.keys.key(0, ROUTES);
        let mut read = redis::cmd("HGETALL");
        read.arg(&key);
        let (live, stale) = split_routes(&self.command(read).await?, now_ms());
        for (domain, json) in stale {
            // The routes are read; their cleanup can wait for the next reader.
            if let Err(e) = self.delete_if_same(&key, &domain, &json).await {
                tracing::debug!(domain, error = %e, "could not drop an expired route");
                break;
            }
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::ops::test_values::{array, bulk};

    #[test]
    fn routes_decode_by_domain_and_expired_ones_are_set_apart() {
        let r = |domain: &str, until: Option<u64>| Route {
            domain: domain.into(),
            host: "relay.test".into(),
            port: Some(2525),
            since_ms: 1,
            until_ms: until,
            reason: "incident".into(),
        };
        let b = r("b.test", None);
        let a = r("a.test", Some(100));
        let gone = r("gone.test", Some(50));
        let json = |r: &Route| encode(r).expect("encodes");
        let v = array(vec![
            bulk("b.test"),
            bulk(&json(&b)),
            bulk("gone.test"),
            bulk(&json(&gone)),
            bulk("a.test"),
            bulk(&json(&a)),
            bulk("bad.test"),
            bulk("{not json"),
        ]);
        let (live, stale) = split_routes(&v, 50);
        assert_eq!(live, [a, b]);
        assert_eq!(stale, [("gone.test".to_string(), json(&gone))]);
    }

    #[test]
    fn the_field_names_the_domain_of_a_decoded_route() {
        let got = decode_route("x.test", r#"{"domain":"other","host":"h","since_ms":5}"#).expect("reads");
        assert_eq!(
            (got.domain.as_str(), got.host.as_str(), got.port),
            ("x.test", "h", None)
        );
    }
}
