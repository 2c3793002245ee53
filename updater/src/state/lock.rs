//! One changing command at a time: an exclusive `flock` on a lock file (default
//! `/run/abupdate.lock`, or `ABUPDATE_LOCK`), taken without waiting. The kernel drops the
//! lock when the process ends, however it ends, so a crash never leaves a stale lock.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::codes;

/// Default lock file; on a tmpfs, so it never outlives a boot.
pub const DEFAULT_PATH: &str = "/run/abupdate.lock";

/// Held while it lives.
pub struct Lock {
    _file: File,
}

/// The lock file path: `ABUPDATE_LOCK` if set (tests), else [`DEFAULT_PATH`].
pub fn path() -> PathBuf {
    std::env::var_os("ABUPDATE_LOCK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// Takes the lock or refuses with [`codes::LOCKED`].
pub fn acquire() -> Result<Lock> {
    let path = path();
    // No symlink followed, no wait on a FIFO (a write-only open of one blocks until a reader
    // comes), and only a regular file is locked.
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        anyhow::bail!("lock file {} is not a regular file", path.display());
    }
    // SAFETY: flock takes an open descriptor and flags; no memory is shared.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            crate::refuse!(
                codes::LOCKED,
                "another abupdate command is running (lock {} is held); nothing was changed",
                path.display()
            );
        }
        return Err(e).with_context(|| format!("locking {}", path.display()));
    }
    Ok(Lock { _file: file })
}
