//! The happy path: v2 onto a v1 image, mark-good, then v3 into slot a; checked with sfdisk,
//! mtools, fsck.fat and dd + sha256sum.

use std::path::Path;
use std::process::Command;

use abbundle::PayloadKind;
use serde_json::Value;

use crate::util::*;

#[test]
fn v2_then_v3_onto_a_v1_image() {
    // On a disk file system, so O_DIRECT bundle reads and read-back are used.
    let env = Env::on_disk();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let v3 = env.build("2026.11.3", 3, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let rootfs_len = |b: &Build| b.manifest.payload(PayloadKind::Rootfs).size;
    assert_eq!(
        partition_sha256(&disk, "root-a", rootfs_len(&v1)),
        payload_sha(&v1.manifest, PayloadKind::Rootfs)
    );

    // v2 goes into slot b.
    let out = ok(&env.abupdate(&disk, &["apply", v2.bundle.to_str().unwrap()]));
    assert!(
        out.contains("installed version 2026.11.2 into slot b"),
        "{out}"
    );
    assert_eq!(
        partition_sha256(&disk, "root-b", rootfs_len(&v2)),
        payload_sha(&v2.manifest, PayloadKind::Rootfs)
    );
    assert_eq!(
        partition_sha256(&disk, "root-a", rootfs_len(&v1)),
        payload_sha(&v1.manifest, PayloadKind::Rootfs)
    );
    assert_eq!(
        mdir(&disk, "loader/entries"),
        ["slot-a.conf", "slot-b+3.conf"]
    );
    let entry = String::from_utf8(mtype(&disk, "loader/entries/slot-b+3.conf")).unwrap();
    assert!(entry.contains("version 2026.11.2\n"), "{entry}");
    assert!(entry.contains("sort-key abupdate\n"), "{entry}");
    assert!(entry.contains("linux /b/vmlinuz\n"), "{entry}");
    assert!(
        entry.contains("options ab.slot=b root=PARTLABEL=root-b"),
        "{entry}"
    );
    assert_eq!(
        sha256_bytes(&mtype(&disk, "b/vmlinuz")),
        payload_sha(&v2.manifest, PayloadKind::Kernel)
    );
    assert_eq!(
        sha256_bytes(&mtype(&disk, "b/initrd")),
        payload_sha(&v2.manifest, PayloadKind::Initrd)
    );
    assert_eq!(
        sha256_bytes(&mtype(&disk, "a/vmlinuz")),
        payload_sha(&v1.manifest, PayloadKind::Kernel)
    );
    let info: Value = serde_json::from_slice(&mtype(&disk, "b/info.json")).unwrap();
    assert_eq!(info["version"], "2026.11.2");
    assert_eq!(
        info["rootfsSha256"],
        payload_sha(&v2.manifest, PayloadKind::Rootfs)
    );
    fsck_esp(&disk).unwrap();

    let status: Value =
        serde_json::from_str(&ok(&env.abupdate(&disk, &["status", "--json"]))).unwrap();
    assert_eq!(status["apiVersion"], "abupdate/v1");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["nextBootSlot"], "b");
    assert_eq!(status["runningSlot"], Value::Null);
    assert_eq!(status["slots"][1]["state"], "trying");
    assert_eq!(status["slots"][1]["triesLeft"], 3);
    assert_eq!(status["slots"][1]["version"], "2026.11.2");
    assert_eq!(status["slots"][0]["state"], "good");

    // The machine boots b (systemd-boot would rename the entry; do as it does), b is marked good.
    rename_like_systemd_boot(&disk, "slot-b+3.conf", "slot-b+2-1.conf");
    ok(&env.abupdate_booted(&disk, Some("b"), &["boot-check"]));
    let out = ok(&env.abupdate_booted(&disk, Some("b"), &["mark-good"]));
    assert!(out.contains("marked slot b good"), "{out}");
    assert_eq!(
        mdir(&disk, "loader/entries"),
        ["slot-a.conf", "slot-b.conf"]
    );
    fsck_esp(&disk).unwrap();

    // v3 goes into slot a while b runs.
    let out = ok(&env.abupdate_booted(&disk, Some("b"), &["apply", v3.bundle.to_str().unwrap()]));
    assert!(out.contains("into slot a"), "{out}");
    assert_eq!(
        partition_sha256(&disk, "root-a", rootfs_len(&v3)),
        payload_sha(&v3.manifest, PayloadKind::Rootfs)
    );
    assert_eq!(
        partition_sha256(&disk, "root-b", rootfs_len(&v2)),
        payload_sha(&v2.manifest, PayloadKind::Rootfs)
    );
    assert_eq!(
        mdir(&disk, "loader/entries"),
        ["slot-a+3.conf", "slot-b.conf"]
    );
    let entry = String::from_utf8(mtype(&disk, "loader/entries/slot-a+3.conf")).unwrap();
    assert!(entry.contains("version 2026.11.3\n"), "{entry}");
    assert_eq!(
        sha256_bytes(&mtype(&disk, "a/vmlinuz")),
        payload_sha(&v3.manifest, PayloadKind::Kernel)
    );
    fsck_esp(&disk).unwrap();
    let status: Value = serde_json::from_str(&ok(&env.abupdate_booted(
        &disk,
        Some("b"),
        &["status", "--json"],
    )))
    .unwrap();
    assert_eq!(status["runningSlot"], "b");
    assert_eq!(status["nextBootSlot"], "a");
    assert_eq!(status["lastBootWasFallback"], false);
    let human = ok(&env.abupdate_booted(&disk, Some("b"), &["status"]));
    assert!(human.contains("trying (3 left)"), "{human}");
}

/// Renames an entry on the ESP with mtools, as systemd-boot does when it boots it.
pub fn rename_like_systemd_boot(disk: &std::path::Path, from: &str, to: &str) {
    let st = std::process::Command::new("mren")
        .args([
            "-i",
            &esp_spec(disk),
            &format!("::/loader/entries/{from}"),
            &format!("::/loader/entries/{to}"),
        ])
        .status()
        .unwrap();
    assert!(st.success());
}

/// `apply http://...`: the bundle streams from a (one-request, test-only) HTTP server.
#[test]
fn apply_from_http() {
    use std::io::{BufRead, BufReader, Write};
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = std::fs::read(&v2.bundle).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
    });
    let url = format!("http://127.0.0.1:{port}/v2.abu");
    ok(&env.abupdate(&disk, &["apply", &url]));
    server.join().unwrap();
    assert_installed_in_b(&disk, &v2);
}

/// Slot b holds `b`'s root image and boots next, on trial.
fn assert_installed_in_b(disk: &Path, b: &Build) {
    assert_eq!(
        partition_sha256(disk, "root-b", b.manifest.payload(PayloadKind::Rootfs).size),
        payload_sha(&b.manifest, PayloadKind::Rootfs)
    );
    assert_eq!(
        mdir(disk, "loader/entries"),
        ["slot-a.conf", "slot-b+3.conf"]
    );
}

/// Runs openssl with `args` in `dir`; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `apply https://...` from a server whose certificate chains to a private CA (an update
/// mirror on an air-gapped site): refused with exit 41 and nothing changed while the CA is not
/// trusted, installed once `ca-file` names it. The server is `openssl s_server -WWW`.
#[test]
fn apply_from_https_with_a_private_ca() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let tls = env.path("tls");
    std::fs::create_dir_all(tls.join("www")).unwrap();
    std::fs::copy(&v2.bundle, tls.join("www/v2.abu")).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &tls,
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
            &[
                "-subj",
                "/CN=abupdate test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
            ],
            &["-addext", "keyUsage=critical,keyCertSign"],
        ]
        .concat(),
    );
    openssl(
        &tls,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        tls.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &tls,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    // A free port, then the server on it (it serves files relative to its working directory).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-WWW",
            "-quiet",
            "-cert",
            "../server.pem",
            "-key",
            "../server.key",
        ])
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .current_dir(tls.join("www"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let url = format!("https://localhost:{port}/v2.abu");
    let result = std::panic::catch_unwind(|| {
        assert!(up, "openssl s_server did not start");
        let before = sha256_file(&disk);
        let err = fails(&env.abupdate(&disk, &["apply", &url]), 41);
        assert!(
            err.contains("certificate") && err.contains("ca-file"),
            "{err}"
        );
        assert_eq!(
            sha256_file(&disk),
            before,
            "a refused fetch changed the disk"
        );

        let cfg = env.path("with-ca.toml");
        let base = std::fs::read_to_string(env.path("abupdate.toml")).unwrap();
        std::fs::write(
            &cfg,
            format!("{base}ca-file = \"{}\"\n", tls.join("ca.pem").display()),
        )
        .unwrap();
        ok(&env.abupdate_cfg(&cfg, &disk, &["apply", &url]));
        assert_installed_in_b(&disk, &v2);
    });
    let _ = server.kill();
    let _ = server.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// `apply --reboot` runs `reboot` after a successful install, and not after a refused one.
#[test]
fn reboot_only_after_a_successful_apply() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    // A `reboot` on PATH that records that it ran.
    let bin = env.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let marker = env.path("rebooted");
    std::fs::write(
        bin.join("reboot"),
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("reboot"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |bundle: &Path| {
        env.cmd(
            &disk,
            None,
            &["apply", "--reboot", bundle.to_str().unwrap()],
        )
        .env("PATH", &path)
        .output()
        .unwrap()
    };
    // v1 onto v1's own disk: not newer, refused (30), no reboot.
    fails(&run(&v1.bundle), 30);
    assert!(!marker.exists(), "reboot ran after a refused apply");
    ok(&run(&v2.bundle));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "\n");
}
