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

use crate::state::write_atomic;

/// Versions remembered as failed, newest last; older ones drop out (a channel only moves
/// forward, so a version this old will not be offered again).
const MAX_FAILED: usize = 32;
/// Channels whose sequence is remembered (a device rarely switches channels).
const MAX_CHANNELS: usize = 16;
/// Longest state file read: it is a few hundred bytes.
pub const MAX_STATE_LEN: u64 = 64 * 1024;
/// Longest message kept from a check: a message can quote what a server sent (a redirect's
/// `Location`), and update.json must stay far below [`MAX_STATE_LEN`] whatever it holds.
pub const MAX_STORED_MESSAGE: usize = 2048;
/// Longest URL kept (a channel, a quoted bundle name).
pub const MAX_STORED_URL: usize = 1024;

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
                    api_version: crate::state::API_VERSION.into(),
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

    /// Refuses to write a file `load` would not read back whole (it would then refuse every
    /// later check as damaged): the old file stays.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        if bytes.len() as u64 > MAX_STATE_LEN {
            anyhow::bail!(
                "not writing {}: {} bytes, more than the {MAX_STATE_LEN} it is read back with",
                path.display(),
                bytes.len()
            );
        }
        write_atomic(path, &bytes)
    }

    pub fn sequence(&self, channel: &str) -> Option<u64> {
        self.sequences.get(&sequence_key(channel)).copied()
    }

    pub fn accept_sequence(&mut self, channel: &str, sequence: u64) {
        let channel = &sequence_key(channel);
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

/// The key a channel's sequence is kept under: its URL, or for a URL longer than
/// [`MAX_STORED_URL`] its SHA-256 (16 such keys must not fill the file).
fn sequence_key(channel: &str) -> String {
    if channel.len() <= MAX_STORED_URL {
        return channel.to_string();
    }
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(channel)))
}

/// `s` cut to at most `max` bytes (at a character boundary), with a marker saying how much
/// was left out.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes left out)", &s[..end], s.len() - end)
}

/// This machine's id: 16 random bytes as hex, created on first use (exclusively, so two
/// concurrent first runs agree on one). Made only when there is nothing at `path`: a
/// symlink, directory or FIFO there is an error, not a reason to make another.
pub fn machine_id(path: &Path) -> Result<String> {
    match read_id(path)? {
        Some(id) => Ok(id),
        None => make_machine_id(path),
    }
}

/// The id at `path`; `None` if there is nothing there.
fn read_id(path: &Path) -> Result<Option<String>> {
    let bytes = match read_bounded(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "reading {} (the machine id; remove it to make a new one)",
                    path.display()
                )
            })
        }
    };
    let id = String::from_utf8_lossy(&bytes).trim().to_string();
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Some(id));
    }
    anyhow::bail!(
        "{} is not a machine id (32 hex digits); remove it to make a new one",
        path.display()
    );
}

fn make_machine_id(path: &Path) -> Result<String> {
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
            // Another run made it meanwhile (read that one), or something that is not an id
            // is there (an error; never another round of making one).
            read_id(path)?.with_context(|| format!("creating {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// Reads a state file safely: no symlinks followed, no waiting on a FIFO (non-blocking
/// open), regular files only, at most [`MAX_STATE_LEN`] bytes.
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
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

    /// Each once made `machine_id` recurse (create, link fails, read fails, again) until the
    /// stack overflowed; a FIFO could hang a read.
    #[test]
    fn machine_id_that_is_not_a_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, format!("{}\n", "ab".repeat(16))).unwrap();
        let link = dir.path().join("link/machine-id");
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let d = dir.path().join("dir/machine-id");
        fs::create_dir_all(&d).unwrap();
        let fifo = dir.path().join("fifo/machine-id");
        fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        for p in [&link, &d, &fifo] {
            let e = format!("{:#}", machine_id(p).unwrap_err());
            assert!(e.contains("machine id"), "{e}");
        }
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn long_messages_are_cut_and_the_file_stays_readable() {
        let long = "é".repeat(40_000);
        let cut = bounded(&long, MAX_STORED_MESSAGE);
        assert!(cut.len() <= MAX_STORED_MESSAGE, "{}", cut.len());
        assert!(cut.ends_with("bytes left out)"), "{cut}");
        assert_eq!(bounded("short", 10), "short");
        // A state that would not be read back whole is not written.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("update.json");
        let mut s = UpdateState::load(&p).unwrap();
        s.accept_sequence("c", 1);
        s.save(&p).unwrap();
        s.last_check = Some(Check {
            time: 0,
            channel: "c".into(),
            outcome: "error".into(),
            code: 41,
            message: "x".repeat(70_000),
            channel_version: None,
        });
        assert!(s.save(&p).is_err());
        assert_eq!(UpdateState::load(&p).unwrap().sequence("c"), Some(1));
        // Long channel URLs (from --channel) are kept by digest: the most channels kept,
        // each with a 5 KB URL, still fit.
        s.last_check = None;
        for i in 0..20u64 {
            s.accept_sequence(&format!("https://h/{i}/{}", "x".repeat(5000)), i + 2);
        }
        s.save(&p).unwrap();
        let back = UpdateState::load(&p).unwrap();
        let last = format!("https://h/19/{}", "x".repeat(5000));
        assert_eq!(back.sequence(&last), Some(21));
        assert_eq!(back.sequences.len(), MAX_CHANNELS);
    }
}
