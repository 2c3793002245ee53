//! Fault injection for crash-consistency tests: with the `fault-injection` feature and
//! `ABUPDATE_FAULT_AFTER=N`, the process stops dead right after the N-th write or flush to
//! the disk (slot chunk writes, every write the FAT driver makes, every sync), as a power cut
//! would stop it: no destructor runs, nothing is flushed. `ABUPDATE_FAULT_AFTER=0` counts the
//! points and prints `abupdate-fault-points=N` on stderr at the end of a successful run.
//! Without the feature, [`point`] is an empty inline function.

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static COUNT: AtomicU64 = AtomicU64::new(0);
    static LIMIT: OnceLock<u64> = OnceLock::new();

    /// The exit status of a process stopped by an injected fault.
    pub const EXIT: i32 = 86;

    fn limit() -> u64 {
        *LIMIT.get_or_init(|| {
            std::env::var("ABUPDATE_FAULT_AFTER")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        })
    }

    pub fn point(what: &str) {
        let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
        if limit() != 0 && n == limit() {
            eprintln!("abupdate: injected fault after point {n} ({what})");
            // _exit: no atexit handlers, no buffered output, like losing power.
            // SAFETY: _exit never returns and takes a plain integer.
            unsafe { libc::_exit(EXIT) }
        }
    }

    /// With `ABUPDATE_FAULT_LYING_MEDIUM=1`, flips one bit of the first slot write after it
    /// was verified: a medium that does not store what it is given. The read-back must notice.
    pub fn lying_medium(buf: &mut [u8]) {
        static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if std::env::var_os("ABUPDATE_FAULT_LYING_MEDIUM").is_some()
            && !DONE.swap(true, Ordering::SeqCst)
        {
            if let Some(b) = buf.get_mut(buf.len() / 2) {
                *b ^= 1;
            }
        }
    }

    pub fn report() {
        if std::env::var_os("ABUPDATE_FAULT_AFTER").is_some() {
            eprintln!("abupdate-fault-points={}", COUNT.load(Ordering::SeqCst));
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use imp::{lying_medium, point, report, EXIT};

/// A point where a power cut is simulated in fault-injection builds.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_what: &str) {}

/// Corrupts a slot write after verification (fault-injection builds only).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn lying_medium(_buf: &mut [u8]) {}

/// Prints the number of points passed (fault-injection builds only).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn report() {}
