//! Crash consistency: a power cut after every write and every sync of an apply (and of
//! mark-good and rollback). The fault-injection build of abupdate stops dead at point N
//! (`ABUPDATE_FAULT_AFTER=N`); the disk is then judged with the boot loader's model: every slot
//! it would boot, over the next boots (including the fallback after the tries run out), must
//! be complete: its partition holds the root image of the version its entry names, and its
//! kernel and initrd on the ESP are that version's.
//!
//! The same scenarios run on a systemd-boot disk (judged with `boot::entries`) and on a GRUB
//! disk (judged with `grubenv::next_boot` over both env copies, each boot's try saved into the
//! copy GRUB read; the version is the slot's `info.json`, and its `cmdline.cfg` must be that
//! version's too). On GRUB, a cut that leaves grub.cfg booting its baked-in default slot (no
//! valid copy, or no slot good or being tried) is a failure.
//!
//! Run with `cargo test -p abupdate --features fault-injection --test integration crash`.

use std::collections::HashMap;
use std::path::Path;

use abbundle::{grubenv, Manifest, PayloadKind};
use abupdate::boot::entries::{self as bootentries, Slot};
use abupdate::codes;
use abupdate::disk::esp::Esp;
use abupdate::disk::Disk;
use sha2::{Digest, Sha256};

use crate::util::*;

/// Exit status of a process stopped by an injected fault (`abupdate::fault::EXIT`).
const FAULT_EXIT: i32 = abupdate::fault::EXIT;

/// Judges a disk after a cut: returns the problems found (empty: bootable and consistent).
fn judge(disk_path: &Path, versions: &HashMap<String, &Manifest>) -> Vec<String> {
    let mut problems = Vec::new();
    let disk = match Disk::open(disk_path, true) {
        Ok(d) => d,
        Err(e) => return vec![format!("disk unreadable: {e:#}")],
    };
    let esp = match Esp::open(&disk) {
        Ok(e) => e,
        Err(e) => return vec![format!("ESP unreadable: {e:#}")],
    };
    if esp.exists(grubenv::ENV_FILES[0]) {
        return judge_grub(&disk, &esp, versions);
    }
    let mut entries = match abupdate::boot::systemd_boot::read_entries(&esp) {
        Ok(e) => e,
        Err(e) => return vec![format!("entries unreadable: {e:#}")],
    };
    let exists = |p: &str| esp.exists(p);
    // Five boots: the new slot's three tries (if it has an entry) and the fallback after them.
    for boot in 0..5 {
        let Some((slot, version)) = bootentries::simulate_boot(&mut entries, &exists) else {
            problems.push(format!("boot {boot}: systemd-boot finds no entry to boot"));
            break;
        };
        let Some(m) = versions.get(&version) else {
            problems.push(format!(
                "boot {boot}: slot {slot} boots unknown version '{version}'"
            ));
            break;
        };
        problems.extend(
            check_slot(&disk, &esp, slot, m)
                .into_iter()
                .map(|p| format!("boot {boot}: {p}")),
        );
    }
    problems
}

/// [`judge`] on a GRUB disk: the generated grub.cfg's model over both env copies. Besides
/// the five boots, every slot that either valid copy lets boot (good, or tries left) must be
/// complete: grub.cfg reads copy 2 when copy 1 is torn, and takes the next slot in order when
/// a kernel does not load.
fn judge_grub(disk: &Disk, esp: &Esp, versions: &HashMap<String, &Manifest>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut copies = grubenv::ENV_FILES.map(|f| {
        esp.read_small(f)
            .ok()
            .flatten()
            .and_then(|b| grubenv::parse(&b).ok())
    });
    for (i, c) in copies.iter().enumerate() {
        let Some(state) = c else { continue };
        for slot in Slot::ALL {
            if matches!(
                state.slot(slot),
                grubenv::SlotState::Good | grubenv::SlotState::Tries(_)
            ) {
                problems.extend(
                    check_grub_slot(disk, esp, slot, versions)
                        .into_iter()
                        .map(|p| {
                            format!(
                                "env copy {}: slot {slot} is {}: {p}",
                                i + 1,
                                state.slot(slot)
                            )
                        }),
                );
            }
        }
    }
    for boot in 0..5 {
        let n = grubenv::next_boot(copies[0], copies[1]);
        if n.kind == grubenv::BootKind::Default {
            problems.push(format!(
                "boot {boot}: grub.cfg finds no good or trying slot (env copies: {copies:?}) \
                 and boots its default slot"
            ));
            break;
        }
        if let (Some(c), Some(saved)) = (n.copy, n.saved) {
            copies[c] = Some(saved);
        }
        problems.extend(
            check_grub_slot(disk, esp, n.slot, versions)
                .into_iter()
                .map(|p| format!("boot {boot}: {p}")),
        );
    }
    problems
}

/// Whether `slot` on a GRUB disk holds the version its `info.json` names completely: root
/// image, kernel, initrd and `cmdline.cfg`.
fn check_grub_slot(
    disk: &Disk,
    esp: &Esp,
    slot: Slot,
    versions: &HashMap<String, &Manifest>,
) -> Vec<String> {
    let info = esp
        .read_small(&slot.files().info)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<abbundle::layout::SlotInfo>(&b).ok());
    let Some(version) = info.map(|i| i.version) else {
        return vec![format!("slot {slot} boots without an info.json")];
    };
    let Some(m) = versions.get(&version) else {
        return vec![format!("slot {slot} boots unknown version '{version}'")];
    };
    let mut problems = check_slot(disk, esp, slot, m);
    let cmdline = grubenv::cmdline_cfg(&m.kernel_params).unwrap();
    if esp
        .read_small(&grubenv::cmdline_file(slot))
        .ok()
        .flatten()
        .as_deref()
        != Some(cmdline.as_bytes())
    {
        problems.push(format!(
            "slot {slot}: cmdline.cfg is not version {version}'s"
        ));
    }
    problems
}

/// Whether slot `slot` holds version `m` completely: partition, kernel, initrd.
fn check_slot(disk: &Disk, esp: &Esp, slot: Slot, m: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    let rootfs = m.payload(PayloadKind::Rootfs);
    let part = disk.partition(slot.partition_label()).unwrap();
    let mut buf = vec![0u8; rootfs.size as usize];
    disk.read_at(part, 0, &mut buf).unwrap();
    if Sha256::digest(&buf)[..] != rootfs.sha256.0 {
        problems.push(format!(
            "slot {slot}: partition does not hold version {}'s root image",
            m.version
        ));
    }
    for (file, kind) in [
        ("vmlinuz", PayloadKind::Kernel),
        ("initrd", PayloadKind::Initrd),
    ] {
        match esp.hash_file(&format!("{slot}/{file}")) {
            Ok((h, len)) if h == m.payload(kind).sha256.0 && len == m.payload(kind).size => {}
            _ => problems.push(format!(
                "slot {slot}: {file} is not version {}'s",
                m.version
            )),
        }
    }
    problems
}

struct Scenario<'a> {
    name: &'a str,
    base: &'a Path,
    booted: Option<&'a str>,
    args: Vec<String>,
}

/// Runs `s` once to count its points, then cuts it after each one. Returns (points, failures).
fn run_scenario(
    env: &Env,
    s: &Scenario,
    versions: &HashMap<String, &Manifest>,
    uncached: bool,
) -> (u64, Vec<String>) {
    let args: Vec<&str> = s.args.iter().map(String::as_str).collect();
    let disk = env.path(&format!("crash-{}.img", s.name));
    copy_image(s.base, &disk);
    let cmd = |n: u64| {
        let mut c = env.cmd(&disk, s.booted, &args);
        c.env("ABUPDATE_FAULT_AFTER", n.to_string());
        if uncached {
            c.env("ABUPDATE_FAULT_NO_CACHE", "1");
        }
        c
    };
    let out = cmd(0).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}: {stderr}", s.name);
    let total: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("abupdate-fault-points="))
        .unwrap_or_else(|| panic!("{}: no point count in {stderr}", s.name))
        .parse()
        .unwrap();
    let end = judge(&disk, versions);
    assert!(end.is_empty(), "{}: after a full run: {end:?}", s.name);
    // A delta apply: the bytes an uninterrupted run reads from the bundle. A re-run after a
    // cut must read no more (what was written before the cut is not read again).
    let fresh = stderr
        .contains("delta: ")
        .then(|| crate::delta::delta_counts(&stderr)[0]);
    let mut reruns = Vec::new();
    let mut failures = Vec::new();
    for n in 1..=total {
        copy_image(s.base, &disk);
        let out = cmd(n).output().unwrap();
        // The number of writes can differ by a few between runs (FAT timestamps have 2 s
        // resolution, and a directory entry is rewritten when its time changes): a run that
        // finished with fewer points than n is complete, and is judged like the others.
        let finished_early = out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .lines()
                .find_map(|l| l.strip_prefix("abupdate-fault-points="))
                .and_then(|c| c.parse::<u64>().ok())
                .is_some_and(|c| c < n);
        if out.status.code() != Some(FAULT_EXIT) && !finished_early {
            eprintln!("{} point {n}: exit {:?}", s.name, out.status.code());
            failures.push(format!(
                "{} point {n}: exit {:?}: {}",
                s.name,
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        for p in judge(&disk, versions) {
            eprintln!("{} point {n}: {p}", s.name);
            failures.push(format!("{} point {n}: {p}", s.name));
        }
        // Every 16th cut, and in a delta apply every cut right after a slot write (where a
        // resume matters): the same command run again must either finish the job or refuse
        // without changing anything (the cut came after the new entry was written), and the
        // disk must still be judged bootable.
        let slot_write = String::from_utf8_lossy(&out.stderr).contains("(slot write)");
        if n % 16 == 0 || (fresh.is_some() && slot_write) {
            let again = env.cmd(&disk, s.booted, &args).output().unwrap();
            let code = again.status.code();
            let log = String::from_utf8_lossy(&again.stderr);
            if let (Some(fresh), true) = (fresh, again.status.success()) {
                let fetched = log
                    .contains("delta: ")
                    .then(|| crate::delta::delta_counts(&log)[0]);
                reruns.push(fetched.unwrap_or(u64::MAX));
                if fetched.is_none_or(|f| f > fresh) {
                    failures.push(format!(
                        "{} point {n}: the re-run read {fetched:?} bytes from the bundle, an \
                         uninterrupted apply {fresh}: {log}",
                        s.name
                    ));
                }
            }
            if !(again.status.success()
                || code == Some(codes::NO_FALLBACK)
                || code == Some(codes::DOWNGRADE_REFUSED))
            {
                eprintln!(
                    "{} point {n}: rerun failed: {}",
                    s.name,
                    String::from_utf8_lossy(&again.stderr)
                );
                failures.push(format!(
                    "{} point {n}: rerun failed: {}",
                    s.name,
                    String::from_utf8_lossy(&again.stderr)
                ));
            }
            for p in judge(&disk, versions) {
                failures.push(format!("{} point {n} after the rerun: {p}", s.name));
            }
        }
    }
    if let Some(fresh) = fresh {
        // Some cut came after fetched chunks were written: the re-run after it must have read
        // less (the target slot is a seed: the resume). Nothing to resume where nothing is
        // read (the downgrade: slot a still holds v1).
        if fresh > 0 && !reruns.iter().any(|&f| f < fresh) {
            failures.push(format!(
                "{}: no re-run read less than an uninterrupted apply ({fresh} bytes): {reruns:?}",
                s.name
            ));
        }
        eprintln!(
            "{}: an uninterrupted apply reads {fresh} bytes from the bundle; re-runs after cuts: \
             {reruns:?}",
            s.name
        );
    }
    (total, failures)
}

#[test]
fn power_cut_after_every_write_and_sync() {
    power_cuts(&Env::new(), "systemd-boot");
}

/// The same scenarios on a GRUB disk: every env write is a single in-place sector, copy 1
/// then copy 2, so each cut leaves the old state or the new one.
#[test]
fn power_cut_after_every_write_and_sync_grub() {
    power_cuts(&Env::new_grub(), "grub");
}

fn power_cuts(env: &Env, loader: &str) {
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let v3 = env.build("2026.11.3", 3, 64 * 1024);
    // A delta pair (format 2, one of two files changed): its apply takes the chunked path
    // (delta_apply), whose cuts are judged like the stream path's.
    let lib = |seed: u64| noise(600 * 1024, seed);
    let (one, two, two_new) = (lib(40), lib(41), lib(42));
    let d1 = env.build_with(
        "2026.12.1",
        1,
        64 * 1024,
        &[("lib/one", &one), ("lib/two", &two)],
        abbundle::FORMAT_VERSION,
    );
    let d2 = env.build_with(
        "2026.12.2",
        1,
        64 * 1024,
        &[("lib/one", &one), ("lib/two", &two_new)],
        abbundle::FORMAT_VERSION,
    );
    let probe = env.path("delta-probe.img");
    copy_image(&d1.image, &probe);
    let out = env.abupdate(&probe, &["apply", &d2.bundle.display().to_string()]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && log.contains("delta: "),
        "the delta pair did not take the delta path: {log}"
    );
    let versions: HashMap<String, &Manifest> = [&v1, &v2, &v3, &d1, &d2]
        .iter()
        .map(|b| (b.manifest.version.to_string(), &b.manifest))
        .collect();
    let path = |b: &Build| b.bundle.display().to_string();

    // States to start from: v1 only; v2 applied (b trying); v2 good with v3 to come.
    let after_v2 = env.path("after-v2.img");
    copy_image(&v1.image, &after_v2);
    ok(&env.abupdate(&after_v2, &["apply", &path(&v2)]));
    let v2_good = env.path("v2-good.img");
    copy_image(&after_v2, &v2_good);
    ok(&env.abupdate_booted(&v2_good, Some("b"), &["mark-good"]));
    // v1 back into a: a on trial, b the good fallback listed after it.
    let downgraded = env.path("downgraded.img");
    copy_image(&v2_good, &downgraded);
    ok(&env.abupdate_booted(
        &downgraded,
        Some("b"),
        &["apply", "--allow-downgrade", &path(&v1)],
    ));

    let scenarios = [
        Scenario {
            name: "apply-v2",
            base: &v1.image,
            booted: None,
            args: vec!["apply".into(), path(&v2)],
        },
        Scenario {
            name: "mark-good",
            base: &after_v2,
            booted: Some("b"),
            args: vec!["mark-good".into()],
        },
        Scenario {
            name: "apply-v3",
            base: &v2_good,
            booted: Some("b"),
            args: vec!["apply".into(), path(&v3)],
        },
        Scenario {
            name: "rollback",
            base: &after_v2,
            booted: None,
            args: vec!["rollback".into()],
        },
        Scenario {
            name: "apply-delta",
            base: &d1.image,
            booted: None,
            args: vec!["apply".into(), path(&d2)],
        },
        Scenario {
            name: "downgrade",
            base: &v2_good,
            booted: Some("b"),
            args: vec!["apply".into(), "--allow-downgrade".into(), path(&v1)],
        },
        Scenario {
            name: "rollback-after-downgrade",
            base: &downgraded,
            booted: None,
            args: vec!["rollback".into()],
        },
    ];
    let mut points = 0;
    let mut failures = Vec::new();
    // Twice: with the ESP's write-back cache as shipped (writes between two syncs land in
    // offset order), and without it (every single write of the FAT driver, in program order).
    for uncached in [false, true] {
        for s in &scenarios {
            let (n, f) = run_scenario(env, s, &versions, uncached);
            let mode = if uncached { "uncached" } else { "cached" };
            eprintln!(
                "crash ({loader}): {} ({mode}): {n} injection points, {} failures",
                s.name,
                f.len()
            );
            points += n;
            failures.extend(f);
        }
    }
    eprintln!(
        "crash ({loader}): {points} injection points in total, {} failures",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(points > 100, "too few injection points: {points}");
}

/// A medium that does not store what it was given (one bit flipped in the first slot write,
/// after the bytes were verified): the read-back refuses the slot, no entry is written for
/// it, and the running slot's entry is untouched.
#[test]
fn read_back_catches_a_lying_medium() {
    let env = Env::new();
    let v1 = env.build("1", 1, 64 * 1024);
    let v2 = env.build("2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let out = env
        .cmd(&disk, None, &["apply", v2.bundle.to_str().unwrap()])
        .env("ABUPDATE_FAULT_LYING_MEDIUM", "1")
        .output()
        .unwrap();
    let err = fails(&out, codes::READBACK_MISMATCH);
    assert!(err.contains("does not read back as written"), "{err}");
    assert_eq!(mdir(&disk, "loader/entries"), ["slot-a.conf"]);
    // The same apply without the fault succeeds: the refusal came from the flipped bit.
    ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
}
