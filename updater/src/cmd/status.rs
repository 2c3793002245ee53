//! `abupdate status [--json]`: both slots, what boots next, and what the last boot was.
//! The JSON is versioned (`apiVersion`, `kind`) so scripts can rely on it.

use anyhow::Result;
use serde::Serialize;

use crate::boot::slots;
use crate::boot::{self, Slot, SlotState};
use crate::cmd::bootcheck::{self, BootRecord};
use crate::cmd::corrupt::{self, CorruptRecord};
use crate::disk::esp::Esp;
use crate::state::Context as Ctx;
use crate::state::API_VERSION;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub disk: String,
    /// The boot loader of the disk: "systemd-boot" or "grub".
    pub boot_loader: &'static str,
    pub running_slot: Option<Slot>,
    pub next_boot_slot: Option<Slot>,
    pub next_boot_entry: Option<String>,
    /// From the state file boot-check wrote; `None` if it has not run.
    pub last_boot_was_fallback: Option<bool>,
    pub last_boot: Option<BootRecord>,
    pub slots: Vec<SlotStatus>,
    /// `abupdate update`: the configured channel and what the update state file says.
    pub update: UpdateStatus,
}

/// The channel part of `status` (docs/channels.md).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStatus {
    pub channel: Option<String>,
    pub last_check: Option<crate::state::channel_state::Check>,
    pub failed_versions: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotStatus {
    pub slot: Slot,
    /// good, trying, bad or empty.
    pub state: &'static str,
    pub tries_left: Option<u32>,
    pub version: Option<String>,
    pub build_id: Option<String>,
    pub created: Option<u64>,
    pub partition: String,
    pub partition_size: u64,
    pub rootfs_size: Option<u64>,
    /// The dm-verity root hash the slot's image was installed with (its `info.json`).
    pub verity_root_hash: Option<String>,
    pub entries: Vec<String>,
    pub running: bool,
    pub next_boot: bool,
    /// Set when the initrd found this slot's image damaged (its dm-verity check failed):
    /// when, and what it saw (`abupdate mark-corrupt`, docs/updater.md).
    pub corrupt: Option<CorruptRecord>,
}

pub fn collect(ctx: &Ctx) -> Result<Status> {
    let (disk, running) = slots::open(ctx.disk.as_deref(), true)?;
    let esp = Esp::open(&disk)?;
    let loader = boot::detect(&esp);
    let view = loader.view(&esp)?;
    let last_boot = bootcheck::read(&ctx.config.state_file).filter(|_| running.is_some());
    let next = view.next_slot();
    let mut out = Vec::new();
    for sv in &view.slots {
        let part = disk.partition(sv.slot.partition_label())?;
        out.push(SlotStatus {
            slot: sv.slot,
            state: sv.state.name(),
            tries_left: match sv.state {
                SlotState::Trying { left } => Some(left),
                SlotState::Bad => Some(0),
                _ => None,
            },
            version: sv.version.clone(),
            build_id: sv.info.as_ref().map(|i| i.build_id.clone()),
            created: sv.info.as_ref().map(|i| i.created),
            partition: part.label.clone(),
            partition_size: part.len,
            rootfs_size: sv.info.as_ref().map(|i| i.rootfs_size),
            verity_root_hash: sv.info.as_ref().and_then(|i| i.verity_root_hash.clone()),
            entries: sv.entries.clone(),
            running: running == Some(sv.slot),
            next_boot: next == Some(sv.slot),
            corrupt: corrupt::current(&esp, sv.slot, sv.info.as_ref()),
        });
    }
    Ok(Status {
        api_version: API_VERSION,
        kind: "Status",
        disk: disk.path.display().to_string(),
        boot_loader: loader.name(),
        running_slot: running,
        next_boot_slot: next,
        next_boot_entry: view.next.map(|n| n.1),
        last_boot_was_fallback: last_boot.as_ref().map(|b| b.fallback),
        last_boot,
        slots: out,
        update: update_status(ctx),
    })
}

fn update_status(ctx: &Ctx) -> UpdateStatus {
    let path = crate::state::channel_state::path(&ctx.config.state_file);
    let state = crate::state::channel_state::UpdateState::load(&path).unwrap_or_default();
    UpdateStatus {
        channel: ctx.config.channel.as_deref().map(crate::fetch::redact),
        last_check: state.last_check,
        failed_versions: state.failed_versions,
    }
}

pub fn run(ctx: &Ctx, json: bool) -> Result<()> {
    let s = collect(ctx)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    print!("{}", human(&s));
    Ok(())
}

/// The table `status` prints on a terminal.
pub fn human(s: &Status) -> String {
    let slot = |o: Option<Slot>| o.map(|s| s.to_string()).unwrap_or_else(|| "none".into());
    let mut out = format!(
        "disk {}: running slot {}, next boot slot {}\n",
        s.disk,
        slot(s.running_slot),
        slot(s.next_boot_slot)
    );
    out.push_str(&format!("boot loader: {}\n", s.boot_loader));
    out.push_str(&format!(
        "{:<6}{:<18}{:<20}{}\n",
        "slot", "state", "version", "build id"
    ));
    for v in &s.slots {
        let state = match (v.state, v.tries_left) {
            ("trying", Some(n)) => format!("trying ({n} left)"),
            (st, _) => st.to_string(),
        };
        let marks = format!(
            "{}{}",
            if v.running { "*" } else { "" },
            if v.next_boot { ">" } else { "" }
        );
        out.push_str(&format!(
            "{:<6}{:<18}{:<20}{}\n",
            format!("{}{marks}", v.slot),
            state,
            v.version.as_deref().unwrap_or("-"),
            v.build_id
                .as_deref()
                .filter(|b| !b.is_empty())
                .unwrap_or("-")
        ));
    }
    out.push_str("(* running, > boots next)\n");
    for v in &s.slots {
        if let Some(c) = &v.corrupt {
            out.push_str(&format!(
                "slot {} was found CORRUPT (time {}, version {}): {}; {}\n",
                v.slot,
                c.time,
                c.version.as_deref().unwrap_or("unknown"),
                c.detail,
                if c.marked_bad {
                    "marked bad"
                } else {
                    "not marked bad: no other slot could take over"
                }
            ));
        }
    }
    if let Some(b) = &s.last_boot {
        out.push_str(&format!(
            "last boot: slot {} version {}{}\n",
            b.booted_slot,
            b.booted_version.as_deref().unwrap_or("unknown"),
            match (&b.fallback, &b.failed_slot) {
                (true, Some(f)) => format!(
                    ", a FALLBACK: slot {f} (version {}) did not come up",
                    b.failed_version.as_deref().unwrap_or("unknown")
                ),
                _ => String::new(),
            }
        ));
    }
    let u = &s.update;
    if let Some(c) = u
        .channel
        .as_deref()
        .or(u.last_check.as_ref().map(|c| c.channel.as_str()))
    {
        out.push_str(&format!("update channel: {c}\n"));
    }
    if let Some(c) = &u.last_check {
        out.push_str(&format!(
            "last update check: {} (time {}, exit {}): {}\n",
            c.outcome, c.time, c.code, c.message
        ));
    }
    if !u.failed_versions.is_empty() {
        out.push_str(&format!(
            "versions that failed here: {} (not installed again)\n",
            u.failed_versions.join(", ")
        ));
    }
    out
}
