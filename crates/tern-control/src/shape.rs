//! The queue's shape (like Postfix's `qshape`): jobs by destination domain and age bucket. Pure logic, no I/O.

use std::collections::HashMap;

/// Upper bounds of the age buckets in minutes; the last bucket (`320m+`) has none.
const BOUNDS_MIN: [u64; 7] = [5, 10, 20, 40, 80, 160, 320];

/// How many buckets there are.
pub const BUCKETS: usize = BOUNDS_MIN.len() + 1;

/// The bucket labels, youngest first.
pub fn labels() -> Vec<String> {
    let mut out = Vec::with_capacity(BUCKETS);
    let mut lower = 0;
    for upper in BOUNDS_MIN {
        out.push(format!("{lower}-{upper}m"));
        lower = upper;
    }
    out.push(format!("{lower}m+"));
    out
}

/// The bucket of a job of age `age_ms`: `[0, 5m)` is 0, `[5m, 10m)` is 1, ..., `320m` and older is 7.
pub fn bucket_of(age_ms: u64) -> usize {
    let minutes_ms = |m: u64| m * 60_000;
    BOUNDS_MIN
        .iter()
        .position(|&b| age_ms < minutes_ms(b))
        .unwrap_or(BUCKETS - 1)
}

/// One row: a domain's jobs per bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The domain, or `TOTAL`.
    pub domain: String,
    /// Jobs in all buckets.
    pub total: u64,
    /// Jobs per bucket.
    pub counts: [u64; BUCKETS],
}

impl Row {
    fn new(domain: &str) -> Row {
        Row {
            domain: domain.to_string(),
            total: 0,
            counts: [0; BUCKETS],
        }
    }

    fn add(&mut self, bucket: usize) {
        self.total += 1;
        if let Some(c) = self.counts.get_mut(bucket) {
            *c += 1;
        }
    }
}

/// Accumulates jobs into a shape.
#[derive(Clone, Debug, Default)]
pub struct Shape {
    rows: HashMap<String, Row>,
    total: Option<Row>,
}

impl Shape {
    /// An empty shape.
    pub fn new() -> Shape {
        Shape::default()
    }

    /// Counts one job of `domain` first queued at `first_queued_ms`, seen at `now_ms`.
    pub fn add(&mut self, domain: &str, first_queued_ms: u64, now_ms: u64) {
        let bucket = bucket_of(now_ms.saturating_sub(first_queued_ms));
        self.rows
            .entry(domain.to_string())
            .or_insert_with(|| Row::new(domain))
            .add(bucket);
        self.total.get_or_insert_with(|| Row::new("TOTAL")).add(bucket);
    }

    /// The `top` deepest domains (ties by name), and the total row over every domain.
    pub fn finish(self, top: usize) -> (Vec<Row>, Row) {
        let mut rows: Vec<Row> = self.rows.into_values().collect();
        rows.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.domain.cmp(&b.domain)));
        rows.truncate(top);
        (rows, self.total.unwrap_or_else(|| Row::new("TOTAL")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn labels_are_the_qshape_buckets() {
        assert_eq!(
            labels(),
            [
                "0-5m", "5-10m", "10-20m", "20-40m", "40-80m", "80-160m", "160-320m", "320m+"
            ]
        );
    }

    #[test]
    fn bucket_edges() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(5 * MIN - 1), 0);
        assert_eq!(bucket_of(5 * MIN), 1);
        assert_eq!(bucket_of(10 * MIN), 2);
        assert_eq!(bucket_of(39 * MIN), 3);
        assert_eq!(bucket_of(40 * MIN), 4);
        assert_eq!(bucket_of(159 * MIN), 5);
        assert_eq!(bucket_of(160 * MIN), 6);
        assert_eq!(bucket_of(320 * MIN), 7);
        assert_eq!(bucket_of(u64::MAX), 7);
    }

    #[test]
    fn rows_are_deepest_first_with_a_total() {
        let now = 1_000 * MIN;
        let mut s = Shape::new();
        s.add("a.example", now, now);
        s.add("b.example", now - 7 * MIN, now);
        s.add("b.example", now - 400 * MIN, now);
        s.add("c.example", now + MIN, now); // clock skew: counts as new
        let (rows, total) = s.finish(2);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].domain, "b.example");
        assert_eq!(rows[0].counts, [0, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(rows[1].domain, "a.example");
        assert_eq!(total.total, 4);
        assert_eq!(total.counts, [2, 1, 0, 0, 0, 0, 0, 1]);
    }
}
