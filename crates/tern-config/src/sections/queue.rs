//! `[queue]`: where the queue lives and how its keys are laid out.

use serde::{Deserialize, Serialize};
use tern_core::HumanDuration;

/// The `[queue]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Where the queue lives. Empty (the default): the embedded store in `./tern-data`, for one process
    /// (`tern all`); `embedded:///path/to/dir`: the embedded store in that directory; one Redis URL
    /// (`redis://[user:password@]host:port/db`, `rediss://` for TLS), or with `cluster = true` a
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
    /// is durable (and replicated, with `wait_replicas`). A lone enqueue goes at once (completions after
    /// `completion_linger`); calls that arrive while one is in flight go together in the next.
    pub group_commit: bool,
    /// The most messages (or job outcomes) one group-commit call carries.
    pub group_commit_max: u32,
    /// How long a worker's group commit of job outcomes waits for more before it goes (`0s`: at once, as
    /// enqueues always go). Nobody waits on an outcome's record, and a wait of a millisecond makes the calls
    /// carry several times as many outcomes under load.
    pub completion_linger: HumanDuration,
    /// How long a message's history (envelope, tags, every attempt, how it ended) stays readable after its
    /// last event, for `ternctl msg show` and `msg find`; `0s` keeps none.
    pub history: HumanDuration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            url: String::new(),
            cluster: false,
            shards: 16,
            lease: HumanDuration::from_secs(300),
            key_prefix: "tern".into(),
            wait_replicas: 0,
            group_commit: true,
            group_commit_max: 64,
            completion_linger: HumanDuration(std::time::Duration::from_millis(1)),
            history: HumanDuration::from_secs(7 * 24 * 3600),
        }
    }
}

impl QueueConfig {
    /// Checks ranges serde cannot express; returns the offending key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.backend() == QueueBackend::Embedded {
            // `embedded:///`, `embedded:///./..` and the like name the root directory, which is never meant.
            let url = self.url.trim();
            let names_a_directory = std::path::Path::new(url.trim_start_matches("embedded://"))
                .components()
                .any(|part| matches!(part, std::path::Component::Normal(_)));
            if url.starts_with("embedded://") && !names_a_directory {
                return Err((
                    "url".into(),
                    "an embedded:// URL names a directory: embedded:///path/to/dir".into(),
                ));
            }
            if self.cluster {
                return Err((
                    "cluster".into(),
                    "the embedded store is one process's; a cluster needs a Redis URL".into(),
                ));
            }
            if self.wait_replicas > 0 {
                return Err((
                    "wait_replicas".into(),
                    "the embedded store has no replicas (it syncs to its own disk); replicas need a Redis URL"
                        .into(),
                ));
            }
            return self.validate_shared();
        }
        for url in self.url.split(',').map(str::trim) {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err((
                    "url".into(),
                    format!("{url:?} must start with redis://, rediss:// or embedded://"),
                ));
            }
        }
        if !self.cluster && self.url.contains(',') {
            return Err((
                "url".into(),
                "a comma list of seeds needs `cluster = true`".into(),
            ));
        }
        self.validate_shared()
    }

    /// Which backend `url` selects: the embedded store for no URL or an `embedded://` one, Redis otherwise
    /// (a URL of neither scheme is refused by [`QueueConfig::validate`]).
    pub fn backend(&self) -> QueueBackend {
        let url = self.url.trim();
        if url.is_empty() || url.starts_with("embedded://") {
            QueueBackend::Embedded
        } else {
            QueueBackend::Redis
        }
    }

    /// The checks of the keys every backend reads.
    fn validate_shared(&self) -> Result<(), (String, String)> {
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
        if self.completion_linger.get() > MAX_COMPLETION_LINGER {
            return Err((
                "completion_linger".into(),
                format!("{} is longer than 100ms", self.completion_linger),
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

/// The queue store a `[queue]` section selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueBackend {
    /// The embedded store in a local directory: one process runs every role.
    Embedded,
    /// Redis or Redis Cluster: any number of processes share it.
    Redis,
}

/// The longest `completion_linger`: a claim's slot stays taken while its last outcome waits, and code that
/// records outcomes one after another waits once per outcome.
const MAX_COMPLETION_LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// The largest `group_commit_max`: beyond it one call would hold Redis (and every caller of it) for long.
const MAX_GROUP_COMMIT: u32 = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_url_or_an_embedded_url_selects_the_embedded_store() {
        let with_url = |url: &str| QueueConfig {
            url: url.into(),
            ..QueueConfig::default()
        };
        assert_eq!(QueueConfig::default().backend(), QueueBackend::Embedded);
        assert_eq!(QueueConfig::default().validate(), Ok(()));
        assert_eq!(
            with_url("embedded:///var/lib/tern").backend(),
            QueueBackend::Embedded
        );
        assert_eq!(with_url("embedded:///var/lib/tern").validate(), Ok(()));
        assert_eq!(with_url("redis://h:1").backend(), QueueBackend::Redis);
        assert!(matches!(with_url("embedded://").validate(), Err((key, _)) if key == "url"));
        assert!(matches!(with_url("embedded:///").validate(), Err((key, _)) if key == "url"));
        for root in [
            "embedded:////",
            "embedded:///.",
            "embedded:///./..",
            "embedded:///../",
        ] {
            assert!(
                matches!(with_url(root).validate(), Err((key, _)) if key == "url"),
                "{root}"
            );
        }
        assert_eq!(with_url("embedded://tern-data").validate(), Ok(()));
        let mut replicated = with_url("embedded:///var/lib/tern");
        replicated.wait_replicas = 1;
        assert!(matches!(replicated.validate(), Err((key, _)) if key == "wait_replicas"));
        assert!(matches!(with_url("mysql://h").validate(), Err((key, _)) if key == "url"));
        let clustered = QueueConfig {
            cluster: true,
            ..QueueConfig::default()
        };
        assert!(matches!(clustered.validate(), Err((key, _)) if key == "cluster"));
    }

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

    #[test]
    fn completions_linger_a_millisecond_by_default_and_at_most_100ms() {
        let q = QueueConfig::default();
        assert_eq!(q.completion_linger.get(), std::time::Duration::from_millis(1));
        let q: QueueConfig = toml::from_str(r#"completion_linger = "0s""#).unwrap();
        assert_eq!(q.validate(), Ok(()));
        assert!(q.completion_linger.get().is_zero());
        let q = QueueConfig {
            completion_linger: HumanDuration(MAX_COMPLETION_LINGER + std::time::Duration::from_millis(1)),
            ..QueueConfig::default()
        };
        assert!(matches!(q.validate(), Err((key, _)) if key == "completion_linger"));
    }
}
