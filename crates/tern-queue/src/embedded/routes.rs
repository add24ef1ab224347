//! Operators' domain routes ([`RouteStore`]) in the embedded store: the `routes` table (domain → the
//! [`Route`] as JSON) of the store's redb file.
//!
//! Routes are not queue state (no operation of the writer reads them), so they skip the writer: each change
//! is its own write transaction, committed (synced) before the call returns, and a read is a read
//! transaction of what is committed. redb runs one write transaction at a time, so a change waits at most
//! for the writer's batch in progress; both run on the blocking pool, never on the async threads. The table
//! is made by the first change: a store that never had a route reads as having none.
//!
//! **Expiry.** A route whose `until_ms` has passed is left out of [`RouteStore::routes`]; the next change
//! (a set or a remove, in its transaction) deletes every such route.

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use tern_core::time::now_ms;

use super::EmbeddedQueue;
use super::store::store_error;
use crate::QueueError;
use crate::routes::{Route, RouteStore, route_domain, stored_route};

/// domain → the route as JSON.
const ROUTES: TableDefinition<&str, &[u8]> = TableDefinition::new("routes");

fn corrupt(domain: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Corrupt(format!("embedded queue store: route of {domain}: {e}"))
}

/// A stored route, its domain taken from the key.
fn decode(domain: &str, json: &[u8]) -> Result<Route, QueueError> {
    let route: Route = serde_json::from_slice(json).map_err(|e| corrupt(domain, e))?;
    Ok(Route {
        domain: domain.to_string(),
        ..route
    })
}

/// Runs a blocking step of the store off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| QueueError::Unavailable(format!("embedded queue store: {e}")))?
}

/// Changes the routes in one committed transaction: `change` gets the table after the expired routes (at
/// `now`) were deleted, and answers what the call answers.
fn write<T>(
    db: &Database,
    now: u64,
    change: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<T, QueueError>,
) -> Result<T, QueueError> {
    let txn = db.begin_write().map_err(store_error)?;
    let out = {
        let mut table = txn.open_table(ROUTES).map_err(store_error)?;
        let mut stale = Vec::new();
        for entry in table.iter().map_err(store_error)? {
            let (domain, json) = entry.map_err(store_error)?;
            let domain = domain.value();
            // A value that does not read is no route: it goes too, rather than fail every change.
            if decode(domain, json.value()).is_ok_and(|r| !r.in_force(now)) {
                stale.push(domain.to_string());
            }
        }
        for domain in stale {
            table.remove(domain.as_str()).map_err(store_error)?;
        }
        change(&mut table)?
    };
    txn.commit().map_err(store_error)?;
    Ok(out)
}

/// Every route in force at `now`, in domain order.
fn read(db: &Database, now: u64) -> Result<Vec<Route>, QueueError> {
    let txn = db.begin_read().map_err(store_error)?;
    let table = match txn.open_table(ROUTES) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(store_error(e)),
    };
    let mut out = Vec::new();
    for entry in table.iter().map_err(store_error)? {
        let (domain, json) = entry.map_err(store_error)?;
        // A value that does not read is skipped (and logged) rather than failing every reader.
        match decode(domain.value(), json.value()) {
            Ok(route) if route.in_force(now) => out.push(route),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(domain = domain.value(), error = %e, "skipping a route that does not read")
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl RouteStore for EmbeddedQueue {
    async fn set_route(&self, route: &Route) -> Result<(), QueueError> {
        let route = stored_route(route)?;
        let json = serde_json::to_vec(&route)
            .map_err(|e| QueueError::Backend(format!("route of {}: {e}", route.domain)))?;
        let db = self.db.clone();
        blocking(move || {
            write(&db, now_ms(), |table| {
                table
                    .insert(route.domain.as_str(), json.as_slice())
                    .map_err(store_error)?;
                Ok(())
            })
        })
        .await
    }

    async fn remove_route(&self, domain: &str) -> Result<bool, QueueError> {
        let domain = route_domain(domain);
        if domain.is_empty() {
            return Ok(false);
        }
        let db = self.db.clone();
        blocking(move || {
            // Expired routes are deleted before `change` runs: one found here is in force.
            write(&db, now_ms(), |table| {
                Ok(table.remove(domain.as_str()).map_err(store_error)?.is_some())
            })
        })
        .await
    }

    async fn routes(&self) -> Result<Vec<Route>, QueueError> {
        let db = self.db.clone();
        blocking(move || read(&db, now_ms())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedQueueOptions;
    use redb::ReadableTableMetadata;

    #[tokio::test]
    async fn routes_outlive_a_reopen_and_expired_ones_go_with_the_next_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = EmbeddedQueueOptions {
            path: dir.path().to_path_buf(),
            ..Default::default()
        };
        let q = EmbeddedQueue::open(opts.clone()).expect("open");
        assert!(q.routes().await.expect("routes").is_empty(), "no table yet");
        let now = now_ms();
        let kept = Route {
            domain: "kept.test".into(),
            host: "relay.test".into(),
            port: Some(2525),
            since_ms: now,
            until_ms: Some(now + 3_600_000),
            reason: "incident 42".into(),
        };
        q.set_route(&kept).await.expect("set");
        let soon = Route {
            domain: "soon.test".into(),
            host: "192.0.2.1".into(),
            until_ms: Some(now + 200),
            ..kept.clone()
        };
        q.set_route(&soon).await.expect("set");
        drop(q);

        let q = EmbeddedQueue::open(opts).expect("reopen");
        assert_eq!(q.routes().await.expect("routes"), [kept.clone(), soon]);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(q.routes().await.expect("routes"), std::slice::from_ref(&kept));
        assert!(!q.remove_route("other.test").await.expect("remove"));
        let db = q.db.clone();
        let left = blocking(move || {
            let txn = db.begin_read().map_err(store_error)?;
            let table = txn.open_table(ROUTES).map_err(store_error)?;
            table.len().map_err(store_error)
        })
        .await
        .expect("count");
        assert_eq!(left, 1, "the expired route was deleted by the change");
    }
}
