//! `abupdate update` against channels `abbuild publish` wrote (docs/channels.md): served by a
//! small static HTTP server on 127.0.0.1, or read from a directory (file:// and plain paths).
//! Every refusal leaves the disk image byte-identical.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;

use abbundle::channel;
use abbundle::SecretKey;
use abupdate::codes;
use serde_json::Value;

use crate::util::*;

/// Serves the files under `root` over HTTP/1.1 on 127.0.0.1 (GET only, 404 for anything
/// missing), one thread per connection, for as long as the test runs. Returns the base URL.
fn serve_dir(root: &Path) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let root = root.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut first = String::new();
                r.read_line(&mut first).unwrap_or(0);
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                let file = root.join(path.trim_start_matches('/'));
                match fs::read(&file) {
                    Ok(body) if !path.contains("..") => {
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = s.write_all(&body);
                    }
                    _ => {
                        let _ = s.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// `abbuild publish` (its library) of `bundle` on channel `stable` into `tree`.
fn publish(env: &Env, tree: &Path, bundle: &Path, rollout: u8, valid_for: &str, seq: Option<u64>) {
    abbuild::publish::publish(&abbuild::cli::PublishArgs {
        bundle: bundle.to_path_buf(),
        channel: "stable".into(),
        key: vec![env.path("test-only.key")],
        out_dir: tree.to_path_buf(),
        image: Some("vps".into()),
        rollout,
        valid_for: valid_for.into(),
        sequence: seq,
    })
    .expect("abbuild publish");
}

/// `update --now --json` with the channel; returns the exit code and the JSON report.
fn update(env: &Env, disk: &Path, slot: Option<&str>, channel: &str) -> (i32, Value, Output) {
    let o = env.abupdate_booted(
        disk,
        slot,
        &["update", "--now", "--json", "--channel", channel],
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap(), v, o)
}

fn next_boot(env: &Env, disk: &Path) -> (String, Option<String>) {
    let s: Value = serde_json::from_str(&ok(&env.abupdate(disk, &["status", "--json"]))).unwrap();
    let slot = s["nextBootSlot"].as_str().unwrap().to_string();
    let v = s["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["slot"] == slot.as_str())
        .and_then(|x| x["version"].as_str().map(str::to_string));
    (slot, v)
}

/// Replaces the channel file's document with `edit(document)`, re-signed by `key` (or left
/// unsigned), as an attacker or a broken publisher could.
fn rewrite(file: &Path, key: Option<&SecretKey>, edit: impl FnOnce(&mut Value)) {
    let env: Value = serde_json::from_slice(&fs::read(file).unwrap()).unwrap();
    let mut doc: Value = serde_json::from_str(env["document"].as_str().unwrap()).unwrap();
    edit(&mut doc);
    let doc: channel::Channel = serde_json::from_str(&doc.to_string()).unwrap();
    let signers: Vec<&dyn abbundle::Signer> = key.iter().map(|k| *k as _).collect();
    fs::write(file, channel::sign(&doc, &signers).unwrap()).unwrap();
}

/// v2 published over HTTP installs on a v1 disk (exit 50, reboot pending), a second check
/// says it waits for a reboot, and `status` shows the channel and the last check.
#[test]
fn published_version_installs_over_http() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let tree = env.path("www");
    publish(&env, &tree, &v2.bundle, 100, "1d", None);
    let url = format!("{}/vps/stable.json", serve_dir(&tree));
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);

    let (code, r, _) = update(&env, &disk, None, &url);
    assert_eq!(code, codes::UPDATE_INSTALLED, "{r}");
    assert_eq!(r["outcome"], "installed");
    assert_eq!(r["channelVersion"], "2026.11.2");
    assert_eq!(r["sequence"], 1);
    assert_eq!(
        next_boot(&env, &disk),
        ("b".into(), Some("2026.11.2".into()))
    );
    assert_eq!(
        partition_sha256(
            &disk,
            "root-b",
            v2.manifest.payload(abbundle::PayloadKind::Rootfs).size
        ),
        payload_sha(&v2.manifest, abbundle::PayloadKind::Rootfs)
    );

    let (code, r, _) = update(&env, &disk, None, &url);
    assert_eq!(code, codes::UPDATE_INSTALLED, "{r}");
    assert_eq!(r["outcome"], "reboot-pending");

    // Booted into v2: up to date, exit 0, and status tells the last check.
    ok(&env.abupdate_booted(&disk, Some("b"), &["mark-good"]));
    let (code, r, _) = update(&env, &disk, Some("b"), &url);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["outcome"], "up-to-date");
    let human = ok(&env.abupdate_booted(&disk, Some("b"), &["status"]));
    assert!(
        human.contains("last update check") && human.contains("up-to-date"),
        "{human}"
    );
    assert!(human.contains("/vps/stable.json"), "{human}");
    let s: Value = serde_json::from_str(&ok(&env.abupdate_booted(
        &disk,
        Some("b"),
        &["status", "--json"],
    )))
    .unwrap();
    let last = &s["update"]["lastCheck"];
    assert_eq!(
        (last["outcome"].as_str(), last["code"].as_i64()),
        (Some("up-to-date"), Some(0))
    );
    assert_eq!(last["channelVersion"], "2026.11.2");
}

/// Each bad channel file (or server) is refused with its own code and a one-line reason,
/// and the disk does not change; a 0% rollout installs nothing.
#[test]
fn bad_channels_are_refused_and_change_nothing() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let key = SecretKey::from_seed(TEST_ONLY_SEED, "test-only");
    let tree = env.path("www");
    let url = format!("{}/vps/stable.json", serve_dir(&tree));
    let file = tree.join("vps/stable.json");
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    let refused = |code: i32, what: &str| {
        let (got, r, o) = update(&env, &disk, None, &url);
        let line = fails(&o, code);
        assert_eq!(got, code, "{what}: {r}");
        assert_eq!(r["outcome"], "refused", "{what}");
        assert!(line.contains("nothing was changed"), "{what}: {line}");
        assert_eq!(sha256_file(&disk), before, "{what} changed the disk");
        line
    };

    // Not in the rollout: exit 51, nothing installed; the sequence (5) is accepted.
    publish(&env, &tree, &v2.bundle, 0, "1d", Some(5));
    let (code, r, _) = update(&env, &disk, None, &url);
    assert_eq!(
        (code, r["outcome"].as_str()),
        (codes::NOT_IN_ROLLOUT, Some("not-in-rollout"))
    );
    assert_eq!(sha256_file(&disk), before);

    // An older sequence (a replay of an earlier file).
    publish(&env, &tree, &v2.bundle, 100, "1d", Some(4));
    let line = refused(codes::CHANNEL_REPLAYED, "replay");
    assert!(line.contains("lower than 5"), "{line}");

    // Expired.
    publish(&env, &tree, &v2.bundle, 100, "1", Some(6));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    refused(codes::CHANNEL_EXPIRED, "expired");

    // Pointing to a bundle whose manifest is not the one it names (a validly signed
    // bundle, the wrong one).
    publish(&env, &tree, &v2.bundle, 100, "1d", Some(7));
    rewrite(&file, Some(&key), |d| {
        d["manifestSha256"] = Value::String(hex::encode([0x11u8; 32]));
    });
    let line = refused(codes::CHANNEL_DIGEST_MISMATCH, "digest");
    assert!(line.contains("manifest digest"), "{line}");

    // For another compatible string.
    rewrite(&file, Some(&key), |d| {
        d["compatible"] = "other-board".into()
    });
    refused(codes::CHANNEL_INCOMPATIBLE, "compatible");

    // Unsigned, untrusted, altered, malformed, oversized.
    rewrite(&file, None, |_| {});
    refused(codes::CHANNEL_UNSIGNED, "unsigned");
    // (publish itself refuses a bundle its key did not sign: re-signed by hand.)
    publish(&env, &tree, &v2.bundle, 100, "1d", Some(8));
    let other = SecretKey::from_seed([0x55; 32], "test-only-other");
    rewrite(&file, Some(&other), |_| {});
    refused(codes::CHANNEL_UNTRUSTED, "untrusted");
    publish(&env, &tree, &v2.bundle, 100, "1d", Some(9));
    let text = fs::read_to_string(&file).unwrap();
    let altered = text.replace("\\\"rollout\\\": 100", "\\\"rollout\\\": 99");
    assert_ne!(altered, text);
    fs::write(&file, altered).unwrap();
    refused(codes::CHANNEL_BAD_SIGNATURE, "altered");
    fs::write(&file, "{\"apiVersion\": \"abupdate/v1\", ").unwrap();
    refused(codes::CHANNEL_MALFORMED, "malformed");
    fs::write(&file, vec![b' '; 70 * 1024]).unwrap();
    refused(codes::CHANNEL_TOO_LARGE, "oversized");

    // A server that is not there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, r, o) = update(
        &env,
        &disk,
        None,
        &format!("http://127.0.0.1:{port}/vps/stable.json"),
    );
    fails(&o, codes::SOURCE_UNAVAILABLE);
    assert_eq!(code, codes::SOURCE_UNAVAILABLE, "{r}");
    assert_eq!(sha256_file(&disk), before);

    // The server answers 404: for the channel file, and for the bundle it names.
    let base = url.trim_end_matches("/vps/stable.json").to_string();
    let (code, _, o) = update(&env, &disk, None, &format!("{base}/vps/beta.json"));
    assert!(fails(&o, codes::SOURCE_UNAVAILABLE).contains("404"));
    assert_eq!(code, codes::SOURCE_UNAVAILABLE);
    publish(&env, &tree, &v2.bundle, 100, "1d", Some(10));
    let published = tree.join("vps").join(v2.bundle.file_name().unwrap());
    let hidden = env.path("hidden.abu");
    fs::rename(&published, &hidden).unwrap();
    let (code, _, o) = update(&env, &disk, None, &url);
    assert!(fails(&o, codes::SOURCE_UNAVAILABLE).contains("404"));
    assert_eq!(code, codes::SOURCE_UNAVAILABLE);
    assert_eq!(sha256_file(&disk), before);
    fs::rename(&hidden, &published).unwrap();

    // A good file again (a damaged previous file needs --sequence): installs.
    publish(&env, &tree, &v2.bundle, 100, "1d", Some(11));
    let (code, r, _) = update(&env, &disk, None, &url);
    assert_eq!(code, codes::UPDATE_INSTALLED, "{r}");
    assert_eq!(r["sequence"], 11);
}

/// A version that fell back (as boot-check records it) is not installed again; a newer one
/// is. `status` lists the failed version.
#[test]
fn a_failed_version_is_skipped_until_a_newer_one() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let v3 = env.build("2026.11.3", 3, 64 * 1024);
    let tree = env.path("www");
    let url = format!("{}/vps/stable.json", serve_dir(&tree));
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    publish(&env, &tree, &v2.bundle, 100, "1d", None);
    let (code, _, _) = update(&env, &disk, Some("a"), &url);
    assert_eq!(code, codes::UPDATE_INSTALLED);
    // v2 runs out of tries: its entry ends at +0-3 and the machine boots a again, where
    // boot-check records the fallback.
    let entry = mdir(&disk, "loader/entries")
        .into_iter()
        .find(|e| e.starts_with("slot-b"))
        .unwrap();
    let text = mtype(&disk, &format!("loader/entries/{entry}"));
    mput(&disk, &format!("loader/entries/{entry}"), None);
    mput(&disk, "loader/entries/slot-b+0-3.conf", Some(&text));
    ok(&env.abupdate_booted(&disk, Some("a"), &["boot-check"]));

    let before = sha256_file(&disk);
    let (code, r, _) = update(&env, &disk, Some("a"), &url);
    assert_eq!(code, codes::VERSION_FAILED_BEFORE, "{r}");
    assert_eq!(r["outcome"], "failed-before");
    assert_eq!(sha256_file(&disk), before);
    let human = ok(&env.abupdate_booted(&disk, Some("a"), &["status"]));
    assert!(
        human.contains("versions that failed here: 2026.11.2"),
        "{human}"
    );

    publish(&env, &tree, &v3.bundle, 100, "1d", None);
    let (code, r, _) = update(&env, &disk, Some("a"), &url);
    assert_eq!(code, codes::UPDATE_INSTALLED, "{r}");
    assert_eq!(
        next_boot(&env, &disk),
        ("b".into(), Some("2026.11.3".into()))
    );
}

/// Air-gapped: the same tree on a mounted medium, as a file:// URL or a plain path.
#[test]
fn file_url_and_plain_path_channels() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let tree = env.path("medium");
    publish(&env, &tree, &v2.bundle, 100, "1d", None);
    let file = tree.join("vps/stable.json");
    for channel in [
        format!("file://{}", file.display()),
        file.display().to_string(),
    ] {
        let disk = env.path("disk.img");
        copy_image(&v1.image, &disk);
        let before = sha256_file(&disk);
        let o = env.abupdate(
            &disk,
            &["update", "--now", "--dry-run", "--channel", &channel],
        );
        assert_eq!(o.status.code(), Some(codes::UPDATE_AVAILABLE), "{o:?}");
        assert_eq!(sha256_file(&disk), before);
        let (code, r, _) = update(&env, &disk, None, &channel);
        assert_eq!(code, codes::UPDATE_INSTALLED, "{channel}: {r}");
        assert_eq!(
            next_boot(&env, &disk),
            ("b".into(), Some("2026.11.2".into()))
        );
        fs::remove_file(&disk).unwrap();
    }
}

/// `HH:MM` of minute `m` of the day.
fn hhmm(m: u64) -> String {
    format!("{:02}:{:02}", (m % 1440) / 60, m % 60)
}

/// The test config plus `extra` lines.
fn set_config(env: &Env, base: &str, extra: &str) {
    fs::write(env.path("abupdate.toml"), format!("{base}{extra}")).unwrap();
}

/// The channel and the reboot policy from the config: outside the window an install waits;
/// a later check inside the window reboots into it; `immediately` reboots after an install
/// only. The jitter (1 h here) is skipped with --now. `reboot` is a stand-in on PATH.
#[test]
fn reboot_policy_from_the_config() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let tree = env.path("www");
    publish(&env, &tree, &v2.bundle, 100, "1d", None);
    let url = format!("{}/vps/stable.json", serve_dir(&tree));
    let bin = env.path("bin");
    fs::create_dir_all(&bin).unwrap();
    let marker = env.path("rebooted");
    fs::write(
        bin.join("reboot"),
        format!("#!/bin/sh\necho yes > '{}'\n", marker.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(bin.join("reboot"), fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let base = fs::read_to_string(env.path("abupdate.toml")).unwrap();
    let minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60;
    let run = |disk: &Path| -> (i32, Value) {
        let o = env
            .cmd(disk, None, &["update", "--now", "--json"])
            .env("PATH", &path)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        (o.status.code().unwrap(), v)
    };
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);

    let outside = format!("{}-{}", hhmm(minute + 60), hhmm(minute + 120));
    set_config(
        &env,
        &base,
        &format!("channel = \"{url}\"\nupdate-reboot = \"{outside}\"\nupdate-jitter = \"1h\"\n"),
    );
    let start = std::time::Instant::now();
    let (code, r) = run(&disk);
    assert!(
        start.elapsed().as_secs() < 60,
        "--now did not skip the jitter"
    );
    assert_eq!(
        (code, r["outcome"].as_str()),
        (codes::UPDATE_INSTALLED, Some("installed"))
    );
    assert_eq!(r["rebooting"], false);
    assert!(!marker.exists());

    let inside = format!("{}-{}", hhmm(minute + 1439), hhmm(minute + 3));
    set_config(
        &env,
        &base,
        &format!("channel = \"{url}\"\nupdate-reboot = \"{inside}\"\n"),
    );
    let (code, r) = run(&disk);
    assert_eq!(
        (code, r["outcome"].as_str()),
        (codes::UPDATE_INSTALLED, Some("reboot-pending"))
    );
    assert_eq!(r["rebooting"], true);
    assert!(marker.exists(), "no reboot inside the window");

    fs::remove_file(&marker).unwrap();
    set_config(
        &env,
        &base,
        &format!("channel = \"{url}\"\nupdate-reboot = \"immediately\"\n"),
    );
    let (_, r) = run(&disk);
    assert_eq!(
        (r["outcome"].as_str(), &r["rebooting"]),
        (Some("reboot-pending"), &Value::Bool(false))
    );
    assert!(!marker.exists());
    copy_image(&v1.image, &disk);
    let (_, r) = run(&disk);
    assert_eq!(
        (r["outcome"].as_str(), &r["rebooting"]),
        (Some("installed"), &Value::Bool(true))
    );
    assert!(marker.exists());
}

/// A server that accepts and never answers: the check ends within the configured bound
/// (exit 41), nothing changed.
#[test]
fn silent_channel_server_is_bounded() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s); // never answered
        }
    });
    let base = fs::read_to_string(env.path("abupdate.toml")).unwrap();
    set_config(
        &env,
        &base,
        "http-timeout = 3\nhttp-rate-window = 2\nhttp-connect-timeout = 2\n",
    );
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    let start = std::time::Instant::now();
    let (code, r, o) = update(
        &env,
        &disk,
        None,
        &format!("http://127.0.0.1:{port}/vps/stable.json"),
    );
    assert!(start.elapsed().as_secs() < 15, "{:?}", start.elapsed());
    let line = fails(&o, codes::SOURCE_UNAVAILABLE);
    assert_eq!(code, codes::SOURCE_UNAVAILABLE, "{r}");
    assert!(line.contains("nothing was changed"), "{line}");
    assert_eq!(sha256_file(&disk), before);
}

/// A server at `127.0.0.1` that answers every request with `head` (and no body); counts the
/// requests. Returns the port.
fn serve_head(head: String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let head = head.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let _ = s.write_all(head.as_bytes());
            });
        }
    });
    (port, hits)
}

/// A 302 whose Location is ~70 KB (from the channel's server, its CDN or anyone on the path
/// of an http:// channel): the whole message went into update.json, past the 64 KiB it is
/// read back with, and every later check failed "update.json is damaged".
#[test]
fn a_long_redirect_does_not_damage_the_state_file() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    // The redirect leads to a server that closes without answering.
    let (port, _) = serve_head(String::new());
    let long = format!(
        "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let (port, hits) = serve_head(long);
    let url = format!("http://127.0.0.1:{port}/vps/stable.json");
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    for round in 0..2 {
        let (code, r, o) = update(&env, &disk, None, &url);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains("damaged"), "round {round}: {stderr}");
        assert_eq!(code, codes::SOURCE_UNAVAILABLE, "round {round}: {r}");
        assert_eq!(sha256_file(&disk), before);
    }
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    let state = fs::read(env.path("state/update.json")).unwrap();
    assert!(state.len() < 16 * 1024, "{} bytes", state.len());
    let v: Value = serde_json::from_slice(&state).unwrap();
    let message = v["lastCheck"]["message"].as_str().unwrap();
    assert!(message.ends_with("bytes left out)"), "{message}");
    ok(&env.abupdate(&disk, &["status"]));
}

/// A channel URL with an empty path (`http://host:port`): the signed `bundle` field
/// `localhost:PORT/x.abu` passes the channel's path check, and a text join after "http://"
/// fetched it from that other server. Refused (54), the other server never asked.
#[test]
fn a_bundle_on_another_server_is_refused() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let key = SecretKey::from_seed(TEST_ONLY_SEED, "test-only");
    let tree = env.path("www");
    publish(&env, &tree, &v2.bundle, 100, "1d", None);
    // The other server serves the bundle (it would install, digest and all).
    let other = serve_dir(&tree.join("vps"));
    let other_port = other.rsplit(':').next().unwrap().to_string();
    let name = v2
        .bundle
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let file = tree.join("vps/stable.json");
    rewrite(&file, Some(&key), |d| {
        d["bundle"] = format!("localhost:{other_port}/{name}").into();
    });
    // The channel's server answers every path with the channel file.
    let body = fs::read(&file).unwrap();
    let mut head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    head.push_str(std::str::from_utf8(&body).unwrap());
    let (port, _) = serve_head(head);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    let (code, r, o) = update(&env, &disk, None, &format!("http://127.0.0.1:{port}"));
    let line = fails(&o, codes::CHANNEL_MALFORMED);
    assert_eq!(code, codes::CHANNEL_MALFORMED, "{r}");
    assert!(line.contains("not on the channel's server"), "{line}");
    assert_eq!(sha256_file(&disk), before);
}

/// A channel saying version 2026.11.9 for a 2026.11.2 bundle installed it and reported
/// "installed version 2026.11.9" (and tried again at every check). Refused before anything is written (64).
#[test]
fn a_channel_version_that_is_not_the_bundles_is_refused() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let key = SecretKey::from_seed(TEST_ONLY_SEED, "test-only");
    let tree = env.path("www");
    publish(&env, &tree, &v2.bundle, 100, "1d", None);
    rewrite(&tree.join("vps/stable.json"), Some(&key), |d| {
        d["version"] = "2026.11.9".into();
    });
    let url = format!("{}/vps/stable.json", serve_dir(&tree));
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    let (code, r, o) = update(&env, &disk, None, &url);
    let line = fails(&o, codes::CHANNEL_VERSION_MISMATCH);
    assert_eq!(code, codes::CHANNEL_VERSION_MISMATCH, "{r}");
    assert!(
        line.contains("version is 2026.11.2")
            && line.contains("says 2026.11.9")
            && line.contains("nothing was changed"),
        "{line}"
    );
    assert_eq!(sha256_file(&disk), before);
    assert_eq!(
        next_boot(&env, &disk),
        ("a".into(), Some("2026.11.1".into()))
    );
}

/// A channel file issued in the future: within the clock skew allowed (5 minutes) it is
/// taken; further ahead it is refused (65) and its sequence is not remembered.
#[test]
fn a_channel_issued_in_the_future() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let key = SecretKey::from_seed(TEST_ONLY_SEED, "test-only");
    let tree = env.path("www");
    let file = tree.join("vps/stable.json");
    let url = format!("{}/vps/stable.json", serve_dir(&tree));
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    publish(&env, &tree, &v2.bundle, 100, "1d", Some(7));
    rewrite(&file, Some(&key), |d| {
        d["issued"] = (now + 3600).into();
        d["expires"] = (now + 7200).into();
    });
    let (code, r, o) = update(&env, &disk, None, &url);
    let line = fails(&o, codes::CHANNEL_NOT_YET_VALID);
    assert_eq!(code, codes::CHANNEL_NOT_YET_VALID, "{r}");
    assert!(
        line.contains("in the future") && line.contains("clock"),
        "{line}"
    );
    assert_eq!(sha256_file(&disk), before);
    // Its sequence (7) was not accepted: 6 is still taken.
    publish(&env, &tree, &v2.bundle, 100, "1d", Some(6));
    rewrite(&file, Some(&key), |d| {
        d["issued"] = (now + 60).into();
    });
    let o = env.abupdate(&disk, &["update", "--now", "--dry-run", "--channel", &url]);
    assert_eq!(o.status.code(), Some(codes::UPDATE_AVAILABLE), "{o:?}");
}

/// A bad `update-reboot` (`+3:00-05:00` was read as 03:00-05:00) or `update-jitter`
/// (`18446744073709551615` panicked: remainder by zero) is refused by `update` (66), while
/// every command that does not need them still works: they once all failed.
#[test]
fn bad_update_settings_stop_only_update() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let tree = env.path("www");
    publish(&env, &tree, &v2.bundle, 100, "1d", None);
    let channel = tree.join("vps/stable.json").display().to_string();
    let base = fs::read_to_string(env.path("abupdate.toml")).unwrap();
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    for bad in [
        "update-reboot = \"+3:00-05:00\"\n",
        "update-reboot = \"3am\"\n",
        "update-jitter = \"18446744073709551615\"\n",
    ] {
        set_config(&env, &base, &format!("channel = \"{channel}\"\n{bad}"));
        let before = sha256_file(&disk);
        // Without --now: the jitter is where the panic was.
        let o = output_within(&mut env.cmd(&disk, None, &["update"]), 60);
        let line = fails(&o, codes::UPDATE_SETTINGS_INVALID);
        assert!(
            line.contains("abupdate.toml") && line.contains("update-"),
            "{bad}: {line}"
        );
        assert_eq!(sha256_file(&disk), before, "{bad}");
        ok(&env.abupdate_booted(&disk, Some("a"), &["boot-check"]));
        ok(&env.abupdate_booted(&disk, Some("a"), &["status"]));
        ok(&env.abupdate_booted(&disk, Some("a"), &["mark-good"]));
    }
}
