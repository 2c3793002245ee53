//! Every refusal: a one-line message, its documented exit code, and a disk image that is
//! byte-identical afterwards. A payload found corrupt mid-stream leaves the running slot and
//! its entry untouched.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use abbundle::PayloadKind;
use abupdate::codes;

use crate::util::*;

fn flip_byte(src: &Path, dst: &Path, offset: u64) {
    fs::copy(src, dst).unwrap();
    let mut f = OpenOptions::new().read(true).write(true).open(dst).unwrap();
    let mut b = [0u8; 1];
    use std::io::Read;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[b[0] ^ 0x55]).unwrap();
}

/// A bundle made directly with the format crate (for payloads abbuild would not make).
fn raw_bundle(
    env: &Env,
    name: &str,
    version: &str,
    rootfs_len: usize,
    seed: [u8; 32],
) -> std::path::PathBuf {
    RawBundle {
        version,
        sizes: [rootfs_len, 10_000, 10_000],
        seed: 9,
        key_seed: seed,
        ..RawBundle::default()
    }
    .write(env.path(name))
}

#[test]
fn refusals_change_nothing() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    let unchanged = |what: &str| assert_eq!(sha256_file(&disk), before, "{what} changed the disk");
    let v2b = v2.bundle.to_str().unwrap();

    // Signature: a byte of the manifest or of the signature changed.
    let bad_manifest = env.path("bad-manifest.abu");
    flip_byte(&v2.bundle, &bad_manifest, 100);
    let msg = fails(
        &env.abupdate(&disk, &["apply", bad_manifest.to_str().unwrap()]),
        16,
    );
    assert!(msg.contains("signature"), "{msg}");
    unchanged("a bad signature");

    // Untrusted key.
    let other = raw_bundle(&env, "untrusted.abu", "2026.11.5", 100_000, [0x11; 32]);
    let msg = fails(
        &env.abupdate(&disk, &["apply", other.to_str().unwrap()]),
        15,
    );
    assert!(msg.contains("not signed by a trusted key"), "{msg}");
    unchanged("an untrusted key");

    // Incompatible.
    fs::write(
        env.path("other.toml"),
        format!(
            "compatible = \"other-board\"\nkeys = \"{}\"\n",
            env.path("keys").display()
        ),
    )
    .unwrap();
    let msg = fails(
        &env.abupdate_cfg(&env.path("other.toml"), &disk, &["apply", v2b]),
        17,
    );
    assert!(msg.contains("other-board"), "{msg}");
    unchanged("an incompatible bundle");

    // No compatible configured.
    fs::write(
        env.path("none.toml"),
        format!("keys = \"{}\"\n", env.path("keys").display()),
    )
    .unwrap();
    let msg = fails(
        &env.abupdate_cfg(&env.path("none.toml"), &disk, &["apply", v2b]),
        codes::NOT_CONFIGURED,
    );
    assert!(msg.contains("compatible"), "{msg}");
    unchanged("a missing compatible string");

    // Equal and older versions.
    let msg = fails(
        &env.abupdate(&disk, &["apply", v1.bundle.to_str().unwrap()]),
        codes::DOWNGRADE_REFUSED,
    );
    assert!(msg.contains("--allow-downgrade"), "{msg}");
    let old = raw_bundle(&env, "old.abu", "2026.10.9", 100_000, TEST_ONLY_SEED);
    fails(
        &env.abupdate(&disk, &["apply", old.to_str().unwrap()]),
        codes::DOWNGRADE_REFUSED,
    );
    unchanged("an older version");

    // Larger than the slot (4 MiB).
    let big = raw_bundle(&env, "big.abu", "2026.12.1", 5 << 20, TEST_ONLY_SEED);
    let msg = fails(
        &env.abupdate(&disk, &["apply", big.to_str().unwrap()]),
        codes::PAYLOAD_TOO_LARGE,
    );
    assert!(msg.contains("does not fit"), "{msg}");
    unchanged("a payload larger than the slot");

    // Another apply holds the lock.
    let lock = fs::File::create(env.path("lock")).unwrap();
    // SAFETY: flock on an open descriptor.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let msg = fails(&env.abupdate(&disk, &["apply", v2b]), codes::LOCKED);
    assert!(msg.contains("another abupdate"), "{msg}");
    drop(lock);
    unchanged("a locked apply");

    // The target is the running slot.
    let msg = fails(
        &env.abupdate_booted(&disk, Some("a"), &["apply", "--slot", "a", v2b]),
        codes::TARGET_RUNNING,
    );
    assert!(msg.contains("running slot"), "{msg}");
    unchanged("targeting the running slot");

    // A source that does not exist, and one that is not a bundle.
    fails(
        &env.abupdate(&disk, &["apply", env.path("missing.abu").to_str().unwrap()]),
        1,
    );
    fails(
        &env.abupdate(
            &disk,
            &["apply", env.path("abupdate.toml").to_str().unwrap()],
        ),
        10,
    );
    unchanged("a missing or foreign source");

    // Nothing to roll back to / mark bad on a fresh image (slot b is empty).
    let msg = fails(&env.abupdate(&disk, &["rollback"]), codes::NO_FALLBACK);
    assert!(msg.contains("no good entry"), "{msg}");
    fails(&env.abupdate(&disk, &["mark-bad", "a"]), codes::NO_FALLBACK);
    fails(
        &env.abupdate(&disk, &["mark-good"]),
        codes::NOT_BOOTED_FROM_SLOT,
    );
    unchanged("rollback, mark-bad and mark-good refusals");
}

#[test]
fn corrupt_payload_mid_stream_keeps_the_running_slot() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let root_a = partition_sha256(
        &disk,
        "root-a",
        v1.manifest.payload(PayloadKind::Rootfs).size,
    );
    let entry_a = mtype(&disk, "loader/entries/slot-a.conf");
    let kernel_a = mtype(&disk, "a/vmlinuz");
    let esp_len = partition(&disk, "esp").1;
    let esp_before = partition_sha256(&disk, "esp", esp_len);

    // A byte in the middle of the rootfs payload: chunks before it get written.
    let rootfs = v2.manifest.payload(PayloadKind::Rootfs);
    let bad = env.path("corrupt.abu");
    flip_byte(&v2.bundle, &bad, rootfs.offset + rootfs.size / 2);
    let msg = fails(&env.abupdate(&disk, &["apply", bad.to_str().unwrap()]), 18);
    assert!(
        msg.contains("corrupt") && msg.contains("untouched"),
        "{msg}"
    );
    assert_eq!(
        partition_sha256(
            &disk,
            "root-a",
            v1.manifest.payload(PayloadKind::Rootfs).size
        ),
        root_a
    );
    assert_eq!(mtype(&disk, "loader/entries/slot-a.conf"), entry_a);
    assert_eq!(mtype(&disk, "a/vmlinuz"), kernel_a);
    assert_eq!(mdir(&disk, "loader/entries"), ["slot-a.conf"]);
    fsck_esp(&disk).unwrap();
    // Slot b was empty and the bundle was stopped in the slot: the ESP is byte-identical.
    assert_eq!(partition_sha256(&disk, "esp", esp_len), esp_before);

    // A truncated bundle (ends inside the initrd) likewise.
    let cut = env.path("cut.abu");
    let bytes = fs::read(&v2.bundle).unwrap();
    fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    fails(&env.abupdate(&disk, &["apply", cut.to_str().unwrap()]), 11);
    assert_eq!(mdir(&disk, "loader/entries"), ["slot-a.conf"]);
    assert_eq!(mtype(&disk, "a/vmlinuz"), kernel_a);

    // The good bundle still installs afterwards.
    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    assert_eq!(
        mdir(&disk, "loader/entries"),
        ["slot-a.conf", "slot-b+3.conf"]
    );
}

/// After an apply (a good, b on trial), marking a bad is refused on both loaders, named or as
/// the running slot, and nothing on the disk changes: should b then fail its tries, nothing
/// good would be left (systemd-boot would boot the newer, broken b for ever; GRUB its default
/// slot). Once b is marked good, a can go.
#[test]
fn mark_bad_of_the_only_good_slot_while_the_other_is_trying() {
    for env in [Env::new(), Env::new_grub()] {
        let v1 = env.build("2026.11.1", 1, 64 * 1024);
        let v2 = env.build("2026.11.2", 2, 64 * 1024);
        let disk = env.path("disk.img");
        copy_image(&v1.image, &disk);
        ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
        let before = sha256_file(&disk);
        for (booted, args) in [
            (None, &["mark-bad", "a"][..]),
            (Some("a"), &["mark-bad"][..]),
            (Some("b"), &["mark-bad", "a"][..]),
        ] {
            let msg = fails(
                &env.abupdate_booted(&disk, booted, args),
                codes::NO_FALLBACK,
            );
            assert!(
                msg.contains("only good slot")
                    && msg.contains("slot b is only trying")
                    && msg.contains("nothing was changed"),
                "{booted:?} {args:?}: {msg}"
            );
            assert_eq!(sha256_file(&disk), before, "{booted:?} {args:?}");
        }
        ok(&env.abupdate_booted(&disk, Some("b"), &["mark-good"]));
        ok(&env.abupdate_booted(&disk, Some("b"), &["mark-bad", "a"]));
        let s: serde_json::Value =
            serde_json::from_str(&ok(&env.abupdate(&disk, &["status", "--json"]))).unwrap();
        assert_eq!(s["nextBootSlot"], "b");
        assert_eq!(s["slots"][0]["state"], "bad");
    }
}

/// A boot entry that is no slot's but carries `sort-key abupdate` and a version above every
/// update (a copy of `slot-a.conf` for a rescue system) would boot before any new slot. apply
/// used to take the new slot for a downgrade, demote the good slot a and exit 1 "(bug)"; now
/// it refuses (45) before anything is written, whether the copy boots its own kernel or
/// still says `ab.slot=a`. Only a slot can demote a slot.
#[test]
fn a_foreign_entry_that_outranks_the_new_slot_is_refused() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    let slot_a = {
        copy_image(&v1.image, &disk);
        String::from_utf8(mtype(&disk, "loader/entries/slot-a.conf")).unwrap()
    };
    let rescue_own_kernel = slot_a
        .replace("title abupdate slot a", "title rescue")
        .replace("version 2026.11.1", "version 9999")
        .replace("/a/vmlinuz", "/rescue-vmlinuz")
        .replace("/a/initrd", "/rescue-initrd")
        .replace("ab.slot=a root=PARTLABEL=root-a", "rescue");
    let copy_of_a = slot_a
        .replace("title abupdate slot a", "title rescue")
        .replace("version 2026.11.1", "version 9999");
    assert_ne!(rescue_own_kernel, slot_a);
    assert!(copy_of_a.contains("ab.slot=a"), "{copy_of_a}");
    for rescue in [&rescue_own_kernel, &copy_of_a] {
        copy_image(&v1.image, &disk);
        mput(&disk, "rescue-vmlinuz", Some(b"a rescue kernel"));
        mput(&disk, "loader/entries/rescue.conf", Some(rescue.as_bytes()));
        let before = sha256_file(&disk);
        let msg = fails(
            &env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]),
            codes::FOREIGN_ENTRY,
        );
        assert!(
            msg.contains("loader/entries/rescue.conf")
                && msg.contains("not a slot's entry")
                && msg.contains("nothing was changed"),
            "{msg}"
        );
        assert_eq!(sha256_file(&disk), before, "{rescue}");
    }
    // The same copy ranked below the new slot (its version kept) is left alone: the update
    // installs and boots next, and the rescue entry stays as it was.
    copy_image(&v1.image, &disk);
    let low = slot_a.replace("title abupdate slot a", "title rescue");
    mput(&disk, "loader/entries/rescue.conf", Some(low.as_bytes()));
    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    assert_eq!(
        mdir(&disk, "loader/entries"),
        ["rescue.conf", "slot-a.conf", "slot-b+3.conf"]
    );
    assert_eq!(mtype(&disk, "loader/entries/rescue.conf"), low.as_bytes());
}
