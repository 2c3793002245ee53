//! `abupdate`: verifies bundles and installs them into the inactive slot. `main.rs` only
//! parses arguments and calls [`run`].

pub mod bootentries;
pub mod cli;
pub mod config;
pub mod logging;
pub mod verify;

use abbundle::error::exit;
use abbundle::FormatError;

/// Runs one command.
pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let config = config::Config::load(&cli.config)?;
    let keys = cli.keys.clone().unwrap_or_else(|| config.keys.clone());
    match cli.command {
        cli::Command::Verify(a) => verify::run(&a, &keys, &config),
    }
}

/// The documented exit code for an error (`docs/exit-codes.md`).
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| c.downcast_ref::<FormatError>())
        .map(FormatError::exit_code)
        .unwrap_or(exit::FAILURE)
}
