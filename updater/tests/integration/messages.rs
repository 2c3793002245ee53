//! Every error reaches the user as one line (docs/exit-codes.md), even where a library's
//! message has several.

use std::fs;

use crate::util::*;

/// Exactly one line on stderr, the error; returns it.
fn only_line(o: &std::process::Output, code: i32) -> String {
    let line = fails(o, code);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    line
}

#[test]
fn config_errors_are_one_line_with_their_position() {
    let env = Env::new();
    let cfg = env.path("bad.toml");
    for (text, want) in [
        (
            "compatible = \"x\"\nbogus = 1\n",
            "line 2, column 1: unknown field `bogus`",
        ),
        (
            "boot-tries = \"three\"\n",
            "line 1, column 14: invalid type",
        ),
        ("compatible = [\n", "line 2, column 1: invalid array"),
    ] {
        fs::write(&cfg, text).unwrap();
        let err = only_line(
            &env.abupdate_cfg(&cfg, &env.path("no-disk"), &["status"]),
            1,
        );
        assert!(err.contains("bad.toml: ") && err.contains(want), "{err}");
    }
}

/// A signed manifest whose kernel sha256 does not match the kernel's (correct) chunks is a
/// bundle built wrong: exit 10 from verify, not a disk problem.
#[test]
fn wrong_payload_sha256_in_a_signed_manifest_is_blamed_on_the_bundle() {
    use abbundle::{SecretKey, Signer};
    let env = Env::new();
    let mut b = crate::sources::small_bundle();
    let len = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
    let m = abbundle::HEADER_LEN..abbundle::HEADER_LEN + len;
    let text = String::from_utf8(b[m.clone()].to_vec()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let kernel = v["payloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "kernel")
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    // Same length, so every offset stays; signed again, so only the digest is wrong.
    let wrong: String = kernel
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    // The kernel is one chunk, so its chunk hash is the same digest: change the sha256 only.
    let field = |d: &str| format!("\"sha256\": \"{d}\"");
    assert_eq!(text.matches(&field(&kernel)).count(), 1, "{text}");
    let text = text.replace(&field(&kernel), &field(&wrong));
    b[m.clone()].copy_from_slice(text.as_bytes());
    let key = SecretKey::from_seed(TEST_ONLY_SEED, "test-only");
    b[m.end + 8..m.end + 72].copy_from_slice(&key.sign(text.as_bytes()));
    let bundle = env.path("wrong-sha.abu");
    fs::write(&bundle, &b).unwrap();
    let err = only_line(
        &env.abupdate(&env.path("no-disk"), &["verify", bundle.to_str().unwrap()]),
        10,
    );
    assert!(
        err.contains("the kernel payload does not match the sha256 in the signed manifest"),
        "{err}"
    );
    // apply blames the bundle too (it used to report a failing medium, 37), and the running
    // slot keeps its entry.
    let v1 = env.build("1", 1, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let err = fails(
        &env.abupdate(&disk, &["apply", bundle.to_str().unwrap()]),
        10,
    );
    assert!(err.contains("does not match its verified chunks"), "{err}");
    assert_eq!(mdir(&disk, "loader/entries"), ["slot-a.conf"]);
    fsck_esp(&disk).unwrap();
}

/// `--help` says what docs/updater.md says: SOURCE may be an https:// URL (as the README
/// shows), and mark-bad names both of its refusals.
#[test]
fn help_texts_match_the_docs() {
    let help = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_abupdate"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        // Words as clap wraps them, joined again.
        let text = String::from_utf8(o.stdout).unwrap();
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    for cmd in ["apply", "verify"] {
        let h = help(&[cmd]);
        assert!(h.contains("http(s)://"), "{cmd}: {h}");
        assert!(!h.contains("http:// URL"), "{cmd}: {h}");
    }
    let h = help(&["mark-bad"]);
    assert!(
        h.contains("cannot boot") && h.contains("only good one"),
        "{h}"
    );
    let h = help(&["boot-check"]);
    assert!(h.contains("grows the data partition"), "{h}");
}
