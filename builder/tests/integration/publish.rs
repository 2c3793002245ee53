//! `abbuild publish`: the bundle copied into the tree, a channel file that verifies with the
//! public key, sequence numbers that grow, and published bundles never replaced.

use std::fs;
use std::path::Path;
use std::process::Command;

use abbundle::channel;
use abbundle::{PublicKey, TrustedKeys};

use crate::util::{fails, noise, ok, stdout};

fn abbuild() -> Command {
    Command::new(env!("CARGO_BIN_EXE_abbuild"))
}

/// A small bundle at `d/name` for version `version`.
fn bundle(d: &Path, name: &str, version: &str, seed: u64) {
    fs::write(d.join("root.img"), noise(300_000, seed)).unwrap();
    fs::write(d.join("vmlinuz"), noise(50_000, seed + 1)).unwrap();
    fs::write(d.join("initrd"), noise(20_000, seed + 2)).unwrap();
    ok(abbuild()
        .current_dir(d)
        .args(["bundle", "--rootfs", "root.img", "--kernel", "vmlinuz"])
        .args([
            "--initrd",
            "initrd",
            "--compatible",
            "board-x",
            "--version",
            version,
        ])
        .args(["--key", "ci.key", "--out", name]));
}

fn publish(d: &Path, name: &str, extra: &[&str]) -> Command {
    let mut c = abbuild();
    c.current_dir(d)
        .args(["publish", "--bundle", name, "--channel", "stable"])
        .args(["--key", "ci.key", "--out-dir", "www"])
        .args(extra);
    c
}

fn channel_file(d: &Path) -> channel::Channel {
    let public = PublicKey::parse(&fs::read_to_string(d.join("ci.pub")).unwrap()).unwrap();
    let bytes = fs::read(d.join("www/board-x/stable.json")).unwrap();
    channel::open(&bytes, &TrustedKeys::new(vec![public]))
        .unwrap()
        .0
}

#[test]
fn publish_writes_a_signed_channel_with_growing_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(abbuild()
        .args(["keygen", "--name", "ci", "--out-dir"])
        .arg(d));
    bundle(d, "v1.abu", "1", 1);
    let out = stdout(&mut publish(
        d,
        "v1.abu",
        &["--rollout", "10", "--valid-for", "2h"],
    ));
    assert!(out.contains("sequence 1"), "{out}");
    let c = channel_file(d);
    assert_eq!(c.version.as_str(), "1");
    assert_eq!((c.sequence, c.rollout, c.expires - c.issued), (1, 10, 7200));
    assert_eq!(c.bundle, "v1.abu");
    assert_eq!(c.compatible, "board-x");
    let copied = fs::read(d.join("www/board-x/v1.abu")).unwrap();
    assert_eq!(copied, fs::read(d.join("v1.abu")).unwrap());
    assert_eq!(c.size, copied.len() as u64);
    let u = abbundle::reader::read_unverified(&copied[..]).unwrap();
    assert_eq!(c.manifest_sha256, u.manifest_sha256);

    // Again (same bundle: left as it is), then a new version: 2, 3.
    ok(&mut publish(d, "v1.abu", &[]));
    assert_eq!(channel_file(d).sequence, 2);
    bundle(d, "v2.abu", "2", 5);
    ok(&mut publish(d, "v2.abu", &[]));
    let c = channel_file(d);
    assert_eq!((c.sequence, c.version.as_str(), c.rollout), (3, "2", 100));

    // A different bundle under a published name is refused; so is an incomplete bundle.
    bundle(d, "v1.abu", "1", 9);
    let err = fails(&mut publish(d, "v1.abu", &[]));
    assert!(err.contains("never replaced"), "{err}");
    let whole = fs::read(d.join("v2.abu")).unwrap();
    fs::write(d.join("v9.abu"), &whole[..whole.len() - 100]).unwrap();
    let err = fails(&mut publish(d, "v9.abu", &[]));
    assert!(err.contains("not a complete bundle"), "{err}");
    assert!(!d.join("www/board-x/v9.abu").exists());
    assert_eq!(channel_file(d).sequence, 3);
}

/// A keygen'd `ci` key and bundle v1 in a fresh directory.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ok(abbuild()
        .args(["keygen", "--name", "ci", "--out-dir"])
        .arg(dir.path()));
    bundle(dir.path(), "v1.abu", "1", 1);
    dir
}

/// A bundle named like the channel file or its temporary name was overwritten (or deleted)
/// by the channel file, and "published" printed.
#[test]
fn publish_refuses_bundle_names_of_channel_files() {
    for name in ["stable.json", "stable.json.tmp", "beta.json"] {
        let dir = setup();
        let d = dir.path();
        fs::copy(d.join("v1.abu"), d.join(name)).unwrap();
        let err = fails(&mut publish(d, name, &[]));
        assert!(err.contains("must end in .abu"), "{name}: {err}");
        assert!(
            !d.join("www/board-x").exists()
                || fs::read_dir(d.join("www/board-x")).unwrap().count() == 0,
            "{name}: something was written"
        );
    }
}

/// Only a bundle the publishing key signed, and whole, is published.
#[test]
fn publish_refuses_a_bundle_that_does_not_verify() {
    let dir = setup();
    let d = dir.path();
    ok(&mut publish(d, "v1.abu", &[]));
    // Signed by another key.
    ok(abbuild()
        .args(["keygen", "--name", "other", "--out-dir"])
        .arg(d));
    let other = Command::new(env!("CARGO_BIN_EXE_abbuild"))
        .current_dir(d)
        .args(["bundle", "--rootfs", "root.img", "--kernel", "vmlinuz"])
        .args(["--initrd", "initrd", "--compatible", "board-x"])
        .args(["--version", "2", "--key", "other.key", "--out", "v2.abu"])
        .output()
        .unwrap();
    assert!(other.status.success(), "{other:?}");
    let err = fails(&mut publish(d, "v2.abu", &[]));
    assert!(err.contains("does not verify"), "{err}");
    // Signed by ci, a payload byte changed since (the manifest still verifies).
    bundle(d, "v3.abu", "3", 7);
    let mut bytes = fs::read(d.join("v3.abu")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(d.join("v3.abu"), &bytes).unwrap();
    let err = fails(&mut publish(d, "v3.abu", &[]));
    assert!(err.contains("does not verify"), "{err}");
    for name in ["v2.abu", "v3.abu"] {
        assert!(!d.join("www/board-x").join(name).exists(), "{name} copied");
    }
    let c = channel_file(d);
    assert_eq!((c.sequence, c.bundle.as_str()), (1, "v1.abu"));
}

/// After sequence 2^64-2 the next would be the last one possible; after 2^64-1 it wrapped to
/// 0, which every device refuses (59) for ever.
#[test]
fn publish_sequence_never_wraps() {
    let dir = setup();
    let d = dir.path();
    let err = fails(&mut publish(
        d,
        "v1.abu",
        &["--sequence", "18446744073709551615"],
    ));
    assert!(err.contains("leaves no room"), "{err}");
    assert!(!d.join("www/board-x/stable.json").exists());
    ok(&mut publish(
        d,
        "v1.abu",
        &["--sequence", "18446744073709551614"],
    ));
    let err = fails(&mut publish(d, "v1.abu", &[]));
    assert!(err.contains("no higher one is left"), "{err}");
    assert_eq!(channel_file(d).sequence, u64::MAX - 1);
}
