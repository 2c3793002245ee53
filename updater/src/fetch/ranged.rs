//! The bundle read at offsets, for an install that takes only some of its chunks: a file or
//! block device ([`FileSource`]), or HTTP(S) range requests, sent ahead of need on several
//! kept-alive connections ([`Ahead`]) so that a link's round trips overlap instead of adding up.

use std::fs::File;
use std::os::unix::fs::FileExt;

use abbundle::FormatError;
use anyhow::{Context, Result};

/// The bundle, read at offsets. Reads come in increasing offset order, except that a chunk a
/// seed no longer holds is read where it lies.
pub trait Fetch: Send {
    /// Reads `buf.len()` bytes of the bundle at `offset`.
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()>;
}

/// A bundle file or block device.
pub struct FileSource<'a> {
    pub file: &'a File,
    pub name: &'a str,
}

impl Fetch for FileSource<'_> {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => FormatError::Truncated("payloads".into()),
                _ => FormatError::Io(e),
            })
            .with_context(|| format!("reading {}", self.name))
    }
}

#[cfg(feature = "http")]
pub use http::{short, Ahead, Sequential};

#[cfg(feature = "http")]
mod http {
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::sync::{Arc, Condvar, Mutex};

    use anyhow::Result;
    use tracing::info;

    use super::Fetch;
    use crate::codes::{self, Refusal};
    use crate::fetch::{is_fetch_error, HttpRanges, RangeReply};

    /// Connections (and so requests in flight) at once. Enough to fill a 100 Mbit/s link with
    /// 50 ms round trips with small ranges (each request waits a round trip; six of them
    /// overlap), few enough to be polite to a server.
    pub const CONNECTIONS: usize = 6;

    /// Bytes asked for ahead of the reader, at most: the memory this costs, since ranges that
    /// arrive before the one the reader waits for are held. Three times the bandwidth-delay
    /// product of a 100 Mbit/s, 50 ms link (625 KB); 4 MiB was measured no faster there
    /// (docs/benchmarks.md): the six connections, each idle a round trip per range, bound it.
    pub const AHEAD_BYTES: u64 = 2 << 20;

    /// An error while reading a reply, as the caller sees it: the fetch's own (a timeout, a
    /// dropped connection: 41 via its tag) or a body shorter than asked.
    pub fn short(e: std::io::Error) -> anyhow::Error {
        if is_fetch_error(&e) {
            anyhow::Error::new(e)
        } else {
            Refusal::new(
                codes::SOURCE_UNAVAILABLE,
                format!("the server sent a short range ({e})"),
            )
            .into()
        }
    }

    /// Reads and drops `n` bytes of `body`.
    fn skip(body: &mut dyn Read, n: u64) -> Result<()> {
        let got = std::io::copy(&mut body.take(n), &mut std::io::sink()).map_err(short)?;
        if got != n {
            return Err(short(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    /// One range at a time, each read from its reply as it is needed: the source when the
    /// server answers a range with the whole bundle (a 200), which is then read on from, the
    /// gaps skipped.
    pub struct Sequential {
        ranges: HttpRanges,
        plan: Vec<(u64, u64)>,
        /// The open reply: its body, the offset it stands at, and where it ends.
        cur: Option<(Box<dyn Read + Send>, u64, u64)>,
    }

    impl Sequential {
        /// `plan`: the ranges `[start, end)` to fetch, in order; `first`: the reply to the
        /// first one if the caller already asked for it (before anything is written).
        pub fn new(ranges: HttpRanges, plan: Vec<(u64, u64)>, first: Option<RangeReply>) -> Self {
            let mut s = Sequential {
                ranges,
                plan,
                cur: None,
            };
            if let Some(reply) = first {
                let (start, end) = s.plan[0];
                s.take(reply, start, end);
            }
            s
        }

        fn take(&mut self, reply: RangeReply, start: u64, end: u64) {
            self.cur = Some(match reply {
                RangeReply::Partial(body) => (body, start, end),
                RangeReply::Whole(body) => {
                    info!(
                        "the server sent the whole bundle for a range: reading the chunks from it"
                    );
                    (body, 0, self.ranges.total_len())
                }
            });
        }
    }

    impl Fetch for Sequential {
        fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
            let end = offset + buf.len() as u64;
            if !self
                .cur
                .as_ref()
                .is_some_and(|c| c.1 <= offset && end <= c.2)
            {
                // A planned range holds it; else (a seed chunk that no longer matched) just it.
                let i = self.plan.partition_point(|r| r.1 <= offset);
                let (s, e) = match self.plan.get(i) {
                    Some(&(s, e)) if s <= offset && end <= e => (s, e),
                    _ => (offset, end),
                };
                self.cur = None;
                let reply = self.ranges.get(s, e)?;
                self.take(reply, s, e);
            }
            let (body, pos, _) = self.cur.as_mut().expect("just set");
            skip(body, offset - *pos)?;
            body.read_exact(buf).map_err(short)?;
            *pos = end;
            Ok(())
        }
    }

    /// What a worker brought for a range.
    enum Got {
        Bytes(Vec<u8>),
        /// The server answered with the whole bundle: ranges are read one at a time from here.
        Whole,
        Failed(anyhow::Error),
    }

    #[derive(Default)]
    struct State {
        /// The next range a worker takes.
        next: usize,
        /// The first range the reader still needs (all before it are dropped).
        needed: usize,
        /// Bytes of the ranges taken and not yet dropped by the reader.
        ahead: u64,
        got: BTreeMap<usize, Got>,
        /// Set when the reader is gone or switched to [`Sequential`]: workers stop.
        stop: bool,
    }

    struct Shared {
        plan: Vec<(u64, u64)>,
        state: Mutex<State>,
        changed: Condvar,
    }

    /// The planned ranges fetched ahead of need by [`CONNECTIONS`] workers, each request one
    /// range (S3 and others serve no more), at most [`AHEAD_BYTES`] ahead of the reader; the
    /// reader takes them in order. Every reply is checked as [`HttpRanges::get`] checks it.
    pub struct Ahead {
        shared: Arc<Shared>,
        /// For the reader's own requests (a chunk outside the plan), and for [`Sequential`].
        ranges: HttpRanges,
        /// The range being read: its index and bytes.
        cur: Option<(usize, Vec<u8>)>,
        /// Once a reply came whole: everything from here on.
        sequential: Option<Sequential>,
        workers: Vec<std::thread::JoinHandle<()>>,
    }

    impl Ahead {
        /// Starts the workers on `plan` (ranges `[start, end)` in increasing order); `first`:
        /// the first range's bytes if the caller fetched them already.
        pub fn new(ranges: HttpRanges, plan: Vec<(u64, u64)>, first: Option<Vec<u8>>) -> Ahead {
            let mut state = State::default();
            if let Some(b) = first {
                state.ahead = b.len() as u64;
                state.next = 1;
                state.got.insert(0, Got::Bytes(b));
            }
            let shared = Arc::new(Shared {
                plan,
                state: Mutex::new(state),
                changed: Condvar::new(),
            });
            let workers = (0..CONNECTIONS.min(shared.plan.len()))
                .map(|_| {
                    let (shared, ranges) = (shared.clone(), ranges.clone());
                    std::thread::spawn(move || work(&shared, ranges))
                })
                .collect();
            Ahead {
                shared,
                ranges,
                cur: None,
                sequential: None,
                workers,
            }
        }

        /// Waits for range `i`'s reply (every range before it has been dropped).
        fn wait(&self, i: usize) -> Got {
            let mut st = self.shared.state.lock().expect("not poisoned");
            loop {
                if let Some(got) = st.got.remove(&i) {
                    return got;
                }
                st = self.shared.changed.wait(st).expect("not poisoned");
            }
        }

        /// Drops the ranges before `i`, so the workers may fetch further.
        fn advance(&self, i: usize) {
            let mut st = self.shared.state.lock().expect("not poisoned");
            while st.needed < i {
                let (s, e) = self.shared.plan[st.needed];
                if st.needed < st.next {
                    st.ahead -= e - s;
                } else {
                    // Not taken by any worker yet: no one fetches it now.
                    st.next = st.needed + 1;
                }
                let n = st.needed;
                st.got.remove(&n);
                st.needed += 1;
            }
            self.shared.changed.notify_all();
        }

        fn stop(&self) {
            self.shared.state.lock().expect("not poisoned").stop = true;
            self.shared.changed.notify_all();
        }
    }

    impl Drop for Ahead {
        fn drop(&mut self) {
            self.stop();
            // A worker in a request ends within the fetch's timeouts; it is not waited for.
            self.workers.clear();
        }
    }

    impl Fetch for Ahead {
        fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
            if let Some(s) = self.sequential.as_mut() {
                return s.read_exact_at(buf, offset);
            }
            let end = offset + buf.len() as u64;
            let shared = self.shared.clone();
            let plan = &shared.plan;
            let i = plan.partition_point(|r| r.1 <= offset);
            let inside = plan.get(i).is_some_and(|&(s, e)| s <= offset && end <= e);
            if !inside {
                // A seed chunk that no longer matched: just it, on the reader's connection.
                let reply = self.ranges.get(offset, end)?;
                let mut body = match reply {
                    RangeReply::Partial(body) => body,
                    RangeReply::Whole(mut body) => {
                        skip(&mut body, offset)?;
                        body
                    }
                };
                return body.read_exact(buf).map_err(short);
            }
            if self.cur.as_ref().is_none_or(|c| c.0 != i) {
                self.cur = None;
                self.advance(i);
                match self.wait(i) {
                    Got::Bytes(b) => self.cur = Some((i, b)),
                    Got::Failed(e) => return Err(e),
                    Got::Whole => {
                        self.stop();
                        let rest = plan[i..].to_vec();
                        let s = self.sequential.insert(Sequential::new(
                            self.ranges.clone(),
                            rest,
                            None,
                        ));
                        return s.read_exact_at(buf, offset);
                    }
                }
            }
            let (_, bytes) = self.cur.as_ref().expect("just set");
            let at = (offset - plan[i].0) as usize;
            buf.copy_from_slice(&bytes[at..at + buf.len()]);
            Ok(())
        }
    }

    /// A worker: takes the next range while the reader is less than [`AHEAD_BYTES`] behind,
    /// fetches it whole, hands it over.
    fn work(shared: &Shared, mut ranges: HttpRanges) {
        loop {
            let i = {
                let mut st = shared.state.lock().expect("not poisoned");
                loop {
                    if st.stop || st.next == shared.plan.len() {
                        return;
                    }
                    let (s, e) = shared.plan[st.next];
                    // One range is always allowed, however large, so the reader never starves.
                    if st.ahead == 0 || st.ahead + (e - s) <= AHEAD_BYTES {
                        st.ahead += e - s;
                        st.next += 1;
                        break st.next - 1;
                    }
                    st = shared.changed.wait(st).expect("not poisoned");
                }
            };
            let (s, e) = shared.plan[i];
            let got = match ranges.get(s, e) {
                Ok(RangeReply::Partial(mut body)) => {
                    let mut b = vec![0u8; (e - s) as usize];
                    match body.read_exact(&mut b).map_err(short) {
                        Ok(()) => Got::Bytes(b),
                        Err(err) => Got::Failed(err),
                    }
                }
                Ok(RangeReply::Whole(_)) => Got::Whole,
                Err(err) => Got::Failed(err),
            };
            let failed = !matches!(got, Got::Bytes(_));
            let mut st = shared.state.lock().expect("not poisoned");
            if i >= st.needed {
                st.got.insert(i, got);
            }
            if failed {
                // The reader meets it in order; nothing after it is needed.
                st.stop = true;
            }
            shared.changed.notify_all();
        }
    }
}
