//! Command-line types for `abupdate`; the work happens in the modules these dispatch to.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Install signed A/B update bundles (.abu) safely.
///
/// A bundle is verified chunk by chunk against its signed manifest before any
/// byte of it is used. Exit codes are listed in docs/exit-codes.md.
#[derive(Parser, Debug)]
#[command(name = "abupdate", version, help_expected = true, max_term_width = 80)]
pub struct Cli {
    /// Configuration file
    #[arg(long, global = true, default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Directory of trusted public keys (*.pub); default from the config
    #[arg(long, global = true)]
    pub keys: Option<PathBuf>,
    /// More log output (-v: debug, -vv: trace)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only print errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check a bundle completely without installing it
    ///
    /// Checks the format, that a trusted key signed it, the compatible string
    /// (if given or configured) and every chunk of every payload.
    ///
    /// Example: abupdate verify --keys /etc/abupdate/keys update.abu
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Bundle: a file or a block device holding one
    pub bundle: PathBuf,
    /// Required compatible string (default: the config's, if a config exists)
    #[arg(long)]
    pub compatible: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}
