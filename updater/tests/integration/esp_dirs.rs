//! An ESP that lacks a directory abupdate writes into (`b/`: removed here with mtools): apply
//! creates it, and `fsck.fat -n` finds the ESP clean afterwards ("." and ".." first, ".."
//! pointing at the parent, 0 for the root). Without `loader/entries` there is no entry to fall
//! back to, so that apply is refused.

use std::process::Command;

use abbundle::PayloadKind;

use crate::util::*;

/// A v1 disk without `dir` on its ESP, and a v2 bundle.
fn without(env: &Env, dir: &str) -> (std::path::PathBuf, Build) {
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let out = Command::new("mdeltree")
        .args(["-i", &esp_spec(&disk), &format!("::/{dir}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fsck_esp(&disk).unwrap();
    (disk, v2)
}

#[test]
fn apply_creates_a_missing_slot_directory_that_fsck_accepts() {
    let env = Env::new();
    let (disk, v2) = without(&env, "b");
    assert!(!mdir(&disk, "").contains(&"b".to_string()));
    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    assert_eq!(mdir(&disk, "b"), ["info.json", "initrd", "vmlinuz"]);
    assert_eq!(
        sha256_bytes(&mtype(&disk, "b/vmlinuz")),
        payload_sha(&v2.manifest, PayloadKind::Kernel)
    );
    if let Err(e) = fsck_esp(&disk) {
        panic!("fsck.fat -n after creating b/:\n{e}");
    }
}

/// Without `loader/entries` the disk has no boot entry at all, so nothing could be fallen back
/// to: the apply is refused before it creates anything.
#[test]
fn apply_without_an_entries_directory_is_refused() {
    let env = Env::new();
    let (disk, v2) = without(&env, "loader/entries");
    let before = sha256_file(&disk);
    let msg = fails(
        &env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]),
        abupdate::codes::NO_FALLBACK,
    );
    assert!(msg.contains("nothing was changed"), "{msg}");
    assert_eq!(sha256_file(&disk), before);
}
