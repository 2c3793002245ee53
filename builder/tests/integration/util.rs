//! Helpers: a fake toplevel directory, the test-only key, running abbuild and other tools.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// A visibly test-only signing key (seed 0x42 x 32); never trust it anywhere.
pub const TEST_ONLY_KEY: &str =
    "abupdate-secret-key-v1 4242424242424242424242424242424242424242424242424242424242424242\n";

/// The epoch the tests build with.
pub const EPOCH: &str = "1700000000";

pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Writes the test-only key into `dir` and returns its path.
pub fn test_key(dir: &Path) -> PathBuf {
    let p = dir.join("test-only.key");
    fs::write(&p, TEST_ONLY_KEY).unwrap();
    p
}

/// Deterministic bytes that do not compress (xorshift), so sizes are predictable.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A toplevel directory following docs/layout.md: kernel, initrd, init (a relative symlink),
/// kernel-params, etc/ with a hard link, a symlink, an executable and a setuid file.
pub fn fake_system(dir: &Path) -> PathBuf {
    let s = dir.join("system");
    fs::create_dir_all(s.join("etc")).unwrap();
    fs::create_dir_all(s.join("bin")).unwrap();
    fs::write(s.join("kernel"), noise(300_000, 1)).unwrap();
    fs::write(s.join("initrd"), noise(200_000, 2)).unwrap();
    fs::write(s.join("kernel-params"), "quiet  loglevel=3\n").unwrap();
    fs::write(s.join("bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    set_mode(&s.join("bin/tool"), 0o755);
    fs::write(s.join("bin/suid"), b"x").unwrap();
    set_mode(&s.join("bin/suid"), 0o4755);
    std::os::unix::fs::symlink("bin/tool", s.join("init")).unwrap();
    fs::write(s.join("etc/motd"), b"hello\n").unwrap();
    fs::hard_link(s.join("etc/motd"), s.join("etc/motd.link")).unwrap();
    std::os::unix::fs::symlink("motd", s.join("etc/motd.sym")).unwrap();
    s
}

pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// `abbuild build` with the given image, system and output directory.
pub fn build_cmd(image: &Path, system: &Path, key: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_abbuild"));
    c.arg("build")
        .arg("--image")
        .arg(image)
        .arg("--system")
        .arg(system)
        .args(["--version", "2026.11.22.1", "--key"])
        .arg(key)
        .arg("--out-dir")
        .arg(out)
        .env("SOURCE_DATE_EPOCH", EPOCH);
    c
}

/// Runs `c`, panicking with its output unless it succeeds.
pub fn ok(c: &mut Command) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `c`, expecting failure; returns stderr.
pub fn fails(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{c:?} succeeded:\n{err}");
    err
}

pub fn stdout(c: &mut Command) -> String {
    String::from_utf8(ok(c).stdout).unwrap()
}

/// A build of the fake system with the shipped qemu-test image; returns (bundle, image).
pub fn build_fake(dir: &Path) -> (PathBuf, PathBuf) {
    let sys = fake_system(dir);
    let key = test_key(dir);
    let out = dir.join("out");
    ok(&mut build_cmd(
        &repo_file("images/qemu-test.toml"),
        &sys,
        &key,
        &out,
    ));
    (
        out.join("qemu-test-2026.11.22.1.abu"),
        out.join("qemu-test-2026.11.22.1.img"),
    )
}

/// The partitions of a disk image, as `sfdisk --json` reports them.
pub fn sfdisk(image: &Path) -> Vec<Value> {
    let v: Value =
        serde_json::from_str(&stdout(Command::new("sfdisk").arg("--json").arg(image))).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone()
}

/// (offset, size) in bytes of the partition labelled `label`.
pub fn partition(image: &Path, label: &str) -> (u64, u64) {
    let p = sfdisk(image)
        .into_iter()
        .find(|p| p["name"] == label)
        .unwrap_or_else(|| panic!("no {label}"));
    (
        p["start"].as_u64().unwrap() * 512,
        p["size"].as_u64().unwrap() * 512,
    )
}

/// Bytes `offset..offset+len` of a file.
pub fn read_range(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// The bundle's manifest, as `abbuild inspect --json` prints it.
pub fn inspect(bundle: &Path) -> Value {
    let v: Value = serde_json::from_str(&stdout(
        Command::new(env!("CARGO_BIN_EXE_abbuild"))
            .arg("inspect")
            .arg("--json")
            .arg(bundle),
    ))
    .unwrap();
    v["manifest"].clone()
}

/// The payload `kind` of a manifest: (offset, size, sha256).
pub fn payload(manifest: &Value, kind: &str) -> (u64, u64, String) {
    let p = manifest["payloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == kind)
        .unwrap();
    (
        p["offset"].as_u64().unwrap(),
        p["size"].as_u64().unwrap(),
        p["sha256"].as_str().unwrap().to_string(),
    )
}

/// Copies the ESP out of `image` into `dir/esp.img` and checks it with `fsck.fat -n`.
pub fn fsck_esp(image: &Path, dir: &Path) {
    let (off, len) = partition(image, "esp");
    let esp = dir.join("esp.img");
    fs::write(&esp, read_range(image, off, len)).unwrap();
    let out = ok(Command::new("fsck.fat").arg("-n").arg(&esp));
    let text = String::from_utf8_lossy(&out.stdout);
    for bad in [
        "damaged",
        "Dirty",
        "bad",
        "Bad",
        "Deleting",
        "Free cluster summary wrong",
    ] {
        assert!(!text.contains(bad), "fsck.fat -n reports problems:\n{text}");
    }
}

/// `mtype` of a file on the ESP of `image`.
pub fn mtype(image: &Path, path: &str) -> String {
    let (off, _) = partition(image, "esp");
    stdout(
        Command::new("mtype")
            .arg("-i")
            .arg(format!("{}@@{off}", image.display()))
            .arg(format!("::{path}")),
    )
}

/// `unsquashfs -lln` of slot A of `image`.
pub fn list_slot_a(image: &Path) -> String {
    let (off, _) = partition(image, "root-a");
    stdout(
        Command::new("unsquashfs")
            .arg("-o")
            .arg(off.to_string())
            .arg("-lln")
            .arg(image),
    )
}
