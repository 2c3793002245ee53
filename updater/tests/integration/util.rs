//! Helpers: test systems and images from abbuild's library, a test-only key, running
//! abupdate, and reading a disk with tools that share no code with abupdate.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use abbundle::{Manifest, PayloadKind, SecretKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Seed of the visibly test-only signing key; never trust it anywhere.
pub const TEST_ONLY_SEED: [u8; 32] = [0x7e; 32];
pub const COMPATIBLE: &str = "abupdate-test";
/// Small enough to copy an image per fault-injection point, large enough for FAT32.
const IMAGE_DEF: &str = r#"
name = "abupdate-test"
compatible = "abupdate-test"
disk-size = "48MiB"
esp-size = "34MiB"
slot-size = "4MiB"
compression = "zstd"
block-size = "128KiB"
boot-backend = "systemd-boot"
boot-tries = 3
kernel-params = ["console=ttyS0"]
"#;

/// Deterministic bytes that do not compress (xorshift).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A test environment: a directory with keys, config, and builds.
pub struct Env {
    pub dir: tempfile::TempDir,
}

/// One built version: its bundle, disk image and manifest.
pub struct Build {
    pub bundle: PathBuf,
    pub image: PathBuf,
    pub manifest: Manifest,
}

impl Env {
    /// On a tmpfs when there is one: the tests sync often, and what they check does not
    /// depend on the syncs reaching a disk. (tmpfs has no O_DIRECT: the buffered paths.)
    pub fn new() -> Env {
        let shm = Path::new("/dev/shm");
        Env::in_dir(
            if shm.is_dir() {
                tempfile::tempdir_in(shm)
            } else {
                tempfile::tempdir()
            }
            .unwrap(),
        )
    }

    /// Like [`Env::new`], building GRUB images (`boot-backend = "grub"`: BIOS boot partition,
    /// GRUB env blocks on the ESP).
    pub fn new_grub() -> Env {
        let env = Env::new();
        let def = IMAGE_DEF.replace(
            r#"boot-backend = "systemd-boot""#,
            r#"boot-backend = "grub""#,
        );
        assert_ne!(def, IMAGE_DEF);
        fs::write(env.path("image.toml"), def).unwrap();
        env
    }

    /// In the default temporary directory (a disk file system: the O_DIRECT paths).
    pub fn on_disk() -> Env {
        Env::in_dir(tempfile::tempdir().unwrap())
    }

    fn in_dir(dir: tempfile::TempDir) -> Env {
        let key = SecretKey::from_seed(TEST_ONLY_SEED, "test-only");
        fs::write(dir.path().join("test-only.key"), key.to_line()).unwrap();
        fs::create_dir_all(dir.path().join("keys")).unwrap();
        fs::write(
            dir.path().join("keys/test-only.pub"),
            key.public().to_line(),
        )
        .unwrap();
        fs::write(dir.path().join("image.toml"), IMAGE_DEF).unwrap();
        fs::write(
            dir.path().join("abupdate.toml"),
            format!(
                "compatible = \"{COMPATIBLE}\"\nkeys = \"{}\"\nstate-file = \"{}\"\n",
                dir.path().join("keys").display(),
                dir.path().join("state/state.json").display()
            ),
        )
        .unwrap();
        fs::write(dir.path().join("cmdline-none"), "console=ttyS0\n").unwrap();
        Env { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Builds version `version` of a small system (contents derived from `seed`) with
    /// abbuild's library: a bundle and a disk image whose slot A holds it.
    pub fn build(&self, version: &str, seed: u64, chunk_size: u32) -> Build {
        self.build_with(version, seed, chunk_size, &[], abbundle::FORMAT_VERSION)
    }

    /// [`Env::build`] with extra files in the system (path, contents) and a bundle format.
    pub fn build_with(
        &self,
        version: &str,
        seed: u64,
        chunk_size: u32,
        files: &[(&str, &[u8])],
        format: u32,
    ) -> Build {
        let sys = self.path(&format!("system-{version}"));
        fs::create_dir_all(sys.join("etc")).unwrap();
        fs::create_dir_all(sys.join("bin")).unwrap();
        fs::write(sys.join("kernel"), noise(24 * 1024 + seed as usize, seed)).unwrap();
        fs::write(
            sys.join("initrd"),
            noise(64 * 1024 + 3 * seed as usize, seed + 100),
        )
        .unwrap();
        fs::write(sys.join("kernel-params"), "quiet\n").unwrap();
        fs::write(sys.join("bin/payload"), noise(700 * 1024, seed + 200)).unwrap();
        fs::write(sys.join("bin/init"), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("bin/init", sys.join("init")).unwrap();
        fs::write(sys.join("etc/version"), version).unwrap();
        for (path, data) in files {
            let p = sys.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        }
        let mut o = abbuild::build::BuildOptions::new(
            self.path("image.toml"),
            &sys,
            version,
            self.path("test-only.key"),
            self.path(&format!("out-{version}")),
        );
        o.epoch = Some(1_700_000_000);
        o.chunk_size = chunk_size;
        o.processors = Some(1);
        o.bundle_format = format;
        let out = abbuild::build::build(&o).expect("abbuild build");
        Build {
            bundle: out.bundle,
            image: out.image,
            manifest: out.manifest,
        }
    }

    /// Runs abupdate with the test config, lock and (by default) no booted slot.
    pub fn abupdate(&self, disk: &Path, args: &[&str]) -> Output {
        self.abupdate_booted(disk, None, args)
    }

    /// Runs abupdate as if the kernel command line said `ab.slot=<slot>`.
    pub fn abupdate_booted(&self, disk: &Path, slot: Option<&str>, args: &[&str]) -> Output {
        self.cmd(disk, slot, args).output().unwrap()
    }

    /// Runs abupdate with another config file.
    pub fn abupdate_cfg(&self, config: &Path, disk: &Path, args: &[&str]) -> Output {
        let c = self.cmd(disk, None, args);
        let mut all = vec!["--config".to_string(), config.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        let mut c2 = Command::new(env!("CARGO_BIN_EXE_abupdate"));
        c2.args(&all).arg("--disk").arg(disk);
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => c2.env(k, v),
                None => c2.env_remove(k),
            };
        }
        c2.output().unwrap()
    }

    pub fn cmd(&self, disk: &Path, slot: Option<&str>, args: &[&str]) -> Command {
        let cmdline = match slot {
            Some(s) => {
                let p = self.path(&format!("cmdline-{s}"));
                fs::write(
                    &p,
                    format!("console=ttyS0 ab.slot={s} root=PARTLABEL=root-{s}\n"),
                )
                .unwrap();
                p
            }
            None => self.path("cmdline-none"),
        };
        let mut c = Command::new(env!("CARGO_BIN_EXE_abupdate"));
        c.arg("--config")
            .arg(self.path("abupdate.toml"))
            .arg("--disk")
            .arg(disk)
            .args(args)
            .env("ABUPDATE_CMDLINE", cmdline)
            .env("ABUPDATE_LOCK", self.path("lock"))
            .env_remove("ABUPDATE_FAULT_AFTER")
            .env("RUST_LOG", "info");
        c
    }
}

/// Panics with the output unless the command succeeded.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts the command failed with `code` and a one-line error; returns that line.
pub fn fails(o: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&o.stdout)
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("abupdate: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_string()
}

pub fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Partition label -> (byte offset, byte length), from `sfdisk --json`.
pub fn partitions(img: &Path) -> Vec<(String, u64, u64)> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ss = v["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["start"].as_u64().unwrap() * ss,
                p["size"].as_u64().unwrap() * ss,
            )
        })
        .collect()
}

pub fn partition(img: &Path, label: &str) -> (u64, u64) {
    partitions(img)
        .into_iter()
        .find(|p| p.0 == label)
        .map(|p| (p.1, p.2))
        .unwrap()
}

/// SHA-256 of the first `len` bytes of partition `label`, with dd and sha256sum.
pub fn partition_sha256(img: &Path, label: &str, len: u64) -> String {
    let (off, _) = partition(img, label);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dd if='{}' bs=4096 skip={}B count={}B iflag=skip_bytes,count_bytes status=none | sha256sum",
            img.display(),
            off,
            len
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `img@@offset` for mtools.
pub fn esp_spec(img: &Path) -> String {
    format!("{}@@{}", img.display(), partition(img, "esp").0)
}

/// File names in `dir` on the ESP, with mtools.
pub fn mdir(img: &Path, dir: &str) -> Vec<String> {
    let out = Command::new("mdir")
        .args(["-b", "-i", &esp_spec(img), &format!("::/{dir}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit('/').next().map(str::to_string))
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// A file's bytes from the ESP, with mtools.
pub fn mtype(img: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("mtype")
        .args(["-i", &esp_spec(img), &format!("::/{path}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mtype {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `fsck.fat -n` on a copy of the ESP; returns its output if it finds problems.
pub fn fsck_esp(img: &Path) -> Result<(), String> {
    let (off, len) = partition(img, "esp");
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp.img");
    let st = Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", esp.display()))
        .args(["bs=1M", "status=none", "iflag=skip_bytes,count_bytes"])
        .arg(format!("skip={off}"))
        .arg(format!("count={len}"))
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg(&esp)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn payload_sha(m: &Manifest, kind: PayloadKind) -> String {
    m.payload(kind).sha256.to_string()
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A copy of `img` at `to` (sparse-aware).
pub fn copy_image(img: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(img)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Writes `data` as `path` on the ESP with mtools (replacing it), or removes it if `None`:
/// damage or state no abupdate would make, for tests of what it does with it.
pub fn mput(img: &Path, path: &str, data: Option<&[u8]>) {
    let spec = esp_spec(img);
    let target = format!("::/{path}");
    let out = match data {
        Some(d) => {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("f");
            fs::write(&src, d).unwrap();
            Command::new("mcopy")
                .args(["-o", "-i", &spec])
                .arg(&src)
                .arg(&target)
                .output()
                .unwrap()
        }
        None => Command::new("mdel")
            .args(["-i", &spec, &target])
            .output()
            .unwrap(),
    };
    assert!(
        out.status.success(),
        "mtools {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a bundle made directly with the format crate holds (for payloads abbuild would not
/// make): payload sizes, contents seeded by `seed`, signed with the key of `key_seed`.
pub struct RawBundle<'a> {
    pub version: &'a str,
    pub sizes: [usize; 3],
    pub chunk_size: u32,
    pub seed: u64,
    pub key_seed: [u8; 32],
    pub kernel_params: &'a str,
    /// Bundle format version.
    pub format: u32,
}

impl Default for RawBundle<'_> {
    fn default() -> Self {
        RawBundle {
            version: "3",
            sizes: [300_000, 50_000, 30_000],
            chunk_size: 64 * 1024,
            seed: 1,
            key_seed: TEST_ONLY_SEED,
            kernel_params: "",
            format: abbundle::FORMAT_VERSION,
        }
    }
}

impl RawBundle<'_> {
    pub fn bytes(&self) -> Vec<u8> {
        use abbundle::{write_bundle, BundleInput, PayloadInput, SecretKey, Signer};
        let key = SecretKey::from_seed(self.key_seed, "test-only");
        let [r, k, i] = self.sizes;
        let mut sources = [
            std::io::Cursor::new(noise(r, self.seed)),
            std::io::Cursor::new(noise(k, self.seed + 1)),
            std::io::Cursor::new(noise(i, self.seed + 2)),
        ];
        let [rs, ks, is] = &mut sources;
        let mut payloads = [
            PayloadInput {
                kind: PayloadKind::Rootfs,
                source: rs,
            },
            PayloadInput {
                kind: PayloadKind::Kernel,
                source: ks,
            },
            PayloadInput {
                kind: PayloadKind::Initrd,
                source: is,
            },
        ];
        let input = BundleInput {
            compatible: COMPATIBLE.into(),
            version: self.version.parse().unwrap(),
            build_id: "test".into(),
            created: 0,
            kernel_params: self.kernel_params.into(),
            chunk_size: self.chunk_size,
            format: self.format,
        };
        let mut out = Vec::new();
        write_bundle(&mut out, &input, &mut payloads, &[&key as &dyn Signer]).unwrap();
        out
    }

    /// Writes the bundle to `path` and returns the path.
    pub fn write(&self, path: PathBuf) -> PathBuf {
        fs::write(&path, self.bytes()).unwrap();
        path
    }
}

/// The GRUB env copies (`grub/env1`, `grub/env2`) as parsed (`None`: not valid), read with
/// mtools.
pub fn grub_env(img: &Path) -> [Option<abbundle::grubenv::State>; 2] {
    abbundle::grubenv::ENV_FILES.map(|f| abbundle::grubenv::parse(&mtype(img, f)).ok())
}

/// Runs `c` and returns its output, or kills it and panics after `secs` seconds: a hang
/// fails the test instead of holding it.
pub fn output_within(c: &mut Command, secs: u64) -> Output {
    use std::process::Stdio;
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            // SAFETY: a signal to the child this test started (its pid, not yet reaped).
            unsafe { libc::kill(id as i32, libc::SIGKILL) };
            panic!("{c:?} did not end within {secs} s");
        }
    }
}

/// Makes a FIFO at `p`.
pub fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {p:?}"
    );
}

/// `abupdate status --json` on `disk`, booted from `booted` (None: not the booted disk).
pub fn status(env: &Env, disk: &Path, booted: Option<&str>) -> Value {
    serde_json::from_str(&ok(&env.abupdate_booted(
        disk,
        booted,
        &["status", "--json"],
    )))
    .unwrap()
}
