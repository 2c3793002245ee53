//! The disk image and bundle from a directory system: partition table, ESP, slot A.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

#[test]
fn partition_table_follows_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (_, image) = build_fake(dir.path());
    assert_eq!(fs::metadata(&image).unwrap().len(), 768 << 20);
    let parts = sfdisk(&image);
    let expect = [
        ("esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", 64u64 << 20),
        ("root-a", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", 256 << 20),
        ("root-b", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", 256 << 20),
        ("data", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", 190 << 20),
    ];
    assert_eq!(parts.len(), 4);
    let mut end = 1 << 20;
    for (p, (name, ty, size)) in parts.iter().zip(expect) {
        assert_eq!(p["name"], name);
        assert_eq!(p["type"], ty);
        let start = p["start"].as_u64().unwrap() * 512;
        assert_eq!(start % (1 << 20), 0, "{name} not 1 MiB aligned");
        assert_eq!(start, end, "{name} does not follow the previous partition");
        assert_eq!(p["size"].as_u64().unwrap() * 512, size, "{name}");
        end = start + size;
    }
    // GUIDs are derived from the image name, so every build of qemu-test has these.
    assert_eq!(parts[1]["uuid"], "46D621DF-3033-5FD5-B3A5-E5672ABB6F5E");
    let out = stdout(Command::new("sgdisk").arg("-v").arg(&image));
    assert!(out.contains("No problems found"), "{out}");
    let out = stdout(Command::new("sgdisk").arg("-p").arg(&image));
    assert!(
        out.contains("EF00  esp") && out.contains("8304  root-a") && out.contains("8300  data"),
        "{out}"
    );
    // The protective MBR: one 0xEE partition from LBA 1.
    let mbr = read_range(&image, 0, 512);
    assert_eq!(&mbr[510..], &[0x55, 0xAA]);
    assert_eq!(mbr[446 + 4], 0xEE);
    assert_eq!(u32::from_le_bytes(mbr[454..458].try_into().unwrap()), 1);
}

#[test]
fn esp_boots_slot_a() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, image) = build_fake(dir.path());
    fsck_esp(&image, dir.path());
    let (off, _) = partition(&image, "esp");
    let listing = stdout(
        Command::new("mdir")
            .arg("-/")
            .arg("-i")
            .arg(format!("{}@@{off}", image.display()))
            .arg("::"),
    );
    for name in [
        "BOOTX64.EFI",
        "loader.conf",
        "slot-a.conf",
        "vmlinuz",
        "initrd",
        "info.json",
        "Directory for ::/b",
    ] {
        assert!(listing.contains(name), "{name} missing:\n{listing}");
    }
    assert_eq!(mtype(&image, "loader/loader.conf"), "timeout 0\n");
    // The root hash parameter last (verity.rs checks its value against veritysetup).
    let kp = inspect(&bundle)["kernel_params"]
        .as_str()
        .unwrap()
        .to_string();
    let verity = kp
        .strip_prefix("quiet loglevel=3 console=ttyS0 panic=5 abinit.verity=")
        .unwrap_or_else(|| panic!("{kp}"));
    assert_eq!(
        mtype(&image, "loader/entries/slot-a.conf"),
        format!(
            "title abupdate slot a, 2026.11.22.1\nsort-key abupdate\nversion 2026.11.22.1\n\
             linux /a/vmlinuz\ninitrd /a/initrd\n\
             options ab.slot=a root=PARTLABEL=root-a quiet loglevel=3 console=ttyS0 panic=5 \
             abinit.verity={verity}\n"
        )
    );
    // Files are byte-identical to their sources (mcopy them out).
    let sys = dir.path().join("system");
    for (esp_path, src) in [
        ("a/vmlinuz", sys.join("kernel")),
        ("a/initrd", sys.join("initrd")),
        (
            "EFI/BOOT/BOOTX64.EFI",
            "/usr/lib/systemd/boot/efi/systemd-bootx64.efi".into(),
        ),
    ] {
        let copy = dir.path().join("copy");
        let _ = fs::remove_file(&copy);
        ok(Command::new("mcopy")
            .arg("-i")
            .arg(format!("{}@@{off}", image.display()))
            .arg(format!("::{esp_path}"))
            .arg(&copy));
        assert!(
            fs::read(&copy).unwrap() == fs::read(&src).unwrap(),
            "{esp_path} differs from {}",
            src.display()
        );
    }
    let manifest = inspect(&bundle);
    let info: serde_json::Value = serde_json::from_str(&mtype(&image, "a/info.json")).unwrap();
    let (_, size, sha) = payload(&manifest, "rootfs");
    assert_eq!(info["version"], "2026.11.22.1");
    assert_eq!(info["compatible"], "qemu-test");
    assert_eq!(info["rootfsSize"], size);
    assert_eq!(info["rootfsSha256"], sha.as_str());
    assert_eq!(info["created"], 1_700_000_000u64);
    assert_eq!(manifest["kernel_params"], kp.as_str());
}

#[test]
fn slot_a_holds_the_bundles_rootfs() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, image) = build_fake(dir.path());
    let manifest = inspect(&bundle);
    let (b_off, size, _) = payload(&manifest, "rootfs");
    let (slot_off, slot_size) = partition(&image, "root-a");
    assert!(
        read_range(&bundle, b_off, size) == read_range(&image, slot_off, size),
        "slot A differs from the bundle"
    );
    // After the image (format 2): its slot index, the bundle's root entries
    // (docs/layout.md); the rest of the slot, and slot B, are empty.
    let at = abbundle::slot_index::offset(size);
    let chunks = manifest["chunk_index"]["chunks"][0].as_u64().unwrap();
    let len = abbundle::slot_index::record_len(chunks);
    let record = read_range(&image, slot_off + at, len);
    assert_eq!(&record[..8], b"ABSLTIDX");
    let (i_off, i_len) = (
        manifest["chunk_index"]["offset"].as_u64().unwrap(),
        chunks * abbundle::index::ENTRY_LEN as u64,
    );
    assert!(record[64..64 + i_len as usize] == read_range(&bundle, i_off, i_len)[..]);
    assert!(read_range(&image, slot_off + size, at - size)
        .iter()
        .chain(&read_range(
            &image,
            slot_off + at + len,
            slot_size - at - len
        ))
        .all(|b| *b == 0));
    let (b_off, b_size) = partition(&image, "root-b");
    assert!(read_range(&image, b_off, b_size.min(1 << 20))
        .iter()
        .all(|b| *b == 0));

    let list = list_slot_a(&image);
    for line in [
        "drwxr-xr-x 0/0", // the root: mode 755 whatever the source directory's
        "lrwxrwxrwx 0/0                       8 2023-11-14 22:13 squashfs-root/init -> bin/tool",
        "-rwxr-xr-x 0/0                      20 2023-11-14 22:13 squashfs-root/bin/tool",
        "-rwsr-xr-x 0/0                       1 2023-11-14 22:13 squashfs-root/bin/suid",
        "squashfs-root/etc/motd.sym -> motd",
    ] {
        assert!(list.contains(line), "no '{line}' in\n{list}");
    }
    // Hard links survive: unsquashfs recreates them on extraction.
    let (off, _) = partition(&image, "root-a");
    let dest = dir.path().join("extracted");
    ok(Command::new("unsquashfs")
        .arg("-o")
        .arg(off.to_string())
        .arg("-d")
        .arg(&dest)
        .arg(&image));
    use std::os::unix::fs::MetadataExt;
    let a = fs::metadata(dest.join("etc/motd")).unwrap();
    let b = fs::metadata(dest.join("etc/motd.link")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link lost");
    assert_eq!(a.nlink(), 2);
}

/// Builds `images/NAME.toml` with the fake system; returns the disk image.
fn build_shipped(dir: &Path, name: &str) -> PathBuf {
    let sys = fake_system(dir);
    let key = test_key(dir);
    let out = dir.join("out");
    ok(&mut build_cmd(
        &repo_file(&format!("images/{name}.toml")),
        &sys,
        &key,
        &out,
    ));
    let image = out.join(format!("{name}-2026.11.22.1.img"));
    assert!(fs::metadata(&image).unwrap().len() <= 10_000_000_000);
    assert_eq!(partition(&image, "esp").1, 256 << 20);
    assert_eq!(partition(&image, "root-b").1, 2 << 30);
    let verify = stdout(Command::new("sgdisk").arg("-v").arg(&image));
    assert!(verify.contains("No problems found"), "{verify}");
    fsck_esp(&image, dir);
    image
}

/// images/vps.toml: the 10 GB VPS disk boots under BIOS and UEFI (GRUB): a BIOS boot
/// partition, GRUB's boot.img in the MBR and GRUB as the ESP's BOOTX64.EFI.
#[test]
fn vps_definition_builds_a_10gb_bios_and_uefi_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = build_shipped(dir.path(), "vps");
    let names: Vec<_> = sfdisk(&image)
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["esp", "root-a", "root-b", "data", "bios-boot"]);
    assert_eq!(partition(&image, "bios-boot"), (1 << 20, 1 << 20));
    // data: from the end of root-b to the last 1 MiB boundary before the backup GPT.
    assert_eq!(
        partition(&image, "data"),
        (4354 << 20, (9536 - 4354 - 1) << 20)
    );
    // The MBR carries boot code (a systemd-boot image's is zero) and the ESP has GRUB's files.
    let mbr = read_range(&image, 0, 440);
    assert!(mbr.iter().any(|b| *b != 0), "no boot code in the MBR");
    assert!(mtype(&image, "grub/grub.cfg").contains("ab_load /grub/env1"));
}

/// images/vps-uefi.toml: the same disk for UEFI only, with systemd-boot: no BIOS boot partition.
#[test]
fn vps_uefi_definition_builds_a_10gb_systemd_boot_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = build_shipped(dir.path(), "vps-uefi");
    let names: Vec<_> = sfdisk(&image)
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["esp", "root-a", "root-b", "data"]);
    assert_eq!(
        partition(&image, "data"),
        (4353 << 20, (9536 - 4353 - 1) << 20)
    );
    assert!(mtype(&image, "loader/entries/slot-a.conf").contains("options ab.slot=a"));
}

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn kernel_mounts_slot_a() {
    let dir = tempfile::tempdir().unwrap();
    let (_, image) = build_fake(dir.path());
    let (off, _) = partition(&image, "root-a");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let status = Command::new("mount")
        .args(["-t", "squashfs", "-o"])
        .arg(format!("loop,ro,offset={off}"))
        .arg(&image)
        .arg(&mnt)
        .output()
        .unwrap();
    if !status.status.success() {
        eprintln!(
            "skipping: cannot loop-mount here (needs root and loop devices): {}",
            String::from_utf8_lossy(&status.stderr).trim()
        );
        return;
    }
    let _guard = Mount(mnt.clone());
    use std::os::unix::fs::MetadataExt;
    // Hard links have the right link count, and `..` leads back up (squashfs-ng got both wrong).
    let motd = fs::metadata(mnt.join("etc/motd")).unwrap();
    assert_eq!(motd.nlink(), 2);
    assert_eq!(
        motd.ino(),
        fs::metadata(mnt.join("etc/motd.link")).unwrap().ino()
    );
    // readdir's `..` carries the parent inode squashfs stores (path walks never read it).
    let listing = stdout(Command::new("ls").arg("-ai").arg(mnt.join("etc")));
    let root_ino = fs::metadata(&mnt).unwrap().ino();
    assert!(
        listing
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [root_ino.to_string().as_str(), ".."]),
        "{listing}"
    );
    assert_eq!(fs::read(mnt.join("etc/motd")).unwrap(), b"hello\n");
    assert_eq!(
        fs::read_link(mnt.join("init")).unwrap(),
        std::path::Path::new("bin/tool")
    );
}
