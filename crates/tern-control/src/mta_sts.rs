//! `tern.v1.MtaSts` (`proto/tern/v1/mta_sts.proto`): the cluster-shared MTA-STS policy cache for operators,
//! over the process's [`PolicyCache`].
//!
//! Get, List and Evict read and write the queue's store directly; Refresh fetches now through the cache
//! (under the domain's cluster-wide lock). A refresh that fetched nothing is an error status, never an
//! answer that looks like success: the failure is recorded in the entry by the cache, and Get shows it
//! next to the policy that still applies. Without a cache (`delivery.mta_sts.enabled = false`) every policy
//! call is FAILED_PRECONDITION. The TLS reporting calls (Report, SendReports) are in [`crate::tls_rpt`].

use tern_core::time::now_ms;
use tern_mta_sts::{ActivePolicy, CacheError, Mode, PolicyCache, TlsReporter};
use tern_proto::v1 as pb;
use tern_proto::v1::mta_sts_server::MtaSts;
use tern_queue::StsEntry;
use tonic::{Request, Response, Status};

use crate::convert::{invalid, queue_status};

/// The fully qualified name of the MTA-STS service.
pub use tern_proto::v1::mta_sts_server::SERVICE_NAME as MTA_STS_SERVICE;

/// The default and largest page of List.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// The longest domain name (RFC 1035).
const MAX_DOMAIN_LEN: usize = 253;
/// What every call answers without a cache.
const OFF: &str = "MTA-STS is off (delivery.mta_sts.enabled = false)";

/// The MtaSts service over the process's policy cache (`None`: MTA-STS is off) and TLS reporter (`None`:
/// TLS reporting is off). Authentication is done by the server's interceptor.
#[derive(Clone, Debug)]
pub struct MtaStsService {
    cache: Option<PolicyCache>,
    reporter: Option<TlsReporter>,
}

impl MtaStsService {
    /// The service over `cache`, without TLS reporting; with `None` every policy call answers
    /// FAILED_PRECONDITION.
    pub fn new(cache: Option<PolicyCache>) -> Self {
        Self::with_reporter(cache, None)
    }

    /// The service over `cache` and `reporter` (the TLS reporting calls; `None`: FAILED_PRECONDITION).
    pub fn with_reporter(cache: Option<PolicyCache>, reporter: Option<TlsReporter>) -> Self {
        MtaStsService { cache, reporter }
    }

    fn cache(&self) -> Result<&PolicyCache, Status> {
        self.cache
            .as_ref()
            .ok_or_else(|| Status::failed_precondition(OFF))
    }
}

/// A policy domain as given by an operator: trimmed, lower-case, without a final dot, in A-label form.
/// The error names `field`.
pub fn policy_domain(field: &str, raw: &str) -> Result<String, Status> {
    let d = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() {
        return Err(invalid(field, "is empty"));
    }
    if !d.is_ascii() {
        return Err(invalid(
            field,
            format!("{d:?} is not in A-label form (write an internationalized name as xn--...)"),
        ));
    }
    let bad_char = d
        .chars()
        .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
    if bad_char || d.len() > MAX_DOMAIN_LEN || d.split('.').any(str::is_empty) {
        return Err(invalid(field, format!("{d:?} is not a domain name")));
    }
    Ok(d)
}

/// A cache error as a gRPC status (see `mta_sts.proto`).
fn cache_status(domain: &str, e: CacheError) -> Status {
    match e {
        CacheError::InvalidDomain(d) => invalid("domain", format!("{d:?} is not a domain name")),
        CacheError::Store(q) => queue_status(q),
        CacheError::Dns(reason) => Status::unavailable(format!(
            "looking up the MTA-STS TXT record of {domain} failed: {reason}"
        )),
        CacheError::NoRecord(why) => {
            Status::failed_precondition(format!("{domain} announces no MTA-STS policy: {why}"))
        }
        CacheError::Locked { owner } => Status::aborted(format!(
            "{owner} is fetching the policy of {domain} now; try again shortly"
        )),
        CacheError::Fetch(why) => {
            Status::failed_precondition(format!("fetching the MTA-STS policy of {domain} failed: {why}"))
        }
    }
}

/// An entry as the API shows it, with its state at `now` (Unix ms).
pub fn policy_info(entry: &StsEntry, now: u64) -> pb::PolicyInfo {
    let mut info = pb::PolicyInfo {
        domain: entry.domain.clone(),
        policy_id: entry.policy_id.clone(),
        fetched_at_ms: entry.fetched_at_ms,
        expires_at_ms: entry.expires_at_ms,
        last_error: entry.last_error.clone().unwrap_or_default(),
        last_error_at_ms: entry.last_error_at_ms.unwrap_or(0),
        policy: entry.policy.clone(),
        ..Default::default()
    };
    info.state = match ActivePolicy::from_entry(entry) {
        Ok(None) => "no-policy",
        Err(_) => "invalid",
        Ok(Some(active)) => {
            info.mode = active.mode().as_str().to_owned();
            info.mx = active.policy.mx().to_vec();
            info.max_age_seconds = active.policy.max_age();
            if active.is_expired_at(now) {
                "expired"
            } else if active.mode() == Mode::None {
                "none"
            } else {
                "valid"
            }
        }
    }
    .to_owned();
    info
}

#[tonic::async_trait]
impl MtaSts for MtaStsService {
    async fn get(&self, request: Request<pb::GetPolicyRequest>) -> Result<Response<pb::PolicyInfo>, Status> {
        let cache = self.cache()?;
        let domain = policy_domain("domain", &request.get_ref().domain)?;
        let entry = cache
            .get(&domain)
            .await
            .map_err(|e| cache_status(&domain, e))?
            .ok_or_else(|| Status::not_found(format!("no MTA-STS policy cached for {domain}")))?;
        Ok(Response::new(policy_info(&entry, now_ms())))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshPolicyRequest>,
    ) -> Result<Response<pb::PolicyInfo>, Status> {
        let cache = self.cache()?.clone();
        let domain = policy_domain("domain", &request.get_ref().domain)?;
        // On its own task: a client that goes away (or times out) must not drop the fetch while it holds
        // the domain's cluster-wide lock, which would then linger until its TTL.
        let fetch = {
            let domain = domain.clone();
            tokio::spawn(async move { cache.refresh(&domain).await })
        };
        let entry = fetch
            .await
            .map_err(|e| Status::internal(format!("the MTA-STS refresh failed: {e}")))?
            .map_err(|e| cache_status(&domain, e))?;
        tracing::info!(domain = %domain, policy_id = %entry.policy_id, "control: MTA-STS policy refreshed");
        Ok(Response::new(policy_info(&entry, now_ms())))
    }

    async fn list(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let cache = self.cache()?;
        let req = request.into_inner();
        let size = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => return Err(invalid("page_size", format!("{n} is more than {MAX_PAGE}"))),
            n => n,
        };
        // The token is the last domain of the previous page: the store pages by domain.
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(policy_domain("page_token", &req.page_token)?)
        };
        // One more than the page, so that a last page that is exactly full says so (no empty page after).
        let mut entries = cache
            .list(after.as_deref(), size + 1)
            .await
            .map_err(|e| cache_status(after.as_deref().unwrap_or(""), e))?;
        let next_page_token = if entries.len() > size {
            entries.truncate(size);
            entries.last().map(|e| e.domain.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        let now = now_ms();
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: entries.iter().map(|e| policy_info(e, now)).collect(),
            next_page_token,
        }))
    }

    async fn evict(
        &self,
        request: Request<pb::EvictPolicyRequest>,
    ) -> Result<Response<pb::EvictPolicyResponse>, Status> {
        let cache = self.cache()?;
        let domain = policy_domain("domain", &request.get_ref().domain)?;
        let evicted = cache.evict(&domain).await.map_err(|e| cache_status(&domain, e))?;
        tracing::info!(domain = %domain, evicted, "control: MTA-STS policy evicted");
        Ok(Response::new(pb::EvictPolicyResponse { evicted }))
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportCounts>, Status> {
        crate::tls_rpt::report(self.reporter.as_ref(), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn send_reports(
        &self,
        request: Request<pb::SendReportsRequest>,
    ) -> Result<Response<pb::SendReportsResponse>, Status> {
        crate::tls_rpt::send_reports(self.reporter.as_ref(), request.into_inner())
            .await
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENFORCE: &str =
        "version: STSv1\nmode: enforce\nmx: mx.example.com\nmx: *.example.net\nmax_age: 86400\n";

    fn entry(policy: &str, expires_at_ms: u64) -> StsEntry {
        StsEntry {
            domain: "example.com".into(),
            policy: policy.into(),
            policy_id: if policy.is_empty() { "" } else { "20240101" }.into(),
            fetched_at_ms: if policy.is_empty() { 0 } else { 1_000 },
            expires_at_ms,
            last_error: None,
            last_error_at_ms: None,
        }
    }

    #[test]
    fn states_follow_the_policy_its_mode_and_the_clock() {
        let valid = policy_info(&entry(ENFORCE, 10_000), 5_000);
        assert_eq!(valid.state, "valid");
        assert_eq!(valid.mode, "enforce");
        assert_eq!(valid.mx, ["mx.example.com", "*.example.net"]);
        assert_eq!(valid.max_age_seconds, 86_400);
        assert_eq!(valid.policy_id, "20240101");
        assert_eq!(valid.policy, ENFORCE);
        assert_eq!(policy_info(&entry(ENFORCE, 10_000), 10_000).state, "expired");
        let none = "version: STSv1\nmode: none\nmax_age: 86400\n";
        assert_eq!(policy_info(&entry(none, 10_000), 5_000).state, "none");
        assert_eq!(policy_info(&entry(none, 10_000), 20_000).state, "expired");
        let testing = "version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 86400\n";
        assert_eq!(policy_info(&entry(testing, 10_000), 5_000).state, "valid");
    }

    #[test]
    fn an_entry_with_only_an_error_has_no_policy_and_keeps_the_error() {
        let mut e = entry("", 0);
        e.last_error = Some("HTTP 404".into());
        e.last_error_at_ms = Some(7_000);
        let info = policy_info(&e, 8_000);
        assert_eq!(info.state, "no-policy");
        assert_eq!(info.mode, "");
        assert!(info.mx.is_empty());
        assert_eq!(info.last_error, "HTTP 404");
        assert_eq!(info.last_error_at_ms, 7_000);
    }

    #[test]
    fn a_stored_policy_that_does_not_parse_is_invalid() {
        let info = policy_info(&entry("version: STSv9\n", 10_000), 5_000);
        assert_eq!(info.state, "invalid");
        assert_eq!(info.policy, "version: STSv9\n");
    }

    #[test]
    fn domains_are_normalized_and_checked() {
        assert_eq!(policy_domain("domain", " Example.COM. ").unwrap(), "example.com");
        assert_eq!(
            policy_domain("domain", "xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        for bad in [
            "",
            " ",
            "a b.example",
            "user@example.com",
            "a..b",
            "bücher.example",
            "a/b",
        ] {
            let e = policy_domain("domain", bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.message().starts_with("domain: "), "{}", e.message());
        }
    }

    #[tokio::test]
    async fn without_a_cache_every_call_says_mta_sts_is_off() {
        let s = MtaStsService::new(None);
        let off = |e: Status| {
            assert_eq!(e.code(), tonic::Code::FailedPrecondition);
            assert_eq!(e.message(), OFF);
        };
        let domain = || "example.com".to_owned();
        off(s
            .get(Request::new(pb::GetPolicyRequest { domain: domain() }))
            .await
            .unwrap_err());
        off(s
            .refresh(Request::new(pb::RefreshPolicyRequest { domain: domain() }))
            .await
            .unwrap_err());
        off(s
            .list(Request::new(pb::ListPoliciesRequest::default()))
            .await
            .unwrap_err());
        off(s
            .evict(Request::new(pb::EvictPolicyRequest { domain: domain() }))
            .await
            .unwrap_err());
    }
}
