//! A downgrade (`apply --allow-downgrade`) on both loaders, by the same commands: the newer
//! slot stays `good` (the fallback), the downgraded slot's own boots are no fallback,
//! `rollback` goes back to the newer slot, and a downgraded slot that never comes up is
//! reported as a fallback. Both loaders must end every step in the same slot states.

use std::path::Path;

use abupdate::boot::entries::EntryName;
use serde_json::Value;

use crate::apply::rename_like_systemd_boot;
use crate::grub::grub_boots;
use crate::util::*;

#[derive(Clone, Copy, Debug)]
enum Loader {
    SystemdBoot,
    Grub,
}

fn env_for(loader: Loader) -> Env {
    match loader {
        Loader::SystemdBoot => Env::new(),
        Loader::Grub => Env::new_grub(),
    }
}

/// Both slots' `state` (with tries left, if any) and the next boot slot, as `status` says.
fn shape(env: &Env, disk: &Path) -> String {
    let s = status(env, disk, None);
    let slot = |i: usize| {
        let v = &s["slots"][i];
        match &v["triesLeft"] {
            Value::Null => v["state"].as_str().unwrap().to_string(),
            n => format!("{} {n}", v["state"].as_str().unwrap()),
        }
    };
    format!("a {}, b {}, next {}", slot(0), slot(1), s["nextBootSlot"])
}

/// One boot as the loader does it, which must boot `slot`: systemd-boot renames the slot's
/// entry if it has a counter with tries left (mtools); GRUB saves one try fewer into the env
/// copy it read.
fn boot(loader: Loader, env: &Env, disk: &Path, slot: &str) {
    match loader {
        Loader::Grub => assert_eq!(grub_boots(disk).slot.to_string(), slot),
        Loader::SystemdBoot => {
            assert_eq!(status(env, disk, None)["nextBootSlot"], slot);
            let entries: Vec<String> = mdir(disk, "loader/entries")
                .into_iter()
                .filter(|e| e.starts_with(&format!("slot-{slot}")))
                .collect();
            assert_eq!(entries.len(), 1, "{entries:?}");
            let name = EntryName::parse(&entries[0]).unwrap();
            if let Some(c) = name.counter.filter(|c| c.left > 0) {
                let to = format!("slot-{slot}+{}-{}.conf", c.left - 1, c.done + 1);
                rename_like_systemd_boot(disk, &entries[0], &to);
            }
        }
    }
}

/// `boot-check` of a boot of `slot`, then what `status` says about it.
fn boot_check(env: &Env, disk: &Path, slot: &str) -> Value {
    ok(&env.abupdate_booted(disk, Some(slot), &["boot-check"]));
    let s = status(env, disk, Some(slot));
    assert_eq!(s["lastBoot"]["bootedSlot"], slot);
    s
}

fn downgrade_on(loader: Loader) {
    let env = env_for(loader);
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    // v2 into b, booted and marked good.
    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    boot(loader, &env, &disk, "b");
    ok(&env.abupdate_booted(&disk, Some("b"), &["mark-good"]));
    assert_eq!(shape(&env, &disk), r#"a good, b good, next "b""#);

    // The downgrade: v1 into a boots next; b (v2) stays good, the fallback.
    ok(&env.abupdate_booted(
        &disk,
        Some("b"),
        &["apply", "--allow-downgrade", v1.bundle.to_str().unwrap()],
    ));
    assert_eq!(shape(&env, &disk), r#"a trying 3, b good, next "a""#);
    let downgraded = env.path("downgraded.img");
    copy_image(&disk, &downgraded);

    // The first boot of a is the boot that was asked for, not a fallback.
    boot(loader, &env, &disk, "a");
    let s = boot_check(&env, &disk, "a");
    assert_eq!(s["lastBootWasFallback"], false, "{s}");
    assert_eq!(s["lastBoot"]["failedSlot"], Value::Null);
    assert_eq!(shape(&env, &disk), r#"a trying 2, b good, next "a""#);

    // rollback goes back to b, the good v2.
    let out = ok(&env.abupdate_booted(&disk, Some("a"), &["rollback"]));
    assert!(
        out.contains("slot b (version 2026.11.2) boots next"),
        "{out}"
    );
    assert_eq!(shape(&env, &disk), r#"a bad 0, b good, next "b""#);
    boot(loader, &env, &disk, "b");
    let s = boot_check(&env, &disk, "b");
    assert_eq!(s["lastBootWasFallback"], false, "{s}");
    fsck_esp(&disk).unwrap();

    // mark-good of the downgraded slot: both good, a first; rollback still goes to b.
    copy_image(&downgraded, &disk);
    boot(loader, &env, &disk, "a");
    ok(&env.abupdate_booted(&disk, Some("a"), &["mark-good"]));
    assert_eq!(shape(&env, &disk), r#"a good, b good, next "a""#);
    ok(&env.abupdate_booted(&disk, Some("a"), &["rollback"]));
    assert_eq!(shape(&env, &disk), r#"a bad 0, b good, next "b""#);
    fsck_esp(&disk).unwrap();

    // The downgraded slot never comes up: after its tries, b boots, and that is a fallback.
    copy_image(&downgraded, &disk);
    for _ in 0..3 {
        boot(loader, &env, &disk, "a");
    }
    assert_eq!(shape(&env, &disk), r#"a bad 0, b good, next "b""#);
    boot(loader, &env, &disk, "b");
    let s = boot_check(&env, &disk, "b");
    assert_eq!(s["lastBootWasFallback"], true, "{s}");
    assert_eq!(s["lastBoot"]["failedSlot"], "a");
    assert_eq!(s["lastBoot"]["failedVersion"], "2026.11.1");
    // b is running and good; a newer bundle goes into a as usual.
    let v3 = env.build("2026.11.3", 3, 64 * 1024);
    ok(&env.abupdate_booted(&disk, Some("b"), &["apply", v3.bundle.to_str().unwrap()]));
    assert_eq!(shape(&env, &disk), r#"a trying 3, b good, next "a""#);
    fsck_esp(&disk).unwrap();
}

#[test]
fn downgrade_keeps_the_good_fallback_systemd_boot() {
    downgrade_on(Loader::SystemdBoot);
}

#[test]
fn downgrade_keeps_the_good_fallback_grub() {
    downgrade_on(Loader::Grub);
}

/// A downgrade's mark left on the running slot must not decide a later reinstall's fallback:
/// a (v3, good) is kept as the fallback of a downgrade of b, b never comes up, a runs again
/// (still carrying the mark on systemd-boot), and v3 is reinstalled into b. Once b's tries run
/// out, a boots: with both entries at 0 tries and equal versions, systemd-boot would otherwise
/// pick `slot-b` by its name.
fn reinstall_after_a_failed_downgrade_on(loader: Loader) {
    let env = env_for(loader);
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let v3 = env.build("2026.11.3", 3, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    for (bundle, slot) in [(&v2, "b"), (&v3, "a")] {
        let running = if slot == "a" { "b" } else { "a" };
        ok(&env.abupdate_booted(
            &disk,
            Some(running),
            &["apply", bundle.bundle.to_str().unwrap()],
        ));
        boot(loader, &env, &disk, slot);
        ok(&env.abupdate_booted(&disk, Some(slot), &["mark-good"]));
    }
    // Downgrade b to v1; it never comes up; a (v3) boots as the fallback.
    ok(&env.abupdate_booted(
        &disk,
        Some("a"),
        &["apply", "--allow-downgrade", v1.bundle.to_str().unwrap()],
    ));
    for _ in 0..3 {
        boot(loader, &env, &disk, "b");
    }
    boot(loader, &env, &disk, "a");
    boot_check(&env, &disk, "a");
    assert_eq!(shape(&env, &disk), r#"a good, b bad 0, next "a""#);
    // Reinstall v3 into b: it is tried first, and after its tries a boots again.
    ok(&env.abupdate_booted(
        &disk,
        Some("a"),
        &["apply", "--allow-downgrade", v3.bundle.to_str().unwrap()],
    ));
    assert_eq!(shape(&env, &disk), r#"a good, b trying 3, next "b""#);
    for _ in 0..3 {
        boot(loader, &env, &disk, "b");
    }
    assert_eq!(shape(&env, &disk), r#"a good, b bad 0, next "a""#);
    fsck_esp(&disk).unwrap();
}

#[test]
fn reinstall_after_a_failed_downgrade_falls_back_systemd_boot() {
    reinstall_after_a_failed_downgrade_on(Loader::SystemdBoot);
}

#[test]
fn reinstall_after_a_failed_downgrade_falls_back_grub() {
    reinstall_after_a_failed_downgrade_on(Loader::Grub);
}

/// An update taken back before it booted (`mark-bad b` while a runs) is no failed boot: the
/// next boot of a is not reported as a fallback, on either loader (the channel loop would
/// otherwise skip that version for good as `failed-before`).
fn marked_bad_is_no_fallback_on(loader: Loader) {
    let env = env_for(loader);
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    ok(&env.abupdate_booted(&disk, Some("a"), &["apply", v2.bundle.to_str().unwrap()]));
    ok(&env.abupdate_booted(&disk, Some("a"), &["mark-bad", "b"]));
    assert_eq!(shape(&env, &disk), r#"a good, b bad 0, next "a""#);
    boot(loader, &env, &disk, "a");
    let s = boot_check(&env, &disk, "a");
    assert_eq!(s["lastBootWasFallback"], false, "{s}");
    assert_eq!(s["lastBoot"]["failedSlot"], Value::Null, "{s}");
    // A real failure still is one: v2 again, and its tries run out.
    ok(&env.abupdate_booted(&disk, Some("a"), &["apply", v2.bundle.to_str().unwrap()]));
    for _ in 0..3 {
        boot(loader, &env, &disk, "b");
    }
    boot(loader, &env, &disk, "a");
    let s = boot_check(&env, &disk, "a");
    assert_eq!(s["lastBootWasFallback"], true, "{s}");
    assert_eq!(s["lastBoot"]["failedSlot"], "b", "{s}");
}

#[test]
fn marked_bad_is_no_fallback_systemd_boot() {
    marked_bad_is_no_fallback_on(Loader::SystemdBoot);
}

#[test]
fn marked_bad_is_no_fallback_grub() {
    marked_bad_is_no_fallback_on(Loader::Grub);
}
