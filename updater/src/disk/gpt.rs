//! The GUID partition table on disk (UEFI 2.10, section 5.3): reading and checking one copy
//! (header + partition array), and re-placing a copy elsewhere with one partition's end
//! changed, which is all `grow` does to it.
//!
//! Parsed here rather than with the `gpt` crate: the format is small, and a reader of our own
//! checks exactly what we rely on: the header CRC, the partition array CRC, that a header is
//! where it says it is, and a consistent layout: every partition inside the usable sectors the
//! header declares (so on the disk), no two partitions sharing a sector, and none covering the
//! protective MBR, either header or this copy's partition array. A table whose checksums are
//! right but whose layout is not is refused outright, never replaced by the other copy: the
//! kernel uses the primary, and an apply must never write where another partition (the running
//! slot, the ESP) or the table lives.

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

    pub fn set_disk_guid(&mut self, guid: [u8; 16]) {
        self.header[56..72].copy_from_slice(&guid);
    }

    /// Partition `number`'s unique GUID, in on-disk byte order.
    pub fn partition_guid(&self, number: u32) -> &[u8] {
        &self.entry(number)[16..32]
    }

    pub fn set_partition_guid(&mut self, number: u32, guid: [u8; 16]) {
        let at = (number as usize - 1) * self.entry_size() + 16;
        self.array[at..at + 16].copy_from_slice(&guid);
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

    pub fn first_usable(&self) -> u64 {
        u64_at(&self.header, 40)
    }

    /// The header's own sector.
    pub fn my_lba(&self) -> u64 {
        u64_at(&self.header, 24)
    }

    /// The partitions, checked (see the module comment): inside the usable sectors and the
    /// disk of `size` bytes, not overlapping one another, the headers or this array.
    pub fn partitions(&self, size: u64, ss: u64) -> Result<Vec<Partition>, String> {
        let count = self.array.len() / self.entry_size();
        let (first_usable, last_usable) = (self.first_usable(), self.last_usable());
        let mut parts = Vec::new();
        for number in 1..=count as u32 {
            let e = self.entry(number);
            if e[0..16].iter().all(|&b| b == 0) {
                continue;
            }
            let (first, last) = (u64_at(e, 32), u64_at(e, 40));
            let units: Vec<u16> = e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            let label = String::from_utf16_lossy(&units);
            if last < first || (last + 1).checked_mul(ss).is_none_or(|end| end > size) {
                return Err(format!(
                    "partition {number} '{label}' (sectors {first}-{last}) lies outside the disk"
                ));
            }
            if first < first_usable || last > last_usable {
                return Err(format!(
                    "partition {number} '{label}' (sectors {first}-{last}) lies outside the \
                     usable sectors {first_usable}-{last_usable}"
                ));
            }
            parts.push(Partition {
                number,
                label,
                start: first * ss,
                len: (last - first + 1) * ss,
            });
        }
        let sectors = |p: &Partition| (p.start / ss, (p.start + p.len) / ss - 1);
        let mut by_start: Vec<&Partition> = parts.iter().collect();
        by_start.sort_by_key(|p| p.start);
        for w in by_start.windows(2) {
            let ((a0, a1), (b0, b1)) = (sectors(w[0]), sectors(w[1]));
            if b0 <= a1 {
                let (x, y) = if w[0].number < w[1].number {
                    ((w[0], a0, a1), (w[1], b0, b1))
                } else {
                    ((w[1], b0, b1), (w[0], a0, a1))
                };
                return Err(format!(
                    "partitions {} '{}' (sectors {}-{}) and {} '{}' (sectors {}-{}) overlap",
                    x.0.number, x.0.label, x.1, x.2, y.0.number, y.0.label, y.1, y.2
                ));
            }
        }
        let array_sectors = (self.array.len() as u64).div_ceil(ss);
        let reserved = [
            ("the protective MBR", 0, 0),
            ("this GPT header", self.my_lba(), self.my_lba()),
            (
                "the other GPT header",
                self.alternate_lba(),
                self.alternate_lba(),
            ),
            (
                "the partition array",
                self.array_lba(),
                self.array_lba() + array_sectors - 1,
            ),
        ];
        for p in &parts {
            let (p0, p1) = sectors(p);
            if let Some((what, r0, r1)) = reserved.iter().find(|r| r.1 <= p1 && p0 <= r.2) {
                return Err(format!(
                    "partition {} '{}' (sectors {p0}-{p1}) overlaps {what} (sectors {r0}-{r1})",
                    p.number, p.label
                ));
            }
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
///
/// A copy that is damaged (no signature, a checksum mismatch) gives way to the next; a copy
/// that is intact but inconsistent ([`Table::partitions`]) is [`ReadError::Inconsistent`] at
/// once.
pub fn read(file: &File, size: u64) -> Result<(u64, Vec<Partition>), ReadError> {
    let mut errors = Vec::new();
    for ss in [512u64, 4096] {
        if size < ss * 3 {
            continue;
        }
        let last_lba = size / ss - 1;
        for lba in [1, last_lba] {
            match Table::read(file, size, ss, lba) {
                Ok(t) => {
                    return t
                        .partitions(size, ss)
                        .map(|parts| (ss, parts))
                        .map_err(ReadError::Inconsistent)
                }
                Err(e) => errors.push(format!("{ss}-byte sectors, LBA {lba}: {e}")),
            }
        }
    }
    Err(ReadError::Damaged(
        errors
            .first()
            .cloned()
            .unwrap_or_else(|| "disk too small".into()),
    ))
}

/// Why [`read`] found no usable table.
#[derive(Debug)]
pub enum ReadError {
    /// No copy passes its own checks (signature, checksums, place).
    Damaged(String),
    /// An intact copy describes an impossible layout (overlaps, out of bounds).
    Inconsistent(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const SS: u64 = 512;

    /// An 8 MiB image with esp (1 MiB at 1 MiB), root-a and root-b (2 MiB each), by sgdisk;
    /// `None` if sgdisk is not installed.
    fn image(dir: &std::path::Path) -> Option<(File, u64)> {
        let img = dir.join("d.img");
        File::create(&img).unwrap().set_len(8 << 20).unwrap();
        let out = Command::new("sgdisk")
            .args(["-n1:2048:+1M", "-c1:esp", "-n2:0:+2M", "-c2:root-a"])
            .args(["-n3:0:+2M", "-c3:root-b"])
            .arg(&img)
            .output()
            .ok()?;
        assert!(out.status.success());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        Some((f, 8 << 20))
    }

    /// Rewrites the copy at `lba` after `edit`, checksums fixed.
    fn edit(f: &File, size: u64, lba: u64, edit: impl Fn(&mut Table)) {
        let mut t = Table::read(f, size, SS, lba).unwrap();
        edit(&mut t);
        let t = t.placed(
            t.my_lba(),
            t.alternate_lba(),
            t.array_lba(),
            t.last_usable(),
        );
        f.write_all_at(&t.array, t.array_lba() * SS).unwrap();
        f.write_all_at(&t.header, lba * SS).unwrap();
    }

    fn set_start(t: &mut Table, number: u32, lba: u64) {
        let at = (number as usize - 1) * t.entry_size() + 32;
        put_u64(&mut t.array, at, lba);
    }

    fn inconsistent(f: &File, size: u64) -> String {
        match read(f, size) {
            Err(ReadError::Inconsistent(e)) => e,
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn a_partition_over_the_partition_array_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let Some((f, size)) = image(dir.path()) else {
            return eprintln!("sgdisk not installed; skipping");
        };
        assert_eq!(read(&f, size).unwrap().1.len(), 3);
        // esp starts at sector 10, inside the array (2-33); the header is changed to call
        // everything from sector 2 on usable, so only the array check can catch it.
        edit(&f, size, 1, |t| {
            set_start(t, 1, 10);
            put_u64(&mut t.header, 40, 2);
        });
        let e = inconsistent(&f, size);
        assert!(
            e.contains(
                "partition 1 'esp' (sectors 10-4095) overlaps the partition array (sectors 2-33)"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_partition_over_the_other_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let Some((f, size)) = image(dir.path()) else {
            return eprintln!("sgdisk not installed; skipping");
        };
        let last = size / SS - 1;
        edit(&f, size, 1, |t| {
            t.set_partition_end(3, last);
            put_u64(&mut t.header, 48, last);
        });
        let e = inconsistent(&f, size);
        assert!(e.contains("overlaps the other GPT header"), "{e}");
    }

    #[test]
    fn an_inconsistent_primary_is_not_replaced_by_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let Some((f, size)) = image(dir.path()) else {
            return eprintln!("sgdisk not installed; skipping");
        };
        // Only the primary says root-b starts inside root-a; the backup is still right.
        edit(&f, size, 1, |t| set_start(t, 3, 2048 * 3));
        let e = inconsistent(&f, size);
        assert!(
            e.contains("partitions 2 'root-a' (sectors 4096-8191) and 3 'root-b' (sectors 6144-12287) overlap"),
            "{e}"
        );
        // A damaged primary still gives way to the backup.
        f.write_all_at(b"XXXX", SS + 16).unwrap();
        assert_eq!(read(&f, size).unwrap().1.len(), 3);
    }
}
