//! `abupdate boot-check`: run early at boot. Records in the state file on the data partition
//! which slot booted and whether that was a fallback (the boot loader tells: with systemd-boot,
//! an entry of the other slot newer than the one that booted has run out of tries).

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::boot::slots;
use crate::boot::{self, BootLoader, Slot, View};
use crate::codes;
use crate::disk::esp::Esp;
use crate::refuse;
use crate::state::write_atomic;
use crate::state::Context as Ctx;

/// What `boot-check` recorded about the last boot.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootRecord {
    pub api_version: String,
    pub kind: String,
    pub booted_slot: String,
    pub booted_version: Option<String>,
    /// The slot's entries at boot-check time (after systemd-boot's rename).
    pub booted_entries: Vec<String>,
    pub fallback: bool,
    pub failed_slot: Option<String>,
    pub failed_version: Option<String>,
    /// Seconds since the epoch.
    pub time: u64,
}

/// Reads the state file; `None` if missing or unreadable (a symlink, a FIFO, a directory:
/// read like every state file, without following or waiting).
pub fn read(path: &Path) -> Option<BootRecord> {
    let bytes = crate::state::channel_state::read_bounded(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let (disk, running) = slots::open(ctx.disk.as_deref(), true)?;
    let Some(slot) = running else {
        refuse!(
            codes::NOT_BOOTED_FROM_SLOT,
            "boot-check: not booted from an abupdate slot (no ab.slot=)"
        );
    };
    let esp = Esp::open(&disk)?;
    let loader = boot::detect(&esp);
    let view = loader.view(&esp)?;
    let record = judge(&*loader, &view, slot);
    if record.fallback {
        warn!(
            "this boot is a FALLBACK to slot {slot}: slot {} (version {}) did not come up",
            record.failed_slot.as_deref().unwrap_or("?"),
            record.failed_version.as_deref().unwrap_or("?")
        );
    } else {
        info!(
            "booted slot {slot} (version {})",
            record.booted_version.as_deref().unwrap_or("unknown")
        );
    }
    write_atomic(&ctx.config.state_file, &serde_json::to_vec_pretty(&record)?)?;
    if ctx.config.grow_data {
        // Not a reason to fail the boot: the machine runs, with the old size.
        match crate::disk::grow::data_partition(&disk.path) {
            Ok(Some(g)) if g.new_len > g.old_len => info!(
                "grew the data partition from {} to {} MiB to fill the disk; its file system grows at the next boot",
                g.old_len >> 20,
                g.new_len >> 20
            ),
            Ok(_) => {}
            Err(e) => warn!("not growing the data partition: {e:#}"),
        }
    }
    // Not a reason to fail the boot either: this disk keeps the image's GUIDs until a later
    // boot-check succeeds (docs/layout.md, "Per-machine identity").
    match crate::disk::identity::personalise(&disk.path) {
        Ok(Some(p)) => info!(
            "gave this disk its own GUIDs (first boot): ESP {}, data {}",
            p.esp, p.data
        ),
        Ok(None) => {}
        Err(e) => warn!("not giving this disk its own GUIDs: {e:#}"),
    }
    crate::fault::report();
    Ok(())
}

/// The record for a boot of `slot` given the boot loader's state now on the ESP.
pub fn judge(loader: &dyn BootLoader, view: &View, slot: Slot) -> BootRecord {
    let sv = view.slot(slot);
    let failed = loader.fallback_from(view, slot);
    BootRecord {
        api_version: crate::state::API_VERSION.into(),
        kind: "BootRecord".into(),
        booted_slot: slot.to_string(),
        booted_version: sv.version.clone(),
        booted_entries: sv.entries.clone(),
        fallback: failed.is_some(),
        failed_slot: failed.map(|f| f.to_string()),
        failed_version: failed.and_then(|f| view.slot(f).version.clone()),
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}
