//! `abbuild keygen`, `abbuild bundle` and `abbuild inspect`: the low-level path for people who
//! bring their own root image.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::util::{fails, noise, ok, stdout};

fn abbuild() -> Command {
    Command::new(env!("CARGO_BIN_EXE_abbuild"))
}

#[test]
fn keygen_writes_a_private_secret_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let out = stdout(
        abbuild()
            .args(["keygen", "--name", "ci", "--out-dir"])
            .arg(&keys),
    );
    let key_id = out.split_whitespace().nth(2).unwrap().to_string();
    assert_eq!(key_id.len(), 16, "{out}");
    let secret = keys.join("ci.key");
    let mode = fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secret key mode {mode:o}");
    let public = fs::read_to_string(keys.join("ci.pub")).unwrap();
    assert!(public.starts_with("abupdate-public-key-v1 ") && public.trim_end().ends_with(" ci"));
    assert!(!public.contains(
        fs::read_to_string(&secret)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
    ));

    let err = fails(
        abbuild()
            .args(["keygen", "--name", "ci", "--out-dir"])
            .arg(&keys),
    );
    assert!(err.contains("exists"), "{err}");
    ok(abbuild()
        .args(["keygen", "--force", "--name", "ci", "--out-dir"])
        .arg(&keys));
    assert_ne!(fs::read_to_string(keys.join("ci.pub")).unwrap(), public);
}

#[test]
fn bundle_then_inspect_shows_what_went_in() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(abbuild()
        .args(["keygen", "--name", "ci", "--out-dir"])
        .arg(d));
    fs::write(d.join("root.img"), noise(700_000, 1)).unwrap();
    fs::write(d.join("vmlinuz"), noise(90_000, 2)).unwrap();
    fs::write(d.join("initrd"), noise(40_000, 3)).unwrap();
    let bundle = d.join("v7.abu");
    ok(abbuild()
        .env("SOURCE_DATE_EPOCH", "1234567890")
        .current_dir(d)
        .args([
            "bundle", "--rootfs", "root.img", "--kernel", "vmlinuz", "--initrd", "initrd",
        ])
        .args([
            "--kernel-params",
            "console=ttyS0 quiet",
            "--compatible",
            "board-x",
        ])
        .args(["--version", "2026.11.22.7", "--key", "ci.key", "--out"])
        .arg(&bundle));
    let json: serde_json::Value =
        serde_json::from_str(&stdout(abbuild().arg("inspect").arg("--json").arg(&bundle))).unwrap();
    assert_eq!(json["kind"], "BundleInfo");
    let m = &json["manifest"];
    assert_eq!(m["compatible"], "board-x");
    assert_eq!(m["version"], "2026.11.22.7");
    assert_eq!(m["created"], 1234567890);
    assert_eq!(m["kernel_params"], "console=ttyS0 quiet");
    let sizes: Vec<u64> = m["payloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [700_000, 90_000, 40_000]);
    assert_eq!(json["signatureKeyIds"].as_array().unwrap().len(), 1);
    assert_eq!(
        json["totalSize"].as_u64().unwrap(),
        fs::metadata(&bundle).unwrap().len()
    );

    let text = stdout(abbuild().arg("inspect").arg(&bundle));
    assert!(text.contains("version:     2026.11.22.7"), "{text}");
    assert!(text.contains("payload rootfs"), "{text}");

    // Bad input to the writer: clear errors, no bundle left behind.
    let err = fails(
        abbuild()
            .current_dir(d)
            .args([
                "bundle", "--rootfs", "root.img", "--kernel", "vmlinuz", "--initrd", "initrd",
            ])
            .args([
                "--compatible",
                "board-x",
                "--version",
                "7-rc1",
                "--key",
                "ci.key",
                "--out",
                "bad.abu",
            ]),
    );
    assert!(err.contains("invalid version"), "{err}");
    fs::write(d.join("empty"), b"").unwrap();
    let err = fails(
        abbuild()
            .current_dir(d)
            .args([
                "bundle", "--rootfs", "empty", "--kernel", "vmlinuz", "--initrd", "initrd",
            ])
            .args([
                "--compatible",
                "board-x",
                "--version",
                "7",
                "--key",
                "ci.key",
                "--out",
                "bad.abu",
            ]),
    );
    assert!(err.contains("is empty"), "{err}");
    assert!(!d.join("bad.abu").exists() && !d.join("bad.abu.tmp").exists());
}
