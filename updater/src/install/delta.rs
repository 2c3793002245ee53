//! Delta planning for format 2 bundles: which chunks of the signed chunk index the device
//! already holds ("seeds": both root slots for the root image, both slots' boot files on the
//! ESP for kernel and initrd), and which byte ranges of the bundle it would have to read.
//!
//! The staying slot's chunks come from its stored slot index (`abbundle::slot_index`: the
//! signed index's entries of the image it holds, written after the image when it was
//! installed) when that names exactly the image its info.json describes; otherwise the slot is
//! cut with the same FastCDC parameters as the index (`abbundle::index`) and each of its chunks
//! hashed with SHA-256. Either way a chunk whose digest is in the new index is remembered by
//! where the slot holds it, and hashed again when it is copied. The target slot is read only
//! when its slot index names the new image (written before the image, so an interrupted apply
//! of this bundle leaves it): then each chunk is checked at its own offset, and what an
//! interrupted apply already wrote is kept (the resume).
//!
//! Memory is bounded by the index, not the seeds: per index entry, a sorted key (8 bytes of
//! digest and the entry number: 16 bytes with padding) and an optional location (24 bytes),
//! plus the index's own 36: 76 bytes per chunk, ~5 MiB for a 1 GiB root at 16 KiB chunks
//! (65 536 entries), whatever the size of the seeds, which are read one chunk (64 KiB at most)
//! at a time through a 1 MiB buffer.

use std::io::{self, Read};

use abbundle::index::{self, Entry};
use abbundle::slot_index;
use abbundle::{ChunkIndex, Manifest, Payload, PayloadKind};
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tracing::{debug, info};

use crate::boot::{Slot, SlotInfo};
use crate::disk::esp::Esp;
use crate::disk::{Disk, Partition};
use crate::fault;

/// Seed numbers ([`Loc::seed`]): what each seed is.
pub mod seed {
    /// The target slot, chunks at their own offset (written by an interrupted apply).
    pub const TARGET_IN_PLACE: u8 = 0;
    /// The slot that stays (the running one).
    pub const KEEP_SLOT: u8 = 1;
    /// The target slot's boot file on the ESP, when it already equals the payload.
    pub const TARGET_FILE: u8 = 2;
    /// The staying slot's boot file of the same kind (kernel or initrd) on the ESP.
    pub const KEEP_FILE: u8 = 3;
}

/// Finds the chunks of `index` the device holds (one map per payload), reading nothing of the
/// bundle and writing nothing:
/// - the root image: the target slot's chunks already in place, if its slot index says an
///   apply of this image was there (what an interrupted apply wrote: the resume; each chunk
///   hashed at its offset), then the slot that stays: by its stored slot index
///   ([`abbundle::slot_index`]) when that names exactly the image its info.json (`keep_info`)
///   says the slot holds, else by cutting and hashing its first `rootfsSize` bytes (all of it
///   without an info.json);
/// - kernel and initrd: the target's file if it already equals the payload (then it is not
///   written again), else the staying slot's file of the same kind. (Chunks of the target's own
///   old file are not used: the new file replaces it as it is written.)
///
/// A stored index is not trusted: every chunk copied by it is hashed against the signed index
/// when it is read (`delta_apply`), and read from the bundle if the slot does not hold it.
pub fn find_seeds<'a>(
    disk: &Disk,
    esp: &Esp,
    target: Slot,
    keep_info: Option<&SlotInfo>,
    m: &Manifest,
    index: &'a ChunkIndex,
) -> Result<(Vec<SeedMap<'a>>, Vec<SeedUse>)> {
    let mut maps: Vec<SeedMap> = index.payloads.iter().map(|e| SeedMap::new(e)).collect();
    let mut seeds = Vec::new();
    let keep = target.other();
    let root = m.payload(PayloadKind::Rootfs);
    let tpart = disk.partition(target.partition_label())?;
    // The target slot counts only if an apply of this very image was there (its slot index,
    // written before the image, names it): then its chunks are checked where they belong.
    // Otherwise it holds an older image, whose chunks rarely sit where the new image has them
    // and would be overwritten before they are copied elsewhere: it is not read at all.
    match slot_index::read(
        tpart.len,
        root.size,
        &root.sha256,
        |at, buf| disk.read_at(tpart, at, buf),
        |_, _| {},
    ) {
        Ok(_) => {
            let n = maps[0]
                .check_in_place(
                    seed::TARGET_IN_PLACE,
                    buffered(disk.reader(tpart, root.size)),
                )
                .with_context(|| format!("reading slot {target} ({})", tpart.label))?;
            seeds.push(SeedUse {
                name: format!("slot {target} (in place: an earlier apply of this image)"),
                scanned_bytes: n,
            });
        }
        Err(why) => {
            debug!("slot {target} is not read: {why}");
            seeds.push(SeedUse {
                name: format!("slot {target} (not read: holds no earlier apply of this image)"),
                scanned_bytes: 0,
            });
        }
    }
    let kpart = disk.partition(keep.partition_label())?;
    let seed = if maps[0].all_from(seed::TARGET_IN_PLACE) {
        SeedUse {
            name: format!("slot {keep}"),
            scanned_bytes: 0,
        }
    } else {
        let stored = match keep_info {
            Some(info) => read_stored(disk, kpart, info, &mut maps[0]),
            None => Err("it has no info.json".to_string()),
        };
        match stored {
            Ok(n) => SeedUse {
                name: format!("slot {keep} (stored index)"),
                scanned_bytes: n,
            },
            Err(why) => {
                info!("slot {keep}'s stored seed index is not used ({why}): scanning the slot");
                let len = keep_info.map_or(u64::MAX, |i| i.rootfs_size);
                let n = maps[0]
                    .scan(seed::KEEP_SLOT, buffered(disk.reader(kpart, len)))
                    .with_context(|| format!("reading slot {keep} ({})", kpart.label))?;
                SeedUse {
                    name: format!("slot {keep} (scanned)"),
                    scanned_bytes: n,
                }
            }
        }
    };
    seeds.push(seed);
    let (tfiles, kfiles) = (target.files(), keep.files());
    for (i, (tpath, kpath)) in [
        (&tfiles.kernel, &kfiles.kernel),
        (&tfiles.initrd, &kfiles.initrd),
    ]
    .into_iter()
    .enumerate()
    {
        let p = &m.payloads[i + 1];
        let map = &mut maps[i + 1];
        if esp.exists(tpath) && esp.hash_file(tpath)? == (p.sha256.0, p.size) {
            map.all_in_place(seed::TARGET_FILE);
            seeds.push(SeedUse {
                name: format!("ESP {tpath} (equal)"),
                scanned_bytes: p.size,
            });
            continue;
        }
        let n = esp
            .read_with(kpath, |r| map.scan(seed::KEEP_FILE, r))?
            .unwrap_or(0);
        seeds.push(SeedUse {
            name: format!("ESP {kpath}"),
            scanned_bytes: n,
        });
    }
    Ok((maps, seeds))
}

/// Records in `map` the chunks the staying slot holds by its stored seed index, if that is
/// valid and names the image `info` says the slot holds. Returns the record's length, or why
/// it is not used (then `map` is unchanged).
fn read_stored(
    disk: &Disk,
    part: &Partition,
    info: &SlotInfo,
    map: &mut SeedMap,
) -> Result<u64, String> {
    let sha = abbundle::Digest(
        hex::decode(&info.rootfs_sha256)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or("its info.json's rootfsSha256 is not a SHA-256")?,
    );
    slot_index::read(
        part.len,
        info.rootfs_size,
        &sha,
        |at, buf| disk.read_at(part, at, buf),
        |at, e| map.note(seed::KEEP_SLOT, at, e.len, &e.digest.0),
    )
}

/// Writes the seed index of the root image `p` (`entries`: its chunks in the signed index)
/// after the image in the target slot `part`, and syncs it: the next update finds the chunks
/// this slot holds without reading the slot. Written before the image, so a re-run after a cut
/// finds it too. Skipped (logged) when the slot has no room for it after the image.
pub fn store_index(disk: &Disk, part: &Partition, p: &Payload, entries: &[Entry]) -> Result<()> {
    let n = entries.len() as u64;
    if !slot_index::fits(p.size, n, part.len) {
        info!(
            "{} has no room for the seed index ({} bytes) after the image: the next delta update \
             scans the slot instead",
            part.label,
            slot_index::record_len(n)
        );
        return Ok(());
    }
    slot_index::write(p.size, &p.sha256, entries, |at, b| {
        disk.write_at(part, at, b)
    })
    .with_context(|| format!("writing the seed index into {}", part.label))?;
    fault::point("slot index write");
    disk.sync()
}

fn buffered<R: Read>(r: R) -> io::BufReader<R> {
    io::BufReader::with_capacity(1 << 20, r)
}

/// Two missing runs of a payload closer than this are fetched in one request, the bytes in
/// between included: two average chunks, less than a round trip costs on a slow link
/// (32 KiB at 10 Mbit/s is 26 ms), so fewer, larger requests win.
pub const MERGE_GAP: u64 = 32 * 1024;

/// When the plan would fetch more than this share (in percent) of the bundle's payload bytes,
/// the full stream is read instead: range requests would save little and cost round trips.
pub const FULL_STREAM_PERCENT: u64 = 80;

/// Where a seed holds a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Index into the seed list the caller scanned.
    pub seed: u8,
    /// Byte offset in that seed.
    pub offset: u64,
}

/// One payload's index entries and where seeds hold them.
pub struct SeedMap<'a> {
    entries: &'a [Entry],
    /// (first 8 digest bytes, entry number), sorted: a lookup is a binary search.
    keys: Vec<(u64, u32)>,
    found: Vec<Option<Loc>>,
}

fn prefix(d: &[u8; 32]) -> u64 {
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

impl<'a> SeedMap<'a> {
    pub fn new(entries: &'a [Entry]) -> SeedMap<'a> {
        let mut keys: Vec<(u64, u32)> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (prefix(&e.digest.0), i as u32))
            .collect();
        keys.sort_unstable();
        SeedMap {
            entries,
            keys,
            found: vec![None; entries.len()],
        }
    }

    /// Cuts `r` into chunks as the index was cut and records every chunk the index names
    /// (the first seed that holds a chunk wins). Returns the bytes read.
    pub fn scan<R: Read>(&mut self, seed: u8, r: R) -> io::Result<u64> {
        let mut offset = 0u64;
        index::for_each_chunk(r, |data| {
            self.note(
                seed,
                offset,
                data.len() as u32,
                &Sha256::digest(data).into(),
            );
            offset += data.len() as u64;
            Ok(())
        })
    }

    /// Records that `seed` holds a chunk of `len` bytes with SHA-256 `digest` at `offset`, if
    /// the index names it and no seed before did.
    pub fn note(&mut self, seed: u8, offset: u64, len: u32, digest: &[u8; 32]) {
        let p = prefix(digest);
        let start = self.keys.partition_point(|k| k.0 < p);
        for &(kp, i) in &self.keys[start..] {
            if kp != p {
                break;
            }
            let e = &self.entries[i as usize];
            if e.digest.0 == *digest && e.len == len && self.found[i as usize].is_none() {
                self.found[i as usize] = Some(Loc { seed, offset });
            }
        }
    }

    /// Records the chunks `r` (what will be overwritten: the target slot) holds at their own
    /// offset in the payload, hashing each entry's bytes where the index puts them: only a
    /// chunk already in place can be kept; one elsewhere would be gone before it is copied.
    /// Returns the bytes read.
    pub fn check_in_place<R: Read>(&mut self, seed: u8, mut r: R) -> io::Result<u64> {
        let mut buf = vec![0u8; index::MAX_CHUNK as usize];
        let mut offset = 0u64;
        for (e, f) in self.entries.iter().zip(&mut self.found) {
            let data = &mut buf[..e.len as usize];
            match r.read_exact(data) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(err) => return Err(err),
            }
            if f.is_none() && e.digest.0[..] == Sha256::digest(&*data)[..] {
                *f = Some(Loc { seed, offset });
            }
            offset += e.len as u64;
        }
        Ok(offset)
    }

    /// Marks every entry as held in place by `seed` (a boot file equal to the payload).
    pub fn all_in_place(&mut self, seed: u8) {
        let mut offset = 0;
        for (f, e) in self.found.iter_mut().zip(self.entries) {
            *f = Some(Loc { seed, offset });
            offset += e.len as u64;
        }
    }

    /// Whether every entry is held by `seed` in place.
    pub fn all_from(&self, seed: u8) -> bool {
        self.found.iter().all(|f| f.is_some_and(|l| l.seed == seed))
    }

    /// Where a seed holds entry `i`, if any does.
    pub fn loc(&self, i: usize) -> Option<Loc> {
        self.found[i]
    }

    pub fn entries(&self) -> &[Entry] {
        self.entries
    }
}

/// A byte range of the bundle to read: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

/// A range grows to at most this many bytes (whole chunks): the pipeline fetches several
/// ahead at once, so a long run of missing chunks is several requests in flight together
/// rather than one, and a range's bytes wait in memory for the writer (docs/updater.md).
pub const RANGE_MAX: u64 = 512 * 1024;

/// The missing chunks of `p` as bundle ranges, neighbours closer than [`MERGE_GAP`] merged, each
/// at most [`RANGE_MAX`] long (a longer chunk alone).
pub fn ranges(p: &Payload, map: &SeedMap) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::new();
    let mut at = p.offset;
    for (i, e) in map.entries().iter().enumerate() {
        let end = at + e.len as u64;
        if map.loc(i).is_none() {
            match out.last_mut() {
                Some(r) if at - r.end <= MERGE_GAP && end - r.start <= RANGE_MAX => r.end = end,
                _ => out.push(Range { start: at, end }),
            }
        }
        at = end;
    }
    out
}

/// What one payload would cost.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PayloadPlan {
    pub kind: String,
    pub size: u64,
    pub chunks: u64,
    pub fetch_chunks: u64,
    pub fetch_bytes: u64,
    pub copy_chunks: u64,
    pub copy_bytes: u64,
    /// Bytes read from the bundle, the gaps merged into requests included.
    pub read_bytes: u64,
    pub requests: u64,
    /// The bundle's byte ranges `[start, end)` those requests ask for, in order.
    pub ranges: Vec<Range>,
}

/// What applying a bundle would read and copy.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub version: String,
    pub target_slot: String,
    pub format: u32,
    /// `delta` (ranges of the bundle) or `full` (the whole stream: a format 1 bundle, or a
    /// delta that would read most of it anyway).
    pub mode: &'static str,
    /// Why this mode, in words.
    pub reason: &'static str,
    pub bundle_bytes: u64,
    /// Header, manifest, signatures and index: read first, in one request.
    pub front_bytes: u64,
    pub payloads: Vec<PayloadPlan>,
    /// Totals: bytes read from the bundle (front included), requests (front included), and
    /// bytes copied from seeds.
    pub read_bytes: u64,
    pub requests: u64,
    pub copy_bytes: u64,
    /// Seeds scanned and how many bytes each had to read.
    pub seeds: Vec<SeedUse>,
}

/// A seed and what scanning it read.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedUse {
    pub name: String,
    pub scanned_bytes: u64,
}

impl PayloadPlan {
    pub fn of(p: &Payload, map: &SeedMap) -> PayloadPlan {
        let mut pp = PayloadPlan {
            kind: p.kind.to_string(),
            size: p.size,
            chunks: map.entries().len() as u64,
            ..Default::default()
        };
        for (i, e) in map.entries().iter().enumerate() {
            if map.loc(i).is_some() {
                pp.copy_chunks += 1;
                pp.copy_bytes += e.len as u64;
            } else {
                pp.fetch_chunks += 1;
                pp.fetch_bytes += e.len as u64;
            }
        }
        let rs = ranges(p, map);
        pp.requests = rs.len() as u64;
        pp.read_bytes = rs.iter().map(|r| r.end - r.start).sum();
        pp.ranges = rs;
        pp
    }
}

impl Plan {
    /// The plan for `m` with its index, given each payload's seed map; `front` is where the
    /// index ends (everything a delta reads before the payloads).
    pub fn new(
        m: &Manifest,
        index: Option<&ChunkIndex>,
        maps: &[SeedMap],
        front: u64,
        bundle_bytes: u64,
        target: &str,
        seeds: Vec<SeedUse>,
    ) -> Plan {
        let payloads: Vec<PayloadPlan> = match index {
            Some(_) => m
                .payloads
                .iter()
                .zip(maps)
                .map(|(p, map)| PayloadPlan::of(p, map))
                .collect(),
            None => Vec::new(),
        };
        let payload_bytes: u64 = m.payloads.iter().map(|p| p.size).sum();
        let read: u64 = payloads.iter().map(|p| p.read_bytes).sum();
        let delta = index.is_some() && read * 100 <= payload_bytes * FULL_STREAM_PERCENT;
        let (read_bytes, requests, copy_bytes) = if delta {
            (
                front + read,
                1 + payloads.iter().map(|p| p.requests).sum::<u64>(),
                payloads.iter().map(|p| p.copy_bytes).sum(),
            )
        } else {
            (bundle_bytes, 1, 0)
        };
        Plan {
            api_version: crate::state::API_VERSION,
            kind: "ApplyPlan",
            version: m.version.to_string(),
            target_slot: target.to_string(),
            format: m.format,
            mode: if delta { "delta" } else { "full" },
            reason: if delta {
                "only missing chunks are read"
            } else if m.format == abbundle::FORMAT_V1 {
                "format 1 has no chunk index"
            } else {
                "a delta would read most of it"
            },
            bundle_bytes,
            front_bytes: front,
            payloads,
            read_bytes,
            requests,
            copy_bytes,
            seeds,
        }
    }

    /// The human-readable plan.
    pub fn text(&self) -> String {
        let pct = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                a as f64 * 100.0 / b as f64
            }
        };
        let mut s = format!(
            "plan: version {} into slot {}, format {} bundle of {} bytes: {} ({})\n",
            self.version,
            self.target_slot,
            self.format,
            self.bundle_bytes,
            if self.mode == "delta" {
                "delta"
            } else {
                "full stream"
            },
            self.reason
        );
        for p in &self.payloads {
            s += &format!(
                "  {:<6} {} bytes in {} chunks: fetch {} bytes ({} chunks), copy {} bytes ({} chunks) from seeds, {} requests\n",
                p.kind, p.size, p.chunks, p.fetch_bytes, p.fetch_chunks, p.copy_bytes, p.copy_chunks, p.requests
            );
        }
        for seed in &self.seeds {
            s += &format!(
                "  seed {}: {} bytes scanned\n",
                seed.name, seed.scanned_bytes
            );
        }
        s += &format!(
            "  total: read {} bytes of {} ({:.2}%) in {} requests (front: {} bytes), copy {} bytes from seeds\n",
            self.read_bytes,
            self.bundle_bytes,
            pct(self.read_bytes, self.bundle_bytes),
            self.requests,
            self.front_bytes,
            self.copy_bytes
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abbundle::index::cut;

    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn seeds_cover_unchanged_chunks_and_ranges_merge() {
        let old = noise(1 << 20, 5);
        let mut new = old.clone();
        // Two changes 20 KiB apart (merged into one request) and one far away.
        for at in [200_000, 220_000, 800_000] {
            new[at] ^= 0xff;
        }
        let entries = cut(&new[..]).unwrap();
        let mut map = SeedMap::new(&entries);
        assert_eq!(map.scan(0, &old[..]).unwrap(), 1 << 20);
        let missing: Vec<usize> = (0..entries.len())
            .filter(|&i| map.loc(i).is_none())
            .collect();
        assert!((2..=6).contains(&missing.len()), "{missing:?}");
        let p = Payload {
            kind: abbundle::PayloadKind::Rootfs,
            offset: 4096,
            size: 1 << 20,
            sha256: abbundle::Digest([0; 32]),
            chunk_size: 4096,
            chunks: vec![],
        };
        let rs = ranges(&p, &map);
        assert_eq!(rs.len(), 2, "{rs:?}");
        // Every changed byte is inside a range; each range starts at a chunk boundary.
        for at in [200_000u64, 220_000, 800_000] {
            assert!(rs.iter().any(|r| (r.start..r.end).contains(&(4096 + at))));
        }
        // A chunk held by the seed is found at its offset there, byte for byte.
        let (i, loc) = (0..entries.len())
            .find_map(|i| map.loc(i).map(|l| (i, l)))
            .unwrap();
        let start: u64 = entries[..i].iter().map(|e| e.len as u64).sum();
        let len = entries[i].len as usize;
        assert_eq!(
            old[loc.offset as usize..][..len],
            new[start as usize..][..len]
        );
    }

    #[test]
    fn an_unrelated_seed_supplies_nothing() {
        let entries = cut(&noise(300_000, 1)[..]).unwrap();
        let mut map = SeedMap::new(&entries);
        map.scan(0, &noise(300_000, 2)[..]).unwrap();
        assert!((0..entries.len()).all(|i| map.loc(i).is_none()));
    }
}
