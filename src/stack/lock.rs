//! A file lock that serialises creating (or replacing) one run's stack
//! between processes; joining a stack that answers takes no lock. The lock
//! is std's `File::try_lock` (`flock` on Linux), which the kernel releases
//! when its holder exits, even by SIGKILL, so a killed creator never wedges
//! the run.
//!
//! Nothing is left behind: the holder unlinks the lock file before it lets
//! go of it, so a file exists only while some process is creating the
//! run's stack, or checking it under the lock (or one was killed doing so:
//! `gc` and the next stack creation remove such stale files). Unlinking a file that others
//! may hold or be about to lock is safe because every locker checks, once
//! it holds the lock, that the path still names the file it locked, and
//! starts over otherwise: a process never proceeds on an unlinked file.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::docker::labels::checkout;
use crate::error::{Error, Result};

/// Held while the file stays open; dropping it unlinks the file, then unlocks.
pub(crate) struct RunLock {
    file: File,
    path: PathBuf,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Still holding the lock: nobody else can be past their own check
        // on this file, and whoever waits for it will see it unlinked.
        if same_file(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
        // `self.file` closes after this: the kernel releases the lock.
    }
}

/// The directory for lock files: per user, private.
pub(crate) fn state_dir() -> PathBuf {
    // std has no getuid (only the owner of a file, which would have to exist first).
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("pgbouncer-fixtures-{uid}"))
}

/// Whether `path` still names the file `file` has open.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// An exclusive lock on `file` if nobody holds one: `Ok(false)` when
/// another process does.
fn try_lock(file: &File) -> std::io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Takes the lock of run `key`, waiting at most `timeout`.
pub(crate) async fn lock(key: &str, timeout: Duration) -> Result<RunLock> {
    let dir = state_dir();
    let path = dir.join(format!("{key}.lock"));
    let io_error = |what: &str, e: std::io::Error| Error::Stack {
        reason: format!(
            "cannot {what} {}: {e}. Check that the temporary directory is writable (TMPDIR)",
            path.display()
        ),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| io_error("create the directory of", e))?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error("open", e))?;
        while !try_lock(&file).map_err(|e| io_error("lock", e))? {
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("the lock {} (another process is starting the run's stack)", path.display()),
                    after: timeout,
                    hint: "the other process may be stuck on Docker; raise PGBF_STARTUP_TIMEOUT_SECS or check `docker ps`".into(),
                });
            }
            // Polled: a lock has no timed wait, and a blocking `File::lock`
            // on a thread cannot be called off at the deadline.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !same_file(&file, &path) {
            // Its holder (or `gc`) unlinked it while we waited: the lock
            // now lives in a new file at that path.
            continue;
        }
        // Who holds it, for people and for CI's leftovers check.
        let _ = file.set_len(0);
        let _ = write!(
            file,
            "pid={}\ncheckout={}\n",
            std::process::id(),
            checkout()
        );
        return Ok(RunLock { file, path });
    }
}

/// Removes the lock files nobody holds (best effort) and returns them: left
/// by a process killed while creating or joining a stack, or by versions of
/// the crate that kept one file per run. A held file is never touched.
pub(crate) fn remove_stale_locks() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state_dir()) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "lock") {
            continue;
        }
        // Never create: a file that vanished meanwhile is not ours to remake.
        let Ok(file) = OpenOptions::new().read(true).open(&path) else {
            continue;
        };
        if try_lock(&file).unwrap_or(false)
            && same_file(&file, &path)
            && std::fs::remove_file(&path).is_ok()
        {
            removed.push(path);
        }
        // Closing `file` releases the lock.
    }
    removed
}
