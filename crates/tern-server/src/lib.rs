//! What every tern role's server needs, in one place, so that no role crate borrows it from another: the gRPC
//! listener bootstrap, API-key authentication, the shutdown signal and the host name.
//!
//! | module | what |
//! |---|---|
//! | [`grpc`] | the gRPC listener: transport limits, health, reflection of exactly the services served, TLS, shutdown |
//! | [`auth`] | API keys: the keys file, the `Bearer` check (a tonic interceptor), sender domains per key |
//! | [`hostname`] | the system host name, validated as a DNS host name for EHLO and greetings |
//!
//! The shutdown signal is [`tern_core::Shutdown`], re-exported here as [`Shutdown`]: every listener, worker
//! loop and background task of every role stops on it.
#![forbid(unsafe_code)]

pub mod auth;
pub mod grpc;
pub mod hostname;

pub use hostname::system_hostname;
pub use tern_core::Shutdown;
