//! How many worker threads a process's runtime gets: tokio's default (the CPUs the process may use), or
//! the number in `TOKIO_WORKER_THREADS`. tokio reads that variable itself, but panics on a value it cannot
//! use; tern checks it first, so that a bad value is a one-line error at start, not a panic.

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
}
