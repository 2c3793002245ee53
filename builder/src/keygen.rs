//! `abbuild keygen`: a new ed25519 key pair on disk, the secret one readable by its owner only.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use abbundle::{SecretKey, Signer};
use anyhow::{bail, Context, Result};

use crate::cli::KeygenArgs;

pub fn run(a: &KeygenArgs) -> Result<()> {
    if a.name.is_empty() || a.name.contains(['/', ' ']) {
        bail!(
            "key name '{}' must be non-empty, without '/' or spaces",
            a.name
        );
    }
    fs::create_dir_all(&a.out_dir).with_context(|| format!("creating {}", a.out_dir.display()))?;
    let key = SecretKey::generate(&a.name);
    let secret = a.out_dir.join(format!("{}.key", a.name));
    let public = a.out_dir.join(format!("{}.pub", a.name));
    write_new(&secret, &key.to_line(), 0o600, a.force)?;
    write_new(&public, &key.public().to_line(), 0o644, a.force)?;
    println!("key id {}", key.key_id());
    println!("secret key: {}  (keep it secret)", secret.display());
    println!("public key: {}  (install on devices)", public.display());
    Ok(())
}

fn write_new(path: &Path, text: &str, mode: u32, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!("{} exists; use --force to overwrite it", path.display());
    }
    if force {
        let _ = fs::remove_file(path);
    }
    // Created with its final mode, so the secret is never readable by others, not even briefly.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
