//! The written slot against the signed dm-verity root hash (`abbundle::verity`), checked by the
//! read-back as it reads the slot (`install::pipeline`), before the slot gets a boot entry. The
//! read-back proves the slot holds the signed bytes; this proves those bytes are the tree the
//! signed root hash names, so a bundle built wrong never boots into a slot the initrd would
//! refuse to mount.

use abbundle::verity::{CheckError, StreamCheck, Verity};
use anyhow::Result;
use tracing::info;

use crate::codes;
use crate::disk::Partition;
use crate::refuse;

/// The tree check of one slot, fed every byte of the root payload in order (image, padding,
/// hash area: 32 bytes kept per 4 KiB block of the tree until its stored block comes by).
pub struct SlotTree<'a> {
    v: &'a Verity,
    check: StreamCheck,
    part: &'a Partition,
    started: std::time::Instant,
}

impl<'a> SlotTree<'a> {
    pub fn new(v: &'a Verity, part: &'a Partition) -> SlotTree<'a> {
        SlotTree {
            v,
            check: StreamCheck::new(v),
            part,
            started: std::time::Instant::now(),
        }
    }

    /// The next bytes of the slot.
    pub fn feed(&mut self, data: &[u8]) -> Result<()> {
        self.check.feed(data).or_else(|e| self.refuse(e))
    }

    /// After the payload's last byte: a mismatch anywhere is exit 46.
    pub fn finish(self) -> Result<()> {
        let (label, root, took) = (
            self.part.label.clone(),
            hex::encode(self.v.root_hash),
            self.started.elapsed(),
        );
        match self.check.finish() {
            Ok(()) => {
                info!(
                    "{label}: dm-verity tree matches the signed root hash {root} (checked while \
                     read back, {:.2} s)",
                    took.as_secs_f64()
                );
                Ok(())
            }
            Err(CheckError::Mismatch(m)) => refuse!(
                codes::VERITY_MISMATCH,
                "{label}: {m}: the bundle was built wrong; the slot gets no boot entry"
            ),
            Err(CheckError::Io(e)) => Err(e.into()),
        }
    }

    fn refuse(&self, e: CheckError) -> Result<()> {
        match e {
            CheckError::Mismatch(m) => refuse!(
                codes::VERITY_MISMATCH,
                "{}: {m}: the bundle was built wrong; the slot gets no boot entry",
                self.part.label
            ),
            CheckError::Io(e) => Err(e.into()),
        }
    }
}
