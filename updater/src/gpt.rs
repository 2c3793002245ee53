//! The GUID partition table on disk (UEFI 2.10, section 5.3): reading and checking one copy
//! (header + partition array), and re-placing a copy elsewhere with one partition's end
//! changed, which is all `grow` does to it.
//!
//! Parsed here rather than with the `gpt` crate: the format is small, and a reader of our own
//! checks exactly what we rely on: the header CRC, the partition array CRC, that a header is
//! where it says it is, and partitions that fit the disk.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::disk::Partition;

/// Largest partition array we read (128 entries of 128 bytes is the usual 16 KiB).
const MAX_ARRAY_BYTES: u64 = 1 << 20;
const SIGNATURE: &[u8; 8] = b"EFI PART";

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// One checked copy of the table.
#[derive(Clone)]
pub struct Table {
    /// The header's sector.
    pub header: Vec<u8>,
    pub array: Vec<u8>,
}

impl Table {
    /// Reads the copy whose header is at `lba` of a disk of `size` bytes with `ss`-byte
    /// sectors, and checks it.
    pub fn read(file: &File, size: u64, ss: u64, lba: u64) -> Result<Table, String> {
        let mut header = vec![0u8; ss as usize];
        file.read_exact_at(&mut header, lba * ss)
            .map_err(|e| e.to_string())?;
        if &header[0..8] != SIGNATURE {
            return Err("no GPT signature".into());
        }
        let header_size = u32_at(&header, 12) as usize;
        if !(92..=ss as usize).contains(&header_size) {
            return Err(format!("bad header size {header_size}"));
        }
        if header_crc(&header) != u32_at(&header, 16) {
            return Err("header checksum mismatch".into());
        }
        if u64_at(&header, 24) != lba {
            return Err("header is not where it says it is".into());
        }
        let count = u32_at(&header, 80) as u64;
        let entry_size = u32_at(&header, 84) as u64;
        if entry_size < 128 || entry_size & 7 != 0 || count * entry_size > MAX_ARRAY_BYTES {
            return Err(format!(
                "bad partition array ({count} entries of {entry_size} bytes)"
            ));
        }
        let mut array = vec![0u8; (count * entry_size) as usize];
        let array_off = u64_at(&header, 72)
            .checked_mul(ss)
            .ok_or("bad array offset")?;
        if array_off + array.len() as u64 > size {
            return Err("partition array outside the disk".into());
        }
        file.read_exact_at(&mut array, array_off)
            .map_err(|e| e.to_string())?;
        if crc32fast::hash(&array) != u32_at(&header, 88) {
            return Err("partition array checksum mismatch".into());
        }
        Ok(Table { header, array })
    }

    /// Where the other copy's header is.
    pub fn alternate_lba(&self) -> u64 {
        u64_at(&self.header, 32)
    }

    pub fn last_usable(&self) -> u64 {
        u64_at(&self.header, 48)
    }

    pub fn array_lba(&self) -> u64 {
        u64_at(&self.header, 72)
    }

    pub fn disk_guid(&self) -> &[u8] {
        &self.header[56..72]
    }

    fn entry_size(&self) -> usize {
        u32_at(&self.header, 84) as usize
    }

    /// Entry `number` (1-based), raw.
    fn entry(&self, number: u32) -> &[u8] {
        let n = self.entry_size();
        &self.array[(number as usize - 1) * n..number as usize * n]
    }

    /// The last sector of partition `number`.
    pub fn partition_end(&self, number: u32) -> u64 {
        u64_at(self.entry(number), 40)
    }

    /// Sets the last sector of partition `number`.
    pub fn set_partition_end(&mut self, number: u32, lba: u64) {
        let at = (number as usize - 1) * self.entry_size() + 40;
        put_u64(&mut self.array, at, lba);
    }

    /// The partitions, checked to lie on a disk of `size` bytes.
    pub fn partitions(&self, size: u64, ss: u64) -> Result<Vec<Partition>, String> {
        let count = self.array.len() / self.entry_size();
        let mut parts = Vec::new();
        for number in 1..=count as u32 {
            let e = self.entry(number);
            if e[0..16].iter().all(|&b| b == 0) {
                continue;
            }
            let (first, last) = (u64_at(e, 32), u64_at(e, 40));
            if last < first || (last + 1).checked_mul(ss).is_none_or(|end| end > size) {
                return Err(format!("partition {number} lies outside the disk"));
            }
            let units: Vec<u16> = e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            parts.push(Partition {
                number,
                label: String::from_utf16_lossy(&units),
                start: first * ss,
                len: (last - first + 1) * ss,
            });
        }
        Ok(parts)
    }

    /// This table as the copy whose header is at `my_lba`, pointing at `alternate`, with its
    /// array at `array_lba` and `last_usable` as the last usable sector; checksums updated.
    pub fn placed(&self, my_lba: u64, alternate: u64, array_lba: u64, last_usable: u64) -> Table {
        let mut t = self.clone();
        put_u64(&mut t.header, 24, my_lba);
        put_u64(&mut t.header, 32, alternate);
        put_u64(&mut t.header, 48, last_usable);
        put_u64(&mut t.header, 72, array_lba);
        put_u32(&mut t.header, 88, crc32fast::hash(&t.array));
        let c = header_crc(&t.header);
        put_u32(&mut t.header, 16, c);
        t
    }
}

/// CRC32 of a header's first `header size` bytes with its checksum field taken as zero.
fn header_crc(header: &[u8]) -> u32 {
    let mut h = header[..u32_at(header, 12) as usize].to_vec();
    h[16..20].fill(0);
    crc32fast::hash(&h)
}

/// Reads the primary GPT, or the backup if the primary is damaged. Tries 512- and
/// 4096-byte sectors. Returns the sector size and the partitions.
pub fn read(file: &File, size: u64) -> Result<(u64, Vec<Partition>), String> {
    let mut errors = Vec::new();
    for ss in [512u64, 4096] {
        if size < ss * 3 {
            continue;
        }
        let last_lba = size / ss - 1;
        for lba in [1, last_lba] {
            match Table::read(file, size, ss, lba).and_then(|t| t.partitions(size, ss)) {
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
