//! `/etc/abupdate.toml`: what the device accepts and where its state lives.
//! Every field has a default, so a missing file means "all defaults".

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// Where the configuration is read from unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/abupdate.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The device's compatible string; bundles for anything else are refused.
    pub compatible: Option<String>,
    /// Directory of trusted public keys.
    pub keys: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config { compatible: None, keys: PathBuf::from("/etc/abupdate/keys") }
    }
}

impl Config {
    /// Loads `path`; a missing file at the default path gives the defaults, a missing file
    /// the user named explicitly is an error.
    pub fn load(path: &Path) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_PATH) => {
                Ok(Config::default())
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}
