//! `mark-good`, `mark-bad` and `rollback`: the checks that keep a bootable (and, where there
//! is one, a good) slot on the disk, then the change through the boot loader.

use anyhow::Result;

use crate::boot::slots;
use crate::boot::{self, SlotState};
use crate::codes;
use crate::disk::esp::Esp;
use crate::state::lock;
use crate::state::Context as Ctx;
use crate::{fault, refuse};

/// `abupdate mark-good`: the running slot booted well; it stops counting tries.
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
    let loader = boot::detect(&esp);
    loader.check_state(&esp)?;
    let view = loader.view(&esp)?;
    let sv = view.slot(slot);
    if sv.state == SlotState::Empty {
        refuse!(
            codes::NO_ENTRY,
            "slot {slot} has no boot entry to mark good"
        );
    }
    if !loader.mark_good(&esp, slot)? {
        println!("slot {slot} is already marked good");
        return Ok(());
    }
    esp.close()?;
    fault::report();
    println!(
        "marked slot {slot} good (version {})",
        sv.version.as_deref().unwrap_or("unknown")
    );
    Ok(())
}

/// `abupdate mark-bad [SLOT]`: take a slot out of the running (default: the running one).
pub fn mark_bad(ctx: &Ctx, slot: Option<boot::Slot>) -> Result<()> {
    let _lock = lock::acquire()?;
    let (disk, running) = slots::open(ctx.disk.as_deref(), false)?;
    let Some(slot) = slot.or(running) else {
        refuse!(
            codes::NOT_BOOTED_FROM_SLOT,
            "name the slot to mark bad (a or b): no slot is running from this disk"
        );
    };
    let esp = Esp::open(&disk)?;
    let loader = boot::detect(&esp);
    loader.check_state(&esp)?;
    let view = loader.view(&esp)?;
    if view.slot(slot).state == SlotState::Empty {
        refuse!(codes::NO_ENTRY, "slot {slot} has no boot entry to mark bad");
    }
    let other = view.slot(slot.other()).state;
    if !loader.bootable(&esp, slot.other())? {
        refuse!(
            codes::NO_FALLBACK,
            "refusing to mark slot {slot} bad: slot {} is {} and cannot take over, so no bootable entry would be left",
            slot.other(),
            other.name()
        );
    }
    // As apply refuses: a slot only on trial is no fallback. Should it fail its tries, both
    // slots would be out and the loader would boot the broken one anyway (systemd-boot the
    // newer entry, GRUB its default slot).
    if view.slot(slot).state == SlotState::Good && other != SlotState::Good {
        refuse!(
            codes::NO_FALLBACK,
            "refusing to mark slot {slot} bad: it is the only good slot and slot {} is only {}, \
             so nothing good would be left to fall back to; once slot {} is up, run \
             'abupdate mark-good' there first; nothing was changed",
            slot.other(),
            other.name(),
            slot.other()
        );
    }
    loader.mark_bad(&esp, slot)?;
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
    let loader = boot::detect(&esp);
    loader.check_state(&esp)?;
    let view = loader.view(&esp)?;
    let Some(current) = view.next_slot().or(running) else {
        refuse!(
            codes::NO_ENTRY,
            "no slot boots from {}: nothing to roll back",
            disk.path.display()
        );
    };
    let target = current.other();
    let tv = view.slot(target);
    if tv.state != SlotState::Good || !loader.bootable(&esp, target)? {
        refuse!(
            codes::NO_FALLBACK,
            "refusing to roll back: slot {target} is {}, not good, so no good entry would be left to boot; nothing was changed",
            tv.state.name()
        );
    }
    loader.rollback(&esp, current)?;
    esp.close()?;
    fault::report();
    println!(
        "rolled back: slot {target} (version {}) boots next; slot {current} is marked bad",
        tv.version.as_deref().unwrap_or("unknown")
    );
    Ok(())
}
