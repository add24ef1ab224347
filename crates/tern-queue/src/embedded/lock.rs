//! The store's directory lock: one process at a time, and a clear answer naming the one that holds it.
//!
//! `<dir>/lock` is locked (an OS file lock, released by the kernel when the process ends however it ends,
//! so a crash leaves no stale lock) and holds the holder's pid, which a refused opener reads back.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use crate::QueueError;

/// The lock file's name in the store's directory.
pub(crate) const LOCK_FILE: &str = "lock";

/// A held directory lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

/// Takes the lock of `dir` (made if missing) for this process, or says which process holds it.
pub(crate) fn acquire(dir: &Path) -> Result<DirLock, QueueError> {
    let config = |what: &str, e: std::io::Error| {
        QueueError::Config(format!("embedded queue store {}: {what}: {e}", dir.display()))
    };
    // Private to tern's user, as Postfix keeps its queue: the store holds every queued message. A directory
    // that exists keeps the mode its owner gave it.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| config("cannot make the directory", e))?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| config("cannot open its lock file", e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // The holder writes its pid right after locking; a holder caught in between shows none.
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_string(),
                pid => format!("process {pid}"),
            };
            return Err(QueueError::Config(format!(
                "embedded queue store {} is in use by {holder}: an embedded store serves one process \
                 (run every role in it with `tern all`, or use Redis to share a queue)",
                dir.display()
            )));
        }
        Err(TryLockError::Error(e)) => return Err(config("cannot lock it", e)),
    }
    file.set_len(0)
        .map_err(|e| config("cannot write its lock file", e))?;
    writeln!(file, "{}", std::process::id()).map_err(|e| config("cannot write its lock file", e))?;
    Ok(DirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_directory_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = parent.path().join("tern-data");
        let _held = acquire(&dir).expect("lock");
        let mode = std::fs::metadata(&dir).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }

    #[test]
    fn a_second_opener_is_refused_with_the_holders_pid_until_the_lock_goes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let held = acquire(dir.path()).expect("first");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOCK_FILE))
                .expect("lock file")
                .trim(),
            std::process::id().to_string()
        );
        let err = acquire(dir.path()).expect_err("second");
        let text = err.to_string();
        assert!(
            text.contains(&format!("process {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("tern all"), "{text}");
        drop(held);
        acquire(dir.path()).expect("free again");
    }
}
