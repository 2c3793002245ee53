//! Disks whose GPT is intact (checksums right, `sgdisk -v` finds no damage) but describes an
//! impossible layout: `apply` refuses them with 36 before writing anything, so it can never
//! write a slot over the running slot, the ESP or the table. The tables are edited here byte by
//! byte (sfdisk and sgdisk refuse to make such tables), both copies, with their checksums fixed.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use abupdate::codes;

use crate::util::*;

const SS: u64 = 512;

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// Rewrites entry `number` (1-based) of both GPT copies of `img` with `edit(entry)`, then fixes
/// both array checksums and header checksums (UEFI 2.10, 5.3.2).
fn edit_entry(img: &Path, number: usize, edit: impl Fn(&mut [u8])) {
    let f = OpenOptions::new().read(true).write(true).open(img).unwrap();
    let last_lba = f.metadata().unwrap().len() / SS - 1;
    for header_lba in [1, last_lba] {
        let mut h = vec![0u8; SS as usize];
        f.read_exact_at(&mut h, header_lba * SS).unwrap();
        assert_eq!(&h[0..8], b"EFI PART");
        let (array_lba, count, size) = (u64_at(&h, 72), u32_at(&h, 80), u32_at(&h, 84));
        let mut array = vec![0u8; (count * size) as usize];
        f.read_exact_at(&mut array, array_lba * SS).unwrap();
        let size = size as usize;
        edit(&mut array[(number - 1) * size..number * size]);
        f.write_all_at(&array, array_lba * SS).unwrap();
        h[88..92].copy_from_slice(&crc32fast::hash(&array).to_le_bytes());
        let hsize = u32_at(&h, 12) as usize;
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h[..hsize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        f.write_all_at(&h, header_lba * SS).unwrap();
    }
}

/// Moves partition `number` to start at sector `first`, keeping its length.
fn move_partition(img: &Path, number: usize, first: u64) {
    edit_entry(img, number, |e| {
        let len = u64_at(e, 40) - u64_at(e, 32);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&(first + len).to_le_bytes());
    });
}

/// A v1 disk and a v2 bundle; the disk is then edited by `damage`.
fn damaged(env: &Env, damage: impl Fn(&Path)) -> (PathBuf, PathBuf) {
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    damage(&disk);
    (disk, v2.bundle)
}

/// `sgdisk -v`'s report: the edited table must be intact (no CRC problem), so the refusal
/// is about the layout.
fn sgdisk_verify(disk: &Path) -> String {
    let out = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!report.to_lowercase().contains("crc"), "{report}");
    report
}

/// Apply and status exit 36 naming what is wrong; the disk is byte-identical afterwards.
fn refused(env: &Env, disk: &Path, bundle: &Path, wants: &[&str]) {
    let sum = sha256_file(disk);
    let out = env.abupdate(disk, &["apply", bundle.to_str().unwrap()]);
    let line = fails(&out, codes::BAD_DISK);
    for w in wants {
        assert!(line.contains(w), "{line}");
    }
    assert_eq!(sha256_file(disk), sum, "the disk changed");
    fails(&env.abupdate(disk, &["status"]), codes::BAD_DISK);
    assert_eq!(sha256_file(disk), sum, "the disk changed");
}

#[test]
fn root_b_overlapping_root_a_is_refused() {
    let env = Env::new();
    let (disk, bundle) = damaged(&env, |d| {
        let (a_start, a_len) = partition(d, "root-a");
        move_partition(d, 3, (a_start + a_len / 2) / SS);
    });
    assert!(sgdisk_verify(&disk).contains("overlap"));
    refused(
        &env,
        &disk,
        &bundle,
        &["partitions 2 'root-a'", "and 3 'root-b'", "overlap"],
    );
}

#[test]
fn root_b_overlapping_the_esp_is_refused() {
    let env = Env::new();
    let (disk, bundle) = damaged(&env, |d| {
        let (esp_start, _) = partition(d, "esp");
        move_partition(d, 3, esp_start / SS + 2048);
    });
    assert!(sgdisk_verify(&disk).contains("overlap"));
    refused(
        &env,
        &disk,
        &bundle,
        &["partitions 1 'esp'", "and 3 'root-b'", "overlap"],
    );
}

#[test]
fn a_partition_past_the_last_usable_sector_is_refused() {
    let env = Env::new();
    let (disk, bundle) = damaged(&env, |d| {
        // data ends 8 sectors into the backup partition array (still on the disk).
        let last_lba = std::fs::metadata(d).unwrap().len() / SS - 1;
        edit_entry(d, 4, |e| {
            e[40..48].copy_from_slice(&(last_lba - 32 + 8).to_le_bytes())
        });
    });
    sgdisk_verify(&disk);
    refused(
        &env,
        &disk,
        &bundle,
        &["partition 4 'data'", "outside the usable sectors"],
    );
}

#[test]
fn a_second_data_partition_is_refused() {
    let env = Env::new();
    let (disk, bundle) = damaged(&env, |d| {
        // data loses its last MiB to entry 5 (unused until now): a second 'data'.
        let (data_start, data_len) = partition(d, "data");
        let f = std::fs::File::open(d).unwrap();
        let mut data = vec![0u8; 128];
        f.read_exact_at(&mut data, 2 * SS + 3 * 128).unwrap();
        edit_entry(d, 4, |e| {
            let end = (data_start + data_len) / SS - 2049;
            e[40..48].copy_from_slice(&end.to_le_bytes());
        });
        edit_entry(d, 5, |e| {
            e.copy_from_slice(&data);
            e[16] ^= 1; // its own unique GUID
            let first = (data_start + data_len) / SS - 2048;
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&(first + 2047).to_le_bytes());
        });
    });
    sgdisk_verify(&disk);
    refused(
        &env,
        &disk,
        &bundle,
        &["more than one partition is named 'data'"],
    );
}
