//! The legacy-BIOS half of a GRUB disk (`docs/layout.md`, "GRUB"): a 1 MiB BIOS boot
//! partition holding GRUB's `core.img`, and GRUB's `boot.img` merged into the protective MBR.
//!
//! This is what `grub-bios-setup --no-rs-codes` does to a GPT disk with a BIOS boot partition,
//! done in place on the image file: `boot.img`'s code goes into the MBR (keeping the MBR's
//! BPB area, disk signature and partition table), with the LBA of `core.img` at
//! [`KERNEL_SECTOR`] and the "boot drive check" jump replaced by two NOPs (a hard disk, as
//! grub-bios-setup does unless `--allow-floppy`); `core.img`'s first sector (`diskboot.img`)
//! gets the LBA of its second sector in its block list. Reed-Solomon codes protect core.img in
//! the MBR gap, where other tools may write; a partition of its own needs none. The builder's
//! tests compare the bytes with grub-bios-setup's.

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{bail, Context, Result};
use uuid::Uuid;

use crate::disk::{Layout, SECTOR};

/// GPT partition name of the BIOS boot partition.
pub const BIOS_BOOT_LABEL: &str = "bios-boot";
/// Its type GUID ("Hah!IdontNeedEFI"), which GRUB and partitioning tools know.
pub const BIOS_BOOT_TYPE: Uuid = Uuid::from_u128(0x21686148_6449_6E6F_744E_656564454649);
/// Its number: after the four partitions every image has, so their numbers stay the same
/// for both boot backends; it sits first on the disk (at 1 MiB), so `data` stays last.
pub const BIOS_BOOT_NUMBER: u32 = 5;

/// Offsets in `boot.img` (GRUB's include/grub/i386/pc/boot.h).
const BPB_START: usize = 0x3;
const BPB_END: usize = 0x5a;
/// Where boot.img reads the LBA of core.img's first sector (u64, little-endian).
pub const KERNEL_SECTOR: usize = 0x5c;
/// The `jmp` over the boot drive check, replaced by two NOPs for hard disks.
const DRIVE_CHECK: usize = 0x66;
/// From here on (Windows NT disk signature, partition table, 0x55AA) the MBR is kept.
const NT_MAGIC: usize = 0x1b8;

/// The block list at the end of diskboot.img (core.img's first sector): the LBA of the
/// rest of core.img (u64), its length in sectors (u16) and the load segment (u16).
const BLOCKLIST_START: usize = 0x1f4;
const BLOCKLIST_LEN: usize = 0x1fc;

/// The MBR with `boot_img` merged in, booting `core.img` at `core_lba`.
pub fn merge_boot_img(mbr: &[u8; 512], boot_img: &[u8], core_lba: u64) -> Result<[u8; 512]> {
    if boot_img.len() != 512 || boot_img[510..] != [0x55, 0xAA] {
        bail!(
            "GRUB's boot.img is {} bytes without the 0x55AA mark: not an i386-pc boot.img",
            boot_img.len()
        );
    }
    let mut out = [0u8; 512];
    out.copy_from_slice(boot_img);
    out[BPB_START..BPB_END].copy_from_slice(&mbr[BPB_START..BPB_END]);
    out[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    out[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    out[NT_MAGIC..].copy_from_slice(&mbr[NT_MAGIC..]);
    Ok(out)
}

/// `core_img` with its block list pointing at `core_lba + 1`, where its second sector is.
pub fn patch_core_img(core_img: &[u8], core_lba: u64) -> Result<Vec<u8>> {
    let sectors = core_img.len().div_ceil(SECTOR as usize);
    if sectors < 2 {
        bail!("GRUB's core.img is {} bytes: too short", core_img.len());
    }
    let len = u16::from_le_bytes([core_img[BLOCKLIST_LEN], core_img[BLOCKLIST_LEN + 1]]);
    if len as usize != sectors - 1 {
        bail!(
            "GRUB's core.img does not start with diskboot.img (its block list says {len} sectors, \
             the image has {})",
            sectors - 1
        );
    }
    let mut out = core_img.to_vec();
    out[BLOCKLIST_START..BLOCKLIST_START + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    Ok(out)
}

/// Writes `core_img` into the BIOS boot partition of `layout` and merges `boot_img` into the
/// MBR of `image`, whose partition table is already written.
pub fn install(image: &File, layout: &Layout, core_img: &[u8], boot_img: &[u8]) -> Result<()> {
    let part = layout
        .partitions
        .iter()
        .find(|p| p.label == BIOS_BOOT_LABEL)
        .context("the layout has no BIOS boot partition")?;
    if core_img.len() as u64 > part.size {
        bail!(
            "GRUB's core.img is {} bytes, larger than the {} bytes of the BIOS boot partition",
            core_img.len(),
            part.size
        );
    }
    let lba = part.first_lba();
    let core = patch_core_img(core_img, lba)?;
    image
        .write_all_at(&core, part.offset)
        .context("writing core.img into the BIOS boot partition")?;
    let mut mbr = [0u8; 512];
    image
        .read_exact_at(&mut mbr, 0)
        .context("reading the protective MBR")?;
    let merged = merge_boot_img(&mbr, boot_img, lba)?;
    image
        .write_all_at(&merged, 0)
        .context("writing boot.img into the MBR")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_partition_table() {
        let mut boot = [0xCCu8; 512];
        boot[510] = 0x55;
        boot[511] = 0xAA;
        let mut mbr = [0u8; 512];
        mbr[446..462].copy_from_slice(&[7; 16]);
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        let out = merge_boot_img(&mbr, &boot, 2048).unwrap();
        assert_eq!(out[..3], [0xCC; 3]);
        assert_eq!(out[BPB_START..BPB_END], [0; BPB_END - BPB_START]);
        assert_eq!(out[KERNEL_SECTOR..KERNEL_SECTOR + 8], 2048u64.to_le_bytes());
        assert_eq!(out[DRIVE_CHECK..DRIVE_CHECK + 2], [0x90, 0x90]);
        assert_eq!(out[NT_MAGIC..], mbr[NT_MAGIC..]);
        assert!(merge_boot_img(&mbr, &boot[..511], 2048).is_err());
    }

    #[test]
    fn core_img_block_list() {
        let mut core = vec![0u8; 3 * 512 + 7];
        core[BLOCKLIST_START] = 2;
        core[BLOCKLIST_LEN] = 3;
        let out = patch_core_img(&core, 2048).unwrap();
        assert_eq!(
            out[BLOCKLIST_START..BLOCKLIST_START + 8],
            2049u64.to_le_bytes()
        );
        assert_eq!(out[BLOCKLIST_LEN], 3);
        core[BLOCKLIST_LEN] = 4;
        assert!(patch_core_img(&core, 2048).is_err());
    }
}
