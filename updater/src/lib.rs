//! `abupdate`: verifies bundles and installs them into the inactive slot, flips the boot
//! loader's state with boot counting (through `boot::BootLoader`), and reports state.
//! `main.rs` only parses arguments and calls [`run`].

pub mod apply;
pub mod boot;
pub mod bootcheck;
pub mod channel_state;
pub mod cli;
pub mod codes;
pub mod config;
pub mod delta;
pub mod delta_apply;
pub mod direct;
pub mod disk;
pub mod esp;
pub mod fat_dir;
pub mod fatsweep;
pub mod fault;
pub mod gpt;
pub mod grow;
pub mod lock;
pub mod mark;
pub mod progress;
pub mod slots;
pub mod source;
pub mod status;
pub mod update;
pub mod verify;
pub mod window;

use std::path::PathBuf;

use abbundle::error::exit;
use abbundle::{FormatError, KeysError};

/// What every command gets from the global options.
pub struct Context {
    pub config: config::Config,
    pub config_path: PathBuf,
    /// Trusted keys directory (`--keys`, else the config's).
    pub keys: PathBuf,
    /// `--disk`, else the booted disk.
    pub disk: Option<PathBuf>,
    pub quiet: bool,
}

/// Runs one command.
pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let config = config::Config::load(&cli.config)?;
    let keys = cli.keys.clone().unwrap_or_else(|| config.keys.clone());
    let ctx = Context {
        config,
        config_path: cli.config.clone(),
        keys,
        disk: cli.disk.clone(),
        quiet: cli.verbosity.quiet,
    };
    match cli.command {
        cli::Command::Verify(a) => verify::run(&a, &ctx.keys, &ctx.config),
        cli::Command::Apply(a) => apply::run(
            &ctx,
            &apply::Request {
                source: &a.source,
                allow_downgrade: a.allow_downgrade,
                slot: a.slot,
                reboot: a.reboot,
                expect_manifest_sha256: None,
                expect_version: None,
                dry_run: a.dry_run,
                json: a.json,
                full: a.full,
            },
        ),
        cli::Command::Status(a) => status::run(&ctx, a.json),
        cli::Command::MarkGood => mark::mark_good(&ctx),
        cli::Command::MarkBad(a) => mark::mark_bad(&ctx, a.slot),
        cli::Command::Rollback => mark::rollback(&ctx),
        cli::Command::BootCheck => bootcheck::run(&ctx),
        cli::Command::Update(a) => update::run(&ctx, &a),
    }
}

/// The documented exit code for an error (`docs/exit-codes.md`): an abupdate refusal's own
/// code, else a bundle error's, else 1.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| c.downcast_ref::<codes::Refusal>().map(|r| r.code))
        .or_else(|| {
            e.chain().find_map(|c| match c.downcast_ref::<KeysError>() {
                Some(KeysError::Unsafe(_)) => Some(codes::KEYS_UNSAFE),
                _ => None,
            })
        })
        .or_else(|| {
            e.chain()
                .any(source::is_fetch_error)
                .then_some(codes::SOURCE_UNAVAILABLE)
        })
        .or_else(|| {
            e.chain()
                .find_map(|c| c.downcast_ref::<FormatError>())
                .map(FormatError::exit_code)
        })
        .unwrap_or(exit::FAILURE)
}
