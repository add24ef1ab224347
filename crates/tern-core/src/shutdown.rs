//! The one shutdown signal every role, listener and background task uses.
//!
//! A role's entry point owns a [`Shutdown`]; the signal handler cancels it; each listener, worker loop and
//! background task holds a clone (or a child, to stop one part alone) and stops taking new work once it is
//! cancelled. It is `tokio_util`'s `CancellationToken` under a name that says what it is for: one type, so that
//! no part of tern stops in a style of its own.

/// Cancelled once, when the process (or the part holding a child token) must stop: `cancel()` to trigger,
/// `cancelled().await` to wait, `is_cancelled()` to poll, `child_token()` for a part that may stop alone.
pub type Shutdown = tokio_util::sync::CancellationToken;
