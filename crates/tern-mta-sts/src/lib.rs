//! MTA-STS (RFC 8461) for tern: everything but the enforcement in delivery.
//!
//! | module | what |
//! |---|---|
//! | [`policy`] | [`Policy`], [`Mode`], the policy file parser (§3.2), [`PolicyError`] |
//! | [`txt`] | the `_mta-sts.<domain>` TXT record (§3.1): [`select_record`], [`TxtRecord`], [`TxtError`] |
//! | [`matching`] | MX host name against `mx` patterns (§4.1): [`mx_matches`], [`matches_any`] |
//! | [`fetch`] | [`PolicyFetcher`]: the HTTPS fetch (§3.3), [`FetchOptions`], [`FetchError`] |
//! | [`resolve`] | [`HostResolver`]: how the fetcher finds `mta-sts.<domain>`; [`SystemResolver`], [`StaticResolver`] |
//! | [`discovery`] | [`discover`]: a TXT lookup result and a fetch combined into a [`Discovery`] |
//! | [`tlsrpt`] | [`TlsRptResultType`]: RFC 8460 failure result types |
//! | [`dns`] | [`HickoryDns`]: the TXT lookup ([`TxtResolver`]) and the policy host's addresses, through hickory |
//! | [`cache`] | [`PolicyCache`]: the cluster-shared cache over the queue's [`tern_queue::PolicyStore`] |
//! | [`report`] | TLS-RPT (RFC 8460): the `_smtp._tls` record, the JSON report, its gzip and its mail |
//! | [`reporter`] | [`TlsReporter`]: the daily run that sends each policy domain its report |
//!
//! The flow for one domain, as [`PolicyCache`] runs it:
//!
//! 1. look up TXT [`txt::record_name`]`(domain)` with the worker's resolver ([`TxtResolver`]), giving a
//!    [`TxtLookup`];
//! 2. compare the record's id ([`select_record`]) with the cached policy's, and fetch ([`PolicySource`],
//!    [`PolicyFetcher`] in production) when it differs or nothing usable is cached. [`discover`] does this
//!    step alone, for a caller without a cache;
//! 3. store the policy with `expires_at = fetched_at +` [`Policy::max_age_duration`] in the queue's store,
//!    as [`Policy::to_text`] (read back with [`Policy::parse`]);
//! 4. in delivery, with mode `enforce` or `testing`, use only MX hosts for which [`Policy::matches_mx`].
//!
//! A failed discovery never removes a cached policy: RFC 8461 keeps applying an unexpired cached policy
//! when no live one can be discovered.
#![forbid(unsafe_code)]

pub mod cache;
pub mod discovery;
pub mod dns;
pub mod fetch;
pub mod matching;
pub mod policy;
pub mod report;
pub mod reporter;
pub mod resolve;
pub mod tlsrpt;
pub mod txt;

pub use cache::{
    ActivePolicy, CacheError, CacheOptions, DEFAULT_MEMORY_TTL, DEFAULT_REFRESH_BEFORE,
    DEFAULT_RETRY_FAILED_AFTER, LOCK_MARGIN, LookupOutcome, PolicyCache, PolicyLookup,
};
pub use discovery::{Discovery, PolicySource, TxtLookup, discover};
pub use dns::{DnsSetupError, HickoryDns, TxtResolver};
pub use fetch::{
    DEFAULT_FETCH_TIMEOUT, DEFAULT_HTTPS_PORT, FetchError, FetchOptions, MAX_POLICY_BYTES, POLICY_PATH,
    PolicyFetcher, SetupError, policy_host, policy_url,
};
pub use matching::{matches_any, mx_matches};
pub use policy::{MAX_AGE_LIMIT, Mode, Policy, PolicyError};
pub use report::{
    ReportError, ReportMail, ReportUri, Submitter, TlsRptRecord, TlsRptRecordError, build_report,
    build_report_mail, report_filename, report_id, select_tlsrpt_record, tlsrpt_record_name,
};
pub use reporter::{
    DomainOutcome, DomainStatus, PostError, ReporterError, ReporterOptions, RunSummary, TlsReporter,
};
pub use resolve::{HostResolver, ResolveError, StaticResolver, SystemResolver};
pub use tlsrpt::TlsRptResultType;
pub use txt::{TxtError, TxtRecord, select_record};
