//! `mark-corrupt`: what the initrd runs when a slot's dm-verity check fails. The slot is
//! recorded as damaged (status shows it) and marked bad when the other slot can take over,
//! also when it was marked good; when the other cannot (both damaged), it is only recorded,
//! so the machine keeps booting the damaged slot instead of rebooting forever.

use serde_json::Value;

use crate::util::*;
use abupdate::codes;

/// v1 in a, v2 in b marked good, running b: the state issue 22's check (1) starts from.
fn both_good(env: &Env) -> std::path::PathBuf {
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    ok(&env.abupdate_booted(&disk, Some("b"), &["mark-good"]));
    disk
}

fn check_corrupt_good_slot(env: &Env) {
    let disk = both_good(env);
    assert_eq!(status(env, &disk, None)["nextBootSlot"], "b");
    let out = ok(&env.abupdate_booted(
        &disk,
        Some("b"),
        &["mark-corrupt", "b", "--detail", "data block 7 is corrupted"],
    ));
    assert!(out.contains("slot a boots next"), "{out}");
    let s = status(env, &disk, Some("a"));
    assert_eq!(s["nextBootSlot"], "a", "{s}");
    let b = &s["slots"][1];
    assert_eq!(b["state"], "bad", "{s}");
    assert_eq!(b["corrupt"]["detail"], "data block 7 is corrupted", "{s}");
    assert_eq!(b["corrupt"]["version"], "2026.11.2", "{s}");
    assert_eq!(b["corrupt"]["markedBad"], true, "{s}");
    assert!(
        b["corrupt"]["time"].as_u64().unwrap() > 1_700_000_000,
        "{s}"
    );
    assert!(s["slots"][0]["corrupt"].is_null(), "{s}");
    let human = ok(&env.abupdate_booted(&disk, Some("a"), &["status"]));
    assert!(
        human.contains("slot b was found CORRUPT (time ")
            && human.contains("version 2026.11.2): data block 7 is corrupted; marked bad"),
        "{human}"
    );

    // Now a is found damaged too: b is bad, nothing can take over. Recorded, the boot loader
    // unchanged (a keeps booting: no reboot loop), exit 35.
    let states = |s: &Value| {
        [
            s["slots"][0]["state"].clone(),
            s["slots"][1]["state"].clone(),
        ]
    };
    let before = states(&status(env, &disk, Some("a")));
    let msg = fails(
        &env.abupdate_booted(&disk, Some("a"), &["mark-corrupt", "a"]),
        codes::NO_FALLBACK,
    );
    assert!(
        msg.contains("slot b cannot take over (it is bad and was found damaged too)"),
        "{msg}"
    );
    let s = status(env, &disk, Some("a"));
    assert_eq!(s["nextBootSlot"], "a", "{s}");
    assert_eq!(s["slots"][0]["state"], "good", "{s}");
    assert_eq!(s["slots"][0]["corrupt"]["markedBad"], false, "{s}");
    assert_eq!(states(&s), before);
    let rec: Value = serde_json::from_slice(&mtype(&disk, "a/corrupt.json")).unwrap();
    assert_eq!(rec["kind"], "CorruptSlot");
    fsck_esp(&disk).unwrap();

    // A new image in b retires b's record.
    let v3 = env.build("2026.11.3", 3, 64 * 1024);
    ok(&env.abupdate_booted(&disk, Some("a"), &["apply", v3.bundle.to_str().unwrap()]));
    let s = status(env, &disk, Some("a"));
    assert!(s["slots"][1]["corrupt"].is_null(), "{s}");
    assert!(!s["slots"][0]["corrupt"].is_null(), "{s}");
}

#[test]
fn corrupt_good_slot_falls_back_systemd_boot() {
    let env = Env::new();
    check_corrupt_good_slot(&env);
}

#[test]
fn corrupt_good_slot_falls_back_grub() {
    let env = Env::new_grub();
    check_corrupt_good_slot(&env);
}

/// A slot still being tried that is found damaged: marked bad at once (its remaining tries
/// are not spent), a boots next.
#[test]
fn corrupt_trying_slot_falls_back() {
    for env in [Env::new(), Env::new_grub()] {
        let v1 = env.build("2026.11.1", 1, 64 * 1024);
        let v2 = env.build("2026.11.2", 2, 64 * 1024);
        let disk = env.path("disk.img");
        copy_image(&v1.image, &disk);
        ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
        assert_eq!(status(&env, &disk, None)["slots"][1]["state"], "trying");
        ok(&env.abupdate_booted(&disk, Some("b"), &["mark-corrupt", "b"]));
        let s = status(&env, &disk, None);
        assert_eq!(s["nextBootSlot"], "a", "{s}");
        assert_eq!(s["slots"][1]["state"], "bad", "{s}");
        assert_eq!(
            s["slots"][1]["corrupt"]["detail"], "the dm-verity check failed",
            "{s}"
        );
    }
}

/// The same image written again into a slot found damaged (the repair) retires its record:
/// the record is about what the slot held, and a rewritten, read-back and verity-checked slot
/// is no longer that. Otherwise status would go on calling it damaged, and a later
/// mark-corrupt of the other slot would not let it take over.
#[test]
fn the_same_image_again_retires_the_record() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    ok(&env.abupdate_booted(&disk, Some("b"), &["mark-corrupt", "b"]));
    assert!(!status(&env, &disk, Some("a"))["slots"][1]["corrupt"].is_null());
    ok(&env.abupdate_booted(&disk, Some("a"), &["apply", v2.bundle.to_str().unwrap()]));
    let s = status(&env, &disk, Some("a"));
    assert_eq!(s["slots"][1]["state"], "trying", "{s}");
    assert!(s["slots"][1]["corrupt"].is_null(), "{s}");
    assert!(
        !mdir(&disk, "b").iter().any(|n| n.contains("corrupt")),
        "b/corrupt.json is still on the ESP"
    );
    // b can take over again when a is found damaged.
    let out = ok(&env.abupdate_booted(&disk, Some("a"), &["mark-corrupt", "a"]));
    assert!(out.contains("slot b boots next"), "{out}");
    fsck_esp(&disk).unwrap();
}
