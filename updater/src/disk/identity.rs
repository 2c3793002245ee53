//! Per-machine identity, given by `boot-check` at the first boot: random (version 4) unique
//! GUIDs for the ESP, the data partition and the disk, in place of the ones abbuild derived
//! from the image name (version 5, the same on every copy of an image). The ESP's GUID is how
//! the boot loader names the disk it booted from (systemd-boot's `LoaderDevicePartUUID`,
//! GRUB's `probe --part-uuid`, passed as `ab.esp=`), so once a disk has its own, the initrd
//! and abupdate can tell it from a copy of the image on another disk (docs/layout.md,
//! "Per-machine identity").
//!
//! Crash safety, as in `grow`: the backup table is written and synced first, then the primary.
//! Only GUIDs change, never where a partition lies, so every table a power cut can leave
//! describes the same partitions: a cut while the backup is written leaves the old primary
//! (still version 5: the next boot-check starts over with new GUIDs); a cut while the primary
//! is written leaves a primary that fails its checksum (the kernel and OVMF then read the new
//! backup; GRUB reads the primary's entries without checking them, and finds its partitions
//! where they were), and the next boot-check copies the backup over it.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use crate::disk::gpt::Table;
use crate::disk::Disk;
use crate::fault;

/// The GUIDs a personalisation gave, as text.
#[derive(Debug, PartialEq, Eq)]
pub struct Personalised {
    pub esp: String,
    pub data: String,
}

/// The UUID version of an on-disk (mixed-endian) GUID: the high nibble of its 8th byte.
pub fn version(guid: &[u8]) -> u8 {
    guid[7] >> 4
}

/// An on-disk GUID as text (lower case, as `blkid` and the initrd print it).
pub fn text(g: &[u8]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13],
        g[14], g[15]
    )
}

/// A random version 4 GUID in on-disk byte order.
fn random_guid(rng: &mut File) -> Result<[u8; 16]> {
    let mut g = [0u8; 16];
    rng.read_exact(&mut g).context("reading /dev/urandom")?;
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    Ok(g)
}

/// Whether `t` still carries abbuild's derived GUIDs for the ESP or the data partition.
fn as_built(t: &Table, esp: u32, data: u32) -> bool {
    version(t.partition_guid(esp)) == 5 || version(t.partition_guid(data)) == 5
}

/// Gives the disk at `path` its own GUIDs if its ESP or data partition still has abbuild's,
/// and finishes a personalisation a power cut interrupted. `None`: nothing to do.
pub fn personalise(path: &Path) -> Result<Option<Personalised>> {
    let disk = Disk::open(path, true)?;
    let (ss, size) = (disk.sector_size, disk.size);
    let esp = disk.partition(abbundle::layout::ESP_LABEL)?.number;
    let data = disk.partition(abbundle::layout::DATA_LABEL)?.number;
    drop(disk);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let last_lba = size / ss - 1;
    let primary = Table::read(&file, size, ss, 1);
    let done = |t: &Table| Personalised {
        esp: text(t.partition_guid(esp)),
        data: text(t.partition_guid(data)),
    };
    let (array_lba, alternate) = match &primary {
        Ok(p) if !as_built(p, esp, data) => return Ok(None),
        Ok(p) => (p.array_lba(), p.alternate_lba()),
        Err(_) => {
            // A cut while the primary was written: the backup (what Disk::open read) is the
            // table; copy it over the primary, with new GUIDs first if it has none yet.
            let backup = Table::read(&file, size, ss, last_lba)
                .map_err(|e| anyhow!("neither GPT copy is readable: {e}"))?;
            let backup = if as_built(&backup, esp, data) {
                let b = with_new_guids(&backup, esp, data)?;
                write_copy(&file, ss, &b, last_lba, 1, backup.array_lba())?;
                b
            } else {
                backup
            };
            write_copy(&file, ss, &backup, 1, last_lba, 2)?;
            return Ok(Some(done(&backup)));
        }
    };
    let table = with_new_guids(primary.as_ref().expect("checked above"), esp, data)?;
    // The backup's array lies right before its header (where abbuild and grow put it).
    let backup_array_lba = alternate - (table.array.len() as u64).div_ceil(ss);
    write_copy(&file, ss, &table, alternate, 1, backup_array_lba)?;
    write_copy(&file, ss, &table, 1, alternate, array_lba)?;
    Ok(Some(done(&table)))
}

fn with_new_guids(t: &Table, esp: u32, data: u32) -> Result<Table> {
    let mut rng = File::open("/dev/urandom").context("opening /dev/urandom")?;
    let mut t = t.clone();
    t.set_partition_guid(esp, random_guid(&mut rng)?);
    t.set_partition_guid(data, random_guid(&mut rng)?);
    t.set_disk_guid(random_guid(&mut rng)?);
    Ok(t)
}

/// Writes `t` as the copy whose header is at `my_lba` (array at `array_lba`, pointing at
/// `alternate`): array, then header, then a sync.
fn write_copy(
    file: &File,
    ss: u64,
    t: &Table,
    my_lba: u64,
    alternate: u64,
    array_lba: u64,
) -> Result<()> {
    let copy = t.placed(my_lba, alternate, array_lba, t.last_usable());
    file.write_all_at(&copy.array, array_lba * ss)
        .context("writing the GPT")?;
    fault::point("gpt write");
    file.write_all_at(&copy.header, my_lba * ss)
        .context("writing the GPT")?;
    fault::point("gpt write");
    file.sync_data().context("syncing the GPT")?;
    fault::point("sync");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_and_version() {
        // 12345678-9abc-4def-8123-456789abcdef on disk.
        let g = [
            0x78, 0x56, 0x34, 0x12, 0xbc, 0x9a, 0xef, 0x4d, 0x81, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(text(&g), "12345678-9abc-4def-8123-456789abcdef");
        assert_eq!(version(&g), 4);
        let mut rng = File::open("/dev/urandom").unwrap();
        let r = random_guid(&mut rng).unwrap();
        assert_eq!(version(&r), 4);
        assert_eq!(r[8] & 0xc0, 0x80, "RFC 4122 variant");
        assert_ne!(r, random_guid(&mut rng).unwrap());
    }
}
