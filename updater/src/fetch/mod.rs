//! Where a bundle comes from: a file, a block device holding one, or an http(s) URL streamed
//! straight into the verifier (no temporary file: the device may have no room for one).
//!
//! `apply` and `verify` both open bundles here, so they read the same bytes. Before a stream
//! is returned, its header is read and, where the source's length is known (a file's size, a
//! block device's size, an HTTP Content-Length), a bundle shorter than the header's
//! `total_len` is refused (exit 11): `apply` opens the source before it changes anything, so a
//! truncated bundle never starts a write.

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
#[cfg(feature = "http")]
use std::sync::{Arc, Mutex};
use std::time::Duration;
#[cfg(feature = "http")]
use std::time::Instant;

use abbundle::error::exit;
use abbundle::{FormatError, Header, HEADER_LEN};
use anyhow::{Context, Result};

use crate::codes::{self, Refusal};
use crate::state::config::Config;

pub mod ranged;

/// Read buffer for bundle sources: a few chunks' worth keeps syscalls and TCP reads out of the
/// profile while memory stays small and constant.
const READ_BUFFER: usize = 1 << 20;

/// Redirects followed before giving up (as many as curl's and ureq's default).
#[cfg(feature = "http")]
const MAX_REDIRECTS: usize = 5;

fn advise_sequential(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise takes a descriptor and integers; it is advice, errors are ignored.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

/// Opens `source` as a byte stream of the bundle, with the config's `ca-file` and HTTP limits.
pub fn open(source: &str, config: &Config) -> Result<Box<dyn Read + Send>> {
    open_source(source, config).map(|(stream, _)| stream)
}

/// [`open`], and for an http(s) source whose server honours Range, the client that read the
/// front by range requests: a delta apply fetches its chunks with it (the same connections,
/// the URL after redirects, the bundle's ETag).
pub fn open_source(
    source: &str,
    config: &Config,
) -> Result<(Box<dyn Read + Send>, Option<HttpRanges>)> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let (stream, len, ranges) = open_url(source, config, true)?;
        return Ok((checked(&redact(source), stream, len, false)?, ranges));
    }
    let mut file = File::open(source).with_context(|| format!("opening {source}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("inspecting {source}"))?;
    advise_sequential(&file);
    if !meta.file_type().is_block_device() {
        // Read ahead: the bundle is read once, front to back. (Buffered reads with kernel
        // read-ahead were clearly faster here than O_DIRECT reads one buffer at a time.)
        // No BufReader: the bundle reader reads whole chunks, straight from the page cache.
        // Data after the bundle's end is left for the reader to refuse (exit 10).
        return Ok((checked(source, file, Some(meta.len()), false)?, None));
    }
    let size = file
        .seek(SeekFrom::End(0))
        .and_then(|size| file.rewind().map(|()| size))
        .with_context(|| format!("finding the size of {source}"))?;
    // A bundle on a block device is followed by whatever else the device holds: stop at the
    // length its header states.
    let r = BufReader::with_capacity(READ_BUFFER, file);
    Ok((checked(source, r, Some(size), true)?, None))
}

/// Reads the header from `r`, refuses a source of known length `len` that is shorter than the
/// header's `total_len`, and returns the whole stream again (header included). `stop_at_end`:
/// end the stream at `total_len` (a device holds more than the bundle).
fn checked<R: Read + Send + 'static>(
    what: &str,
    mut r: R,
    len: Option<u64>,
    stop_at_end: bool,
) -> Result<Box<dyn Read + Send>> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head)
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => FormatError::Truncated("header".into()),
            _ => FormatError::Io(e),
        })
        .with_context(|| format!("reading the bundle header from {what}"))?;
    let h = Header::decode(&head).with_context(|| format!("reading {what}"))?;
    if let Some(len) = len.filter(|&l| l < h.total_len) {
        return Err(Refusal::new(
            exit::TRUNCATED,
            format!(
                "{what}: bundle is truncated: it has {len} bytes, its header says {}; nothing was changed",
                h.total_len
            ),
        )
        .into());
    }
    let rest: Box<dyn Read + Send> = if stop_at_end {
        Box::new(r.take(h.total_len - HEADER_LEN as u64))
    } else {
        Box::new(r)
    };
    Ok(Box::new(Cursor::new(head).chain(rest)))
}

/// `scheme://user:password@host/...` with the password replaced by `***`, everywhere in `s`:
/// error messages must not show a secret from the command line.
pub fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// An I/O error while downloading a bundle: it reaches the caller inside the bundle reader's
/// `FormatError::Io`, and [`is_fetch_error`] finds it so the exit code is 41, not 1.
#[derive(Debug)]
pub struct FetchError(pub String);

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FetchError {}

/// Whether `e` is (or wraps) an I/O error made by the download guard.
pub fn is_fetch_error(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<io::Error>()
        .and_then(|io| io.get_ref())
        .is_some_and(|inner| inner.is::<FetchError>())
}

#[cfg(feature = "http")]
fn fetch_error(kind: io::ErrorKind, message: String) -> io::Error {
    io::Error::new(kind, FetchError(message))
}

/// Limits on a download, from the config (docs/updater.md).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub connect_timeout: Duration,
    /// The whole download, from the first connection to the last byte.
    pub timeout: Duration,
    /// Bytes per second, averaged over each `rate_window` of time spent waiting for the
    /// network (time the caller spends writing the bytes does not count); 0: no minimum.
    pub min_rate: u64,
    pub rate_window: Duration,
}

impl HttpLimits {
    pub fn of(c: &Config) -> HttpLimits {
        HttpLimits {
            connect_timeout: Duration::from_secs(c.http_connect_timeout),
            timeout: Duration::from_secs(c.http_timeout),
            min_rate: c.http_min_rate,
            rate_window: Duration::from_secs(c.http_rate_window),
        }
    }
}

/// Wraps a download: fails once the deadline has passed or when a window of waiting brought
/// fewer bytes than the minimum rate asks, and tags every error as a [`FetchError`].
#[cfg(feature = "http")]
struct Guarded<R> {
    inner: R,
    url: String,
    limits: HttpLimits,
    deadline: Instant,
    waited: Duration,
    bytes: u64,
}

#[cfg(feature = "http")]
impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let url = &self.url;
        let l = &self.limits;
        if Instant::now() >= self.deadline {
            return Err(fetch_error(
                io::ErrorKind::TimedOut,
                format!(
                    "{url}: the download took longer than {} s (http-timeout)",
                    l.timeout.as_secs()
                ),
            ));
        }
        let start = Instant::now();
        let r = self.inner.read(buf);
        self.waited += start.elapsed();
        match r {
            Ok(n) => {
                self.bytes += n as u64;
                if self.waited >= l.rate_window {
                    let secs = self.waited.as_secs_f64();
                    if (self.bytes as f64) < l.min_rate as f64 * secs {
                        return Err(fetch_error(
                            io::ErrorKind::TimedOut,
                            format!(
                                "{url}: the server sent {} bytes in {secs:.0} s, less than the \
                                 minimum of {} bytes/s (http-min-rate)",
                                self.bytes, l.min_rate
                            ),
                        ));
                    }
                    self.waited = Duration::ZERO;
                    self.bytes = 0;
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            // The socket's read timeout is the rate window: nothing came in a whole window.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                Err(fetch_error(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{url}: the server sent nothing for {} s (http-rate-window)",
                        l.rate_window.as_secs()
                    ),
                ))
            }
            // A connection that ends before its Content-Length is a network failure, not a
            // short bundle: not UnexpectedEof, which the bundle reader reports as truncation.
            Err(e) => Err(fetch_error(
                match e.kind() {
                    io::ErrorKind::UnexpectedEof => io::ErrorKind::ConnectionAborted,
                    k => k,
                },
                format!("{url}: {}", redact(&e.to_string())),
            )),
        }
    }
}

/// A download: its body, its length if known, and the range client if the server honours Range.
type Stream = (Box<dyn Read + Send>, Option<u64>, Option<HttpRanges>);

/// GETs `source`, following up to MAX_REDIRECTS redirects to http(s) only and never from
/// https to http; returns the body with the HTTP limits applied, and its Content-Length. A
/// `bundle` is asked for by ranges if the server honours them ([`RangedStream`]).
#[cfg(feature = "http")]
fn open_url(source: &str, config: &Config, bundle: bool) -> Result<Stream> {
    let limits = HttpLimits::of(config);
    let shown = redact(source);
    let fail = |msg: String| -> anyhow::Error {
        Refusal::new(
            codes::SOURCE_UNAVAILABLE,
            format!("fetching {shown}: {}; nothing was changed", redact(&msg)),
        )
        .into()
    };
    let deadline = Instant::now() + limits.timeout;
    let agent = agent(&limits, config)?;
    let mut url = url::Url::parse(source).map_err(|e| fail(format!("not a valid URL: {e}")))?;
    for hop in 0.. {
        // A bundle is asked for as a range: a server that honours it sends the front only
        // (see RangedStream).
        let first = bundle.then_some(FRONT);
        let resp = call(&agent, &url, deadline, &limits, first).map_err(fail)?;
        if resp.status() == 206 {
            let (s, total) = RangedStream::start(resp, &url, config, &shown).map_err(fail)?;
            let ranges = s.ranges.clone();
            return Ok((Box::new(s), Some(total), Some(ranges)));
        }
        if !(300..400).contains(&resp.status()) {
            let len = resp
                .header("content-length")
                .and_then(|v| v.trim().parse::<u64>().ok());
            let body = Guarded {
                inner: resp.into_reader(),
                url: shown.clone(),
                limits,
                deadline,
                waited: Duration::ZERO,
                bytes: 0,
            };
            return Ok((
                Box::new(BufReader::with_capacity(READ_BUFFER, body)),
                len,
                None,
            ));
        }
        if hop == MAX_REDIRECTS {
            return Err(fail(format!("more than {MAX_REDIRECTS} redirects")));
        }
        url = redirect(&url, &resp).map_err(fail)?;
    }
    unreachable!("the loop returns")
}

/// Where the redirect `resp` (a 3xx to a GET of `url`) leads: http(s) only, never from https
/// to http.
#[cfg(feature = "http")]
fn redirect(url: &url::Url, resp: &ureq::Response) -> std::result::Result<url::Url, String> {
    let Some(location) = resp.header("location") else {
        return Err(format!("HTTP {} without a Location", resp.status()));
    };
    let next = url
        .join(location)
        .map_err(|e| format!("redirect to '{location}': {e}"))?;
    match (url.scheme(), next.scheme()) {
        (_, "https") | ("http", "http") => Ok(next),
        ("https", "http") => Err(format!("refusing a redirect from https to http ({next})")),
        (_, other) => Err(format!(
            "refusing a redirect to a {other}: URL ({next}): only http(s) is fetched"
        )),
    }
}

/// One GET, bounded by `deadline`: ureq's timeouts bound each read, not a server that sends
/// its status line and headers a byte at a time, so the request runs on its own thread.
#[cfg(feature = "http")]
fn call(
    agent: &ureq::Agent,
    url: &url::Url,
    deadline: Instant,
    limits: &HttpLimits,
    first_bytes: Option<u64>,
) -> std::result::Result<ureq::Response, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (agent, target) = (agent.clone(), url.to_string());
    std::thread::spawn(move || {
        let mut req = agent.get(&target);
        if let Some(n) = first_bytes {
            req = req.set("Range", &format!("bytes=0-{}", n - 1));
        }
        let _ = tx.send(req.call());
    });
    // The response head must come within one rate window after the connection, as any read
    // must: ureq's read timeout bounds each read, not a head trickled a line at a time.
    let left = deadline.saturating_duration_since(Instant::now());
    let wait = left.min(limits.connect_timeout + limits.rate_window);
    match rx.recv_timeout(wait) {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => {
            let hint = if e.to_string().contains("certificate") {
                " (a server with a private CA needs ca-file in the config)"
            } else {
                ""
            };
            Err(format!("{e}{hint}"))
        }
        // The thread is left behind; the command is about to exit with this error.
        Err(_) if wait < left => Err(head_too_slow(limits)),
        Err(_) => Err(format!(
            "no response within {} s (http-timeout)",
            limits.timeout.as_secs()
        )),
    }
}

/// Why a request whose response head did not come within connect + one rate window failed.
#[cfg(feature = "http")]
fn head_too_slow(limits: &HttpLimits) -> String {
    format!(
        "no complete response head within {} s (http-connect-timeout + http-rate-window)",
        (limits.connect_timeout + limits.rate_window).as_secs()
    )
}

/// Range reads of a bundle over HTTP(S) for a delta apply: one GET with one `Range` per call
/// (S3 and others serve one range per request), on the agent's kept-alive connections. Every
/// 206 must carry exactly the range asked and the bundle's length, and the same ETag as the
/// first (a bundle replaced mid-apply is refused, exit 41). Any server or cache may ignore
/// Range on any request (RFC 9110): a 200 is the whole bundle ([`RangeReply::Whole`]), which
/// the caller reads on from, skipping what it already has. Redirects are followed as for the
/// first GET (the next range goes to the bundle's URL again).
#[cfg(feature = "http")]
#[derive(Clone)]
pub struct HttpRanges {
    agent: ureq::Agent,
    url: String,
    shown: String,
    limits: HttpLimits,
    deadline: Instant,
    total_len: u64,
    etag: Option<String>,
    /// Range requests made so far.
    pub requests: u64,
    /// Shared by the clones: where the bundle's stream asks for its next range, and that
    /// range's reply if [`HttpRanges::prepare_rest`] asked for it already.
    next: Arc<Mutex<Next>>,
}

#[cfg(feature = "http")]
#[derive(Default)]
struct Next {
    start: u64,
    reply: Option<RangeReply>,
}

/// What a range request brought.
#[cfg(feature = "http")]
pub enum RangeReply {
    /// The range's bytes (exactly its length; fewer is a fetch error).
    Partial(Box<dyn Read + Send>),
    /// A 200: the whole bundle from its first byte (the server ignored Range).
    Whole(Box<dyn Read + Send>),
}

#[cfg(feature = "http")]
impl HttpRanges {
    pub fn new(source: &str, config: &Config, total_len: u64) -> Result<HttpRanges> {
        let limits = HttpLimits::of(config);
        Ok(HttpRanges {
            agent: agent(&limits, config)?,
            url: source.to_string(),
            shown: redact(source),
            limits,
            deadline: Instant::now() + limits.timeout,
            total_len,
            etag: None,
            requests: 0,
            next: Default::default(),
        })
    }

    /// Asks for the rest of the bundle after what its stream has read or was sent (the front),
    /// for a caller about to read the payloads as a stream: the server's answer to it (a
    /// range, the whole bundle, a redirect, an error) is known before anything is written, and
    /// the stream reads on from it.
    pub fn prepare_rest(&mut self) -> Result<()> {
        let start = self.next.lock().expect("not poisoned").start;
        if start == 0 || start >= self.total_len {
            return Ok(());
        }
        let reply = self.get(start, self.total_len).map_err(|e| {
            Refusal::new(
                codes::SOURCE_UNAVAILABLE,
                format!("{e:#}; nothing was changed"),
            )
        })?;
        let mut next = self.next.lock().expect("not poisoned");
        if next.start == start {
            next.reply = Some(reply);
        }
        Ok(())
    }

    /// The bundle's length.
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// GETs bytes `[start, end)` of the bundle, following redirects.
    pub fn get(&mut self, start: u64, end: u64) -> Result<RangeReply> {
        let shown = self.shown.clone();
        let fail = |msg: String| -> anyhow::Error {
            Refusal::new(
                codes::SOURCE_UNAVAILABLE,
                format!("fetching {shown}: {}", redact(&msg)),
            )
            .into()
        };
        let mut url = url::Url::parse(&self.url).map_err(|e| fail(e.to_string()))?;
        let mut hops = 0;
        let resp = loop {
            let resp = self.send(&url, start, end).map_err(fail)?;
            if !(300..400).contains(&resp.status()) {
                break resp;
            }
            if hops == MAX_REDIRECTS {
                return Err(fail(format!("more than {MAX_REDIRECTS} redirects")));
            }
            hops += 1;
            url = redirect(&url, &resp).map_err(fail)?;
        };
        let etag = resp.header("etag").map(str::to_string);
        match (&self.etag, &etag) {
            (Some(a), Some(b)) if a != b => {
                return Err(fail(format!(
                    "the bundle changed on the server during the apply (ETag {a}, now {b})"
                )))
            }
            (None, Some(_)) => self.etag = etag,
            _ => {}
        }
        let guarded = |resp: ureq::Response| Guarded {
            inner: resp.into_reader(),
            url: self.shown.clone(),
            limits: self.limits,
            deadline: self.deadline,
            waited: Duration::ZERO,
            bytes: 0,
        };
        match resp.status() {
            206 => {}
            200 => {
                let len = resp
                    .header("content-length")
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if let Some(len) = len.filter(|&l| l != self.total_len) {
                    return Err(fail(format!(
                        "the server sent {len} bytes where the bundle has {} (asked for bytes \
                         {start}-{})",
                        self.total_len,
                        end - 1
                    )));
                }
                let body = guarded(resp).take(self.total_len);
                return Ok(RangeReply::Whole(Box::new(BufReader::with_capacity(
                    READ_BUFFER,
                    body,
                ))));
            }
            code => return Err(fail(format!("HTTP {code} for bytes {start}-{}", end - 1))),
        }
        let want = format!("bytes {start}-{}/{}", end - 1, self.total_len);
        let got = resp
            .header("content-range")
            .unwrap_or("")
            .trim()
            .to_string();
        if got != want {
            return Err(fail(format!(
                "the server sent the range '{got}' where '{want}' was asked"
            )));
        }
        Ok(RangeReply::Partial(Box::new(
            guarded(resp).take(end - start),
        )))
    }

    /// One GET of bytes `[start, end)` from `url`: the response, whatever its status below 400.
    fn send(
        &mut self,
        url: &url::Url,
        start: u64,
        end: u64,
    ) -> std::result::Result<ureq::Response, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (agent, target) = (self.agent.clone(), url.to_string());
        let range = format!("bytes={start}-{}", end - 1);
        std::thread::spawn(move || {
            let _ = tx.send(agent.get(&target).set("Range", &range).call());
        });
        self.requests += 1;
        // The response head must come within one rate window after the connection, as any
        // read must: ureq (2.12) clears its read timeout on a kept-alive connection it reuses,
        // so a server that never answers there would otherwise hold the apply until
        // http-timeout.
        let left = self.deadline.saturating_duration_since(Instant::now());
        let wait = left.min(self.limits.connect_timeout + self.limits.rate_window);
        let silent = || {
            format!(
                "the server sent nothing for {} s after asking for bytes {start}-{} \
                 (http-rate-window)",
                self.limits.rate_window.as_secs(),
                end - 1
            )
        };
        match rx.recv_timeout(wait) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(ureq::Error::Status(code, _))) => {
                Err(format!("HTTP {code} for bytes {start}-{}", end - 1))
            }
            Ok(Err(e)) if timed_out(&e) => Err(silent()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) if wait < left => Err(silent()),
            Err(_) => Err(format!(
                "no response within {} s (http-timeout)",
                self.limits.timeout.as_secs()
            )),
        }
    }
}

/// Whether a request failed because a read on its connection timed out (ureq's read timeout
/// is the rate window).
#[cfg(feature = "http")]
fn timed_out(e: &ureq::Error) -> bool {
    e.kind() == ureq::ErrorKind::Io
        && std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                )
            })
}

/// The first request for a bundle over HTTP(S) asks for this many bytes: the header,
/// manifest, signatures and chunk index of a root up to about 28 MiB (a larger index comes
/// with one more request).
#[cfg(feature = "http")]
const FRONT: u64 = 64 * 1024;

/// A bundle over HTTP(S) from a server that honours Range, read by range requests as it is
/// read: the first [`FRONT`] bytes, then the rest of the front (up to the end of the chunk
/// index, from the header) in one request, then, only if the payloads are read as a stream
/// too, the rest of the bundle in one more. A delta apply reads the front only and fetches
/// its chunks itself, so nothing past the front is asked for: a GET without Range would let
/// the server push megabytes into the socket buffers, never read, while the apply runs.
#[cfg(feature = "http")]
struct RangedStream {
    ranges: HttpRanges,
    body: Box<dyn Read + Send>,
    /// Where the stream stands, and where the current range ends.
    pos: u64,
    end: u64,
    /// The header's bytes, until all are seen; then where the front ends.
    head: Vec<u8>,
    front_end: Option<u64>,
}

#[cfg(feature = "http")]
impl RangedStream {
    /// The stream from the first reply (206 to `bytes=0-{FRONT-1}`): its Content-Range gives
    /// the bundle's length. Returns the stream and that length.
    fn start(
        resp: ureq::Response,
        url: &url::Url,
        config: &Config,
        shown: &str,
    ) -> std::result::Result<(RangedStream, u64), String> {
        let got = resp
            .header("content-range")
            .unwrap_or("")
            .trim()
            .to_string();
        let parsed = got
            .strip_prefix("bytes 0-")
            .and_then(|r| r.split_once('/'))
            .and_then(|(e, t)| Some((e.parse::<u64>().ok()?, t.parse::<u64>().ok()?)));
        let Some((last, total)) = parsed.filter(|&(e, t)| t > 0 && e + 1 == FRONT.min(t)) else {
            return Err(format!(
                "the server sent the range '{got}' where bytes 0-{} were asked",
                FRONT - 1
            ));
        };
        let mut ranges =
            HttpRanges::new(url.as_str(), config, total).map_err(|e| format!("{e:#}"))?;
        ranges.etag = resp.header("etag").map(str::to_string);
        ranges.requests = 1;
        let body = Guarded {
            inner: resp.into_reader(),
            url: shown.to_string(),
            limits: ranges.limits,
            deadline: ranges.deadline,
            waited: Duration::ZERO,
            bytes: 0,
        }
        .take(last + 1);
        ranges.next.lock().expect("not poisoned").start = last + 1;
        let s = RangedStream {
            ranges,
            body: Box::new(body),
            pos: 0,
            end: last + 1,
            head: Vec::with_capacity(HEADER_LEN),
            front_end: None,
        };
        Ok((s, total))
    }
}

#[cfg(feature = "http")]
impl Read for RangedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos == self.end {
            let total = self.ranges.total_len;
            if self.pos >= total {
                return Ok(0);
            }
            let end = match self.front_end {
                Some(f) if self.pos < f => f.min(total),
                _ => total,
            };
            // The rest of the bundle may have been asked for already (prepare_rest).
            let ready = {
                let mut next = self.ranges.next.lock().expect("not poisoned");
                let at = next.start;
                next.reply.take().filter(|_| at == self.pos && end == total)
            };
            let reply = match ready {
                Some(r) => Ok(r),
                None => self.ranges.get(self.pos, end),
            };
            (self.body, self.end) = match reply {
                Ok(RangeReply::Partial(b)) => (b, end),
                // The server ignored Range this time: the rest comes from this whole bundle,
                // past what was already read.
                Ok(RangeReply::Whole(mut b)) => {
                    let skipped = io::copy(&mut b.by_ref().take(self.pos), &mut io::sink())?;
                    if skipped < self.pos {
                        return Err(fetch_error(
                            io::ErrorKind::ConnectionAborted,
                            format!(
                                "{}: the server's whole bundle ended at byte {skipped} of {total}",
                                self.ranges.shown
                            ),
                        ));
                    }
                    (b, total)
                }
                Err(e) => return Err(fetch_error(io::ErrorKind::Other, format!("{e:#}"))),
            };
            self.ranges.next.lock().expect("not poisoned").start = self.end;
        }
        let want = buf.len().min((self.end - self.pos) as usize);
        let n = self.body.read(&mut buf[..want])?;
        if n == 0 {
            return Err(fetch_error(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: the server sent a short range (ended at byte {} of {})",
                    self.ranges.shown, self.pos, self.end
                ),
            ));
        }
        if self.front_end.is_none() {
            let take = n.min(HEADER_LEN - self.head.len());
            self.head.extend_from_slice(&buf[..take]);
            if let Ok(h) = <[u8; HEADER_LEN]>::try_from(&self.head[..]) {
                // A header that does not decode is refused by the caller; the rest then
                // comes in one range.
                self.front_end = Some(Header::decode(&h).map_or(0, |h| h.index_end()));
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// The HTTP client of every request: connect timeout, reads and writes bounded by one rate
/// window (the guard then sees that nothing came), redirects followed by us, not ureq, and the
/// configured CA file if any.
#[cfg(feature = "http")]
fn agent(limits: &HttpLimits, config: &Config) -> Result<ureq::Agent> {
    let mut agent = ureq::AgentBuilder::new()
        .timeout_connect(limits.connect_timeout)
        .timeout_read(limits.rate_window)
        .timeout_write(limits.rate_window)
        .redirects(0);
    if let Some(ca) = config.ca_file.as_deref() {
        agent = with_roots(agent, ca)?;
    }
    Ok(agent.build())
}

/// Trusts only the certificates in the PEM file `ca` for https://.
#[cfg(feature = "https")]
fn with_roots(agent: ureq::AgentBuilder, ca: &std::path::Path) -> Result<ureq::AgentBuilder> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let what = || format!("reading CA certificates from {}", ca.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(what)? {
        roots.add(cert.with_context(what)?).with_context(what)?;
    }
    if roots.is_empty() {
        anyhow::bail!("{}: no certificates in it", ca.display());
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(agent.tls_config(std::sync::Arc::new(tls)))
}

#[cfg(all(feature = "http", not(feature = "https")))]
fn with_roots(_: ureq::AgentBuilder, _: &std::path::Path) -> Result<ureq::AgentBuilder> {
    anyhow::bail!("ca-file is set, but this abupdate was built without https (feature 'https')")
}

/// Without HTTP support there is no range client (never built).
#[cfg(not(feature = "http"))]
#[derive(Clone)]
pub struct HttpRanges;

#[cfg(not(feature = "http"))]
impl HttpRanges {
    pub fn prepare_rest(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(not(feature = "http"))]
fn open_url(url: &str, _: &Config, _: bool) -> Result<Stream> {
    anyhow::bail!(
        "{}: this abupdate was built without HTTP support (feature 'http')",
        redact(url)
    )
}

/// Longest a small document (a channel file) may take to fetch, whatever `http-timeout`
/// allows a bundle: a check must not hang for hours on a server that trickles.
pub const DOCUMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Fetches a small document (a channel file) from an http(s):// URL, a `file://` URL or a
/// plain path, reading at most `max + 1` bytes: the caller refuses anything longer without
/// parsing it. Every failure to get it is a [`Refusal`] with [`codes::SOURCE_UNAVAILABLE`].
pub fn fetch_document(location: &str, config: &Config, max: u64) -> Result<Vec<u8>> {
    let shown = redact(location);
    let fail = |msg: String| -> anyhow::Error {
        Refusal::new(
            codes::SOURCE_UNAVAILABLE,
            format!("fetching {shown}: {}; nothing was changed", redact(&msg)),
        )
        .into()
    };
    let mut out = Vec::new();
    if location.starts_with("http://") || location.starts_with("https://") {
        let mut c = config.clone();
        c.http_timeout = c.http_timeout.min(DOCUMENT_TIMEOUT.as_secs());
        let (stream, _, _) = open_url(location, &c, false)?;
        stream
            .take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| fail(e.to_string()))?;
        return Ok(out);
    }
    let path = local_path(location).map_err(fail)?;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: a FIFO at the path must not hang the check; regular files only.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| fail(e.to_string()))?;
    Ok(out)
}

/// The path of a `file://` URL (percent-escapes not decoded: none are needed for the paths
/// `abbuild publish` writes) or of a plain path.
pub fn local_path(location: &str) -> std::result::Result<std::path::PathBuf, String> {
    let p = match location.strip_prefix("file://") {
        Some(rest) if rest.starts_with('/') => rest,
        Some(_) => return Err("a file:// URL needs an absolute path (file:///...)".into()),
        None if location.contains("://") => {
            return Err("only http://, https://, file:// and plain paths are supported".into())
        }
        None => location,
    };
    if p.contains('%') {
        return Err("percent-escapes in file:// URLs are not supported".into());
    }
    Ok(std::path::PathBuf::from(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("fetching https://bob:s3cr:et@h.example:8443/x.abu: refused"),
            "fetching https://bob:***@h.example:8443/x.abu: refused"
        );
        assert_eq!(
            redact("a http://u:p@h/ and http://v:q@i?x b"),
            "a http://u:***@h/ and http://v:***@i?x b"
        );
        // No password, no user, no URL: unchanged.
        for s in ["http://u@h/x", "http://h/x@y", "no url: at all", "x://"] {
            assert_eq!(redact(s), s);
        }
    }

    #[test]
    fn guard_fails_a_slow_source_and_tags_its_errors() {
        /// One byte per read, each after `delay`.
        struct Slow(Duration);
        impl Read for Slow {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                std::thread::sleep(self.0);
                buf[0] = 0;
                Ok(1)
            }
        }
        let limits = HttpLimits {
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
            min_rate: 1000,
            rate_window: Duration::from_millis(100),
        };
        let mut g = Guarded {
            inner: Slow(Duration::from_millis(30)),
            url: "http://h/x".into(),
            limits,
            deadline: Instant::now() + limits.timeout,
            waited: Duration::ZERO,
            bytes: 0,
        };
        let e = io::copy(&mut g, &mut io::sink()).unwrap_err();
        assert!(is_fetch_error(&e), "{e}");
        assert!(e.to_string().contains("http-min-rate"), "{e}");
    }
}
