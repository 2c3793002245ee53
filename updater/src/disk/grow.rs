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
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tracing::info;

use crate::disk::gpt::Table;
use crate::disk::Disk;
use crate::fault;

const MIB: u64 = 1 << 20;

/// What a growth did: the data partition's old and new length in bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Grown {
    pub old_len: u64,
    pub new_len: u64,
}

/// Grows the partition labelled `data` of the disk at `path` to the end of the disk, if the
/// disk is larger than its GPT says and `data` is the last partition. `None`: nothing to do.
pub fn data_partition(path: &Path) -> Result<Option<Grown>> {
    let disk = Disk::open(path, true)?;
    let (ss, size) = (disk.sector_size, disk.size);
    let data = disk.partition(abbundle::layout::DATA_LABEL)?.clone();
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
    let last_lba = size / ss - 1;
    let len_of = |t: &Table| (t.partition_end(data.number) + 1) * ss - data.start;
    let primary = Table::read(&file, size, ss, 1);
    if let Ok(p) = &primary {
        if p.alternate_lba() == last_lba {
            return Ok(None);
        }
        if p.alternate_lba() > last_lba {
            bail!(
                "the GPT says the disk ends at sector {}, but its last sector is {last_lba}: the disk shrank",
                p.alternate_lba()
            );
        }
    }

    // A growth that stopped after writing its backup table: finish it from that table.
    if let Ok(backup) = Table::read(&file, size, ss, last_lba) {
        if same_disk(&primary, &backup, data.number) {
            let old_len = primary.as_ref().map_or(data.len, len_of);
            let array_lba = primary.as_ref().map_or(2, Table::array_lba);
            write_primary(&file, ss, &backup, array_lba, last_lba)?;
            return Ok(Some(Grown {
                old_len,
                new_len: len_of(&backup),
            }));
        }
    }
    let mut table = primary.map_err(|e| anyhow!("the primary GPT is damaged: {e}"))?;
    let old_len = len_of(&table);
    let backup_array_lba = last_lba - (table.array.len() as u64).div_ceil(ss);
    let last_usable = backup_array_lba - 1;
    // The data partition ends at the last 1 MiB boundary the disk allows, never earlier.
    let new_end =
        ((last_usable + 1) * ss / MIB * MIB / ss - 1).max(table.partition_end(data.number));
    table.set_partition_end(data.number, new_end);

    // 1. The new backup: array, then header, at the disk's end; synced.
    let backup = table.placed(last_lba, 1, backup_array_lba, last_usable);
    file.write_all_at(&backup.array, backup_array_lba * ss)
        .context("writing the backup GPT")?;
    fault::point("gpt write");
    file.write_all_at(&backup.header, last_lba * ss)
        .context("writing the backup GPT")?;
    fault::point("gpt write");
    sync(&file)?;
    // 2. The primary, from it.
    write_primary(&file, ss, &backup, table.array_lba(), last_lba)?;
    Ok(Some(Grown {
        old_len,
        new_len: len_of(&backup),
    }))
}

/// Whether `backup` is this disk's own table (not a stale one left at the end of a reused
/// disk): same disk GUID, and the same partitions but for the data partition's end.
fn same_disk(primary: &Result<Table, String>, backup: &Table, data_number: u32) -> bool {
    let Ok(p) = primary else {
        // No readable primary: the disk was opened through this very backup.
        return true;
    };
    let mut p = p.clone();
    p.set_partition_end(data_number, backup.partition_end(data_number));
    p.disk_guid() == backup.disk_guid() && p.array == backup.array
}

/// Writes the primary table as a copy of `backup` with its array at `array_lba`, and the
/// protective MBR's size; synced.
fn write_primary(
    file: &File,
    ss: u64,
    backup: &Table,
    array_lba: u64,
    last_lba: u64,
) -> Result<()> {
    let last_usable = backup.last_usable();
    let primary = backup.placed(1, last_lba, array_lba, last_usable);
    file.write_all_at(&primary.array, array_lba * ss)
        .context("writing the GPT")?;
    fault::point("gpt write");
    file.write_all_at(&primary.header, ss)
        .context("writing the GPT")?;
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
