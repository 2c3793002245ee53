//! The library entry point the updater's and the QEMU tests call: `abbuild::build::build`.

use std::fs;
use std::process::Command;

use abbuild::build::{build, BuildOptions, DiskFormat};

use crate::util::*;

#[test]
fn library_build_matches_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let sys = fake_system(dir.path());
    let key = test_key(dir.path());
    let mut o = BuildOptions::new(
        repo_file("images/qemu-test.toml"),
        &sys,
        "42",
        &key,
        dir.path().join("lib"),
    );
    o.epoch = Some(EPOCH.parse().unwrap());
    let out = build(&o).unwrap();
    assert_eq!(out.bundle, dir.path().join("lib/qemu-test-42.abu"));
    assert_eq!(out.image, dir.path().join("lib/qemu-test-42.img"));
    assert_eq!(out.manifest.version.as_str(), "42");
    assert_eq!(out.image_def.name, "qemu-test");
    // The layout it returns is the one sfdisk reads.
    for p in &out.layout.partitions {
        assert_eq!(
            partition(&out.image, p.label),
            (p.offset, p.size),
            "{}",
            p.label
        );
    }
    // Same bytes as the command line with SOURCE_DATE_EPOCH.
    let cli_out = dir.path().join("cli");
    ok(Command::new(env!("CARGO_BIN_EXE_abbuild"))
        .args(["build", "--version", "42", "--image"])
        .arg(repo_file("images/qemu-test.toml"))
        .arg("--system")
        .arg(&sys)
        .arg("--key")
        .arg(&key)
        .arg("--out-dir")
        .arg(&cli_out)
        .env("SOURCE_DATE_EPOCH", EPOCH));
    assert!(fs::read(&out.image).unwrap() == fs::read(cli_out.join("qemu-test-42.img")).unwrap());
    assert!(fs::read(&out.bundle).unwrap() == fs::read(cli_out.join("qemu-test-42.abu")).unwrap());
}

#[test]
fn qcow2_output() {
    let dir = tempfile::tempdir().unwrap();
    let sys = fake_system(dir.path());
    let mut o = BuildOptions::new(
        repo_file("images/qemu-test.toml"),
        &sys,
        "1",
        test_key(dir.path()),
        dir.path().join("out"),
    );
    o.format = DiskFormat::Qcow2;
    o.epoch = Some(0);
    if abbuild::cmd::find_program("qemu-img").is_none() {
        let e = format!("{:#}", build(&o).unwrap_err());
        assert!(e.contains("qemu-img not found"), "{e}");
        eprintln!("skipping the qcow2 check: qemu-img (qemu-utils) is not installed");
        return;
    }
    let out = build(&o).unwrap();
    assert_eq!(out.image, dir.path().join("out/qemu-test-1.qcow2"));
    let info = stdout(Command::new("qemu-img").arg("info").arg(&out.image));
    assert!(
        info.contains("file format: qcow2") && info.contains("768 MiB"),
        "{info}"
    );
}
