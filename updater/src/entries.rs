//! Changing boot counters: `mark-good`, `mark-bad`, `rollback`, and the demotion a downgrade
//! needs. Every change writes the new name first, syncs, then removes the old name(s) and
//! syncs again (fatfs cannot rename atomically): a power cut in between leaves two entries for
//! the slot, which boot the same slot, so the machine never loses its last bootable entry.

use anyhow::Result;
use tracing::info;

use crate::bootentries::{self, Counter, EntryName, Slot, SORT_KEY};
use crate::codes;
use crate::esp::{entry_path, Esp};
use crate::slots::{self, SlotState, View};
use crate::{fault, lock, refuse, Context as Ctx};

/// Replaces all of `slot`'s entries by one named `new`, keeping the text of the entry
/// systemd-boot would pick among them (adding `sort-key` if it lacks one).
pub fn replace(esp: &Esp, view: &View, slot: Slot, new: EntryName) -> Result<()> {
    let sv = view.slot(slot);
    let Some(best) = bootentries::sorted(&sv.entries).first().copied() else {
        refuse!(codes::NO_ENTRY, "slot {slot} has no boot entry");
    };
    let mut text = best.text.clone();
    if best.contents.sort_key.is_none() {
        if !text.ends_with('\n') && !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("sort-key {SORT_KEY}\n"));
    }
    let new_file = new.file_name();
    let old: Vec<&str> = sv
        .entries
        .iter()
        .map(|e| e.file.as_str())
        .filter(|f| *f != new_file)
        .collect();
    if sv
        .entries
        .iter()
        .any(|e| e.file == new_file && e.text == text)
    {
        info!("boot entry {new_file} is already in place");
    } else {
        esp.write_file(&entry_path(&new_file), text.as_bytes())?;
        esp.sync()?;
        info!("wrote boot entry {new_file}");
    }
    for f in &old {
        esp.remove(&entry_path(f))?;
        info!("removed boot entry {f}");
    }
    if !old.is_empty() {
        esp.sync()?;
    }
    Ok(())
}

/// Gives `slot`'s entry 0 tries left: systemd-boot then lists it after every entry that has
/// tries left, so it only boots if nothing else can.
pub fn demote(esp: &Esp, view: &View, slot: Slot) -> Result<()> {
    let sv = view.slot(slot);
    if sv.state == SlotState::Empty || (sv.state == SlotState::Bad && sv.entries.len() == 1) {
        return Ok(());
    }
    let done = sv
        .entries
        .iter()
        .filter_map(|e| e.counter)
        .map(|c| c.done)
        .max()
        .unwrap_or(0);
    replace(
        esp,
        view,
        slot,
        EntryName {
            slot,
            counter: Some(Counter { left: 0, done }),
        },
    )
}

/// Whether `slot` can serve as the machine's boot target: it has an entry with tries left
/// (or none counted) whose kernel exists.
pub fn bootable(esp: &Esp, view: &View, slot: Slot) -> bool {
    view.slot(slot).entries.iter().any(|e| {
        e.counter.is_none_or(|c| c.left > 0)
            && e.contents.linux.as_deref().is_some_and(|p| esp.exists(p))
    })
}

/// `abupdate mark-good`: the running slot booted well; drop its counter.
pub fn mark_good(ctx: &Ctx) -> Result<()> {
    let _lock = lock::acquire()?;
    let (disk, running) = slots::open(ctx.disk.as_deref(), false)?;
    let Some(slot) = running else {
        refuse!(
            codes::NOT_BOOTED_FROM_SLOT,
            "mark-good needs the running slot, and {} is not the booted disk (no ab.slot=)",
            disk.path.display()
        );
    };
    let esp = Esp::open(&disk)?;
    let view = slots::view(&esp)?;
    let sv = view.slot(slot);
    match sv.state {
        SlotState::Empty => refuse!(
            codes::NO_ENTRY,
            "slot {slot} has no boot entry to mark good"
        ),
        SlotState::Good if sv.entries.len() == 1 => {
            println!("slot {slot} is already marked good");
            return Ok(());
        }
        _ => {}
    }
    replace(&esp, &view, slot, EntryName::good(slot))?;
    esp.close()?;
    fault::report();
    println!(
        "marked slot {slot} good (version {})",
        sv.version.as_deref().unwrap_or("unknown")
    );
    Ok(())
}

/// `abupdate mark-bad [SLOT]`: take a slot out of the running (default: the running one).
pub fn mark_bad(ctx: &Ctx, slot: Option<Slot>) -> Result<()> {
    let _lock = lock::acquire()?;
    let (disk, running) = slots::open(ctx.disk.as_deref(), false)?;
    let Some(slot) = slot.or(running) else {
        refuse!(
            codes::NOT_BOOTED_FROM_SLOT,
            "name the slot to mark bad (a or b): no slot is running from this disk"
        );
    };
    let esp = Esp::open(&disk)?;
    let view = slots::view(&esp)?;
    if view.slot(slot).state == SlotState::Empty {
        refuse!(codes::NO_ENTRY, "slot {slot} has no boot entry to mark bad");
    }
    if !bootable(&esp, &view, slot.other()) {
        refuse!(
            codes::NO_FALLBACK,
            "refusing to mark slot {slot} bad: slot {} is {} and cannot take over, so no bootable entry would be left",
            slot.other(),
            view.slot(slot.other()).state.name()
        );
    }
    demote(&esp, &view, slot)?;
    esp.close()?;
    fault::report();
    println!("marked slot {slot} bad; slot {} boots next", slot.other());
    Ok(())
}

/// `abupdate rollback`: make the other slot boot next, if it is good.
pub fn rollback(ctx: &Ctx) -> Result<()> {
    let _lock = lock::acquire()?;
    let (disk, running) = slots::open(ctx.disk.as_deref(), false)?;
    let esp = Esp::open(&disk)?;
    let view = slots::view(&esp)?;
    let Some(current) = view.next.as_ref().map(|n| n.0).or(running) else {
        refuse!(
            codes::NO_ENTRY,
            "no slot boots from {}: nothing to roll back",
            disk.path.display()
        );
    };
    let target = current.other();
    let tv = view.slot(target);
    if tv.state != SlotState::Good || !bootable(&esp, &view, target) {
        refuse!(
            codes::NO_FALLBACK,
            "refusing to roll back: slot {target} is {}, not good, so no good entry would be left to boot; nothing was changed",
            tv.state.name()
        );
    }
    demote(&esp, &view, current)?;
    esp.close()?;
    fault::report();
    println!(
        "rolled back: slot {target} (version {}) boots next; slot {current} is marked bad",
        tv.version.as_deref().unwrap_or("unknown")
    );
    Ok(())
}
