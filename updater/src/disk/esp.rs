//! The EFI system partition, reached through the `fatfs` crate on the partition itself: the
//! running system never mounts it, so its kernel needs no vfat and nothing else caches it.
//!
//! Not atomic, and not pretending to be: FAT has no journal, and fatfs 0.3.6 renames by
//! deleting and re-creating, and cannot rename onto an existing name. So a changed boot entry
//! is written under its new name first, synced, and only then is the old name removed: a power
//! cut in between leaves two entries for the same slot, never none, and the boot-entry model
//! (`boot::entries::select`) treats two entries of one slot as that slot. Every step that must be
//! durable ends with [`Esp::sync`].

use std::io::{Read, Seek, Write};

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

use std::cell::RefCell;
use std::rc::Rc;

use crate::disk::window::{BlockCache, Window};
use crate::disk::Disk;
use crate::{codes, refuse};

/// Largest entry or info file we read: they are a few hundred bytes.
const MAX_SMALL_FILE: u64 = 64 * 1024;

type Fs<'d> = fatfs::FileSystem<Window<'d>>;
/// An open file on the ESP.
pub type EspFile<'a, 'd> = fatfs::File<'a, Window<'d>>;

/// Timestamps for what we write, from the system clock. fatfs without its `chrono` feature
/// would write the date 0 (month 0, day 0), and OVMF's FAT driver then refuses to rename the
/// file: systemd-boot could not count down a new entry's tries, and a broken update would be
/// retried forever instead of falling back.
#[derive(Debug)]
struct SystemClock;

static SYSTEM_CLOCK: SystemClock = SystemClock;

impl SystemClock {
    fn now() -> abbundle::fat_time::FatTime {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        abbundle::fat_time::from_epoch(secs)
    }
}

impl fatfs::TimeProvider for SystemClock {
    fn get_current_date(&self) -> fatfs::Date {
        self.get_current_date_time().date
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        let t = Self::now();
        fatfs::DateTime {
            date: fatfs::Date {
                year: t.year,
                month: t.month,
                day: t.day,
            },
            time: fatfs::Time {
                hour: t.hour,
                min: t.min,
                sec: t.sec,
                millis: 0,
            },
        }
    }
}

/// A file on the ESP that is rewritten in place ([`Esp::in_place`]).
#[derive(Clone, Debug)]
pub struct InPlace {
    path: String,
    /// Byte offset of its data inside the partition.
    offset: u64,
    len: usize,
}

/// An open ESP.
pub struct Esp<'d> {
    fs: Fs<'d>,
    disk: &'d Disk,
    /// A second handle on the partition, sharing the FAT driver's block cache, to flush it.
    flusher: Window<'d>,
}

impl<'d> Esp<'d> {
    /// Opens the FAT file system of the partition labelled `esp`.
    pub fn open(disk: &'d Disk) -> Result<Esp<'d>> {
        let p = disk.partition(abbundle::layout::ESP_LABEL)?;
        let options = fatfs::FsOptions::new().time_provider(&SYSTEM_CLOCK);
        // Fault-injection builds can turn the cache off (ABUPDATE_FAULT_NO_CACHE=1), so the
        // crash tests also cut between the FAT driver's individual writes in program order.
        let uncached = cfg!(feature = "fault-injection")
            && std::env::var_os("ABUPDATE_FAULT_NO_CACHE").is_some();
        let cache = (!uncached).then(|| Rc::new(RefCell::new(BlockCache::default())));
        let fs =
            fatfs::FileSystem::new(disk.window(p, cache.clone()), options).with_context(|| {
                format!(
                    "opening the FAT file system of the ESP on {}",
                    disk.path.display()
                )
            })?;
        Ok(Esp {
            fs,
            disk,
            flusher: disk.window(p, cache),
        })
    }

    /// The names of the files (not directories) in `dir`; none if `dir` does not exist.
    pub fn list_files(&self, dir: &str) -> Result<Vec<String>> {
        let d = match self.fs.root_dir().open_dir(dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("opening {dir} on the ESP")),
        };
        let mut out = Vec::new();
        for e in d.iter() {
            let e = e.with_context(|| format!("listing {dir} on the ESP"))?;
            if !e.is_dir() {
                out.push(e.file_name());
            }
        }
        Ok(out)
    }

    /// Whether `path` (absolute as in an entry, `/a/vmlinuz`, or relative) is a file.
    pub fn exists(&self, path: &str) -> bool {
        self.fs
            .root_dir()
            .open_file(path.trim_start_matches('/'))
            .is_ok()
    }

    /// A small file's contents, `None` if it does not exist.
    pub fn read_small(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let mut f = match self.fs.root_dir().open_file(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {path} on the ESP")),
        };
        let mut v = Vec::new();
        (&mut f)
            .take(MAX_SMALL_FILE)
            .read_to_end(&mut v)
            .with_context(|| format!("reading {path} on the ESP"))?;
        Ok(Some(v))
    }

    /// Runs `f` on a reader of the file at `path`; `None` if it does not exist (a delta
    /// apply reads the slots' boot files as seeds).
    pub fn read_with<T>(
        &self,
        path: &str,
        f: impl FnOnce(&mut dyn Read) -> std::io::Result<T>,
    ) -> Result<Option<T>> {
        let mut file = match self.fs.root_dir().open_file(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {path} on the ESP")),
        };
        f(&mut file)
            .map(Some)
            .with_context(|| format!("reading {path} on the ESP"))
    }

    /// Opens the file at `path` for reading.
    pub fn open_file(&self, path: &str) -> Result<EspFile<'_, 'd>> {
        self.fs
            .root_dir()
            .open_file(path)
            .with_context(|| format!("opening {path} on the ESP"))
    }

    /// Reads `buf.len()` bytes of the open file `f` (at `path`) from `offset`. The FAT driver
    /// seeks by walking the cluster chain from the file's start, except to where the file
    /// stands: reads that follow each other through one open file cost no walk.
    pub fn read_exact_at(f: &mut EspFile, path: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        f.seek(std::io::SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(buf))
            .with_context(|| format!("reading {path} on the ESP at {offset}"))
    }

    /// SHA-256 and length of a file, streaming with one buffer.
    pub fn hash_file(&self, path: &str) -> Result<([u8; 32], u64)> {
        let mut f = self
            .fs
            .root_dir()
            .open_file(path)
            .with_context(|| format!("opening {path} on the ESP"))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut len = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {path} on the ESP"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            len += n as u64;
        }
        Ok((h.finalize().into(), len))
    }

    /// Creates `dir` if missing (one level below the root, or `loader/entries`), each new
    /// directory in the form `fsck.fat` accepts ([`Esp::create_one_dir`]).
    pub fn create_dir_all(&self, dir: &str) -> Result<()> {
        let mut cur = self.fs.root_dir();
        let parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            cur = match cur.open_dir(part) {
                Ok(d) => d,
                Err(_) => self
                    .create_one_dir(&cur, &parts[..i], part)
                    .with_context(|| format!("creating {dir} on the ESP"))?,
            };
        }
        Ok(())
    }

    /// Opens `path` for writing from the start, emptied.
    pub fn create(&self, path: &str) -> Result<EspFile<'_, 'd>> {
        if let Some((dir, _)) = path.rsplit_once('/') {
            self.create_dir_all(dir)?;
        }
        let mut f = self
            .fs
            .root_dir()
            .create_file(path)
            .with_context(|| format!("creating {path} on the ESP"))?;
        f.truncate()
            .with_context(|| format!("truncating {path} on the ESP"))?;
        Ok(f)
    }

    /// Writes a whole small file and flushes its directory entry.
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let mut f = self.create(path)?;
        f.write_all(data)
            .with_context(|| format!("writing {path} on the ESP"))?;
        f.flush()
            .with_context(|| format!("flushing {path} on the ESP"))?;
        Ok(())
    }

    /// Removes `path` if it exists.
    pub fn remove(&self, path: &str) -> Result<()> {
        match self.fs.root_dir().remove(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {path} on the ESP")),
        }
    }

    /// The size of a cluster and how many are free.
    pub fn space(&self) -> Result<(u64, u64)> {
        let st = self
            .fs
            .stats()
            .context("counting the ESP's free clusters")?;
        Ok((st.cluster_size() as u64, st.free_clusters() as u64))
    }

    /// The length of the file at `path`, 0 if there is none.
    pub fn file_len(&self, path: &str) -> Result<u64> {
        match self.fs.root_dir().open_file(path) {
            Ok(mut f) => {
                use std::io::Seek;
                f.seek(std::io::SeekFrom::End(0))
                    .with_context(|| format!("sizing {path} on the ESP"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e).with_context(|| format!("opening {path} on the ESP")),
        }
    }

    /// Whether the directory `dir` exists.
    pub fn dir_exists(&self, dir: &str) -> bool {
        self.fs.root_dir().open_dir(dir).is_ok()
    }

    /// Locates the file `path` for [`Esp::write_in_place`]: it must be exactly `len` bytes in
    /// one cluster. Reads only.
    pub fn in_place(&self, path: &str, len: usize) -> Result<InPlace> {
        let Some((parent, short)) = self.short_path(path)? else {
            refuse!(
                codes::BAD_DISK,
                "{path} is missing on the ESP: it cannot be rewritten in place"
            );
        };
        let parent: Vec<&str> = parent.iter().map(String::as_str).collect();
        let mut w = self.flusher.clone();
        let ext = crate::disk::fat_dir::file_extent(&mut w, &parent, &short)
            .with_context(|| format!("locating {path} on the ESP"))?;
        if ext.len != len as u64 || ext.clusters != 1 || ext.cluster_bytes < ext.len {
            refuse!(
                codes::BAD_DISK,
                "{path} on the ESP is {} bytes in {} clusters, not {len} bytes in one: it cannot \
                 be rewritten in place",
                ext.len,
                ext.clusters
            );
        }
        // Its cluster must be its own: a cross-linked FAT would have the write land in another
        // file (a kernel, grub.cfg) or in the other env copy.
        let others = crate::disk::fat_dir::sharers(&mut w, &ext)
            .with_context(|| format!("checking the cluster of {path} on the ESP"))?;
        if !others.is_empty() {
            refuse!(
                codes::BAD_DISK,
                "{path} on the ESP is cross-linked: its cluster {} is not its own ({}); writing it \
                 in place would overwrite another file, so it cannot be rewritten in place",
                ext.first,
                others.join(", ")
            );
        }
        Ok(InPlace {
            path: path.to_string(),
            offset: ext.offset,
            len,
        })
    }

    /// The directories leading to `path` and the file's short name there (which the raw FAT
    /// lookups go by; readers find it by its long name); `None` if there is no such file.
    fn short_path(&self, path: &str) -> Result<Option<(Vec<String>, String)>> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent = dir.split('/').filter(|p| !p.is_empty()).map(String::from);
        let short = self
            .fs
            .root_dir()
            .open_dir(dir)
            .with_context(|| format!("opening {dir} on the ESP"))?
            .iter()
            .filter_map(|e| e.ok())
            .find(|e| e.is_file() && e.file_name().eq_ignore_ascii_case(name))
            .map(|e| e.short_file_name());
        Ok(short.map(|s| (parent.collect(), s)))
    }

    /// Where the file `path` lies on the disk (see [`crate::disk::fat_dir::file_runs`]), for
    /// reading it from another thread while nothing writes it: runs of (offset inside the
    /// ESP partition, length). Reads only.
    pub fn file_runs(&self, path: &str) -> Result<Vec<(u64, u64)>> {
        let Some((parent, short)) = self.short_path(path)? else {
            anyhow::bail!("{path} is missing on the ESP");
        };
        let parent: Vec<&str> = parent.iter().map(String::as_str).collect();
        self.flusher.flush_cache().context("writing the ESP")?;
        let mut w = self.flusher.clone();
        crate::disk::fat_dir::file_runs(&mut w, &parent, &short)
            .with_context(|| format!("locating {path} on the ESP"))
    }

    /// Rewrites a file located by [`Esp::in_place`] in place: one write of its data on the
    /// partition, never a FAT or directory write (so a power cut leaves the old or the new
    /// bytes, and the file system as it was); synced, and read back from the device.
    pub fn write_in_place(&self, f: &InPlace, data: &[u8]) -> Result<()> {
        let path = &f.path;
        if data.len() != f.len {
            anyhow::bail!(
                "{path}: {} bytes to write in place, not {}",
                data.len(),
                f.len
            );
        }
        // The block cache may hold the old sector (read ahead with the directory): write it
        // out and empty it first, so no stale copy of the sector is written back later.
        self.flusher.flush_cache().context("writing the ESP")?;
        let p = self.disk.partition(abbundle::layout::ESP_LABEL)?;
        self.disk
            .write_at(p, f.offset, data)
            .with_context(|| format!("writing {path} on the ESP"))?;
        // A cut here: the write may or may not have reached the disk.
        crate::fault::point("esp write");
        self.disk.sync().context("syncing the ESP")?;
        let mut buf = crate::disk::direct::AlignedBuf::new(data.len());
        self.disk
            .read_from_device(p, f.offset, &mut buf, data.len())
            .with_context(|| format!("reading back {path} on the ESP"))?;
        if &buf.as_slice()[..data.len()] != data {
            refuse!(
                codes::READBACK_MISMATCH,
                "{path} on the ESP does not read back as written"
            );
        }
        Ok(())
    }

    /// Drops the ESP from the page cache, so what is read next comes from the device.
    pub fn drop_cache(&self) -> Result<()> {
        let p = self.disk.partition(abbundle::layout::ESP_LABEL)?;
        self.disk.drop_cache(p, p.len);
        Ok(())
    }

    /// Makes everything written so far durable: writes out the block cache, then syncs.
    pub fn sync(&self) -> Result<()> {
        self.flusher.flush_cache().context("writing the ESP")?;
        self.disk.sync().context("syncing the ESP")
    }

    /// Writes the FAT's bookkeeping (FSInfo, clean flag) and syncs.
    pub fn close(self) -> Result<()> {
        let (disk, flusher) = (self.disk, self.flusher);
        self.fs.unmount().context("closing the ESP's file system")?;
        flusher.flush_cache().context("writing the ESP")?;
        disk.sync().context("syncing the ESP")
    }
}

/// Path of an entry file on the ESP.
pub use abbundle::layout::entry_path;

impl<'d> Esp<'d> {
    /// Creates directory `name` in `parent_dir` (at path `parent`) through fatfs, then puts
    /// right what fatfs 0.3.6 gets wrong (`fat_dir`); checked before anything is created.
    fn create_one_dir<'a>(
        &'a self,
        parent_dir: &fatfs::Dir<'a, Window<'d>>,
        parent: &[&str],
        name: &str,
    ) -> Result<fatfs::Dir<'a, Window<'d>>> {
        let mut w = self.flusher.clone();
        crate::disk::fat_dir::check(&mut w, parent, name)?;
        let d = parent_dir.create_dir(name)?;
        crate::disk::fat_dir::fix_new(&mut w, parent, name)?;
        Ok(d)
    }
}
