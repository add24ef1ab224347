//! Key names, the domain-to-shard map, and the one description of every key and field the queue stores.
//!
//! # Shards
//!
//! Every key of shard `n` starts with `{<prefix>:sNN}:` (for example `{tern:s07}:due:example.com`): the part
//! in braces is the Redis Cluster hash tag, so all keys of a shard live in one slot and one function call can
//! touch them all atomically, while the shards spread over the cluster's masters. Domains map to shards by
//! 32-bit FNV-1a of the lower-cased domain, modulo the shard count. FNV-1a is fixed by its definition (offset
//! basis 2166136261, prime 16777619), so the map is stable across tern versions and machines; changing
//! `shards` (or the prefix) on a live queue strands the old keys.
//!
//! # Keys of a shard
//!
//! Stored names are short (Redis compares and hashes them on every access); this table is what they mean.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `jd:<job id>` | string | the job's data: a header line (below), a newline, the envelope (JSON, one line), and for a message's only job (`solo`) a newline and the message itself. Written by the client with `SET ... NX PX` before the `materialise` call that keeps it (`PERSIST`); a record that still has its TTL is no job |
//! | `job:<job id>` | hash | the job in the hash form (fields below), once it leaves the string form |
//! | `body:<msg id>` | string | the message, once per message and shard, for messages with several jobs only |
//! | `msg:<msg id>` | hash | `live` (jobs of the message left in this shard), `ids` (its job ids, space-separated), `sender`, `created`; messages with several jobs only |
//! | `due:<schedule>` | zset | the schedule's waiting jobs by due time (ms); a schedule is a domain, or `#bounce` for admin bounces |
//! | `held:<domain>` | zset | the domain's held jobs (on no schedule until released), by when they were held (ms) |
//! | `domains` | zset | the domain index: each schedule with waiting jobs, by its earliest due time (a domain at its limit pushed back; suspended domains left out) |
//! | `inflight` | zset | jobs in flight by lease deadline (what the reaper scans; the lease of a job in the string form) |
//! | `slots:<domain>` | zset | the domain's live claims (member: the claim id) and holds of idle connections (`h:<claim id>/<waiter>`, the waiter being the holding worker's queue handle) by deadline: its concurrency |
//! | `claims` | hash | claim id → jobs of the claim still in flight (the slot is freed at 0) |
//! | `cinfo` | hash | claim id → `<owner>\t<schedule>`: the claim's owner and the schedule it took its jobs from |
//! | `conc` | hash | domain → concurrency override |
//! | `susp`, `suspu` | hash, zset | domain → suspension (JSON: reason, since, until); domain → expiry time |
//! | `jobs` | zset | every job id (score 0, lexical order = time order of ULIDs), for listing |
//! | `dlive` | hash | domain → live jobs |
//! | `cnt` | hash | jobs by state: `queued`, `deferred`, `inflight`, `held` |
//! | `stats`, `min:<minute>` | hash | counters since the queue was made, and per-minute counters kept two hours (`<minute>`: Unix ms / 60000) |
//! | `events` | stream | the shard's events, capped with `XADD MAXLEN ~`; an entry holds one event or all events of one batched call (fields below) |
//! | `hist:<msg id>` | string | the message's history in this shard: a record per event of its jobs here (below), one after another in the order written; a job's `queued` record comes with its first change (until then its `jd:` record in the string form stands for it). Its TTL is the history retention (`queue.history`), set again by every write (`SET NX PX`, else `APPEND` and `PEXPIRE`). Not written with a retention of zero |
//! | `hidx` | zset | the shard's history index: each message with jobs enqueued here (member: its id), scored by the time in its id (ULID ms); trimmed by the reaper of messages older than the retention (`ops/history.rs`). Not written with a retention of zero |
//! | `intake:<msg id>`, `intakes` | hash, zset | intake records (`p` payload JSON, `b` body, `at` time) of enqueues that span shards, and their age |
//! | `badintakes` | zset | intake records the reaper could not read, kept for an operator |
//! | `mat:<msg id>` | string | "this shard materialised that intake" marker, 24 h TTL |
//! | `seen:<bucket>` | set | ids of the fast-path messages materialised in this shard whose id's time (ULID ms) div 10000 is `<bucket>`: a repeat of one of them makes nothing. Kept for the repeat window and a call's time after the last call that added to it (`repeat_window`) |
//! | `wake` | list | wake tokens (`1`), at most 8: each wakes one worker blocked on the list (`BLPOP`, `redis/wake.rs`) |
//! | `wake:<waiter>` | list | wake tokens for one worker's queue handle (its waiter id, a ULID), at most 8: new work for a domain its idle connection holds. 10 min TTL from the last token |
//! | `idem:<key>` | string | idempotency key → first message id, 24 h TTL (shard chosen by hashing the key) |
//! | `sts:<domain>` | hash | the MTA-STS policy cache entry of a policy domain (in the domain's shard; fields below), with a TTL a day past the later of its expiry and its last write (`ops/sts.rs`) |
//! | `stsidx` | zset | the shard's `sts:` entries for listing: every domain with score 0, walked with `ZRANGEBYLEX`; a member whose entry expired is dropped by the next listing that meets it |
//! | `stslock:<domain>` | string | the domain's policy refresh lock: its owner's name, with the lock's TTL (`SET NX PX`) |
//! | `tlsrpt:<day>:<domain>` | hash | the TLS-RPT counters of a policy domain on a UTC day (`YYYY-MM-DD`), in the domain's shard: field = a session key's JSON (`TlsSessionKey`), value = its count (`HINCRBY`); expires a week after the day ends (`ops/tls_report.rs`) |
//! | `tlsrptdom:<day>` | set | the shard's policy domains with TLS-RPT counters that day; same expiry |
//! | `tlsrptsent:<day>:<domain>` | string | the domain's report for the day was sent (when, ms; `SET NX`); same expiry |
//! | `tlsrptlock:<day>` | string | the day's report lock, in the shard the day's text hashes to: its owner's name, with the lock's TTL |
//! | `routes` | hash | shard 0 only: operators' domain routes, domain (lower-cased) → the `Route` as JSON; a route past its `until_ms` is left out by readers and deleted by the first that meets it (`ops/routes.rs`) |
//! | `tracers` | hash | shard 0 only: the open traces, trace id (a ULID) → JSON `{"filter", "until_ms"}`, written again every 2 s while the trace is open, deleted when it closes; one past its `until_ms` is ignored and deleted by the next reader (`ops/trace.rs`). Beside it, `trace` is the pub/sub channel that carries the records (JSON arrays), no key |
//!
//! # A job's header line (the string form)
//!
//! A job that has never been tried is its data string alone: the header is the whole record. The first
//! byte is the **form**, the next 26 the **claim token** (fixed width, so that `SETRANGE` changes both in
//! place), then tab-separated: domain, recipient count, first-queued ms, due ms, sender (lower-cased), tags
//! (JSON), trace context, solo (`1` or `0`), and the recipients' addresses. None of these can hold a tab or
//! a newline. Forms:
//!
//! | form | meaning |
//! |---|---|
//! | `q` | waiting, never tried; the token is `-` × 26 |
//! | `i` | in flight for the claim whose id is the token: its owner and schedule are the claim's `cinfo` record, its lease deadline its score in `inflight` |
//! | `h` | the hash `job:<job id>` holds the job (the header's fields stay true, except the due time) |
//!
//! A claim, a heartbeat, and a completion that ends the job keep the string form; anything else (a
//! deferral, a release, a lease expiry, an operator action) first turns the job into the hash form
//! (`promote` in `ops/shared.lua`).
//!
//! # Fields of a job hash (`job:<job id>`)
//!
//! All values are text. Read views give both forms as these fields.
//!
//! | field | meaning |
//! |---|---|
//! | `id` | not stored (the key names the job, and the job id `<msg>.<n>` its message); read views add it |
//! | `env` | not stored: the envelope in the job's data string; read views add it |
//! | `dom` | destination domain (lower-cased) |
//! | `sched` | set by an admin bounce to `#bounce`, the schedule the job then waits on; absent: its domain's |
//! | `n`, `ra:<i>`, `rs:<i>`, `rr:<i>` | recipient count; per recipient (from 0): address, state `p` (pending), `d` (delivered) or `f` (failed), last reply |
//! | `solo` | `1` when the job is its message's only job: `jd:<job id>` holds the message (no `msg:`/`body:` keys) |
//! | `tags`, `trace` | tags (JSON); opaque trace context |
//! | `state` | `queued`, `deferred`, `inflight` or `held` (on no schedule: in `held:<domain>`) |
//! | `att`, `first`, `next`, `err` | finished attempts, first-queued ms, due ms, last error |
//! | `sender` | lower-cased sender address, for listing |
//! | `bounce` | `1` after an admin bounce (absent before) |
//! | `breason` | the operator's reason given with the admin bounce (absent: none) |
//! | `owner`, `tok`, `lease`, `cdom` | while in flight: owner, claim token (the claim id), lease deadline ms, the schedule it was claimed from |
//! | `donetok` | `c:<token>` or `r:<token>`: the last claim that completed or released the job (a repeated call is recognised by it) |
//!
//! # Fields of an MTA-STS cache entry (`sts:<domain>`)
//!
//! `p` the policy (opaque text; empty or absent: none), `id` its id, `f` fetched at (ms), `x` expires at (ms),
//! `e` the last fetch error and `ea` its time (ms), both absent when there is none.
//!
//! # Fields of an event (`events` stream entries)
//!
//! `kind` (each event of an entry starts with it), `job`, `msg` (left out when the job id names it),
//! `rcpts` (newline-separated), `ts` (ms), `dom`, `att`, `tags`, `reply`, `mx`, `ip`, `tls`, `bounce`,
//! `owner`, `dsn` (the id of the DSN queued for a failed or expired event's recipients; absent: none). An
//! event after the first of an entry leaves out `ts` and the fields `dom`, `att`, `tags`, `reply`, `mx`,
//! `ip`, `tls` and `bounce` when they equal the previous event's (an empty value stands for none); the first
//! event leaves out `att` when 0 and `tags` when empty.
//!
//! # A record of a message's history (`hist:<msg id>`)
//!
//! One event: its fields, each ended by the ASCII unit separator (`\x1f`), in this order: kind, time (ms; a
//! `queued` record's is when the job was queued, its header's first-queued time), the job's number in the
//! message (the `n` of `<msg id>.<n>`), domain, attempt (empty for 0), recipients (newline-separated), MX,
//! IP, TLS, DSN id, sender and tags (JSON; both on `queued` records only, the sender lower-cased and empty
//! for `<>`; empty on other records, whose tags are the message's); then the reply's length in bytes, a
//! separator, and the reply (empty: none), which may hold any byte. Records follow each other with nothing
//! between them. No field but the reply can hold the separator: the client replaces it in the attempt
//! details (`ops/complete.rs`), and addresses, domains, numbers and JSON have none.

/// The key namer of one queue.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
    shards: u16,
}

/// 32-bit FNV-1a (a `const fn`: the function library's version is computed with it at build time).
pub(crate) const fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut at = 0;
    while at < bytes.len() {
        hash ^= bytes[at] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        at += 1;
    }
    hash
}

impl Keys {
    pub(crate) fn new(prefix: &str, shards: u16) -> Self {
        Keys {
            prefix: prefix.to_string(),
            shards: shards.max(1),
        }
    }

    pub(crate) fn shards(&self) -> u16 {
        self.shards
    }

    /// The shard of a destination domain (or of the bounce schedule's jobs: their own domain's shard).
    pub(crate) fn shard_of_domain(&self, domain: &str) -> u16 {
        (fnv1a(domain.to_ascii_lowercase().as_bytes()) % u32::from(self.shards)) as u16
    }

    /// The shard that holds an idempotency key (and the intake record of its message).
    pub(crate) fn shard_of_idempotency_key(&self, key: &str) -> u16 {
        (fnv1a(key.as_bytes()) % u32::from(self.shards)) as u16
    }

    /// The key prefix of a shard, hash tag included: `{tern:s07}:`.
    pub(crate) fn tag(&self, shard: u16) -> String {
        format!("{{{}:s{:02}}}:", self.prefix, shard)
    }

    /// A key of a shard.
    pub(crate) fn key(&self, shard: u16, name: &str) -> String {
        format!("{}{}", self.tag(shard), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn domains_map_to_stable_case_insensitive_shards() {
        let k = Keys::new("tern", 16);
        assert_eq!(k.shard_of_domain("Example.COM"), k.shard_of_domain("example.com"));
        assert_eq!(
            k.shard_of_domain("example.com"),
            (fnv1a(b"example.com") % 16) as u16
        );
        assert_eq!(k.tag(7), "{tern:s07}:");
        assert_eq!(k.key(7, "domains"), "{tern:s07}:domains");
        let used: std::collections::HashSet<u16> = (0..200)
            .map(|i| k.shard_of_domain(&format!("d{i}.test")))
            .collect();
        assert_eq!(used.len(), 16, "200 domains should touch every shard");
    }
}
