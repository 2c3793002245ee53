//! `abupdate verify` on good and bad bundles: a one-line error and the documented exit code
//! for each kind of bad input (docs/exit-codes.md).

use std::fs;
use std::io::Cursor;
use std::path::Path;
use std::process::Command;

use abbundle::error::exit;
use abbundle::{write_bundle, BundleInput, PayloadInput, PayloadKind, SecretKey};

fn test_key(seed: u8) -> SecretKey {
    SecretKey::from_seed([seed; 32], "test-only")
}

fn bundle_bytes(key: &SecretKey) -> Vec<u8> {
    let filler = |n: usize, s: u8| (0..n).map(|i| (i % 251) as u8 ^ s).collect::<Vec<u8>>();
    let (mut r, mut k, mut i) = (
        Cursor::new(filler(300_000, 1)),
        Cursor::new(filler(50_000, 2)),
        Cursor::new(filler(30_000, 3)),
    );
    let mut payloads = [
        PayloadInput {
            kind: PayloadKind::Rootfs,
            source: &mut r,
        },
        PayloadInput {
            kind: PayloadKind::Kernel,
            source: &mut k,
        },
        PayloadInput {
            kind: PayloadKind::Initrd,
            source: &mut i,
        },
    ];
    let input = BundleInput {
        compatible: "test-board".into(),
        version: "3".parse().unwrap(),
        build_id: "test".into(),
        created: 0,
        kernel_params: String::new(),
        chunk_size: 65536,
        format: abbundle::FORMAT_VERSION,
    };
    let mut out = Vec::new();
    write_bundle(&mut out, &input, &mut payloads, &[key]).unwrap();
    out
}

/// Runs `abupdate verify` on `bytes` with key 1 trusted; returns (exit code, stderr).
fn verify(dir: &Path, bytes: &[u8], extra: &[&str]) -> (i32, String) {
    let keys = dir.join("keys");
    fs::create_dir_all(&keys).unwrap();
    fs::write(keys.join("test.pub"), test_key(1).public().to_line()).unwrap();
    let bundle = dir.join("b.abu");
    fs::write(&bundle, bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_abupdate"))
        .arg("--config")
        .arg(dir.join("no-config.toml"))
        .arg("--keys")
        .arg(&keys)
        .arg("verify")
        .arg(&bundle)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap(), stderr)
}

#[test]
fn exit_codes_for_each_kind_of_bad_bundle() {
    let dir = tempfile::tempdir().unwrap();
    // An explicitly named config that does not exist is an error, so give an empty one.
    fs::write(dir.path().join("no-config.toml"), "").unwrap();
    let good = bundle_bytes(&test_key(1));
    let (code, _) = verify(dir.path(), &good, &["--compatible", "test-board"]);
    assert_eq!(code, exit::OK);

    let flipped = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x10;
        b
    };
    let last = good.len() - 1;
    let cases: Vec<(&str, Vec<u8>, &[&str], i32)> = vec![
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            &[],
            exit::TRUNCATED,
        ),
        ("bad magic", flipped(0), &[], exit::MALFORMED),
        ("header checksum", flipped(17), &[], exit::MALFORMED),
        ("manifest flip", flipped(100), &[], exit::BAD_SIGNATURE),
        ("payload flip", flipped(last), &[], exit::CORRUPT_PAYLOAD),
        (
            "untrusted key",
            bundle_bytes(&test_key(2)),
            &[],
            exit::UNTRUSTED_KEY,
        ),
        (
            "incompatible",
            good.clone(),
            &["--compatible", "other"],
            exit::INCOMPATIBLE,
        ),
        (
            "not a bundle",
            b"hello world".to_vec(),
            &[],
            exit::TRUNCATED,
        ),
    ];
    for (name, bytes, extra, want) in cases {
        let (code, stderr) = verify(dir.path(), &bytes, extra);
        assert_eq!(code, want, "{name}: stderr {stderr}");
        let lines: Vec<_> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(lines.len(), 1, "{name}: want one error line, got {stderr}");
    }
}

#[test]
fn missing_key_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("no-config.toml"), "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_abupdate"))
        .arg("--config")
        .arg(dir.path().join("no-config.toml"))
        .arg("--keys")
        .arg(dir.path().join("nope"))
        .arg("verify")
        .arg(dir.path().join("x.abu"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit::FAILURE));
    assert!(String::from_utf8_lossy(&out.stderr).contains("trusted keys"));
}
