//! Delta updates (format 2): `apply --dry-run` plans from the chunk index and the seeds the
//! disk holds, on abbuild-made squashfs images; a corrupt index is refused before anything is
//! written; a format 1 bundle still installs.

use std::path::Path;

use abbundle::header::{Header, HEADER_LEN};
use abbundle::PayloadKind;
use serde_json::Value;

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
fn delta_counts(out: &str) -> [u64; 3] {
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

/// How the range test server behaves.
#[derive(Clone, Copy, PartialEq)]
enum Serve {
    /// 206 for a Range, 200 without one; keep-alive.
    Ranges,
    /// Always 200 and the whole bundle (a server without Range support).
    NoRanges,
    /// 206 with a Content-Range one byte off from what was asked.
    WrongRange,
    /// A different ETag from the second range request on (the file replaced mid-apply).
    NewEtag,
}

#[derive(Default)]
struct Served {
    connections: u64,
    range_requests: u64,
    range_bytes: u64,
}

/// A small HTTP/1.1 server on 127.0.0.1 serving `body`, one thread per connection, with
/// keep-alive. Returns its port and the counters.
fn range_server(body: Vec<u8>, mode: Serve) -> (u16, std::sync::Arc<std::sync::Mutex<Served>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::Mutex::new(Served::default()));
    let body = std::sync::Arc::new(body);
    let s2 = served.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            s2.lock().unwrap().connections += 1;
            let (body, served) = (body.clone(), s2.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut range = None;
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                            let (a, b) = v.trim().split_once('-').unwrap();
                            range = Some((a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()));
                        }
                    }
                    let total = body.len() as u64;
                    let (head, data): (String, &[u8]) = match range.filter(|_| mode != Serve::NoRanges) {
                        Some((a, b)) => {
                            let n = {
                                let mut s = served.lock().unwrap();
                                s.range_requests += 1;
                                s.range_bytes += b + 1 - a;
                                s.range_requests
                            };
                            let off = u64::from(mode == Serve::WrongRange);
                            let etag = if mode == Serve::NewEtag && n > 1 { "\"v2\"" } else { "\"v1\"" };
                            (
                                format!(
                                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{total}\r\nETag: {etag}\r\n\r\n",
                                    b + 1 - a,
                                    a + off,
                                    b + off
                                ),
                                &body[(a + off) as usize..(b + 1 + off).min(total) as usize],
                            )
                        }
                        None => (
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nETag: \"v1\"\r\n\r\n"),
                            &body[..],
                        ),
                    };
                    if w.write_all(head.as_bytes())
                        .and_then(|()| w.write_all(data))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, served)
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
    let (port, served) = range_server(std::fs::read(&v2.bundle).unwrap(), Serve::Ranges);
    let url = format!("http://127.0.0.1:{port}/v2.abu");
    let o = env.abupdate(&disk, &["apply", &url]);
    let out = all_output(&o);
    assert!(o.status.success(), "{out}");
    let s = served.lock().unwrap();
    // Exactly the plan's ranges: its requests but the front (read by the first GET).
    let planned: u64 = (0..3).map(|k| u(&p["payloads"][k], "readBytes")).sum();
    assert_eq!(s.range_bytes, planned, "{p}");
    assert_eq!(s.range_requests, u(&p, "requests") - 1, "{p}");
    assert!(s.range_requests >= 2, "{p}");
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
    let (port, served) = range_server(std::fs::read(&v2.bundle).unwrap(), Serve::NoRanges);
    let url = format!("http://127.0.0.1:{port}/v2.abu");
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
        (Serve::WrongRange, "where"),
        (Serve::NewEtag, "changed on the server"),
    ] {
        let disk = env.path("disk.img");
        copy_image(&v1.image, &disk);
        let size = v1.manifest.payload(PayloadKind::Rootfs).size;
        let slot_a = partition_sha256(&disk, "root-a", size);
        let (port, _) = range_server(std::fs::read(&v2.bundle).unwrap(), mode);
        let url = format!("http://127.0.0.1:{port}/v2.abu");
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
