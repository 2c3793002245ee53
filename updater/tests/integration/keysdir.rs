//! The trusted keys directory is read like OpenSSH's StrictModes reads authorized_keys: only
//! regular files, bounded, and nothing that someone else could have written (exit 42).

use std::fs;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::sources::small_bundle;
use crate::util::*;

const KEYS_UNSAFE: i32 = 42;

/// `abupdate verify` of a good bundle with the test keys; killed after 10 s (a read that
/// hangs is one of the defects tested here).
fn verify(env: &Env) -> Output {
    let bundle = env.path("small.abu");
    if !bundle.exists() {
        fs::write(&bundle, small_bundle()).unwrap();
    }
    let mut child = env
        .cmd(
            &env.path("no-disk"),
            None,
            &["verify", bundle.to_str().unwrap()],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("abupdate verify hung reading the keys directory");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn safe_keys_directory_is_used() {
    let env = Env::new();
    chmod(&env.path("keys"), 0o755);
    chmod(&env.path("keys/test-only.pub"), 0o644);
    ok(&verify(&env));
    // A key file that is a symlink to a regular file (as on NixOS) is fine.
    fs::rename(env.path("keys/test-only.pub"), env.path("real.pub")).unwrap();
    symlink(env.path("real.pub"), env.path("keys/test-only.pub")).unwrap();
    ok(&verify(&env));
}

#[test]
fn world_or_group_writable_directory_is_refused() {
    let env = Env::new();
    for mode in [0o777, 0o775, 0o1777] {
        chmod(&env.path("keys"), mode);
        let err = fails(&verify(&env), KEYS_UNSAFE);
        assert!(
            err.contains("writable by") && err.contains("chmod go-w"),
            "{err}"
        );
    }
}

#[test]
fn writable_key_file_is_refused() {
    let env = Env::new();
    chmod(&env.path("keys"), 0o755);
    chmod(&env.path("keys/test-only.pub"), 0o666);
    let err = fails(&verify(&env), KEYS_UNSAFE);
    assert!(
        err.contains("test-only.pub is writable by everyone"),
        "{err}"
    );
    chmod(&env.path("keys/test-only.pub"), 0o664);
    let err = fails(&verify(&env), KEYS_UNSAFE);
    assert!(err.contains("writable by its group"), "{err}");
}

#[test]
fn key_file_or_directory_of_another_user_is_refused() {
    let env = Env::new();
    chmod(&env.path("keys"), 0o755);
    // The tests run as root (scripts/setup.sh); another owner needs chown.
    chown(env.path("keys/test-only.pub"), Some(4321), None).unwrap();
    let err = fails(&verify(&env), KEYS_UNSAFE);
    assert!(err.contains("owned by uid 4321"), "{err}");
    chown(env.path("keys/test-only.pub"), Some(0), None).unwrap();
    chown(env.path("keys"), Some(4321), None).unwrap();
    let err = fails(&verify(&env), KEYS_UNSAFE);
    assert!(err.contains("owned by uid 4321"), "{err}");
}

#[test]
fn fifo_in_keys_directory_is_refused_without_hanging() {
    let env = Env::new();
    chmod(&env.path("keys"), 0o755);
    let st = Command::new("mkfifo")
        .arg(env.path("keys/zz-fifo.pub"))
        .status()
        .unwrap();
    assert!(st.success());
    let err = fails(&verify(&env), KEYS_UNSAFE);
    assert!(
        err.contains("zz-fifo.pub is a FIFO, not a regular file"),
        "{err}"
    );
}

#[test]
fn symlink_to_a_device_is_refused_and_reads_are_bounded() {
    let env = Env::new();
    chmod(&env.path("keys"), 0o755);
    symlink("/dev/zero", env.path("keys/zero.pub")).unwrap();
    let err = fails(&verify(&env), KEYS_UNSAFE);
    assert!(err.contains("zero.pub is a device"), "{err}");
    // A large regular file is read up to the bound, then refused as not a key.
    fs::remove_file(env.path("keys/zero.pub")).unwrap();
    let big = env.path("keys/big.pub");
    fs::File::create(&big).unwrap().set_len(64 << 20).unwrap();
    let err = fails(&verify(&env), 1);
    assert!(err.contains("big.pub: longer than 4096 bytes"), "{err}");
}
