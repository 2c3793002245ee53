//! The GPT disk image: where the partitions go (`docs/layout.md`), the protective MBR and the
//! GPT itself (through the `gpt` crate), all derived from the image definition alone, so the
//! same definition always gives the same table bytes.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};

use anyhow::{bail, Context, Result};
use gpt::disk::LogicalBlockSize;
use gpt::partition::Partition;
use gpt::partition_types::{self, Type};
use uuid::Uuid;

use crate::bios::{BIOS_BOOT_LABEL, BIOS_BOOT_NUMBER, BIOS_BOOT_TYPE};
use crate::image_def::{BootBackend, ImageDef, Size, ALIGN};

/// Logical sector size of the images we write.
pub const SECTOR: u64 = 512;

/// Sectors at the end of the disk the backup GPT takes: 32 sectors of partition entries
/// (128 entries of 128 bytes) and the backup header. The primary takes as many after the MBR.
const GPT_SECTORS: u64 = 33;

/// Namespace of the UUID v5 GUIDs derived from image names (a fixed random UUID: changing it
/// changes every image's GUIDs).
pub const GUID_NAMESPACE: Uuid = Uuid::from_u128(0x5e1f_6a0e_7c43_4b0e_9f55_2d1c_ab0d_a7a1);

/// Partition labels (GPT partition names): the shared contract, `abbundle::layout`.
pub use abbundle::layout::{DATA_LABEL, ESP_LABEL};
pub const ROOT_A_LABEL: &str = abbundle::layout::PARTITIONS[1];
pub const ROOT_B_LABEL: &str = abbundle::layout::PARTITIONS[2];

/// One partition of the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSpec {
    /// Partition number (1-based, its index in the GPT array plus one).
    pub number: u32,
    /// GPT partition name (`PARTLABEL`).
    pub label: &'static str,
    /// Partition type GUID.
    pub type_guid: Uuid,
    /// Unique partition GUID (`PARTUUID`).
    pub uuid: Uuid,
    /// First byte, a multiple of [`ALIGN`].
    pub offset: u64,
    /// Length in bytes, a multiple of [`SECTOR`].
    pub size: u64,
}

impl PartitionSpec {
    pub fn first_lba(&self) -> u64 {
        self.offset / SECTOR
    }

    pub fn last_lba(&self) -> u64 {
        (self.offset + self.size) / SECTOR - 1
    }
}

/// The partition table of an image: four partitions, in the order of `docs/layout.md`, and for
/// `boot-backend = "grub"` a fifth, the BIOS boot partition, first on the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub disk_size: u64,
    pub disk_guid: Uuid,
    pub partitions: Vec<PartitionSpec>,
}

/// The GUID of `what` ("disk", or a partition label) in image `name`.
pub fn derived_guid(name: &str, what: &str) -> Uuid {
    Uuid::new_v5(&GUID_NAMESPACE, format!("{name}/{what}").as_bytes())
}

impl Layout {
    /// Places the ESP at 1 MiB, the two slots after it and the data partition in the rest,
    /// up to the backup GPT. A GRUB image has its BIOS boot partition (number 5) at 1 MiB and
    /// everything else 1 MiB further.
    pub fn compute(def: &ImageDef) -> Result<Layout> {
        let disk = def.disk_size.0;
        // The data partition ends on a 1 MiB boundary too, below the backup GPT.
        let last_usable_end = disk.saturating_sub(GPT_SECTORS * SECTOR) / ALIGN * ALIGN;
        let bios_boot = match def.boot_backend {
            BootBackend::Grub => ALIGN,
            BootBackend::SystemdBoot => 0,
        };
        let fixed = ALIGN + bios_boot + def.esp_size.0 + 2 * def.slot_size.0;
        // The data partition gets at least 1 MiB, so even the smallest image has one.
        if fixed + ALIGN > last_usable_end {
            bail!(
                "disk-size is {}, too small for 1 MiB of GPT + esp-size {} + 2 x slot-size {} + 1 MiB of data",
                def.disk_size,
                def.esp_size,
                def.slot_size
            );
        }
        let guid = |what| derived_guid(&def.name, what);
        let mut offset = ALIGN + bios_boot;
        let mut partitions = Vec::new();
        let parts = [
            (ESP_LABEL, partition_types::EFI, def.esp_size.0),
            (
                ROOT_A_LABEL,
                partition_types::LINUX_ROOT_X64,
                def.slot_size.0,
            ),
            (
                ROOT_B_LABEL,
                partition_types::LINUX_ROOT_X64,
                def.slot_size.0,
            ),
            (
                DATA_LABEL,
                partition_types::LINUX_FS,
                last_usable_end - fixed,
            ),
        ];
        for (i, (label, ty, size)) in parts.into_iter().enumerate() {
            partitions.push(PartitionSpec {
                number: i as u32 + 1,
                label,
                type_guid: type_uuid(&ty),
                uuid: guid(label),
                offset,
                size,
            });
            offset += size;
        }
        if bios_boot > 0 {
            partitions.push(PartitionSpec {
                number: BIOS_BOOT_NUMBER,
                label: BIOS_BOOT_LABEL,
                type_guid: BIOS_BOOT_TYPE,
                uuid: guid(BIOS_BOOT_LABEL),
                offset: ALIGN,
                size: bios_boot,
            });
        }
        Ok(Layout {
            disk_size: disk,
            disk_guid: guid("disk"),
            partitions,
        })
    }

    /// The partition labelled `label`.
    pub fn partition(&self, label: &str) -> &PartitionSpec {
        self.partitions
            .iter()
            .find(|p| p.label == label)
            .expect("layouts have all four shared partitions")
    }
}

fn type_uuid(t: &Type) -> Uuid {
    t.guid
}

/// Writes the protective MBR and the primary and backup GPT of `layout` into `file`, which
/// must already be `layout.disk_size` bytes long.
pub fn write_table(file: &mut File, layout: &Layout) -> Result<()> {
    let len = file.metadata().context("reading the image's size")?.len();
    if len != layout.disk_size {
        bail!(
            "image is {len} bytes, the layout needs {}",
            layout.disk_size
        );
    }
    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(&mut *file, Some(layout.disk_guid))
        .context("creating the GPT")?;
    let parts = layout
        .partitions
        .iter()
        .map(|p| {
            // Only the GUID is written; `os` is the crate's label for display.
            let ty = Type {
                guid: p.type_guid,
                os: partition_types::OperatingSystem::None,
            };
            let part = Partition {
                part_type_guid: ty,
                part_guid: p.uuid,
                first_lba: p.first_lba(),
                last_lba: p.last_lba(),
                flags: 0,
                name: p.label.to_string(),
            };
            (p.number, part)
        })
        .collect();
    gpt.update_partitions(parts)
        .context("setting the GPT partitions")?;
    gpt.write().context("writing the GPT")?;
    write_protective_mbr(file, layout.disk_size / SECTOR)
}

/// The protective MBR (UEFI spec 2.10, 5.2.3): one partition of type 0xEE covering the disk
/// from LBA 1 (capped at 2^32-1 sectors), so MBR-only tools see the disk as in use. The
/// `gpt` crate leaves LBA 0 alone, so we write it.
fn write_protective_mbr(file: &mut File, total_sectors: u64) -> Result<()> {
    let mut mbr = [0u8; 512];
    let entry = &mut mbr[446..462];
    entry[0] = 0x00; // not bootable
    entry[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    entry[4] = 0xEE; // GPT protective
    entry[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]); // CHS beyond what CHS can say
    entry[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = (total_sectors - 1).min(u32::MAX as u64) as u32;
    entry[12..16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    file.seek(SeekFrom::Start(0))
        .context("seeking to the MBR")?;
    file.write_all(&mbr).context("writing the protective MBR")
}

/// Human-readable layout, for logs.
pub fn describe(layout: &Layout) -> String {
    layout
        .partitions
        .iter()
        .map(|p| {
            format!(
                "{} {} at {} MiB, {}",
                p.number,
                p.label,
                p.offset / ALIGN,
                Size(p.size)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(disk: &str, esp: &str, slot: &str) -> ImageDef {
        toml::from_str(&format!(
            "name='t'\ncompatible='t'\ndisk-size='{disk}'\nesp-size='{esp}'\nslot-size='{slot}'"
        ))
        .unwrap()
    }

    #[test]
    fn layout_is_aligned_and_fills_the_disk() {
        let l = Layout::compute(&def("1GiB", "64MiB", "300MiB")).unwrap();
        let names: Vec<_> = l.partitions.iter().map(|p| p.label).collect();
        assert_eq!(names, abbundle::layout::PARTITIONS);
        for p in &l.partitions {
            assert_eq!(p.offset % ALIGN, 0, "{p:?}");
        }
        let data = l.partition(DATA_LABEL);
        assert_eq!(data.offset + data.size, (1 << 30) - (1 << 20));
        assert_eq!(l.partition(ROOT_A_LABEL).offset, 65 << 20);
        // Derived, not random: the same name gives the same GUIDs.
        assert_eq!(l, Layout::compute(&def("1GiB", "64MiB", "300MiB")).unwrap());
        assert_ne!(
            l.partition(ROOT_A_LABEL).uuid,
            l.partition(ROOT_B_LABEL).uuid
        );
    }

    #[test]
    fn grub_layout_adds_the_bios_boot_partition_first_on_disk() {
        let mut d = def("1GiB", "64MiB", "300MiB");
        let plain = Layout::compute(&d).unwrap();
        d.boot_backend = BootBackend::Grub;
        let l = Layout::compute(&d).unwrap();
        let bios = l.partition(BIOS_BOOT_LABEL);
        assert_eq!((bios.number, bios.offset, bios.size), (5, 1 << 20, 1 << 20));
        assert_eq!(bios.type_guid, BIOS_BOOT_TYPE);
        // The four shared partitions keep their numbers; all but data move up 1 MiB, and
        // data stays last (1 MiB shorter).
        for (p, q) in plain.partitions.iter().zip(&l.partitions) {
            assert_eq!((p.number, p.label), (q.number, q.label));
            assert_eq!(q.offset, p.offset + (1 << 20), "{}", p.label);
        }
        let data = l.partition(DATA_LABEL);
        assert_eq!(data.offset + data.size, (1 << 30) - (1 << 20));
        assert!(l.partitions.iter().all(|p| p.offset <= data.offset));
    }

    #[test]
    fn too_small_disk_is_refused() {
        let e = Layout::compute(&def("600MiB", "64MiB", "300MiB"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("too small"), "{e}");
    }
}
