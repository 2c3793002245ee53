//! `boot-check` gives a disk its own GUIDs at the first boot (docs/layout.md, "Per-machine
//! identity"): the ESP's, the data partition's and the disk's, in place of abbuild's (derived
//! from the image name, so equal on every copy); checked with sfdisk and sgdisk. A power cut at
//! any of its writes leaves a table that readers accept, with every partition where it was,
//! and the next boot-check finishes the job.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::util::*;

/// (disk GUID, [(label, start, size, partition GUID)]), lower case, from `sfdisk --json`.
fn guids(img: &Path) -> (String, Vec<(String, u64, u64, String)>) {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &v["partitiontable"];
    let parts = t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["uuid"].as_str().unwrap().to_lowercase(),
            )
        })
        .collect();
    (t["id"].as_str().unwrap().to_lowercase(), parts)
}

fn guid_of<'a>(g: &'a (String, Vec<(String, u64, u64, String)>), label: &str) -> &'a str {
    &g.1.iter().find(|p| p.0 == label).unwrap().3
}

/// The UUID version: the first digit of the third group.
fn version(uuid: &str) -> char {
    uuid.as_bytes()[14] as char
}

fn sgdisk_verify(disk: &Path) -> String {
    let out = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn first_boot_check_gives_each_copy_its_own_guids() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let (one, two) = (env.path("one.img"), env.path("two.img"));
    copy_image(&v1.image, &one);
    copy_image(&v1.image, &two);
    let image = guids(&v1.image);
    assert_eq!(
        version(guid_of(&image, "esp")),
        '5',
        "abbuild's GUIDs are derived"
    );
    assert_eq!(version(guid_of(&image, "data")), '5');

    let out = env.abupdate_booted(&one, Some("a"), &["boot-check"]);
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    let first = guids(&one);
    assert!(
        log.contains(&format!(
            "gave this disk its own GUIDs (first boot): ESP {}, data {}",
            guid_of(&first, "esp"),
            guid_of(&first, "data")
        )),
        "{log}"
    );
    for label in ["esp", "data"] {
        assert_eq!(version(guid_of(&first, label)), '4', "{label}");
        assert_ne!(guid_of(&first, label), guid_of(&image, label), "{label}");
    }
    assert_ne!(first.0, image.0, "disk GUID");
    // The slots keep theirs; no partition moves, no label changes.
    for (b, a) in image.1.iter().zip(&first.1) {
        assert_eq!((&b.0, b.1, b.2), (&a.0, a.1, a.2));
        if b.0.starts_with("root-") {
            assert_eq!(b.3, a.3, "{}", b.0);
        }
    }
    let verify = sgdisk_verify(&one);
    assert!(verify.contains("No problems found"), "{verify}");

    // Another copy gets other GUIDs.
    ok(&env.abupdate_booted(&two, Some("a"), &["boot-check"]));
    let second = guids(&two);
    assert_ne!(guid_of(&second, "esp"), guid_of(&first, "esp"));
    assert_ne!(guid_of(&second, "data"), guid_of(&first, "data"));

    // Later boots keep them.
    let sum = sha256_file(&one);
    let out = env.abupdate_booted(&one, Some("a"), &["boot-check"]);
    ok(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("own GUIDs"));
    assert_eq!(sha256_file(&one), sum);
}

/// A power cut after each write and sync: sfdisk reads a table with every partition where it
/// was and the ESP's and data's GUIDs either abbuild's or new ones; the next boot-check ends
/// with new ones in both copies (sgdisk finds no problem).
#[cfg(feature = "fault-injection")]
#[test]
fn crash_at_every_point_of_the_personalisation() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let image = guids(&v1.image);
    let disk = env.path("disk.img");
    let run = |n: u64| {
        let mut c = env.cmd(&disk, Some("a"), &["boot-check"]);
        c.env("ABUPDATE_FAULT_AFTER", n.to_string());
        c.output().unwrap()
    };
    copy_image(&v1.image, &disk);
    let out = run(0);
    ok(&out);
    let total: u64 = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("abupdate-fault-points="))
        .expect("point count")
        .parse()
        .unwrap();
    assert!(total >= 6, "{total} points");
    for n in 1..=total {
        copy_image(&v1.image, &disk);
        let out = run(n);
        assert_eq!(out.status.code(), Some(86), "point {n}: {out:?}");
        let now = guids(&disk);
        for (b, a) in image.1.iter().zip(&now.1) {
            assert_eq!((&b.0, b.1, b.2), (&a.0, a.1, a.2), "point {n}");
        }
        ok(&run(u64::MAX));
        let done = guids(&disk);
        for label in ["esp", "data"] {
            assert_eq!(version(guid_of(&done, label)), '4', "point {n}: {label}");
        }
        let verify = sgdisk_verify(&disk);
        assert!(verify.contains("No problems found"), "point {n}: {verify}");
    }
    eprintln!("crash: identity: {total} injection points, 0 failures");
}
