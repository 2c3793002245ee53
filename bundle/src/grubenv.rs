//! The A/B state of a GRUB disk (`docs/layout.md`, "GRUB"): two copies of a GRUB environment
//! block on the ESP, the paths GRUB and abupdate share, and a pure model of what the generated
//! grub.cfg boots next. Pure: no I/O.
//!
//! A block is GRUB's own format (grub-core/lib/envblk.c): the line `# GRUB Environment Block`,
//! then `name=value` lines, then `#` up to the block's end. Ours are exactly one 512-byte sector,
//! so abupdate (and GRUB's `save_env`) change a copy with one in-place sector write, never a FAT
//! or directory change. Three variables, in this order:
//!
//! ```text
//! ab_order=a b      the slot tried first, then the other ("a b" or "b a")
//! ab_a=good         per slot: good | N (1..=MAX_TRIES tries left) | 0 (used up) | none
//! ab_b=none
//! ```
//!
//! GRUB rewrites a variable in place and keeps the order, so [`encode`] of a state is byte for
//! byte what `save_env` leaves after changing one variable of [`encode`] of the previous state.

use std::fmt;

use crate::layout::Slot;

/// Size of each env block: one sector.
pub const ENV_SIZE: usize = 512;
/// The first line of every GRUB environment block (GRUB_ENVBLK_SIGNATURE).
pub const SIGNATURE: &str = "# GRUB Environment Block\n";
/// GRUB's directory on the ESP: `core.img`'s and `BOOTX64.EFI`'s prefix is `(,gpt1)/grub`.
pub const GRUB_DIR: &str = "grub";
/// The generated, static grub.cfg (ESP path).
pub const GRUB_CFG: &str = "grub/grub.cfg";
/// The two copies of the env block (ESP paths): GRUB reads copy 1, else copy 2.
pub const ENV_FILES: [&str; 2] = ["grub/env1", "grub/env2"];
/// The variable naming the slot order.
pub const ORDER_VAR: &str = "ab_order";
/// Every variable of the block, in the order [`encode`] writes them: grub.cfg loads only
/// these (`load_env --file F ab_order ab_a ab_b`), so the block cannot set other GRUB variables.
pub const VARS: [&str; 3] = [ORDER_VAR, "ab_a", "ab_b"];
/// Most tries a slot may get: the length of grub.cfg's decrement table. `boot-tries` of an
/// image definition has the same bound.
pub const MAX_TRIES: u32 = 100;
/// The slot grub.cfg boots when neither env copy holds a valid state (baked into grub.cfg at
/// build time; the other slot is tried if its kernel does not load).
pub const DEFAULT_SLOT: Slot = Slot::A;

/// The variable holding `slot`'s state: `ab_a` or `ab_b`.
pub fn slot_var(slot: Slot) -> &'static str {
    match slot {
        Slot::A => VARS[1],
        Slot::B => VARS[2],
    }
}

/// The ESP path of `slot`'s kernel command line for GRUB: a one-line GRUB script written with
/// the slot's kernel and initrd ([`cmdline_cfg`]), which grub.cfg `source`s before booting it.
pub fn cmdline_file(slot: Slot) -> String {
    format!("{}/cmdline.cfg", slot.files().dir)
}

/// The variable [`cmdline_file`] sets.
pub const PARAMS_VAR: &str = "ab_params";

/// The contents of [`cmdline_file`] for a bundle's `kernel_params`, which must pass
/// [`crate::layout::check_grub_kernel_params`] (checked here too: the text becomes GRUB script).
pub fn cmdline_cfg(kernel_params: &str) -> Result<String, String> {
    crate::layout::check_grub_kernel_params(kernel_params)?;
    let words: Vec<&str> = kernel_params.split_whitespace().collect();
    Ok(format!("set {PARAMS_VAR}=\"{}\"\n", words.join(" ")))
}

/// One slot's state in the env block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotState {
    /// Boots without spending a try (`good`).
    Good,
    /// Being tried: this many tries left, 1..=[`MAX_TRIES`] (`N`).
    Tries(u32),
    /// Tried and never marked good: no tries left (`0`). Its files are complete.
    UsedUp,
    /// Cannot boot: being written, or marked bad (`none`).
    None,
}

impl SlotState {
    /// The value in the env block.
    pub fn text(self) -> String {
        match self {
            SlotState::Good => "good".into(),
            SlotState::Tries(n) => n.to_string(),
            SlotState::UsedUp => "0".into(),
            SlotState::None => "none".into(),
        }
    }

    /// Parses a value; strict: only what [`SlotState::text`] writes.
    pub fn parse(s: &str) -> Option<SlotState> {
        match s {
            "good" => Some(SlotState::Good),
            "none" => Some(SlotState::None),
            "0" => Some(SlotState::UsedUp),
            _ => {
                // No sign, no leading zero: the decrement table in grub.cfg matches text.
                if s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                match s.parse::<u32>() {
                    Ok(n) if (1..=MAX_TRIES).contains(&n) => Some(SlotState::Tries(n)),
                    _ => None,
                }
            }
        }
    }

    /// The state after one try is spent; `None` for a state that is not being tried.
    pub fn spend_try(self) -> Option<SlotState> {
        match self {
            SlotState::Tries(1) => Some(SlotState::UsedUp),
            SlotState::Tries(n) => Some(SlotState::Tries(n - 1)),
            _ => None,
        }
    }
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// The A/B state one env block holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// The slot grub.cfg tries first (`ab_order`); the other one comes second.
    pub first: Slot,
    pub a: SlotState,
    pub b: SlotState,
}

impl State {
    /// The state of a fresh image: slot a good and first, slot b empty.
    pub fn initial() -> State {
        State {
            first: Slot::A,
            a: SlotState::Good,
            b: SlotState::None,
        }
    }

    pub fn slot(&self, slot: Slot) -> SlotState {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }

    pub fn set(&mut self, slot: Slot, state: SlotState) {
        match slot {
            Slot::A => self.a = state,
            Slot::B => self.b = state,
        }
    }

    /// The slots in the order grub.cfg tries them.
    pub fn order(&self) -> [Slot; 2] {
        [self.first, self.first.other()]
    }

    /// `ab_order`'s value: "a b" or "b a".
    pub fn order_text(&self) -> &'static str {
        match self.first {
            Slot::A => "a b",
            Slot::B => "b a",
        }
    }
}

/// Why a block is not a valid state. grub.cfg ignores such a copy (and uses the other one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("GRUB env block is {0} bytes, not {ENV_SIZE}")]
    Size(usize),
    #[error("not a GRUB env block (no '# GRUB Environment Block' line)")]
    Signature,
    #[error("GRUB env block: line {0} is not name=value")]
    Line(usize),
    #[error("GRUB env block: unknown variable '{0}'")]
    Unknown(String),
    #[error("GRUB env block: variable '{0}' is set twice")]
    Twice(String),
    #[error("GRUB env block: variable '{0}' is missing")]
    Missing(&'static str),
    #[error("GRUB env block: {name}={value} is not valid ({expected})")]
    Value {
        name: String,
        value: String,
        expected: &'static str,
    },
    #[error("GRUB env block: bytes after the variables are not '#' padding")]
    Padding,
}

/// The block holding `state`: signature, the three variables in [`VARS`] order, `#` padding.
pub fn encode(state: &State) -> [u8; ENV_SIZE] {
    let mut text = String::from(SIGNATURE);
    text.push_str(&format!("{ORDER_VAR}={}\n", state.order_text()));
    for slot in Slot::ALL {
        text.push_str(&format!("{}={}\n", slot_var(slot), state.slot(slot)));
    }
    let mut block = [b'#'; ENV_SIZE];
    // At most 25 + 13 + 2 * 10 bytes: always fits.
    block[..text.len()].copy_from_slice(text.as_bytes());
    block
}

/// Parses a block. Strict: exactly [`ENV_SIZE`] bytes, the signature, each of [`VARS`] once
/// (in any order, as GRUB allows), valid values, nothing but `#` after the last line.
pub fn parse(block: &[u8]) -> Result<State, EnvError> {
    if block.len() != ENV_SIZE {
        return Err(EnvError::Size(block.len()));
    }
    let rest = block
        .strip_prefix(SIGNATURE.as_bytes())
        .ok_or(EnvError::Signature)?;
    // The variable lines end where the '#' padding starts (GRUB's own rule: a line starting
    // with '#' is a comment, and the padding is one).
    let body_len = rest.iter().position(|b| *b == b'#').unwrap_or(rest.len());
    let (body, padding) = rest.split_at(body_len);
    if padding.iter().any(|b| *b != b'#') {
        return Err(EnvError::Padding);
    }
    let body = std::str::from_utf8(body).map_err(|_| EnvError::Line(1))?;
    let mut values: [Option<&str>; 3] = [None; 3];
    for (i, line) in body.split_terminator('\n').enumerate() {
        let (name, value) = line.split_once('=').ok_or(EnvError::Line(i + 2))?;
        let k = VARS
            .iter()
            .position(|v| *v == name)
            .ok_or_else(|| EnvError::Unknown(name.to_string()))?;
        if values[k].replace(value).is_some() {
            return Err(EnvError::Twice(name.to_string()));
        }
    }
    if !body.is_empty() && !body.ends_with('\n') {
        return Err(EnvError::Line(body.lines().count() + 1));
    }
    let get = |k: usize| values[k].ok_or(EnvError::Missing(VARS[k]));
    let bad = |k: usize, value: &str, expected| EnvError::Value {
        name: VARS[k].to_string(),
        value: value.to_string(),
        expected,
    };
    let order = get(0)?;
    let first = match order {
        "a b" => Slot::A,
        "b a" => Slot::B,
        _ => return Err(bad(0, order, "'a b' or 'b a'")),
    };
    let slot = |k: usize| -> Result<SlotState, EnvError> {
        let v = get(k)?;
        SlotState::parse(v).ok_or_else(|| bad(k, v, "good, none, or 0 to 100 tries"))
    };
    Ok(State {
        first,
        a: slot(1)?,
        b: slot(2)?,
    })
}

/// How grub.cfg came to boot a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootKind {
    /// The slot is good: nothing was written.
    Good,
    /// The slot is being tried: one try was spent and saved before its kernel loaded.
    Try,
    /// Neither copy holds a valid state, or no slot in it is good or has tries left:
    /// [`DEFAULT_SLOT`] boots, nothing is written.
    Default,
}

/// What grub.cfg does at one boot ([`next_boot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextBoot {
    /// The slot whose kernel GRUB starts.
    pub slot: Slot,
    pub kind: BootKind,
    /// The copy GRUB read, an index into [`ENV_FILES`] (`None`: neither was valid).
    pub copy: Option<usize>,
    /// What GRUB wrote into that copy before loading the kernel (only for [`BootKind::Try`]).
    pub saved: Option<State>,
    /// The first slot in order was passed over: it is not good and has no tries left.
    pub fallback: bool,
}

/// The pure model of the generated grub.cfg (`builder/src/grub.rs`), given what each env copy
/// parses to (`None`: [`parse`] refused it; grub.cfg refuses the same blocks, save for blocks
/// GRUB is laxer about that neither abupdate nor GRUB ever writes, such as comment lines).
///
/// GRUB reads copy 1 if it is valid, else copy 2. It takes the slots in order: a good slot
/// boots; a slot with tries left gets one try fewer, saved into the copy it read, and boots.
/// With no valid copy, or no slot good or with tries left, [`DEFAULT_SLOT`] boots. The model
/// assumes `save_env` succeeds and the chosen slot's kernel loads (grub.cfg goes on to the next
/// slot when either fails).
pub fn next_boot(copy1: Option<State>, copy2: Option<State>) -> NextBoot {
    let loaded = match (copy1, copy2) {
        (Some(s), _) => Some((0, s)),
        (None, Some(s)) => Some((1, s)),
        (None, None) => None,
    };
    if let Some((copy, state)) = loaded {
        for (i, slot) in state.order().into_iter().enumerate() {
            let fallback = i > 0;
            match state.slot(slot) {
                SlotState::Good => {
                    return NextBoot {
                        slot,
                        kind: BootKind::Good,
                        copy: Some(copy),
                        saved: None,
                        fallback,
                    }
                }
                s => {
                    if let Some(left) = s.spend_try() {
                        let mut saved = state;
                        saved.set(slot, left);
                        return NextBoot {
                            slot,
                            kind: BootKind::Try,
                            copy: Some(copy),
                            saved: Some(saved),
                            fallback,
                        };
                    }
                }
            }
        }
    }
    NextBoot {
        slot: DEFAULT_SLOT,
        kind: BootKind::Default,
        copy: loaded.map(|(c, _)| c),
        saved: None,
        fallback: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(first: Slot, a: SlotState, b: SlotState) -> State {
        State { first, a, b }
    }

    fn all_states() -> Vec<State> {
        let mut slots = vec![SlotState::Good, SlotState::UsedUp, SlotState::None];
        slots.extend([1, 2, 3, 9, 10, 99, MAX_TRIES].map(SlotState::Tries));
        let mut v = Vec::new();
        for first in Slot::ALL {
            for a in &slots {
                for b in &slots {
                    v.push(st(first, *a, *b));
                }
            }
        }
        v
    }

    #[test]
    fn encode_is_grubs_format() {
        let block = encode(&st(Slot::B, SlotState::Tries(3), SlotState::Good));
        let text = std::str::from_utf8(&block).unwrap();
        let expected = "# GRUB Environment Block\nab_order=b a\nab_a=3\nab_b=good\n";
        assert!(text.starts_with(expected), "{text}");
        assert!(text[expected.len()..].bytes().all(|b| b == b'#'));
    }

    #[test]
    fn parse_inverts_encode() {
        for s in all_states() {
            assert_eq!(parse(&encode(&s)), Ok(s));
        }
    }

    #[test]
    fn parse_is_strict() {
        let good = encode(&State::initial());
        let text = std::str::from_utf8(&good).unwrap().to_string();
        let with = |from: &str, to: &str| {
            let t = text.replacen(from, to, 1);
            let mut b = t.into_bytes();
            b.resize(ENV_SIZE, b'#');
            parse(&b[..ENV_SIZE])
        };
        assert_eq!(parse(&good[..511]), Err(EnvError::Size(511)));
        assert_eq!(with("# GRUB", "# GRUX"), Err(EnvError::Signature));
        assert!(matches!(
            with("ab_a=good", "ab_a=05"),
            Err(EnvError::Value { .. })
        ));
        assert!(matches!(
            with("ab_a=good", "ab_a=101"),
            Err(EnvError::Value { .. })
        ));
        assert!(matches!(
            with("ab_a=good", "ab_a=Good"),
            Err(EnvError::Value { .. })
        ));
        assert!(matches!(
            with("ab_a=good", "ab_a=-1"),
            Err(EnvError::Value { .. })
        ));
        assert!(matches!(with("=a b", "=a a"), Err(EnvError::Value { .. })));
        assert_eq!(
            with("ab_b=none\n", "ab_b=none\nab_a=good\n"),
            Err(EnvError::Twice("ab_a".into()))
        );
        assert_eq!(
            with("ab_b=none\n", "ab_b=none\nroot=x\n"),
            Err(EnvError::Unknown("root".into()))
        );
        assert_eq!(with("ab_b=none\n", ""), Err(EnvError::Missing("ab_b")));
        assert_eq!(with("ab_b=none\n", "ab_b\n"), Err(EnvError::Line(4)));
        // A torn write: new bytes, then zeros where padding was.
        let mut torn = good;
        torn[100..].fill(0);
        assert_eq!(parse(&torn), Err(EnvError::Padding));
        // GRUB allows any order; so does parse.
        assert_eq!(
            with("ab_order=a b\nab_a=good\n", "ab_a=good\nab_order=a b\n"),
            Ok(State::initial())
        );
    }

    /// Every one-byte change of a valid block is refused, or is another valid block that
    /// encode writes byte for byte: parse accepts no block GRUB would read differently.
    #[test]
    fn one_byte_changes_are_refused_or_canonical() {
        for s in [
            State::initial(),
            st(Slot::B, SlotState::Tries(3), SlotState::Good),
            st(Slot::A, SlotState::UsedUp, SlotState::Tries(100)),
        ] {
            let block = encode(&s);
            for i in 0..ENV_SIZE {
                for v in [b'#', b'\n', b'=', b' ', b'0', b'1', b'a', b'b', 0, 0xff] {
                    let mut m = block;
                    m[i] = v;
                    if let Ok(t) = parse(&m) {
                        assert_eq!(encode(&t), m, "byte {i} = {v:#x}");
                    }
                }
            }
        }
    }

    #[test]
    fn slot_state_text() {
        for (s, t) in [
            (SlotState::Good, "good"),
            (SlotState::None, "none"),
            (SlotState::UsedUp, "0"),
            (SlotState::Tries(1), "1"),
            (SlotState::Tries(100), "100"),
        ] {
            assert_eq!(s.text(), t);
            assert_eq!(SlotState::parse(t), Some(s));
        }
        for bad in ["", "+1", "00", "1 ", "101", "4294967296", "bad"] {
            assert_eq!(SlotState::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cmdline_file_text() {
        assert_eq!(cmdline_file(Slot::B), "b/cmdline.cfg");
        assert_eq!(
            cmdline_cfg(" console=ttyS0  quiet ").unwrap(),
            "set ab_params=\"console=ttyS0 quiet\"\n"
        );
        assert_eq!(cmdline_cfg("").unwrap(), "set ab_params=\"\"\n");
        assert!(cmdline_cfg("x=\"; reboot\"").is_err());
    }

    #[test]
    fn model_boots_good_slots_and_counts_tries() {
        use SlotState::{Good, Tries, UsedUp};
        const NONE: SlotState = SlotState::None;
        let n = next_boot(Some(State::initial()), Some(State::initial()));
        assert_eq!(
            (n.slot, n.kind, n.copy, n.saved),
            (Slot::A, BootKind::Good, Some(0), None)
        );
        // A new slot b with 3 tries: b boots three times, then a.
        let mut s = st(Slot::B, Good, Tries(3));
        for left in [Tries(2), Tries(1), UsedUp] {
            let n = next_boot(Some(s), Some(s));
            assert_eq!(
                (n.slot, n.kind, n.fallback),
                (Slot::B, BootKind::Try, false)
            );
            assert_eq!(n.saved.unwrap().b, left);
            s = n.saved.unwrap();
        }
        let n = next_boot(Some(s), None);
        assert_eq!(
            (n.slot, n.kind, n.fallback),
            (Slot::A, BootKind::Good, true)
        );
        // Copy 1 unreadable: copy 2 is read, and saved into.
        let n = next_boot(None, Some(st(Slot::B, Good, Tries(1))));
        assert_eq!((n.slot, n.copy), (Slot::B, Some(1)));
        assert_eq!(n.saved, Some(st(Slot::B, Good, UsedUp)));
        // Copy 1 wins even when copy 2 differs.
        let n = next_boot(
            Some(st(Slot::A, Good, NONE)),
            Some(st(Slot::B, Good, Tries(3))),
        );
        assert_eq!(n.slot, Slot::A);
    }

    #[test]
    fn model_falls_back_to_the_default() {
        use SlotState::{Good, Tries, UsedUp};
        const NONE: SlotState = SlotState::None;
        for (c1, c2) in [
            (None, None),
            (Some(st(Slot::B, UsedUp, NONE)), None),
            (None, Some(st(Slot::A, NONE, UsedUp))),
        ] {
            let n = next_boot(c1, c2);
            assert_eq!(
                (n.slot, n.kind, n.saved),
                (DEFAULT_SLOT, BootKind::Default, None)
            );
        }
        // Every state: a good or trying slot boots whenever there is one, and at most one
        // try is spent.
        for s in all_states() {
            let n = next_boot(Some(s), None);
            let bootable = |x: SlotState| matches!(x, Good | Tries(_));
            if bootable(s.a) || bootable(s.b) {
                assert!(bootable(s.slot(n.slot)), "{s:?} -> {n:?}");
                assert_eq!(n.fallback, !bootable(s.slot(s.first)));
            } else {
                assert_eq!(n.kind, BootKind::Default);
            }
            if let Some(saved) = n.saved {
                assert_eq!(saved.slot(n.slot.other()), s.slot(n.slot.other()));
                assert_eq!(Some(saved.slot(n.slot)), s.slot(n.slot).spend_try());
            }
        }
    }
}

/// The format against GRUB's own tool, `grub-editenv` (grub-common), which uses GRUB's envblk
/// code: what [`encode`] writes GRUB reads, and what GRUB writes [`parse`] reads.
#[cfg(test)]
mod grub_editenv {
    use super::*;
    use std::process::Command;

    fn editenv(file: &std::path::Path, args: &[&str]) -> String {
        let out = Command::new("grub-editenv")
            .arg(file)
            .args(args)
            .output()
            .expect("running grub-editenv (install grub-common: scripts/setup.sh)");
        assert!(out.status.success(), "grub-editenv {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn grub_reads_what_encode_writes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("env");
        let s = State {
            first: Slot::B,
            a: SlotState::Good,
            b: SlotState::Tries(MAX_TRIES),
        };
        std::fs::write(&f, encode(&s)).unwrap();
        assert_eq!(
            editenv(&f, &["list"]),
            "ab_order=b a\nab_a=good\nab_b=100\n"
        );
    }

    #[test]
    fn parse_reads_what_grub_writes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("env");
        // An empty one-sector block, then GRUB sets the variables.
        let mut empty = [b'#'; ENV_SIZE];
        empty[..SIGNATURE.len()].copy_from_slice(SIGNATURE.as_bytes());
        std::fs::write(&f, empty).unwrap();
        editenv(&f, &["set", "ab_order=b a", "ab_a=3", "ab_b=good"]);
        let block = std::fs::read(&f).unwrap();
        let s = State {
            first: Slot::B,
            a: SlotState::Tries(3),
            b: SlotState::Good,
        };
        assert_eq!(parse(&block), Ok(s));
        assert_eq!(block, encode(&s));
        // GRUB changing one variable in place (what save_env does at boot) leaves exactly
        // what encode writes for the new state, for every change of one slot's value.
        let mut cur = s;
        for (slot, value) in [
            (Slot::A, SlotState::Tries(2)),
            (Slot::A, SlotState::Tries(1)),
            (Slot::A, SlotState::UsedUp),
            (Slot::B, SlotState::None),
            (Slot::A, SlotState::Tries(MAX_TRIES)),
            (Slot::A, SlotState::Good),
        ] {
            std::fs::write(&f, encode(&cur)).unwrap();
            let arg = format!("{}={}", slot_var(slot), value);
            editenv(&f, &["set", &arg]);
            cur.set(slot, value);
            assert_eq!(std::fs::read(&f).unwrap(), encode(&cur), "{arg}");
        }
        // GRUB refuses to grow the block: the file stays one sector.
        assert_eq!(std::fs::metadata(&f).unwrap().len(), ENV_SIZE as u64);
    }
}
