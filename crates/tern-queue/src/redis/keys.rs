//! Key names and the domain-to-shard map.
//!
//! Every key of shard `n` starts with `{<prefix>:sNN}:` (for example `{tern:s07}:due:example.com`): the part in
//! braces is the Redis Cluster hash tag, so all keys of a shard live in one slot and one script can touch
//! them all. Domains map to shards by 32-bit FNV-1a of the lower-cased domain, modulo the shard count. FNV-1a
//! is fixed by its definition (offset basis 2166136261, prime 16777619), so the map is stable across tern
//! versions and machines; changing `shards` (or the prefix) on a live queue strands the old keys.

/// The key namer of one queue.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
    shards: u16,
}

/// 32-bit FNV-1a.
pub(crate) fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
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
