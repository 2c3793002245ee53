//! `abupdate mark-corrupt SLOT`: the initrd found the slot's image damaged (its dm-verity
//! check failed). Records it on the ESP (`X/corrupt.json`, read by `status`) and, if the other
//! slot can take over, marks the slot bad, so it does not boot again until something new is
//! installed into it. If the other slot cannot (empty, bad, or itself found damaged), nothing
//! changes in the boot loader and the command exits with NO_FALLBACK: the initrd then boots the
//! damaged slot with its bad blocks unreadable rather than reboot into it again and again
//! (docs/updater.md, "A damaged slot").

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::boot::slots;
use crate::boot::{self, Slot, SlotInfo};
use crate::codes;
use crate::disk::esp::Esp;
use crate::state::lock;
use crate::state::Context as Ctx;
use crate::{fault, refuse};

/// What `mark-corrupt` recorded about a slot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CorruptRecord {
    pub api_version: String,
    pub kind: String,
    /// a or b.
    pub slot: String,
    /// Seconds since the epoch (the machine's clock in the initrd).
    pub time: u64,
    /// The slot's `info.json` when it was found damaged: which image that was.
    pub version: Option<String>,
    pub build_id: Option<String>,
    pub rootfs_sha256: Option<String>,
    /// What the check saw (the kernel's "data block N is corrupted").
    pub detail: String,
    /// Whether the slot was marked bad (the other slot took over).
    pub marked_bad: bool,
}

/// `X/corrupt.json` on the ESP.
pub fn path(slot: Slot) -> String {
    slot.files().corrupt
}

/// The record of `slot`, if there is one and it is about the image the slot holds now (its
/// `info.json` names the same root image): a new image installed into the slot retires it.
pub fn current(esp: &Esp, slot: Slot, info: Option<&SlotInfo>) -> Option<CorruptRecord> {
    let bytes = esp.read_small(&path(slot)).ok()??;
    let r: CorruptRecord = serde_json::from_slice(&bytes).ok()?;
    let info = info?;
    (r.slot == slot.name() && r.rootfs_sha256.as_deref() == Some(info.rootfs_sha256.as_str()))
        .then_some(r)
}

pub fn run(ctx: &Ctx, slot: Slot, detail: &str) -> Result<()> {
    let _lock = lock::acquire()?;
    let (disk, _running) = slots::open(ctx.disk.as_deref(), false)?;
    let esp = Esp::open(&disk)?;
    let loader = boot::detect(&esp);
    loader.check_state(&esp)?;
    let view = loader.view(&esp)?;
    let other = slot.other();
    let ov = view.slot(other);
    let other_damaged = current(&esp, other, ov.info.as_ref()).is_some();
    let take_over = !other_damaged && loader.bootable(&esp, other)?;
    let info = view.slot(slot).info.as_ref();
    let record = CorruptRecord {
        api_version: crate::state::API_VERSION.into(),
        kind: "CorruptSlot".into(),
        slot: slot.name().into(),
        time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        version: info.map(|i| i.version.clone()),
        build_id: info.map(|i| i.build_id.clone()),
        rootfs_sha256: info.map(|i| i.rootfs_sha256.clone()),
        detail: detail.chars().take(200).collect(),
        marked_bad: take_over,
    };
    // Recorded first: should marking it bad fail, status still tells what was found.
    esp.write_file(&path(slot), &serde_json::to_vec_pretty(&record)?)
        .with_context(|| format!("recording slot {slot} as damaged on the ESP"))?;
    esp.sync()?;
    if !take_over {
        esp.close()?;
        fault::report();
        warn!("slot {slot} is damaged ({detail})");
        refuse!(
            codes::NO_FALLBACK,
            "slot {slot} is damaged (recorded), but slot {other} cannot take over (it is {}{}): \
             slot {slot} stays in the boot loader as it is",
            ov.state.name(),
            if other_damaged {
                " and was found damaged too"
            } else {
                ""
            }
        );
    }
    loader.mark_bad(&esp, slot)?;
    esp.close()?;
    fault::report();
    println!("slot {slot} is damaged ({detail}): recorded and marked bad; slot {other} boots next");
    Ok(())
}
