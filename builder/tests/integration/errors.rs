//! Each user error gets a clear message, and no output file is left behind.

use std::fs;
use std::path::Path;

use crate::util::*;

fn assert_no_outputs(out: &Path) {
    if let Ok(rd) = fs::read_dir(out) {
        let names: Vec<_> = rd.map(|e| e.unwrap().file_name()).collect();
        assert!(names.is_empty(), "left behind: {names:?}");
    }
}

#[test]
fn root_too_big_for_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let sys = fake_system(dir.path());
    fs::write(sys.join("big"), noise(3 << 20, 3)).unwrap();
    let image = dir.path().join("tiny.toml");
    fs::write(
        &image,
        "name = 'tiny'\ncompatible = 'tiny'\ndisk-size = '64MiB'\nesp-size = '40MiB'\nslot-size = '2MiB'\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let err = fails(&mut build_cmd(&image, &sys, &test_key(dir.path()), &out));
    assert!(
        err.contains("does not fit the slot") && err.contains("2097152 bytes"),
        "{err}"
    );
    assert!(
        err.contains("the squashfs is 3"),
        "the root's size is missing: {err}"
    );
    assert_no_outputs(&out);
}

#[test]
fn kernel_or_initrd_missing() {
    for name in ["kernel", "initrd", "init"] {
        let dir = tempfile::tempdir().unwrap();
        let sys = fake_system(dir.path());
        fs::remove_file(sys.join(name)).unwrap();
        let out = dir.path().join("out");
        let err = fails(&mut build_cmd(
            &repo_file("images/qemu-test.toml"),
            &sys,
            &test_key(dir.path()),
            &out,
        ));
        assert!(err.contains(&format!("has no `{name}`")), "{err}");
        assert_no_outputs(&out);
    }
}

#[test]
fn system_is_neither_store_path_nor_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let err = fails(&mut build_cmd(
        &repo_file("images/qemu-test.toml"),
        &file,
        &test_key(dir.path()),
        dir.path(),
    ));
    assert!(
        err.contains("neither a Nix store path") && err.contains("nor a directory"),
        "{err}"
    );
    let err = fails(&mut build_cmd(
        &repo_file("images/qemu-test.toml"),
        &dir.path().join("missing"),
        &test_key(dir.path()),
        dir.path(),
    ));
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn nix_not_installed() {
    // A fake store, so this runs without Nix: a toplevel in it needs nix-store for its
    // closure, and PATH has none.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    fs::create_dir(&store).unwrap();
    let sys = fake_system(dir.path());
    let top = store.join("00000000000000000000000000000000-toplevel");
    fs::rename(&sys, &top).unwrap();
    let err = fails(
        build_cmd(
            &repo_file("images/qemu-test.toml"),
            &top,
            &test_key(dir.path()),
            &dir.path().join("out"),
        )
        .env("NIX_STORE_DIR", store.canonicalize().unwrap())
        .env("PATH", dir.path().join("empty-path")),
    );
    assert!(
        err.contains("nix-store not found") && err.contains("nix is not installed"),
        "{err}"
    );
}

#[test]
fn key_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let sys = fake_system(dir.path());
    let out = dir.path().join("out");
    let missing = dir.path().join("no-such.key");
    let err = fails(&mut build_cmd(
        &repo_file("images/qemu-test.toml"),
        &sys,
        &missing,
        &out,
    ));
    assert!(
        err.contains("reading key") && err.contains("no-such.key"),
        "{err}"
    );
    let garbage = dir.path().join("garbage.key");
    fs::write(&garbage, "not a key").unwrap();
    let err = fails(&mut build_cmd(
        &repo_file("images/qemu-test.toml"),
        &sys,
        &garbage,
        &out,
    ));
    assert!(err.contains("not an abupdate secret key"), "{err}");
    assert_no_outputs(&out);
}

#[test]
fn bad_image_definition() {
    let dir = tempfile::tempdir().unwrap();
    let sys = fake_system(dir.path());
    let image = dir.path().join("typo.toml");
    fs::write(&image, "name='x'\ncompatible='x'\ndisk-size='1GiB'\nesp-size='64MiB'\nslot-size='1MiB'\nslot_size=2\n")
        .unwrap();
    let err = fails(&mut build_cmd(
        &image,
        &sys,
        &test_key(dir.path()),
        &dir.path().join("out"),
    ));
    assert!(
        err.contains("unknown field") && err.contains("slot_size"),
        "{err}"
    );
}

#[test]
fn esp_too_small_for_two_slots() {
    let dir = tempfile::tempdir().unwrap();
    let sys = fake_system(dir.path());
    fs::write(sys.join("initrd"), noise(17 << 20, 4)).unwrap();
    let image = dir.path().join("small-esp.toml");
    fs::write(
        &image,
        "name = 'small-esp'\ncompatible = 'x'\ndisk-size = '128MiB'\nesp-size = '34MiB'\nslot-size = '40MiB'\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let err = fails(&mut build_cmd(&image, &sys, &test_key(dir.path()), &out));
    assert!(
        err.contains("esp-size is 35651584 bytes") && err.contains("two slots"),
        "{err}"
    );
    assert_no_outputs(&out);
}

/// A system whose etc/abupdate.toml disagrees with the image definition would refuse every
/// update (compatible) or count tries differently (boot-tries): refused before any work.
#[test]
fn updater_config_disagrees_with_the_image() {
    for (config, want) in [
        ("compatible = \"other\"\n", "compatible = \"other\""),
        ("keys = \"/k\"\n", "compatible = (nothing)"),
        (
            "compatible = \"qemu-test\"\nboot-tries = 5\n",
            "boot-tries = 5, the image definition says 3",
        ),
        // What abupdate itself would refuse, found at build time rather than on the device
        // (a bad update-reboot once failed every command there, mark-good included).
        (
            "compatible = \"qemu-test\"\nupdate-reboot = \"3am\"\n",
            "update-reboot '3am'",
        ),
        (
            "compatible = \"qemu-test\"\nupdate-reboot = \"+3:00-05:00\"\n",
            "update-reboot '+3:00-05:00'",
        ),
        (
            "compatible = \"qemu-test\"\nupdate-jitter = \"18446744073709551615\"\n",
            "update-jitter",
        ),
        (
            "compatible = \"qemu-test\"\nhttp-timeout = 0\n",
            "http-timeout must be between 1",
        ),
        (
            "compatible = \"qemu-test\"\nbogus = 1\n",
            "unknown field `bogus`",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let sys = fake_system(dir.path());
        fs::write(sys.join("etc/abupdate.toml"), config).unwrap();
        let out = dir.path().join("out");
        let err = fails(&mut build_cmd(
            &repo_file("images/qemu-test.toml"),
            &sys,
            &test_key(dir.path()),
            &out,
        ));
        assert!(err.contains(want), "{config:?}: {err}");
        assert_no_outputs(&out);
    }
}

/// `ab.slot=` and `root=` are set per slot by the device; a system or image that sets them
/// would make the kernel mount one slot while status and mark-good act on the other.
#[test]
fn kernel_params_that_set_the_slot_or_root() {
    for params in ["quiet root=/dev/sda2", "ab.slot=b"] {
        let dir = tempfile::tempdir().unwrap();
        let sys = fake_system(dir.path());
        fs::write(sys.join("kernel-params"), params).unwrap();
        let out = dir.path().join("out");
        let err = fails(&mut build_cmd(
            &repo_file("images/qemu-test.toml"),
            &sys,
            &test_key(dir.path()),
            &out,
        ));
        assert!(
            err.contains("is not allowed") && err.contains("kernel-params"),
            "{params}: {err}"
        );
        assert_no_outputs(&out);
    }
}

/// The x86 kernel keeps 2047 bytes of command line and drops the rest (the tail: `panic=5`
/// here); counting what abupdate and the boot loader put in front (54 bytes on GRUB), kernel
/// parameters of more than 1993 bytes are refused, by `build` and by `bundle`. 1993 build.
#[test]
fn kernel_params_longer_than_the_kernel_command_line() {
    // qemu-test.toml adds " console=ttyS0 panic=5" (22 bytes) to the system's parameters; GRUB
    // adds " ab.esp=<GUID>" (44); without verity (whose parameter counts too: verity.rs),
    // nothing else.
    let fits = 1993 - 44 - 22;
    for (len, builds) in [(fits + 1, false), (fits, true)] {
        let dir = tempfile::tempdir().unwrap();
        let sys = fake_system(dir.path());
        let params = format!("x={}", "y".repeat(len - 2));
        fs::write(sys.join("kernel-params"), &params).unwrap();
        let out = dir.path().join("out");
        let image = dir.path().join("qemu-test.toml");
        let def = fs::read_to_string(repo_file("images/qemu-test.toml")).unwrap();
        fs::write(&image, format!("{def}verity = false\n")).unwrap();
        let mut c = build_cmd(&image, &sys, &test_key(dir.path()), &out);
        if builds {
            ok(&mut c);
            let m = inspect(&out.join("qemu-test-2026.11.22.1.abu"));
            let kp = m["kernel_params"].as_str().unwrap().to_string();
            assert_eq!(kp.len(), 1993 - 44, "{kp}");
            continue;
        }
        let err = fails(&mut c);
        assert!(
            err.contains("2048 bytes") && err.contains("2047") && err.contains("kernel-params"),
            "{err}"
        );
        assert_no_outputs(&out);
        // `abbuild bundle` with the same parameters.
        let key = test_key(dir.path());
        let err = fails(
            std::process::Command::new(env!("CARGO_BIN_EXE_abbuild"))
                .arg("bundle")
                .args(["--rootfs", sys.join("kernel").to_str().unwrap()])
                .args(["--kernel", sys.join("kernel").to_str().unwrap()])
                .args(["--initrd", sys.join("initrd").to_str().unwrap()])
                .args([
                    "--kernel-params",
                    &format!("{params} console=ttyS0 panic=5"),
                ])
                .args(["--compatible", "x", "--version", "1", "--key"])
                .arg(&key)
                .arg("--out")
                .arg(dir.path().join("b.abu")),
        );
        assert!(
            err.contains("--kernel-params") && err.contains("2047"),
            "{err}"
        );
        assert!(!dir.path().join("b.abu").exists());
    }
}
