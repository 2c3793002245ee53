//! A real Nix store path: a tiny toplevel built with `nix-build` from a derivation needing no
//! nixpkgs (busybox from the host as the builder), its closure packed under /nix/store.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

/// Whether nix-build is installed; says so when it is not (the caller skips).
fn have_nix_build() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v nix-build"])
        .output()
        .unwrap()
        .status
        .success();
    if !found {
        eprintln!("skipping: nix-build is not installed");
    }
    found
}

/// Builds the fixture toplevel; `None` (after saying why) when nix-build is not installed.
fn nix_toplevel(dir: &Path) -> Option<PathBuf> {
    if !have_nix_build() {
        return None;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let busybox = busybox.expect("busybox (busybox-static) is needed to build the Nix fixture");
    fs::create_dir_all(dir.join("bb")).unwrap();
    fs::copy(busybox, dir.join("bb/busybox")).unwrap();
    fs::write(dir.join("default.nix"), FIXTURE).unwrap();
    let out = stdout(
        Command::new("nix-build")
            .args(["--option", "sandbox", "false", "--no-out-link"])
            .arg(dir.join("default.nix")),
    );
    Some(PathBuf::from(out.trim()))
}

/// A toplevel with the contract's files and a dependency holding a hard link, a symlink and an
/// executable. Busybox must be called by a name starting with "busybox", hence its own directory.
const FIXTURE: &str = r#"
let
  bbdir = builtins.path { path = ./bb; name = "abbuild-test-bb"; };
  bb = "${bbdir}/busybox";
  mk = name: script: builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = bb;
    args = [ "sh" "-c" script ];
  };
  dep = mk "abbuild-test-dep" ''
    ${bb} mkdir -p $out/bin
    echo data > $out/file
    ${bb} ln $out/file $out/hardlink
    ${bb} ln -s file $out/sym
    ${bb} cp ${bb} $out/bin/busybox
  '';
in mk "abbuild-test-toplevel" ''
  ${bb} mkdir -p $out/etc
  ${bb} ln -s ${dep}/bin/busybox $out/init
  ${bb} head -c 100000 ${bb} > $out/kernel
  ${bb} tail -c 100000 ${bb} > $out/initrd
  echo 'quiet panic=5' > $out/kernel-params
  echo hi > $out/etc/motd
''
"#;

#[test]
fn store_path_closure_becomes_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let Some(top) = nix_toplevel(dir.path()) else {
        return;
    };
    let closure = stdout(Command::new("nix-store").arg("-qR").arg(&top));
    let dep = closure
        .lines()
        .find(|l| l.ends_with("-abbuild-test-dep"))
        .expect("dep in the closure")
        .to_string();
    let key = test_key(dir.path());
    let out = dir.path().join("out");
    // Through a ./result-style symlink, as users call it.
    let link = dir.path().join("result");
    std::os::unix::fs::symlink(&top, &link).unwrap();
    ok(&mut build_cmd(
        &repo_file("images/qemu-test.toml"),
        &link,
        &key,
        &out,
    ));
    let image = out.join("qemu-test-2026.11.22.1.img");
    let bundle = out.join("qemu-test-2026.11.22.1.abu");
    let list = list_slot_a(&image);
    let t = top.display();
    for line in [
        format!(
            "lrwxrwxrwx 0/0 {:>23} 2023-11-14 22:13 squashfs-root/init -> {t}/init",
            format!("{t}/init").len()
        ),
        format!("squashfs-root/etc -> {t}/etc"),
        format!("squashfs-root/system -> {t}"),
        "drwxr-xr-x 0/0                       3 2023-11-14 22:13 squashfs-root/data".into(),
        "drwxrwxrwt 0/0                       3 2023-11-14 22:13 squashfs-root/tmp".into(),
        "dr-xr-xr-x 0/0                       3 2023-11-14 22:13 squashfs-root/proc".into(),
        "squashfs-root/dev".into(),
        "squashfs-root/run".into(),
        "squashfs-root/sys".into(),
        "drwxr-xr-x 0/0                       3 2023-11-14 22:13 squashfs-root/var".into(),
        "drwxr-xr-x 0/0                      ".to_string(), // nix and nix/store: mode 755
        format!("squashfs-root{dep}/sym -> file"),
        "-r-xr-xr-x 0/0 ".to_string(), // the executable keeps its mode
        format!("squashfs-root{dep}/bin/busybox"),
        format!("squashfs-root{t}/etc/motd"),
    ] {
        assert!(list.contains(&line), "no '{line}' in\n{list}");
    }
    // Only the closure is in the store.
    let in_store: Vec<_> = list
        .lines()
        .filter_map(|l| l.split("squashfs-root/nix/store/").nth(1))
        .filter(|p| !p.contains('/'))
        .collect();
    assert_eq!(in_store.len(), closure.lines().count(), "{in_store:?}");

    let manifest = inspect(&bundle);
    assert_eq!(manifest["build_id"], t.to_string());
    // panic=5 is in both the system's and the image's parameters: once is enough.
    // Then abbuild's dm-verity parameter (verity.rs).
    let kp = manifest["kernel_params"].as_str().unwrap();
    assert!(
        kp.starts_with("quiet panic=5 console=ttyS0 abinit.verity=")
            && kp.matches(' ').count() == 3,
        "{kp}"
    );
    fsck_esp(&image, dir.path());
    assert!(mtype(&image, "a/info.json").contains(&format!("\"buildId\": \"{t}\"")));

    // Hard links within the closure survive.
    let (off, _) = partition(&image, "root-a");
    let dest = dir.path().join("extracted");
    ok(Command::new("unsquashfs")
        .arg("-o")
        .arg(off.to_string())
        .arg("-d")
        .arg(&dest)
        .arg(&image));
    use std::os::unix::fs::MetadataExt;
    let rel = dep.trim_start_matches('/');
    assert_eq!(
        fs::metadata(dest.join(rel).join("file")).unwrap().ino(),
        fs::metadata(dest.join(rel).join("hardlink")).unwrap().ino()
    );

    // And a second build of the same store path gives the same bytes.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out2 = dir.path().join("out2");
    ok(&mut build_cmd(
        &repo_file("images/qemu-test.toml"),
        &top,
        &key,
        &out2,
    ));
    assert!(
        fs::read(&bundle).unwrap() == fs::read(out2.join("qemu-test-2026.11.22.1.abu")).unwrap()
    );
    assert!(
        fs::read(&image).unwrap() == fs::read(out2.join("qemu-test-2026.11.22.1.img")).unwrap()
    );
}

/// nix/initrd/mkinitrd.sh picks kernel modules right on synthetic 6.1- and 6.18-style module
/// trees (soft dependencies, aliases, renamed and compressed modules, optional ones) and on trees
/// with an empty or missing modules.builtin; the cases are in nix/tests/mkinitrd-test.sh.
#[test]
fn mkinitrd_module_trees() {
    let out = Command::new("sh")
        .arg(repo_file("nix/tests/mkinitrd-test.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nix/tests/mkinitrd-test.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// nix/default.nix's abbuild, built against nix/tests/mock-nixpkgs around this build's abbuild
/// binary, its systemd being `systemd_boot_efi` and its GRUB the host's: the package's path.
fn nix_built_abbuild(systemd_boot_efi: &Path) -> PathBuf {
    // The real man page generator when this build has it (cargo test --workspace builds it);
    // else the mock's stand-in.
    let docgen = Path::new(env!("CARGO_BIN_EXE_abbuild")).with_file_name("abdocgen");
    let mut build = nix_build();
    if docgen.exists() {
        build.arg("--argstr").arg("abdocgen").arg(&docgen);
    }
    let pkg = stdout(
        build
            .arg(repo_file("nix/tests/mock-system.nix"))
            .args([
                "-A",
                "abbuild",
                "--argstr",
                "abbuild",
                env!("CARGO_BIN_EXE_abbuild"),
            ])
            .arg("--argstr")
            .arg("systemdBootEfi")
            .arg(systemd_boot_efi),
    );
    PathBuf::from(pkg.trim())
}

/// The hardware watchdog's feeder (nix/system/watchdog-feeder.sh, used by mkSystem and the
/// fixture) feeds while PID 1 reaps orphans and stops when it does not: the cases are in
/// nix/tests/watchdog-feeder-test.sh (PID namespaces; skipped, with a note, without root). A
/// feeder that feeds regardless fails it ("the feeder fed a wedged init").
#[test]
fn watchdog_feeder_stops_when_init_stops_reaping() {
    let out = Command::new("sh")
        .arg(repo_file("nix/tests/watchdog-feeder-test.sh"))
        .output()
        .unwrap();
    if out.status.code() == Some(77) {
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        return;
    }
    assert!(
        out.status.success(),
        "nix/tests/watchdog-feeder-test.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Nix-built abbuild (nix/default.nix, built against nix/tests/mock-nixpkgs with this
/// abbuild binary) carries systemd-boot from the systemd package: its wrapper names the store
/// copy, and an image definition without `bootloader` gets exactly that file as BOOTX64.EFI,
/// whatever the host has in /usr/lib/systemd/boot/efi.
#[test]
fn nix_built_abbuild_carries_systemd_boot() {
    let dir = tempfile::tempdir().unwrap();
    let Some(top) = nix_toplevel(dir.path()) else {
        return;
    };
    // Stands for the systemd package's EFI binary: bytes no host file has.
    let efi = dir.path().join("systemd-bootx64.efi");
    let efi_bytes = noise(150_000, 11);
    fs::write(&efi, &efi_bytes).unwrap();
    let pkg = nix_built_abbuild(&efi);
    let wrapped = pkg.join("bin/abbuild");
    // postInstall installed the man pages and completions, and removed the generator.
    let share = pkg.join("share");
    let page = fs::read_to_string(share.join("man/man1/abbuild.1")).unwrap();
    assert!(page.contains(".TH"), "{page}");
    assert!(share
        .join("bash-completion/completions/abbuild.bash")
        .exists());
    assert!(!pkg.join("bin/abdocgen").exists());

    // qemu-test.toml names Debian's file; without that line the default applies.
    let def = fs::read_to_string(repo_file("images/qemu-test.toml")).unwrap();
    let def: String = def
        .lines()
        .filter(|l| !l.starts_with("bootloader"))
        .map(|l| format!("{l}\n"))
        .collect();
    let image_def = dir.path().join("qemu-test.toml");
    fs::write(&image_def, def).unwrap();

    let key = test_key(dir.path());
    let out = dir.path().join("out");
    // The arguments a test build gets, given to the wrapper instead of the cargo binary.
    let args = build_cmd(&image_def, &top, &key, &out);
    ok(Command::new(&wrapped)
        .args(args.get_args())
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env_remove("ABBUILD_SYSTEMD_BOOT_EFI"));

    let image = out.join("qemu-test-2026.11.22.1.img");
    let (off, _) = partition(&image, "esp");
    let got = dir.path().join("BOOTX64.EFI");
    ok(Command::new("mcopy")
        .arg("-i")
        .arg(format!("{}@@{off}", image.display()))
        .arg("::EFI/BOOT/BOOTX64.EFI")
        .arg(&got));
    assert!(
        fs::read(&got).unwrap() == efi_bytes,
        "BOOTX64.EFI is not the store's systemd-boot"
    );
}

/// The absolute path of `program` on this host's PATH.
fn host_program(program: &str) -> PathBuf {
    let out = stdout(Command::new("sh").args(["-c", &format!("command -v {program}")]));
    PathBuf::from(out.trim())
}

/// The Nix-built abbuild carries GRUB (nix/default.nix, against nix/tests/mock-nixpkgs, whose
/// grub2 and grub2_efi are the host's GRUB laid out as nixpkgs lays them out): its wrapper sets
/// ABBUILD_GRUB_LIB to a store directory with both GRUB platforms and puts grub-mkimage on
/// PATH, and a GRUB image builds through it with the host's GRUB out of reach (no grub-mkimage
/// on PATH, and /usr/lib/grub hidden in a mount namespace where the test may make one), where
/// the cargo-built abbuild fails.
#[test]
fn nix_built_abbuild_carries_grub() {
    let dir = tempfile::tempdir().unwrap();
    let Some(top) = nix_toplevel(dir.path()) else {
        return;
    };
    let pkg = nix_built_abbuild(Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi"));
    let wrapped = pkg.join("bin/abbuild");
    let wrapper = fs::read_to_string(&wrapped).unwrap();

    // The GRUB directory the wrapper names: in the store, with both platforms.
    let lib = wrapper
        .split_once("ABBUILD_GRUB_LIB=")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(v, _)| PathBuf::from(v))
        .unwrap_or_else(|| panic!("the wrapper sets no ABBUILD_GRUB_LIB:\n{wrapper}"));
    assert!(lib.starts_with("/nix/store"), "{}", lib.display());
    for f in [
        "i386-pc/moddep.lst",
        "i386-pc/boot.img",
        "x86_64-efi/moddep.lst",
    ] {
        let real = fs::canonicalize(lib.join(f)).unwrap();
        assert!(real.starts_with("/nix/store"), "{}", real.display());
    }
    // The grub-mkimage the wrapper puts on PATH, also in the store.
    let path_line = wrapper
        .lines()
        .find(|l| l.starts_with("PATH="))
        .expect("the wrapper sets PATH");
    let mkimage = path_line
        .split(['\'', ':'])
        .map(|d| Path::new(d).join("grub-mkimage"))
        .find(|p| p.starts_with("/nix/store") && p.exists())
        .unwrap_or_else(|| panic!("no grub-mkimage on the wrapper's PATH: {path_line}"));

    // PATH with only what abbuild needs besides GRUB.
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    for p in ["mksquashfs", "nix-store"] {
        std::os::unix::fs::symlink(host_program(p), bin.join(p)).unwrap();
    }
    // /usr/lib/grub hidden under an empty tmpfs, if this test may make a mount namespace.
    let (unshare, mount, sh) = (
        host_program("unshare"),
        host_program("mount"),
        host_program("sh"),
    );
    let hide = Command::new(&unshare)
        .arg("-m")
        .arg(&sh)
        .arg("-c")
        .arg(format!("{} -t tmpfs none /usr/lib/grub", mount.display()))
        .status()
        .is_ok_and(|s| s.success());
    if !hide {
        eprintln!("cannot make a mount namespace here: /usr/lib/grub stays visible");
    }
    let key = test_key(dir.path());
    let out = dir.path().join("out");
    let args = build_cmd(&repo_file("images/qemu-test-grub.toml"), &top, &key, &out);
    let run = |program: &Path, path: &str| {
        let mut c = if hide {
            let mut c = Command::new(&unshare);
            c.arg("-m")
                .arg(&sh)
                .arg("-c")
                .arg(format!(
                    "{} -t tmpfs none /usr/lib/grub && exec \"$@\"",
                    mount.display()
                ))
                .arg("sh")
                .arg(program);
            c
        } else {
            Command::new(program)
        };
        c.args(args.get_args())
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .env("PATH", path)
            .env_remove("ABBUILD_GRUB_LIB")
            .env_remove("ABBUILD_GRUB_MKIMAGE");
        c
    };
    let bin_path = bin.to_str().unwrap().to_string();
    let cargo_abbuild = Path::new(env!("CARGO_BIN_EXE_abbuild"));
    // Without the wrapper there is no GRUB here: no grub-mkimage ...
    let e = fails(&mut run(cargo_abbuild, &bin_path));
    assert!(e.contains("grub-mkimage not found"), "{e}");
    // ... and with the store's grub-mkimage, no modules (when /usr/lib/grub is hidden).
    if hide {
        let with_mkimage = format!("{bin_path}:{}", mkimage.parent().unwrap().display());
        let e = fails(&mut run(cargo_abbuild, &with_mkimage));
        assert!(e.contains("modules are not in /usr/lib/grub"), "{e}");
    }
    // The wrapper brings both.
    ok(&mut run(&wrapped, &bin_path));

    let image = out.join("qemu-test-grub-2026.11.22.1.img");
    let verify = stdout(Command::new("sgdisk").arg("-v").arg(&image));
    assert!(verify.contains("No problems found"), "{verify}");
    assert_eq!(partition(&image, "bios-boot"), (1 << 20, 1 << 20));
    // BOOTX64.EFI is GRUB's EFI image made from the store's x86_64-efi modules.
    let expect = dir.path().join("expect.efi");
    ok(Command::new(&mkimage)
        .args(["-O", "x86_64-efi", "-d"])
        .arg(lib.join("x86_64-efi"))
        .arg("-p")
        .arg(abbuild::grub::prefix())
        .arg("-o")
        .arg(&expect)
        .args(abbuild::grub::MODULES));
    let (off, _) = partition(&image, "esp");
    let got = dir.path().join("BOOTX64.EFI");
    ok(Command::new("mcopy")
        .arg("-i")
        .arg(format!("{}@@{off}", image.display()))
        .arg("::EFI/BOOT/BOOTX64.EFI")
        .arg(&got));
    assert!(
        fs::read(&got).unwrap() == fs::read(&expect).unwrap(),
        "BOOTX64.EFI is not GRUB made from the store's modules"
    );
    // The MBR carries the store's boot.img code: from after the patched drive check
    // (abbuild::bios) up to the disk signature, the bytes are boot.img's.
    let boot_img = fs::read(lib.join("i386-pc/boot.img")).unwrap();
    let mbr = read_range(&image, 0, 512);
    assert_eq!(mbr[0x68..0x1b8], boot_img[0x68..0x1b8]);
}

/// mkSystem's ssh (built against nix/tests/mock-nixpkgs, whose dropbear records the override
/// arguments it gets): dropbear with scp on the system's PATH, and its sftp path is the
/// etc/ssh/sftp-server link to an executable sftp server.
#[test]
fn mksystem_ssh_has_scp_and_sftp() {
    if !have_nix_build() {
        return;
    }
    let build = |attr: &str| {
        let out = stdout(
            nix_build()
                .arg(repo_file("nix/tests/mock-system.nix"))
                .args(["-A", attr]),
        );
        PathBuf::from(out.trim())
    };
    let sw = build("bootable.sw");
    let etc = build("bootable.etc");
    assert!(sw.join("bin/scp").exists(), "no scp in {}", sw.display());
    let dropbear = fs::canonicalize(sw.join("bin/dropbear")).unwrap();
    let sftp_path =
        fs::read_to_string(dropbear.parent().unwrap().join("../nix-support/sftp-path")).unwrap();
    assert_eq!(sftp_path.trim(), "/etc/ssh/sftp-server");
    let server = fs::canonicalize(etc.join("ssh/sftp-server")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert!(fs::metadata(&server).unwrap().permissions().mode() & 0o111 != 0);
}

/// mkSystem with `abupdate.channel`: abupdate.toml carries the channel, the reboot window and
/// the jitter, and busybox init respawns a loop that runs `abupdate update` every interval.
/// Without a channel, none of it.
#[test]
fn mksystem_channel_runs_update_periodically() {
    if !have_nix_build() {
        return;
    }
    let build = |attr: &str| {
        let out = stdout(
            nix_build()
                .arg(repo_file("nix/tests/mock-system.nix"))
                .args(["-A", attr]),
        );
        PathBuf::from(out.trim())
    };
    let etc = build("updating.etc");
    let toml: toml::Table =
        toml::from_str(&fs::read_to_string(etc.join("abupdate.toml")).unwrap()).unwrap();
    assert_eq!(
        toml["channel"].as_str(),
        Some("https://updates.example.org/vps/stable.json")
    );
    assert_eq!(toml["update-reboot"].as_str(), Some("03:00-05:00"));
    assert_eq!(toml["update-jitter"].as_str(), Some("5m"));
    let inittab = fs::read_to_string(etc.join("inittab")).unwrap();
    let service = inittab
        .lines()
        .find_map(|l| {
            l.strip_prefix("::respawn:")
                .filter(|s| s.ends_with("service-abupdate-update"))
        })
        .unwrap_or_else(|| panic!("no abupdate-update service in {inittab}"));
    let service = fs::read_to_string(service).unwrap();
    let looped = service.split_whitespace().last().unwrap();
    let looped = fs::read_to_string(looped).unwrap();
    assert!(
        looped.contains("abupdate update") && looped.contains("sleep 600"),
        "{looped}"
    );

    // Values abupdate would refuse to load (failing boot-check and mark-good) fail the build.
    for (option, value) in [
        ("updateJitter", "soon"),
        ("reboot", "24:00-01:00"),
        ("reboot", "03:00-03:00"),
    ] {
        let expr = format!(
            "let ab = import {} {{ pkgs = import {} {{ }}; }}; in (ab.mkSystem {{ modules = [ {} {} \
             {{ abupdate = {{ channel = \"/media/ssd/vps/stable.json\"; {option} = \"{value}\"; }}; }} ]; }}).etc.drvPath",
            repo_file("nix/default.nix").display(),
            repo_file("nix/tests/mock-nixpkgs").display(),
            repo_file("nix/examples/vps.nix").display(),
            repo_file("nix/tests/vps-test.nix").display(),
        );
        let err = fails(Command::new("nix-instantiate").args(["--eval", "-E", &expr]));
        assert!(
            err.contains(&format!("abupdate.{option} '{value}'")),
            "{err}"
        );
    }

    let plain = build("bootable.etc");
    assert!(!fs::read_to_string(plain.join("abupdate.toml"))
        .unwrap()
        .contains("channel"));
    assert!(!fs::read_to_string(plain.join("inittab"))
        .unwrap()
        .contains("abupdate-update"));
}

/// mkSystem with `abupdate.channelMedium` (air-gapped sites): the update loop mounts the medium
/// read-only before `abupdate update` and unmounts it after, so it can be swapped between
/// checks; without a medium the loop mounts nothing; a device that is not a plain word fails
/// the build. The loop itself runs in QEMU in qemu-tests/scenarios/14_unattended.py (the
/// fixture's copy of it).
#[test]
fn mksystem_channel_medium_is_mounted_for_each_check() {
    if !have_nix_build() {
        return;
    }
    let update_loop = |attr: &str| {
        let etc = PathBuf::from(
            stdout(
                nix_build()
                    .arg(repo_file("nix/tests/mock-system.nix"))
                    .args(["-A", attr]),
            )
            .trim(),
        );
        let inittab = fs::read_to_string(etc.join("inittab")).unwrap();
        let service = inittab
            .lines()
            .find_map(|l| {
                l.strip_prefix("::respawn:")
                    .filter(|s| s.ends_with("service-abupdate-update"))
            })
            .unwrap_or_else(|| panic!("no abupdate-update service in {inittab}"));
        let service = fs::read_to_string(service).unwrap();
        fs::read_to_string(service.split_whitespace().last().unwrap()).unwrap()
    };
    let looped = update_loop("updatingOffline.etc");
    let at = |s: &str| {
        looped
            .find(s)
            .unwrap_or_else(|| panic!("no {s:?} in {looped}"))
    };
    at("mount -t auto -o ro,nosuid,nodev,noexec 'LABEL=abupdates' '/run/media/abupdates'");
    assert!(at("mkdir -p '/run/media/abupdates'") < at("mount -t auto"));
    assert!(at("mount -t auto") < at("abupdate update"));
    assert!(at("abupdate update") < at("umount '/run/media/abupdates'"));
    assert!(at("umount") < at("sleep 3600"));
    assert!(!update_loop("updating.etc").contains("mount"));

    let expr = format!(
        "let ab = import {} {{ pkgs = import {} {{ }}; }}; in (ab.mkSystem {{ modules = [ {} {} \
         {{ abupdate = {{ channel = \"/run/m/vps/stable.json\"; channelMedium.device = \"/dev/sdb1 /x\"; }}; }} ]; }}).etc.drvPath",
        repo_file("nix/default.nix").display(),
        repo_file("nix/tests/mock-nixpkgs").display(),
        repo_file("nix/examples/vps.nix").display(),
        repo_file("nix/tests/vps-test.nix").display(),
    );
    let err = fails(Command::new("nix-instantiate").args(["--eval", "-E", &expr]));
    assert!(
        err.contains("abupdate.channelMedium.device '/dev/sdb1 /x'"),
        "{err}"
    );
}

/// `nix-build` as every test here runs it: Debian 12's Nix 2.8 without a sandbox or a binary
/// cache (nothing is fetched), leaving no result link.
fn nix_build() -> Command {
    let mut cmd = Command::new("nix-build");
    cmd.args([
        "--option",
        "sandbox",
        "false",
        "--option",
        "substituters",
        "",
    ])
    .arg("--no-out-link");
    cmd
}

/// `nix-build` of one attribute of nix/tests/mock-system.nix (mkSystem on the mock nixpkgs).
fn mock_system(attr: &str) -> PathBuf {
    let out = stdout(
        nix_build()
            .arg(repo_file("nix/tests/mock-system.nix"))
            .args(["-A", attr]),
    );
    PathBuf::from(out.trim())
}

/// Builds `system`'s initrd and toplevel and checks that the initrd holds the kernel's modules
/// (every file etc/abinit/modules lists, virtio_blk among them unless built in) and that the
/// toplevel's kernel is the kernel's image.
fn check_initrd_modules(system: &str) {
    let initrd = mock_system(&format!("{system}.initrd"));
    let kver = initrd
        .to_str()
        .unwrap()
        .split_once("-abinit-initrd-")
        .expect("initrd named abinit-initrd-<version>")
        .1
        .to_string();
    let cpio = |args: &str| {
        stdout(Command::new("sh").arg("-c").arg(format!(
            "gzip -dc '{}' | cpio --quiet {args}",
            initrd.join("initrd").display()
        )))
    };
    let files = cpio("-it");
    let listed = cpio("-i --to-stdout etc/abinit/modules");
    assert!(!listed.trim().is_empty(), "no modules in the initrd");
    for m in listed.lines() {
        let path = format!("lib/modules/{kver}/{m}");
        assert!(files.lines().any(|l| l == path), "{path} not in the initrd");
    }
    let builtin =
        fs::read_to_string(format!("/lib/modules/{kver}/modules.builtin")).unwrap_or_default();
    if !builtin.contains("/virtio_blk.ko") {
        assert!(listed.contains("/virtio_blk.ko"), "{listed}");
    }
    let top = mock_system(&format!("{system}.toplevel"));
    assert!(
        fs::read(top.join("kernel")).unwrap() == fs::read(format!("/boot/vmlinuz-{kver}")).unwrap(),
        "the toplevel's kernel is not the kernel's bzImage"
    );
}

/// mkSystem with a kernel laid out as nixpkgs lays it out since PR #423933 (the mock's kernel:
/// outputs out, dev and modules, the modules in `modules`, none under out/lib/modules): the
/// initrd gets the modules. Reading `${kernel}/lib/modules` failed with "modules.dep not found".
#[test]
fn mksystem_initrd_with_split_output_kernel() {
    if !have_nix_build() {
        return;
    }
    check_initrd_modules("bootable");
}

/// mkSystem with a single-output kernel (older nixpkgs, or a custom kernel: lib/modules inside
/// out, no passthru target): the initrd gets the modules, the toplevel the bzImage.
#[test]
fn mksystem_initrd_with_single_output_kernel() {
    if !have_nix_build() {
        return;
    }
    check_initrd_modules("singleOutputKernel");
}

/// The .drv files in the closure of `attr` of nix/tests/mock-system.nix (instantiated only),
/// by name, with their text.
fn mock_system_drvs(attr: &str) -> Vec<(String, String)> {
    let drv = stdout(
        Command::new("nix-instantiate")
            .arg(repo_file("nix/tests/mock-system.nix"))
            .args(["-A", attr]),
    );
    stdout(Command::new("nix-store").arg("-qR").arg(drv.trim()))
        .lines()
        .filter(|l| l.ends_with(".drv"))
        .map(|l| (l.to_string(), fs::read_to_string(l).unwrap()))
        .collect()
}

/// The one .drv in `drvs` whose name ends with `suffix`.
fn drv_named<'a>(drvs: &'a [(String, String)], suffix: &str) -> &'a str {
    let found: Vec<_> = drvs.iter().filter(|(p, _)| p.ends_with(suffix)).collect();
    assert_eq!(found.len(), 1, "{suffix}: {found:?}");
    &found[0].1
}

/// What the example system asks of nixpkgs, against the mock's real-shaped packages (docs/nix.md,
/// "Touch points"): abupdate from pkgsStatic's rustPlatform (a static host) without its own
/// RUSTFLAGS, e2fsprogs without fuse2fs and libarchive, openssh without PAM and ldns. Before,
/// abupdate came from pkgsMusl with +crt-static and both packages had nixpkgs' defaults.
#[test]
fn mksystem_asks_nixpkgs_for_static_and_lean_packages() {
    if !have_nix_build() {
        return;
    }
    let drvs = mock_system_drvs("vps.toplevel");
    let abupdate = drvs
        .iter()
        .find(|(p, _)| p.ends_with("-abupdate-stub.drv") || p.ends_with("-abupdate-prebuilt.drv"))
        .map(|(_, t)| t.as_str())
        .expect("an abupdate derivation");
    assert!(abupdate.contains("(\"hostIsStatic\",\"1\")"), "{abupdate}");
    assert!(abupdate.contains("(\"RUSTFLAGS\",\"\")"), "{abupdate}");
    let e2fs = drv_named(&drvs, "-e2fsprogs-stub.drv");
    assert!(
        e2fs.contains("(\"configureFlags\",\"--disable-elf-shlibs\")"),
        "{e2fs}"
    );
    assert!(!e2fs.contains("(\"fuse2fs\","), "{e2fs}");
    let ssh = drv_named(&drvs, "-openssh-stub.drv");
    assert!(
        ssh.contains("(\"configureFlags\",\"--without-pam\")"),
        "{ssh}"
    );
}

/// The mock's `.override` takes the argument names of the nixpkgs package function only, as
/// callPackage does, so a misspelt or removed argument fails as it would against nixpkgs.
#[test]
fn mock_nixpkgs_override_rejects_unknown_arguments() {
    if !have_nix_build() {
        return;
    }
    let eval = |expr: &str| {
        Command::new("nix-instantiate")
            .args(["--eval", "-E"])
            .arg(format!(
                "let p = import {} {{ }}; in {expr}",
                repo_file("nix/tests/mock-nixpkgs").display()
            ))
            .output()
            .unwrap()
    };
    for (pkg, good, bad) in [
        ("busybox", "enableStatic", "enableStatics"),
        ("dropbear", "sftpPath", "sftp"),
        ("openssh", "withLdns", "withLDNS"),
        ("pkgsStatic.e2fsprogs", "withLibarchive", "withArchive"),
    ] {
        let ok = eval(&format!("(p.{pkg}.override {{ {good} = false; }}).drvPath"));
        assert!(
            ok.status.success(),
            "{pkg}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let e = eval(&format!("(p.{pkg}.override {{ {bad} = false; }}).drvPath"));
        let err = String::from_utf8_lossy(&e.stderr);
        assert!(
            !e.status.success() && err.contains(&format!("unexpected argument '{bad}'")),
            "{pkg}: {err}"
        );
    }
}

/// The respawned service `name` of the system whose etc is `etc`: the command its script execs.
fn service_command(etc: &Path, name: &str) -> Option<String> {
    let inittab = fs::read_to_string(etc.join("inittab")).unwrap();
    let script = inittab.lines().find_map(|l| {
        l.strip_prefix("::respawn:")
            .filter(|s| s.ends_with(&format!("-service-{name}")))
    })?;
    let script = fs::read_to_string(script).unwrap();
    Some(
        script
            .lines()
            .find_map(|l| l.strip_prefix("exec "))
            .unwrap()
            .to_string(),
    )
}

/// mkSystem's IPv6 and time (nix/tests/mock-system.nix `dualStack`): several static addresses of
/// both families on one interface (the old single `address` too), a link-local IPv6 gateway
/// routed through its interface, router advertisements off where `slaac = false`, udhcpc6 on a
/// DHCPv6 interface with the leases' DNS servers merged into resolv.conf, and busybox ntpd on the
/// configured servers, whose first answer the update loop waits for before its first check.
/// Before, `addresses`, `gateways`, `slaac`, `dhcp6` and `time` did not exist (unknown options or
/// ignored) and a v6 gateway was routed without `-6`.
#[test]
fn mksystem_ipv6_and_time() {
    if !have_nix_build() {
        return;
    }
    let etc = mock_system("dualStack.etc");
    let inittab = fs::read_to_string(etc.join("inittab")).unwrap();
    let boot = inittab
        .lines()
        .find_map(|l| l.strip_prefix("::sysinit:"))
        .unwrap();
    let boot = fs::read_to_string(boot).unwrap();
    let at = |s: &str| {
        boot.find(s)
            .unwrap_or_else(|| panic!("no {s:?} in the boot script:\n{boot}"))
    };
    let ra_off = at("echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_ra");
    at("echo 0 > /proc/sys/net/ipv6/conf/eth0/autoconf");
    let up = at("ip link set 'eth0' up");
    let v4 = at("ip addr add '192.0.2.10/24' dev 'eth0'");
    let v6a = at("ip addr add '2001:db8:1:2::10/64' dev 'eth0'");
    let v6b = at("ip addr add '2001:db8:1:2::11/64' dev 'eth0'");
    let gw4 = at("ip -4 route replace default via '192.0.2.1' dev 'eth0'");
    let gw6 = at("ip -6 route replace default via 'fe80::1' dev 'eth0'");
    assert!(ra_off < up && up < v4 && v4 < v6a && v6a < v6b && v6b < gw4.min(gw6));
    at("echo 'nameserver 2001:db8::53' >> /run/resolv.conf");

    let dhcp6 = service_command(&etc, "udhcpc6-eth1").expect("a udhcpc6 service for eth1");
    assert!(dhcp6.contains("/bin/udhcpc6 -f -i eth1 -s "), "{dhcp6}");
    let hook = fs::read_to_string(dhcp6.split_whitespace().last().unwrap()).unwrap();
    for s in [
        "ip -6 addr add \"$ipv6/128\" dev \"$interface\"",
        "> \"/run/dns/v6-$interface\"",
        "echo 'nameserver 2001:db8::53'",
        "cat /run/dns/*",
        "mv /run/resolv.conf.new /run/resolv.conf",
    ] {
        assert!(hook.contains(s), "no {s:?} in the udhcpc6 script:\n{hook}");
    }
    // The DHCP (v4) lease's DNS servers go through the same merge, so neither drops the other's.
    let dhcp4 = service_command(&etc, "udhcpc-eth1").expect("a udhcpc service for eth1");
    let hook4 = fs::read_to_string(dhcp4.split_whitespace().last().unwrap()).unwrap();
    assert!(hook4.contains("/run/dns/v4-$interface") && hook4.contains("cat /run/dns/*"));
    assert!(service_command(&etc, "udhcpc-eth0").is_none(), "{inittab}");

    let ntpd = service_command(&etc, "ntpd").expect("an ntpd service");
    assert!(
        ntpd.contains("/bin/ntpd -n -S ")
            && ntpd.ends_with(" -p ntp.example.internal -p 2001:db8::123"),
        "{ntpd}"
    );
    let event = fs::read_to_string(ntpd.split_whitespace().nth(3).unwrap()).unwrap();
    assert!(
        event.contains("step|stratum|periodic) : > /run/time-synced")
            && event.contains("unsync) rm -f /run/time-synced"),
        "{event}"
    );
    let looped = service_command(&etc, "abupdate-update").unwrap();
    let looped = fs::read_to_string(looped).unwrap();
    let wait = looped
        .find("while [ ! -e /run/time-synced ] && [ \"$waited\" -lt 120 ]")
        .unwrap_or_else(|| panic!("no wait for the clock in\n{looped}"));
    assert!(wait < looped.find("abupdate update").unwrap(), "{looped}");

    // time.servers = [ ]: no ntpd, and the loop does not wait.
    let plain = mock_system("updating.etc");
    assert!(service_command(&plain, "ntpd").is_none());
    let plain_loop =
        fs::read_to_string(service_command(&plain, "abupdate-update").unwrap()).unwrap();
    assert!(!plain_loop.contains("time-synced"), "{plain_loop}");

    // Misspelt interface options and addresses that are not addresses fail the build.
    for (module, message) in [
        (
            "{ networking.interfaces.eth0 = { address = \"192.0.2.10/24\"; gateway6 = \"fe80::1\"; }; }",
            "unknown option networking.interfaces.eth0.gateway6",
        ),
        (
            "{ networking.interfaces.eth0.addresses = [ \"2001:db8::1/64; reboot\" ]; }",
            "'2001:db8::1/64; reboot' is not an IPv4 or IPv6 address",
        ),
        (
            "{ time.servers = [ \"pool.ntp.org -d\" ]; }",
            "time.servers 'pool.ntp.org -d'",
        ),
    ] {
        let expr = format!(
            "let ab = import {} {{ pkgs = import {} {{ }}; }}; in (ab.mkSystem {{ modules = [ {} {} {module} ]; }}).etc.drvPath",
            repo_file("nix/default.nix").display(),
            repo_file("nix/tests/mock-nixpkgs").display(),
            repo_file("nix/examples/vps.nix").display(),
            repo_file("nix/tests/vps-test.nix").display(),
        );
        let err = fails(Command::new("nix-instantiate").args(["--eval", "-E", &expr]));
        assert!(err.contains(message), "{err}");
    }
}

/// mkSystem's hardware watchdog (on by default): the initrd carries the watchdog driver (the
/// mock's kernel is Debian's, which has i6300esb), the kernel command line asks abinit to arm
/// it, and init respawns the feeder; `watchdog.enable = false` drops all three; a timeout out of
/// range fails the evaluation. Before, none of it existed (the hung-init boot that needs it:
/// qemu-tests/scenarios/16_watchdog.py).
#[test]
fn mksystem_watchdog_is_armed_and_fed() {
    if !have_nix_build() {
        return;
    }
    let with_module = |extra: &str, attr: &str| {
        let expr = format!(
            "let ab = import {} {{ pkgs = import {} {{ }}; }}; in (ab.mkSystem {{ modules = [ {} {} {extra} ]; }}).{attr}",
            repo_file("nix/default.nix").display(),
            repo_file("nix/tests/mock-nixpkgs").display(),
            repo_file("nix/examples/vps.nix").display(),
            repo_file("nix/tests/vps-test.nix").display(),
        );
        let mut cmd = nix_build();
        cmd.args(["-E", &expr]);
        PathBuf::from(stdout(&mut cmd).trim())
    };
    let feeder_of = |etc: &Path| {
        let inittab = fs::read_to_string(etc.join("inittab")).unwrap();
        inittab
            .lines()
            .find_map(|l| {
                l.strip_prefix("::respawn:")
                    .filter(|s| s.ends_with("service-watchdog-feeder"))
            })
            .map(|s| {
                let service = fs::read_to_string(s).unwrap();
                fs::read_to_string(service.split_whitespace().last().unwrap()).unwrap()
            })
    };
    let initrd_modules = |initrd: &Path| {
        stdout(Command::new("sh").arg("-c").arg(format!(
            "gzip -dc '{}' | cpio --quiet -i --to-stdout etc/abinit/modules",
            initrd.join("initrd").display()
        )))
    };

    let top = with_module("", "toplevel");
    let params = fs::read_to_string(top.join("kernel-params")).unwrap();
    assert!(params.contains("abinit.hwwatchdog=60"), "{params}");
    let feeder = feeder_of(&top.join("etc")).expect("no watchdog feeder in inittab");
    assert!(
        feeder.contains("AB_WATCHDOG") && feeder.contains("printf . >&3"),
        "{feeder}"
    );
    let initrd = with_module("", "initrd");
    assert!(
        initrd_modules(&initrd).contains("/i6300esb.ko"),
        "no i6300esb in the initrd"
    );
    let short = with_module("{ watchdog.timeout = 30; }", "toplevel");
    assert!(fs::read_to_string(short.join("kernel-params"))
        .unwrap()
        .contains("abinit.hwwatchdog=30"));

    let off = "{ watchdog.enable = false; }";
    let top = with_module(off, "toplevel");
    assert!(!fs::read_to_string(top.join("kernel-params"))
        .unwrap()
        .contains("hwwatchdog"));
    assert!(feeder_of(&top.join("etc")).is_none());
    assert!(!initrd_modules(&with_module(off, "initrd")).contains("i6300esb"));

    let expr = format!(
        "let ab = import {} {{ pkgs = import {} {{ }}; }}; in (ab.mkSystem {{ modules = [ {} {} \
         {{ watchdog.timeout = 2; }} ]; }}).toplevel.drvPath",
        repo_file("nix/default.nix").display(),
        repo_file("nix/tests/mock-nixpkgs").display(),
        repo_file("nix/examples/vps.nix").display(),
        repo_file("nix/tests/vps-test.nix").display(),
    );
    let err = fails(Command::new("nix-instantiate").args(["--eval", "-E", &expr]));
    assert!(err.contains("watchdog.timeout must be"), "{err}");
}

/// The web server example (nix/examples/webserver.nix on top of vps.nix, built against the mock
/// nixpkgs): init respawns busybox httpd on port 80 serving /data/www, the first page is in the
/// image, and the health check asks the server for it. The example did not exist before; its
/// counterpart in the fixture answers the host in 128 MiB in qemu-tests/scenarios/09.
#[test]
fn mksystem_webserver_example_serves_and_checks_itself() {
    if !have_nix_build() {
        return;
    }
    let etc = mock_system("webserver.etc");
    let inittab = fs::read_to_string(etc.join("inittab")).unwrap();
    let service = inittab
        .lines()
        .find_map(|l| {
            l.strip_prefix("::respawn:")
                .filter(|s| s.ends_with("service-httpd"))
        })
        .unwrap_or_else(|| panic!("no httpd service in {inittab}"));
    let service = fs::read_to_string(service).unwrap();
    assert!(
        service.contains("exec httpd -f -p 80 -u www -h /data/www"),
        "{service}"
    );
    assert!(fs::read_to_string(etc.join("www/index.html"))
        .unwrap()
        .contains("It works"));
    assert!(fs::read_to_string(etc.join("passwd"))
        .unwrap()
        .contains("www:x:33:33:"));
    let health = fs::read_to_string(etc.join("abupdate/health-check")).unwrap();
    assert!(
        health.contains("wget -q -O /dev/null http://127.0.0.1/"),
        "{health}"
    );
    // busybox (the mock's: Debian's, nixpkgs': defconfig) has the applets the example runs.
    let sw = mock_system("webserver.sw");
    for applet in ["httpd", "wget"] {
        assert!(
            sw.join("bin").join(applet).exists(),
            "no {applet} in sw/bin"
        );
    }
}

/// mkSystem's dm-verity (on by default, docs/nix.md): the initrd carries dm-mod and dm-verity
/// (with dm-bufio, their dependency), a static veritysetup from nixpkgs' pkgsStatic.cryptsetup
/// (its bin output) and abupdate (for `mark-corrupt`); `verity.enable = false` drops all of
/// them. Before, the initrd had none of them and ignored abinit.verity=.
#[test]
fn mksystem_verity_initrd_has_veritysetup_and_dm_verity() {
    if !have_nix_build() {
        return;
    }
    let initrd_of = |extra: &str| {
        let expr = format!(
            "let ab = import {} {{ pkgs = import {} {{ }}; }}; in (ab.mkSystem {{ modules = [ {} {} {extra} ]; }}).initrd",
            repo_file("nix/default.nix").display(),
            repo_file("nix/tests/mock-nixpkgs").display(),
            repo_file("nix/examples/vps.nix").display(),
            repo_file("nix/tests/vps-test.nix").display(),
        );
        let mut cmd = nix_build();
        cmd.args(["-E", &expr]);
        let initrd = PathBuf::from(stdout(&mut cmd).trim()).join("initrd");
        let list = stdout(Command::new("sh").arg("-c").arg(format!(
            "gzip -dc '{}' | cpio --quiet -it",
            initrd.display()
        )));
        let modules = stdout(Command::new("sh").arg("-c").arg(format!(
            "gzip -dc '{}' | cpio --quiet -i --to-stdout etc/abinit/modules",
            initrd.display()
        )));
        (list, modules)
    };
    let (list, modules) = initrd_of("");
    for f in ["bin/veritysetup", "bin/abupdate"] {
        assert!(list.lines().any(|l| l == f), "no {f} in the initrd");
    }
    let verity = modules
        .find("/dm-verity.ko")
        .expect("no dm-verity in the initrd");
    let dm = modules.find("/dm-mod.ko").expect("no dm-mod in the initrd");
    assert!(
        dm < verity,
        "dm-mod must be loaded before dm-verity:\n{modules}"
    );
    assert!(modules.contains("/dm-bufio.ko"), "{modules}");
    let drvs = mock_system_drvs("vps.toplevel");
    let cryptsetup = drv_named(&drvs, "-cryptsetup-stub.drv");
    assert!(
        cryptsetup.contains("--disable-external-tokens"),
        "veritysetup not from pkgsStatic: {cryptsetup}"
    );

    let (list, modules) = initrd_of("{ verity.enable = false; }");
    assert!(!list.contains("bin/veritysetup"), "{list}");
    assert!(!list.lines().any(|l| l == "bin/abupdate"), "{list}");
    assert!(!modules.contains("dm-verity"), "{modules}");
}
