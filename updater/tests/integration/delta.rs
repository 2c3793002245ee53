//! Delta updates (format 2): `apply --dry-run` plans from the chunk index and the seeds the
//! disk holds, on abbuild-made squashfs images; a corrupt index is refused before anything is
//! written; a format 1 bundle still installs.

use std::path::Path;
use std::time::Duration;

use abbundle::header::{Header, HEADER_LEN};
use abbundle::PayloadKind;
use serde_json::Value;

use crate::range_server::{range_server, Fault, Serve};
use crate::util::*;

/// Compressible, file-like bytes (numbered lines of words), different for each seed.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0u64;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(format!("{line} {} {:x}\n", WORDS[(x % 8) as usize], x).as_bytes());
        line += 1;
    }
    out.truncate(len);
    out
}

/// Three "packages"; `changed` replaces the middle one's library.
fn files(changed: bool) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("nix/store/aaaa-one/lib/libone.so", text(900_000, 11)),
        (
            "nix/store/bbbb-two/lib/libtwo.so",
            text(900_000, if changed { 99 } else { 12 }),
        ),
        ("nix/store/cccc-three/lib/libthree.so", text(900_000, 13)),
    ]
}

fn build(env: &Env, version: &str, changed: bool, format: u32) -> Build {
    let f = files(changed);
    let refs: Vec<(&str, &[u8])> = f.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    env.build_with(version, 1, 64 * 1024, &refs, format)
}

fn plan(env: &Env, disk: &Path, bundle: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["apply", "--dry-run", "--json"];
    args.extend_from_slice(extra);
    args.push(bundle.to_str().unwrap());
    serde_json::from_str(&ok(&env.abupdate(disk, &args))).unwrap()
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn dry_run_reads_only_what_changed() {
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);

    let p = plan(&env, &disk, &v2.bundle, &[]);
    assert_eq!(p["kind"], "ApplyPlan");
    assert_eq!(p["mode"], "delta", "{p}");
    assert_eq!(p["targetSlot"], "b");
    let root = &p["payloads"][0];
    let size = v2.manifest.payload(PayloadKind::Rootfs).size;
    assert_eq!(u(root, "size"), size);
    // One of three equal packages changed: about a third of the root, compressed, is new;
    // the rest is copied from slot a.
    let fetch = u(root, "fetchBytes");
    assert!(
        fetch > 0 && fetch * 2 < size,
        "fetch {fetch} of {size}: {p}"
    );
    assert_eq!(u(root, "fetchBytes") + u(root, "copyBytes"), size);
    // Kernel and initrd are unchanged: slot a's boot files supply all of them.
    for k in [1, 2] {
        assert_eq!(u(&p["payloads"][k], "fetchBytes"), 0, "{p}");
    }
    // Everything read: the front of the bundle and the root's missing ranges.
    assert_eq!(
        u(&p, "readBytes"),
        u(&p, "frontBytes") + u(root, "readBytes")
    );
    assert!(u(&p, "readBytes") * 2 < u(&p, "bundleBytes"), "{p}");
    let front = Header::decode(
        std::fs::read(&v2.bundle).unwrap()[..HEADER_LEN]
            .try_into()
            .unwrap(),
    )
    .unwrap()
    .index_end();
    assert_eq!(u(&p, "frontBytes"), front);
    // The text form says the same.
    let out = ok(&env.abupdate(&disk, &["apply", "--dry-run", v2.bundle.to_str().unwrap()]));
    assert!(out.contains(&format!("fetch {fetch} bytes")), "{out}");
    // A dry run changes nothing.
    assert_eq!(sha256_file(&disk), before);
}

#[test]
fn dry_run_of_the_running_root_reads_no_payload_byte() {
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    // The same bundle again (a reinstall): every chunk is in slot a or on the ESP.
    let p = plan(&env, &disk, &v1.bundle, &["--allow-downgrade"]);
    assert_eq!(p["mode"], "delta");
    assert_eq!(u(&p, "readBytes"), u(&p, "frontBytes"), "{p}");
    assert_eq!(u(&p, "requests"), 1);
    for k in 0..3 {
        assert_eq!(u(&p["payloads"][k], "fetchBytes"), 0);
        assert_eq!(u(&p["payloads"][k], "requests"), 0);
    }
}

#[test]
fn the_target_slot_is_a_seed_too() {
    // Slot b already holds v2's root and, before it, v2's slot index (as an apply of v2 cut
    // short after the slot write leaves it): nothing of the root is read again, though slot a
    // holds the old one. The same bytes without that index (another image's leftovers, as far
    // as abupdate can tell) are not read at all.
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let (start, _) = partition(&disk, "root-b");
    let root = &std::fs::read(&v2.bundle).unwrap()[..];
    let r = v2.manifest.payload(PayloadKind::Rootfs);
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &root[r.offset as usize..r.end() as usize], start)
        .unwrap();
    let p = plan(&env, &disk, &v2.bundle, &[]);
    assert!(u(&p["payloads"][0], "fetchBytes") > 0, "{p}");
    assert_eq!(u(&p["seeds"][0], "scannedBytes"), 0, "{p}");
    assert!(seed_names(&p)[0].contains("not read"), "{p}");
    put_record(&disk, "root-b", r.size, &record_of(&v2));
    let p = plan(&env, &disk, &v2.bundle, &[]);
    assert_eq!(u(&p["payloads"][0], "fetchBytes"), 0, "{p}");
    assert_eq!(u(&p["seeds"][0], "scannedBytes"), r.size, "{p}");
}

#[test]
fn format_1_plans_a_full_stream_and_still_installs() {
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_V1);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_V1);
    assert_eq!(std::fs::read(&v2.bundle).unwrap()[8], 1);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let p = plan(&env, &disk, &v2.bundle, &[]);
    assert_eq!(p["mode"], "full");
    assert_eq!(p["format"], 1);
    assert_eq!(u(&p, "readBytes"), u(&p, "bundleBytes"));
    let out = ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    assert!(
        out.contains("installed version 2026.12.2 into slot b"),
        "{out}"
    );
    let size = v2.manifest.payload(PayloadKind::Rootfs).size;
    assert_eq!(
        partition_sha256(&disk, "root-b", size),
        payload_sha(&v2.manifest, PayloadKind::Rootfs)
    );
}

#[test]
fn an_index_that_does_not_match_its_signed_digest_is_refused() {
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    let mut b = std::fs::read(&v2.bundle).unwrap();
    let h = Header::decode(b[..HEADER_LEN].try_into().unwrap()).unwrap();
    // The last byte of the last entry's digest.
    b[h.index_end() as usize - 1] ^= 0x01;
    let bad = env.path("bad-index.abu");
    std::fs::write(&bad, &b).unwrap();
    for dry in [true, false] {
        let mut args = vec!["apply"];
        if dry {
            args.push("--dry-run");
        }
        args.push(bad.to_str().unwrap());
        let err = fails(&env.abupdate(&disk, &args), 19);
        assert!(
            err.contains("chunk index does not match the signed manifest"),
            "{err}"
        );
        assert_eq!(sha256_file(&disk), before, "the disk changed");
    }
}

/// The apply log's "delta: F bytes read from the bundle, C copied from seeds, P already in
/// place" numbers.
pub(crate) fn delta_counts(out: &str) -> [u64; 3] {
    let line = out
        .lines()
        .find(|l| l.contains("delta: "))
        .unwrap_or_else(|| panic!("no delta line in {out}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    [nums[0], nums[1], nums[2]]
}

fn all_output(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn delta_apply_reads_only_missing_chunks_and_installs() {
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let p = plan(&env, &disk, &v2.bundle, &[]);
    let o = env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]);
    let out = all_output(&o);
    assert!(o.status.success(), "{out}");
    let [fetched, copied, in_place] = delta_counts(&out);
    // What the plan said, and well under the image: one package of three changed.
    let planned: u64 = (0..3).map(|k| u(&p["payloads"][k], "fetchBytes")).sum();
    assert_eq!(fetched, planned, "{out}");
    let size = v2.manifest.payload(PayloadKind::Rootfs).size;
    assert!(fetched * 2 < size, "{out}");
    assert!(copied > 0);
    assert_eq!(in_place, 0);
    for kind in PayloadKind::ORDER {
        let len = v2.manifest.payload(kind).size;
        let got = match kind {
            PayloadKind::Rootfs => partition_sha256(&disk, "root-b", len),
            PayloadKind::Kernel => sha256_bytes(&mtype(&disk, "b/vmlinuz")),
            PayloadKind::Initrd => sha256_bytes(&mtype(&disk, "b/initrd")),
        };
        assert_eq!(got, payload_sha(&v2.manifest, kind), "{kind}");
    }
    assert_eq!(
        mdir(&disk, "loader/entries"),
        ["slot-a.conf", "slot-b+3.conf"]
    );
    fsck_esp(&disk).unwrap();
}

#[test]
fn an_unchanged_root_reads_nothing_past_the_index() {
    // The bundle's payload bytes are all overwritten: the apply can only succeed if it reads
    // none of them (every chunk is in slot a or on the ESP).
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let mut b = std::fs::read(&v1.bundle).unwrap();
    let h = Header::decode(b[..HEADER_LEN].try_into().unwrap()).unwrap();
    for x in &mut b[h.index_end() as usize..] {
        *x = 0xa5;
    }
    let gone = env.path("no-payloads.abu");
    std::fs::write(&gone, &b).unwrap();
    let o = env.abupdate(
        &disk,
        &["apply", "--allow-downgrade", gone.to_str().unwrap()],
    );
    let out = all_output(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(delta_counts(&out)[0], 0, "{out}");
    let size = v1.manifest.payload(PayloadKind::Rootfs).size;
    assert_eq!(
        partition_sha256(&disk, "root-b", size),
        payload_sha(&v1.manifest, PayloadKind::Rootfs)
    );
    assert_eq!(
        sha256_bytes(&mtype(&disk, "b/vmlinuz")),
        payload_sha(&v1.manifest, PayloadKind::Kernel)
    );
}

#[test]
fn a_fetched_chunk_that_does_not_match_the_index_is_refused() {
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let size = v1.manifest.payload(PayloadKind::Rootfs).size;
    let slot_a = partition_sha256(&disk, "root-a", size);
    let entry_a = mtype(&disk, "loader/entries/slot-a.conf");
    // Every root payload byte is damaged: the chunks slot a holds are still copied, the first
    // one that must come from the bundle fails its check.
    let mut b = std::fs::read(&v2.bundle).unwrap();
    let r = v2.manifest.payload(PayloadKind::Rootfs);
    for x in &mut b[r.offset as usize..r.end() as usize] {
        *x ^= 0x5a;
    }
    let bad = env.path("bad-root.abu");
    std::fs::write(&bad, &b).unwrap();
    let err = fails(&env.abupdate(&disk, &["apply", bad.to_str().unwrap()]), 18);
    assert!(err.contains("payload rootfs is corrupt"), "{err}");
    // The running slot and its entry are untouched; slot b has no entry.
    assert_eq!(partition_sha256(&disk, "root-a", size), slot_a);
    assert_eq!(mdir(&disk, "loader/entries"), ["slot-a.conf"]);
    assert_eq!(mtype(&disk, "loader/entries/slot-a.conf"), entry_a);
    fsck_esp(&disk).unwrap();
}

#[test]
fn a_rerun_after_a_cut_keeps_what_is_in_place() {
    // Slot b holds v2's slot index and the first half of v2's root (an apply cut short): the
    // re-run writes only the rest and reads back the whole slot.
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let (start, _) = partition(&disk, "root-b");
    let bundle = std::fs::read(&v2.bundle).unwrap();
    let r = v2.manifest.payload(PayloadKind::Rootfs);
    let half = r.size / 2;
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &f,
        &bundle[r.offset as usize..(r.offset + half) as usize],
        start,
    )
    .unwrap();
    // The apply wrote the slot index of v2 before the image.
    put_record(&disk, "root-b", r.size, &record_of(&v2));
    let o = env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]);
    let out = all_output(&o);
    assert!(o.status.success(), "{out}");
    let [_, _, in_place] = delta_counts(&out);
    // All of the written half but the chunk cut across the boundary (at most 64 KiB).
    assert!(in_place + 64 * 1024 >= half && in_place <= half, "{out}");
    assert_eq!(
        partition_sha256(&disk, "root-b", r.size),
        payload_sha(&v2.manifest, PayloadKind::Rootfs)
    );
}

/// v1 and a v2 where the first and the last of three packages changed (two separate ranges).
fn two_change_pair(env: &Env) -> (Build, Build) {
    let v1 = build(env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let f = [
        ("nix/store/aaaa-one/lib/libone.so", text(900_000, 51)),
        ("nix/store/bbbb-two/lib/libtwo.so", text(900_000, 12)),
        ("nix/store/cccc-three/lib/libthree.so", text(900_000, 53)),
    ];
    let refs: Vec<(&str, &[u8])> = f.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    let v2 = env.build_with("2026.12.2", 1, 64 * 1024, &refs, abbundle::FORMAT_VERSION);
    (v1, v2)
}

#[test]
fn http_delta_fetches_only_the_planned_ranges() {
    let env = Env::new();
    let (v1, v2) = two_change_pair(&env);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let p = plan(&env, &disk, &v2.bundle, &[]);
    let (url, served) = range_server(std::fs::read(&v2.bundle).unwrap(), Serve::Ranges);
    let o = env.abupdate(&disk, &["apply", &url]);
    let out = all_output(&o);
    assert!(o.status.success(), "{out}");
    let s = served.lock().unwrap();
    // Exactly the plan's ranges, and its front as one range request of the first 64 KiB
    // (the front here is smaller): no GET of the whole bundle.
    let planned: u64 = (0..3).map(|k| u(&p["payloads"][k], "readBytes")).sum();
    let front = u(&p, "frontBytes");
    assert!(front < 65536, "{p}");
    assert_eq!(s.range_bytes, planned + 65536, "{p}");
    assert_eq!(s.range_requests, u(&p, "requests"), "{p}");
    assert!(s.range_requests >= 3, "{p}");
    assert_eq!(s.sent_bytes, s.range_bytes, "{p}");
    let size = v2.manifest.payload(PayloadKind::Rootfs).size;
    assert!(s.range_bytes * 2 < size);
    assert_eq!(delta_counts(&out)[0], u(&p["payloads"][0], "fetchBytes"));
    assert_eq!(
        partition_sha256(&disk, "root-b", size),
        payload_sha(&v2.manifest, PayloadKind::Rootfs)
    );
    eprintln!(
        "{} range requests on {} connections (the first GET included)",
        s.range_requests, s.connections
    );
}

#[test]
fn a_server_without_ranges_gets_the_full_stream() {
    let env = Env::new();
    let (v1, v2) = two_change_pair(&env);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let (url, served) = range_server(std::fs::read(&v2.bundle).unwrap(), Serve::NoRanges);
    let o = env.abupdate(&disk, &["apply", &url]);
    let out = all_output(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("does not answer range requests"), "{out}");
    assert!(!out.contains("delta: "), "{out}");
    assert_eq!(served.lock().unwrap().range_requests, 0);
    let size = v2.manifest.payload(PayloadKind::Rootfs).size;
    assert_eq!(
        partition_sha256(&disk, "root-b", size),
        payload_sha(&v2.manifest, PayloadKind::Rootfs)
    );
}

#[test]
fn a_wrong_range_or_a_new_etag_is_refused() {
    let env = Env::new();
    let (v1, v2) = two_change_pair(&env);
    for (mode, says) in [
        (
            Serve::Fault {
                from: 1,
                fault: Fault::WrongRange,
            },
            "where",
        ),
        (
            Serve::Fault {
                from: 2,
                fault: Fault::NewEtag,
            },
            "changed on the server",
        ),
    ] {
        let disk = env.path("disk.img");
        copy_image(&v1.image, &disk);
        let size = v1.manifest.payload(PayloadKind::Rootfs).size;
        let slot_a = partition_sha256(&disk, "root-a", size);
        let (url, _) = range_server(std::fs::read(&v2.bundle).unwrap(), mode);
        let err = fails(&env.abupdate(&disk, &["apply", &url]), 41);
        assert!(err.contains(says), "{err}");
        assert_eq!(partition_sha256(&disk, "root-a", size), slot_a);
        assert_eq!(mdir(&disk, "loader/entries"), ["slot-a.conf"]);
        fsck_esp(&disk).unwrap();
    }
}

#[test]
fn a_plan_that_would_read_most_of_the_bundle_takes_the_full_stream() {
    // Unrelated contents (incompressible noise of other seeds): nearly every chunk is new.
    let env = Env::new();
    let v1 = env.build("2026.12.1", 1, 64 * 1024);
    let v2 = env.build("2026.12.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let p = plan(&env, &disk, &v2.bundle, &[]);
    assert_eq!(p["mode"], "full", "{p}");
    assert_eq!(u(&p, "readBytes"), u(&p, "bundleBytes"));
    let o = env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]);
    let out = all_output(&o);
    assert!(o.status.success(), "{out}");
    assert!(!out.contains("delta: "), "{out}");
}

/// What a failed apply must leave as it was: the running slot, its boot entry, the ESP.
#[derive(Debug, PartialEq)]
struct Running {
    root_a: String,
    entries: Vec<String>,
    entry_a: Vec<u8>,
    esp: String,
}

fn running(disk: &Path) -> Running {
    let (_, a_len) = partition(disk, "root-a");
    let (_, esp_len) = partition(disk, "esp");
    Running {
        root_a: partition_sha256(disk, "root-a", a_len),
        entries: mdir(disk, "loader/entries"),
        entry_a: mtype(disk, "loader/entries/slot-a.conf"),
        esp: partition_sha256(disk, "esp", esp_len),
    }
}

/// Slot b holds `b` exactly: root, kernel, initrd, and boots next.
fn assert_installed(disk: &Path, b: &Build) {
    for kind in PayloadKind::ORDER {
        let len = b.manifest.payload(kind).size;
        let got = match kind {
            PayloadKind::Rootfs => partition_sha256(disk, "root-b", len),
            PayloadKind::Kernel => sha256_bytes(&mtype(disk, "b/vmlinuz")),
            PayloadKind::Initrd => sha256_bytes(&mtype(disk, "b/initrd")),
        };
        assert_eq!(got, payload_sha(&b.manifest, kind), "{kind}");
    }
    assert_eq!(
        mdir(disk, "loader/entries"),
        ["slot-a.conf", "slot-b+3.conf"]
    );
    fsck_esp(disk).unwrap();
}

/// An env sharing nothing but the test key with the builds, with these HTTP limits.
fn limited(window: u64, timeout: u64) -> Env {
    let env = Env::new();
    crate::sources::set_http_limits(&env, 0, window, timeout);
    env
}

#[test]
fn a_stalled_range_request_ends_on_the_http_limits() {
    let env = Env::new();
    let (v1, v2) = two_change_pair(&env);
    let bundle = std::fs::read(&v2.bundle).unwrap();
    // (fault, at which range request, http-rate-window, http-timeout, what the error says,
    // the limit that ends it)
    let cases = [
        // Half of the second planned range (request 3: the front is the first), then
        // silence with the socket open: one window.
        (
            Fault::StallBody,
            3,
            2,
            600,
            "sent nothing for 2 s",
            "http-rate-window",
            2,
        ),
        // The second planned range (on a kept-alive connection) never answered: one window.
        (
            Fault::StallHead,
            3,
            2,
            600,
            "sent nothing for 2 s",
            "http-rate-window",
            2,
        ),
        // The first request (the front) never answered, a window longer than the whole
        // deadline: the deadline.
        (
            Fault::StallHead,
            1,
            120,
            4,
            "no response within 4 s",
            "http-timeout",
            4,
        ),
    ];
    for (fault, from, window, timeout, says, key, limit) in cases {
        let run = limited(window, timeout);
        let disk = run.path("disk.img");
        copy_image(&v1.image, &disk);
        let before = running(&disk);
        let (url, served) = range_server(bundle.clone(), Serve::Fault { from, fault });
        let (out, took) = crate::sources::run_bounded(&run, &disk, &["apply", &url]);
        let err = fails(&out, 41);
        assert!(
            err.contains(says) && err.contains(&format!("({key})")),
            "{fault:?}: {err}"
        );
        assert!(
            took >= Duration::from_secs(limit) && took < Duration::from_secs(limit + 10),
            "{fault:?}: took {took:?}"
        );
        // Ranges are fetched ahead on several connections: the faulty one and maybe more.
        assert!(served.lock().unwrap().range_requests >= from, "{fault:?}");
        assert_eq!(running(&disk), before, "{fault:?}");
    }
}

#[test]
fn a_bad_range_reply_mid_apply_is_refused_and_a_rerun_installs() {
    // Each fault comes at the third range request (the first is the bundle's front), after
    // the first planned range was served whole and slot b is being written.
    let env = Env::new();
    let (v1, v2) = two_change_pair(&env);
    let bundle = std::fs::read(&v2.bundle).unwrap();
    for (fault, says) in [
        (Fault::WrongRange, "where"),
        (Fault::OtherBytes, "where"),
        (Fault::OtherTotal, "where"),
        (Fault::ShortLength, "the server sent a short range"),
        (Fault::ShortClosed, "b.abu"),
    ] {
        let disk = env.path("disk.img");
        copy_image(&v1.image, &disk);
        let before = running(&disk);
        let (url, served) = range_server(bundle.clone(), Serve::Fault { from: 3, fault });
        let err = fails(&env.abupdate(&disk, &["apply", &url]), 41);
        assert!(err.contains(says), "{fault:?}: {err}");
        assert!(err.contains("slot b has no boot entry"), "{fault:?}: {err}");
        {
            let s = served.lock().unwrap();
            // The fault was served (ranges are fetched ahead: later ones may have been too).
            assert!(s.range_requests >= 3, "{fault:?}: {s:?}");
        }
        // Slot a, its entry and the whole ESP as they were: slot a still boots.
        assert_eq!(running(&disk), before, "{fault:?}");
        // The same apply from a server that behaves installs v2.
        let (url, _) = range_server(bundle.clone(), Serve::Ranges);
        let o = env.abupdate(&disk, &["apply", &url]);
        assert!(o.status.success(), "{fault:?}: {}", all_output(&o));
        assert_installed(&disk, &v2);
    }
}

/// v1 and a v2 (one package changed) with 4 KiB fixed chunks and a 3 MB file: the manifest's
/// chunk table alone is larger than the first request's 64 KiB.
fn big_front_pair(env: &Env) -> (Build, Build) {
    // Slots of 8 MiB: the root is about 5 MiB.
    let def = std::fs::read_to_string(env.path("image.toml")).unwrap();
    let bigger = def
        .replace(r#"slot-size = "4MiB""#, r#"slot-size = "8MiB""#)
        .replace(r#"disk-size = "48MiB""#, r#"disk-size = "56MiB""#);
    assert_ne!(def, bigger);
    std::fs::write(env.path("image.toml"), bigger).unwrap();
    let mut out = Vec::new();
    for (version, changed) in [("2026.12.1", false), ("2026.12.2", true)] {
        let mut f = files(changed);
        f.push(("nix/store/dddd-big/lib/libbig.so", noise(3_000_000, 7)));
        let refs: Vec<(&str, &[u8])> = f.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        out.push(env.build_with(version, 1, 4096, &refs, abbundle::FORMAT_VERSION));
    }
    let v2 = out.pop().unwrap();
    (out.pop().unwrap(), v2)
}

/// RFC 9110 lets any server or cache ignore Range on any request: a server that answers the
/// front's range with 206 and a later request with 200 (the whole bundle), or redirects a later
/// range, still gets the bundle installed, on every path: a delta (the 200 or redirect at the
/// first planned range, before anything is written, or mid-apply), `--full`, a format 1
/// bundle, a front over 64 KiB (the 200 at its second request). Before, each of these exited 41
/// after slot b had lost its entry, and so did every retry.
#[test]
fn a_server_that_stops_answering_ranges_mid_apply_still_installs() {
    let env = Env::new();
    let (v1, v2) = two_change_pair(&env);
    let f1 = build(&env, "2026.12.11", false, abbundle::FORMAT_V1);
    let f2 = build(&env, "2026.12.12", true, abbundle::FORMAT_V1);
    let big = Env::new();
    let (b1, b2) = big_front_pair(&big);
    let disk = env.path("disk.img");
    copy_image(&b1.image, &disk);
    let p = plan(&big, &disk, &b2.bundle, &[]);
    assert!(u(&p, "frontBytes") > 65536, "{p}");
    assert_eq!(p["mode"], "delta", "{p}");
    // (what, env, old, new, extra arguments, from which range request the server misbehaves)
    type Case<'a> = (&'a str, &'a Env, &'a Build, &'a Build, &'a [&'a str], u64);
    let cases: [Case; 5] = [
        ("delta, first planned range", &env, &v1, &v2, &[], 2),
        ("delta, mid-apply", &env, &v1, &v2, &[], 3),
        ("--full", &env, &v1, &v2, &["--full"], 2),
        ("format 1", &env, &f1, &f2, &[], 2),
        ("front over 64 KiB", &big, &b1, &b2, &[], 2),
    ];
    for (what, env, old, new, extra, from) in cases {
        for fault in [Fault::Whole, Fault::Redirect] {
            copy_image(&old.image, &disk);
            let bundle = std::fs::read(&new.bundle).unwrap();
            let (url, served) = range_server(bundle, Serve::Fault { from, fault });
            let mut args = vec!["apply"];
            args.extend_from_slice(extra);
            args.push(&url);
            let o = env.abupdate(&disk, &args);
            let out = all_output(&o);
            assert!(o.status.success(), "{what}, {fault:?}: {out}");
            assert_installed(&disk, new);
            let s = served.lock().unwrap();
            assert!(s.range_requests >= from, "{what}, {fault:?}: {s:?}");
        }
    }
}

/// A full stream over HTTP (`--full`, a format 1 bundle) asks for the rest of the bundle after
/// the front before anything is written: a server that answers that request badly (another
/// range, an error status) is refused with 41 and the disk is byte-identical. Before, the
/// request came once slot b had lost its entry.
#[test]
fn a_bad_reply_to_the_rest_of_a_full_stream_changes_nothing() {
    let env = Env::new();
    let (v1, v2) = two_change_pair(&env);
    let f2 = build(&env, "2026.12.12", true, abbundle::FORMAT_V1);
    let disk = env.path("disk.img");
    for (bundle, extra) in [(&v2, &["--full"][..]), (&f2, &[][..])] {
        for fault in [Fault::WrongRange, Fault::OtherTotal] {
            copy_image(&v1.image, &disk);
            let before = sha256_file(&disk);
            let body = std::fs::read(&bundle.bundle).unwrap();
            let (url, served) = range_server(body, Serve::Fault { from: 2, fault });
            let mut args = vec!["apply"];
            args.extend_from_slice(extra);
            args.push(&url);
            let err = fails(&env.abupdate(&disk, &args), 41);
            assert!(
                err.contains("where") && err.ends_with("nothing was changed"),
                "{fault:?} {extra:?}: {err}"
            );
            assert_eq!(served.lock().unwrap().range_requests, 2, "{fault:?}");
            assert_eq!(
                sha256_file(&disk),
                before,
                "{fault:?} {extra:?}: the disk changed"
            );
        }
    }
}

/// `verify` reads a URL by ranges too: a 200 (or a redirect) after the first 206 is read on,
/// for a front under and over 64 KiB and a format 1 bundle.
#[test]
fn verify_reads_on_when_the_server_stops_answering_ranges() {
    let env = Env::new();
    let small = RawBundle::default().bytes();
    let big = RawBundle {
        sizes: [4_000_000, 50_000, 30_000],
        chunk_size: 4096,
        ..Default::default()
    }
    .bytes();
    let h = Header::decode(big[..HEADER_LEN].try_into().unwrap()).unwrap();
    assert!(h.index_end() > 65536, "{h:?}");
    let v1 = RawBundle {
        format: abbundle::FORMAT_V1,
        ..Default::default()
    }
    .bytes();
    for bundle in [small, big, v1] {
        for fault in [Fault::Whole, Fault::Redirect] {
            let (url, served) = range_server(bundle.clone(), Serve::Fault { from: 2, fault });
            let out = ok(&env.abupdate(&env.path("no-disk"), &["verify", &url]));
            assert!(out.starts_with("OK: "), "{fault:?}: {out}");
            assert!(served.lock().unwrap().range_requests >= 2, "{fault:?}");
        }
    }
}

/// v1 and a v2 where the first and the last of three incompressible packages changed: what is
/// fetched spans several of the slot's write batches (1 MiB), so a cut late in the apply comes
/// after some fetched chunks were written.
fn noise_pair(env: &Env) -> (Build, Build) {
    let pkgs = |a: u64, c: u64| {
        [
            ("nix/store/aaaa-one/lib/libone.so", noise(600_000, a)),
            ("nix/store/bbbb-two/lib/libtwo.so", noise(600_000, 62)),
            ("nix/store/cccc-three/lib/libthree.so", noise(600_000, c)),
        ]
    };
    let mut out = Vec::new();
    for (version, f) in [("2026.12.1", pkgs(61, 63)), ("2026.12.2", pkgs(71, 73))] {
        let refs: Vec<(&str, &[u8])> = f.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        out.push(env.build_with(version, 1, 64 * 1024, &refs, abbundle::FORMAT_VERSION));
    }
    let v2 = out.pop().unwrap();
    (out.pop().unwrap(), v2)
}

/// The plan's ranges are asked for ahead of need, several at once on their own connections,
/// so a link's round trips overlap (issue 21): with every reply held back 300 ms, more than
/// one range request is open at a time, and the slot still installs exactly. Before, each
/// range was asked for only when the writer reached it (one at a time).
#[test]
fn ranges_are_fetched_side_by_side() {
    let env = Env::new();
    let (v1, v2) = noise_pair(&env);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let p = plan(&env, &disk, &v2.bundle, &[]);
    assert!(u(&p, "requests") >= 4, "{p}");
    let (url, served) = range_server(std::fs::read(&v2.bundle).unwrap(), Serve::Delayed(300));
    let o = env.abupdate(&disk, &["apply", &url]);
    assert!(o.status.success(), "{}", all_output(&o));
    let s = served.lock().unwrap();
    assert!(s.most_in_flight >= 2, "{s:?}");
    assert_eq!(s.range_requests, u(&p, "requests"), "{s:?} {p}");
    assert_installed(&disk, &v2);
}

#[test]
fn an_http_apply_cut_short_fetches_only_what_is_missing_when_run_again() {
    let env = Env::new();
    let (v1, v2) = noise_pair(&env);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let fresh = plan(&env, &disk, &v2.bundle, &[]);
    assert_eq!(fresh["mode"], "delta", "{fresh}");
    let planned: u64 = (0..3).map(|k| u(&fresh["payloads"][k], "readBytes")).sum();
    let bundle = std::fs::read(&v2.bundle).unwrap();
    // The connection is lost in the last changed package (the third of the root image): the
    // first one's chunks were fetched and written before.
    let root = v2.manifest.payload(PayloadKind::Rootfs);
    let (url, served) = range_server(
        bundle.clone(),
        Serve::CutAt(root.offset + root.size * 9 / 10),
    );
    let err = fails(&env.abupdate(&disk, &["apply", &url]), 41);
    assert!(err.contains("slot b has no boot entry"), "{err}");
    let cut = served.lock().unwrap().sent_bytes;
    assert!(cut < planned, "sent {cut} of {planned}");
    assert_eq!(mdir(&disk, "loader/entries"), ["slot-a.conf"]);
    // The same apply again, from a server that behaves: what was written before the cut is
    // not fetched again.
    let (url, served) = range_server(bundle, Serve::Ranges);
    let o = env.abupdate(&disk, &["apply", &url]);
    assert!(o.status.success(), "{}", all_output(&o));
    let again = served.lock().unwrap().sent_bytes;
    eprintln!("a fresh apply fetches {planned} bytes; cut after {cut}, the re-run fetched {again}");
    assert!(
        again < planned,
        "re-run fetched {again}, a fresh apply {planned}"
    );
    assert_installed(&disk, &v2);
}

#[test]
fn full_reads_the_whole_stream_without_a_seed_scan() {
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    // Without --full this pair plans a delta (dry_run_reads_only_what_changed).
    let p = plan(&env, &disk, &v2.bundle, &["--full"]);
    assert_eq!(p["mode"], "full", "{p}");
    assert_eq!(p["reason"], "asked for with --full", "{p}");
    assert_eq!(u(&p, "readBytes"), u(&p, "bundleBytes"));
    assert_eq!(
        p["seeds"].as_array().unwrap().len(),
        0,
        "no seed scanned: {p}"
    );
    let text = ok(&env.abupdate(
        &disk,
        &["apply", "--dry-run", "--full", v2.bundle.to_str().unwrap()],
    ));
    assert!(
        text.contains("full stream (asked for with --full)"),
        "{text}"
    );
    let o = env.abupdate(&disk, &["apply", "--full", v2.bundle.to_str().unwrap()]);
    let out = all_output(&o);
    assert!(o.status.success(), "{out}");
    // The full stream's line, not the delta's counts.
    let size = v2.manifest.payload(PayloadKind::Rootfs).size;
    assert!(
        out.contains(&format!("slot b: {size} bytes written and read back\n")),
        "{out}"
    );
    assert!(!out.contains("delta: "), "{out}");
    assert_eq!(
        partition_sha256(&disk, "root-b", size),
        payload_sha(&v2.manifest, PayloadKind::Rootfs)
    );
    assert_eq!(
        sha256_bytes(&mtype(&disk, "b/vmlinuz")),
        payload_sha(&v2.manifest, PayloadKind::Kernel)
    );
    fsck_esp(&disk).unwrap();
}

/// The seed index stored after `m`'s root in partition `label` of `disk`: its entries, read
/// by the record's layout (`abbundle::slot_index`).
fn stored_entries(disk: &Path, label: &str, m: &abbundle::Manifest) -> Vec<abbundle::index::Entry> {
    use abbundle::slot_index;
    let (start, _) = partition(disk, label);
    let root = m.payload(PayloadKind::Rootfs);
    let img = std::fs::read(disk).unwrap();
    let at = (start + slot_index::offset(root.size)) as usize;
    assert_eq!(&img[at..at + 8], b"ABSLTIDX", "no seed index in {label}");
    let n = u64::from_le_bytes(img[at + 56..at + 64].try_into().unwrap()) as usize;
    img[at + 64..at + 64 + n * 36]
        .chunks(36)
        .map(|e| abbundle::index::Entry {
            len: u32::from_le_bytes(e[..4].try_into().unwrap()),
            digest: abbundle::Digest(e[4..].try_into().unwrap()),
        })
        .collect()
}

/// Writes `record` where partition `label` keeps the seed index of an image of `size` bytes.
fn put_record(disk: &Path, label: &str, size: u64, record: &[u8]) {
    let (start, _) = partition(disk, label);
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &f,
        record,
        start + abbundle::slot_index::offset(size),
    )
    .unwrap();
}

fn seed_names(p: &Value) -> Vec<String> {
    p["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_staying_slot_is_read_by_its_stored_index() {
    // abbuild stores slot a's seed index (the signed index's root entries) after the image:
    // the plan reads that record, not the slot, and finds what a scan of the slot finds.
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let root1 = v1.manifest.payload(PayloadKind::Rootfs);
    let entries = stored_entries(&disk, "root-a", &v1.manifest);
    // The record holds exactly the bundle's index entries of the root.
    let bundle = std::fs::read(&v1.bundle).unwrap();
    let cut = abbundle::index::cut(&bundle[root1.offset as usize..root1.end() as usize]).unwrap();
    assert_eq!(entries, cut);
    let stored = plan(&env, &disk, &v2.bundle, &[]);
    let names = seed_names(&stored);
    assert!(names.contains(&"slot a (stored index)".into()), "{stored}");
    let record_len = abbundle::slot_index::record_len(entries.len() as u64);
    assert_eq!(
        u(&stored["seeds"][1], "scannedBytes"),
        record_len,
        "{stored}"
    );
    assert!(record_len * 50 < root1.size);
    let text = ok(&env.abupdate(&disk, &["apply", "--dry-run", v2.bundle.to_str().unwrap()]));
    assert!(text.contains("seed slot a (stored index)"), "{text}");

    // A record that fails its checksum is ignored: the slot is scanned, with the same result.
    let mut bad = abbundle::slot_index::encode(root1.size, &root1.sha256, &entries);
    bad[64 + 36 + 5] ^= 1;
    put_record(&disk, "root-a", root1.size, &bad);
    let scanned = plan(&env, &disk, &v2.bundle, &[]);
    assert!(
        seed_names(&scanned).contains(&"slot a (scanned)".into()),
        "{scanned}"
    );
    assert!(u(&scanned["seeds"][1], "scannedBytes") >= root1.size);
    for k in ["fetchBytes", "copyBytes", "requests"] {
        assert_eq!(
            u(&scanned["payloads"][0], k),
            u(&stored["payloads"][0], k),
            "{k}"
        );
    }

    // A valid record of another image (v2's root, where slot a's info.json says v1) is
    // ignored too.
    let root2 = v2.manifest.payload(PayloadKind::Rootfs);
    let b2 = std::fs::read(&v2.bundle).unwrap();
    let e2 = abbundle::index::cut(&b2[root2.offset as usize..root2.end() as usize]).unwrap();
    let other = abbundle::slot_index::encode(root2.size, &root2.sha256, &e2);
    // Put where slot a's own would be, so only what it describes tells it apart.
    put_record(&disk, "root-a", root1.size, &other);
    let p = plan(&env, &disk, &v2.bundle, &[]);
    assert!(seed_names(&p).contains(&"slot a (scanned)".into()), "{p}");
}

#[test]
fn a_stored_index_that_lies_still_installs_the_signed_image() {
    // The stored index is not trusted: a chunk it places wrongly, or one the slot no longer
    // holds, fails its check against the new signed index and is read from the bundle.
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let root1 = v1.manifest.payload(PayloadKind::Rootfs);
    let root2 = v2.manifest.payload(PayloadKind::Rootfs);
    let clean = env.path("clean.img");
    copy_image(&v1.image, &clean);
    let entries = stored_entries(&clean, "root-a", &v1.manifest);

    // (1) The entries reversed (each chunk's offset is wrong), the checksum rewritten so the
    // record is valid; (2) a byte of slot a flipped in a chunk v2 shares.
    let lying = env.path("lying.img");
    copy_image(&v1.image, &lying);
    let mut rev = entries.clone();
    rev.reverse();
    put_record(
        &lying,
        "root-a",
        root1.size,
        &abbundle::slot_index::encode(root1.size, &root1.sha256, &rev),
    );
    let flipped = env.path("flipped.img");
    copy_image(&v1.image, &flipped);
    {
        let (start, _) = partition(&flipped, "root-a");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&flipped)
            .unwrap();
        use std::os::unix::fs::FileExt;
        let mut b = [0u8];
        // Inside the first chunk of slot a that v2 shares (so the plan copies it).
        let e2 = abbundle::index::cut(
            &std::fs::read(&v2.bundle).unwrap()[root2.offset as usize..root2.end() as usize],
        )
        .unwrap();
        let mut at = 0u64;
        let shared = entries
            .iter()
            .find_map(|e| {
                let hit = e2.iter().any(|x| x.digest == e.digest);
                let r = hit.then_some(at);
                at += e.len as u64;
                r
            })
            .expect("v2 shares a chunk with v1");
        f.read_exact_at(&mut b, start + shared + 100).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], start + shared + 100)
            .unwrap();
    }
    for disk in [&lying, &flipped] {
        let p = plan(&env, disk, &v2.bundle, &[]);
        assert!(
            seed_names(&p).contains(&"slot a (stored index)".into()),
            "{p}"
        );
        let o = env.abupdate(disk, &["apply", v2.bundle.to_str().unwrap()]);
        let out = all_output(&o);
        assert!(o.status.success(), "{out}");
        assert!(out.contains("the seed no longer holds it"), "{out}");
        // More was read from the bundle than planned: the chunks the record misplaced.
        let planned: u64 = (0..3).map(|k| u(&p["payloads"][k], "fetchBytes")).sum();
        assert!(delta_counts(&out)[0] > planned, "{out}");
        assert_eq!(
            partition_sha256(disk, "root-b", root2.size),
            payload_sha(&v2.manifest, PayloadKind::Rootfs)
        );
    }
}

#[test]
fn every_install_of_a_format_2_bundle_stores_the_slot_index() {
    // Delta and full stream alike: slot b then carries v2's root entries, and a plan made from
    // slot b (booted there) reads them instead of the slot.
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let root2 = v2.manifest.payload(PayloadKind::Rootfs);
    let b2 = std::fs::read(&v2.bundle).unwrap();
    let want = abbundle::index::cut(&b2[root2.offset as usize..root2.end() as usize]).unwrap();
    // v3: another package changes (slot a's v1 is no copy of it).
    let f = [
        ("nix/store/aaaa-one/lib/libone.so", text(900_000, 71)),
        ("nix/store/bbbb-two/lib/libtwo.so", text(900_000, 99)),
        ("nix/store/cccc-three/lib/libthree.so", text(900_000, 13)),
    ];
    let refs: Vec<(&str, &[u8])> = f.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    let v3 = env.build_with("2026.12.3", 1, 64 * 1024, &refs, abbundle::FORMAT_VERSION);
    for extra in [None, Some("--full")] {
        let disk = env.path("disk.img");
        copy_image(&v1.image, &disk);
        let mut args = vec!["apply"];
        args.extend(extra);
        args.push(v2.bundle.to_str().unwrap());
        ok(&env.abupdate(&disk, &args));
        assert_eq!(
            stored_entries(&disk, "root-b", &v2.manifest),
            want,
            "{extra:?}"
        );
        ok(&env.abupdate_booted(&disk, Some("b"), &["mark-good"]));
        let out = ok(&env.abupdate_booted(
            &disk,
            Some("b"),
            &["apply", "--dry-run", v3.bundle.to_str().unwrap()],
        ));
        assert!(out.contains("seed slot b (stored index)"), "{out}");
    }
}

/// Needs the fault-injection build: `cargo test -p abupdate --features fault-injection --test
/// integration delta`.
#[cfg(feature = "fault-injection")]
#[test]
fn a_rerun_after_a_real_cut_resumes_in_place() {
    // An apply stopped dead right after its first slot write (fault injection, as a power
    // cut): the re-run checks slot b in place by the slot index the cut apply left, keeps what
    // it wrote, and installs v2.
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    let bundle = v2.bundle.to_str().unwrap();
    let cut = (1..200)
        .find(|n| {
            copy_image(&v1.image, &disk);
            let o = env
                .cmd(&disk, None, &["apply", bundle])
                .env("ABUPDATE_FAULT_AFTER", n.to_string())
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stderr).contains("(slot write)")
        })
        .expect("a cut after a slot write");
    let p = plan(&env, &disk, &v2.bundle, &[]);
    assert!(seed_names(&p)[0].contains("in place"), "cut at {cut}: {p}");
    let o = env.abupdate(&disk, &["apply", bundle]);
    let out = all_output(&o);
    assert!(o.status.success(), "{out}");
    assert!(delta_counts(&out)[2] > 0, "nothing kept in place: {out}");
    let size = v2.manifest.payload(PayloadKind::Rootfs).size;
    assert_eq!(
        partition_sha256(&disk, "root-b", size),
        payload_sha(&v2.manifest, PayloadKind::Rootfs)
    );
}

/// The slot index an apply of `b` writes into its target before the image.
fn record_of(b: &Build) -> Vec<u8> {
    let r = b.manifest.payload(PayloadKind::Rootfs);
    let bundle = std::fs::read(&b.bundle).unwrap();
    let entries = abbundle::index::cut(&bundle[r.offset as usize..r.end() as usize]).unwrap();
    abbundle::slot_index::encode(r.size, &r.sha256, &entries)
}

/// `b` with its signed manifest text edited by `edit` (same length, so every offset stays) and
/// signed again with the test key: only what was edited is wrong.
fn resigned(b: &[u8], edit: impl FnOnce(&str) -> String) -> Vec<u8> {
    use abbundle::{SecretKey, Signer};
    let h = Header::decode(b[..HEADER_LEN].try_into().unwrap()).unwrap();
    let m = HEADER_LEN..HEADER_LEN + h.manifest_len as usize;
    let text = std::str::from_utf8(&b[m.clone()]).unwrap();
    let new = edit(text);
    assert_eq!(new.len(), text.len());
    assert_ne!(new, text);
    let mut out = b.to_vec();
    out[m.clone()].copy_from_slice(new.as_bytes());
    let key = SecretKey::from_seed(TEST_ONLY_SEED, "test-only");
    out[m.end + 8..m.end + 72].copy_from_slice(&key.sign(new.as_bytes()));
    out
}

/// `text` with its one occurrence of `old` replaced by another string of the same length.
fn replace_once(text: &str, old: &str, new: &str) -> String {
    assert_eq!(old.len(), new.len());
    assert_eq!(text.matches(old).count(), 1, "{old} in {text}");
    text.replace(old, new)
}

/// Another hex digest than `d`, of the same length.
fn other_hex(d: &str) -> String {
    d.chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect()
}

/// `b` (format 2) with index entry `k`'s digest changed, and the manifest's digest of the
/// index (signed again) made to match: a validly signed index that disagrees with the payload.
fn wrong_index_entry(b: &[u8], k: usize) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let h = Header::decode(b[..HEADER_LEN].try_into().unwrap()).unwrap();
    let index = h.signatures_end() as usize..h.index_end() as usize;
    let old = hex::encode(Sha256::digest(&b[index.clone()]));
    let mut out = b.to_vec();
    out[index.start + k * abbundle::index::ENTRY_LEN + 4] ^= 0x01;
    let new = hex::encode(Sha256::digest(&out[index]));
    resigned(&out, |t| replace_once(t, &old, &new))
}

/// The signed CDC index is checked against the payloads by `verify` (exit 10, the bundle was
/// built wrong), in the same read as the signed table and the whole-file sha256: a first and a
/// last entry that disagree with their (correct) bytes. Before, such a bundle verified (rc 0),
/// installed with --full, and failed a delta with 18 after the target lost its entry.
#[test]
fn verify_checks_the_chunk_index_against_the_payloads() {
    let env = Env::new();
    let good = RawBundle::default().bytes();
    let path = env.path("b.abu");
    std::fs::write(&path, &good).unwrap();
    let out = ok(&env.abupdate(&env.path("no-disk"), &["verify", path.to_str().unwrap()]));
    assert!(out.starts_with("OK: "), "{out}");
    let h = Header::decode(good[..HEADER_LEN].try_into().unwrap()).unwrap();
    let last = h.index_len as usize / abbundle::index::ENTRY_LEN - 1;
    for (k, kind) in [(0, "rootfs"), (last, "initrd")] {
        std::fs::write(&path, wrong_index_entry(&good, k)).unwrap();
        let err = fails(
            &env.abupdate(&env.path("no-disk"), &["verify", path.to_str().unwrap()]),
            10,
        );
        assert!(
            err.contains(&format!("of the {kind} payload in the signed chunk index"))
                && err.contains("the bundle was built wrong"),
            "{k}: {err}"
        );
    }
}

/// In a delta, the chunks are checked against the signed index, and the slot and boot files
/// after them against the signed table and whole-file sha256. Where the index is right and the
/// table (a root chunk) or a sha256 (the kernel's) is wrong, the bundle is blamed (10), not
/// the medium (37, as before). Slot a and its entry are untouched.
#[test]
fn a_wrong_table_or_sha256_with_a_right_index_is_blamed_on_the_bundle() {
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    assert_eq!(plan(&env, &disk, &v2.bundle, &[])["mode"], "delta");
    let b = std::fs::read(&v2.bundle).unwrap();
    let chunk = v2.manifest.payload(PayloadKind::Rootfs).chunks[0].to_string();
    let kernel = payload_sha(&v2.manifest, PayloadKind::Kernel);
    let field = |d: &str| format!("\"sha256\": \"{d}\"");
    let table = resigned(&b, |t| {
        replace_once(
            t,
            &format!("\"{chunk}\""),
            &format!("\"{}\"", other_hex(&chunk)),
        )
    });
    let sha = resigned(&b, |t| {
        replace_once(t, &field(&kernel), &field(&other_hex(&kernel)))
    });
    // (what, bundle, apply's message, verify's exit code: the reader checks the bytes
    // against the table first, 18)
    for (what, bundle, says, verify) in [
        (
            "table",
            &table,
            "chunk 0 of the rootfs payload in the signed table does not match the image",
            18,
        ),
        (
            "sha256",
            &sha,
            "payload kernel's sha256 does not match its chunks in the signed chunk index",
            10,
        ),
    ] {
        copy_image(&v1.image, &disk);
        let before = running(&disk);
        let path = env.path("wrong.abu");
        std::fs::write(&path, bundle).unwrap();
        let err = fails(&env.abupdate(&disk, &["apply", path.to_str().unwrap()]), 10);
        assert!(err.contains(says), "{what}: {err}");
        assert_eq!(running(&disk).root_a, before.root_a, "{what}");
        assert_eq!(mdir(&disk, "loader/entries"), ["slot-a.conf"], "{what}");
        assert_eq!(
            mtype(&disk, "loader/entries/slot-a.conf"),
            before.entry_a,
            "{what}"
        );
        // verify blames the same bundles.
        fails(
            &env.abupdate(&disk, &["verify", path.to_str().unwrap()]),
            verify,
        );
    }
}

/// The other side of the test above: the right bundle in a delta, on a medium that flips a
/// bit of the first slot write, is still the medium's fault (37).
#[cfg(feature = "fault-injection")]
#[test]
fn a_lying_medium_under_a_delta_is_blamed_on_the_medium() {
    let env = Env::new();
    let v1 = build(&env, "2026.12.1", false, abbundle::FORMAT_VERSION);
    let v2 = build(&env, "2026.12.2", true, abbundle::FORMAT_VERSION);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    assert_eq!(plan(&env, &disk, &v2.bundle, &[])["mode"], "delta");
    let out = env
        .cmd(&disk, None, &["apply", v2.bundle.to_str().unwrap()])
        .env("ABUPDATE_FAULT_LYING_MEDIUM", "1")
        .output()
        .unwrap();
    let err = fails(&out, 37);
    assert!(err.contains("does not read back as written"), "{err}");
    assert_eq!(mdir(&disk, "loader/entries"), ["slot-a.conf"]);
}
