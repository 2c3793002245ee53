//! The system to build from (`--system PATH`): a Nix toplevel store path, whose closure
//! becomes the root, or a plain directory, packed as it is. Both follow the toplevel
//! contract of `docs/layout.md` (`kernel`, `initrd`, `init`, optional `kernel-params`, `etc/`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use tracing::{debug, warn};

use crate::cmd;

/// Where Nix keeps store paths unless `NIX_STORE_DIR` says otherwise.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";

/// What kind of system `--system` named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SystemKind {
    /// A store path: the root is its closure under `/nix/store` plus the top-level links.
    StorePath {
        /// The closure (`nix-store -qR`), sorted.
        closure: Vec<PathBuf>,
    },
    /// A directory: the root is the directory itself.
    Directory,
}

/// A resolved system.
#[derive(Clone, Debug)]
pub struct System {
    /// The toplevel: the store path (symlinks like `./result` resolved) or the directory.
    pub path: PathBuf,
    pub kind: SystemKind,
    /// The kernel and initrd files (symlinks resolved).
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The contents of `kernel-params`, whitespace normalized (empty if absent).
    pub kernel_params: String,
    /// Whether `etc/` exists (linked to `/etc` in a store path's root).
    pub has_etc: bool,
}

/// The Nix store directory.
pub fn store_dir() -> PathBuf {
    let dir = std::env::var_os("NIX_STORE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE_DIR));
    // Store paths are compared after canonicalization, so the store's own path must be too.
    dir.canonicalize().unwrap_or(dir)
}

/// Checks `path` against the toplevel contract and, for a store path, asks Nix for its closure.
pub fn resolve(path: &Path) -> Result<System> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("system {} does not exist", path.display()))?;
    let real = path
        .canonicalize()
        .with_context(|| format!("resolving {}", path.display()))?;
    let store = store_dir();
    let in_store = real.parent() == Some(store.as_path());
    if !meta.is_dir() {
        bail!(
            "system {} is neither a Nix store path of a toplevel nor a directory (it is a file)",
            path.display()
        );
    }
    let need = |name: &str| -> Result<PathBuf> {
        let p = real.join(name);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() && m.len() > 0 => Ok(p.canonicalize().unwrap_or(p)),
            Ok(_) => bail!("system {}: `{name}` is not a non-empty file", path.display()),
            Err(_) => bail!(
                "system {} has no `{name}` (a toplevel needs kernel, initrd and init; see docs/layout.md)",
                path.display()
            ),
        }
    };
    let kernel = need("kernel")?;
    let initrd = need("initrd")?;
    // `init` may be an absolute symlink that only resolves inside the built root, so only
    // its presence is checked.
    if std::fs::symlink_metadata(real.join("init")).is_err() {
        bail!(
            "system {} has no `init` (a toplevel needs kernel, initrd and init; see docs/layout.md)",
            path.display()
        );
    }
    let kernel_params = match std::fs::read_to_string(real.join("kernel-params")) {
        Ok(s) => s.split_whitespace().collect::<Vec<_>>().join(" "),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(e).with_context(|| format!("reading {}/kernel-params", path.display()))
        }
    };
    let has_etc = real.join("etc").is_dir();
    let kind = if in_store {
        SystemKind::StorePath {
            closure: closure(&real)?,
        }
    } else {
        SystemKind::Directory
    };
    debug!("system {}: {kind:?}", real.display());
    Ok(System {
        path: real,
        kind,
        kernel,
        initrd,
        kernel_params,
        has_etc,
    })
}

impl System {
    /// Checks the system's `etc/abupdate.toml` against the image definition: a device whose
    /// compatible string differs from its image's refuses every update built for it, and one
    /// whose `boot-tries` differs gives new slots other tries than the image says. The whole
    /// file is read with abupdate's own config code, so anything abupdate would refuse (an
    /// unknown key, a bad `update-reboot`) fails the build instead of the device.
    pub fn check_updater_config(&self, compatible: &str, boot_tries: u32) -> Result<()> {
        let path = self.path.join("etc/abupdate.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warn!(
                    "{} has no etc/abupdate.toml: the device needs one (with compatible = \"{compatible}\") before abupdate can install updates",
                    self.path.display()
                );
                return Ok(());
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // The whole file, as abupdate reads it: an unknown key, a bad value or an update
        // setting abupdate would refuse (update-reboot, update-jitter) fails the build, not
        // the device.
        let c = abupdate::state::config::Config::parse(&text, &path)?;
        c.update_settings()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let t: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let theirs = t.get("compatible").and_then(|v| v.as_str());
        if theirs != Some(compatible) {
            bail!(
                "{} says compatible = {}, the image definition says \"{compatible}\": the device would refuse every update of this image",
                path.display(),
                theirs.map_or("(nothing)".into(), |c| format!("\"{c}\""))
            );
        }
        // abupdate's default when the key is absent (updater/src/config.rs).
        let tries = t.get("boot-tries").map_or(Some(3), |v| v.as_integer());
        if tries != Some(i64::from(boot_tries)) {
            bail!(
                "{} gives new slots boot-tries = {}, the image definition says {boot_tries}",
                path.display(),
                t.get("boot-tries")
                    .map_or("3 (the default)".into(), |v| v.to_string())
            );
        }
        Ok(())
    }
}

/// The closure of a store path: every store path it references, directly or not, sorted.
pub fn closure(path: &Path) -> Result<Vec<PathBuf>> {
    let nix_store = cmd::require_program(
        "nix-store",
        &format!(
            "nix is not installed; it is needed for the closure of {}",
            path.display()
        ),
    )?;
    let out = cmd::run(
        Command::new(nix_store)
            .arg("--query")
            .arg("--requisites")
            .arg(path),
        None,
    )
    .with_context(|| format!("asking Nix for the closure of {}", path.display()))?;
    let text = String::from_utf8(out).context("nix-store printed a path that is not UTF-8")?;
    let store = store_dir();
    let mut paths: Vec<PathBuf> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect();
    for p in &paths {
        if p.parent() != Some(store.as_path()) {
            bail!(
                "nix-store listed {}, which is not in {}",
                p.display(),
                store.display()
            );
        }
    }
    paths.sort();
    paths.dedup();
    if paths.is_empty() {
        bail!("nix-store listed no closure for {}", path.display());
    }
    Ok(paths)
}
