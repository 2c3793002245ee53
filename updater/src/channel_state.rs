//! What `abupdate update` remembers between checks, on the data partition next to
//! boot-check's state file: `update.json` (the highest channel sequence accepted, versions
//! that failed here, the last check) and `machine-id` (random, made on first use; it places
//! the machine in rollouts).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::bootcheck::write_atomic;

/// Versions remembered as failed, newest last; older ones drop out (a channel only moves
/// forward, so a version this old will not be offered again).
const MAX_FAILED: usize = 32;
/// Channels whose sequence is remembered (a device rarely switches channels).
const MAX_CHANNELS: usize = 16;
/// Longest state file read: it is a few hundred bytes.
const MAX_STATE_LEN: u64 = 64 * 1024;

/// The update state file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateState {
    pub api_version: String,
    pub kind: String,
    /// Highest sequence accepted per channel URL.
    #[serde(default)]
    pub sequences: BTreeMap<String, u64>,
    /// Versions that did not come up on this machine (from boot-check's fallbacks).
    #[serde(default)]
    pub failed_versions: Vec<String>,
    #[serde(default)]
    pub last_check: Option<Check>,
}

/// The result of the last `update`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// Seconds since the epoch.
    pub time: u64,
    pub channel: String,
    pub outcome: String,
    /// The exit code `update` ended with.
    pub code: i32,
    pub message: String,
    pub channel_version: Option<String>,
}

/// `update.json` next to the boot-check state file.
pub fn path(state_file: &Path) -> PathBuf {
    state_file.with_file_name("update.json")
}

/// `machine-id` next to the boot-check state file.
pub fn machine_id_path(state_file: &Path) -> PathBuf {
    state_file.with_file_name("machine-id")
}

impl UpdateState {
    /// Reads the state; a missing file is a fresh state. A damaged one is an error: starting
    /// afresh would forget the sequence and let a replayed channel file through.
    pub fn load(path: &Path) -> Result<UpdateState> {
        let bytes = match read_bounded(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(UpdateState {
                    api_version: crate::status::API_VERSION.into(),
                    kind: "UpdateState".into(),
                    ..Default::default()
                })
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is damaged; it holds the channel sequence this device accepted, so it is not \
                 replaced automatically: remove it to start afresh",
                path.display()
            )
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }

    pub fn sequence(&self, channel: &str) -> Option<u64> {
        self.sequences.get(channel).copied()
    }

    pub fn accept_sequence(&mut self, channel: &str, sequence: u64) {
        self.sequences.insert(channel.to_string(), sequence);
        while self.sequences.len() > MAX_CHANNELS {
            // Drop the channel with the lowest sequence other than this one.
            let Some(k) = self
                .sequences
                .iter()
                .filter(|(k, _)| k.as_str() != channel)
                .min_by_key(|(_, v)| **v)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.sequences.remove(&k);
        }
    }

    pub fn has_failed(&self, version: &str) -> bool {
        self.failed_versions.iter().any(|v| v == version)
    }

    /// Remembers `version` as failed; returns whether it was new.
    pub fn add_failed(&mut self, version: &str) -> bool {
        if self.has_failed(version) {
            return false;
        }
        self.failed_versions.push(version.to_string());
        if self.failed_versions.len() > MAX_FAILED {
            self.failed_versions.remove(0);
        }
        true
    }
}

/// This machine's id: 16 random bytes as hex, created on first use (exclusively, so two
/// concurrent first runs agree on one).
pub fn machine_id(path: &Path) -> Result<String> {
    if let Ok(bytes) = read_bounded(path) {
        let id = String::from_utf8_lossy(&bytes).trim().to_string();
        if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id);
        }
        anyhow::bail!(
            "{} is not a machine id (32 hex digits); remove it to make a new one",
            path.display()
        );
    }
    let mut raw = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom")?;
    let id = hex::encode(raw);
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(format!("{id}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    // A hard link fails if another run created the id meanwhile: then that one counts.
    match fs::hard_link(&tmp, path) {
        Ok(()) => {
            let _ = fs::remove_file(&tmp);
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&tmp);
            machine_id(path)
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut out = Vec::new();
    f.take(MAX_STATE_LEN).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_roundtrips_and_bounds_its_lists() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("update.json");
        let mut s = UpdateState::load(&p).unwrap();
        assert_eq!(s.sequence("c"), None);
        s.accept_sequence("c", 5);
        for i in 0..40 {
            s.add_failed(&format!("1.{i}"));
        }
        assert!(!s.add_failed("1.39"));
        s.save(&p).unwrap();
        let s = UpdateState::load(&p).unwrap();
        assert_eq!(s.sequence("c"), Some(5));
        assert_eq!(s.failed_versions.len(), MAX_FAILED);
        assert!(s.has_failed("1.39") && !s.has_failed("1.0"));
        fs::write(&p, b"{not json").unwrap();
        assert!(UpdateState::load(&p).is_err());
    }

    #[test]
    fn machine_id_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/machine-id");
        let a = machine_id(&p).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(machine_id(&p).unwrap(), a);
    }
}
