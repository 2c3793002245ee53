//! The same commands on a GRUB disk (`boot-backend = "grub"`): the A/B state in the two env
//! copies on the ESP, judged with `abbundle::grubenv`'s model of grub.cfg and read back with
//! tools that share no code with abupdate (mtools, grub-editenv, fsck.fat, cmp of the images).

use std::path::Path;
use std::process::Command;

use abbundle::grubenv::{self, BootKind, SlotState as S, State, ENV_FILES};
use abbundle::layout::Slot;
use abupdate::codes;

use crate::util::*;

fn st(first: Slot, a: S, b: S) -> State {
    State { first, a, b }
}

/// Both copies hold `want`.
fn assert_env(disk: &Path, want: State) {
    assert_eq!(grub_env(disk), [Some(want), Some(want)]);
}

/// The 512-byte sectors in which two images differ.
fn changed_sectors(a: &Path, b: &Path) -> Vec<u64> {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(a.len(), b.len());
    (0..a.len() / 512)
        .filter(|i| a[i * 512..(i + 1) * 512] != b[i * 512..(i + 1) * 512])
        .map(|i| i as u64)
        .collect()
}

/// `grub-editenv FILE list` on copy `n` of the env, taken off the ESP with mtools.
fn editenv_list(disk: &Path, n: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("env");
    std::fs::write(&f, mtype(disk, ENV_FILES[n])).unwrap();
    let out = Command::new("grub-editenv")
        .arg(&f)
        .arg("list")
        .output()
        .expect("grub-editenv (Debian: grub-common)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// GRUB spending one try, as grub.cfg does (the model's `saved` state written into the copy
/// it read, with mtools).
pub(crate) fn grub_boots(disk: &Path) -> grubenv::NextBoot {
    let [c1, c2] = grub_env(disk);
    let n = grubenv::next_boot(c1, c2);
    if let (Some(copy), Some(saved)) = (n.copy, n.saved) {
        mput(disk, ENV_FILES[copy], Some(&grubenv::encode(&saved)));
    }
    n
}

#[test]
fn apply_mark_good_and_the_env_grub_reads() {
    let env = Env::new_grub();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let s = status(&env, &disk, None);
    assert_eq!(s["bootLoader"], "grub");
    assert_eq!(s["nextBootSlot"], "a");
    assert_eq!(s["slots"][1]["state"], "empty");

    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    assert_env(&disk, st(Slot::B, S::Good, S::Tries(3)));
    let n = grubenv::next_boot(grub_env(&disk)[0], grub_env(&disk)[1]);
    assert_eq!((n.slot, n.kind), (Slot::B, BootKind::Try));
    assert_eq!(
        mtype(&disk, &grubenv::cmdline_file(Slot::B)),
        grubenv::cmdline_cfg(&v2.manifest.kernel_params)
            .unwrap()
            .into_bytes()
    );
    assert_eq!(
        mtype(&disk, "b/vmlinuz"),
        std::fs::read(env.path("system-2026.11.2/kernel")).unwrap()
    );
    // GRUB's own tool reads what abupdate wrote, in both copies.
    for n in 0..2 {
        assert_eq!(editenv_list(&disk, n), "ab_order=b a\nab_a=good\nab_b=3\n");
    }
    let s = status(&env, &disk, None);
    assert_eq!(s["bootLoader"], "grub");
    assert_eq!(s["nextBootSlot"], "b");
    assert_eq!(s["nextBootEntry"], "ab_b=3");
    assert_eq!(s["slots"][1]["state"], "trying");
    assert_eq!(s["slots"][1]["triesLeft"], 3);
    assert_eq!(s["slots"][1]["version"], "2026.11.2");
    fsck_esp(&disk).unwrap();

    // The first boot of b spends a try; b comes up and is marked good: only the two env
    // sectors change (no FAT or directory write), copy 1 then copy 2.
    assert_eq!(grub_boots(&disk).slot, Slot::B);
    ok(&env.abupdate_booted(&disk, Some("b"), &["boot-check"]));
    let s = status(&env, &disk, Some("b"));
    assert_eq!(s["lastBootWasFallback"], false);
    let before = env.path("before.img");
    copy_image(&disk, &before);
    let out = ok(&env.abupdate_booted(&disk, Some("b"), &["mark-good"]));
    assert!(out.contains("marked slot b good"), "{out}");
    assert_env(&disk, st(Slot::B, S::Good, S::Good));
    assert_eq!(changed_sectors(&before, &disk).len(), 2);
    assert!(ok(&env.abupdate_booted(&disk, Some("b"), &["mark-good"])).contains("already"));
    assert_eq!(
        editenv_list(&disk, 1),
        "ab_order=b a\nab_a=good\nab_b=good\n"
    );
    fsck_esp(&disk).unwrap();
}

#[test]
fn tries_run_out_then_the_fallback_is_reported() {
    let env = Env::new_grub();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    // Three boots of b that never reach mark-good: grub.cfg counts down copy 1.
    for left in [2, 1] {
        let n = grub_boots(&disk);
        assert_eq!((n.slot, n.fallback), (Slot::B, false));
        assert_eq!(status(&env, &disk, None)["slots"][1]["triesLeft"], left);
    }
    // The last try of b: b, now used up, is still first, and this boot is no fallback.
    assert_eq!(grub_boots(&disk).slot, Slot::B);
    ok(&env.abupdate_booted(&disk, Some("b"), &["boot-check"]));
    assert_eq!(status(&env, &disk, Some("b"))["lastBootWasFallback"], false);
    let n = grub_boots(&disk);
    assert_eq!(
        (n.slot, n.kind, n.fallback),
        (Slot::A, BootKind::Good, true)
    );
    let s = status(&env, &disk, None);
    assert_eq!(s["nextBootSlot"], "a");
    assert_eq!(s["slots"][1]["state"], "bad");
    assert_eq!(s["slots"][1]["triesLeft"], 0);
    // Copy 2 still says 3 tries: GRUB writes only the copy it read.
    assert_eq!(grub_env(&disk)[1], Some(st(Slot::B, S::Good, S::Tries(3))));
    ok(&env.abupdate_booted(&disk, Some("a"), &["boot-check"]));
    let s = status(&env, &disk, Some("a"));
    assert_eq!(s["lastBootWasFallback"], true);
    assert_eq!(s["lastBoot"]["failedSlot"], "b");
    assert_eq!(s["lastBoot"]["failedVersion"], "2026.11.2");
    let human = ok(&env.abupdate_booted(&disk, Some("a"), &["status"]));
    assert_eq!(
        human.lines().take(2).collect::<Vec<_>>(),
        [
            format!("disk {}: running slot a, next boot slot a", disk.display()),
            "boot loader: grub".to_string()
        ]
    );
    let msg = fails(
        &env.abupdate_booted(&disk, Some("a"), &["rollback"]),
        codes::NO_FALLBACK,
    );
    assert!(msg.contains("slot b is bad"), "{msg}");
    // A fixed bundle goes into b again; both copies agree afterwards.
    let v3 = env.build("2026.11.3", 3, 64 * 1024);
    ok(&env.abupdate_booted(&disk, Some("a"), &["apply", v3.bundle.to_str().unwrap()]));
    assert_env(&disk, st(Slot::B, S::Good, S::Tries(3)));
    fsck_esp(&disk).unwrap();
}

#[test]
fn rollback_mark_bad_and_downgrade() {
    let env = Env::new_grub();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    let installed = env.path("installed.img");
    copy_image(&disk, &installed);

    let out = ok(&env.abupdate_booted(&disk, Some("a"), &["rollback"]));
    assert!(
        out.contains("slot a (version 2026.11.1) boots next"),
        "{out}"
    );
    assert_env(&disk, st(Slot::A, S::Good, S::UsedUp));
    assert_eq!(status(&env, &disk, None)["nextBootSlot"], "a");
    fsck_esp(&disk).unwrap();

    copy_image(&installed, &disk);
    ok(&env.abupdate(&disk, &["mark-bad", "b"]));
    assert_env(&disk, st(Slot::A, S::Good, S::UsedUp));
    let before = sha256_file(&disk);
    let msg = fails(&env.abupdate(&disk, &["mark-bad", "a"]), codes::NO_FALLBACK);
    assert!(msg.contains("no bootable entry"), "{msg}");
    assert_eq!(sha256_file(&disk), before);

    // Over the only good slot while the other is on trial: refused, nothing changed.
    copy_image(&installed, &disk);
    let v3 = env.build("2026.11.3", 3, 64 * 1024);
    let before = sha256_file(&disk);
    let msg = fails(
        &env.abupdate_booted(&disk, Some("b"), &["apply", v3.bundle.to_str().unwrap()]),
        codes::NO_FALLBACK,
    );
    assert!(msg.contains("mark-good"), "{msg}");
    assert_eq!(sha256_file(&disk), before);

    // Downgrade: b (v2) good and running; v1 into a boots next, b stays the good fallback.
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
    assert_env(&disk, st(Slot::A, S::Tries(3), S::Good));
    let s = status(&env, &disk, Some("b"));
    assert_eq!(s["nextBootSlot"], "a");
    assert_eq!(s["slots"][0]["version"], "2026.11.1");
    // mark-bad of the running b, the only good slot, while a is only on trial: refused, as
    // apply refuses (should a then fail its tries, nothing good would be left).
    let before = sha256_file(&disk);
    let msg = fails(
        &env.abupdate_booted(&disk, Some("b"), &["mark-bad"]),
        codes::NO_FALLBACK,
    );
    assert!(msg.contains("only good slot"), "{msg}");
    assert_eq!(sha256_file(&disk), before);
    // The downgrade on trial can be taken back: a goes, b (good) is first again.
    ok(&env.abupdate_booted(&disk, Some("b"), &["mark-bad", "a"]));
    assert_env(&disk, st(Slot::B, S::UsedUp, S::Good));
    fsck_esp(&disk).unwrap();
}

/// Kernel parameters that would escape GRUB's quoting are refused before anything is
/// written; the same bundle installs on a systemd-boot disk, where they are no script.
#[test]
fn kernel_params_grub_would_read_as_script_are_refused() {
    let env = Env::new_grub();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    for params in ["console=ttyS0 x=$root", "a=\"b\"", "x;reboot", "a\\b"] {
        let bundle = RawBundle {
            version: "2026.11.5",
            kernel_params: params,
            ..RawBundle::default()
        }
        .write(env.path("bad.abu"));
        let before = sha256_file(&disk);
        let msg = fails(
            &env.abupdate(&disk, &["apply", bundle.to_str().unwrap()]),
            codes::UNSAFE_KERNEL_PARAMS,
        );
        assert!(
            msg.contains("GRUB") && msg.contains("nothing was changed"),
            "{msg}"
        );
        assert_eq!(sha256_file(&disk), before, "{params}");
    }
    let sd = Env::new();
    let w1 = sd.build("2026.11.1", 1, 64 * 1024);
    let disk = sd.path("disk.img");
    copy_image(&w1.image, &disk);
    assert_eq!(status(&sd, &disk, None)["bootLoader"], "systemd-boot");
    let bundle = RawBundle {
        version: "2026.11.5",
        kernel_params: "console=ttyS0 x=$root",
        ..RawBundle::default()
    }
    .write(sd.path("dollar.abu"));
    ok(&sd.abupdate(&disk, &["apply", bundle.to_str().unwrap()]));
}

/// Copy 1 damaged: abupdate reads the state from copy 2 (as grub.cfg does) and writes both
/// copies valid again. An env file that is not one 512-byte sector in one cluster cannot be
/// rewritten in place: refused before either copy is written.
#[test]
fn damaged_copy_1_and_an_env_file_of_the_wrong_size() {
    let env = Env::new_grub();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    mput(&disk, ENV_FILES[0], Some(&[0u8; 512]));
    assert_eq!(grub_env(&disk), [None, Some(State::initial())]);
    assert_eq!(status(&env, &disk, None)["nextBootSlot"], "a");
    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    assert_env(&disk, st(Slot::B, S::Good, S::Tries(3)));
    assert_eq!(editenv_list(&disk, 0), "ab_order=b a\nab_a=good\nab_b=3\n");

    copy_image(&v1.image, &disk);
    let mut long = grubenv::encode(&State::initial()).to_vec();
    long.extend([b'#'; 512]);
    mput(&disk, ENV_FILES[1], Some(&long));
    let before = sha256_file(&disk);
    let msg = fails(
        &env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]),
        codes::BAD_DISK,
    );
    assert!(
        msg.contains("grub/env2") && msg.contains("in place"),
        "{msg}"
    );
    assert_eq!(sha256_file(&disk), before);
}

/// The ESP of a disk image read and patched raw, below any FAT driver: for damage no FAT
/// driver would make (cross-linked files).
struct RawEsp {
    img: std::path::PathBuf,
    /// The ESP's byte offset in the image.
    at: u64,
    g: abbundle::fat32::Geometry,
}

impl RawEsp {
    fn open(img: &Path) -> RawEsp {
        use std::os::unix::fs::FileExt;
        let at = partition(img, "esp").0;
        let mut bs = [0u8; 512];
        std::fs::File::open(img)
            .unwrap()
            .read_exact_at(&mut bs, at)
            .unwrap();
        RawEsp {
            img: img.to_path_buf(),
            at,
            g: abbundle::fat32::Geometry::parse(&bs).unwrap(),
        }
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; len];
        std::fs::File::open(&self.img)
            .unwrap()
            .read_exact_at(&mut b, self.at + at)
            .unwrap();
        b
    }

    fn write(&self, at: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.img)
            .unwrap()
            .write_all_at(data, self.at + at)
            .unwrap();
    }

    /// The clusters of the chain starting at `first` (first FAT).
    fn chain(&self, first: u32) -> Vec<u32> {
        let mut out = vec![first];
        loop {
            let e = self.read(self.g.fat_start + *out.last().unwrap() as u64 * 4, 4);
            let next = u32::from_le_bytes(e.try_into().unwrap()) & 0x0fff_ffff;
            if next >= 0x0fff_fff8 {
                return out;
            }
            assert!(out.len() < 1 << 20, "a chain loops");
            out.push(next);
        }
    }

    /// The short directory entry of `path` (`GRUB/ENV1`, `A/VMLINUZ`): where it is and the
    /// first cluster it names.
    fn entry(&self, path: &str) -> (u64, u32) {
        let mut dir = self.g.root_cluster;
        let mut found = None;
        for part in path.split('/') {
            let (base, ext) = part.split_once('.').unwrap_or((part, ""));
            let mut name = [b' '; 11];
            name[..base.len()].copy_from_slice(base.as_bytes());
            name[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
            found = self.chain(dir).into_iter().find_map(|c| {
                let off = self.g.cluster_offset(c);
                let data = self.read(off, self.g.cluster_bytes as usize);
                data.chunks_exact(32).enumerate().find_map(|(i, e)| {
                    (e[..11] == name && e[11] != 0x0f && e[0] != 0xe5)
                        .then(|| (off + i as u64 * 32, abbundle::fat32::first_cluster(e)))
                })
            });
            dir = found.unwrap_or_else(|| panic!("no {part} in {path}")).1;
        }
        found.unwrap()
    }

    /// Points the directory entry at `entry_at` to cluster `c`.
    fn set_first_cluster(&self, entry_at: u64, c: u32) {
        let mut e = self.read(entry_at, 32);
        abbundle::fat32::set_first_cluster(&mut e, c);
        self.write(entry_at, &e);
    }
}

/// An env file cross-linked with another file (a damaged or hand-made FAT) is never written
/// in place: env1 on the last cluster of the staying slot's kernel, env2 on grub.cfg's
/// cluster, both copies on one cluster. Each is refused with 36 before anything is written
/// (the old code wrote through: the kernel's tail or grub.cfg overwritten, or the torn-write
/// protection of two copies silently gone, and apply reported success).
#[test]
fn env_files_cross_linked_with_other_files_are_refused() {
    let env = Env::new_grub();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    // (env file, what it is cross-linked onto, the cluster that is).
    type Case = (&'static str, &'static str, fn(&RawEsp) -> u32);
    let cases: [Case; 3] = [
        ("GRUB/ENV1", "the kernel's last cluster", |esp| {
            let kernel = esp.chain(esp.entry("A/VMLINUZ").1);
            assert!(kernel.len() > 1, "{kernel:?}");
            *kernel.last().unwrap()
        }),
        ("GRUB/ENV2", "grub.cfg's cluster", |esp| {
            *esp.chain(esp.entry("GRUB/GRUB.CFG").1).last().unwrap()
        }),
        ("GRUB/ENV2", "env1's cluster", |esp| {
            esp.entry("GRUB/ENV1").1
        }),
    ];
    for (file, onto, target) in cases {
        copy_image(&v1.image, &disk);
        let esp = RawEsp::open(&disk);
        let (at, _) = esp.entry(file);
        esp.set_first_cluster(at, target(&esp));
        let before = sha256_file(&disk);
        let msg = fails(
            &env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]),
            codes::BAD_DISK,
        );
        assert!(
            msg.contains("cross-linked") && msg.contains("nothing was changed"),
            "{file} onto {onto}: {msg}"
        );
        assert_eq!(sha256_file(&disk), before, "{file} onto {onto}");
        // mark-good goes through the same check.
        fails(
            &env.abupdate_booted(&disk, Some("a"), &["mark-good"]),
            codes::BAD_DISK,
        );
        assert_eq!(sha256_file(&disk), before, "{file} onto {onto}");
    }
}

/// Both env copies invalid is a damaged GRUB disk (36, as documented), not a disk without a
/// fallback (35) or without entries (39): the loader's state is checked before the slots
/// are judged by it.
#[test]
fn both_env_copies_invalid_is_a_bad_disk() {
    let env = Env::new_grub();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    for f in ENV_FILES {
        mput(&disk, f, Some(&[b'#'; 512]));
    }
    assert_eq!(grub_env(&disk), [None, None]);
    let before = sha256_file(&disk);
    let msg = fails(
        &env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]),
        codes::BAD_DISK,
    );
    assert!(
        msg.contains("grub/env1") && msg.contains("grub/env2") && msg.contains("valid"),
        "{msg}"
    );
    for (booted, args) in [
        (Some("a"), &["mark-good"][..]),
        (None, &["mark-bad", "b"][..]),
        (None, &["rollback"][..]),
    ] {
        let msg = fails(&env.abupdate_booted(&disk, booted, args), codes::BAD_DISK);
        assert!(msg.contains("valid GRUB state"), "{args:?}: {msg}");
    }
    assert_eq!(sha256_file(&disk), before);
}

/// A GRUB disk that lost one env copy, or both (GRUB then boots from the other copy, or its
/// default slot): still a GRUB disk (`status` says so), and every command that writes the env
/// is refused with 36, naming the missing copy. The old code took a disk without `grub/env1`
/// for a systemd-boot disk.
#[test]
fn a_missing_env_copy_is_still_a_grub_disk_and_refused() {
    let env = Env::new_grub();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    for missing in [&ENV_FILES[..1], &ENV_FILES[1..], &ENV_FILES[..]] {
        copy_image(&v1.image, &disk);
        for f in missing {
            mput(&disk, f, None);
        }
        assert_eq!(
            status(&env, &disk, None)["bootLoader"],
            "grub",
            "{missing:?}"
        );
        let before = sha256_file(&disk);
        let msg = fails(
            &env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]),
            codes::BAD_DISK,
        );
        let named = if missing.len() == 2 {
            msg.contains("valid GRUB state")
        } else {
            msg.contains(&format!("{} is missing", missing[0]))
        };
        assert!(
            named && msg.contains("nothing was changed"),
            "{missing:?}: {msg}"
        );
        fails(
            &env.abupdate_booted(&disk, Some("a"), &["mark-good"]),
            codes::BAD_DISK,
        );
        assert_eq!(sha256_file(&disk), before, "{missing:?}");
    }
}
