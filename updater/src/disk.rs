//! The disk: an image file or a block device, its GPT (read-only), and bounded windows onto
//! its partitions.
//!
//! The GPT is parsed here rather than with the `gpt` crate: reading is all the updater does
//! with it (an update never changes the partition table), the format is small
//! (UEFI 2.10, section 5.3), and a reader of our own checks exactly what we rely on: the
//! header CRC, the partition array CRC, and partitions that fit the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::codes::{self, Refusal};
use crate::fault;
use crate::window::{BlockCache, Window};

/// Largest partition array we read (128 entries of 128 bytes is the usual 16 KiB).
const MAX_ARRAY_BYTES: u64 = 1 << 20;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";

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
        let (sector_size, partitions) = read_gpt(&file, size).map_err(|e| {
            anyhow::Error::new(Refusal::new(
                codes::BAD_DISK,
                format!("{}: no valid GPT: {e}", path.display()),
            ))
        })?;
        Ok(Disk {
            path: path.to_path_buf(),
            direct: crate::direct::open_rw(path, !read_only),
            file,
            size,
            sector_size,
            is_block_device,
            partitions,
        })
    }

    /// The partition named `label`, or a refusal naming what is missing.
    pub fn partition(&self, label: &str) -> Result<&Partition> {
        let mut found = self.partitions.iter().filter(|p| p.label == label);
        match (found.next(), found.next()) {
            (Some(p), None) => Ok(p),
            (Some(_), Some(_)) => Err(Refusal::new(
                codes::BAD_DISK,
                format!(
                    "{}: more than one partition is named '{label}'",
                    self.path.display()
                ),
            )
            .into()),
            (None, _) => Err(Refusal::new(
                codes::NO_SUCH_SLOT,
                format!(
                    "{}: no partition named '{label}' (see docs/layout.md)",
                    self.path.display()
                ),
            )
            .into()),
        }
    }

    /// A read/write/seek window onto `p`, with a write-back block cache if `cache` is given.
    pub fn window(
        &self,
        p: &Partition,
        cache: Option<std::rc::Rc<std::cell::RefCell<BlockCache>>>,
    ) -> Window<'_> {
        Window::new(&self.file, p.start, p.len, cache)
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
        buf: &mut crate::direct::AlignedBuf,
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
        let align = crate::direct::ALIGN as u64;
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

    /// Reads `len` bytes at `offset` inside `p` from the device itself: with `O_DIRECT`
    /// where supported (`offset` must then be aligned, `buf` an aligned buffer of at least `len`
    /// rounded up), else after dropping the range from the page cache.
    pub fn read_from_device(
        &self,
        p: &Partition,
        offset: u64,
        buf: &mut crate::direct::AlignedBuf,
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

/// Reads the primary GPT, or the backup if the primary is damaged. Tries 512- and
/// 4096-byte sectors.
fn read_gpt(file: &File, size: u64) -> std::result::Result<(u64, Vec<Partition>), String> {
    let mut errors = Vec::new();
    for ss in [512u64, 4096] {
        if size < ss * 3 {
            continue;
        }
        let last_lba = size / ss - 1;
        for lba in [1, last_lba] {
            match read_table(file, size, ss, lba) {
                Ok(parts) => return Ok((ss, parts)),
                Err(e) => errors.push(format!("{ss}-byte sectors, LBA {lba}: {e}")),
            }
        }
    }
    Err(errors
        .first()
        .cloned()
        .unwrap_or_else(|| "disk too small".into()))
}

fn read_table(
    file: &File,
    size: u64,
    ss: u64,
    lba: u64,
) -> std::result::Result<Vec<Partition>, String> {
    let mut h = vec![0u8; ss as usize];
    file.read_exact_at(&mut h, lba * ss)
        .map_err(|e| e.to_string())?;
    if &h[0..8] != GPT_SIGNATURE {
        return Err("no GPT signature".into());
    }
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let header_size = u32_at(&h, 12) as usize;
    if !(92..=ss as usize).contains(&header_size) {
        return Err(format!("bad header size {header_size}"));
    }
    let mut copy = h[..header_size].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != u32_at(&h, 16) {
        return Err("header checksum mismatch".into());
    }
    if u64_at(&h, 24) != lba {
        return Err("header is not where it says it is".into());
    }
    let array_lba = u64_at(&h, 72);
    let count = u32_at(&h, 80) as u64;
    let entry_size = u32_at(&h, 84) as u64;
    if entry_size < 128 || entry_size & 7 != 0 || count * entry_size > MAX_ARRAY_BYTES {
        return Err(format!(
            "bad partition array ({count} entries of {entry_size} bytes)"
        ));
    }
    let mut array = vec![0u8; (count * entry_size) as usize];
    let array_off = array_lba.checked_mul(ss).ok_or("bad array offset")?;
    if array_off + array.len() as u64 > size {
        return Err("partition array outside the disk".into());
    }
    file.read_exact_at(&mut array, array_off)
        .map_err(|e| e.to_string())?;
    if crc32fast::hash(&array) != u32_at(&h, 88) {
        return Err("partition array checksum mismatch".into());
    }
    let mut parts = Vec::new();
    for i in 0..count {
        let e = &array[(i * entry_size) as usize..((i + 1) * entry_size) as usize];
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        if last < first || (last + 1).checked_mul(ss).is_none_or(|end| end > size) {
            return Err(format!("partition {} lies outside the disk", i + 1));
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        parts.push(Partition {
            number: i as u32 + 1,
            label: String::from_utf16_lossy(&units),
            start: first * ss,
            len: (last - first + 1) * ss,
        });
    }
    Ok(parts)
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
