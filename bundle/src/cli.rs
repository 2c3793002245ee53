//! What both command-line tools share: the `-v`/`-q` flags and log set-up. Only built with
//! the `cli` feature, so the format itself (and the fuzzer) carries no CLI dependencies.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `-v`/`-q`, flattened into each tool's top-level arguments.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Verbosity {
    /// More log output (-v: debug, -vv: trace)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only print errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl Verbosity {
    /// Logs go to stderr: info by default, `-v` debug, `-q` errors only; `RUST_LOG` overrides.
    /// Colours only on a terminal, so serial consoles and journald get plain text.
    pub fn init_logging(&self) {
        let level = match (self.quiet, self.verbose) {
            (true, _) => "error",
            (false, 0) => "info",
            (false, 1) => "debug",
            _ => "trace",
        };
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .without_time()
            .init();
    }
}
