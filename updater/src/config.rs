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
        }
    }
}

impl Config {
    /// Loads `path`; a missing file at the default path gives the defaults, a missing file
    /// the user named explicitly is an error.
    pub fn load(path: &Path) -> Result<Config> {
        let c: Config = match std::fs::read_to_string(path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_PATH) =>
            {
                Config::default()
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if !(1..=100).contains(&c.boot_tries) {
            bail!("{}: boot-tries must be between 1 and 100", path.display());
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
