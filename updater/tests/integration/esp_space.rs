//! The ESP's space: boot files that cannot fit are refused before anything changes, a failed
//! write gives its clusters back, and clusters lost to an interrupted write are reclaimed
//! (hostile review, defect 1). Judged with fsck.fat, which shares no code with abupdate.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use abbundle::PayloadKind;
use abupdate::codes;

use crate::util::*;

/// A bundle whose initrd is `initrd_len` bytes.
fn bundle_with_initrd(env: &Env, version: &str, initrd_len: usize) -> std::path::PathBuf {
    RawBundle {
        version,
        sizes: [300_000, 50_000, initrd_len],
        seed: 21,
        ..RawBundle::default()
    }
    .write(env.path(&format!("{version}.abu")))
}

/// Used and total clusters of the ESP, as `fsck.fat -n -v` counts them.
fn esp_clusters(img: &Path) -> (u64, u64) {
    let (off, len) = partition(img, "esp");
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp.img");
    let data = {
        let f = fs::File::open(img).unwrap();
        let mut b = vec![0u8; len as usize];
        f.read_exact_at(&mut b, off).unwrap();
        b
    };
    fs::write(&esp, data).unwrap();
    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg(&esp)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // "esp.img: 12 files, 345/69000 clusters"
    let counts = text
        .lines()
        .find_map(|l| l.split(", ").nth(1)?.strip_suffix(" clusters"))
        .unwrap_or_else(|| panic!("no cluster count in: {text}"));
    let (used, total) = counts.split_once('/').unwrap();
    (used.parse().unwrap(), total.parse().unwrap())
}

/// Marks every free cluster of the ESP's FATs but `keep` as allocated (end of chain) and the
/// FSInfo free count unknown: what interrupted writes leave behind, many times over.
fn leak_all_but(img: &Path, keep: u32) -> u32 {
    let (off, _) = partition(img, "esp");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut bs = [0u8; 512];
    f.read_exact_at(&mut bs, off).unwrap();
    let u16_at = |o: usize| u16::from_le_bytes([bs[o], bs[o + 1]]) as u64;
    let u32_at = |o: usize| u32::from_le_bytes(bs[o..o + 4].try_into().unwrap()) as u64;
    let (bps, spc, reserved, fats) = (u16_at(11), bs[13] as u64, u16_at(14), bs[16] as u64);
    let fat_sectors = u32_at(36);
    let clusters = (u32_at(32) - reserved - fats * fat_sectors) / spc;
    let mut fat = vec![0u8; (clusters as usize + 2) * 4];
    f.read_exact_at(&mut fat, off + reserved * bps).unwrap();
    let mut free: Vec<usize> = (2..clusters as usize + 2)
        .filter(|&c| fat[c * 4..c * 4 + 4] == [0; 4])
        .collect();
    free.truncate(free.len() - keep as usize);
    for &c in &free {
        fat[c * 4..c * 4 + 4].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes());
    }
    for i in 0..fats {
        f.write_all_at(&fat, off + (reserved + i * fat_sectors) * bps)
            .unwrap();
    }
    let fs_info = off + u16_at(48) * bps;
    f.write_all_at(&u32::MAX.to_le_bytes(), fs_info + 488)
        .unwrap();
    free.len() as u32
}

#[test]
fn boot_files_that_do_not_fit_are_refused_before_anything_changes() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    // The test ESP is 34 MiB.
    let big = bundle_with_initrd(&env, "2026.11.2", 40 << 20);
    let msg = fails(
        &env.abupdate(&disk, &["apply", big.to_str().unwrap()]),
        codes::ESP_FULL,
    );
    assert!(
        msg.contains("on the ESP") && msg.contains("nothing was changed"),
        "{msg}"
    );
    assert_eq!(sha256_file(&disk), before);
    // A bundle that fits still installs.
    let fits = bundle_with_initrd(&env, "2026.11.3", 1 << 20);
    ok(&env.abupdate(&disk, &["apply", fits.to_str().unwrap()]));
    fsck_esp(&disk).unwrap();
}

#[test]
fn a_failed_write_gives_its_clusters_back() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let (used, _) = esp_clusters(&disk);
    // The initrd's last chunk is corrupt: the kernel and most of the initrd are written to
    // the ESP before the reader finds it.
    let b = bundle_with_initrd(&env, "2026.11.2", 2 << 20);
    let bytes = fs::read(&b).unwrap();
    let bad = env.path("bad.abu");
    let mut damaged = bytes.clone();
    let at = damaged.len() - 1000;
    damaged[at] ^= 0x40;
    fs::write(&bad, &damaged).unwrap();
    fails(&env.abupdate(&disk, &["apply", bad.to_str().unwrap()]), 18);
    fsck_esp(&disk).unwrap();
    assert_eq!(
        esp_clusters(&disk).0,
        used,
        "the failed write kept clusters"
    );
    ok(&env.abupdate(&disk, &["apply", b.to_str().unwrap()]));
}

#[test]
fn clusters_lost_to_interrupted_writes_are_given_back() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let (used, _) = esp_clusters(&disk);
    // Only 16 clusters stay free: far too few for a kernel and an initrd.
    let leaked = leak_all_but(&disk, 16);
    assert!(
        fsck_esp(&disk).is_err(),
        "fsck.fat should see the lost clusters"
    );
    let b = bundle_with_initrd(&env, "2026.11.2", 1 << 20);
    ok(&env.abupdate(&disk, &["apply", b.to_str().unwrap()]));
    fsck_esp(&disk).unwrap();
    let (after, total) = esp_clusters(&disk);
    assert!(
        after < used + total / 10,
        "{leaked} leaked, {after} used now, {used} before"
    );
    // The running slot's files were not touched.
    assert_eq!(
        sha256_bytes(&mtype(&disk, "a/vmlinuz")),
        payload_sha(&v1.manifest, PayloadKind::Kernel)
    );
    assert_eq!(
        sha256_bytes(&mtype(&disk, "a/initrd")),
        payload_sha(&v1.manifest, PayloadKind::Initrd)
    );
}
