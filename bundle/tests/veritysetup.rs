//! `abbundle::verity` against a consumer that shares no code with it: Debian's `veritysetup`
//! (cryptsetup-bin, installed by scripts/setup.sh). Same root hash, same bytes, and
//! `veritysetup verify` accepts what we write and refuses it after one flipped byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use abbundle::verity::{self, Verity};

fn veritysetup() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("veritysetup"))
        .find(|p| p.is_file());
    found.expect("veritysetup (Debian: cryptsetup-bin; scripts/setup.sh installs it)")
}

fn run(args: &[&str], files: &[&Path]) -> Output {
    Command::new(veritysetup())
        .args(args)
        .args(files)
        .output()
        .expect("running veritysetup")
}

/// Not a run of one value: every block differs, so a misplaced block changes the hash.
fn image(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect()
}

fn ours(img: &[u8]) -> (Verity, Vec<u8>) {
    let (v, area) = verity::format(
        |at, buf| {
            buf.copy_from_slice(&img[at as usize..at as usize + buf.len()]);
            Ok(())
        },
        img.len() as u64,
    )
    .unwrap();
    let mut slot = img.to_vec();
    slot.resize(v.hash_offset as usize, 0);
    slot.extend_from_slice(&area);
    (v, slot)
}

fn verify(path: &Path, v: &Verity) -> Output {
    let ho = format!("--hash-offset={}", v.hash_offset);
    let root = hex::encode(v.root_hash);
    let out = Command::new(veritysetup())
        .args(["verify", &ho])
        .arg(path)
        .arg(path)
        .arg(&root)
        .output()
        .expect("running veritysetup");
    out
}

#[test]
fn veritysetup_writes_the_same_bytes_and_verifies_ours() {
    let dir = tempfile::tempdir().unwrap();
    // One block (no tree), one level, two levels with partial blocks, three levels.
    for len in [3000usize, 129 * 4096 + 1234, 128 * 128 * 4096 + 4096] {
        let img = image(len);
        let (v, slot) = ours(&img);
        assert_eq!(slot.len() as u64, v.payload_len());

        // veritysetup format on the padded image, in the same file, with our salt and UUID.
        let theirs = dir.path().join(format!("theirs-{len}"));
        let mut padded = img.clone();
        padded.resize(v.hash_offset as usize, 0);
        std::fs::write(&theirs, &padded).unwrap();
        let out = run(
            &[
                "format",
                &format!("--hash-offset={}", v.hash_offset),
                &format!("--data-blocks={}", v.data_blocks),
                &format!("--salt={}", hex::encode(v.salt)),
                &format!("--uuid={}", verity::uuid_string(&v.salt)),
            ],
            &[&theirs, &theirs],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let root = stdout
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .expect("veritysetup prints the root hash")
            .trim();
        assert_eq!(root, hex::encode(v.root_hash), "root hash, {len} bytes");
        let mut written = std::fs::read(&theirs).unwrap();
        // veritysetup writes only the superblock's 512 bytes of its block; the file is as
        // long as the last block it wrote.
        written.resize(slot.len(), 0);
        assert!(written == slot, "the hash area differs, {len} bytes");

        // veritysetup verify: ours accepted, then one byte of image, of tree refused.
        let path = dir.path().join(format!("ours-{len}"));
        std::fs::write(&path, &slot).unwrap();
        let ok = verify(&path, &v);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let tree_start = v.hash_offset as usize + 4096;
        let mut flips = vec![("image", len / 2)];
        if slot.len() > tree_start {
            flips.push(("tree", tree_start + 5));
            flips.push(("bottom of the tree", slot.len() - 4096));
        }
        for (what, at) in flips {
            let mut bad = slot.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let out = verify(&path, &v);
            assert!(
                !out.status.success(),
                "veritysetup verify accepted a flipped byte of the {what} at {at} ({len} bytes)"
            );
            // And our own check finds it too.
            assert!(verity::check(&v, |at, buf| {
                buf.copy_from_slice(&bad[at as usize..at as usize + buf.len()]);
                Ok(())
            })
            .is_err());
        }
    }
}
