//! How many worker threads a process's runtime gets. A process that runs one role (`tern ingest`, `tern
//! worker`, `tern control`) runs it on one thread, and is scaled by running more of it (Kubernetes replicas,
//! KEDA for workers); a process that runs several (`tern all`, one node) gets one thread per CPU it may use.
//! `TOKIO_WORKER_THREADS` sets another number for either. tokio reads that variable itself, but panics on a
//! value it cannot use; tern checks it first, so that a bad value is a one-line error at start, not a panic.
//!
//! Why one: a role's work is many small I/O steps (an SMTP reply, a Redis answer), and with two or more
//! threads an idle thread is woken to take a task from a busy one and parks again, once or more per step. On
//! 2 cores shared with Redis, one thread per role process took the CPU per message (ingest + worker + Redis)
//! from 0.355 to 0.299 ms and the rate up 7% (docs/operations.md, "Runtime threads").

/// The environment variable tokio's runtime reads for its number of worker threads.
pub const WORKER_THREADS_VAR: &str = "TOKIO_WORKER_THREADS";

/// The number of worker threads `value` (the variable's value, when set) asks for; `None` leaves the
/// runtime's default.
pub fn worker_threads(value: Option<&std::ffi::OsStr>) -> anyhow::Result<Option<usize>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let parsed = value
        .to_str()
        .and_then(|text| text.trim().parse::<usize>().ok())
        .filter(|threads| *threads > 0);
    match parsed {
        Some(threads) => Ok(Some(threads)),
        None => anyhow::bail!(
            "{WORKER_THREADS_VAR} must be a whole number of at least 1, not \"{}\"",
            value.to_string_lossy()
        ),
    }
}

/// The worker threads for a process running `roles` roles: what the environment asked (`asked`), else one
/// for a process of one role; `None` leaves tokio's default, one per CPU the process may use.
pub fn for_roles(asked: Option<usize>, roles: usize) -> Option<usize> {
    asked.or((roles == 1).then_some(1))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn unset_leaves_the_runtime_default() {
        assert_eq!(worker_threads(None).unwrap(), None);
    }

    #[test]
    fn a_positive_number_is_the_thread_count() {
        assert_eq!(worker_threads(Some(OsStr::new("1"))).unwrap(), Some(1));
        assert_eq!(worker_threads(Some(OsStr::new(" 4 "))).unwrap(), Some(4));
    }

    #[test]
    fn zero_or_words_are_refused_with_the_variable_named() {
        for bad in ["0", "two", "", "-1", "1.5"] {
            let error = worker_threads(Some(OsStr::new(bad))).unwrap_err().to_string();
            assert!(
                error.starts_with("TOKIO_WORKER_THREADS must be"),
                "{bad}: {error}"
            );
            assert!(error.contains(&format!("\"{bad}\"")), "{bad}: {error}");
        }
    }

    #[test]
    fn a_process_of_one_role_runs_on_one_thread_unless_asked_otherwise() {
        assert_eq!(for_roles(None, 1), Some(1));
        assert_eq!(for_roles(Some(4), 1), Some(4));
    }

    #[test]
    fn a_process_of_several_roles_gets_a_thread_per_cpu_unless_asked_otherwise() {
        assert_eq!(for_roles(None, 3), None);
        assert_eq!(for_roles(Some(1), 3), Some(1));
    }
}
