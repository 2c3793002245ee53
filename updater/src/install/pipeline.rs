//! The one install pipeline: every apply (a stream or a plan of chunks, from a file, a block
//! device or HTTP) writes through it. Three stages on three threads, so that getting and
//! checking chunks, writing them and reading them back overlap:
//!
//! - a *source* (`stream::produce` for the bundle read in order, `chunks::produce` for a
//!   plan's chunks from seeds and the bundle's ranges) sends verified bytes, every chunk
//!   checked against a signed digest first, in buffers from a fixed pool ([`BUFFERS`]);
//! - the *writer* (the calling thread, which owns the ESP's FAT driver) writes the root image
//!   onto the slot and the kernel and initrd into their files on the ESP as they come, and
//!   starts writing the slot out segment by segment;
//! - the *read-back* reads each written segment from the device and checks it ([`Check`]).
//!
//! Memory: [`BUFFERS`] buffers of one write batch, and one read-back buffer, whatever the size.
//! (Over HTTP, `fetch::ranged::Ahead` adds the ranges it fetched ahead.)

use std::io::Write as _;
use std::sync::mpsc;

use abbundle::index::Entry;
use abbundle::verity::Verity;
use abbundle::{FormatError, Payload, PayloadKind};
use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};
use xxhash_rust::xxh3::xxh3_128;

use crate::disk::direct::{AlignedBuf, ALIGN};
use crate::disk::esp::{Esp, EspFile};
use crate::disk::{Disk, Partition};
use crate::install::verity::SlotTree;
use crate::progress::Progress;
use crate::{codes, fault, refuse};

/// Buffers in flight between the source and the writer.
pub const BUFFERS: usize = 3;

/// A plan's runs of chunks are gathered up to this many bytes.
const PLAN_BATCH: usize = 512 << 10;

/// What the source sends the writer, in payload order (root image, kernel, initrd).
pub enum Msg {
    /// Verified bytes of payload `kind` at `offset` in it: `data[..len]`. `last`: its end.
    Data {
        kind: PayloadKind,
        offset: u64,
        data: AlignedBuf,
        len: usize,
        last: bool,
    },
    /// `len` bytes of the root image at `offset` are already in place: nothing to write.
    InPlace { offset: u64, len: u64, last: bool },
}

/// The source's end of the pipeline: messages out, empty buffers back.
pub struct Sink {
    out: mpsc::SyncSender<Msg>,
    pool: mpsc::Receiver<AlignedBuf>,
    /// Runs of chunks are gathered up to this many bytes (one slot write, one fault point)...
    pub batch: usize,
    /// ... and a buffer holds this many (a single chunk may be larger than `batch`).
    pub cap: usize,
}

impl Sink {
    /// An empty buffer; `None` once the writer is gone (it failed: its error is reported).
    pub fn buffer(&self) -> Option<AlignedBuf> {
        self.pool.recv().ok()
    }

    /// Sends a message; false once the writer is gone.
    pub fn send(&self, m: Msg) -> bool {
        self.out.send(m).is_ok()
    }
}

/// How the read-back judges the slot.
#[derive(Clone, Copy)]
pub enum Check<'a> {
    /// Each written stretch against the XXH3-128 sums of the verified bytes written there
    /// (the source sends whole chunks of the signed table). Why not SHA-256 again: those bytes
    /// were checked against the signed table before they were written; the read-back has to
    /// catch a medium that does not store what it was given, not an attacker, and XXH3-128
    /// does that at memory speed.
    Written,
    /// Every byte of the slot, chunks left in place too, against the signed fixed-size table
    /// (SHA-256): the source checked the chunks against the signed chunk index (`entries`),
    /// so this proves the image is the one the table signs. Where a chunk differs, the slot
    /// is read again by the index: if it holds what the index says, the bundle was built
    /// wrong (10), else the medium failed (37).
    Table(&'a [Entry]),
}

/// Where things go.
pub struct Targets<'a, 'd> {
    pub disk: &'a Disk,
    pub part: &'a Partition,
    pub esp: &'a Esp<'d>,
    /// The slot's kernel and initrd paths on the ESP.
    pub kernel_path: &'a str,
    pub initrd_path: &'a str,
    /// The root image's signed dm-verity parameters: the read-back checks the tree too.
    pub verity: Option<&'a Verity>,
}

/// Runs `source` on its own thread and writes what it sends: `[rootfs, kernel, initrd]`,
/// the slot synced and read back (`check`) when this returns Ok; the boot files written and
/// flushed, each checked against its signed digest (the caller syncs the ESP and reads them
/// back). The source's result (its counts) is returned. A payload the source sends nothing for
/// is left as it is (a boot file already in place).
pub fn run<T: Send>(
    t: &Targets,
    payloads: [&Payload; 3],
    check: Check,
    progress: Progress,
    source: impl FnOnce(Sink) -> Result<T> + Send,
) -> Result<T> {
    let [rootfs, kernel, initrd] = payloads;
    let batch = match check {
        // Runs of whole chunks of the table, for the boot files too.
        Check::Written => payloads
            .iter()
            .skip(1)
            .map(|p| p.chunk_size as usize)
            .fold(write_batch(rootfs), usize::max),
        // Runs of index chunks (at most 64 KiB each): 512 KiB writes stream as well, and the
        // memory goes to the ranges fetched ahead instead.
        Check::Table(_) => PLAN_BATCH,
    };
    let cap = batch.max(abbundle::index::MAX_CHUNK as usize);
    std::thread::scope(|scope| {
        let (out, msgs) = mpsc::sync_channel::<Msg>(BUFFERS);
        let (pool_tx, pool) = mpsc::channel::<AlignedBuf>();
        for _ in 0..BUFFERS {
            pool_tx.send(AlignedBuf::new(cap)).expect("pool is open");
        }
        let produced = scope.spawn(move || {
            source(Sink {
                out,
                pool,
                batch,
                cap,
            })
        });
        let (seg_tx, segments) = mpsc::channel::<Segment>();
        let (disk, part) = (t.disk, t.part);
        let tree = t.verity.map(|v| SlotTree::new(v, part));
        let readback = scope.spawn(move || read_back(disk, part, rootfs, check, tree, segments));
        let mut root = RootWriter {
            disk,
            part,
            rootfs,
            direct: matches!(check, Check::Written),
            segment: segment_len(rootfs),
            progress,
            seg_tx: Some(seg_tx),
            seg_start: 0,
            seg_sums: Vec::new(),
        };
        let mut files = BootFileWriter {
            esp: t.esp,
            kernel_path: t.kernel_path,
            initrd_path: t.initrd_path,
            kernel,
            initrd,
            file: None,
            by_index: matches!(check, Check::Table(_)),
        };
        let written = (|| -> Result<()> {
            for m in msgs.iter() {
                match m {
                    Msg::Data {
                        kind: PayloadKind::Rootfs,
                        offset,
                        mut data,
                        len,
                        last,
                    } => {
                        root.write(offset, &mut data, len)?;
                        root.advance(offset + len as u64, last)?;
                        // A closed pool means the source is done.
                        let _ = pool_tx.send(data);
                    }
                    Msg::Data {
                        kind,
                        offset,
                        data,
                        len,
                        last,
                    } => {
                        files.write(kind, offset, last, &data.as_slice()[..len])?;
                        let _ = pool_tx.send(data);
                    }
                    Msg::InPlace { offset, len, last } => root.advance(offset + len, last)?,
                }
            }
            Ok(())
        })();
        // The source's error first: a writer that stopped because the source did has none.
        drop(msgs);
        drop(pool_tx);
        let produced = produced
            .join()
            .map_err(|_| anyhow::anyhow!("the source thread panicked"))?;
        written?;
        let produced = produced?;
        if root.seg_tx.is_some() {
            anyhow::bail!("the source ended before the root image's end (bug)");
        }
        readback
            .join()
            .map_err(|_| anyhow::anyhow!("read-back thread panicked"))??;
        Ok(produced)
    })
}

/// The root image's writes onto the slot, started out segment by segment, each segment then
/// handed to the read-back thread.
struct RootWriter<'a> {
    disk: &'a Disk,
    part: &'a Partition,
    rootfs: &'a Payload,
    /// Writes may bypass the page cache: they are whole chunks of the table, so only the
    /// image's end is padded.
    direct: bool,
    /// Bytes per segment (`segment_len`).
    segment: u64,
    progress: Progress,
    /// To the read-back thread; `None` once the last segment went.
    seg_tx: Option<mpsc::Sender<Segment>>,
    seg_start: u64,
    /// [`Check::Written`]: the chunks' XXH3 sums of the segment being written.
    seg_sums: Vec<u128>,
}

impl RootWriter<'_> {
    fn write(&mut self, offset: u64, data: &mut AlignedBuf, len: usize) -> Result<()> {
        let (disk, part) = (self.disk, self.part);
        if self.direct {
            self.seg_sums.extend(
                data.as_slice()[..len]
                    .chunks(self.rootfs.chunk_size as usize)
                    .map(xxh3_128),
            );
        }
        fault::lying_medium(&mut data.as_mut_slice()[..len]);
        let end = offset + len as u64;
        // O_DIRECT pads a write to whole blocks with zeros: only where nothing of the image
        // follows in that block.
        if self.direct || end.is_multiple_of(ALIGN as u64) || end == self.rootfs.size {
            disk.write_to_device(part, offset, data, len)
        } else {
            disk.write_at(part, offset, &data.as_slice()[..len])
        }
        .with_context(|| format!("writing {} at {offset}", part.label))?;
        fault::point("slot write");
        Ok(())
    }

    /// The image is written (or in place) up to `end`: a full segment, or the last, starts
    /// being written out and goes to the read-back (the last after a sync).
    fn advance(&mut self, end: u64, last: bool) -> Result<()> {
        self.progress.update(end);
        let cs = self.rootfs.chunk_size as u64;
        // Segments end on the table's chunks (the read-back checks whole ones).
        let seg_end = if last { end } else { end / cs * cs };
        if !last && seg_end - self.seg_start < self.segment {
            return Ok(());
        }
        self.disk
            .start_writeback(self.part, self.seg_start, seg_end - self.seg_start);
        if last {
            self.disk.sync()?;
            self.progress.finish();
        }
        if let Some(tx) = &self.seg_tx {
            // A closed channel means the read-back failed; its error is collected at the end.
            let _ = tx.send(Segment {
                start: self.seg_start,
                end: seg_end,
                sums: std::mem::take(&mut self.seg_sums),
            });
        }
        self.seg_start = seg_end;
        if last {
            // The read-back finishes while the boot files are written.
            self.seg_tx = None;
        }
        Ok(())
    }
}

/// The kernel and initrd: written to the slot's files on the ESP as their verified bytes come,
/// each whole file checked against its signed digest.
struct BootFileWriter<'a, 'd> {
    esp: &'a Esp<'d>,
    kernel_path: &'a str,
    initrd_path: &'a str,
    kernel: &'a Payload,
    initrd: &'a Payload,
    /// The file being written and its running sha256.
    file: Option<(EspFile<'a, 'd>, Sha256)>,
    /// The chunks were checked against the signed chunk index (else the table).
    by_index: bool,
}

impl BootFileWriter<'_, '_> {
    /// Writes bytes of payload `kind` at `offset`: offset 0 creates the file, the last
    /// flushes it and checks the whole file's digest.
    fn write(&mut self, kind: PayloadKind, offset: u64, last: bool, bytes: &[u8]) -> Result<()> {
        let (path, p) = match kind {
            PayloadKind::Kernel => (self.kernel_path, self.kernel),
            _ => (self.initrd_path, self.initrd),
        };
        if offset == 0 {
            self.file = Some((self.esp.create(path)?, Sha256::new()));
        }
        let (f, hash) = self.file.as_mut().context("payload bytes out of order")?;
        hash.update(bytes);
        f.write_all(bytes)
            .with_context(|| format!("writing {path} on the ESP"))?;
        if last {
            f.flush()
                .with_context(|| format!("flushing {path} on the ESP"))?;
            // The chunks matched a signed digest, so a different whole-file digest is the
            // bundle's fault, not the medium's (checked here, so the caller's read-back only
            // has to judge the medium).
            let (_, hash) = self.file.take().expect("just used");
            if hash.finalize()[..] != p.sha256.0 {
                return Err(FormatError::BadManifest(format!(
                    "payload {kind}'s sha256 does not match its {}",
                    if self.by_index {
                        "chunks in the signed chunk index"
                    } else {
                        "verified chunks"
                    }
                ))
                .into());
            }
        }
        Ok(())
    }
}

/// How much of the slot is handed to the read-back thread at a time: an eighth of the image,
/// between 1 and 32 MiB, in whole chunks (the read-back trails the writes by about that much).
fn segment_len(p: &Payload) -> u64 {
    let cs = p.chunk_size as u64;
    (p.size / 8).clamp(1 << 20, 32 << 20).div_ceil(cs) * cs
}

/// Size of each slot write: 2 MiB (large writes let the device stream), but at least 8 writes
/// per image so small images still get written in several steps; whole chunks, at least one.
fn write_batch(p: &Payload) -> usize {
    let cs = p.chunk_size as u64;
    // At least one chunk: chunks may be larger than 2 MiB (up to the format's 4 MiB).
    ((p.size / 8).min(2 << 20) / cs).max(1) as usize * cs as usize
}

/// Size of each read-back read: large, so the device streams (whole chunks); a plan's 512 KiB
/// (its write batch), so the memory goes to the ranges fetched ahead.
const READBACK_IO: u64 = 2 << 20;
const PLAN_READBACK_IO: u64 = 512 << 10;

/// A written stretch of the slot, for the read-back thread: its byte range (whole chunks of
/// the table) and, for [`Check::Written`], each chunk's XXH3-128 sum.
struct Segment {
    start: u64,
    end: u64,
    sums: Vec<u128>,
}

/// The read-back thread: waits until each segment is written out, reads it from the device
/// (`O_DIRECT`, or after dropping it from the page cache) and checks every chunk of it; with
/// `tree`, the same bytes build the dm-verity tree, checked against the slot's hash area and
/// the signed root hash once the last segment is read (no second read of the slot).
fn read_back(
    disk: &Disk,
    part: &Partition,
    p: &Payload,
    check: Check,
    mut tree: Option<SlotTree>,
    segments: mpsc::Receiver<Segment>,
) -> Result<()> {
    let cs = p.chunk_size as u64;
    let io = match check {
        Check::Written => READBACK_IO,
        Check::Table(_) => PLAN_READBACK_IO,
    };
    let io = io.max(cs) / cs * cs;
    let mut buf = AlignedBuf::new(io as usize);
    let mut read_to = 0;
    for Segment { start, end, sums } in segments {
        if start != read_to {
            anyhow::bail!(
                "read-back of {} at {start}, expected {read_to} (bug)",
                part.label
            );
        }
        read_to = end;
        disk.wait_writeback(part, start, end - start);
        let mut pos = start;
        while pos < end {
            let n = io.min(end - pos);
            disk.read_from_device(part, pos, &mut buf, n as usize)
                .with_context(|| format!("reading back {} at {pos}", part.label))?;
            for i in pos / cs..(pos + n).div_ceil(cs) {
                let len = p.chunk_len(i) as usize;
                let at = i * cs;
                let data = &buf.as_slice()[(at - pos) as usize..(at - pos) as usize + len];
                let ok = match check {
                    Check::Written => {
                        sums.get((i - start / cs) as usize).copied() == Some(xxh3_128(data))
                    }
                    Check::Table(_) => Sha256::digest(data)[..] == p.chunks[i as usize].0,
                };
                if ok {
                    continue;
                }
                if let Check::Table(entries) = check {
                    if holds_index(disk, part, entries, at, at + len as u64)? {
                        return Err(FormatError::BadManifest(format!(
                            "chunk {i} of the {} payload in the signed table does not match the \
                             image, although {} reads back as the signed chunk index says: the \
                             bundle was built wrong",
                            p.kind, part.label
                        ))
                        .into());
                    }
                }
                refuse!(
                    codes::READBACK_MISMATCH,
                    "{} does not read back as written (chunk {i} at offset {at}): the medium may be failing",
                    part.label
                );
            }
            if let Some(t) = tree.as_mut() {
                t.feed(&buf.as_slice()[..n as usize])?;
            }
            pos += n;
        }
    }
    match tree {
        Some(t) => t.finish(),
        None => Ok(()),
    }
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
