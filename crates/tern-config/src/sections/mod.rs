//! One module per section of the configuration file. Each section's struct lists its keys with their defaults;
//! `docs/configuration.md` mirrors them.

mod control;
mod delivery;
pub mod dkim;
mod ingest;
mod queue;
mod telemetry;

pub use control::ControlConfig;
pub use delivery::{
    DeliveryConfig, IpVersion, MtaStsConfig, RETRY_JITTER, RelayAuth, RelayOAuthConfig, RelayTls,
    RouteConfig, TlsMode, TlsRptConfig, split_host_port,
};
pub use dkim::{DkimAlgorithm, DkimCanonicalization, DkimConfig};
pub use ingest::{IngestConfig, IngestOauthConfig};
pub use queue::{QueueBackend, QueueConfig};
pub use telemetry::{LogFormat, TelemetryConfig};
