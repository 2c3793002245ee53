//! The content-defined chunk index of format version 2: every payload cut into chunks by
//! FastCDC (the 2020 variant of Xia et al., `fastcdc` crate, normalization level 1, seed 0),
//! each chunk's length and SHA-256 in payload order. A device that already holds most of an
//! image (its other slot) finds the unchanged chunks by cutting what it holds the same way,
//! and fetches only the rest (`docs/bundle-format.md`, "Chunk index").
//!
//! Stored binary, right after the signatures, so that header, manifest, signatures and index
//! are one contiguous range at the front of the bundle. The signed manifest names its length
//! and SHA-256 ([`IndexRef`]), so the index is covered by the signature.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::FormatError;
use crate::manifest::Digest;

/// Smallest chunk FastCDC cuts (except a payload's last). A quarter of the average, as the
/// FastCDC paper's normalized chunking uses: smaller minimums find more matches but cost
/// index entries (36 bytes each).
pub const MIN_CHUNK: u32 = 4 * 1024;
/// Average chunk: 16 KiB, measured on squashfs images of real Nix closures (docs/builder.md,
/// `DESIGN.md`): an unchanged file's compressed blocks stay byte-identical when they move, and
/// 16 KiB chunks fetch 2.7% of the image for a leaf package change, where 64 KiB (casync's
/// default) fetched 3.4%. The index costs 36 bytes per chunk: 0.22% of the payload.
pub const AVG_CHUNK: u32 = 16 * 1024;
/// Largest chunk: four times the average. Bounds the buffer of whoever checks chunks one at a
/// time, and half a squashfs data block (128 KiB), so a changed block spreads to few chunks.
pub const MAX_CHUNK: u32 = 64 * 1024;

/// One index entry as stored: chunk length (u32, little-endian) then its SHA-256.
pub const ENTRY_LEN: usize = 4 + 32;

/// The manifest's description of the index (format 2 only): it is signed, so the index is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexRef {
    /// Offset of the index in the bundle: where the signatures end.
    pub offset: u64,
    /// Length in bytes: `ENTRY_LEN` times the number of entries.
    pub size: u64,
    /// SHA-256 of the index bytes.
    pub sha256: Digest,
    /// FastCDC parameters the index was cut with (a device cuts its seeds with the same).
    pub min_chunk: u32,
    pub avg_chunk: u32,
    pub max_chunk: u32,
    /// Number of entries of each payload, in payload order (rootfs, kernel, initrd).
    pub chunks: Vec<u64>,
}

/// One chunk: its length and SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub len: u32,
    pub digest: Digest,
}

/// Cuts `r` into FastCDC chunks with the format's parameters, calling `each` with every
/// chunk's bytes in order. Memory: one `MAX_CHUNK` buffer and one chunk.
pub fn for_each_chunk<R: Read>(
    r: R,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut total = 0;
    for c in fastcdc::v2020::StreamCDC::new(r, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
        let c = c.map_err(io::Error::from)?;
        each(&c.data)?;
        total += c.length as u64;
    }
    Ok(total)
}

/// The index entries of one payload read from `r`.
pub fn cut<R: Read>(r: R) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for_each_chunk(r, |data| {
        out.push(Entry {
            len: data.len() as u32,
            digest: Digest(Sha256::digest(data).into()),
        });
        Ok(())
    })?;
    Ok(out)
}

/// Encodes entries as stored.
pub fn encode(entries: &[Entry], out: &mut Vec<u8>) {
    for e in entries {
        out.extend_from_slice(&e.len.to_le_bytes());
        out.extend_from_slice(&e.digest.0);
    }
}

/// A decoded, checked index: each payload's chunks with their offsets in the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkIndex {
    /// Per payload (manifest order): the entries.
    pub payloads: Vec<Vec<Entry>>,
}

impl ChunkIndex {
    /// Decodes `bytes` (already matched against `r.sha256`) and checks it against the
    /// payload sizes: every length within the FastCDC bounds, each payload's lengths adding up
    /// to its size.
    pub fn decode(bytes: &[u8], r: &IndexRef, sizes: &[u64]) -> Result<ChunkIndex, FormatError> {
        let bad = |s: String| FormatError::BadIndex(s);
        let mut payloads = Vec::with_capacity(sizes.len());
        let mut at = 0usize;
        for (p, (&n, &size)) in r.chunks.iter().zip(sizes).enumerate() {
            let mut entries = Vec::with_capacity(n as usize);
            let mut sum = 0u64;
            for i in 0..n {
                let e = &bytes[at..at + ENTRY_LEN];
                at += ENTRY_LEN;
                let len = u32::from_le_bytes(e[..4].try_into().unwrap());
                let last = i + 1 == n;
                if len == 0 || len > r.max_chunk || (!last && len < r.min_chunk) {
                    return Err(bad(format!("payload {p} chunk {i} has length {len}")));
                }
                sum += len as u64;
                entries.push(Entry {
                    len,
                    digest: Digest(e[4..].try_into().unwrap()),
                });
            }
            if sum != size {
                return Err(bad(format!(
                    "payload {p}'s chunks add up to {sum} bytes, the payload has {size}"
                )));
            }
            payloads.push(entries);
        }
        Ok(ChunkIndex { payloads })
    }
}

/// Checks the manifest's [`IndexRef`] on its own: parameters as this format fixes them, sizes
/// that fit the entry count, one count per payload.
pub fn check_ref(r: &IndexRef, signatures_end: u64, payloads: usize) -> Result<(), String> {
    if (r.min_chunk, r.avg_chunk, r.max_chunk) != (MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
        return Err(format!(
            "chunk index cut with {}/{}/{} (this format uses {MIN_CHUNK}/{AVG_CHUNK}/{MAX_CHUNK})",
            r.min_chunk, r.avg_chunk, r.max_chunk
        ));
    }
    if r.offset != signatures_end {
        return Err(format!(
            "chunk index at offset {} (expected {signatures_end}, after the signatures)",
            r.offset
        ));
    }
    if r.chunks.len() != payloads {
        return Err(format!("chunk index has {} payloads", r.chunks.len()));
    }
    // Checked: the counts come from the file (an unverified one, for `inspect`).
    let entries = r
        .chunks
        .iter()
        .try_fold(0u64, |a, &n| a.checked_add(n))
        .and_then(|n| n.checked_mul(ENTRY_LEN as u64));
    if entries != Some(r.size) {
        return Err(format!(
            "chunk index of {} bytes does not hold the {:?} entries it counts",
            r.size, r.chunks
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
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
    fn chunks_cover_the_input_within_bounds() {
        let data = pseudo(1 << 20, 7);
        let e = cut(&data[..]).unwrap();
        assert_eq!(e.iter().map(|e| e.len as u64).sum::<u64>(), 1 << 20);
        let (first, last) = e.split_at(e.len() - 1);
        assert!(first
            .iter()
            .all(|e| (MIN_CHUNK..=MAX_CHUNK).contains(&e.len)));
        assert!(last[0].len <= MAX_CHUNK);
        // About 64 chunks of 16 KiB on average; FastCDC's normalization keeps it close.
        assert!((40..=100).contains(&e.len()), "{} chunks", e.len());
    }

    #[test]
    fn counts_that_overflow_are_refused_not_a_panic() {
        let r = IndexRef {
            offset: 100,
            size: 36,
            sha256: Digest([0; 32]),
            min_chunk: MIN_CHUNK,
            avg_chunk: AVG_CHUNK,
            max_chunk: MAX_CHUNK,
            chunks: vec![u64::MAX, 2, 0],
        };
        assert!(check_ref(&r, 100, 3).is_err());
        let ok = IndexRef {
            chunks: vec![1, 0, 0],
            ..r
        };
        assert!(check_ref(&ok, 100, 3).is_ok());
    }

    #[test]
    fn an_insertion_shifts_only_nearby_chunks() {
        let a = pseudo(1 << 20, 9);
        let mut b = a.clone();
        b.splice(300_000..300_000, pseudo(1000, 3));
        let (ea, eb) = (cut(&a[..]).unwrap(), cut(&b[..]).unwrap());
        let old: std::collections::HashSet<_> = ea.iter().map(|e| e.digest).collect();
        let new = eb.iter().filter(|e| !old.contains(&e.digest)).count();
        assert!(new <= 3, "{new} of {} chunks changed", eb.len());
    }
}
