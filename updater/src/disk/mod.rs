//! The disk: an image file or a block device, its partitions (from the GPT, `gpt.rs`; an update
//! never changes the table, only `grow.rs` and `identity.rs` do), and bounded windows onto its partitions.
//!
//! This folder holds everything that touches the disk's bytes: the GPT (`gpt`), the FAT ESP
//! (`esp`, `fat_dir`, `fatsweep`), partition windows (`window`), O_DIRECT I/O (`direct`),
//! first-boot growth (`grow`) and per-machine GUIDs (`identity`). It uses only the crate root's `codes` and `fault`.

pub mod direct;
pub mod esp;
pub mod fat_dir;
pub mod fatsweep;
pub mod gpt;
pub mod grow;
pub mod identity;
pub mod window;

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::codes::{self, Refusal};
use crate::disk::gpt::ReadError;
use crate::disk::window::{BlockCache, Window};
use crate::fault;

/// The partition labels abupdate looks up (docs/layout.md); each may appear at most once
/// ([`Disk::open`] refuses a disk where one appears twice).
const USED_LABELS: [&str; 4] = abbundle::layout::PARTITIONS;

/// One GPT partition.
#[derive(Clone, Debug)]
pub struct Partition {
    /// 1-based index in the partition array (the `N` of `/dev/sdaN`).
    pub number: u32,
    /// The partition name (PARTLABEL).
    pub label: String,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// An open disk with its partition table.
pub struct Disk {
    pub path: PathBuf,
    file: File,
    /// The same disk opened with `O_DIRECT` for read-back checks, if supported.
    direct: Option<File>,
    pub size: u64,
    pub sector_size: u64,
    pub is_block_device: bool,
    pub partitions: Vec<Partition>,
}

impl Disk {
    /// Opens `path` (read-write unless `read_only`) and reads its GPT.
    pub fn open(path: &Path, read_only: bool) -> Result<Disk> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .with_context(|| format!("opening disk {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("inspecting {}", path.display()))?;
        let is_block_device = meta.file_type().is_block_device();
        if !is_block_device && !meta.is_file() {
            bail!(
                "{} is neither a block device nor a disk image file",
                path.display()
            );
        }
        // Seeking to the end gives the size of block devices too.
        let size = file
            .seek(SeekFrom::End(0))
            .with_context(|| format!("sizing {}", path.display()))?;
        let bad = |m: String| Refusal::new(codes::BAD_DISK, format!("{}: {m}", path.display()));
        let (sector_size, partitions) =
            crate::disk::gpt::read(&file, size).map_err(|e| match e {
                ReadError::Damaged(e) => bad(format!("no valid GPT: {e}")),
                ReadError::Inconsistent(e) => bad(format!("bad partition table: {e}")),
            })?;
        // A label we look up twice would make "the" partition ambiguous.
        for label in USED_LABELS {
            if partitions.iter().filter(|p| p.label == label).count() > 1 {
                return Err(bad(format!("more than one partition is named '{label}'")).into());
            }
        }
        Ok(Disk {
            path: path.to_path_buf(),
            direct: crate::disk::direct::open_rw(path, !read_only),
            file,
            size,
            sector_size,
            is_block_device,
            partitions,
        })
    }

    /// The partition named `label` (one of [`USED_LABELS`], which [`Disk::open`] made sure
    /// appear at most once), or a refusal naming what is missing.
    pub fn partition(&self, label: &str) -> Result<&Partition> {
        debug_assert!(
            USED_LABELS.contains(&label),
            "{label} is not a layout label"
        );
        self.partitions
            .iter()
            .find(|p| p.label == label)
            .ok_or_else(|| {
                Refusal::new(
                    codes::NO_SUCH_SLOT,
                    format!(
                        "{}: no partition named '{label}' (see docs/layout.md)",
                        self.path.display()
                    ),
                )
                .into()
            })
    }

    /// A read/write/seek window onto `p`, with a write-back block cache if `cache` is given.
    pub fn window(
        &self,
        p: &Partition,
        cache: Option<std::rc::Rc<std::cell::RefCell<BlockCache>>>,
    ) -> Window<'_> {
        Window::new(&self.file, p.start, p.len, cache)
    }

    /// A reader of the first `len` bytes of `p` (at most the partition), front to back.
    pub fn reader<'a>(&'a self, p: &'a Partition, len: u64) -> PartitionReader<'a> {
        PartitionReader {
            disk: self,
            part: p,
            pos: 0,
            end: len.min(p.len),
        }
    }

    /// Writes `data` at `offset` inside partition `p`.
    pub fn write_at(&self, p: &Partition, offset: u64, data: &[u8]) -> io::Result<()> {
        check_range(p, offset, data.len() as u64)?;
        self.file.write_all_at(data, p.start + offset)
    }

    /// Reads `buf.len()` bytes at `offset` inside partition `p`.
    pub fn read_at(&self, p: &Partition, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(p, offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, p.start + offset)
    }

    /// Writes the first `len` bytes of `buf` at `offset` inside `p`, bypassing the page cache
    /// (`O_DIRECT`) where supported: the write is rounded up to whole blocks, padded with
    /// zeros (the partition is block-aligned; bytes past the image are not part of it).
    pub fn write_to_device(
        &self,
        p: &Partition,
        offset: u64,
        buf: &mut crate::disk::direct::AlignedBuf,
        len: usize,
    ) -> io::Result<()> {
        match self.direct_span(p, offset, len) {
            Some((d, rounded)) => {
                let s = buf.as_mut_slice();
                s[len..rounded].fill(0);
                d.write_all_at(&s[..rounded], p.start + offset)
            }
            None => self.write_at(p, offset, &buf.as_slice()[..len]),
        }
    }

    /// The `O_DIRECT` handle and `len` rounded up to whole blocks, if a transfer of `len`
    /// bytes at `offset` inside `p` can bypass the page cache: supported, aligned on the disk,
    /// and inside the partition once rounded.
    fn direct_span(&self, p: &Partition, offset: u64, len: usize) -> Option<(&File, usize)> {
        let align = crate::disk::direct::ALIGN as u64;
        let rounded = (len as u64).div_ceil(align) * align;
        let d = self.direct.as_ref()?;
        let inside = offset.checked_add(rounded).is_some_and(|end| end <= p.len);
        ((p.start + offset).is_multiple_of(align) && inside).then_some((d, rounded as usize))
    }

    /// Starts writing out a range of `p` (asynchronously, `sync_file_range`).
    pub fn start_writeback(&self, p: &Partition, offset: u64, len: u64) {
        self.sync_range(p, offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }

    /// Waits until a range of `p` has been written to the device (not a cache flush: that is
    /// [`Disk::sync`]).
    pub fn wait_writeback(&self, p: &Partition, offset: u64, len: u64) {
        self.sync_range(
            p,
            offset,
            len,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        );
    }

    fn sync_range(&self, p: &Partition, offset: u64, len: u64, flags: libc::c_uint) {
        use std::os::fd::AsRawFd;
        // Advisory for speed only: durability comes from Disk::sync, and the read-back reads
        // the device (O_DIRECT writes dirty pages out first), so errors are ignored.
        // SAFETY: sync_file_range takes a descriptor and integers.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                (p.start + offset) as libc::off64_t,
                len as libc::off64_t,
                flags,
            );
        }
    }

    /// Reads `len` bytes at `offset` inside `p` from the device itself: with `O_DIRECT` where
    /// supported and aligned (`buf` must hold `len` rounded up to whole blocks), else after
    /// dropping the range from the page cache.
    pub fn read_from_device(
        &self,
        p: &Partition,
        offset: u64,
        buf: &mut crate::disk::direct::AlignedBuf,
        len: usize,
    ) -> io::Result<()> {
        match self.direct_span(p, offset, len) {
            Some((d, rounded)) => {
                d.read_exact_at(&mut buf.as_mut_slice()[..rounded], p.start + offset)
            }
            None => {
                self.drop_cache_range(p, offset, len as u64);
                self.read_at(p, offset, &mut buf.as_mut_slice()[..len])
            }
        }
    }

    /// Makes everything written so far durable (fdatasync; on a block device this also flushes
    /// the drive's write cache). A fault-injection point.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        fault::point("sync");
        Ok(())
    }

    /// Drops cached pages of a range, so the next read comes from the device and a read-back
    /// check tests what was stored, not what is still in memory. Advisory: errors are ignored.
    pub fn drop_cache(&self, p: &Partition, len: u64) {
        self.drop_cache_range(p, 0, len)
    }

    /// [`Disk::drop_cache`] for `len` bytes at `offset` inside `p`.
    pub fn drop_cache_range(&self, p: &Partition, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open.
        unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                (p.start + offset) as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            );
        }
    }
}

fn check_range(p: &Partition, offset: u64, len: u64) -> io::Result<()> {
    if offset.checked_add(len).is_none_or(|end| end > p.len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "access at {offset}+{len} outside partition '{}' ({} bytes)",
                p.label, p.len
            ),
        ));
    }
    Ok(())
}

/// Reads a partition front to back ([`Disk::reader`]).
pub struct PartitionReader<'a> {
    disk: &'a Disk,
    part: &'a Partition,
    pos: u64,
    end: u64,
}

impl io::Read for PartitionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.end - self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.disk.read_at(self.part, self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn reads_a_gpt_made_by_sgdisk() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        let f = File::create(&img).unwrap();
        f.set_len(8 << 20).unwrap();
        drop(f);
        let ok = Command::new("sgdisk")
            .args([
                "-n1:2048:+1M",
                "-c1:esp",
                "-n2:0:+2M",
                "-c2:root-a",
                "-n3:0:+2M",
                "-c3:root-b",
            ])
            .arg(&img)
            .output();
        let Ok(out) = ok else {
            eprintln!("sgdisk not installed; skipping");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let d = Disk::open(&img, true).unwrap();
        let a = d.partition("root-a").unwrap();
        assert_eq!((a.number, a.start, a.len), (2, 2 << 20, 2 << 20));
        assert!(d.partition("data").is_err());
        // Damage the primary header: the backup is used.
        let f = OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(b"XXXX", 512 + 16).unwrap();
        let d = Disk::open(&img, true).unwrap();
        assert_eq!(d.partition("root-b").unwrap().len, 2 << 20);
    }
}
