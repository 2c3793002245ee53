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
