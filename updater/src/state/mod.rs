//! What the updater keeps and reads between runs: its configuration, the state files on the
//! data partition and their formats, the lock. Everything above may use it; it uses only the
//! crate root's `codes`.

pub mod channel_state;
pub mod config;
pub mod lock;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// `apiVersion` of every JSON document abupdate prints.
pub const API_VERSION: &str = "abupdate/v1";

/// What every command gets from the global options.
pub struct Context {
    pub config: config::Config,
    pub config_path: PathBuf,
    /// Trusted keys directory (`--keys`, else the config's).
    pub keys: PathBuf,
    /// `--disk`, else the booted disk.
    pub disk: Option<PathBuf>,
    pub quiet: bool,
}

impl Context {
    /// The configured compatible string; refused (40) when there is none, as nothing can be
    /// checked against a bundle without it.
    pub fn compatible(&self) -> Result<&str> {
        let Some(compatible) = self.config.compatible.as_deref() else {
            crate::refuse!(
                crate::codes::NOT_CONFIGURED,
                "no compatible string configured (set compatible in {}); nothing was changed",
                self.config_path.display()
            );
        };
        Ok(compatible)
    }

    /// The trusted keys (`--keys`, else the config's directory).
    pub fn trusted_keys(&self) -> Result<abbundle::TrustedKeys> {
        abbundle::TrustedKeys::load_dir(&self.keys)
            .with_context(|| format!("loading trusted keys from {}", self.keys.display()))
    }
}

/// Writes `path` so that a power cut leaves the old or the new file, never a torn one (the
/// boot-check record, the update state in `channel_state`).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    // Never write through whatever is at the temporary name (a symlink planted there would
    // redirect the write): remove it, then create the file exclusively, not following links.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing a stale {}", tmp.display())),
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}
