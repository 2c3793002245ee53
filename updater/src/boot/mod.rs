//! The boot-loader seam: what the commands need from a boot loader, as one trait
//! ([`BootLoader`]), and the loader-independent picture of both slots ([`View`]).
//!
//! `apply`, `status`, `boot-check`, `mark-good`, `mark-bad` and `rollback` work through the
//! trait and never name a loader. The backend is chosen from what is on the ESP ([`detect`]).
//! A slot's kernel, initrd and `info.json` in `X/` on the ESP are the same for every loader and
//! are written by `apply` itself; a backend only keeps the loader's own state (systemd-boot:
//! the entries in `loader/entries/`).

pub mod entries;
pub mod grub;
pub mod slots;
pub mod systemd_boot;

use anyhow::Result;
use tracing::debug;

use crate::disk::esp::Esp;

pub use abbundle::layout::{Slot, SlotInfo};

/// A slot's state as the boot loader's records tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Marked good: boots whenever it is the newest, and serves as the fallback.
    Good,
    /// Installed and being tried: boots while tries are left.
    Trying { left: u32 },
    /// No tries left: only boots if nothing else can.
    Bad,
    /// No boot record: never installed, or an install did not finish.
    Empty,
}

impl SlotState {
    pub fn name(self) -> &'static str {
        match self {
            SlotState::Good => "good",
            SlotState::Trying { .. } => "trying",
            SlotState::Bad => "bad",
            SlotState::Empty => "empty",
        }
    }
}

/// One slot as seen on the disk.
#[derive(Clone, Debug)]
pub struct SlotView {
    pub slot: Slot,
    pub state: SlotState,
    /// The loader's records of this slot, by name (systemd-boot: its entry files, usually one;
    /// two after a cut-short counter change).
    pub entries: Vec<String>,
    /// Version from the loader's record (what the loader orders by), else from info.json.
    pub version: Option<String>,
    pub info: Option<SlotInfo>,
}

/// Both slots and the boot loader's next choice.
#[derive(Clone, Debug)]
pub struct View {
    pub slots: Vec<SlotView>,
    /// The slot the loader boots next, and the record it picks.
    pub next: Option<(Slot, String)>,
    /// The slot the loader is meant to try first, for a loader that keeps an order (GRUB's
    /// `ab_order`); for systemd-boot, which orders by version, only after a downgrade: the
    /// slot whose entry is not the kept fallback.
    pub first: Option<Slot>,
}

impl View {
    pub fn slot(&self, s: Slot) -> &SlotView {
        self.slots
            .iter()
            .find(|v| v.slot == s)
            .expect("both slots are in a view")
    }

    /// The slot that boots next, if any.
    pub fn next_slot(&self) -> Option<Slot> {
        self.next.as_ref().map(|n| n.0)
    }
}

/// What a backend's records say about one slot, for [`View::build`].
pub struct SlotRecords {
    pub state: SlotState,
    /// The records by name (as [`SlotView::entries`]).
    pub entries: Vec<String>,
    /// The version the records name, if they name one (systemd-boot's entries do).
    pub version: Option<String>,
}

impl View {
    /// Both slots' views from a backend's `records` of each and the slot's `X/info.json` (the
    /// version from there when the records name none).
    pub fn build(
        esp: &Esp,
        next: Option<(Slot, String)>,
        first: Option<Slot>,
        records: impl Fn(Slot) -> SlotRecords,
    ) -> Result<View> {
        let mut slots = Vec::new();
        for slot in Slot::ALL {
            let r = records(slot);
            let info = read_info(esp, slot)?;
            slots.push(SlotView {
                slot,
                state: r.state,
                entries: r.entries,
                version: r
                    .version
                    .or_else(|| info.as_ref().map(|i| i.version.clone())),
                info,
            });
        }
        Ok(View { slots, next, first })
    }
}

/// A slot's `info.json` on the ESP, if present and readable.
pub fn read_info(esp: &Esp, slot: Slot) -> Result<Option<SlotInfo>> {
    Ok(esp
        .read_small(&slot.files().info)?
        .and_then(|b| serde_json::from_slice::<SlotInfo>(&b).ok()))
}

/// One boot as a model predicts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Booted {
    pub slot: Slot,
    /// The version the loader's record names (empty if none).
    pub version: String,
    /// The record the loader picks (systemd-boot: the entry file, before its rename).
    pub record: String,
}

/// A pure model of what the firmware and the loader boot, over a snapshot of the loader's
/// state: no disk access, so it can be stepped through several boots.
pub trait BootModel {
    /// What boots next, without changing the state.
    fn next(&self) -> Option<Booted>;
    /// One boot: what boots, with the state changed as the loader changes it (a try used).
    fn boot(&mut self) -> Option<Booted>;
}

/// ESP space a loader's own files for one slot take (for the free-space check before apply).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordSpace {
    /// Sizes of the files [`BootLoader::make_unbootable`] removes.
    pub removed: Vec<u64>,
    /// How many small files [`BootLoader::boot_next`] creates (a cluster each).
    pub created: u64,
}

/// What the commands need from a boot loader. Every change is durable (synced) when the
/// method returns, and leaves the disk bootable at every write in between (the crash tests
/// cut after each one).
pub trait BootLoader {
    /// The loader's name, for messages.
    fn name(&self) -> &'static str;

    /// Both slots' states and versions, and what boots next.
    fn view(&self, esp: &Esp) -> Result<View>;

    /// A snapshot of the loader's state on `esp` as a pure model.
    fn model(&self, esp: &Esp) -> Result<Box<dyn BootModel>>;

    /// Refuses (before anything is written, and before a command judges the slots by
    /// [`view`](Self::view)) the loader's own state in a form it cannot read or change.
    fn check_state(&self, _esp: &Esp) -> Result<()> {
        Ok(())
    }

    /// Refuses (before anything is written) an install of `version` into `slot` this loader
    /// could not finish: kernel parameters it cannot pass on, or a record that is no slot's
    /// and would still boot before the new slot.
    fn check_install(
        &self,
        _esp: &Esp,
        _slot: Slot,
        _version: &str,
        _kernel_params: &str,
    ) -> Result<()> {
        Ok(())
    }

    /// Whether `slot` can serve as the machine's boot target: it has tries left (or is good)
    /// and its kernel exists.
    fn bootable(&self, esp: &Esp, slot: Slot) -> Result<bool>;

    /// Apply's step 1: once this returns, `slot` cannot boot (its files may then be replaced).
    fn make_unbootable(&self, esp: &Esp, slot: Slot) -> Result<()>;

    /// What [`make_unbootable`](Self::make_unbootable) frees and
    /// [`boot_next`](Self::boot_next) takes on the ESP for `slot`.
    fn record_space(&self, esp: &Esp, slot: Slot) -> Result<RecordSpace>;

    /// Apply's step 4: `slot` (whose files are in place) boots next with `tries` tries;
    /// written, synced and read back.
    fn boot_next(
        &self,
        esp: &Esp,
        slot: Slot,
        tries: u32,
        version: &str,
        kernel_params: &str,
    ) -> Result<()>;

    /// `slot` booted well: it stops counting tries. `Ok(false)` if it already was marked
    /// good and nothing was written.
    fn mark_good(&self, esp: &Esp, slot: Slot) -> Result<bool>;

    /// `slot` gets no tries left: it only boots if nothing else can (it stays the last resort).
    fn mark_bad(&self, esp: &Esp, slot: Slot) -> Result<()>;

    /// A downgrade: `slot` would still boot before the older version just installed in the
    /// other slot. Let the other slot boot first while `slot` stays the fallback (and, if it is
    /// good, good: it boots whenever the other one does not come up).
    fn keep_as_fallback(&self, esp: &Esp, slot: Slot) -> Result<()>;

    /// The other slot boots next instead of `current`, which is marked bad.
    fn rollback(&self, esp: &Esp, current: Slot) -> Result<()> {
        self.mark_bad(esp, current)
    }

    /// If this boot of `booted` is a fallback, the slot that should have booted instead.
    fn fallback_from(&self, view: &View, booted: Slot) -> Option<Slot>;
}

/// For a loader with an order ([`View::first`]): booting a slot other than the first one is a
/// fallback, unless the first has no record (taken out on purpose, or being written).
pub fn fallback_by_order(view: &View, booted: Slot) -> Option<Slot> {
    let first = view.first?;
    (first != booted && view.slot(first).state != SlotState::Empty).then_some(first)
}

/// The boot loader of the disk whose ESP is `esp`, from what is on it: GRUB if the ESP has
/// either copy of its env block (`grub/env1`, `grub/env2`) or `grub/grub.cfg`, else
/// systemd-boot. An ESP with no loader recognised is treated
/// as systemd-boot's (so a bare ESP behaves as it always has).
pub fn detect(esp: &Esp) -> Box<dyn BootLoader> {
    if grub::Grub::present(esp) {
        debug!("GRUB env block on the ESP: the GRUB backend");
        return Box::new(grub::Grub);
    }
    if !systemd_boot::SystemdBoot::present(esp) {
        debug!("no boot loader recognised on the ESP; assuming systemd-boot");
    }
    Box::new(systemd_boot::SystemdBoot)
}
