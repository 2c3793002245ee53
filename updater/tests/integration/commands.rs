//! status, boot-check and the fallback, mark-good, mark-bad, rollback and downgrade.

use crate::apply::rename_like_systemd_boot;
use crate::util::*;
use abupdate::codes;

#[test]
fn fallback_after_three_failed_boots_is_reported() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    // Three boots of b that never reach mark-good: systemd-boot counts them down.
    rename_like_systemd_boot(&disk, "slot-b+3.conf", "slot-b+2-1.conf");
    assert_eq!(status(&env, &disk, None)["nextBootSlot"], "b");
    rename_like_systemd_boot(&disk, "slot-b+2-1.conf", "slot-b+1-2.conf");
    rename_like_systemd_boot(&disk, "slot-b+1-2.conf", "slot-b+0-3.conf");
    let s = status(&env, &disk, None);
    assert_eq!(s["nextBootSlot"], "a");
    assert_eq!(s["slots"][1]["state"], "bad");
    // The fallback boot of a.
    ok(&env.abupdate_booted(&disk, Some("a"), &["boot-check"]));
    let s = status(&env, &disk, Some("a"));
    assert_eq!(s["lastBootWasFallback"], true);
    assert_eq!(s["lastBoot"]["failedSlot"], "b");
    assert_eq!(s["lastBoot"]["failedVersion"], "2026.11.2");
    let human = ok(&env.abupdate_booted(&disk, Some("a"), &["status"]));
    let id = |b: &Build| match b.manifest.build_id.as_str() {
        "" => "-".to_string(),
        id => id.to_string(),
    };
    assert_eq!(
        human,
        format!(
            "disk {}: running slot a, next boot slot a\n\
             boot loader: systemd-boot\n\
             slot  state             version             build id\n\
             a*>   good              2026.11.1           {}\n\
             b     bad               2026.11.2           {}\n\
             (* running, > boots next)\n\
             last boot: slot a version 2026.11.1, a FALLBACK: slot b (version 2026.11.2) did not come up\n",
            disk.display(),
            id(&v1),
            id(&v2)
        )
    );
    // mark-good of a needs nothing; rollback to b is refused (b is bad).
    assert!(ok(&env.abupdate_booted(&disk, Some("a"), &["mark-good"])).contains("already"));
    let msg = fails(
        &env.abupdate_booted(&disk, Some("a"), &["rollback"]),
        codes::NO_FALLBACK,
    );
    assert!(msg.contains("slot b is bad"), "{msg}");
    // A fixed bundle goes into b again.
    let v3 = env.build("2026.11.3", 3, 64 * 1024);
    ok(&env.abupdate_booted(&disk, Some("a"), &["apply", v3.bundle.to_str().unwrap()]));
    assert_eq!(
        mdir(&disk, "loader/entries"),
        ["slot-a.conf", "slot-b+3.conf"]
    );
    fsck_esp(&disk).unwrap();
}

#[test]
fn rollback_mark_bad_and_downgrade() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    let installed = env.path("installed.img");
    copy_image(&disk, &installed);

    // Rollback before rebooting: a stays, b is marked bad.
    let out = ok(&env.abupdate_booted(&disk, Some("a"), &["rollback"]));
    assert!(
        out.contains("slot a (version 2026.11.1) boots next"),
        "{out}"
    );
    assert_eq!(
        mdir(&disk, "loader/entries"),
        ["slot-a.conf", "slot-b+0.conf"]
    );
    assert_eq!(status(&env, &disk, None)["nextBootSlot"], "a");
    fsck_esp(&disk).unwrap();

    // mark-bad: b can be, a cannot (b is bad, nothing would be left).
    copy_image(&installed, &disk);
    ok(&env.abupdate(&disk, &["mark-bad", "b"]));
    assert_eq!(status(&env, &disk, None)["nextBootSlot"], "a");
    let msg = fails(&env.abupdate(&disk, &["mark-bad", "a"]), codes::NO_FALLBACK);
    assert!(msg.contains("no bootable entry"), "{msg}");

    // Applying over the only good slot while the other is on trial is refused.
    copy_image(&installed, &disk);
    let v3 = env.build("2026.11.3", 3, 64 * 1024);
    let before = sha256_file(&disk);
    let msg = fails(
        &env.abupdate_booted(&disk, Some("b"), &["apply", v3.bundle.to_str().unwrap()]),
        codes::NO_FALLBACK,
    );
    assert!(msg.contains("mark-good"), "{msg}");
    assert_eq!(sha256_file(&disk), before);

    // Downgrade: b (v2) good and running, v1 into a with --allow-downgrade boots next.
    ok(&env.abupdate_booted(&disk, Some("b"), &["mark-good"]));
    fails(
        &env.abupdate_booted(&disk, Some("b"), &["apply", v1.bundle.to_str().unwrap()]),
        codes::DOWNGRADE_REFUSED,
    );
    ok(&env.abupdate_booted(
        &disk,
        Some("b"),
        &["apply", "--allow-downgrade", v1.bundle.to_str().unwrap()],
    ));
    assert_eq!(
        mdir(&disk, "loader/entries"),
        ["slot-a+3.conf", "slot-b+0.conf"]
    );
    let s = status(&env, &disk, Some("b"));
    assert_eq!(s["nextBootSlot"], "a");
    assert_eq!(s["slots"][0]["version"], "2026.11.1");
    fsck_esp(&disk).unwrap();
}
