//! One module per operation, beside its Lua function(s) in the library (`claim.rs` and `claim.lua`, ...).
//!
//! Each module owns the typed arguments it sends (a builder whose output is the function's argument list
//! after the calling convention's: `args[5]` on, see `shared.lua`), the typed reply it reads back (a decoder
//! from a [`redis::Value`]), unit tests of both, and the [`RedisQueue`](super::RedisQueue) method that runs
//! the operation. `events` and `stats` read with plain commands and have no Lua.

pub(crate) mod admin;
pub(crate) mod claim;
pub(crate) mod complete;
pub(crate) mod enqueue;
pub(crate) mod events;
pub(crate) mod extend;
pub(crate) mod history;
pub(crate) mod hold;
pub(crate) mod read;
pub(crate) mod reap;
pub(crate) mod release;
pub(crate) mod routes;
pub(crate) mod stats;
pub(crate) mod sts;
pub(crate) mod tls_report;
pub(crate) mod trace;

use redis::Value;

use super::codec;
use crate::QueueError;

/// A function argument.
pub(crate) type Arg = Vec<u8>;

/// A function argument from anything printable (numbers, ids).
pub(crate) fn arg(v: impl ToString) -> Arg {
    v.to_string().into_bytes()
}

/// The status word a function answers first (`{"ok", ...}`, `{"notowner"}`, ...).
pub(crate) fn status(v: &Value) -> String {
    codec::items(v).first().and_then(codec::text).unwrap_or_default()
}

/// A non-negative count from a reply (a negative or missing one reads as 0).
pub(crate) fn count(v: Option<&Value>) -> u64 {
    v.and_then(codec::int).unwrap_or(0).max(0) as u64
}

/// The error of a reply that is not what the function answers.
pub(crate) fn unexpected(what: &str, v: &Value) -> QueueError {
    QueueError::Backend(format!("unexpected {what} reply {v:?}"))
}

#[cfg(test)]
pub(crate) mod test_values {
    //! Reply values for the decoders' tests.
    use redis::Value;

    pub(crate) fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    pub(crate) fn array(items: Vec<Value>) -> Value {
        Value::Array(items)
    }

    /// An argument list as text, for comparing encodings.
    pub(crate) fn texts(args: &[Vec<u8>]) -> Vec<String> {
        args.iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }
}
