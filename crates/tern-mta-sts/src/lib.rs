//! MTA-STS (RFC 8461) for tern: the parts that need no store and no delivery code.
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
//!
//! The flow for one domain, as the cache layer runs it:
//!
//! 1. look up TXT [`txt::record_name`]`(domain)` with the worker's resolver, giving a [`TxtLookup`];
//! 2. [`discover`]`(&fetcher, domain, &lookup, cached_id)`: no valid record, the cached policy is current,
//!    a policy fetched now, or a failed fetch (with its TLS-RPT result type, [`FetchError::result_type`]);
//! 3. store the policy with `expires_at = fetched_at +` [`Policy::max_age_duration`] (a [`Policy`] is
//!    `serde`-serializable and checks its rules again when deserialized);
//! 4. in delivery, with mode `enforce` or `testing`, use only MX hosts for which [`Policy::matches_mx`].
//!
//! A failed discovery never removes a cached policy: RFC 8461 keeps applying an unexpired cached policy
//! when no live one can be discovered.
#![forbid(unsafe_code)]

pub mod discovery;
pub mod fetch;
pub mod matching;
pub mod policy;
pub mod resolve;
pub mod tlsrpt;
pub mod txt;

pub use discovery::{Discovery, PolicySource, TxtLookup, discover};
pub use fetch::{
    DEFAULT_FETCH_TIMEOUT, DEFAULT_HTTPS_PORT, FetchError, FetchOptions, MAX_POLICY_BYTES, POLICY_PATH,
    PolicyFetcher, SetupError, policy_host, policy_url,
};
pub use matching::{matches_any, mx_matches};
pub use policy::{MAX_AGE_LIMIT, Mode, Policy, PolicyError};
pub use resolve::{HostResolver, ResolveError, StaticResolver, SystemResolver};
pub use tlsrpt::TlsRptResultType;
pub use txt::{TxtError, TxtRecord, select_record};
