//! GRUB: the A/B state in two copies of a GRUB environment block on the ESP (`grub/env1`,
//! `grub/env2`; format and the model of the generated grub.cfg: `abbundle::grubenv`,
//! docs/layout.md "GRUB").
//!
//! abupdate changes the state by rewriting each copy in place, one sector, never through the
//! FAT driver: copy 1, sync, read back, then copy 2, sync, read back. A cut leaves at most one
//! copy torn, and GRUB reads copy 1 if it is valid, else copy 2, so every cut leaves the old
//! state or the new one. Every state written has a good or a trying slot (grub.cfg would
//! otherwise boot its baked-in default slot, which may be the one being written). grub.cfg is
//! never touched. A slot's kernel command line is in `X/cmdline.cfg`, written through the FAT
//! driver with its kernel and initrd, while the slot is `none`.

use anyhow::Result;
use tracing::info;

use abbundle::grubenv::{
    self, BootKind, SlotState as EnvState, State, ENV_FILES, ENV_SIZE, GRUB_CFG,
};

use super::{BootLoader, BootModel, Booted, RecordSpace, Slot, SlotRecords, SlotState, View};
use crate::codes;
use crate::disk::esp::Esp;
use crate::refuse;

/// The GRUB backend (stateless: everything is read from the ESP each time).
pub struct Grub;

impl Grub {
    /// Whether `esp` is a GRUB disk: either env copy, or grub.cfg. Any one of them is enough,
    /// so a disk that lost one copy is still taken for GRUB (and refused for its missing copy)
    /// rather than for systemd-boot.
    pub fn present(esp: &Esp) -> bool {
        ENV_FILES.iter().chain([&GRUB_CFG]).any(|f| esp.exists(f))
    }
}

/// What each env copy parses to (`None`: missing or not valid, as grub.cfg would ignore it).
fn read_copies(esp: &Esp) -> Result<[Option<State>; 2]> {
    let mut out = [None; 2];
    for (i, f) in ENV_FILES.iter().enumerate() {
        out[i] = esp.read_small(f)?.and_then(|b| grubenv::parse(&b).ok());
    }
    Ok(out)
}

/// The state GRUB acts on: copy 1 if valid, else copy 2.
fn current(copies: &[Option<State>; 2]) -> Option<State> {
    copies[0].or(copies[1])
}

/// The state to change, or a refusal if neither copy is valid.
fn current_or_refuse(esp: &Esp) -> Result<State> {
    match current(&read_copies(esp)?) {
        Some(s) => Ok(s),
        None => refuse!(
            codes::BAD_DISK,
            "neither {} nor {} on the ESP holds a valid GRUB state; nothing was changed",
            ENV_FILES[0],
            ENV_FILES[1]
        ),
    }
}

fn can_boot(s: EnvState) -> bool {
    matches!(s, EnvState::Good | EnvState::Tries(_))
}

/// Writes `new` into copy 1, then copy 2 (each one sector in place, synced, read back). A copy
/// that already holds it is left alone. Refuses a state with no good and no trying slot.
fn write_state(esp: &Esp, new: &State) -> Result<()> {
    if !Slot::ALL.iter().any(|s| can_boot(new.slot(*s))) {
        refuse!(
            codes::NO_FALLBACK,
            "refusing to write a GRUB state in which no slot is good or being tried \
             (slot a {}, slot b {}); nothing was changed",
            new.a,
            new.b
        );
    }
    let block = grubenv::encode(new);
    // Both copies are checked before either is written.
    let files = ENV_FILES
        .iter()
        .map(|f| esp.in_place(f, ENV_SIZE))
        .collect::<Result<Vec<_>>>()?;
    for (f, path) in files.iter().zip(ENV_FILES) {
        if esp.read_small(path)?.as_deref() == Some(&block[..]) {
            continue;
        }
        esp.write_in_place(f, &block)?;
        info!(
            "wrote {path}: ab_order=\"{}\" ab_a={} ab_b={}",
            new.order_text(),
            new.a,
            new.b
        );
    }
    Ok(())
}

/// Changes the current state with `f` and writes it, unless nothing changes.
fn update(esp: &Esp, f: impl FnOnce(&mut State)) -> Result<bool> {
    let copies = read_copies(esp)?;
    let Some(old) = current(&copies) else {
        return current_or_refuse(esp).map(|_| false);
    };
    let mut new = old;
    f(&mut new);
    // Both copies already hold it: nothing to write (a copy left behind by a cut is not).
    if copies == [Some(new), Some(new)] {
        return Ok(false);
    }
    write_state(esp, &new)?;
    Ok(true)
}

fn slot_state(s: EnvState) -> SlotState {
    match s {
        EnvState::Good => SlotState::Good,
        EnvState::Tries(n) => SlotState::Trying { left: n },
        EnvState::UsedUp => SlotState::Bad,
        EnvState::None => SlotState::Empty,
    }
}

/// The record naming a slot's state: the env variable as it is set.
fn record(state: &State, slot: Slot) -> String {
    format!("{}={}", grubenv::slot_var(slot), state.slot(slot))
}

/// The grub.cfg model over a snapshot of both copies, and the versions in `X/info.json`.
struct Model {
    copies: [Option<State>; 2],
    versions: [String; 2],
}

impl Model {
    fn read(esp: &Esp) -> Result<Model> {
        let mut versions = [String::new(), String::new()];
        for (i, s) in Slot::ALL.iter().enumerate() {
            if let Some(info) = super::read_info(esp, *s)? {
                versions[i] = info.version;
            }
        }
        Ok(Model {
            copies: read_copies(esp)?,
            versions,
        })
    }

    fn booted(&self, slot: Slot, kind: BootKind) -> Booted {
        let i = Slot::ALL.iter().position(|s| *s == slot).expect("a slot");
        let state = current(&self.copies);
        Booted {
            slot,
            version: self.versions[i].clone(),
            record: match (kind, state) {
                (BootKind::Default, _) | (_, None) => format!("ab_default={slot}"),
                (_, Some(s)) => record(&s, slot),
            },
        }
    }
}

impl BootModel for Model {
    fn next(&self) -> Option<Booted> {
        let n = grubenv::next_boot(self.copies[0], self.copies[1]);
        Some(self.booted(n.slot, n.kind))
    }

    fn boot(&mut self) -> Option<Booted> {
        let n = grubenv::next_boot(self.copies[0], self.copies[1]);
        let b = self.booted(n.slot, n.kind);
        if let (Some(copy), Some(saved)) = (n.copy, n.saved) {
            self.copies[copy] = Some(saved);
        }
        Some(b)
    }
}

impl BootLoader for Grub {
    fn name(&self) -> &'static str {
        "grub"
    }

    fn view(&self, esp: &Esp) -> Result<View> {
        let model = Model::read(esp)?;
        let state = current(&model.copies);
        let next = model.next().map(|b| (b.slot, b.record));
        View::build(esp, next, state.map(|s| s.first), |slot| {
            let st = state.map_or(EnvState::None, |s| s.slot(slot));
            SlotRecords {
                state: slot_state(st),
                entries: match (state, st) {
                    (Some(s), st) if st != EnvState::None => vec![record(&s, slot)],
                    _ => Vec::new(),
                },
                // The versions are in `X/info.json`.
                version: None,
            }
        })
    }

    fn model(&self, esp: &Esp) -> Result<Box<dyn BootModel>> {
        Ok(Box::new(Model::read(esp)?))
    }

    /// A copy of the env must hold a state, and both copies must be there and rewritable in
    /// place (one sector in a cluster of their own).
    fn check_state(&self, esp: &Esp) -> Result<()> {
        current_or_refuse(esp)?;
        for f in ENV_FILES {
            if let Err(e) = esp.in_place(f, ENV_SIZE) {
                refuse!(codes::BAD_DISK, "{e:#}; nothing was changed");
            }
        }
        Ok(())
    }

    /// The kernel parameters must be safe inside GRUB script.
    fn check_install(
        &self,
        _esp: &Esp,
        _slot: Slot,
        _version: &str,
        kernel_params: &str,
    ) -> Result<()> {
        if let Err(e) = abbundle::layout::check_grub_kernel_params(kernel_params) {
            refuse!(
                codes::UNSAFE_KERNEL_PARAMS,
                "the bundle's kernel parameters cannot be used on a GRUB disk: {e}; nothing was changed"
            );
        }
        Ok(())
    }

    fn bootable(&self, esp: &Esp, slot: Slot) -> Result<bool> {
        let Some(state) = current(&read_copies(esp)?) else {
            return Ok(false);
        };
        Ok(can_boot(state.slot(slot)) && esp.exists(&slot.files().kernel))
    }

    /// `none`, in one variable: grub.cfg passes the slot over from the first copy written.
    fn make_unbootable(&self, esp: &Esp, slot: Slot) -> Result<()> {
        if update(esp, |s| s.set(slot, EnvState::None))? {
            info!("slot {slot} set to none in the GRUB env");
        }
        Ok(())
    }

    /// Replacing the slot's `cmdline.cfg` frees its clusters and takes one.
    fn record_space(&self, esp: &Esp, slot: Slot) -> Result<RecordSpace> {
        let len = esp.file_len(&grubenv::cmdline_file(slot))?;
        Ok(RecordSpace {
            removed: if len > 0 { vec![len] } else { Vec::new() },
            created: 1,
        })
    }

    fn boot_next(
        &self,
        esp: &Esp,
        slot: Slot,
        tries: u32,
        _version: &str,
        kernel_params: &str,
    ) -> Result<()> {
        let cmdline = match grubenv::cmdline_cfg(kernel_params) {
            Ok(c) => c,
            Err(e) => refuse!(codes::UNSAFE_KERNEL_PARAMS, "{e}"),
        };
        if !(1..=grubenv::MAX_TRIES).contains(&tries) {
            anyhow::bail!(
                "boot-tries {tries} is out of range for GRUB (1 to {})",
                grubenv::MAX_TRIES
            );
        }
        // The command line first, while the slot is still `none`.
        let path = grubenv::cmdline_file(slot);
        esp.write_file(&path, cmdline.as_bytes())?;
        esp.sync()?;
        esp.drop_cache()?;
        if esp.read_small(&path)?.as_deref() != Some(cmdline.as_bytes()) {
            refuse!(
                codes::READBACK_MISMATCH,
                "{path} on the ESP does not read back as written"
            );
        }
        update(esp, |s| {
            s.set(slot, EnvState::Tries(tries));
            s.first = slot;
        })?;
        info!("slot {slot} boots next with {tries} tries (GRUB env; {GRUB_CFG} unchanged)");
        Ok(())
    }

    fn mark_good(&self, esp: &Esp, slot: Slot) -> Result<bool> {
        update(esp, |s| s.set(slot, EnvState::Good))
    }

    /// The order alone says which slot boots first: the other slot first, `slot` unchanged
    /// (a good slot stays good). `boot_next` already did this, so nothing is written.
    fn keep_as_fallback(&self, esp: &Esp, slot: Slot) -> Result<()> {
        update(esp, |s| s.first = slot.other())?;
        Ok(())
    }

    /// `0` (used up), and the other slot first: grub.cfg passes the slot over.
    fn mark_bad(&self, esp: &Esp, slot: Slot) -> Result<()> {
        update(esp, |s| {
            if s.slot(slot) != EnvState::None {
                s.set(slot, EnvState::UsedUp);
            }
            s.first = slot.other();
        })?;
        Ok(())
    }

    /// grub.cfg takes the slots in order: booting the second one means the first was passed
    /// over (its tries ran out, or its kernel did not load). A first slot that is `none` was
    /// taken out on purpose (marked bad, or being written): not a fallback.
    fn fallback_from(&self, view: &View, booted: Slot) -> Option<Slot> {
        super::fallback_by_order(view, booted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::SlotView;

    fn st(first: Slot, a: EnvState, b: EnvState) -> State {
        State { first, a, b }
    }

    #[test]
    fn model_spends_the_tries_then_falls_back() {
        let s = st(Slot::B, EnvState::Good, EnvState::Tries(2));
        let mut m = Model {
            copies: [Some(s), Some(s)],
            versions: ["1".into(), "2".into()],
        };
        let boots: Vec<(Slot, String)> = std::iter::from_fn(|| m.boot())
            .take(4)
            .map(|b| (b.slot, b.version))
            .collect();
        assert_eq!(
            boots,
            [
                (Slot::B, "2".to_string()),
                (Slot::B, "2".to_string()),
                (Slot::A, "1".to_string()),
                (Slot::A, "1".to_string()),
            ]
        );
        // GRUB counted down copy 1 only.
        assert_eq!(m.copies[0].map(|s| s.b), Some(EnvState::UsedUp));
        assert_eq!(m.copies[1], Some(s));
    }

    fn view(first: Slot, a: SlotState, b: SlotState) -> View {
        let sv = |slot, state| SlotView {
            slot,
            state,
            entries: Vec::new(),
            version: None,
            info: None,
        };
        View {
            slots: vec![sv(Slot::A, a), sv(Slot::B, b)],
            next: None,
            first: Some(first),
        }
    }

    #[test]
    fn fallback_is_booting_the_second_slot_in_order() {
        let g = Grub;
        // b's last try was spent: b is first and used up, booting b is no fallback.
        let v = view(Slot::B, SlotState::Good, SlotState::Bad);
        assert_eq!(g.fallback_from(&v, Slot::B), None);
        // a booted while b (first) is used up: b did not come up.
        assert_eq!(g.fallback_from(&v, Slot::A), Some(Slot::B));
        // b marked bad (none) or being written: a boots on purpose.
        let v = view(Slot::B, SlotState::Good, SlotState::Empty);
        assert_eq!(g.fallback_from(&v, Slot::A), None);
    }
}
