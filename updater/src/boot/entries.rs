//! Boot entries on the ESP (`loader/entries/*.conf`) and what systemd-boot does with them.
//!
//! Names follow the Boot Loader Specification's boot counting
//! (<https://uapi-group.org/specifications/specs/boot_loader_specification/#boot-counting>):
//!
//! | name                     | meaning                                                  |
//! |--------------------------|----------------------------------------------------------|
//! | `slot-a.conf`            | a good entry: no counter                                 |
//! | `slot-b+3.conf`          | being tried: 3 tries left                                |
//! | `slot-b+2-1.conf`        | being tried: 2 left, 1 done (systemd-boot renamed it)    |
//! | `slot-b+0-3.conf`        | bad: no tries left, sorted last, so the other slot boots |
//!
//! [`select`] is a model of systemd-boot 252's choice (`config_entry_compare` and
//! `config_default_entry_select` in `src/boot/efi/boot.c`), and [`BootEntry::next_name`] of the
//! rename it does before booting an entry with a counter. The updater uses it to say which slot
//! boots next; the crash-consistency tests use it to judge a disk after a simulated power cut.
//! Facts the model relies on (read from the 252 sources, and DESIGN.md's boots under OVMF):
//!
//! - an entry is only considered if it has a `linux` (or `efi`) line and that file exists;
//! - entries with 0 tries left sort after all others;
//! - `version` only orders entries if *both* have a `sort-key` (then: sort-key ascending,
//!   machine-id, version descending); otherwise the file name decides (descending), so every
//!   entry we write carries `sort-key` (docs/layout.md);
//! - with no `default` in loader.conf and no EFI variables set, the first entry boots.

use std::cmp::Ordering;

/// The `sort-key` every entry written by abbuild and abupdate carries, and the entries'
/// directory and name prefix (docs/layout.md).
pub use abbundle::layout::{ENTRIES_DIR, ENTRY_PREFIX, SORT_KEY};

/// One of the two root slots (the shared contract).
pub use abbundle::layout::Slot;

/// A boot counter: tries left and tries done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    pub left: u32,
    pub done: u32,
}

/// The parsed name of one of our entries: `slot-X[+LEFT[-DONE]].conf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryName {
    pub slot: Slot,
    pub counter: Option<Counter>,
}

impl EntryName {
    pub fn good(slot: Slot) -> EntryName {
        EntryName {
            slot,
            counter: None,
        }
    }

    pub fn trying(slot: Slot, tries: u32) -> EntryName {
        EntryName {
            slot,
            counter: Some(Counter {
                left: tries,
                done: 0,
            }),
        }
    }

    /// Parses one of our names; `None` for anything else (other entries are left alone).
    pub fn parse(file: &str) -> Option<EntryName> {
        let stem = file.strip_suffix(".conf")?;
        let rest = stem.strip_prefix(ENTRY_PREFIX)?;
        let (slot, counter) = match rest.split_once('+') {
            None => (rest, None),
            Some((slot, c)) => {
                let (left, done) = match c.split_once('-') {
                    None => (c, "0"),
                    Some((l, d)) => (l, d),
                };
                let num = |s: &str| -> Option<u32> {
                    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    s.parse().ok()
                };
                (
                    slot,
                    Some(Counter {
                        left: num(left)?,
                        done: num(done)?,
                    }),
                )
            }
        };
        if slot.len() != 1 {
            return None;
        }
        Some(EntryName {
            slot: Slot::parse(slot)?,
            counter,
        })
    }

    /// The file name, `-DONE` left out when it is 0 (as the specification allows).
    pub fn file_name(&self) -> String {
        match self.counter {
            None => abbundle::layout::good_entry_name(self.slot),
            Some(Counter { left, done: 0 }) => {
                format!("{ENTRY_PREFIX}{}+{left}.conf", self.slot)
            }
            Some(Counter { left, done }) => {
                format!("{ENTRY_PREFIX}{}+{left}-{done}.conf", self.slot)
            }
        }
    }

    /// Good, trying with tries left, or bad (no tries left).
    pub fn state(&self) -> EntryState {
        match self.counter {
            None => EntryState::Good,
            Some(Counter { left: 0, .. }) => EntryState::Bad,
            Some(Counter { left, .. }) => EntryState::Trying { left },
        }
    }
}

/// What an entry's name says about its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    Good,
    Trying { left: u32 },
    Bad,
}

/// The contents of an entry file: the keys we write and read. Unknown keys are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryFile {
    pub title: Option<String>,
    pub sort_key: Option<String>,
    pub version: Option<String>,
    pub linux: Option<String>,
    pub initrd: Vec<String>,
    pub options: Vec<String>,
    pub machine_id: Option<String>,
    /// Whether an `efi` line makes this a loadable entry too.
    pub efi: Option<String>,
}

impl EntryFile {
    /// The entry abupdate writes for `slot` holding `version` (`abbundle::layout::boot_entry`).
    pub fn for_slot(slot: Slot, version: &str, kernel_params: &str) -> EntryFile {
        EntryFile::parse(&abbundle::layout::boot_entry(slot, version, kernel_params))
    }

    /// Parses like systemd-boot: one `key value` per line, `#` comments, blank lines skipped;
    /// a repeated single-valued key keeps the last value, `initrd` and `options` accumulate.
    pub fn parse(text: &str) -> EntryFile {
        let mut e = EntryFile::default();
        for line in text.lines() {
            let line = line.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.find([' ', '\t']) {
                Some(i) => (
                    &line[..i],
                    line[i..].trim_matches(|c| c == ' ' || c == '\t'),
                ),
                None => (line, ""),
            };
            let value = unquote(value).to_string();
            match key {
                "title" => e.title = Some(value),
                "sort-key" => e.sort_key = Some(value),
                "version" => e.version = Some(value),
                "machine-id" => e.machine_id = Some(value),
                "linux" => e.linux = Some(value),
                "efi" => e.efi = Some(value),
                "initrd" => e.initrd.push(value),
                "options" => e.options.push(value),
                _ => {}
            }
        }
        e
    }

    /// The file's text, in a fixed key order.
    pub fn format(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: &str| {
            s.push_str(k);
            s.push(' ');
            s.push_str(v);
            s.push('\n');
        };
        if let Some(v) = &self.title {
            line("title", v);
        }
        if let Some(v) = &self.sort_key {
            line("sort-key", v);
        }
        if let Some(v) = &self.version {
            line("version", v);
        }
        if let Some(v) = &self.machine_id {
            line("machine-id", v);
        }
        if let Some(v) = &self.linux {
            line("linux", v);
        }
        if let Some(v) = &self.efi {
            line("efi", v);
        }
        for v in &self.initrd {
            line("initrd", v);
        }
        for v in &self.options {
            line("options", v);
        }
        s
    }

    /// The `ab.slot=` in the options, if any.
    pub fn slot_option(&self) -> Option<Slot> {
        self.options
            .iter()
            .flat_map(|o| o.split_whitespace())
            .find_map(|w| w.strip_prefix("ab.slot="))
            .and_then(Slot::parse)
    }
}

/// systemd-boot strips one pair of surrounding double quotes from values.
fn unquote(v: &str) -> &str {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

/// One `*.conf` file as systemd-boot sees it.
#[derive(Clone, Debug)]
pub struct BootEntry {
    /// The file name in `loader/entries`.
    pub file: String,
    pub contents: EntryFile,
    /// The file's text as read.
    pub text: String,
    /// Counter parsed the way systemd-boot does (for any name, not only ours).
    pub counter: Option<Counter>,
}

impl BootEntry {
    pub fn new(file: &str, text: &str) -> BootEntry {
        BootEntry {
            file: file.to_string(),
            contents: EntryFile::parse(text),
            text: text.to_string(),
            counter: sd_parse_tries(file),
        }
    }

    /// systemd-boot's id: the file name, lower-cased.
    fn id(&self) -> String {
        self.file.to_ascii_lowercase()
    }

    /// The name systemd-boot renames this entry to before booting it, if it has a counter:
    /// one try less (never below 0), one more done.
    pub fn next_name(&self) -> Option<String> {
        let c = self.counter?;
        let plus = self.file.rfind('+')?;
        Some(format!(
            "{}{}-{}.conf",
            &self.file[..plus + 1],
            c.left.saturating_sub(1),
            c.done.saturating_add(1).min(i32::MAX as u32)
        ))
    }

    /// The slot this entry boots: from our name, else from `ab.slot=` in its options.
    pub fn slot(&self) -> Option<Slot> {
        EntryName::parse(&self.file)
            .map(|n| n.slot)
            .or_else(|| self.contents.slot_option())
    }
}

/// systemd-boot's `config_entry_parse_tries`: the counter after the last `+`, `LEFT` then an
/// optional `-DONE`, directly followed by `.conf`; anything else means "no counter".
fn sd_parse_tries(file: &str) -> Option<Counter> {
    let plus = file.rfind('+')?;
    let rest = &file[plus + 1..];
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let n = digits(rest);
    if n == 0 {
        return None;
    }
    let left: u64 = rest[..n].parse().ok()?;
    let mut rest = &rest[n..];
    let mut done = 0u64;
    if let Some(r) = rest.strip_prefix('-') {
        let m = digits(r);
        if m == 0 {
            return None;
        }
        done = r[..m].parse().ok()?;
        rest = &r[m..];
    }
    if rest != ".conf" || left > i32::MAX as u64 || done > i32::MAX as u64 {
        return None;
    }
    Some(Counter {
        left: left as u32,
        done: done as u32,
    })
}

/// Whether systemd-boot would list a file of `loader/entries` at all.
pub fn is_entry_file(file: &str) -> bool {
    !file.starts_with('.')
        && !file.starts_with("auto-")
        && file.to_ascii_lowercase().ends_with(".conf")
}

/// systemd-boot's `config_entry_compare`: `Less` means `a` is listed (and preferred) first.
fn compare(a: &BootEntry, b: &BootEntry) -> Ordering {
    let zero = |e: &BootEntry| e.counter.is_some_and(|c| c.left == 0);
    let r = zero(a).cmp(&zero(b));
    if r != Ordering::Equal {
        return r;
    }
    let (ka, kb) = (&a.contents.sort_key, &b.contents.sort_key);
    let r = ka.is_none().cmp(&kb.is_none());
    if r != Ordering::Equal {
        return r;
    }
    if let (Some(ka), Some(kb)) = (ka, kb) {
        let r = ka.as_bytes().cmp(kb.as_bytes());
        if r != Ordering::Equal {
            return r;
        }
        let r = cmp_opt_str(&a.contents.machine_id, &b.contents.machine_id);
        if r != Ordering::Equal {
            return r;
        }
        let r =
            strverscmp_opt(a.contents.version.as_deref(), b.contents.version.as_deref()).reverse();
        if r != Ordering::Equal {
            return r;
        }
    }
    let r = strverscmp_improved(&a.id(), &b.id()).reverse();
    if r != Ordering::Equal {
        return r;
    }
    match (a.counter, b.counter) {
        (Some(ca), Some(cb)) => cb.left.cmp(&ca.left).then(ca.done.cmp(&cb.done)),
        _ => Ordering::Equal,
    }
}

/// `strcmp_ptr`-like: a missing string sorts first.
fn cmp_opt_str(a: &Option<String>, b: &Option<String>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => a.as_bytes().cmp(b.as_bytes()),
    }
}

fn strverscmp_opt(a: Option<&str>, b: Option<&str>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => strverscmp_improved(a, b),
    }
}

/// The UAPI version comparison (<https://uapi-group.org/specifications/specs/version_format_specification/>),
/// as systemd's `strverscmp_improved` implements it: `Greater` means `a` is newer.
pub fn strverscmp_improved(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    let valid = |c: u8| c.is_ascii_alphanumeric() || b"~-^.".contains(&c);
    loop {
        while let Some((&c, r)) = a.split_first() {
            if valid(c) {
                break;
            }
            a = r;
        }
        while let Some((&c, r)) = b.split_first() {
            if valid(c) {
                break;
            }
            b = r;
        }
        let (ca, cb) = (a.first().copied(), b.first().copied());
        // '~' is older than anything, even the end of the string.
        if ca == Some(b'~') || cb == Some(b'~') {
            let r = (ca != Some(b'~')).cmp(&(cb != Some(b'~')));
            if r != Ordering::Equal {
                return r;
            }
            a = &a[1..];
            b = &b[1..];
            continue;
        }
        // The shorter string is older.
        if ca.is_none() || cb.is_none() {
            return ca.is_some().cmp(&cb.is_some());
        }
        let (ca, cb) = (ca.unwrap(), cb.unwrap());
        let mut separator = false;
        for sep in [b'-', b'^', b'.'] {
            if ca == sep || cb == sep {
                let r = (ca != sep).cmp(&(cb != sep));
                if r != Ordering::Equal {
                    return r;
                }
                a = &a[1..];
                b = &b[1..];
                separator = true;
                break;
            }
        }
        if separator {
            continue;
        }
        if ca.is_ascii_digit() || cb.is_ascii_digit() {
            // Numeric runs are newer than alphabetic ones; leading zeros do not count.
            let strip = |s: &[u8]| -> usize { s.iter().take_while(|&&c| c == b'0').count() };
            a = &a[strip(a)..];
            b = &b[strip(b)..];
            let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
            let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
            let r = na.cmp(&nb).then_with(|| a[..na].cmp(&b[..nb]));
            if r != Ordering::Equal {
                return r;
            }
            a = &a[na..];
            b = &b[nb..];
        } else {
            let na = a.iter().take_while(|c| c.is_ascii_alphabetic()).count();
            let nb = b.iter().take_while(|c| c.is_ascii_alphabetic()).count();
            let n = na.min(nb);
            let r = a[..n].cmp(&b[..n]).then(na.cmp(&nb));
            if r != Ordering::Equal {
                return r;
            }
            a = &a[na..];
            b = &b[nb..];
        }
    }
}

/// The entry systemd-boot 252 boots from `entries`, given which files exist on the ESP
/// (`exists("/b/vmlinuz")`). `None` means it finds nothing to boot.
pub fn select<'a>(
    entries: &'a [BootEntry],
    exists: &dyn Fn(&str) -> bool,
) -> Option<&'a BootEntry> {
    let mut usable: Vec<&BootEntry> = entries
        .iter()
        .filter(|e| is_entry_file(&e.file))
        .filter(|e| match (&e.contents.linux, &e.contents.efi) {
            (Some(p), _) | (None, Some(p)) => exists(p),
            (None, None) => false,
        })
        .collect();
    // A stable sort, like the insertion sort systemd-boot uses.
    usable.sort_by(|a, b| compare(a, b));
    usable.first().copied()
}

/// Entries in systemd-boot's order (for `status`).
pub fn sorted(entries: &[BootEntry]) -> Vec<&BootEntry> {
    let mut v: Vec<&BootEntry> = entries.iter().filter(|e| is_entry_file(&e.file)).collect();
    v.sort_by(|a, b| compare(a, b));
    v
}

/// Simulates one boot: picks the entry, renames it as systemd-boot would, and returns the
/// slot it boots. `entries` is updated in place. For tests and `status` predictions.
pub fn simulate_boot(
    entries: &mut [BootEntry],
    exists: &dyn Fn(&str) -> bool,
) -> Option<(Slot, String)> {
    let file = select(entries, exists)?.file.clone();
    let e = entries.iter_mut().find(|e| e.file == file)?;
    if let Some(next) = e.next_name() {
        e.counter = sd_parse_tries(&next);
        e.file = next;
    }
    Some((e.slot()?, e.contents.version.clone().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file: &str, version: &str) -> BootEntry {
        let slot = EntryName::parse(file).unwrap().slot;
        BootEntry::new(
            file,
            &EntryFile::for_slot(slot, version, "console=ttyS0").format(),
        )
    }

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn names_roundtrip() {
        for (name, slot, counter) in [
            ("slot-a.conf", Slot::A, None),
            ("slot-b+3.conf", Slot::B, Some((3, 0))),
            ("slot-b+2-1.conf", Slot::B, Some((2, 1))),
            ("slot-a+0-3.conf", Slot::A, Some((0, 3))),
        ] {
            let n = EntryName::parse(name).unwrap();
            assert_eq!(n.slot, slot);
            assert_eq!(n.counter.map(|c| (c.left, c.done)), counter);
            assert_eq!(n.file_name(), name);
        }
        for bad in [
            "slot-c.conf",
            "slot-a",
            "slot-a+.conf",
            "slot-a+1-.conf",
            "slot-ab.conf",
            "x.conf",
            "slot-a+x.conf",
        ] {
            assert_eq!(EntryName::parse(bad), None, "{bad}");
        }
        assert_eq!(
            EntryName::parse("slot-a+3-0.conf").unwrap().state(),
            EntryState::Trying { left: 3 }
        );
        assert_eq!(
            EntryName::parse("slot-a+0.conf").unwrap().state(),
            EntryState::Bad
        );
    }

    #[test]
    fn contents_roundtrip() {
        let e = EntryFile::for_slot(Slot::B, "2026.11.22.1", "console=ttyS0 quiet");
        let text = e.format();
        assert!(text.contains("linux /b/vmlinuz\n"));
        assert!(text.contains("options ab.slot=b root=PARTLABEL=root-b console=ttyS0 quiet\n"));
        assert!(text.contains("sort-key abupdate\n"));
        assert_eq!(EntryFile::parse(&text), e);
        assert_eq!(e.slot_option(), Some(Slot::B));
        let odd = EntryFile::parse("# c\n\n  title\t\"x y\"  \nversion 3\r\nlinux /a/vmlinuz\n");
        assert_eq!(odd.title.as_deref(), Some("x y"));
        assert_eq!(odd.version.as_deref(), Some("3"));
    }

    #[test]
    fn systemd_renames() {
        let next = |f: &str| entry(f, "1").next_name();
        assert_eq!(next("slot-b+3.conf").as_deref(), Some("slot-b+2-1.conf"));
        assert_eq!(next("slot-b+2-1.conf").as_deref(), Some("slot-b+1-2.conf"));
        assert_eq!(next("slot-b+0-3.conf").as_deref(), Some("slot-b+0-4.conf"));
        assert_eq!(next("slot-a.conf"), None);
    }

    #[test]
    fn verified_cases_from_design() {
        // a(v1, good) + b(v2, +3) boots b and renames it slot-b+2-1.
        let mut es = vec![entry("slot-a.conf", "1"), entry("slot-b+3.conf", "2")];
        assert_eq!(simulate_boot(&mut es, &all), Some((Slot::B, "2".into())));
        assert!(es.iter().any(|e| e.file == "slot-b+2-1.conf"));
        // a(v1) + b(v2, +0-3) boots a.
        let es = vec![entry("slot-a.conf", "1"), entry("slot-b+0-3.conf", "2")];
        assert_eq!(select(&es, &all).unwrap().file, "slot-a.conf");
        // a(v1) + b(v2, +1-2) boots b once, then a.
        let mut es = vec![entry("slot-a.conf", "1"), entry("slot-b+1-2.conf", "2")];
        assert_eq!(simulate_boot(&mut es, &all).unwrap().0, Slot::B);
        assert_eq!(simulate_boot(&mut es, &all).unwrap().0, Slot::A);
        assert_eq!(simulate_boot(&mut es, &all).unwrap().0, Slot::A);
    }

    #[test]
    fn version_decides_with_sort_key() {
        // a newer slot a beats an older slot b (by name alone b would win).
        let es = vec![entry("slot-a+3.conf", "3"), entry("slot-b.conf", "2")];
        assert_eq!(select(&es, &all).unwrap().file, "slot-a+3.conf");
        let es = vec![
            entry("slot-a.conf", "2026.11.22.10"),
            entry("slot-b.conf", "2026.11.22.9"),
        ];
        assert_eq!(select(&es, &all).unwrap().file, "slot-a.conf");
        // Without sort keys, the name decides: b first whatever the versions.
        let es = vec![
            BootEntry::new("slot-a.conf", "version 3\nlinux /a/vmlinuz\n"),
            BootEntry::new("slot-b.conf", "version 2\nlinux /b/vmlinuz\n"),
        ];
        assert_eq!(select(&es, &all).unwrap().file, "slot-b.conf");
        // An entry with a sort key goes before one without.
        let es = vec![
            entry("slot-a.conf", "1"),
            BootEntry::new("slot-b.conf", "version 9\nlinux /b/vmlinuz\n"),
        ];
        assert_eq!(select(&es, &all).unwrap().file, "slot-a.conf");
    }

    #[test]
    fn fallback_after_three_failed_boots() {
        let mut es = vec![entry("slot-a.conf", "1"), entry("slot-b+3.conf", "2")];
        let boots: Vec<Slot> = (0..5)
            .map(|_| simulate_boot(&mut es, &all).unwrap().0)
            .collect();
        assert_eq!(boots, [Slot::B, Slot::B, Slot::B, Slot::A, Slot::A]);
        assert!(es.iter().any(|e| e.file == "slot-b+0-3.conf"));
    }

    #[test]
    fn unusable_entries_are_skipped() {
        // Missing kernel, empty file (a power cut between creating and writing it).
        let es = vec![entry("slot-a.conf", "1"), entry("slot-b+3.conf", "2")];
        assert_eq!(
            select(&es, &|p| p != "/b/vmlinuz").unwrap().file,
            "slot-a.conf"
        );
        let es = vec![
            entry("slot-a.conf", "1"),
            BootEntry::new("slot-b+3.conf", ""),
        ];
        assert_eq!(select(&es, &all).unwrap().file, "slot-a.conf");
        assert!(select(&[], &all).is_none());
        // Two entries for one slot (mark-good cut short) still boot that slot.
        let es = vec![
            entry("slot-b.conf", "2"),
            entry("slot-b+2-1.conf", "2"),
            entry("slot-a.conf", "1"),
        ];
        assert_eq!(select(&es, &all).unwrap().slot(), Some(Slot::B));
        // Only bad entries: the first of them still boots (newest first).
        let es = vec![entry("slot-a+0-3.conf", "1"), entry("slot-b+0-3.conf", "2")];
        assert_eq!(select(&es, &all).unwrap().file, "slot-b+0-3.conf");
    }

    #[test]
    fn version_comparison() {
        use Ordering::*;
        for (a, b, r) in [
            ("1", "2", Less),
            ("10", "9", Greater),
            ("2026.11.22.10", "2026.11.22.9", Greater),
            ("1.2", "1.2.0", Less),
            ("007", "7", Equal),
            ("1~rc1", "1", Less),
            ("1-1", "1.1", Less),
            ("a", "1", Less),
            ("slot-b+2-1.conf", "slot-a.conf", Greater),
        ] {
            assert_eq!(strverscmp_improved(a, b), r, "{a} vs {b}");
            assert_eq!(strverscmp_improved(b, a), r.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn systemd_counter_parsing() {
        assert_eq!(
            sd_parse_tries("x+3.conf"),
            Some(Counter { left: 3, done: 0 })
        );
        assert_eq!(
            sd_parse_tries("x+1+3-2.conf"),
            Some(Counter { left: 3, done: 2 })
        );
        assert_eq!(sd_parse_tries("x+3.CONF"), None);
        assert_eq!(sd_parse_tries("x+3x.conf"), None);
        assert_eq!(sd_parse_tries("x.conf"), None);
    }
}
