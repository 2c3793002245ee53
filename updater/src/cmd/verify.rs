//! `abupdate verify`: everything `apply` checks, without writing anything.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use abbundle::{BundleReader, ChunkIndex, FormatError, Manifest, TrustedKeys};
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tracing::info;

use crate::cli::VerifyArgs;
use crate::fetch;
use crate::state::config::Config;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    api_version: &'static str,
    kind: &'static str,
    compatible: String,
    version: String,
    build_id: String,
    signed_by: String,
    bytes_verified: u64,
}

pub fn run(a: &VerifyArgs, keys_dir: &Path, config: &Config) -> Result<()> {
    let keys = TrustedKeys::load_dir(keys_dir)
        .with_context(|| format!("loading trusted keys from {}", keys_dir.display()))?;
    let start = Instant::now();
    // The same source as apply's: a file, a block device (read up to the bundle's end), a URL.
    let stream = fetch::open(&a.bundle, config)?;
    let shown = fetch::redact(&a.bundle);
    let mut reader =
        BundleReader::open(stream, &keys).with_context(|| format!("verifying {shown}"))?;
    if let Some(c) = a.compatible.as_ref().or(config.compatible.as_ref()) {
        reader.check_compatible(c)?;
    }
    check_payloads(&mut reader).with_context(|| format!("verifying {shown}"))?;
    let m = reader.manifest();
    let bytes: u64 = m.payloads.iter().map(|p| p.size).sum();
    let report = Report {
        api_version: "abupdate/v1",
        kind: "VerifyReport",
        compatible: m.compatible.clone(),
        version: m.version.to_string(),
        build_id: m.build_id.clone(),
        signed_by: reader.signed_by().to_string(),
        bytes_verified: bytes,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "OK: {} version {} for '{}', signed by {}, {} bytes verified",
            shown, report.version, report.compatible, report.signed_by, bytes
        );
    }
    info!("verified in {:.2?}", start.elapsed());
    Ok(())
}

/// Reads every chunk (each checked against the signed chunk table by the reader) and also
/// checks, on two more threads so that the bytes are read once and the three hashes run side
/// by side:
/// - each payload's whole-file sha256 from the manifest: a signed manifest whose sha256 does
///   not match its own chunks was built wrong, and apply's ESP read-back compares the kernel and
///   initrd with that sha256;
/// - format 2: each chunk of the signed CDC index, which a delta apply installs from: an index
///   that does not describe the payloads it signs was built wrong too;
/// - with `abinit.verity=`: the root payload's dm-verity tree and root hash (apply finds a
///   mismatch only after writing the slot, exit 46; `verify` before anything is written).
///
/// Any of these is a malformed bundle (exit 10).
fn check_payloads<R: Read>(reader: &mut BundleReader<R>) -> Result<(), FormatError> {
    let m = reader.manifest().clone();
    let index = reader.index().cloned();
    let cap = m
        .payloads
        .iter()
        .map(|p| p.chunk_size as usize)
        .fold(BATCH, usize::max);
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (pool_tx, pool_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 0..BUFFERS {
            pool_tx.send(vec![0u8; cap]).expect("pool is open");
        }
        let (whole_tx, whole_rx) = mpsc::sync_channel::<Arc<Batch>>(BUFFERS);
        let (index_tx, index_rx) = mpsc::sync_channel::<Arc<Batch>>(BUFFERS);
        let (verity_tx, verity_rx) = mpsc::sync_channel::<Arc<Batch>>(BUFFERS);
        let (m, failed) = (&m, &failed);
        let whole = {
            let pool = pool_tx.clone();
            scope.spawn(move || hasher(whole_rx, pool, failed, WholeCheck::new(m)))
        };
        let indexed = index.map(|index| {
            let pool = pool_tx.clone();
            scope.spawn(move || hasher(index_rx, pool, failed, IndexCheck::new(m, index)))
        });
        let verity = m.verity().map(|v| {
            let pool = pool_tx.clone();
            scope.spawn(move || hasher(verity_rx, pool, failed, VerityCheck::new(&v)))
        });
        drop(pool_tx);
        let read = read_batches(reader, cap, &pool_rx, failed, |b| {
            let b = Arc::new(b);
            let to_verity = b.payload == 0 && verity.is_some();
            let sent = whole_tx.send(b.clone()).is_ok()
                && (!to_verity || verity_tx.send(b.clone()).is_ok());
            sent && (indexed.is_none() || index_tx.send(b).is_ok())
        });
        drop((whole_tx, index_tx, verity_tx));
        let whole = whole.join().expect("hash thread panicked");
        let indexed = indexed.map_or(Ok(()), |t| t.join().expect("hash thread panicked"));
        let verity = verity.map_or(Ok(()), |t| t.join().expect("hash thread panicked"));
        // The hashers judge bytes the reader already checked: their verdict comes first.
        whole.and(indexed).and(verity).and(read)
    })
}

/// Bytes of payload handed to the hash threads at a time (at least one chunk).
const BATCH: usize = 1 << 20;
/// Batch buffers in flight.
const BUFFERS: usize = 4;

/// A run of verified bytes of one payload.
struct Batch {
    /// The payload (its place in the manifest).
    payload: usize,
    data: Vec<u8>,
    len: usize,
}

/// Reads the payloads into batches (buffers from `pool`, up to `cap` bytes of one payload
/// each) and hands each to `send`, until the end, an error, `send` returning false or `failed`.
fn read_batches<R: Read>(
    reader: &mut BundleReader<R>,
    cap: usize,
    pool: &mpsc::Receiver<Vec<u8>>,
    failed: &AtomicBool,
    mut send: impl FnMut(Batch) -> bool,
) -> Result<(), FormatError> {
    let mut payload = 0;
    let mut cur: Option<Batch> = None;
    loop {
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some((kind, len)) = reader.upcoming() else {
            return Ok(());
        };
        if cur.is_none() {
            let Ok(data) = pool.recv() else { return Ok(()) };
            cur = Some(Batch {
                payload,
                data,
                len: 0,
            });
        }
        let b = cur.as_mut().expect("just set");
        let Some(c) = reader.next_chunk_into(&mut b.data[b.len..])? else {
            unreachable!("upcoming() promised a chunk of {kind}")
        };
        b.len += c.len;
        if c.last {
            payload += 1;
        }
        if (c.last || b.len + len > cap) && !send(cur.take().expect("just set")) {
            return Ok(());
        }
    }
}

/// A check run over the batches in order.
trait Check {
    fn feed(&mut self, payload: usize, data: &[u8]) -> Result<(), FormatError>;
}

/// A hash thread: feeds every batch to `check` until the first error, then only gives the
/// buffers back (so the reader never waits for one) until the reader is done.
fn hasher(
    batches: mpsc::Receiver<Arc<Batch>>,
    pool: mpsc::Sender<Vec<u8>>,
    failed: &AtomicBool,
    mut check: impl Check,
) -> Result<(), FormatError> {
    let mut result = Ok(());
    for b in batches {
        if result.is_ok() {
            result = check.feed(b.payload, &b.data[..b.len]);
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
        }
        // The last of the two threads to be done with a batch returns its buffer.
        if let Some(b) = Arc::into_inner(b) {
            let _ = pool.send(b.data);
        }
    }
    result
}

/// Each payload's bytes against its whole-file sha256.
struct WholeCheck<'a> {
    m: &'a Manifest,
    payload: usize,
    left: u64,
    h: Sha256,
}

impl<'a> WholeCheck<'a> {
    fn new(m: &'a Manifest) -> Self {
        WholeCheck {
            m,
            payload: 0,
            left: m.payloads.first().map_or(0, |p| p.size),
            h: Sha256::new(),
        }
    }
}

impl Check for WholeCheck<'_> {
    fn feed(&mut self, payload: usize, data: &[u8]) -> Result<(), FormatError> {
        debug_assert_eq!(payload, self.payload);
        self.h.update(data);
        self.left -= data.len() as u64;
        if self.left == 0 {
            let p = &self.m.payloads[self.payload];
            if self.h.finalize_reset()[..] != p.sha256.0 {
                return Err(FormatError::BadManifest(format!(
                    "the {} payload does not match the sha256 in the signed manifest, although \
                     every chunk does: the bundle was built wrong",
                    p.kind
                )));
            }
            self.payload += 1;
            self.left = self.m.payloads.get(self.payload).map_or(0, |p| p.size);
        }
        Ok(())
    }
}

/// Each payload's bytes against its chunks in the signed CDC index (format 2).
struct IndexCheck<'a> {
    m: &'a Manifest,
    index: ChunkIndex,
    /// The entry being hashed, its payload, and its bytes still to come.
    payload: usize,
    entry: usize,
    left: u64,
    /// Where the entry starts in its payload (for the message).
    at: u64,
    h: Sha256,
}

impl<'a> IndexCheck<'a> {
    fn new(m: &'a Manifest, index: ChunkIndex) -> Self {
        IndexCheck {
            m,
            index,
            payload: 0,
            entry: 0,
            left: 0,
            at: 0,
            h: Sha256::new(),
        }
    }
}

impl Check for IndexCheck<'_> {
    fn feed(&mut self, payload: usize, mut data: &[u8]) -> Result<(), FormatError> {
        if payload != self.payload {
            // ChunkIndex::decode checked that each payload's entries add up to its size, so
            // the previous payload ended with its last entry.
            (self.payload, self.entry, self.left, self.at) = (payload, 0, 0, 0);
        }
        let entries = &self.index.payloads[payload];
        while !data.is_empty() {
            let e = &entries[self.entry];
            if self.left == 0 {
                self.left = e.len as u64;
            }
            let n = data.len().min(self.left as usize);
            self.h.update(&data[..n]);
            data = &data[n..];
            self.left -= n as u64;
            if self.left == 0 {
                if self.h.finalize_reset()[..] != e.digest.0 {
                    return Err(FormatError::BadManifest(format!(
                        "chunk {} of the {} payload in the signed chunk index (bytes {}-{}) does \
                         not match the payload, although every chunk of the signed table does: \
                         the bundle was built wrong",
                        self.entry,
                        self.m.payloads[payload].kind,
                        self.at,
                        self.at + e.len as u64 - 1
                    )));
                }
                self.at += e.len as u64;
                self.entry += 1;
            }
        }
        Ok(())
    }
}

/// The root payload against its signed dm-verity parameters (`abbundle::verity::StreamCheck`).
struct VerityCheck(Option<abbundle::verity::StreamCheck>);

impl VerityCheck {
    fn new(v: &abbundle::verity::Verity) -> Self {
        VerityCheck(Some(abbundle::verity::StreamCheck::new(v)))
    }
}

impl Check for VerityCheck {
    fn feed(&mut self, payload: usize, data: &[u8]) -> Result<(), FormatError> {
        debug_assert_eq!(payload, 0, "only the root payload is sent");
        let bad = |e: abbundle::verity::CheckError| {
            FormatError::BadManifest(format!(
                "the rootfs payload does not match its signed dm-verity parameters, although \
                 every chunk does: {e}: the bundle was built wrong"
            ))
        };
        let c = self.0.as_mut().expect("fed until finished");
        c.feed(data).map_err(bad)?;
        if c.done() {
            self.0.take().expect("just used").finish().map_err(bad)?;
        }
        Ok(())
    }
}
