//! Writing a slot and its boot files from a format 2 bundle by chunks: each chunk of the
//! signed index comes from a seed that holds it (`delta::find_seeds`) or, failing that, from
//! the bundle at its offset (a file or block device), and is checked against the index before
//! it is written. A seed chunk that does not match (the disk changed since it was scanned) is
//! read from the bundle instead. After the slot is written and synced it is read back and
//! checked against the manifest's signed fixed-size chunk table, as the stream path checks it.
//!
//! Memory: one write batch ([`WRITE_BATCH`]) and one chunk, besides the seed maps.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use abbundle::index::Entry;
use abbundle::{FormatError, Payload};
use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};
use tracing::info;

use crate::boot::Slot;
use crate::disk::esp::Esp;
use crate::disk::{Disk, Partition};
use crate::install::delta::{seed, SeedMap};
use crate::progress::Progress;
use crate::{codes, fault, refuse};

/// Slot writes are gathered into runs of up to this many bytes (one write, one fault point).
const WRITE_BATCH: usize = 1 << 20;

/// Bytes by where they came from.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Read from the bundle.
    pub fetched: u64,
    /// Copied from a seed.
    pub copied: u64,
    /// Already in place, not written.
    pub in_place: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.fetched += o.fetched;
        self.copied += o.copied;
        self.in_place += o.in_place;
    }
}

/// The bundle, read at offsets: a file or block device ([`FileSource`]) or HTTP(S) range
/// requests ([`HttpSource`]). Chunks are asked for in increasing offset order.
pub trait Fetch {
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

/// A bundle over HTTP(S): each planned range (missing chunks, neighbours merged) is one
/// request; the chunks in it are read from its body in order, the gaps skipped.
#[cfg(feature = "http")]
pub struct HttpSource {
    pub ranges: crate::fetch::HttpRanges,
    plan: Vec<crate::install::delta::Range>,
    /// The open range: its body, the offset it stands at, and where it ends.
    cur: Option<(Box<dyn std::io::Read + Send>, u64, u64)>,
}

#[cfg(feature = "http")]
impl HttpSource {
    /// `plan`: the ranges to fetch, in order; `first`: the reply to the first one if the
    /// caller already asked for it (before anything is written).
    pub fn new(
        ranges: crate::fetch::HttpRanges,
        plan: Vec<crate::install::delta::Range>,
        first: Option<crate::fetch::RangeReply>,
    ) -> HttpSource {
        let mut s = HttpSource {
            ranges,
            plan,
            cur: None,
        };
        if let Some(reply) = first {
            let (start, end) = (s.plan[0].start, s.plan[0].end);
            s.take(reply, start, end);
        }
        s
    }

    /// Makes `reply` (to a request for `[start, end)`) the open range. A whole bundle (the
    /// server ignored Range) serves every later chunk too: they are asked for in increasing
    /// offset order, so the gaps are read and skipped.
    fn take(&mut self, reply: crate::fetch::RangeReply, start: u64, end: u64) {
        use crate::fetch::RangeReply;
        self.cur = Some(match reply {
            RangeReply::Partial(body) => (body, start, end),
            RangeReply::Whole(body) => {
                info!("the server sent the whole bundle for a range: reading the chunks from it");
                (body, 0, self.ranges.total_len())
            }
        });
    }
}

#[cfg(feature = "http")]
impl Fetch for HttpSource {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        use std::io::Read;
        let end = offset + buf.len() as u64;
        if !self
            .cur
            .as_ref()
            .is_some_and(|c| c.1 <= offset && end <= c.2)
        {
            // A planned range holds it; else (a seed chunk that no longer matched) just it.
            let i = self.plan.partition_point(|r| r.end <= offset);
            let (s, e) = match self.plan.get(i) {
                Some(r) if r.start <= offset && end <= r.end => (r.start, r.end),
                _ => (offset, end),
            };
            self.cur = None;
            let reply = self.ranges.get(s, e)?;
            self.take(reply, s, e);
        }
        let (body, pos, _) = self.cur.as_mut().expect("just set");
        let short = |e: std::io::Error| -> anyhow::Error {
            if crate::fetch::is_fetch_error(&e) {
                anyhow::Error::new(e)
            } else {
                crate::codes::Refusal::new(
                    codes::SOURCE_UNAVAILABLE,
                    format!("the server sent a short range ({e})"),
                )
                .into()
            }
        };
        std::io::copy(&mut body.by_ref().take(offset - *pos), &mut std::io::sink())
            .map_err(short)
            .and_then(|n| {
                if n == offset - *pos {
                    Ok(())
                } else {
                    Err(short(std::io::ErrorKind::UnexpectedEof.into()))
                }
            })?;
        body.read_exact(buf).map_err(short)?;
        *pos = end;
        Ok(())
    }
}

/// Where one chunk's bytes can be read from, besides the bundle.
trait SeedRead {
    fn read(&self, seed: u8, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// Fills `buf` with chunk `i` of `p`: from its seed if that holds the right bytes, else from
/// the bundle; either way checked against the signed index. Returns whether it was fetched.
#[allow(clippy::too_many_arguments)]
fn chunk(
    p: &Payload,
    map: &SeedMap,
    i: usize,
    at: u64,
    seeds: &dyn SeedRead,
    src: &mut dyn Fetch,
    buf: &mut [u8],
    counts: &mut Counts,
) -> Result<()> {
    let e = &map.entries()[i];
    if let Some(loc) = map.loc(i) {
        if seeds.read(loc.seed, loc.offset, buf).is_ok() && Sha256::digest(&*buf)[..] == e.digest.0
        {
            counts.copied += buf.len() as u64;
            return Ok(());
        }
        tracing::warn!(
            "{} chunk {i}: the seed no longer holds it; reading it from the bundle",
            p.kind
        );
    }
    src.read_exact_at(buf, p.offset + at)?;
    if Sha256::digest(&*buf)[..] != e.digest.0 {
        return Err(FormatError::ChunkHashMismatch {
            payload: p.kind.to_string(),
            index: i as u64,
        }
        .into());
    }
    counts.fetched += buf.len() as u64;
    Ok(())
}

struct SlotSeeds<'a> {
    disk: &'a Disk,
    keep: &'a Partition,
}

impl SeedRead for SlotSeeds<'_> {
    fn read(&self, s: u8, offset: u64, buf: &mut [u8]) -> Result<()> {
        anyhow::ensure!(s == seed::KEEP_SLOT, "not a copy seed");
        Ok(self.disk.read_at(self.keep, offset, buf)?)
    }
}

/// Writes the root image into `part` (the target slot) chunk by chunk, syncs, and reads the
/// slot back against the signed fixed-size chunk table.
#[allow(clippy::too_many_arguments)]
pub fn write_root(
    disk: &Disk,
    target: Slot,
    part: &Partition,
    keep: &Partition,
    p: &Payload,
    map: &SeedMap,
    src: &mut dyn Fetch,
    quiet: bool,
) -> Result<Counts> {
    let seeds = SlotSeeds { disk, keep };
    let mut counts = Counts::default();
    // The same progress and log lines as the full stream: scripts and tests watch for them.
    let mut progress = Progress::new(&format!("slot {target}"), p.size, quiet);
    let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
    let mut batch_start = 0u64;
    let flush = |batch: &mut Vec<u8>, start: u64| -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        fault::lying_medium(batch);
        disk.write_at(part, start, batch)
            .with_context(|| format!("writing {} at {start}", part.label))?;
        fault::point("slot write");
        batch.clear();
        Ok(())
    };
    let mut buf = vec![0u8; abbundle::index::MAX_CHUNK as usize];
    let mut at = 0u64;
    for (i, e) in map.entries().iter().enumerate() {
        let len = e.len as usize;
        if map.loc(i).is_some_and(|l| l.seed == seed::TARGET_IN_PLACE) {
            flush(&mut batch, batch_start)?;
            counts.in_place += len as u64;
        } else {
            chunk(p, map, i, at, &seeds, src, &mut buf[..len], &mut counts)?;
            if batch.is_empty() {
                batch_start = at;
            }
            batch.extend_from_slice(&buf[..len]);
            if batch.len() + abbundle::index::MAX_CHUNK as usize > WRITE_BATCH {
                flush(&mut batch, batch_start)?;
            }
        }
        at += len as u64;
        progress.update(at);
    }
    flush(&mut batch, batch_start)?;
    disk.sync()?;
    progress.finish();
    read_back(disk, part, p, map.entries())?;
    info!(
        "slot {target}: {} bytes written and read back ({} read from the bundle, {} copied from \
         the other slot, {} already in place)",
        p.size, counts.fetched, counts.copied, counts.in_place
    );
    Ok(counts)
}

/// Reads the slot back from the device and checks it against the signed fixed-size table.
/// A chunk that does not match is blamed on the medium only if the slot also differs from the
/// signed index (`entries`) it was written by there: where it reads back as the index says,
/// the signed table disagrees with the signed index, and the bundle was built wrong.
fn read_back(disk: &Disk, part: &Partition, p: &Payload, entries: &[Entry]) -> Result<()> {
    disk.drop_cache(part, p.size);
    let mut buf = vec![0u8; p.chunk_size as usize];
    for (i, want) in p.chunks.iter().enumerate() {
        let len = p.chunk_len(i as u64) as usize;
        let at = i as u64 * p.chunk_size as u64;
        disk.read_at(part, at, &mut buf[..len])
            .with_context(|| format!("reading back {} at {at}", part.label))?;
        if Sha256::digest(&buf[..len])[..] != want.0 {
            if holds_index(disk, part, entries, at, at + len as u64)? {
                return Err(FormatError::BadManifest(format!(
                    "chunk {i} of the {} payload in the signed table does not match the image, \
                     although {} reads back as the signed chunk index says: the bundle was built \
                     wrong",
                    p.kind, part.label
                ))
                .into());
            }
            refuse!(
                codes::READBACK_MISMATCH,
                "{} does not read back as written (chunk {i} at offset {at}): the medium may be failing",
                part.label
            );
        }
    }
    Ok(())
}

/// Whether the bytes `[start, end)` of `part` read back as the index `entries` says (every
/// index chunk that overlaps them, read whole).
fn holds_index(
    disk: &Disk,
    part: &Partition,
    entries: &[Entry],
    start: u64,
    end: u64,
) -> Result<bool> {
    let mut buf = vec![0u8; abbundle::index::MAX_CHUNK as usize];
    let mut at = 0u64;
    for e in entries {
        let len = e.len as u64;
        if at + len > start && at < end {
            let b = &mut buf[..e.len as usize];
            disk.read_at(part, at, b)
                .with_context(|| format!("reading back {} at {at}", part.label))?;
            if Sha256::digest(&*b)[..] != e.digest.0 {
                return Ok(false);
            }
        }
        at += len;
        if at >= end {
            break;
        }
    }
    Ok(true)
}

/// The staying slot's boot file, kept open across chunks: the FAT driver walks the cluster
/// chain from the start on every open and every seek elsewhere, so opening it per chunk made
/// copying a kernel quadratic in its size (0.4 s for 12 MB of kernel and initrd).
struct FileSeeds<'a, 'd> {
    esp: &'a Esp<'d>,
    keep_path: &'a str,
    file: std::cell::RefCell<Option<crate::disk::esp::EspFile<'a, 'd>>>,
}

impl SeedRead for FileSeeds<'_, '_> {
    fn read(&self, s: u8, offset: u64, buf: &mut [u8]) -> Result<()> {
        anyhow::ensure!(s == seed::KEEP_FILE, "not a copy seed");
        let mut file = self.file.borrow_mut();
        if file.is_none() {
            *file = Some(self.esp.open_file(self.keep_path)?);
        }
        Esp::read_exact_at(
            file.as_mut().expect("just set"),
            self.keep_path,
            offset,
            buf,
        )
    }
}

/// Writes a boot file (kernel or initrd) of `target` to `path` on the ESP from seeds and the
/// bundle; nothing if the target's file already equals the payload. The caller checks the
/// written files' digests after a sync, as for the stream path.
pub fn write_boot_file(
    esp: &Esp,
    target: Slot,
    path: &str,
    p: &Payload,
    map: &SeedMap,
    src: &mut dyn Fetch,
) -> Result<Counts> {
    let mut counts = Counts::default();
    if map.all_from(seed::TARGET_FILE) {
        counts.in_place = p.size;
        return Ok(counts);
    }
    let keep = target.other().files();
    let keep_path = if p.kind == abbundle::PayloadKind::Kernel {
        keep.kernel
    } else {
        keep.initrd
    };
    let seeds = FileSeeds {
        esp,
        keep_path: &keep_path,
        file: Default::default(),
    };
    let mut f = esp.create(path)?;
    let mut buf = vec![0u8; abbundle::index::MAX_CHUNK as usize];
    let mut at = 0u64;
    let mut whole = Sha256::new();
    for (i, e) in map.entries().iter().enumerate() {
        let len = e.len as usize;
        chunk(p, map, i, at, &seeds, src, &mut buf[..len], &mut counts)?;
        whole.update(&buf[..len]);
        f.write_all(&buf[..len])
            .with_context(|| format!("writing {path} on the ESP"))?;
        at += len as u64;
    }
    f.flush()
        .with_context(|| format!("flushing {path} on the ESP"))?;
    // The chunks matched the signed index, so a different whole-file digest is the bundle's
    // fault, not the medium's (checked here, so the caller's read-back only judges the medium).
    if whole.finalize()[..] != p.sha256.0 {
        return Err(FormatError::BadManifest(format!(
            "payload {}'s sha256 does not match its chunks in the signed chunk index",
            p.kind
        ))
        .into());
    }
    Ok(counts)
}

/// Sums counts (for the final report).
pub fn total(c: &[Counts]) -> Counts {
    let mut t = Counts::default();
    for x in c {
        t.add(*x);
    }
    t
}
