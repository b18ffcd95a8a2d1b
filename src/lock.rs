//! A file lock that serialises create-or-join of one run's stack between
//! processes. `flock` is released by the kernel when its holder exits, even
//! by SIGKILL, so a killed creator never wedges the run.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};

/// Held while the file stays open; dropping it unlocks.
pub(crate) struct RunLock {
    _file: File,
}

/// The directory for lock files: per user, private.
fn state_dir() -> PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("pgbouncer-fixtures-{uid}"))
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
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_error("open", e))?;
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: a valid open descriptor; LOCK_NB never blocks.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            // Fresh mtime: the sweep of old lock files never takes a live one.
            let _ = file.set_modified(SystemTime::now());
            return Ok(RunLock { _file: file });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_error("lock", e));
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("the lock {} (another process is starting the run's stack)", path.display()),
                after: timeout,
                hint: "the other process may be stuck on Docker; raise PGBF_STARTUP_TIMEOUT_SECS or check `docker ps`".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Removes lock files untouched for a day (best effort): one is left per run.
pub(crate) fn sweep_old_locks() {
    let Ok(entries) = std::fs::read_dir(state_dir()) else {
        return;
    };
    let day = Duration::from_secs(24 * 3600);
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > day);
        if old && entry.path().extension().is_some_and(|x| x == "lock") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
