//! tern's Redis Functions library: the Lua code of every operation, loaded into Redis once and run with
//! `FCALL`.
//!
//! The library is `ops/shared.lua` (helpers, defined once per load rather than on every call as a script's
//! would be) followed by each operation's file (`ops/<operation>.lua`, each in its own `do ... end` block so
//! that its locals do not count against Lua's limit of 200 per chunk), under a header that names it.
//!
//! **Version.** The library's name is `tern_<version>`, and each function's `tern_<version>_<operation>`,
//! where the version is the FNV-1a hash of the library's code, computed at build time: any change of the
//! code is a new version, with nothing to bump by hand. A node that lacks this version (a Redis restarted
//! without persistence, a failover to a node that never had it, a `FUNCTION FLUSH`, or a node holding only
//! another tern version's library) answers `ERR Function not found`. The call's node then gets the library
//! with `FUNCTION LOAD REPLACE` and the call is repeated once ([`FunctionLibrary::reload`]); no round trip is
//! spent on checking versions before calls. Versions live side by side, so nodes of two tern versions
//! (during a rolling upgrade) never undo each other's library; [`load_everywhere`] (when a queue starts)
//! loads this version on every master and leaves other versions' libraries in place (it logs them: an
//! operator removes them with `FUNCTION DELETE` once no process of that version runs). Removing them at start
//! would make every process of the other version reload on its next call, each time a process starts.
//!
//! Redis Functions need Redis 7.0 or later; [`load_everywhere`] checks every master's `INFO` first.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::Value;
use redis::cluster_routing::{Route, SlotAddr};

use super::codec;
use super::conn::{Conn, redis_error};
use super::keys::fnv1a;
use crate::QueueError;

/// The library's code after its header.
const BODY: &str = concat!(
    include_str!("ops/shared.lua"),
    "do\n",
    include_str!("ops/enqueue.lua"),
    "end\ndo\n",
    include_str!("ops/claim.lua"),
    "end\ndo\n",
    include_str!("ops/complete.lua"),
    "end\ndo\n",
    include_str!("ops/extend.lua"),
    "end\ndo\n",
    include_str!("ops/release.lua"),
    "end\ndo\n",
    include_str!("ops/hold.lua"),
    "end\ndo\n",
    include_str!("ops/reap.lua"),
    "end\ndo\n",
    include_str!("ops/admin.lua"),
    "end\ndo\n",
    include_str!("ops/read.lua"),
    "end\ndo\n",
    include_str!("ops/sts.lua"),
    "end\ndo\n",
    include_str!("ops/tls_report.lua"),
    "end\n",
);

/// The library's version: the FNV-1a hash of its code.
const VERSION: u32 = fnv1a(BODY.as_bytes());

/// The oldest Redis that has Functions.
const OLDEST_REDIS_MAJOR: u32 = 7;

/// The library's name, `tern_<version>` (8 hex digits).
static NAME: LazyLock<String> = LazyLock::new(|| format!("tern_{VERSION:08x}"));

/// The library's source as `FUNCTION LOAD` takes it.
static SOURCE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "#!lua name={name}\nlocal FUNCTION_PREFIX = '{name}_'\n{BODY}",
        name = *NAME
    )
});

/// The library's functions (one or more per operation module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Function {
    Materialise,
    Intake,
    IntakeDone,
    Claim,
    Complete,
    Extend,
    Release,
    Hold,
    Unhold,
    Reap,
    Admin,
    Suspend,
    Resume,
    Read,
    StsPut,
    StsError,
    StsEvict,
    StsList,
    StsLock,
    StsUnlock,
    TlsRptAdd,
    TlsRptLock,
}

impl Function {
    /// Every function of the library.
    pub(crate) const ALL: [Function; 22] = [
        Function::Materialise,
        Function::Intake,
        Function::IntakeDone,
        Function::Claim,
        Function::Complete,
        Function::Extend,
        Function::Release,
        Function::Hold,
        Function::Unhold,
        Function::Reap,
        Function::Admin,
        Function::Suspend,
        Function::Resume,
        Function::Read,
        Function::StsPut,
        Function::StsError,
        Function::StsEvict,
        Function::StsList,
        Function::StsLock,
        Function::StsUnlock,
        Function::TlsRptAdd,
        Function::TlsRptLock,
    ];

    /// The operation's name, as the Lua code registers it.
    fn operation(self) -> &'static str {
        match self {
            Function::Materialise => "materialise",
            Function::Intake => "intake",
            Function::IntakeDone => "intake_done",
            Function::Claim => "claim",
            Function::Complete => "complete",
            Function::Extend => "extend",
            Function::Release => "release",
            Function::Hold => "hold",
            Function::Unhold => "unhold",
            Function::Reap => "reap",
            Function::Admin => "admin",
            Function::Suspend => "suspend",
            Function::Resume => "resume",
            Function::Read => "read",
            Function::StsPut => "sts_put",
            Function::StsError => "sts_error",
            Function::StsEvict => "sts_evict",
            Function::StsList => "sts_list",
            Function::StsLock => "sts_lock",
            Function::StsUnlock => "sts_unlock",
            Function::TlsRptAdd => "tls_rpt_add",
            Function::TlsRptLock => "tls_rpt_lock",
        }
    }

    /// The function's name in Redis: `tern_<version>_<operation>`.
    pub(crate) fn name(self) -> &'static str {
        // In the order of `ALL`, which is the order of the variants.
        static NAMES: LazyLock<Vec<String>> = LazyLock::new(|| {
            Function::ALL
                .iter()
                .map(|f| format!("{}_{}", *NAME, f.operation()))
                .collect()
        });
        NAMES.get(self as usize).map_or("", String::as_str)
    }
}

/// The library's name in Redis (`FUNCTION LIST` shows it).
pub(crate) fn library_name() -> &'static str {
    &NAME
}

/// Whether a reply is Redis's answer to an `FCALL` of a function it does not have.
pub(crate) fn is_function_missing(v: &Value) -> bool {
    match v {
        Value::ServerError(e) => {
            e.code() == "ERR" && e.details().is_some_and(|d| d.starts_with("Function not found"))
        }
        _ => false,
    }
}

/// Reloads the library on the node of a call that found it missing: one reload at a time, and none for a
/// shard when another call reloaded it for that shard since this one was sent (many calls in flight find it
/// missing at once after a restart; compiling the library blocks Redis for a moment, so once is enough).
pub(crate) struct FunctionLibrary {
    /// Per shard: how many reloads were done for calls on it.
    reloads: Vec<AtomicU64>,
    reloading: tokio::sync::Mutex<()>,
}

impl FunctionLibrary {
    pub(crate) fn new(shards: u16) -> FunctionLibrary {
        FunctionLibrary {
            reloads: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The shard's reload count, to read before sending a call and give to [`FunctionLibrary::reload`].
    pub(crate) fn reloads(&self, shard: u16) -> u64 {
        self.reloads
            .get(usize::from(shard))
            .map_or(0, |n| n.load(Ordering::Acquire))
    }

    /// Loads the library (`FUNCTION LOAD REPLACE`) on the master of `shard_key`'s slot, after a call on it
    /// sent when the shard's reload count was `seen` found a function missing. Nothing is loaded when
    /// another call reloaded it since. A Redis that cannot be reached is [`QueueError::Unavailable`]; a
    /// library Redis refuses is a [`QueueError::Backend`] error.
    pub(crate) async fn reload(
        &self,
        conn: &mut Conn,
        shard: u16,
        shard_key: &str,
        seen: u64,
    ) -> Result<(), QueueError> {
        let _one_at_a_time = self.reloading.lock().await;
        if self.reloads(shard) != seen {
            return Ok(());
        }
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(SOURCE.as_str());
        let reply = conn
            .on_master_of(Route::with_key(shard_key, SlotAddr::Master), cmd)
            .await
            .map_err(redis_error)?;
        if let Value::ServerError(e) = reply {
            return Err(load_error("the shard's node", e.into()));
        }
        if let Some(n) = self.reloads.get(usize::from(shard)) {
            n.fetch_add(1, Ordering::AcqRel);
        }
        tracing::info!(
            library = library_name(),
            shard,
            "loaded the queue's function library again"
        );
        Ok(())
    }
}

/// The error of a failed `FUNCTION LOAD` on `node`: an outage, or a clear backend error.
fn load_error(node: &str, e: redis::RedisError) -> QueueError {
    match redis_error(e) {
        QueueError::Backend(message) => QueueError::Backend(format!(
            "loading the queue's function library {} on {node} failed: {message}",
            library_name()
        )),
        other => other,
    }
}

/// Checks every master's Redis version, loads the library on each (`FUNCTION LOAD REPLACE`: whatever a node
/// holds under this version's name, this build's code is what runs), and logs the libraries of other tern
/// versions, which it leaves in place.
pub(crate) async fn load_everywhere(conn: &mut Conn) -> Result<(), QueueError> {
    let mut info = redis::cmd("INFO");
    info.arg("server");
    for (node, reply) in conn.on_every_master(info).await.map_err(redis_error)? {
        match reply {
            Value::ServerError(e) => return Err(redis_error(e.into())),
            other => {
                let text = codec::text(&other).unwrap_or_default();
                check_redis_version(&text)
                    .map_err(|e| QueueError::Backend(format!("redis at {node}: {e}")))?;
            }
        }
    }
    let mut load = redis::cmd("FUNCTION");
    load.arg("LOAD").arg("REPLACE").arg(SOURCE.as_str());
    for (node, reply) in conn.on_every_master(load).await.map_err(redis_error)? {
        if let Value::ServerError(e) = reply {
            return Err(load_error(&node, e.into()));
        }
    }
    let mut list = redis::cmd("FUNCTION");
    list.arg("LIST").arg("LIBRARYNAME").arg("tern_*");
    for (node, reply) in conn.on_every_master(list).await.map_err(redis_error)? {
        let others = stale_libraries(&reply);
        if !others.is_empty() {
            // Left in place: a process of that version may still be running (a rolling upgrade, an autoscaler
            // starting pods of both versions), and removing its library would only make it load it again.
            tracing::info!(
                node = %node,
                libraries = %others.join(","),
                "other tern versions' function libraries are loaded; remove them with FUNCTION DELETE once no \
                 process of those versions runs"
            );
        }
    }
    Ok(())
}

/// The libraries of other tern versions in a `FUNCTION LIST` reply: named `tern_` and 8 hex digits, and not
/// this version's.
fn stale_libraries(reply: &Value) -> Vec<String> {
    codec::items(reply)
        .iter()
        .filter_map(|library| codec::fields(library).remove("library_name"))
        .filter(|name| {
            name.strip_prefix("tern_")
                .is_some_and(|v| v.len() == 8 && v.bytes().all(|c| c.is_ascii_hexdigit()))
                && name != library_name()
        })
        .collect()
}

/// Checks the `redis_version` of an `INFO` answer: Redis 7.0 or later (Functions). An answer without one (a
/// proxy, a fork that does not say) passes: loading the library then tells.
pub(crate) fn check_redis_version(info: &str) -> Result<(), String> {
    let Some(version) = info.lines().find_map(|l| l.trim().strip_prefix("redis_version:")) else {
        return Ok(());
    };
    let major = version.split('.').next().and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(m) if m >= OLDEST_REDIS_MAJOR => Ok(()),
        _ => Err(format!(
            "Redis {version} has no Functions: tern's queue needs Redis {OLDEST_REDIS_MAJOR}.0 or later"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_7_and_later_pass_the_version_check_and_older_ones_get_a_clear_error() {
        let info = |v: &str| {
            format!("# Server\r\nredis_version:{v}\r\nredis_git_sha1:00000000\r\nredis_mode:standalone\r\n")
        };
        assert_eq!(check_redis_version(&info("7.0.15")), Ok(()));
        assert_eq!(check_redis_version(&info("7.2.4")), Ok(()));
        assert_eq!(check_redis_version(&info("8.0.0")), Ok(()));
        let old = check_redis_version(&info("6.2.14")).unwrap_err();
        assert!(old.contains("6.2.14") && old.contains("7.0 or later"), "{old}");
        assert!(check_redis_version(&info("5.0.7")).is_err());
        assert!(check_redis_version(&info("garbage")).is_err());
        assert_eq!(check_redis_version("# Server\r\nvalkey_something:1\r\n"), Ok(()));
    }

    #[test]
    fn the_library_is_named_after_its_version_and_registers_every_function() {
        let name = library_name();
        assert_eq!(name, format!("tern_{VERSION:08x}"));
        assert!(SOURCE.starts_with(&format!("#!lua name={name}\n")));
        for f in Function::ALL {
            assert_eq!(f.name(), format!("{name}_{}", f.operation()));
            let registration = format!("register('{}', ", f.operation());
            assert_eq!(
                SOURCE.matches(&registration).count(),
                1,
                "{} must be registered once",
                f.operation()
            );
        }
        assert_eq!(SOURCE.matches("register('").count(), Function::ALL.len());
    }

    #[test]
    fn only_a_function_not_found_error_asks_for_a_reload() {
        let missing = parse_error(b"-ERR Function not found\r\n");
        assert!(is_function_missing(&missing));
        assert!(!is_function_missing(&parse_error(
            b"-ERR unknown command 'FCALL'\r\n"
        )));
        assert!(!is_function_missing(&parse_error(
            b"-NOSCRIPT No matching script\r\n"
        )));
        assert!(!is_function_missing(&Value::Okay));
    }

    fn parse_error(resp: &[u8]) -> Value {
        redis::parse_redis_value(resp).expect("a RESP error reply")
    }

    #[test]
    fn other_tern_versions_libraries_are_stale_and_nothing_else_is() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let library = |name: &str| {
            Value::Array(vec![
                b("library_name"),
                b(name),
                b("engine"),
                b("LUA"),
                b("functions"),
                Value::Array(vec![]),
            ])
        };
        let reply = Value::Array(vec![
            library(library_name()),
            library("tern_0000abcd"),
            library("tern_other"),
            library("ternx_0000abcd"),
        ]);
        assert_eq!(stale_libraries(&reply), vec!["tern_0000abcd".to_string()]);
    }
}
