//! Policy discovery: a TXT lookup result and, when it names a policy, a fetch, combined into what the
//! cache layer needs to decide (RFC 8461 §3.1 to §3.3 and §5).
//!
//! Discovery decides nothing about caching. RFC 8461 leaves that to the cache: when no live policy can be
//! discovered (the TXT record vanished, the lookup failed, the fetch failed) an unexpired cached policy
//! still applies, and only without one does the domain count as having no policy.

use async_trait::async_trait;

use crate::fetch::{FetchError, PolicyFetcher};
use crate::policy::Policy;
use crate::tlsrpt::TlsRptResultType;
use crate::txt::{TxtError, select_record};

/// What the caller's DNS resolver answered for TXT `_mta-sts.<domain>` ([`crate::txt::record_name`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxtLookup {
    /// The TXT records at the name, each one's character strings concatenated.
    Records(Vec<String>),
    /// The name does not exist or has no TXT records (NXDOMAIN, NODATA).
    NotFound,
    /// The lookup itself failed (SERVFAIL, timeout): nothing is known about the domain.
    Failed(String),
}

/// Where discovery fetches policies from: [`PolicyFetcher`] in production.
#[async_trait]
pub trait PolicySource: Send + Sync {
    /// Fetches and parses the policy of `domain`.
    async fn fetch_policy(&self, domain: &str) -> Result<Policy, FetchError>;
}

#[async_trait]
impl PolicySource for PolicyFetcher {
    async fn fetch_policy(&self, domain: &str) -> Result<Policy, FetchError> {
        self.fetch(domain).await
    }
}

/// The outcome of discovering a domain's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// The TXT lookup failed; nothing was fetched. A cached policy, if unexpired, still applies.
    LookupFailed(String),
    /// The domain announces no policy now: no MTA-STS TXT record, several, or one that does not parse.
    /// Nothing was fetched. A cached policy, if unexpired, still applies; without one there is no policy.
    NoRecord(TxtError),
    /// The record's id is the one the caller already holds: its cached policy is current and nothing was
    /// fetched.
    Unchanged {
        /// The policy id.
        id: String,
    },
    /// The policy was fetched now.
    Fetched {
        /// The policy id from the TXT record.
        id: String,
        /// The policy (its mode may be `none`).
        policy: Policy,
    },
    /// The record announces a policy but fetching it failed. A cached policy, if unexpired, still
    /// applies; without one there is no policy.
    FetchFailed {
        /// The policy id from the TXT record.
        id: String,
        /// Why the fetch failed.
        error: FetchError,
    },
}

impl Discovery {
    /// The policy id the TXT record announced, when there was a valid record.
    pub fn id(&self) -> Option<&str> {
        match self {
            Discovery::Unchanged { id }
            | Discovery::Fetched { id, .. }
            | Discovery::FetchFailed { id, .. } => Some(id),
            Discovery::LookupFailed(_) | Discovery::NoRecord(_) => None,
        }
    }

    /// The policy fetched now, if one was.
    pub fn policy(&self) -> Option<&Policy> {
        match self {
            Discovery::Fetched { policy, .. } => Some(policy),
            _ => None,
        }
    }

    /// The TLS-RPT failure to record for the policy domain, if discovery failed in a reportable way
    /// (only a failed fetch is: a domain without a valid record has no policy to report on).
    pub fn tls_rpt_failure(&self) -> Option<TlsRptResultType> {
        match self {
            Discovery::FetchFailed { error, .. } => Some(error.result_type()),
            _ => None,
        }
    }
}

/// Discovers `domain`'s policy from its TXT lookup result, fetching from `source` only when the record
/// is valid and its id differs from `known_id` (the id of the caller's cached policy). Pass `None` as
/// `known_id` to fetch whatever the id, as a refresh before expiry does.
pub async fn discover<S>(source: &S, domain: &str, txt: &TxtLookup, known_id: Option<&str>) -> Discovery
where
    S: PolicySource + ?Sized,
{
    let records = match txt {
        TxtLookup::Records(records) => records.as_slice(),
        TxtLookup::NotFound => &[],
        TxtLookup::Failed(reason) => return Discovery::LookupFailed(reason.clone()),
    };
    let record = match select_record(records) {
        Ok(r) => r,
        Err(e) => return Discovery::NoRecord(e),
    };
    let id = record.id().to_owned();
    if known_id == Some(id.as_str()) {
        return Discovery::Unchanged { id };
    }
    match source.fetch_policy(domain).await {
        Ok(policy) => Discovery::Fetched { id, policy },
        Err(error) => Discovery::FetchFailed { id, error },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::policy::Mode;

    /// A source that answers from memory and counts the fetches (unit tests only; the integration tests
    /// use a real HTTPS server).
    struct Canned {
        answer: Result<Policy, FetchError>,
        fetches: AtomicUsize,
    }

    #[async_trait]
    impl PolicySource for Canned {
        async fn fetch_policy(&self, _domain: &str) -> Result<Policy, FetchError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            self.answer.clone()
        }
    }

    fn canned(answer: Result<Policy, FetchError>) -> Canned {
        Canned {
            answer,
            fetches: AtomicUsize::new(0),
        }
    }

    fn policy() -> Policy {
        Policy::new(Mode::Enforce, vec!["mx.example.test".into()], 86400).unwrap()
    }

    fn records(r: &[&str]) -> TxtLookup {
        TxtLookup::Records(r.iter().map(|s| (*s).to_owned()).collect())
    }

    #[tokio::test]
    async fn a_valid_record_with_a_new_id_fetches_the_policy() {
        let source = canned(Ok(policy()));
        let d = discover(
            &source,
            "example.test",
            &records(&["v=STSv1; id=new"]),
            Some("old"),
        )
        .await;
        assert_eq!(
            d,
            Discovery::Fetched {
                id: "new".into(),
                policy: policy()
            }
        );
        assert_eq!(d.id(), Some("new"));
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_known_id_fetches_nothing() {
        let source = canned(Ok(policy()));
        let d = discover(
            &source,
            "example.test",
            &records(&["v=STSv1; id=same"]),
            Some("same"),
        )
        .await;
        assert_eq!(d, Discovery::Unchanged { id: "same".into() });
        assert_eq!(source.fetches.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn no_record_several_records_or_a_bad_record_fetch_nothing() {
        let source = canned(Ok(policy()));
        for (txt, want) in [
            (TxtLookup::NotFound, TxtError::NoRecord),
            (records(&["v=spf1 -all"]), TxtError::NoRecord),
            (
                records(&["v=STSv1; id=a", "v=STSv1; id=b"]),
                TxtError::Multiple(2),
            ),
            (records(&["v=STSv1; id=a-b"]), TxtError::BadId("a-b".into())),
        ] {
            assert_eq!(
                discover(&source, "example.test", &txt, None).await,
                Discovery::NoRecord(want)
            );
        }
        let failed = discover(
            &source,
            "example.test",
            &TxtLookup::Failed("SERVFAIL".into()),
            None,
        )
        .await;
        assert_eq!(failed, Discovery::LookupFailed("SERVFAIL".into()));
        assert_eq!(failed.tls_rpt_failure(), None);
        assert_eq!(source.fetches.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_failed_fetch_keeps_the_id_and_its_result_type() {
        let error = FetchError::Status {
            host: "mta-sts.example.test".into(),
            status: 404,
        };
        let source = canned(Err(error.clone()));
        let d = discover(&source, "example.test", &records(&["v=STSv1; id=x"]), None).await;
        assert_eq!(d.id(), Some("x"));
        assert_eq!(d.policy(), None);
        assert_eq!(d.tls_rpt_failure(), Some(TlsRptResultType::StsPolicyFetchError));
        assert_eq!(
            d,
            Discovery::FetchFailed {
                id: "x".into(),
                error
            }
        );
    }
}
