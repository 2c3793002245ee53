//! systemd-boot: Boot Loader Specification entries in `loader/entries/` with boot counting
//! (docs/updater.md). The entry names carry the counters (`slot-b+3.conf`); which entry boots
//! is modelled in [`entries`].
//!
//! Every change writes the new name first, syncs, then removes the old name(s) and syncs
//! again (fatfs cannot rename atomically): a power cut in between leaves two entries for the
//! slot, which boot the same slot, so the machine never loses its last bootable entry.
//!
//! A downgrade needs the newer, good slot listed after the older one, and systemd-boot lists
//! an entry last only when it has 0 tries left. Such an entry carries [`FALLBACK_MARK`]: the
//! slot is still good (the fallback), and the other slot is the one meant to boot first, as
//! GRUB's `ab_order` says (docs/updater.md, "Downgrades").

use std::collections::HashSet;

use anyhow::Result;
use tracing::info;

use super::entries::{self as bls, BootEntry, Counter, EntryName, EntryState, Slot, SORT_KEY};
use super::{BootLoader, BootModel, Booted, RecordSpace, SlotRecords, SlotState, View};
use crate::codes;
use crate::disk::esp::{entry_path, Esp};
use crate::refuse;

/// The comment line (systemd-boot skips `#` lines) of a good slot's entry that a downgrade
/// gave 0 tries left so that the older slot boots first.
pub const FALLBACK_MARK: &str = "# abupdate: good, kept as the fallback of a downgrade";

/// The comment line of an entry given 0 tries left by `mark-bad` or `rollback`: taken out on
/// purpose, so booting the other slot is no fallback (GRUB's `ab_order` says the same).
pub const MARKED_BAD: &str = "# abupdate: marked bad on purpose (mark-bad or rollback)";

/// What [`replace`] writes into an entry besides the kept text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    None,
    KeptFallback,
    MarkedBad,
}

/// Whether `e` was marked bad on purpose (see [`MARKED_BAD`]).
fn marked_bad(e: &BootEntry) -> bool {
    e.counter.is_some_and(|c| c.left == 0) && e.text.lines().any(|l| l.trim_end() == MARKED_BAD)
}

/// Whether `e` is a good slot's entry demoted for a downgrade (see [`FALLBACK_MARK`]).
fn kept_fallback(e: &BootEntry) -> bool {
    e.counter.is_some_and(|c| c.left == 0) && e.text.lines().any(|l| l.trim_end() == FALLBACK_MARK)
}

/// The systemd-boot backend (stateless: everything is read from the ESP each time).
pub struct SystemdBoot;

impl SystemdBoot {
    /// Whether `esp` holds systemd-boot: its EFI binary or its `loader/` files.
    pub fn present(esp: &Esp) -> bool {
        esp.exists(abbundle::layout::BOOT_EFI)
            || esp.exists(abbundle::layout::LOADER_CONF)
            || esp.dir_exists(bls::ENTRIES_DIR)
    }
}

/// Every `*.conf` in `loader/entries` on `esp`, with its contents, sorted by name.
pub fn read_entries(esp: &Esp) -> Result<Vec<BootEntry>> {
    let mut out = Vec::new();
    for name in esp.list_files(bls::ENTRIES_DIR)? {
        if bls::is_entry_file(&name) {
            let text = esp.read_small(&entry_path(&name))?.unwrap_or_default();
            out.push(BootEntry::new(&name, &String::from_utf8_lossy(&text)));
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// Whether `e` is a slot's own entry: named `slot-X[+LEFT[-DONE]].conf`.
fn slot_of_name(e: &BootEntry) -> Option<Slot> {
    EntryName::parse(&e.file).map(|n| n.slot)
}

/// The entries of `slot` among `all`: by name only. An entry of another name that boots the
/// slot (a copy of `slot-a.conf` for a rescue system, with `ab.slot=a`) is not the slot's: no
/// command rewrites, demotes or removes it.
fn of_slot(all: &[BootEntry], slot: Slot) -> Vec<BootEntry> {
    all.iter()
        .filter(|e| slot_of_name(e) == Some(slot))
        .cloned()
        .collect()
}

/// A slot's state from its entries: good if any is good, else the most tries left, else bad.
fn state(entries: &[BootEntry]) -> SlotState {
    let states: Vec<EntryState> = entries
        .iter()
        .map(|e| match EntryName::parse(&e.file) {
            _ if kept_fallback(e) => EntryState::Good,
            Some(n) => n.state(),
            None => match e.counter {
                None => EntryState::Good,
                Some(c) if c.left == 0 => EntryState::Bad,
                Some(c) => EntryState::Trying { left: c.left },
            },
        })
        .collect();
    if states.contains(&EntryState::Good) {
        SlotState::Good
    } else if let Some(left) = states
        .iter()
        .filter_map(|s| match s {
            EntryState::Trying { left } => Some(*left),
            _ => None,
        })
        .max()
    {
        SlotState::Trying { left }
    } else if states.contains(&EntryState::Bad) {
        SlotState::Bad
    } else {
        SlotState::Empty
    }
}

/// Replaces all of `slot`'s `entries` by one named `new`, keeping the text of the entry
/// systemd-boot would pick among them (adding `sort-key` if it lacks one), with `mark`'s
/// comment line and no other.
fn replace(esp: &Esp, entries: &[BootEntry], slot: Slot, new: EntryName, mark: Mark) -> Result<()> {
    let Some(best) = bls::sorted(entries).first().copied() else {
        refuse!(codes::NO_ENTRY, "slot {slot} has no boot entry");
    };
    let mut text = best.text.clone();
    let is_mark = |l: &str| [FALLBACK_MARK, MARKED_BAD].contains(&l.trim_end());
    if text.lines().any(is_mark) {
        text = text
            .lines()
            .filter(|l| !is_mark(l))
            .map(|l| format!("{l}\n"))
            .collect();
    }
    let mut add = |line: &str| {
        if !text.ends_with('\n') && !text.is_empty() {
            text.push('\n');
        }
        text.push_str(line);
        text.push('\n');
    };
    if best.contents.sort_key.is_none() {
        add(&format!("sort-key {SORT_KEY}"));
    }
    match mark {
        Mark::None => {}
        Mark::KeptFallback => add(FALLBACK_MARK),
        Mark::MarkedBad => add(MARKED_BAD),
    }
    let new_file = new.file_name();
    let old: Vec<&str> = entries
        .iter()
        .map(|e| e.file.as_str())
        .filter(|f| *f != new_file)
        .collect();
    if entries.iter().any(|e| e.file == new_file && e.text == text) {
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

/// Gives `slot` a plain good entry if it is a downgrade's kept fallback (`all`: the ESP's
/// entries), so that its 0 tries left do not decide the order any more.
fn unmark_kept_fallback(esp: &Esp, all: &[BootEntry], slot: Slot) -> Result<()> {
    let entries = of_slot(all, slot);
    if entries.iter().any(kept_fallback) {
        replace(esp, &entries, slot, EntryName::good(slot), Mark::None)?;
    }
    Ok(())
}

/// The systemd-boot model over a snapshot: the entries and which of their files exist.
struct Model {
    entries: Vec<BootEntry>,
    present: HashSet<String>,
}

impl Model {
    fn read(esp: &Esp) -> Result<Model> {
        let entries = read_entries(esp)?;
        let present = entries
            .iter()
            .flat_map(|e| [&e.contents.linux, &e.contents.efi])
            .flatten()
            .filter(|p| esp.exists(p))
            .cloned()
            .collect();
        Ok(Model { entries, present })
    }
}

impl BootModel for Model {
    fn next(&self) -> Option<Booted> {
        let e = bls::select(&self.entries, &|p| self.present.contains(p))?;
        Some(Booted {
            slot: e.slot()?,
            version: e.contents.version.clone().unwrap_or_default(),
            record: e.file.clone(),
        })
    }

    fn boot(&mut self) -> Option<Booted> {
        let next = self.next()?;
        let present = &self.present;
        bls::simulate_boot(&mut self.entries, &|p| present.contains(p))?;
        Some(next)
    }
}

impl BootLoader for SystemdBoot {
    fn name(&self) -> &'static str {
        "systemd-boot"
    }

    fn view(&self, esp: &Esp) -> Result<View> {
        let model = Model::read(esp)?;
        let next = model.next().map(|b| (b.slot, b.record));
        // The order meant, as GRUB's `ab_order` keeps it: the other slot than the one a
        // downgrade kept as the fallback, or than the one marked bad on purpose. Both slots
        // marked (never written by abupdate): no order is meant.
        let marked = |f: fn(&BootEntry) -> bool| -> Vec<Slot> {
            Slot::ALL
                .into_iter()
                .filter(|s| of_slot(&model.entries, *s).iter().any(f))
                .collect()
        };
        let first = match (&marked(kept_fallback)[..], &marked(marked_bad)[..]) {
            ([kept], _) => Some(kept.other()),
            ([], [bad]) => Some(bad.other()),
            _ => None,
        };
        View::build(esp, next, first, |slot| {
            let entries = of_slot(&model.entries, slot);
            SlotRecords {
                state: state(&entries),
                entries: entries.iter().map(|e| e.file.clone()).collect(),
                version: bls::sorted(&entries)
                    .first()
                    .and_then(|e| e.contents.version.clone()),
            }
        })
    }

    fn model(&self, esp: &Esp) -> Result<Box<dyn BootModel>> {
        Ok(Box::new(Model::read(esp)?))
    }

    /// Only a slot can demote a slot: an entry that is no slot's (see [`of_slot`]) and would
    /// still boot before the new entry of `slot` is refused here, before anything is written,
    /// since apply would otherwise take the new slot for a downgrade and demote the good slot.
    fn check_install(
        &self,
        esp: &Esp,
        slot: Slot,
        version: &str,
        kernel_params: &str,
    ) -> Result<()> {
        let new = BootEntry::new(
            &EntryName::trying(slot, 1).file_name(),
            &abbundle::layout::boot_entry(slot, version, kernel_params),
        );
        let mut after: Vec<BootEntry> = read_entries(esp)?
            .into_iter()
            .filter(|e| slot_of_name(e).is_none())
            .collect();
        after.push(new.clone());
        let exists = |p: &str| Some(p) == new.contents.linux.as_deref() || esp.exists(p);
        if let Some(e) = bls::select(&after, &exists).filter(|e| e.file != new.file) {
            refuse!(
                codes::FOREIGN_ENTRY,
                "boot entry {} is not a slot's entry (slot-a/slot-b), but systemd-boot would boot \
                 it before slot {slot}'s new entry (sort-key {}, version {}); abupdate changes only \
                 its own entries: remove that entry or give it another sort-key; nothing was changed",
                entry_path(&e.file),
                e.contents.sort_key.as_deref().unwrap_or("none"),
                e.contents.version.as_deref().unwrap_or("none")
            );
        }
        Ok(())
    }

    fn bootable(&self, esp: &Esp, slot: Slot) -> Result<bool> {
        Ok(of_slot(&read_entries(esp)?, slot).iter().any(|e| {
            (e.counter.is_none_or(|c| c.left > 0) || kept_fallback(e))
                && e.contents.linux.as_deref().is_some_and(|p| esp.exists(p))
        }))
    }

    fn make_unbootable(&self, esp: &Esp, slot: Slot) -> Result<()> {
        for e in of_slot(&read_entries(esp)?, slot) {
            info!("removing boot entry {}", e.file);
            esp.remove(&entry_path(&e.file))?;
        }
        esp.sync()
    }

    fn record_space(&self, esp: &Esp, slot: Slot) -> Result<RecordSpace> {
        Ok(RecordSpace {
            removed: of_slot(&read_entries(esp)?, slot)
                .iter()
                .map(|e| e.text.len() as u64)
                .collect(),
            created: 1,
        })
    }

    fn boot_next(
        &self,
        esp: &Esp,
        slot: Slot,
        tries: u32,
        version: &str,
        kernel_params: &str,
    ) -> Result<()> {
        // A downgrade's mark left on the other slot (its downgrade failed, it runs again) must
        // not decide this update's order: with both entries at 0 tries and equal versions,
        // systemd-boot would pick `slot-b` by name. It is made plainly good first (it is the
        // running, good slot); apply marks it again if this is another downgrade.
        unmark_kept_fallback(esp, &read_entries(esp)?, slot.other())?;
        let file = EntryName::trying(slot, tries).file_name();
        let contents = abbundle::layout::boot_entry(slot, version, kernel_params);
        let path = entry_path(&file);
        esp.write_file(&path, contents.as_bytes())?;
        esp.sync()?;
        esp.drop_cache()?;
        if esp.read_small(&path)?.as_deref() != Some(contents.as_bytes()) {
            refuse!(
                codes::READBACK_MISMATCH,
                "{path} on the ESP does not read back as written"
            );
        }
        info!("wrote boot entry {file}");
        Ok(())
    }

    fn mark_good(&self, esp: &Esp, slot: Slot) -> Result<bool> {
        let entries = of_slot(&read_entries(esp)?, slot);
        if state(&entries) == SlotState::Good
            && entries.len() == 1
            && !entries.iter().any(kept_fallback)
        {
            return Ok(false);
        }
        replace(esp, &entries, slot, EntryName::good(slot), Mark::None)?;
        Ok(true)
    }

    /// Gives `slot`'s entry 0 tries left: systemd-boot then lists it after every entry that
    /// has tries left, so it only boots if nothing else can. If the other slot is a
    /// downgrade's kept fallback (0 tries left too), it is made plainly good first: with both
    /// at 0, the version or the name would decide, and equal versions would pick `slot-b`.
    fn mark_bad(&self, esp: &Esp, slot: Slot) -> Result<()> {
        let all = read_entries(esp)?;
        unmark_kept_fallback(esp, &all, slot.other())?;
        let entries = of_slot(&all, slot);
        let st = state(&entries);
        if st == SlotState::Empty
            || (st == SlotState::Bad && entries.len() == 1 && entries.iter().all(marked_bad))
        {
            return Ok(());
        }
        let done = entries
            .iter()
            .filter_map(|e| e.counter)
            .map(|c| c.done)
            .max()
            .unwrap_or(0);
        replace(
            esp,
            &entries,
            slot,
            EntryName {
                slot,
                counter: Some(Counter { left: 0, done }),
            },
            Mark::MarkedBad,
        )
    }

    /// A good slot gets 0 tries left, so systemd-boot lists it after the older slot, and
    /// [`FALLBACK_MARK`], so it stays good. A slot that is not good is marked bad.
    fn keep_as_fallback(&self, esp: &Esp, slot: Slot) -> Result<()> {
        let entries = of_slot(&read_entries(esp)?, slot);
        if state(&entries) != SlotState::Good {
            return self.mark_bad(esp, slot);
        }
        replace(
            esp,
            &entries,
            slot,
            EntryName {
                slot,
                counter: Some(Counter { left: 0, done: 0 }),
            },
            Mark::KeptFallback,
        )
    }

    /// After a downgrade, the order is the one meant ([`View::first`]), as on GRUB. Otherwise
    /// systemd-boot prefers the newest entry: if the other slot has an entry with a newer
    /// version than the one that booted, that one ran out of tries (or was skipped).
    fn fallback_from(&self, view: &View, booted: Slot) -> Option<Slot> {
        if view.first.is_some() {
            return super::fallback_by_order(view, booted);
        }
        let (sv, other) = (view.slot(booted), view.slot(booted.other()));
        let newer = match (&sv.version, &other.version) {
            (Some(b), Some(o)) => {
                bls::strverscmp_improved(o, b).is_gt() && !other.entries.is_empty()
            }
            (None, Some(_)) => !other.entries.is_empty(),
            _ => false,
        };
        newer.then_some(booted.other())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file: &str, slot: Slot, version: &str) -> BootEntry {
        BootEntry::new(file, &abbundle::layout::boot_entry(slot, version, ""))
    }

    fn model(entries: Vec<BootEntry>) -> Model {
        let present = Slot::ALL
            .iter()
            .map(|s| format!("/{}", s.files().kernel))
            .collect();
        Model { entries, present }
    }

    #[test]
    fn model_uses_the_tries_then_falls_back() {
        let mut m = model(vec![
            entry("slot-a.conf", Slot::A, "1"),
            entry("slot-b+2.conf", Slot::B, "2"),
        ]);
        let boots: Vec<(Slot, String)> = std::iter::from_fn(|| m.boot())
            .take(4)
            .map(|b| (b.slot, b.record))
            .collect();
        assert_eq!(
            boots,
            [
                (Slot::B, "slot-b+2.conf".to_string()),
                (Slot::B, "slot-b+1-1.conf".to_string()),
                (Slot::A, "slot-a.conf".to_string()),
                (Slot::A, "slot-a.conf".to_string()),
            ]
        );
        assert_eq!(m.next().map(|b| b.version), Some("1".to_string()));
    }

    #[test]
    fn model_skips_an_entry_whose_kernel_is_missing() {
        let mut m = model(vec![
            entry("slot-a.conf", Slot::A, "1"),
            entry("slot-b+3.conf", Slot::B, "2"),
        ]);
        m.present.retain(|p| !p.contains("b/"));
        assert_eq!(m.next().map(|b| b.slot), Some(Slot::A));
    }

    #[test]
    fn a_kept_fallback_is_good_and_boots_last() {
        let text = format!(
            "{}{FALLBACK_MARK}\n",
            abbundle::layout::boot_entry(Slot::B, "2", "")
        );
        let b = BootEntry::new("slot-b+0.conf", &text);
        assert_eq!(state(std::slice::from_ref(&b)), SlotState::Good);
        // The same name without the mark is a bad slot.
        assert_eq!(
            state(&[entry("slot-b+0.conf", Slot::B, "2")]),
            SlotState::Bad
        );
        let m = model(vec![entry("slot-a+3.conf", Slot::A, "1"), b]);
        assert_eq!(m.next().map(|x| x.slot), Some(Slot::A));
    }

    #[test]
    fn states_from_entry_names() {
        let a = |f: &str| entry(f, Slot::A, "1");
        assert_eq!(state(&[]), SlotState::Empty);
        assert_eq!(state(&[a("slot-a+0-3.conf")]), SlotState::Bad);
        assert_eq!(
            state(&[a("slot-a+0-3.conf"), a("slot-a+2-1.conf")]),
            SlotState::Trying { left: 2 }
        );
        assert_eq!(
            state(&[a("slot-a+2-1.conf"), a("slot-a.conf")]),
            SlotState::Good
        );
    }
}
