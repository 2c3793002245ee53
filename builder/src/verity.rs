//! The builder's side of dm-verity (`abbundle::verity`): appends the hash area to a root
//! image, and checks that a root payload holds the tree its kernel parameters name before it
//! is signed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use abbundle::verity::{self, Verity};
use abbundle::FormatError;
use anyhow::{Context, Result};
use tracing::info;

/// Pads the image at `path` with zeros to a multiple of 4096 and appends its hash area.
pub fn append_tree(path: &Path) -> Result<Verity> {
    let f = File::options()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let started = std::time::Instant::now();
    let (v, area) = verity::format(|at, buf| f.read_exact_at(buf, at), len)
        .with_context(|| format!("computing the dm-verity tree of {}", path.display()))?;
    f.set_len(v.hash_offset)?;
    f.write_all_at(&area, v.hash_offset)
        .with_context(|| format!("writing the dm-verity tree into {}", path.display()))?;
    info!(
        "dm-verity: {} data blocks, hash area of {} bytes, root hash {} ({:.2} s)",
        v.data_blocks,
        area.len(),
        hex::encode(v.root_hash),
        started.elapsed().as_secs_f64()
    );
    Ok(v)
}

/// With `abinit.verity=` among `kernel_params`: the root payload file `path` must be an image
/// with exactly that hash area and root hash; a bundle that says otherwise is never signed
/// (exit 10, like any invalid manifest).
pub fn check_payload(path: &Path, kernel_params: &str) -> Result<()> {
    let Some(v) = Verity::from_kernel_params(kernel_params)
        .map_err(|e| FormatError::BadManifest(format!("kernel_params: {e}")))?
    else {
        return Ok(());
    };
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    if len != v.payload_len() {
        return Err(FormatError::BadManifest(format!(
            "{} has {len} bytes, but its dm-verity parameters need {} (image, padding and hash area)",
            path.display(),
            v.payload_len()
        ))
        .into());
    }
    match verity::check(&v, |at, buf| f.read_exact_at(buf, at)) {
        Ok(()) => Ok(()),
        Err(verity::CheckError::Io(e)) => {
            Err(e).with_context(|| format!("reading {}", path.display()))
        }
        Err(verity::CheckError::Mismatch(m)) => {
            Err(FormatError::BadManifest(format!("{}: {m}", path.display())).into())
        }
    }
}
