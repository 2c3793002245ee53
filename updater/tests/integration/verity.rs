//! dm-verity on the device: the slot apply writes is what `veritysetup verify` (cryptsetup-bin,
//! sharing no code with abupdate) accepts with the signed root hash, the boot entry and
//! GRUB's cmdline.cfg carry `abinit.verity=` from the manifest, and a bundle whose tree or
//! root hash does not match its image never gets a boot entry (exit 46), full stream or delta;
//! `abupdate verify` refuses it before anything is written (exit 10).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use abbundle::verity::Verity;
use abbundle::{write_bundle, BundleInput, PayloadInput, PayloadKind, SecretKey, Signer};
use serde_json::Value;

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

/// `veritysetup verify` of partition `label` of `disk` with the manifest's parameters.
fn veritysetup_verify(env: &Env, disk: &Path, label: &str, v: &Verity) -> bool {
    let (off, len) = partition(disk, label);
    let slot = env.path(&format!("{label}.img"));
    let mut f = fs::File::open(disk).unwrap();
    let mut buf = vec![0u8; len as usize];
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(off)).unwrap();
    std::io::Read::read_exact(&mut f, &mut buf).unwrap();
    fs::write(&slot, buf).unwrap();
    Command::new(veritysetup())
        .arg("verify")
        .arg(format!("--hash-offset={}", v.hash_offset))
        .arg(&slot)
        .arg(&slot)
        .arg(hex::encode(v.root_hash))
        .status()
        .unwrap()
        .success()
}

#[test]
fn apply_writes_a_slot_veritysetup_verifies_and_the_entry_carries_the_root_hash() {
    let env = Env::new();
    let v1 = env.build("1", 1, 64 * 1024);
    let v2 = env.build("2", 2, 64 * 1024);
    let (p1, p2) = (v1.manifest.verity().unwrap(), v2.manifest.verity().unwrap());
    assert_ne!(p1.root_hash, p2.root_hash);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    assert!(veritysetup_verify(&env, &disk, "root-a", &p1));
    // From a file: the delta path. Then back to v1's slot... v3 by the full stream.
    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    assert!(veritysetup_verify(&env, &disk, "root-b", &p2));
    assert!(!veritysetup_verify(&env, &disk, "root-b", &p1));
    let entry = String::from_utf8(mtype(&disk, "loader/entries/slot-b+3.conf")).unwrap();
    assert!(entry.contains(&format!(" {}\n", p2.param())), "{entry}");
    let status: Value =
        serde_json::from_str(&ok(&env.abupdate(&disk, &["status", "--json"]))).unwrap();
    assert_eq!(
        status["slots"][0]["verityRootHash"],
        hex::encode(p1.root_hash)
    );
    assert_eq!(
        status["slots"][1]["verityRootHash"],
        hex::encode(p2.root_hash)
    );

    ok(&env.abupdate_booted(&disk, Some("b"), &["mark-good"]));
    let v3 = env.build("3", 3, 64 * 1024);
    let p3 = v3.manifest.verity().unwrap();
    ok(&env.abupdate_booted(
        &disk,
        Some("b"),
        &["apply", "--full", v3.bundle.to_str().unwrap()],
    ));
    assert!(veritysetup_verify(&env, &disk, "root-a", &p3));
}

#[test]
fn grub_cmdline_cfg_carries_the_root_hash() {
    let env = Env::new_grub();
    let v1 = env.build("1", 1, 64 * 1024);
    let v2 = env.build("2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    let cfg = String::from_utf8(mtype(&disk, "b/cmdline.cfg")).unwrap();
    let p2 = v2.manifest.verity().unwrap();
    assert!(cfg.contains(&format!(" {}\"", p2.param())), "{cfg}");
    assert!(veritysetup_verify(&env, &disk, "root-b", &p2));
}

/// v2's payloads as they are, signed again with other kernel parameters or a rootfs changed
/// at one byte: what a builder that got the tree wrong would publish.
fn resigned(env: &Env, v2: &Build, kernel_params: &str, flip: Option<u64>) -> PathBuf {
    let bundle = fs::read(&v2.bundle).unwrap();
    let part = |k: PayloadKind| {
        let p = v2.manifest.payload(k);
        bundle[p.offset as usize..p.end() as usize].to_vec()
    };
    let mut root = part(PayloadKind::Rootfs);
    if let Some(at) = flip {
        root[at as usize] ^= 0x10;
    }
    let mut sources = [
        std::io::Cursor::new(root),
        std::io::Cursor::new(part(PayloadKind::Kernel)),
        std::io::Cursor::new(part(PayloadKind::Initrd)),
    ];
    let [r, k, i] = &mut sources;
    let mut payloads = [
        PayloadInput {
            kind: PayloadKind::Rootfs,
            source: r,
        },
        PayloadInput {
            kind: PayloadKind::Kernel,
            source: k,
        },
        PayloadInput {
            kind: PayloadKind::Initrd,
            source: i,
        },
    ];
    let m = &v2.manifest;
    let input = BundleInput {
        compatible: m.compatible.clone(),
        version: m.version.clone(),
        build_id: m.build_id.clone(),
        created: m.created,
        kernel_params: kernel_params.into(),
        chunk_size: m.payload(PayloadKind::Rootfs).chunk_size,
        format: m.format,
    };
    let key = SecretKey::from_seed(TEST_ONLY_SEED, "test-only");
    let mut out = Vec::new();
    write_bundle(&mut out, &input, &mut payloads, &[&key as &dyn Signer]).unwrap();
    let path = env.path(&format!("bad-{}.abu", flip.unwrap_or(0)));
    fs::write(&path, out).unwrap();
    path
}

#[test]
fn a_tree_or_root_hash_that_does_not_match_the_image_never_gets_a_boot_entry() {
    let env = Env::new();
    let v1 = env.build("1", 1, 64 * 1024);
    let v2 = env.build("2", 2, 64 * 1024);
    let v = v2.manifest.verity().unwrap();
    let kp = v2.manifest.kernel_params.clone();
    let mut wrong = v;
    wrong.root_hash[31] ^= 1;
    let cases = [
        // The signed root hash is not the tree's.
        resigned(&env, &v2, &kp.replace(&v.param(), &wrong.param()), None),
        // A byte of the tree, a byte of the image: the chunk table signs them, so they are
        // written and read back as signed; only the tree check can tell.
        resigned(&env, &v2, &kp, Some(v.hash_offset + 4096 + 9)),
        resigned(&env, &v2, &kp, Some(5000)),
    ];
    // `verify` reads the whole bundle before anything is written: it tells at once (exit 10).
    ok(&env.abupdate(
        &env.path("no-disk"),
        &["verify", v2.bundle.to_str().unwrap()],
    ));
    for bad in &cases {
        let err = fails(
            &env.abupdate(&env.path("no-disk"), &["verify", bad.to_str().unwrap()]),
            10,
        );
        assert!(
            err.contains("dm-verity") && err.contains("built wrong"),
            "{err}"
        );
    }
    for bad in &cases {
        for full in [false, true] {
            let disk = env.path("disk.img");
            copy_image(&v1.image, &disk);
            let mut args = vec!["apply"];
            if full {
                args.push("--full");
            }
            args.push(bad.to_str().unwrap());
            let err = fails(&env.abupdate(&disk, &args), 46);
            assert!(
                err.contains("root-b") && err.contains("built wrong"),
                "{err}"
            );
            assert_eq!(mdir(&disk, "loader/entries"), ["slot-a.conf"], "{bad:?}");
            let status: Value =
                serde_json::from_str(&ok(&env.abupdate(&disk, &["status", "--json"]))).unwrap();
            assert_eq!(status["nextBootSlot"], "a");
        }
    }
}

/// Parameters that cannot describe the root payload (a size that does not add up, a
/// malformed or repeated parameter) are an invalid manifest: refused before anything is
/// written (exit 10). Made by re-signing v2's manifest changed in place (same length, so the
/// header and offsets stay; abbuild and write_bundle would refuse to make it).
#[test]
fn verity_parameters_that_do_not_fit_the_payload_are_refused_before_anything_is_written() {
    let env = Env::new();
    let v1 = env.build("1", 1, 64 * 1024);
    let v2 = env.build("2", 2, 64 * 1024);
    let v = v2.manifest.verity().unwrap();
    let value = v.param();
    let (blocks, offset) = (v.data_blocks.to_string(), v.hash_offset.to_string());
    let (fewer, less) = (
        (v.data_blocks - 1).to_string(),
        (v.hash_offset - 4096).to_string(),
    );
    assert_eq!((blocks.len(), offset.len()), (fewer.len(), less.len()));
    let cases = [
        // One data block fewer: the payload is longer than image + tree.
        value.replace(&format!(",{blocks},{offset}"), &format!(",{fewer},{less}")),
        // The hash area somewhere else than right after the image.
        value.replace(&format!(",{blocks},{offset}"), &format!(",{blocks},{less}")),
        value.replace(',', ";"),
    ];
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    let good = fs::read(&v2.bundle).unwrap();
    let m_len = u32::from_le_bytes(good[16..20].try_into().unwrap()) as usize;
    let key = SecretKey::from_seed(TEST_ONLY_SEED, "test-only");
    for other in &cases {
        let mut b = good.clone();
        let text = String::from_utf8(b[64..64 + m_len].to_vec()).unwrap();
        let new = text.replace(&value, other);
        assert!(new != text && new.len() == text.len());
        b[64..64 + m_len].copy_from_slice(new.as_bytes());
        let sig = 64 + m_len + 8;
        b[sig..sig + 64].copy_from_slice(&key.sign(new.as_bytes()));
        let bundle = env.path("bad.abu");
        fs::write(&bundle, &b).unwrap();
        for full in [false, true] {
            let mut args = vec!["apply"];
            if full {
                args.push("--full");
            }
            args.push(bundle.to_str().unwrap());
            let err = fails(&env.abupdate(&disk, &args), 10);
            assert!(err.contains("verity"), "{err}");
            assert_eq!(sha256_file(&disk), before, "{other}");
        }
    }
}
