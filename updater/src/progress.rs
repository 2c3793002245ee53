//! Progress of a long write: one line redrawn with `\r` on a terminal, a log line every 10%
//! otherwise (journald and serial consoles get no control characters).

use std::io::{IsTerminal, Write};
use std::time::Instant;

use tracing::info;

pub struct Progress {
    what: String,
    total: u64,
    start: Instant,
    tty: bool,
    last_decile: u64,
    last_draw: Option<Instant>,
}

impl Progress {
    pub fn new(what: &str, total: u64, quiet: bool) -> Progress {
        Progress {
            what: what.to_string(),
            total: total.max(1),
            start: Instant::now(),
            tty: !quiet && std::io::stderr().is_terminal(),
            last_decile: 0,
            last_draw: None,
        }
    }

    pub fn update(&mut self, done: u64) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-6);
        let rate = done as f64 / secs / (1 << 20) as f64;
        let pct = done * 100 / self.total;
        if self.tty {
            let now = Instant::now();
            if done < self.total
                && self
                    .last_draw
                    .is_some_and(|t| now.duration_since(t).as_millis() < 100)
            {
                return;
            }
            self.last_draw = Some(now);
            let width = 30u64;
            let filled = (done * width / self.total) as usize;
            let bar = format!(
                "{}{}",
                "#".repeat(filled),
                "-".repeat(width as usize - filled)
            );
            let mut e = std::io::stderr().lock();
            let _ = write!(
                e,
                "\r{} [{bar}] {pct:3}% {}/{} MiB {rate:.0} MiB/s ",
                self.what,
                done >> 20,
                self.total >> 20
            );
            let _ = e.flush();
        } else {
            let decile = done * 10 / self.total;
            if decile > self.last_decile {
                self.last_decile = decile;
                info!(
                    "{}: {pct}% ({} of {} MiB, {rate:.0} MiB/s)",
                    self.what,
                    done >> 20,
                    self.total >> 20
                );
            }
        }
    }

    pub fn finish(&mut self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}
