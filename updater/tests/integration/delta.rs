//! Delta updates (format 2): `apply --dry-run` plans from the chunk index and the seeds the
//! disk holds, on abbuild-made squashfs images; a corrupt index is refused before anything is
//! written; a format 1 bundle still installs.

use std::path::Path;

use abbundle::header::{Header, HEADER_LEN};
use abbundle::PayloadKind;
use serde_json::Value;

use crate::util::*;

/// Compressible, file-like bytes (numbered lines of words), different for each seed.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0u64;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(format!("{line} {} {:x}\n", WORDS[(x % 8) as usize], x).as_bytes());
        line += 1;
    }
    out.truncate(len);
    out
}

/// Three "packages"; `changed` replaces the middle one's library.
fn files(changed: bool) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("nix/store/aaaa-one/lib/libone.so", text(900_000, 11)),
        (
            "nix/store/bbbb-two/lib/libtwo.so",
            text(900_000, if changed { 99 } else { 12 }),
        ),
        ("nix/store/cccc-three/lib/libthree.so", text(900_000, 13)),
    ]
}

fn build(env: &Env, version: &str, changed: bool, format: u32) -> Build {
    let f = files(changed);
    let refs: Vec<(&str, &[u8])> = f.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    env.build_with(version, 1, 64 * 1024, &refs, format)
}

fn plan(env: &Env, disk: &Path, bundle: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["apply", "--dry-run", "--json"];
    args.extend_from_slice(extra);
    args.push(bundle.to_str().unwrap());
    serde_json::from_str(&ok(&env.abupdate(disk, &args))).unwrap()
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn dry_run_reads_only_what_changed() {
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);

    let p = plan(&env, &disk, &v2.bundle, &[]);
    assert_eq!(p["kind"], "ApplyPlan");
    assert_eq!(p["mode"], "delta", "{p}");
    assert_eq!(p["targetSlot"], "b");
    let root = &p["payloads"][0];
    let size = v2.manifest.payload(PayloadKind::Rootfs).size;
    assert_eq!(u(root, "size"), size);
    // One of three equal packages changed: about a third of the root, compressed, is new;
    // the rest is copied from slot a.
    let fetch = u(root, "fetchBytes");
    assert!(
        fetch > 0 && fetch * 2 < size,
        "fetch {fetch} of {size}: {p}"
    );
    assert_eq!(u(root, "fetchBytes") + u(root, "copyBytes"), size);
    // Kernel and initrd are unchanged: slot a's boot files supply all of them.
    for k in [1, 2] {
        assert_eq!(u(&p["payloads"][k], "fetchBytes"), 0, "{p}");
    }
    // Everything read: the front of the bundle and the root's missing ranges.
    assert_eq!(
        u(&p, "readBytes"),
        u(&p, "frontBytes") + u(root, "readBytes")
    );
    assert!(u(&p, "readBytes") * 2 < u(&p, "bundleBytes"), "{p}");
    let front = Header::decode(
        std::fs::read(&v2.bundle).unwrap()[..HEADER_LEN]
            .try_into()
            .unwrap(),
    )
    .unwrap()
    .index_end();
    assert_eq!(u(&p, "frontBytes"), front);
    // The text form says the same.
    let out = ok(&env.abupdate(&disk, &["apply", "--dry-run", v2.bundle.to_str().unwrap()]));
    assert!(out.contains(&format!("fetch {fetch} bytes")), "{out}");
    // A dry run changes nothing.
    assert_eq!(sha256_file(&disk), before);
}

#[test]
fn dry_run_of_the_running_root_reads_no_payload_byte() {
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    // The same bundle again (a reinstall): every chunk is in slot a or on the ESP.
    let p = plan(&env, &disk, &v1.bundle, &["--allow-downgrade"]);
    assert_eq!(p["mode"], "delta");
    assert_eq!(u(&p, "readBytes"), u(&p, "frontBytes"), "{p}");
    assert_eq!(u(&p, "requests"), 1);
    for k in 0..3 {
        assert_eq!(u(&p["payloads"][k], "fetchBytes"), 0);
        assert_eq!(u(&p["payloads"][k], "requests"), 0);
    }
}

#[test]
fn the_target_slot_is_a_seed_too() {
    // Slot b already holds v2's root (as after an apply cut short after the slot write):
    // nothing of the root is read again, though slot a holds the old one.
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let (start, _) = partition(&disk, "root-b");
    let root = &std::fs::read(&v2.bundle).unwrap()[..];
    let r = v2.manifest.payload(PayloadKind::Rootfs);
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &root[r.offset as usize..r.end() as usize], start)
        .unwrap();
    let p = plan(&env, &disk, &v2.bundle, &[]);
    assert_eq!(u(&p["payloads"][0], "fetchBytes"), 0, "{p}");
}

#[test]
fn format_1_plans_a_full_stream_and_still_installs() {
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_V1);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_V1);
    assert_eq!(std::fs::read(&v2.bundle).unwrap()[8], 1);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let p = plan(&env, &disk, &v2.bundle, &[]);
    assert_eq!(p["mode"], "full");
    assert_eq!(p["format"], 1);
    assert_eq!(u(&p, "readBytes"), u(&p, "bundleBytes"));
    let out = ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    assert!(
        out.contains("installed version 2026.12.2 into slot b"),
        "{out}"
    );
    let size = v2.manifest.payload(PayloadKind::Rootfs).size;
    assert_eq!(
        partition_sha256(&disk, "root-b", size),
        payload_sha(&v2.manifest, PayloadKind::Rootfs)
    );
}

#[test]
fn an_index_that_does_not_match_its_signed_digest_is_refused() {
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    let mut b = std::fs::read(&v2.bundle).unwrap();
    let h = Header::decode(b[..HEADER_LEN].try_into().unwrap()).unwrap();
    // The last byte of the last entry's digest.
    b[h.index_end() as usize - 1] ^= 0x01;
    let bad = env.path("bad-index.abu");
    std::fs::write(&bad, &b).unwrap();
    for dry in [true, false] {
        let mut args = vec!["apply"];
        if dry {
            args.push("--dry-run");
        }
        args.push(bad.to_str().unwrap());
        let err = fails(&env.abupdate(&disk, &args), 19);
        assert!(
            err.contains("chunk index does not match the signed manifest"),
            "{err}"
        );
        assert_eq!(sha256_file(&disk), before, "the disk changed");
    }
}
