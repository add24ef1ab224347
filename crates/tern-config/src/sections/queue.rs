//! `[queue]`: where the queue lives and how its keys are laid out.

use serde::{Deserialize, Serialize};
use tern_core::HumanDuration;

/// The `[queue]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// One Redis URL (`redis://[user:password@]host:port/db`, `rediss://` for TLS), or with `cluster = true` a
    /// comma-separated list of cluster seed URLs.
    pub url: String,
    /// Whether `url` names Redis Cluster seeds.
    pub cluster: bool,
    /// How many shards destination domains are spread over (by a stable hash). Each shard's keys share one
    /// hash tag, so in a cluster the shards spread over the masters. Changing it re-homes domains: drain first.
    pub shards: u16,
    /// How long a claimed job stays owned without a heartbeat before the reaper gives it to another worker.
    pub lease: HumanDuration,
    /// Prefix of every Redis key, so several tern installations can share one Redis.
    pub key_prefix: String,
    /// Replicas that must acknowledge an enqueue (Redis WAIT) before it is acknowledged to the client.
    pub wait_replicas: u32,
    /// Group commit: concurrent enqueues (SMTP sessions, gRPC calls, DSNs) and concurrent completions of one
    /// process go to the queue together, one call for many, each still acknowledged only once its own write
    /// is durable (and replicated, with `wait_replicas`). A lone call goes at once; calls that arrive while
    /// one is in flight go together in the next.
    pub group_commit: bool,
    /// The most messages (or job outcomes) one group-commit call carries.
    pub group_commit_max: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            shards: 16,
            lease: HumanDuration::from_secs(300),
            key_prefix: "tern".into(),
            wait_replicas: 0,
            group_commit: true,
            group_commit_max: 64,
        }
    }
}

impl QueueConfig {
    /// Checks ranges serde cannot express; returns the offending key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.url.trim().is_empty() {
            return Err(("url".into(), "must name a Redis server".into()));
        }
        for url in self.url.split(',').map(str::trim) {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err((
                    "url".into(),
                    format!("{url:?} must start with redis:// or rediss://"),
                ));
            }
        }
        if !self.cluster && self.url.contains(',') {
            return Err((
                "url".into(),
                "a comma list of seeds needs `cluster = true`".into(),
            ));
        }
        if self.shards == 0 || self.shards > 1024 {
            return Err(("shards".into(), format!("{} is outside 1..=1024", self.shards)));
        }
        if self.lease.get() < std::time::Duration::from_secs(1) {
            return Err(("lease".into(), format!("{} is shorter than 1s", self.lease)));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}', ' ']) {
            return Err((
                "key_prefix".into(),
                "must be non-empty, without braces or spaces".into(),
            ));
        }
        if !(1..=MAX_GROUP_COMMIT).contains(&self.group_commit_max) {
            return Err((
                "group_commit_max".into(),
                format!("{} is outside 1..={MAX_GROUP_COMMIT}", self.group_commit_max),
            ));
        }
        Ok(())
    }
}

/// The largest `group_commit_max`: beyond it one call would hold Redis (and every caller of it) for long.
const MAX_GROUP_COMMIT: u32 = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_commit_is_on_by_default_and_its_size_is_bounded() {
        let q = QueueConfig::default();
        assert!(q.group_commit);
        assert_eq!(q.group_commit_max, 64);
        assert_eq!(q.validate(), Ok(()));
        for bad in [0, MAX_GROUP_COMMIT + 1] {
            let q = QueueConfig {
                group_commit_max: bad,
                ..QueueConfig::default()
            };
            assert!(matches!(q.validate(), Err((key, _)) if key == "group_commit_max"));
        }
    }
}
