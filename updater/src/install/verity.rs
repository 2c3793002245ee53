//! The written slot against the signed dm-verity root hash (`abbundle::verity`), after the
//! read-back and before the slot gets a boot entry. The read-back proved the slot holds the
//! signed bytes; this proves those bytes are the tree the signed root hash names, so a
//! bundle built wrong never boots into a slot the initrd would refuse to mount.

use abbundle::verity::{self, CheckError, Verity};
use anyhow::{Context, Result};
use tracing::info;

use crate::codes;
use crate::disk::{Disk, Partition};
use crate::refuse;

/// Checks slot `part` against `v` (the manifest's `abinit.verity=`); nothing to do for an
/// image without verity. A mismatch is exit 46.
pub fn check_slot(disk: &Disk, part: &Partition, v: Option<&Verity>) -> Result<()> {
    let Some(v) = v else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    match verity::check(v, |at, buf| disk.read_at(part, at, buf)) {
        Ok(()) => {
            info!(
                "{}: dm-verity tree matches the signed root hash {} ({:.2} s)",
                part.label,
                hex::encode(v.root_hash),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Err(CheckError::Io(e)) => {
            Err(e).with_context(|| format!("reading {} for its dm-verity check", part.label))
        }
        Err(CheckError::Mismatch(m)) => refuse!(
            codes::VERITY_MISMATCH,
            "{}: {m}: the bundle was built wrong; the slot gets no boot entry",
            part.label
        ),
    }
}
