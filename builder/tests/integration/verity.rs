//! dm-verity in what abbuild writes: the bundle's root payload and slot A are image + hash
//! area, `veritysetup verify` (cryptsetup-bin, sharing no code with abbuild) accepts slot A
//! with the root hash from the signed manifest and refuses it after one flipped byte, and
//! abbuild refuses to sign a root hash that does not match its image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

fn veritysetup() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("veritysetup"))
        .find(|p| p.is_file())
        .expect("veritysetup (Debian: cryptsetup-bin; scripts/setup.sh installs it)")
}

/// `abinit.verity=` of the kernel parameters, split by hand: (root hash, salt, data blocks,
/// hash offset).
fn verity_param(kernel_params: &str) -> (String, String, u64, u64) {
    let v: Vec<&str> = kernel_params
        .split(' ')
        .find_map(|p| p.strip_prefix("abinit.verity="))
        .unwrap_or_else(|| panic!("no abinit.verity= in {kernel_params}"))
        .split(',')
        .collect();
    (
        v[0].to_string(),
        v[1].to_string(),
        v[2].parse().unwrap(),
        v[3].parse().unwrap(),
    )
}

fn verify(slot: &Path, hash_offset: u64, root: &str) -> bool {
    Command::new(veritysetup())
        .arg("verify")
        .arg(format!("--hash-offset={hash_offset}"))
        .arg(slot)
        .arg(slot)
        .arg(root)
        .output()
        .unwrap()
        .status
        .success()
}

fn flipped(path: &Path, at: u64) -> PathBuf {
    let mut b = fs::read(path).unwrap();
    b[at as usize] ^= 0x20;
    let out = path.with_extension(format!("flip{at}"));
    fs::write(&out, b).unwrap();
    out
}

#[test]
fn slot_a_and_the_bundle_hold_the_tree_veritysetup_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (bundle, image) = build_fake(d);
    let m = inspect(&bundle);
    let kp = m["kernel_params"].as_str().unwrap();
    let (root, salt, blocks, hash_offset) = verity_param(kp);
    assert_eq!(hash_offset, blocks * 4096);
    let (offset, size, _) = payload(&m, "rootfs");
    let payload = read_range(&bundle, offset, size);

    // The payload is the squashfs (as `abbuild rootfs` makes it), zeros to a 4 KiB boundary,
    // then the hash area: veritysetup on the padded squashfs writes the same bytes.
    let squashfs = d.join("root.squashfs");
    ok(Command::new(env!("CARGO_BIN_EXE_abbuild"))
        .arg("rootfs")
        .arg("--image")
        .arg(repo_file("images/qemu-test.toml"))
        .arg("--system")
        .arg(d.join("system"))
        .arg("--out")
        .arg(&squashfs)
        .env("SOURCE_DATE_EPOCH", EPOCH));
    let sq = fs::read(&squashfs).unwrap();
    assert_eq!(blocks, (sq.len() as u64).div_ceil(4096));
    assert!(payload[..sq.len()] == sq[..]);
    assert!(payload[sq.len()..hash_offset as usize]
        .iter()
        .all(|b| *b == 0));
    let theirs = d.join("theirs");
    fs::write(&theirs, &payload[..hash_offset as usize]).unwrap();
    let out = ok(Command::new(veritysetup())
        .arg("format")
        .arg(format!("--hash-offset={hash_offset}"))
        .arg(format!("--data-blocks={blocks}"))
        .arg(format!("--salt={salt}"))
        .arg(format!(
            "--uuid={}",
            abbundle::verity::uuid_string(&hex_32(&salt))
        ))
        .arg(&theirs)
        .arg(&theirs));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("Root hash:") && l.trim_end().ends_with(&root)),
        "{text}"
    );
    let mut written = fs::read(&theirs).unwrap();
    written.resize(payload.len(), 0);
    assert!(written == payload, "veritysetup writes other bytes");

    // Slot A of the disk image holds the payload, is still a squashfs, and verifies.
    let (slot_off, slot_len) = partition(&image, "root-a");
    assert!(read_range(&image, slot_off, size) == payload);
    assert!(list_slot_a(&image).contains("etc/motd"));
    let slot = d.join("slot-a");
    fs::write(&slot, read_range(&image, slot_off, slot_len)).unwrap();
    assert!(verify(&slot, hash_offset, &root));
    assert!(!verify(&flipped(&slot, 4096 * 2 + 17), hash_offset, &root));
    assert!(!verify(
        &flipped(&slot, hash_offset + 4096 + 3),
        hash_offset,
        &root
    ));
    assert!(!verify(&flipped(&slot, size - 4096), hash_offset, &root));

    // Slot A's boot entry carries the signed parameter.
    let entry = mtype(&image, "loader/entries/slot-a.conf");
    assert!(
        entry.contains(&format!(" abinit.verity={root},")),
        "{entry}"
    );
}

fn hex_32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).unwrap();
    out
}

#[test]
fn verity_false_in_the_image_definition_leaves_the_plain_squashfs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sys = fake_system(d);
    let image = d.join("qemu-test.toml");
    let def = fs::read_to_string(repo_file("images/qemu-test.toml")).unwrap();
    fs::write(&image, format!("{def}verity = false\n")).unwrap();
    let out = d.join("out");
    ok(&mut build_cmd(&image, &sys, &test_key(d), &out));
    let m = inspect(&out.join("qemu-test-2026.11.22.1.abu"));
    assert!(!m["kernel_params"]
        .as_str()
        .unwrap()
        .contains("abinit.verity"));
    let squashfs = d.join("root.squashfs");
    ok(Command::new(env!("CARGO_BIN_EXE_abbuild"))
        .arg("rootfs")
        .arg("--image")
        .arg(&image)
        .arg("--system")
        .arg(&sys)
        .arg("--out")
        .arg(&squashfs)
        .env("SOURCE_DATE_EPOCH", EPOCH));
    assert_eq!(
        payload(&m, "rootfs").1,
        fs::metadata(&squashfs).unwrap().len()
    );
}

/// `abbuild bundle` takes a root image and kernel parameters from the user: with
/// `abinit.verity=` they must describe that image's tree, or nothing is signed (exit 10).
#[test]
fn bundle_refuses_a_root_hash_that_does_not_match_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (bundle, _) = build_fake(d);
    let m = inspect(&bundle);
    let kp = m["kernel_params"].as_str().unwrap().to_string();
    let (root, ..) = verity_param(&kp);
    let (offset, size, _) = payload(&m, "rootfs");
    let good = d.join("root.img");
    fs::write(&good, read_range(&bundle, offset, size)).unwrap();
    let key = test_key(d);
    let run = |rootfs: &Path, params: &str| {
        let out = d.join("b.abu");
        let o = Command::new(env!("CARGO_BIN_EXE_abbuild"))
            .arg("bundle")
            .arg("--rootfs")
            .arg(rootfs)
            .arg("--kernel")
            .arg(d.join("system/kernel"))
            .arg("--initrd")
            .arg(d.join("system/initrd"))
            .args(["--kernel-params", params])
            .args(["--compatible", "qemu-test", "--version", "1", "--key"])
            .arg(&key)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let made = out.exists();
        let _ = fs::remove_file(&out);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            made,
        )
    };
    let (code, err, made) = run(&good, &kp);
    assert_eq!((code, made), (Some(0), true), "{err}");
    let image_byte = flipped(&good, 5000);
    let tree_byte = flipped(&good, size - 1);
    let mut other_root = root.clone().into_bytes();
    other_root[0] = if other_root[0] == b'0' { b'1' } else { b'0' };
    let other_root = kp.replace(&root, std::str::from_utf8(&other_root).unwrap());
    let short = d.join("short.img");
    fs::write(&short, &fs::read(&good).unwrap()[..size as usize - 4096]).unwrap();
    for (rootfs, params, says) in [
        (&image_byte, &kp, "does not match the image"),
        (&tree_byte, &kp, "does not match the image"),
        (&good, &other_root, "the signed manifest says"),
        (&short, &kp, "hash area"),
    ] {
        let (code, err, made) = run(rootfs, params);
        assert_eq!((code, made), (Some(10), false), "{rootfs:?}: {err}");
        assert!(err.contains(says), "{err}");
    }
}

/// The parameter is abbuild's alone, and it counts towards the kernel's command line.
#[test]
fn the_verity_parameter_is_abbuilds_and_counts_in_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let sys = fake_system(dir.path());
    let key = test_key(dir.path());
    fs::write(
        sys.join("kernel-params"),
        format!("quiet abinit.verity={}", "0".repeat(64)),
    )
    .unwrap();
    let err = fails(&mut build_cmd(
        &repo_file("images/qemu-test.toml"),
        &sys,
        &key,
        &dir.path().join("out"),
    ));
    assert!(err.contains("abinit.verity= is abbuild's"), "{err}");
    let image = dir.path().join("x.toml");
    let def = fs::read_to_string(repo_file("images/qemu-test.toml")).unwrap();
    fs::write(
        &image,
        def.replace("\"panic=5\"]", "\"panic=5\", \"abinit.verity=x\"]"),
    )
    .unwrap();
    fs::write(sys.join("kernel-params"), "quiet").unwrap();
    let err = fails(&mut build_cmd(&image, &sys, &key, &dir.path().join("out")));
    assert!(err.contains("abinit.verity= is abbuild's"), "{err}");
    // 1927 bytes of system parameters fit without verity (errors.rs), not with it.
    fs::write(
        sys.join("kernel-params"),
        format!("x={}", "y".repeat(1993 - 44 - 22 - 2)),
    )
    .unwrap();
    let err = fails(&mut build_cmd(
        &repo_file("images/qemu-test.toml"),
        &sys,
        &key,
        &dir.path().join("out"),
    ));
    assert!(err.contains("2047"), "{err}");
}
