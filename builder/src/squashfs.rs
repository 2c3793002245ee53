//! The root filesystem: a system packed into a squashfs image by `mksquashfs`
//! (squashfs-tools), deterministically. `docs/builder.md` says why mksquashfs and not a
//! library, and lists the determinism rules; in short:
//!
//! - every timestamp, the superblock's included, is the build epoch (`SOURCE_DATE_EPOCH`,
//!   else 0): `-all-time`, `-mkfs-time`;
//! - every file is owned by root (`-all-root`), the root directory is mode 755;
//! - no extended attributes (`-no-xattrs`): the build machine's labels are not the device's;
//! - directories are sorted by name (squashfs requires it) and `-reproducible` (the default
//!   of squashfs-tools 4.5) keeps the output independent of thread scheduling;
//! - `-noappend`, `-no-recovery`: nothing of a previous run or of `$HOME` leaks in;
//! - `-no-fragments`: every file's tail gets its own block instead of being packed with other
//!   files' tails, so an unchanged file's blocks stay byte-identical when other files change
//!   or move, and delta updates find them (docs/builder.md: about 7% more image, 2.5 times
//!   fewer bytes fetched when a package of small files is renamed).
//!
//! Permissions, symlinks and hard links are kept as they are in the source.
//!
//! For a store path nothing is copied: the closure's paths are given to mksquashfs as sources
//! with `-no-strip`, so each lands at its own `/nix/store/...` path, and the top-level links
//! and mount points are pseudo-file definitions (`-p`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use tracing::info;

use crate::cmd;
use crate::image_def::Compression;
use crate::system::{store_dir, System, SystemKind};

/// How to pack.
#[derive(Clone, Debug)]
pub struct SquashfsOptions {
    pub compression: Compression,
    /// Data block size in bytes.
    pub block_size: u64,
    /// Timestamp of every inode and of the superblock (seconds since the epoch).
    pub epoch: u64,
    /// Threads for mksquashfs (`None`: all cores).
    pub processors: Option<u32>,
}

/// Empty directories of a store path's root, where the initrd and init mount things
/// (`docs/layout.md`), with their modes.
pub const MOUNT_POINTS: [(&str, &str); 7] = [
    ("dev", "755"),
    ("proc", "555"),
    ("sys", "555"),
    ("run", "755"),
    ("tmp", "1777"),
    ("data", "755"),
    ("var", "755"),
];

/// Packs `system` into the squashfs image `out` (replaced if it exists).
pub fn make(system: &System, out: &Path, opts: &SquashfsOptions) -> Result<()> {
    let mksquashfs = cmd::require_program("mksquashfs", "install squashfs-tools")?;
    let mut c = Command::new(mksquashfs);
    match &system.kind {
        SystemKind::Directory => {
            info!("packing directory {} into squashfs", system.path.display());
            c.arg(&system.path).arg(out);
        }
        SystemKind::StorePath { closure } => {
            info!(
                "packing the closure of {} ({} store paths) into squashfs",
                system.path.display(),
                closure.len()
            );
            c.args(closure).arg(out).arg("-no-strip");
            for def in store_pseudo_files(system) {
                c.arg("-p").arg(def);
            }
        }
    }
    common_args(&mut c, opts);
    cmd::run(&mut c, None)
        .with_context(|| format!("building the root squashfs {}", out.display()))?;
    Ok(())
}

fn common_args(c: &mut Command, opts: &SquashfsOptions) {
    // mksquashfs takes 32-bit times.
    let t = opts.epoch.min(u32::MAX as u64).to_string();
    // mksquashfs refuses SOURCE_DATE_EPOCH together with -all-time/-mkfs-time; the times are
    // given explicitly (and come from SOURCE_DATE_EPOCH when it is set).
    c.env_remove("SOURCE_DATE_EPOCH");
    c.args([
        "-noappend",
        "-no-recovery",
        "-quiet",
        "-no-progress",
        "-reproducible",
        "-no-fragments",
    ])
    .args(["-no-xattrs", "-all-root", "-root-mode", "755"])
    .args(["-all-time", &t, "-mkfs-time", &t])
    .args(["-comp", opts.compression.mksquashfs_name()])
    .args(["-b", &opts.block_size.to_string()]);
    if let Some(n) = opts.processors {
        c.args(["-processors", &n.to_string()]);
    }
}

/// Pseudo-file definitions for a store path's root: the directories leading to the store
/// (modes fixed, whatever the build machine's are), `/init`, `/etc`, `/system` and the mount
/// points.
fn store_pseudo_files(system: &System) -> Vec<String> {
    let store = store_dir();
    let rel = |p: &Path| {
        p.strip_prefix("/")
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let mut defs = Vec::new();
    let mut dir = PathBuf::new();
    for part in rel(&store).split('/') {
        dir.push(part);
        defs.push(format!("{} m 755 0 0", dir.display()));
    }
    let top = system.path.display();
    defs.push(format!("init s 777 0 0 {top}/init"));
    if system.has_etc {
        defs.push(format!("etc s 777 0 0 {top}/etc"));
    }
    defs.push(format!("system s 777 0 0 {top}"));
    for (name, mode) in MOUNT_POINTS {
        defs.push(format!("{name} d {mode} 0 0"));
    }
    defs
}
