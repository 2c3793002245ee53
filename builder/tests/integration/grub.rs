//! `boot-backend = "grub"` (images/qemu-test-grub.toml): the partition table with its BIOS
//! boot partition, the ESP GRUB boots from, boot.img and core.img placed byte for byte as
//! grub-bios-setup places them, and reproducible bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use abbuild::grub;
use abbundle::grubenv::{self, State};

use crate::util::*;

const IMAGE: &str = "qemu-test-grub-2026.11.22.1.img";

/// Builds the fake system with the GRUB test image; returns the disk image.
fn build_grub(dir: &Path) -> PathBuf {
    let sys = fake_system(dir);
    let key = test_key(dir);
    let out = dir.join("out");
    ok(&mut build_cmd(
        &repo_file("images/qemu-test-grub.toml"),
        &sys,
        &key,
        &out,
    ));
    out.join(IMAGE)
}

/// mcopy of an ESP file out of `image`.
fn esp_file(image: &Path, path: &str, dir: &Path) -> Vec<u8> {
    let (off, _) = partition(image, "esp");
    let copy = dir.join("esp-file");
    let _ = fs::remove_file(&copy);
    ok(Command::new("mcopy")
        .arg("-i")
        .arg(format!("{}@@{off}", image.display()))
        .arg(format!("::{path}"))
        .arg(&copy));
    fs::read(&copy).unwrap()
}

#[test]
fn grub_image_table_and_esp() {
    let dir = tempfile::tempdir().unwrap();
    let image = build_grub(dir.path());
    let out = stdout(Command::new("sgdisk").arg("-v").arg(&image));
    assert!(out.contains("No problems found"), "{out}");
    fsck_esp(&image, dir.path());

    // The four shared partitions keep numbers 1-4; the BIOS boot partition is 5, first on
    // the disk, and data is last.
    let parts = sfdisk(&image);
    let names: Vec<_> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["esp", "root-a", "root-b", "data", "bios-boot"]);
    let bios = &parts[4];
    assert_eq!(bios["type"], "21686148-6449-6E6F-744E-656564454649");
    assert!(bios["node"].as_str().unwrap().ends_with('5'));
    assert_eq!(partition(&image, "bios-boot"), (1 << 20, 1 << 20));
    assert_eq!(partition(&image, "esp").0, 2 << 20);
    let (data_off, data_len) = partition(&image, "data");
    assert_eq!(data_off + data_len, (768 << 20) - (1 << 20));

    // GRUB's files on the ESP.
    let d = dir.path();
    let cfg = esp_file(&image, grubenv::GRUB_CFG, d);
    assert_eq!(cfg, grub::grub_cfg().into_bytes());
    fs::write(d.join("grub.cfg"), &cfg).unwrap();
    ok(Command::new("grub-script-check").arg(d.join("grub.cfg")));
    for f in grubenv::ENV_FILES {
        let env = esp_file(&image, f, d);
        assert_eq!(grubenv::parse(&env), Ok(State::initial()), "{f}");
        fs::write(d.join("env"), &env).unwrap();
        let listed = stdout(Command::new("grub-editenv").arg(d.join("env")).arg("list"));
        assert_eq!(listed, "ab_order=a b\nab_a=good\nab_b=none\n");
    }
    let kp = inspect(&dir.path().join("out").join(IMAGE).with_extension("abu"))["kernel_params"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        kp.starts_with("quiet loglevel=3 console=ttyS0 panic=5 abinit.verity="),
        "{kp}"
    );
    assert_eq!(
        esp_file(&image, "a/cmdline.cfg", d),
        format!("set ab_params=\"{kp}\"\n").into_bytes()
    );
    let images = grub::Images::make().unwrap();
    assert!(esp_file(&image, "EFI/BOOT/BOOTX64.EFI", d) == images.efi);
    assert_eq!(esp_file(&image, "a/vmlinuz", d), noise(300_000, 1));
}

/// Unmounts and detaches on drop, so a failing assertion leaves nothing behind.
struct LoopMount {
    mnt: PathBuf,
    dev: String,
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// boot.img in the MBR and core.img in the BIOS boot partition are the bytes
/// `grub-bios-setup --no-rs-codes` writes into the same disk without them.
#[test]
fn bios_boot_matches_grub_bios_setup() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = build_grub(d);
    // The same disk as abbuild writes it before bios::install: zeros before the MBR's disk
    // signature, and an empty BIOS boot partition.
    let bare = d.join("bare.img");
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(&image)
        .arg(&bare));
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&bare).unwrap();
        f.write_all_at(&[0u8; 0x1b8], 0).unwrap();
        f.write_all_at(&vec![0u8; 1 << 20], 1 << 20).unwrap();
    }
    assert!(!same_bytes(&bare, &image));

    // grub-bios-setup reads boot.img and core.img from a directory it must find on a disk of
    // its device map: an ext4 file system on a loop device.
    let images = grub::Images::make().unwrap();
    let fsimg = d.join("grubdir.img");
    fs::write(&fsimg, vec![0u8; 8 << 20]).unwrap();
    ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&fsimg));
    let lo = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&fsimg)
        .output()
        .unwrap();
    if !lo.status.success() {
        eprintln!(
            "skipping: no loop device here (needs root): {}",
            String::from_utf8_lossy(&lo.stderr).trim()
        );
        return;
    }
    let dev = String::from_utf8(lo.stdout).unwrap().trim().to_string();
    let mnt = d.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let guard = LoopMount {
        mnt: mnt.clone(),
        dev: dev.clone(),
    };
    ok(Command::new("mount").arg(&dev).arg(&mnt));
    fs::write(mnt.join("core.img"), &images.core).unwrap();
    fs::write(mnt.join("boot.img"), &images.boot).unwrap();
    let map = d.join("device.map");
    fs::write(&map, format!("(hd0) {}\n(hd1) {dev}\n", bare.display())).unwrap();
    let setup = grub::grub_lib().join("i386-pc/grub-bios-setup");
    ok(Command::new(setup)
        .args(["--no-rs-codes", "--skip-fs-probe", "-d"])
        .arg(&mnt)
        .arg("-m")
        .arg(&map)
        .arg(&bare));
    drop(guard);
    let diff = Command::new("cmp").arg(&image).arg(&bare).output().unwrap();
    assert!(
        diff.status.success(),
        "abbuild and grub-bios-setup differ: {}",
        String::from_utf8_lossy(&diff.stdout)
    );
}

/// Whether two files have the same bytes (`cmp`, which streams: the images are 768 MiB).
fn same_bytes(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

#[test]
fn grub_image_is_reproducible() {
    let one = tempfile::tempdir().unwrap();
    let image1 = build_grub(one.path());
    // More than FAT's two-second time resolution and a new second for grub-mkimage.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let two = tempfile::tempdir().unwrap();
    let image2 = build_grub(two.path());
    assert!(same_bytes(&image1, &image2), "GRUB disk images differ");
}

/// Kernel parameters become GRUB script on a GRUB image: a `$` is refused with a clear error,
/// and the same parameters still build a systemd-boot image.
#[test]
fn grub_image_refuses_script_in_kernel_params() {
    let dir = tempfile::tempdir().unwrap();
    let sys = fake_system(dir.path());
    let key = test_key(dir.path());
    let def = fs::read_to_string(repo_file("images/qemu-test-grub.toml"))
        .unwrap()
        .replace("\"panic=5\"]", "\"panic=5\", \"x=$root\"]");
    let image = dir.path().join("bad.toml");
    fs::write(&image, &def).unwrap();
    let err = fails(&mut build_cmd(&image, &sys, &key, &dir.path().join("out")));
    assert!(
        err.contains("kernel parameters contain '$', which GRUB would read as script")
            && err.contains("boot-backend = \"grub\""),
        "{err}"
    );
    assert!(!dir.path().join("out").join(IMAGE).exists());
    let plain = def.replace("boot-backend = \"grub\"", "boot-backend = \"systemd-boot\"");
    fs::write(&image, plain).unwrap();
    ok(&mut build_cmd(&image, &sys, &key, &dir.path().join("out2")));
}

/// `ABBUILD_GRUB_MKIMAGE` names the grub-mkimage to run (another GRUB, with `ABBUILD_GRUB_LIB`):
/// a wrapper named there makes both images, and a missing one is refused before anything is
/// written, with the variable in the message.
#[test]
fn grub_mkimage_named_by_env() {
    let dir = tempfile::tempdir().unwrap();
    let sys = fake_system(dir.path());
    let key = test_key(dir.path());
    let real = which("grub-mkimage");
    let log = dir.path().join("mkimage.log");
    let wrapper = dir.path().join("my-grub-mkimage");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$2\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let image = repo_file("images/qemu-test-grub.toml");
    let out = dir.path().join("out");
    ok(build_cmd(&image, &sys, &key, &out).env("ABBUILD_GRUB_MKIMAGE", &wrapper));
    // Both platforms went through the wrapper (its second argument is -O's value).
    assert_eq!(fs::read_to_string(&log).unwrap(), "x86_64-efi\ni386-pc\n");
    assert!(out.join(IMAGE).is_file());

    let missing = dir.path().join("no-such-grub-mkimage");
    let out2 = dir.path().join("out2");
    let res = build_cmd(&image, &sys, &key, &out2)
        .env("ABBUILD_GRUB_MKIMAGE", &missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert!(
        err.contains("ABBUILD_GRUB_MKIMAGE=") && err.contains("no-such-grub-mkimage"),
        "{err}"
    );
    assert!(fs::read_dir(&out2).map_or(true, |mut d| d.next().is_none()));
}

fn which(program: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not in PATH (scripts/setup.sh installs it)"))
}
