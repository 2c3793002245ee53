//! The rule every apply keeps, whichever slot it targets and whatever state the disk is in:
//! the disk never loses its last bootable entry, nor its last good one (issue: hostile review,
//! defects 2-4 and 10). Each case is refused before anything changes, or installs cleanly.

use abupdate::codes;

use crate::util::*;

/// `--slot` naming the slot that boots next on a disk that is not the booted one: the only
/// good slot would lose its entry, leaving a disk with nothing good (or nothing at all, if the
/// install then failed) to boot.
#[test]
fn slot_that_boots_next_on_another_disk_is_not_replaced_without_a_fallback() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    let v2b = v2.bundle.to_str().unwrap();
    let msg = fails(
        &env.abupdate(&disk, &["apply", "--slot", "a", v2b]),
        codes::NO_FALLBACK,
    );
    assert!(
        msg.contains("only good slot") && msg.contains("nothing was changed"),
        "{msg}"
    );
    assert_eq!(sha256_file(&disk), before);

    // With a good slot b to fall back to, replacing a is fine, and the version check still
    // applies (against b, the slot that stays).
    ok(&env.abupdate(&disk, &["apply", v2b]));
    ok(&env.abupdate_booted(&disk, Some("b"), &["mark-good"]));
    let before = sha256_file(&disk);
    let msg = fails(
        &env.abupdate(
            &disk,
            &["apply", "--slot", "a", v1.bundle.to_str().unwrap()],
        ),
        codes::DOWNGRADE_REFUSED,
    );
    assert!(msg.contains("in slot b"), "{msg}");
    assert_eq!(sha256_file(&disk), before);
}

/// Booted from slot a, whose entry is gone: an install into b would leave nothing to fall
/// back to if b does not come up.
#[test]
fn running_slot_without_an_entry_is_refused() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    mput(&disk, "loader/entries/slot-a.conf", None);
    let before = sha256_file(&disk);
    let msg = fails(
        &env.abupdate_booted(&disk, Some("a"), &["apply", v2.bundle.to_str().unwrap()]),
        codes::NO_FALLBACK,
    );
    assert!(msg.contains("the running slot"), "{msg}");
    assert_eq!(sha256_file(&disk), before);
}

/// An installed version an older tool wrote and this one cannot parse: unknown, so an apply
/// needs --allow-downgrade (without the check, the good slot could end up demoted).
#[test]
fn installed_version_that_does_not_parse_is_unknown() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let entry = String::from_utf8(mtype(&disk, "loader/entries/slot-a.conf")).unwrap();
    let entry = entry.replace("version 2026.11.1", "version 9999-rc1");
    mput(&disk, "loader/entries/slot-a.conf", Some(entry.as_bytes()));
    let before = sha256_file(&disk);
    let v2b = v2.bundle.to_str().unwrap();
    let msg = fails(
        &env.abupdate_booted(&disk, Some("a"), &["apply", v2b]),
        codes::DOWNGRADE_REFUSED,
    );
    assert!(
        msg.contains("9999-rc1") && msg.contains("--allow-downgrade"),
        "{msg}"
    );
    assert_eq!(sha256_file(&disk), before);
    // Told to, it installs; slot a stays as the fallback.
    ok(&env.abupdate_booted(&disk, Some("a"), &["apply", "--allow-downgrade", v2b]));
    let s = ok(&env.abupdate_booted(&disk, Some("a"), &["status", "--json"]));
    let s: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(s["nextBootSlot"], "b", "{s}");
}

/// Every chunk size the format allows installs (4 MiB chunks used to panic after the
/// target's entry was removed).
#[test]
fn every_allowed_chunk_size_installs() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    for (i, cs) in [4096u32, 1 << 20, 2 << 20, 4 << 20].into_iter().enumerate() {
        let v = env.build(&format!("2026.11.{}", i + 2), i as u64 + 2, cs);
        let disk = env.path(&format!("disk-{cs}.img"));
        copy_image(&v1.image, &disk);
        ok(&env.abupdate(&disk, &["apply", v.bundle.to_str().unwrap()]));
        assert_eq!(
            mdir(&disk, "loader/entries"),
            ["slot-a.conf", "slot-b+3.conf"],
            "chunk size {cs}"
        );
        fsck_esp(&disk).unwrap();
    }
}
