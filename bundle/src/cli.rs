//! What both command-line tools share: the `-v`/`-q` flags and log set-up. Only built with
//! the `cli` feature, so the format itself (and the fuzzer) carries no CLI dependencies.

use std::io::IsTerminal;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

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
            (true, _) => LevelFilter::ERROR,
            (false, 0) => LevelFilter::INFO,
            (false, 1) => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        };
        let filter = filter(std::env::var("RUST_LOG").ok().as_deref(), level);
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .without_time();
        tracing_subscriber::registry().with(fmt).with(filter).init();
    }
}

/// `RUST_LOG` read as a list of `level` and `target=level` directives (`Targets`): what
/// EnvFilter reads but its span and regex filters, which would add a regex engine to abupdate's
/// size budget (docs/benchmarks.md). Unset, empty or unparsable: `level`.
fn filter(rust_log: Option<&str>, level: LevelFilter) -> Targets {
    rust_log
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(level))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_overrides_the_flags_level() {
        let on = |log: Option<&str>, target: &str, l: LevelFilter| {
            filter(log, LevelFilter::ERROR).would_enable(target, &l.into_level().unwrap())
        };
        assert!(on(Some("info"), "abupdate::apply", LevelFilter::INFO));
        assert!(!on(Some("info"), "abupdate::apply", LevelFilter::DEBUG));
        assert!(on(
            Some("warn,abupdate=debug"),
            "abupdate::apply",
            LevelFilter::DEBUG
        ));
        assert!(!on(Some("warn,abupdate=debug"), "ureq", LevelFilter::INFO));
        for unset in [None, Some(""), Some("a=b=c")] {
            assert!(on(unset, "abupdate", LevelFilter::ERROR), "{unset:?}");
            assert!(!on(unset, "abupdate", LevelFilter::WARN), "{unset:?}");
        }
    }
}
