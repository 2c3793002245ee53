//! `boot-check` grows the data partition when the disk is larger than the image, checked with
//! sgdisk and sfdisk; a power cut at any of its writes leaves a table that readers accept,
//! and the next boot-check finishes the job.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::Command;

use crate::util::*;

const MIB: u64 = 1 << 20;

/// `sgdisk -v`: the GPT's checks (CRCs, backup at the disk's end, overlaps, alignment).
fn sgdisk_verify(disk: &Path) -> String {
    let out = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A v1 image enlarged by `extra` bytes, as a provider's larger disk would be.
fn enlarged(env: &Env, name: &str, extra: u64) -> std::path::PathBuf {
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let disk = env.path(name);
    copy_image(&v1.image, &disk);
    let f = OpenOptions::new().write(true).open(&disk).unwrap();
    f.set_len(f.metadata().unwrap().len() + extra).unwrap();
    disk
}

#[test]
fn boot_check_grows_the_data_partition_to_fill_the_disk() {
    let env = Env::new();
    let disk = enlarged(&env, "disk.img", 100 * MIB + 12345 * 512);
    let size = std::fs::metadata(&disk).unwrap().len();
    let before = partitions(&disk);
    assert!(
        !sgdisk_verify(&disk).contains("No problems found"),
        "an enlarged disk's backup GPT is not at its end: sgdisk should say so"
    );

    let out = env.abupdate_booted(&disk, Some("a"), &["boot-check"]);
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    let after = partitions(&disk);
    // Everything but data's length is as it was; data ends at the last 1 MiB boundary before
    // the backup table (33 sectors at the end).
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((&b.0, b.1), (&a.0, a.1));
        if a.0 != "data" {
            assert_eq!(b.2, a.2, "{} changed", a.0);
        }
    }
    let (start, len) = partition(&disk, "data");
    assert_eq!(start + len, (size - 33 * 512) / MIB * MIB);
    let old = before.iter().find(|p| p.0 == "data").unwrap().2;
    assert!(
        log.contains(&format!(
            "grew the data partition from {} to {} MiB",
            old / MIB,
            len / MIB
        )),
        "{log}"
    );
    let verify = sgdisk_verify(&disk);
    assert!(verify.contains("No problems found"), "{verify}");

    // The next boot has nothing to do and changes nothing.
    let sum = sha256_file(&disk);
    let out = env.abupdate_booted(&disk, Some("a"), &["boot-check"]);
    ok(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("grew"));
    assert_eq!(sha256_file(&disk), sum);
}

#[test]
fn grow_data_false_leaves_the_table_alone() {
    let env = Env::new();
    let disk = enlarged(&env, "disk.img", 64 * MIB);
    let cfg = env.path("no-grow.toml");
    let base = std::fs::read_to_string(env.path("abupdate.toml")).unwrap();
    std::fs::write(&cfg, format!("{base}grow-data = false\n")).unwrap();
    // (boot-check still gives the disk its own GUIDs: identity.rs; nothing moves.)
    let before = partitions(&disk);
    let mut c = env.cmd(&disk, Some("a"), &["boot-check"]);
    c.arg("--config").arg(&cfg);
    ok(&c.output().unwrap());
    assert_eq!(partitions(&disk), before);
    assert!(!sgdisk_verify(&disk).contains("No problems found"));
}

/// A power cut after each write and sync of the growth: the table sfdisk reads afterwards
/// has the old or the new data partition and every other partition unchanged; the next
/// boot-check completes the growth and sgdisk finds no problem.
#[cfg(feature = "fault-injection")]
#[test]
fn crash_at_every_point_of_the_growth() {
    let env = Env::new();
    let base = enlarged(&env, "base.img", 100 * MIB);
    let before = partitions(&base);
    let disk = env.path("disk.img");
    let run = |n: u64| {
        let mut c = env.cmd(&disk, Some("a"), &["boot-check"]);
        c.env("ABUPDATE_FAULT_AFTER", n.to_string());
        c.output().unwrap()
    };
    copy_image(&base, &disk);
    let out = run(0);
    ok(&out);
    let total: u64 = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("abupdate-fault-points="))
        .expect("point count")
        .parse()
        .unwrap();
    let grown = partition(&disk, "data").1;
    assert!(total >= 6, "{total} points");
    for n in 1..=total {
        copy_image(&base, &disk);
        let out = run(n);
        assert_eq!(out.status.code(), Some(86), "point {n}: {out:?}");
        let now = partitions(&disk);
        for (b, a) in before.iter().zip(&now) {
            assert_eq!((&b.0, b.1), (&a.0, a.1), "point {n}");
            let ok_len = if a.0 == "data" {
                a.2 == b.2 || a.2 == grown
            } else {
                a.2 == b.2
            };
            assert!(ok_len, "point {n}: {} is {} bytes", a.0, a.2);
        }
        ok(&run(u64::MAX));
        assert_eq!(partition(&disk, "data").1, grown, "point {n}: not finished");
        let verify = sgdisk_verify(&disk);
        assert!(verify.contains("No problems found"), "point {n}: {verify}");
    }
    eprintln!("crash: growth: {total} injection points, 0 failures");
}
