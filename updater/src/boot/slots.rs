//! Which disk, and which slot is running from it (the slots' states: `crate::boot`).
//!
//! The running slot comes from the kernel command line (`ab.slot=`), which the boot entry
//! set. The disk is the one whose partition `root-<slot>` holds the mounted root file system
//! (a second disk may carry a copy of the image, with the same partition names), found in
//! sysfs (`PARTNAME=` in `/sys/class/block/*/uevent`, `/sys/dev/block/MAJ:MIN`). A disk that is not the booted one (an image
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

/// The block device (`/dev/NAME`) of the disk the system booted from: the disk of the
/// partition `root-<slot>` that holds the mounted root file system (through a device-mapper
/// device, if the root is one); if the root is on none, the one disk with a partition
/// `root-<slot>`. Several such disks and a root on none of them are refused: a second disk can
/// carry a copy of the image, and guessing could update the copy (docs/layout.md, "Per-machine
/// identity").
pub fn booted_disk(slot: Slot) -> Result<Option<PathBuf>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    booted_disk_in(Path::new("/sys"), &mountinfo, slot)
}

/// [`booted_disk`] with sysfs at `sys` and `mountinfo` as `/proc/self/mountinfo`'s text.
pub fn booted_disk_in(sys: &Path, mountinfo: &str, slot: Slot) -> Result<Option<PathBuf>> {
    let want = format!("PARTNAME={}", slot.partition_label());
    let is_slot = |part: &Path| {
        part.join("partition").exists()
            && fs::read_to_string(part.join("uevent"))
                .unwrap_or_default()
                .lines()
                .any(|l| l == want)
    };
    let disk_of = |part: &Path| -> Option<PathBuf> {
        let parent = part.parent()?.file_name()?;
        Some(Path::new("/dev").join(parent))
    };
    if let Some(root) = root_device(sys, mountinfo) {
        // The root itself, or the one device under it (dm-verity, dm-linear).
        let under: Vec<PathBuf> = fs::read_dir(root.join("slaves"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| fs::canonicalize(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let part = if under.len() == 1 { &under[0] } else { &root };
        if is_slot(part) {
            return Ok(disk_of(part));
        }
    }
    let Ok(dir) = fs::read_dir(sys.join("class/block")) else {
        return Ok(None);
    };
    let mut disks = Vec::new();
    for e in dir.flatten() {
        if !is_slot(&e.path()) {
            continue;
        }
        let real = fs::canonicalize(e.path())
            .with_context(|| format!("resolving {}", e.path().display()))?;
        disks.extend(disk_of(&real));
    }
    disks.sort();
    disks.dedup();
    if disks.len() > 1 {
        let names: Vec<String> = disks.iter().map(|d| d.display().to_string()).collect();
        crate::refuse!(
            codes::NO_SUCH_SLOT,
            "booted from slot {slot}, but several disks have a partition named {} ({}) and the \
             root file system is on none of them; pass --disk",
            slot.partition_label(),
            names.join(", ")
        );
    }
    Ok(disks.pop())
}

/// The sysfs directory of the block device mounted on `/` (the last mount there wins), from
/// its device number in `mountinfo`.
fn root_device(sys: &Path, mountinfo: &str) -> Option<PathBuf> {
    let dev = mountinfo
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some("/"))
        .filter_map(|l| l.split_whitespace().nth(2))
        .next_back()?;
    fs::canonicalize(sys.join("dev/block").join(dev)).ok()
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

    /// A sysfs tree with disks vda and vdb, each holding esp, root-a, root-b and data as
    /// partitions 1-4 (device numbers 254:16*i+n), and dm-0 over vdb2.
    fn two_copies() -> tempfile::TempDir {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        for d in [
            "class/block",
            "dev/block",
            "devices/virtual/block/dm-0/slaves",
        ] {
            fs::create_dir_all(sys.join(d)).unwrap();
        }
        for (i, disk) in ["vda", "vdb"].iter().enumerate() {
            for (n, label) in ["esp", "root-a", "root-b", "data"].iter().enumerate() {
                let part = format!("{disk}{}", n + 1);
                let dir = sys.join(format!("devices/pci0/{disk}/{part}"));
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join("partition"), format!("{}\n", n + 1)).unwrap();
                fs::write(
                    dir.join("uevent"),
                    format!("DEVTYPE=partition\nPARTNAME={label}\n"),
                )
                .unwrap();
                symlink(&dir, sys.join("class/block").join(&part)).unwrap();
                symlink(&dir, sys.join(format!("dev/block/254:{}", 16 * i + n + 1))).unwrap();
            }
        }
        let dm = sys.join("devices/virtual/block/dm-0");
        symlink(sys.join("devices/pci0/vdb/vdb2"), dm.join("slaves/vdb2")).unwrap();
        symlink(&dm, sys.join("dev/block/252:0")).unwrap();
        t
    }

    fn root_on(dev: &str) -> String {
        format!("22 1 {dev} / / ro,relatime - squashfs /dev/x ro\n30 22 0:5 / /dev rw - devtmpfs devtmpfs rw\n")
    }

    #[test]
    fn the_booted_disk_is_the_one_holding_the_root() {
        let t = two_copies();
        let sys = t.path();
        // Both disks have root-a; the root is mounted from the second.
        let got = booted_disk_in(sys, &root_on("254:18"), Slot::A).unwrap();
        assert_eq!(got, Some(PathBuf::from("/dev/vdb")));
        let got = booted_disk_in(sys, &root_on("254:2"), Slot::A).unwrap();
        assert_eq!(got, Some(PathBuf::from("/dev/vda")));
        // Through a device-mapper device over vdb2.
        let got = booted_disk_in(sys, &root_on("252:0"), Slot::A).unwrap();
        assert_eq!(got, Some(PathBuf::from("/dev/vdb")));
    }

    #[test]
    fn two_disks_with_the_slot_and_no_root_on_either_are_refused() {
        let t = two_copies();
        // The root is some other device (a rescue system's), or on the other slot.
        for mountinfo in ["", &root_on("8:1"), &root_on("254:3")] {
            let e = booted_disk_in(t.path(), mountinfo, Slot::A).unwrap_err();
            let r = e
                .downcast_ref::<crate::codes::Refusal>()
                .expect("a refusal");
            assert_eq!(r.code, codes::NO_SUCH_SLOT);
            assert!(
                e.to_string()
                    .contains("several disks have a partition named root-a (/dev/vda, /dev/vdb)"),
                "{e}"
            );
        }
        // With one disk, it is the one.
        fs::remove_file(t.path().join("class/block/vdb2")).unwrap();
        let got = booted_disk_in(t.path(), "", Slot::A).unwrap();
        assert_eq!(got, Some(PathBuf::from("/dev/vda")));
    }
}
