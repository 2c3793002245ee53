//! `abbuild publish`: puts a bundle into a static tree (any web server, CDN, object store or
//! a directory on a medium) and writes the signed channel file that points devices at it:
//! `OUT_DIR/IMAGE/BUNDLE.abu` and `OUT_DIR/IMAGE/CHANNEL.json` (docs/channels.md).
//!
//! The bundle goes in first and the channel file last, each through a temporary name and a
//! rename, so a device never sees a channel file naming a bundle that is not all there.

use std::fs::{self, File};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use abbundle::channel::{self, Channel};
use abbundle::reader::read_unverified;
use abbundle::{BundleReader, SecretKey, Signer, TrustedKeys};
use anyhow::{bail, Context, Result};

use crate::cli::PublishArgs;

/// What `publish` wrote.
#[derive(Debug)]
pub struct Published {
    pub channel_file: PathBuf,
    pub bundle_file: PathBuf,
    pub document: Channel,
}

pub fn run(a: &PublishArgs) -> Result<()> {
    let p = publish(a)?;
    println!(
        "published version {} on {} (sequence {}, rollout {}%, expires {}): {}",
        p.document.version,
        p.document.channel,
        p.document.sequence,
        p.document.rollout,
        p.document.expires,
        p.channel_file.display()
    );
    Ok(())
}

pub fn publish(a: &PublishArgs) -> Result<Published> {
    if a.channel.is_empty()
        || !a
            .channel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || a.channel.starts_with('.')
    {
        bail!(
            "channel name '{}' must be letters, digits, '-', '_' or '.'",
            a.channel
        );
    }
    if a.rollout > 100 {
        bail!("--rollout {} is over 100 (percent)", a.rollout);
    }
    let valid_for = channel::parse_duration(&a.valid_for).map_err(anyhow::Error::msg)?;
    if valid_for == 0 {
        bail!("--valid-for must be longer than 0");
    }
    let keys = a
        .key
        .iter()
        .map(|k| SecretKey::load(k).with_context(|| format!("reading key {}", k.display())))
        .collect::<Result<Vec<_>>>()?;

    let f = File::open(&a.bundle).with_context(|| format!("opening {}", a.bundle.display()))?;
    let len = f.metadata()?.len();
    let u = read_unverified(BufReader::new(f))
        .with_context(|| format!("reading {}", a.bundle.display()))?;
    if u.header.total_len != len {
        bail!(
            "{}: the file has {len} bytes, its header says {}: not a complete bundle",
            a.bundle.display(),
            u.header.total_len
        );
    }
    let image = a
        .image
        .clone()
        .unwrap_or_else(|| u.manifest.compatible.clone());
    if image.is_empty() || image.contains(['/', '\\']) || image.starts_with('.') {
        bail!("image name '{image}' must not be empty, start with '.' or contain '/'");
    }
    let dir = a.out_dir.join(&image);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let channel_file = dir.join(format!("{}.json", a.channel));

    let sequence = match a.sequence {
        Some(s) if s == u64::MAX => bail!(
            "--sequence {s} leaves no room: no later publication could replace it, so devices \
             would keep this one for ever; give a lower one"
        ),
        Some(s) => s,
        None => match fs::read(&channel_file) {
            Ok(bytes) => {
                let prev = channel::read_unverified(&bytes).with_context(|| {
                    format!(
                        "reading the previous {} for its sequence number (give --sequence to replace it)",
                        channel_file.display()
                    )
                })?;
                // Checked: a wrap to 0 would be refused by every device (59) for ever.
                match prev.sequence.checked_add(1).filter(|&n| n < u64::MAX) {
                    Some(n) => n,
                    None => bail!(
                        "{} has sequence {}: no higher one is left to publish (give --sequence \
                         only if every device may lose its replay protection)",
                        channel_file.display(),
                        prev.sequence
                    ),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(e).with_context(|| format!("reading {}", channel_file.display())),
        },
    };

    let name = a
        .bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("the bundle path has no file name")?;
    // Only `*.abu` names: a bundle called like a channel file (`stable.json`) or its
    // temporary name (`stable.json.tmp`) would be overwritten or deleted by the channel file.
    if !name.ends_with(".abu") || name.starts_with('.') {
        bail!(
            "bundle file name '{name}' must end in .abu (and not start with '.'): it goes next to \
             the channel files, which end in .json"
        );
    }
    let bundle_file = dir.join(&name);

    let issued = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let document = Channel {
        api_version: channel::API_VERSION.into(),
        kind: "Channel".into(),
        channel: a.channel.clone(),
        compatible: u.manifest.compatible.clone(),
        version: u.manifest.version.clone(),
        bundle: name,
        size: len,
        manifest_sha256: u.manifest_sha256,
        sequence,
        issued,
        expires: issued.saturating_add(valid_for),
        rollout: a.rollout,
    };
    document.validate().map_err(anyhow::Error::msg)?;
    verify_bundle(&a.bundle, &keys)?;
    place_bundle(&a.bundle, &bundle_file, len)?;
    let signers: Vec<&dyn Signer> = keys.iter().map(|k| k as &dyn Signer).collect();
    let bytes = channel::sign(&document, &signers)?;
    write_atomic(&channel_file, &bytes)?;
    Ok(Published {
        channel_file,
        bundle_file,
        document,
    })
}

/// The whole bundle checked as a device will check it, trusting only the publishing keys: a
/// bundle they did not sign (or one damaged since it was built) is not put on a channel that
/// they sign.
fn verify_bundle(bundle: &Path, keys: &[SecretKey]) -> Result<()> {
    let trusted = TrustedKeys::new(keys.iter().map(SecretKey::public).collect());
    let f = File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
    BundleReader::open(BufReader::with_capacity(1 << 20, f), &trusted)
        .and_then(|mut r| r.verify_rest())
        .with_context(|| {
            format!(
                "{}: not published: it does not verify against the publishing key(s)",
                bundle.display()
            )
        })
}

/// Copies the bundle into the tree unless the same file (or one with the same bytes' length
/// and name, published before) is already there.
fn place_bundle(from: &Path, to: &Path, len: u64) -> Result<()> {
    if let (Ok(a), Ok(b)) = (fs::canonicalize(from), fs::canonicalize(to)) {
        if a == b {
            return Ok(());
        }
    }
    if let Ok(existing) = fs::metadata(to).map(|m| m.len()) {
        if existing == len && same_bytes(from, to)? {
            return Ok(());
        }
        bail!(
            "{} exists with other contents: a published bundle is never replaced (devices may be downloading it)",
            to.display()
        );
    }
    let tmp = to.with_extension("abu.tmp");
    let _ = fs::remove_file(&tmp);
    fs::copy(from, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    fs::rename(&tmp, to).with_context(|| format!("renaming to {}", to.display()))
}

/// Whether two files of the same length hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    use std::io::Read;
    let open = |p: &Path| {
        File::open(p)
            .map(|f| BufReader::with_capacity(1 << 20, f))
            .with_context(|| format!("opening {}", p.display()))
    };
    let (mut x, mut y) = (open(a)?, open(b)?);
    let (mut bx, mut by) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = x.read(&mut bx)?;
        if n == 0 {
            return Ok(y.read(&mut by[..1])? == 0);
        }
        // Same length (checked by the caller): a short `b` is an error, not a match.
        y.read_exact(&mut by[..n])?;
        if bx[..n] != by[..n] {
            return Ok(false);
        }
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        // O_EXCL: never writes through a symlink planted at the temporary name.
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
