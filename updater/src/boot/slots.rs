//! Which disk, and which slot is running from it (the slots' states: `crate::boot`).
//!
//! The running slot comes from the kernel command line (`ab.slot=`), which the boot entry
//! set. The disk is the one whose partition `root-<slot>` exists, found in sysfs
//! (`PARTNAME=` in `/sys/class/block/*/uevent`). A disk that is not the booted one (an image
//! file, another drive) has no running slot; its "active" slot is the one the boot loader
//! would boot next.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::boot::Slot;
use crate::codes;
use crate::disk::Disk;

/// Environment variable naming a file to read instead of `/proc/cmdline` (tests, and
/// inspecting another disk as if it had been booted). When set, the disk given with `--disk`
/// is taken to be the booted one.
pub const CMDLINE_ENV: &str = "ABUPDATE_CMDLINE";

/// The kernel command line's `ab.slot=`, if any, and whether it came from the override.
pub fn cmdline_slot() -> Result<(Option<Slot>, bool)> {
    let (path, overridden) = match std::env::var_os(CMDLINE_ENV) {
        Some(p) => (PathBuf::from(p), true),
        None => (PathBuf::from("/proc/cmdline"), false),
    };
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !overridden && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((None, false))
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok((parse_cmdline(&text), overridden))
}

/// `ab.slot=` in a kernel command line (the last one wins, as the kernel's own parsing does).
pub fn parse_cmdline(text: &str) -> Option<Slot> {
    text.split_whitespace()
        .rev()
        .filter_map(|w| w.strip_prefix("ab.slot="))
        .find_map(Slot::parse)
}

/// The block device (`/dev/NAME`) of the disk holding partition `root-<slot>`, from sysfs.
pub fn booted_disk(slot: Slot) -> Result<Option<PathBuf>> {
    let want = format!("PARTNAME={}", slot.partition_label());
    let Ok(dir) = fs::read_dir("/sys/class/block") else {
        return Ok(None);
    };
    for e in dir.flatten() {
        let uevent = fs::read_to_string(e.path().join("uevent")).unwrap_or_default();
        if !uevent.lines().any(|l| l == want) || !e.path().join("partition").exists() {
            continue;
        }
        let real = fs::canonicalize(e.path())
            .with_context(|| format!("resolving {}", e.path().display()))?;
        if let Some(parent) = real.parent().and_then(Path::file_name) {
            return Ok(Some(Path::new("/dev").join(parent)));
        }
    }
    Ok(None)
}

/// The disk to work on and the slot running from it (if it is the booted disk).
pub fn resolve(disk_arg: Option<&Path>) -> Result<(PathBuf, Option<Slot>)> {
    let (slot, overridden) = cmdline_slot()?;
    match (disk_arg, slot) {
        (Some(d), Some(s)) if overridden => Ok((d.to_path_buf(), Some(s))),
        (Some(d), Some(s)) => {
            let booted = booted_disk(s)?;
            let same = booted.is_some_and(|b| same_device(&b, d));
            Ok((d.to_path_buf(), same.then_some(s)))
        }
        (Some(d), None) => Ok((d.to_path_buf(), None)),
        (None, Some(s)) => match booted_disk(s)? {
            Some(b) => Ok((b, Some(s))),
            None => crate::refuse!(
                codes::NO_SUCH_SLOT,
                "booted from slot {s}, but no disk has a partition named {}; pass --disk",
                s.partition_label()
            ),
        },
        (None, None) => crate::refuse!(
            codes::NOT_BOOTED_FROM_SLOT,
            "this system was not booted from an abupdate slot (no ab.slot= on the kernel command line); pass --disk"
        ),
    }
}

fn same_device(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(ma), Ok(mb)) => {
            if ma.file_type().is_file() || mb.file_type().is_file() {
                ma.dev() == mb.dev() && ma.ino() == mb.ino()
            } else {
                ma.rdev() == mb.rdev()
            }
        }
        _ => false,
    }
}

/// Opens the disk (read-write unless `read_only`) and says which slot is running.
pub fn open(disk_arg: Option<&Path>, read_only: bool) -> Result<(Disk, Option<Slot>)> {
    let (path, running) = resolve(disk_arg)?;
    let disk = Disk::open(&path, read_only)?;
    Ok((disk, running))
}

/// If `disk` is a block device, whether its partition number `number` is mounted or held by
/// another device (device-mapper, loop): returns what uses it. The partition is found in sysfs,
/// or by the kernel's naming (`sda3`, `nvme0n1p3`, `loop0p3`) in /dev; mounts are compared by
/// device number (`/proc/self/mountinfo`), so any name of the device matches.
pub fn partition_in_use(disk: &Path, number: u32) -> Option<String> {
    let name = fs::canonicalize(disk)
        .ok()?
        .file_name()?
        .to_str()?
        .to_string();
    let from_sysfs = fs::read_dir(Path::new("/sys/class/block").join(&name))
        .ok()
        .and_then(|d| {
            d.flatten().find_map(|e| {
                let n = fs::read_to_string(e.path().join("partition")).ok()?;
                (n.trim() == number.to_string())
                    .then(|| e.file_name().to_string_lossy().into_owned())
            })
        });
    let sep = if name.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    let part = from_sysfs.unwrap_or_else(|| format!("{name}{sep}{number}"));
    let dev = format!("/dev/{part}");
    let rdev = fs::metadata(&dev).ok()?.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let want = format!("{major}:{minor}");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(m) = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(want.as_str()))
    {
        return Some(format!(
            "{dev} is mounted on {}",
            m.split_whitespace().nth(4).unwrap_or("?")
        ));
    }
    let held: Vec<String> = fs::read_dir(Path::new("/sys/class/block").join(&part).join("holders"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    (!held.is_empty()).then(|| format!("{dev} is in use by {}", held.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline() {
        assert_eq!(
            parse_cmdline("quiet ab.slot=b root=PARTLABEL=root-b\n"),
            Some(Slot::B)
        );
        assert_eq!(parse_cmdline("ab.slot=a ab.slot=b"), Some(Slot::B));
        assert_eq!(parse_cmdline("ab.slot=c"), None);
        assert_eq!(parse_cmdline(""), None);
    }
}
