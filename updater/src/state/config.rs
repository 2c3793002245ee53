//! `/etc/abupdate.toml`: what the device accepts and where its state lives.
//! Every field has a default, so a missing file means "all defaults".
//!
//! ```toml
//! compatible = "vps-x86_64"            # bundles for anything else are refused
//! keys = "/etc/abupdate/keys"          # trusted public keys (*.pub)
//! boot-tries = 3                       # tries a new slot gets before the fallback
//! state-file = "/data/abupdate/state.json"   # written by boot-check, read by status
//! ca-file = "/etc/abupdate/ca.pem"     # optional: trust only these CAs for https:// sources
//! grow-data = true                     # boot-check grows the data partition to fill the disk
//! http-connect-timeout = 30            # seconds to connect to an http(s) server
//! http-timeout = 21600                 # seconds for a whole download
//! http-min-rate = 16384                # bytes/s a download must average over each window
//! http-rate-window = 60                # seconds of waiting per rate window
//! channel = "https://updates.example.org/vps/stable.json"   # for `abupdate update`
//! update-reboot = "03:00-05:00"        # never, immediately, or a daily window (UTC)
//! update-jitter = "30m"                # random delay before each `update` check
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Where the configuration is read from unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/abupdate.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Config {
    /// The device's compatible string; bundles for anything else are refused.
    pub compatible: Option<String>,
    /// Directory of trusted public keys.
    pub keys: PathBuf,
    /// How many boots a newly installed slot gets to be marked good before systemd-boot
    /// falls back to the other slot.
    pub boot_tries: u32,
    /// Where `boot-check` records what booted (on the persistent data partition).
    pub state_file: PathBuf,
    /// PEM certificates that https:// update servers are checked against, instead of the
    /// Mozilla roots built into abupdate (for an update server with a private CA).
    pub ca_file: Option<PathBuf>,
    /// Whether `boot-check` grows the data partition (the last one) to fill a disk that is
    /// larger than the image.
    pub grow_data: bool,
    /// Seconds to wait for a TCP (and TLS) connection to an update server.
    pub http_connect_timeout: u64,
    /// Seconds a whole download may take; apply holds the lock meanwhile.
    pub http_timeout: u64,
    /// Bytes per second a download must average over each window of waiting (0: no minimum),
    /// so a server that trickles cannot hold apply and its lock for hours.
    pub http_min_rate: u64,
    /// Seconds of waiting over which the rate is averaged; also the longest wait for a read.
    pub http_rate_window: u64,
    /// The channel file `abupdate update` checks: http(s)://, file:// or a plain path.
    pub channel: Option<String>,
    /// When `update` reboots into what it installed: `never`, `immediately`, or inside a
    /// daily window `HH:MM-HH:MM` (UTC).
    pub update_reboot: String,
    /// Longest random delay before each `update` check (`30m`; `0`: none).
    pub update_jitter: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            compatible: None,
            keys: PathBuf::from("/etc/abupdate/keys"),
            boot_tries: 3,
            state_file: PathBuf::from("/data/abupdate/state.json"),
            ca_file: None,
            grow_data: true,
            http_connect_timeout: 30,
            http_timeout: 6 * 3600,
            http_min_rate: 16 * 1024,
            http_rate_window: 60,
            channel: None,
            update_reboot: "never".into(),
            update_jitter: "0".into(),
        }
    }
}

/// Longest a duration setting (`http-*` seconds) may be: 30 days. Bounded when the file is
/// loaded, so no later arithmetic on a setting (a deadline, a sum) can overflow.
pub const MAX_SECONDS: u64 = 30 * 86400;
/// Longest `update-jitter`: 7 days (a check runs at least weekly).
pub const MAX_JITTER: u64 = 7 * 86400;

/// `update-reboot` and `update-jitter`, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateSettings {
    pub reboot: RebootPolicy,
    /// Seconds, at most [`MAX_JITTER`].
    pub jitter: u64,
}

impl Config {
    /// Loads `path`; a missing file at the default path gives the defaults, a missing file
    /// the user named explicitly is an error. The update settings are checked too, but a
    /// bad one only warns here: commands that do not need them (mark-good, boot-check,
    /// status) must still work; `update` refuses it ([`Config::update_settings`]).
    pub fn load(path: &Path) -> Result<Config> {
        let c = match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path)?,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_PATH) =>
            {
                Config::default()
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if let Err(e) = c.update_settings() {
            tracing::warn!(
                "{}: {e}; `abupdate update` refuses to run until it is fixed",
                path.display()
            );
        }
        Ok(c)
    }

    /// Parses and checks the text of `path` (all but the update settings). `abbuild build`
    /// checks a system's file with this and [`Config::update_settings`].
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let c: Config = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("parsing {}: {}", path.display(), one_line(&e, text)))?;
        if !(1..=100).contains(&c.boot_tries) {
            bail!("{}: boot-tries must be between 1 and 100", path.display());
        }
        for (name, v) in [
            ("http-connect-timeout", c.http_connect_timeout),
            ("http-timeout", c.http_timeout),
            ("http-rate-window", c.http_rate_window),
        ] {
            if !(1..=MAX_SECONDS).contains(&v) {
                bail!(
                    "{}: {name} must be between 1 and {MAX_SECONDS} (seconds, 30 days)",
                    path.display()
                );
            }
        }
        Ok(c)
    }

    /// `update-reboot` and `update-jitter`, checked and bounded.
    pub fn update_settings(&self) -> Result<UpdateSettings, String> {
        let reboot = RebootPolicy::parse(&self.update_reboot)?;
        let jitter = abbundle::channel::parse_duration(&self.update_jitter)?;
        if jitter > MAX_JITTER {
            return Err(format!(
                "update-jitter '{}' is longer than 7d (the longest random delay)",
                self.update_jitter
            ));
        }
        Ok(UpdateSettings { reboot, jitter })
    }
}

/// toml's message is several lines (the line quoted, a caret under the column): one line
/// instead, "line L, column C: what".
fn one_line(e: &toml::de::Error, text: &str) -> String {
    let what = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {what}")
        }
        None => what,
    }
}

/// When `update` reboots into what it installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebootPolicy {
    /// Never: someone (or something) else reboots.
    Never,
    /// Right after an install.
    Immediately,
    /// When a check finds an installed update waiting and the time of day (UTC) is inside
    /// `[start, end)`, in minutes since midnight; a window may wrap past midnight.
    Window { start: u32, end: u32 },
}

impl RebootPolicy {
    /// `never`, `immediately` or `HH:MM-HH:MM`.
    pub fn parse(s: &str) -> Result<RebootPolicy, String> {
        let bad = || {
            format!(
                "update-reboot '{s}': use never, immediately or a daily window such as 03:00-05:00 (UTC)"
            )
        };
        match s {
            "never" => return Ok(RebootPolicy::Never),
            "immediately" => return Ok(RebootPolicy::Immediately),
            _ => {}
        }
        // Exactly two digits, ':', two digits: u32's parser also takes "+3", which once
        // read "+3:00-05:00" as 03:00-05:00.
        let hm = |t: &str| -> Option<u32> {
            let b = t.as_bytes();
            let digits = |i: usize| b[i].is_ascii_digit() && b[i + 1].is_ascii_digit();
            if b.len() != 5 || b[2] != b':' || !digits(0) || !digits(3) {
                return None;
            }
            let (h, m): (u32, u32) = (t[..2].parse().ok()?, t[3..].parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (start, end) = (hm(a).ok_or_else(bad)?, hm(b).ok_or_else(bad)?);
        if start == end {
            return Err(bad());
        }
        Ok(RebootPolicy::Window { start, end })
    }

    /// Whether to reboot now: `installed_now` (this check installed it) or an earlier install
    /// waits, at `now` seconds since the epoch.
    pub fn reboot_now(&self, installed_now: bool, now: u64) -> bool {
        match *self {
            RebootPolicy::Never => false,
            RebootPolicy::Immediately => installed_now,
            RebootPolicy::Window { start, end } => {
                let minute = ((now % 86400) / 60) as u32;
                if start < end {
                    (start..end).contains(&minute)
                } else {
                    minute >= start || minute < end
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reboot_policies() {
        assert_eq!(RebootPolicy::parse("never").unwrap(), RebootPolicy::Never);
        let w = RebootPolicy::parse("03:00-05:00").unwrap();
        let at = |h: u64, m: u64| 20_000 * 86400 + h * 3600 + m * 60;
        assert!(w.reboot_now(false, at(3, 0)) && w.reboot_now(true, at(4, 59)));
        assert!(!w.reboot_now(true, at(5, 0)) && !w.reboot_now(true, at(2, 59)));
        let wrap = RebootPolicy::parse("23:30-01:00").unwrap();
        assert!(wrap.reboot_now(false, at(23, 45)) && wrap.reboot_now(false, at(0, 30)));
        assert!(!wrap.reboot_now(false, at(1, 0)));
        let now = RebootPolicy::parse("immediately").unwrap();
        assert!(now.reboot_now(true, 0) && !now.reboot_now(false, 0));
        assert!(!RebootPolicy::Never.reboot_now(true, 0));
        for bad in [
            "sometimes",
            "3:00-05:00",
            "03:00-03:00",
            "24:00-01:00",
            "03:00",
            "+3:00-05:00",
            "03:00-+5:00",
            "03:0+-05:00",
            " 3:00-05:00",
        ] {
            assert!(RebootPolicy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_all_fields() {
        let c: Config = toml::from_str(
            "compatible = \"x\"\nkeys = \"/k\"\nboot-tries = 5\nstate-file = \"/s.json\"\n",
        )
        .unwrap();
        assert_eq!(c.boot_tries, 5);
        assert_eq!(c.state_file, Path::new("/s.json"));
        let d: Config = toml::from_str("").unwrap();
        assert_eq!(d.boot_tries, 3);
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        assert_eq!(d.http_min_rate, 16 * 1024);
    }

    #[test]
    fn update_settings_are_checked_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "channel = \"/m/stable.json\"\nupdate-reboot = \"03:00-05:00\"\nupdate-jitter = \"30m\"\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.channel.as_deref(), Some("/m/stable.json"));
        assert_eq!(c.update_settings().unwrap().jitter, 1800);
        // A bad update setting still loads (other commands need the rest), and `update`
        // gets the reason.
        for bad in [
            "update-reboot = \"3am\"",
            "update-reboot = \"+3:00-05:00\"",
            "update-jitter = \"soon\"",
            // Once a remainder by zero (u64::MAX + 1 wrapped) in `update`.
            "update-jitter = \"18446744073709551615\"",
            "update-jitter = \"8d\"",
        ] {
            std::fs::write(&p, bad).unwrap();
            let c = Config::load(&p).unwrap();
            assert!(c.update_settings().is_err(), "{bad}");
        }
        std::fs::write(&p, "update-jitter = \"7d\"").unwrap();
        assert_eq!(
            Config::load(&p).unwrap().update_settings().unwrap().jitter,
            7 * 86400
        );
    }

    #[test]
    fn durations_are_bounded_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        for bad in [
            "http-timeout = 9223372036854775807",
            "http-connect-timeout = 0",
            "http-rate-window = 2592001",
        ] {
            std::fs::write(&p, bad).unwrap();
            let e = format!("{:#}", Config::load(&p).unwrap_err());
            assert!(e.starts_with(&p.display().to_string()), "{e}");
        }
        std::fs::write(&p, "http-timeout = 2592000").unwrap();
        assert_eq!(Config::load(&p).unwrap().http_timeout, MAX_SECONDS);
    }

    #[test]
    fn errors_are_one_line_with_the_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "compatible = \"x\"\n\nbogus = 1\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("line 3, column 1: unknown field `bogus`"), "{e}");
    }
}
