//! Growing the data partition when the disk is larger than the image (a VPS whose provider
//! gives more disk than the image was built for), run by `boot-check`. The GPT's backup copy
//! moves to the disk's new end and the data partition, the last one, is extended to the last
//! 1 MiB boundary before it; the initrd grows the file system at the next boot (`resize2fs`,
//! offline, before mounting).
//!
//! Crash safety: the new backup table is written and synced first, then the primary table.
//! A power cut before the primary is written leaves the old, consistent table (its header
//! still points at the old backup, which is intact); a cut while the primary is written leaves
//! a primary that fails its checksum, and readers then use the new backup at the disk's end.
//! The partitions other than `data` never change.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tracing::info;

use crate::disk::Disk;
use crate::fault;

const MIB: u64 = 1 << 20;

/// What a growth did: the data partition's old and new length in bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Grown {
    pub old_len: u64,
    pub new_len: u64,
}

/// A GPT header's fields this module reads or changes, with the raw sector.
struct Header {
    raw: Vec<u8>,
    size: usize,
    alternate_lba: u64,
    last_usable: u64,
    array_lba: u64,
    array_len: usize,
    array_crc: u32,
}

impl Header {
    /// The header at `lba`, if it is one and says it is there.
    fn read(file: &File, ss: u64, lba: u64) -> Result<Header> {
        let mut raw = vec![0u8; ss as usize];
        file.read_exact_at(&mut raw, lba * ss)
            .context("reading a GPT header")?;
        let size = u32_at(&raw, 12) as usize;
        if &raw[..8] != b"EFI PART" || !(92..=ss as usize).contains(&size) {
            bail!("no GPT header at sector {lba}");
        }
        if crc(&raw, size) != u32_at(&raw, 16) || u64_at(&raw, 24) != lba {
            bail!("the GPT header at sector {lba} is damaged");
        }
        let array_len = u32_at(&raw, 80) as u64 * u32_at(&raw, 84) as u64;
        if array_len > 1 << 20 {
            bail!("the GPT header at sector {lba} has an oversized partition array");
        }
        Ok(Header {
            size,
            alternate_lba: u64_at(&raw, 32),
            last_usable: u64_at(&raw, 48),
            array_lba: u64_at(&raw, 72),
            array_len: array_len as usize,
            array_crc: u32_at(&raw, 88),
            raw,
        })
    }

    /// The partition array, if it matches the header's checksum.
    fn array(&self, file: &File, ss: u64) -> Result<Vec<u8>> {
        let mut array = vec![0u8; self.array_len];
        file.read_exact_at(&mut array, self.array_lba * ss)
            .context("reading the GPT partition array")?;
        if crc32fast::hash(&array) != self.array_crc {
            bail!(
                "the GPT partition array at sector {} is damaged",
                self.array_lba
            );
        }
        Ok(array)
    }

    /// A copy at `my_lba`, pointing at `alternate`, with the array at `array_lba`.
    fn copy(
        &self,
        my_lba: u64,
        alternate: u64,
        array_lba: u64,
        last_usable: u64,
        array_crc: u32,
    ) -> Vec<u8> {
        let mut b = self.raw.clone();
        put_u64(&mut b, 24, my_lba);
        put_u64(&mut b, 32, alternate);
        put_u64(&mut b, 48, last_usable);
        put_u64(&mut b, 72, array_lba);
        put_u32(&mut b, 88, array_crc);
        let c = crc(&b, self.size);
        put_u32(&mut b, 16, c);
        b
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

/// CRC32 of a header's first `size` bytes with its checksum field taken as zero.
fn crc(raw: &[u8], size: usize) -> u32 {
    let mut h = raw[..size].to_vec();
    h[16..20].fill(0);
    crc32fast::hash(&h)
}

/// Grows the partition labelled `data` of the disk at `path` to the end of the disk, if the
/// disk is larger than its GPT says and `data` is the last partition. `None`: nothing to do.
pub fn data_partition(path: &Path) -> Result<Option<Grown>> {
    let disk = Disk::open(path, true)?;
    let ss = disk.sector_size;
    let data = disk.partition("data")?.clone();
    if disk
        .partitions
        .iter()
        .any(|p| p.number != data.number && p.start > data.start)
    {
        info!("the data partition is not the last one: not growing it");
        return Ok(None);
    }
    drop(disk);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // Seeking to the end gives the size of block devices too.
    let size = (&file)
        .seek(SeekFrom::End(0))
        .with_context(|| format!("sizing {}", path.display()))?;
    let last_lba = size / ss - 1;
    let primary = Header::read(&file, ss, 1).and_then(|h| h.array(&file, ss).map(|a| (h, a)));
    if let Ok((h, _)) = &primary {
        if h.alternate_lba == last_lba {
            return Ok(None);
        }
        if h.alternate_lba > last_lba {
            bail!(
                "the GPT says the disk ends at sector {}, but its last sector is {last_lba}: the disk shrank",
                h.alternate_lba
            );
        }
    }
    let end_of = |array: &[u8], entry_size: u64| {
        let at = ((data.number as u64 - 1) * entry_size + 40) as usize;
        u64_at(array, at)
    };
    let entry_size = |h: &Header| u32_at(&h.raw, 84) as u64;

    // A growth that stopped after writing its backup table: finish it from that table.
    if let Ok(b) = Header::read(&file, ss, last_lba) {
        if let Ok(array) = b
            .array(&file, ss)
            .and_then(|a| same_disk(&primary, &b, &a, data.number).map(|()| a))
        {
            let array_lba = primary.as_ref().map_or(2, |(h, _)| h.array_lba);
            let old_len = primary.as_ref().map_or(data.len, |(h, a)| {
                (end_of(a, entry_size(h)) + 1) * ss - data.start
            });
            write_primary(&file, ss, &b, &array, array_lba, last_lba)?;
            return Ok(Some(Grown {
                old_len,
                new_len: (end_of(&array, entry_size(&b)) + 1) * ss - data.start,
            }));
        }
    }
    let (h, mut array) = primary?;
    let array_sectors = (array.len() as u64).div_ceil(ss);
    let backup_array_lba = last_lba - array_sectors;
    let last_usable = backup_array_lba - 1;
    // The data partition ends at the last 1 MiB boundary the disk allows, never earlier.
    let old_end = end_of(&array, entry_size(&h));
    let new_end = ((last_usable + 1) * ss / MIB * MIB / ss - 1).max(old_end);
    let at = ((data.number as u64 - 1) * entry_size(&h) + 40) as usize;
    put_u64(&mut array, at, new_end);
    let array_crc = crc32fast::hash(&array);

    // 1. The new backup: array, then header, at the disk's end; synced.
    file.write_all_at(&array, backup_array_lba * ss)
        .context("writing the backup GPT")?;
    fault::point("gpt write");
    let backup = h.copy(last_lba, 1, backup_array_lba, last_usable, array_crc);
    file.write_all_at(&backup, last_lba * ss)
        .context("writing the backup GPT")?;
    fault::point("gpt write");
    sync(&file)?;
    // 2. The primary, from it.
    let b = Header::read(&file, ss, last_lba)?;
    write_primary(&file, ss, &b, &array, h.array_lba, last_lba)?;
    Ok(Some(Grown {
        old_len: (old_end + 1) * ss - data.start,
        new_len: (new_end + 1) * ss - data.start,
    }))
}

/// Refuses a backup table that is not this disk's own (a stale table left at the end of a
/// reused disk): same disk GUID, and the same partitions but for the data partition's end.
fn same_disk(
    primary: &Result<(Header, Vec<u8>)>,
    b: &Header,
    b_array: &[u8],
    data_number: u32,
) -> Result<()> {
    let Ok((h, array)) = primary else {
        // No readable primary: the disk was opened through this very backup.
        return Ok(());
    };
    let entry_size = u32_at(&h.raw, 84) as usize;
    let end = (data_number as usize - 1) * entry_size + 40;
    let masked = |a: &[u8]| {
        let mut a = a.to_vec();
        a[end..end + 8].fill(0);
        a
    };
    if h.raw[56..72] != b.raw[56..72] || masked(array) != masked(b_array) {
        bail!("the table at the end of the disk is not this disk's");
    }
    Ok(())
}

/// Writes the primary table as a copy of the backup `b` (whose array is `array`), with its
/// array at `array_lba`, and the protective MBR's size; synced.
fn write_primary(
    file: &File,
    ss: u64,
    b: &Header,
    array: &[u8],
    array_lba: u64,
    last_lba: u64,
) -> Result<()> {
    file.write_all_at(array, array_lba * ss)
        .context("writing the GPT")?;
    fault::point("gpt write");
    let primary = b.copy(1, last_lba, array_lba, b.last_usable, b.array_crc);
    file.write_all_at(&primary, ss).context("writing the GPT")?;
    fault::point("gpt write");
    // The protective MBR's one partition covers the disk (capped at 2^32 - 1 sectors).
    let mut mbr_type = [0u8; 1];
    file.read_exact_at(&mut mbr_type, 446 + 4)
        .context("reading the protective MBR")?;
    if mbr_type[0] == 0xee {
        let sectors = last_lba.min(u32::MAX as u64) as u32;
        file.write_all_at(&sectors.to_le_bytes(), 446 + 12)
            .context("writing the protective MBR")?;
        fault::point("gpt write");
    }
    sync(file)
}

fn sync(file: &File) -> Result<()> {
    file.sync_data().context("syncing the GPT")?;
    fault::point("sync");
    Ok(())
}
