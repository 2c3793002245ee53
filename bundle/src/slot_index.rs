//! The seed index a root slot carries after its image (`docs/layout.md`, "Slot index"): the
//! image's content-defined chunks (lengths and SHA-256, as in the bundle's signed chunk index),
//! so that the next delta update finds the chunks this slot holds without cutting and hashing
//! the whole slot. `abbuild` writes it into slot A of the images it builds, `abupdate` into every
//! slot it writes from a format 2 bundle.
//!
//! Nothing here is trusted: a reader takes a record only when its checksum holds and it names
//! the image the slot is known to hold (size and SHA-256), and every chunk copied by its
//! locations is hashed again against the new bundle's signed index before it is written.
//!
//! Layout, at the first [`crate::ALIGN`] boundary at or past the image's end (all integers
//! little-endian):
//!
//! ```text
//! 0   8    magic "ABSLTIDX"
//! 8   4    version (1)
//! 12  4    zero
//! 16  8    image size in bytes
//! 24  32   image SHA-256
//! 56  8    entry count N
//! 64  36N  entries: chunk length (u32) and SHA-256, in image order (as the bundle index)
//! .   32   SHA-256 of all the bytes above
//! ```

use std::io;

use sha2::{Digest as _, Sha256};

use crate::index::{Entry, ENTRY_LEN, MAX_CHUNK};
use crate::manifest::Digest;

pub const MAGIC: [u8; 8] = *b"ABSLTIDX";
pub const VERSION: u32 = 1;
/// Bytes before the entries.
pub const HEAD_LEN: u64 = 64;
/// The trailing SHA-256.
pub const SUM_LEN: u64 = 32;
/// Records are read and written in pieces of at most this many bytes (whole entries).
const PIECE: usize = ENTRY_LEN * 1820;

/// Where in the slot the record of an image of `image_size` bytes starts.
pub fn offset(image_size: u64) -> u64 {
    crate::align_up(image_size)
}

/// The record's length for `entries` entries.
pub fn record_len(entries: u64) -> u64 {
    HEAD_LEN + entries * ENTRY_LEN as u64 + SUM_LEN
}

/// Whether the record of an image of `image_size` bytes in `entries` chunks fits a slot of
/// `slot_len` bytes.
pub fn fits(image_size: u64, entries: u64, slot_len: u64) -> bool {
    offset(image_size)
        .checked_add(record_len(entries))
        .is_some_and(|end| end <= slot_len)
}

fn head(image_size: u64, image_sha256: &Digest, entries: u64) -> [u8; HEAD_LEN as usize] {
    let mut h = [0u8; HEAD_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&image_size.to_le_bytes());
    h[24..56].copy_from_slice(&image_sha256.0);
    h[56..64].copy_from_slice(&entries.to_le_bytes());
    h
}

/// Writes the record of an image through `write_at(offset in the slot, bytes)`, in pieces of
/// at most 64 KiB (memory does not grow with the image).
pub fn write(
    image_size: u64,
    image_sha256: &Digest,
    entries: &[Entry],
    mut write_at: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut at = offset(image_size);
    let h = head(image_size, image_sha256, entries.len() as u64);
    let mut sum = Sha256::new();
    sum.update(h);
    write_at(at, &h)?;
    at += HEAD_LEN;
    let mut buf = Vec::with_capacity(PIECE);
    for part in entries.chunks(PIECE / ENTRY_LEN) {
        buf.clear();
        crate::index::encode(part, &mut buf);
        sum.update(&buf);
        write_at(at, &buf)?;
        at += buf.len() as u64;
    }
    write_at(at, &sum.finalize())
}

/// The whole record as bytes (the builder's and tests' convenience; see [`write`]).
pub fn encode(image_size: u64, image_sha256: &Digest, entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record_len(entries.len() as u64) as usize);
    write(image_size, image_sha256, entries, |_, b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .expect("writing to memory");
    out
}

/// Reads the record of the image of `image_size` bytes with SHA-256 `image_sha256` from a slot
/// of `slot_len` bytes through `read_at(offset in the slot, buffer)`, and, once all of it
/// checks out (magic, version, the image it names, the entries adding up to the image, the
/// checksum), calls `each(offset in the image, entry)` for every entry in order. Returns the
/// record's length; `Err` says why the record is not taken (then `each` was never called).
/// Reads the record twice (to check it, then to hand it out) in 64 KiB pieces.
pub fn read(
    slot_len: u64,
    image_size: u64,
    image_sha256: &Digest,
    mut read_at: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    mut each: impl FnMut(u64, &Entry),
) -> Result<u64, String> {
    let start = offset(image_size);
    if start.saturating_add(HEAD_LEN + SUM_LEN) > slot_len {
        return Err("no room for one after the image".into());
    }
    let mut h = [0u8; HEAD_LEN as usize];
    read_at(start, &mut h).map_err(|e| format!("reading it: {e}"))?;
    if h[..8] != MAGIC {
        return Err("none after the image".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!("version {version}, this abupdate reads {VERSION}"));
    }
    let n = u64::from_le_bytes(h[56..64].try_into().expect("8 bytes"));
    if h != head(image_size, image_sha256, n) {
        return Err("it describes another image".into());
    }
    // Every entry is at least one byte of the image: a count beyond that is a bad record.
    if n > image_size || !fits(image_size, n, slot_len) {
        return Err(format!("its entry count {n} does not fit"));
    }
    let mut sum = Sha256::new();
    sum.update(h);
    let mut buf = vec![0u8; PIECE];
    // Pass one: checksum and lengths.
    let mut total = 0u64;
    let end = start + HEAD_LEN + n * ENTRY_LEN as u64;
    let mut at = start + HEAD_LEN;
    while at < end {
        let len = PIECE.min((end - at) as usize);
        read_at(at, &mut buf[..len]).map_err(|e| format!("reading it: {e}"))?;
        sum.update(&buf[..len]);
        for e in buf[..len].chunks(ENTRY_LEN) {
            let l = u32::from_le_bytes(e[..4].try_into().expect("4 bytes"));
            if l == 0 || l > MAX_CHUNK {
                return Err(format!("an entry of length {l}"));
            }
            total += l as u64;
        }
        at += len as u64;
    }
    let mut want = [0u8; SUM_LEN as usize];
    read_at(end, &mut want).map_err(|e| format!("reading it: {e}"))?;
    if sum.finalize()[..] != want {
        return Err("its checksum does not match".into());
    }
    if total != image_size {
        return Err(format!(
            "its entries add up to {total} bytes, the image has {image_size}"
        ));
    }
    // Pass two: hand the entries out.
    let (mut at, mut pos) = (start + HEAD_LEN, 0u64);
    while at < end {
        let len = PIECE.min((end - at) as usize);
        read_at(at, &mut buf[..len]).map_err(|e| format!("reading it: {e}"))?;
        for e in buf[..len].chunks(ENTRY_LEN) {
            let entry = Entry {
                len: u32::from_le_bytes(e[..4].try_into().expect("4 bytes")),
                digest: Digest(e[4..].try_into().expect("32 bytes")),
            };
            each(pos, &entry);
            pos += entry.len as u64;
        }
        at += len as u64;
    }
    Ok(record_len(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u32) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry {
                len: 4096 + i,
                digest: Digest(Sha256::digest(i.to_le_bytes()).into()),
            })
            .collect()
    }

    /// A slot of `len` bytes holding `record` at its place for an image of `size` bytes.
    fn slot(len: usize, size: u64, record: &[u8]) -> Vec<u8> {
        let mut s = vec![0u8; len];
        let at = offset(size) as usize;
        s[at..at + record.len()].copy_from_slice(record);
        s
    }

    fn read_slot(s: &[u8], size: u64, sha: &Digest) -> Result<Vec<(u64, Entry)>, String> {
        let mut got = Vec::new();
        read(
            s.len() as u64,
            size,
            sha,
            |at, buf| {
                let at = at as usize;
                buf.copy_from_slice(
                    s.get(at..at + buf.len())
                        .ok_or(io::ErrorKind::UnexpectedEof)?,
                );
                Ok(())
            },
            |o, e| got.push((o, *e)),
        )?;
        Ok(got)
    }

    #[test]
    fn a_record_reads_back_with_running_offsets() {
        // More entries than one piece, so the pieces' seams are crossed.
        let e = entries(5000);
        let size: u64 = e.iter().map(|e| e.len as u64).sum();
        let sha = Digest([7; 32]);
        let rec = encode(size, &sha, &e);
        assert_eq!(rec.len() as u64, record_len(5000));
        assert_eq!(&rec[..8], b"ABSLTIDX");
        let s = slot((offset(size) + record_len(5000)) as usize, size, &rec);
        let got = read_slot(&s, size, &sha).unwrap();
        assert_eq!(got.len(), 5000);
        let mut at = 0;
        for ((o, g), want) in got.iter().zip(&e) {
            assert_eq!((*o, g), (at, want));
            at += want.len as u64;
        }
    }

    #[test]
    fn a_bad_or_foreign_record_is_refused() {
        let e = entries(10);
        let size: u64 = e.iter().map(|e| e.len as u64).sum();
        let sha = Digest([7; 32]);
        let rec = encode(size, &sha, &e);
        let len = (offset(size) + record_len(10)) as usize;
        // Another image (digest or size), none at all, and no room.
        let err = |s: &[u8], size, sha: &Digest| read_slot(s, size, sha).unwrap_err();
        let s = slot(len, size, &rec);
        assert!(err(&s, size, &Digest([8; 32])).contains("another image"));
        assert!(err(&vec![0; len], size, &sha).contains("none"));
        assert!(err(&s[..len - 1], size, &sha).contains("does not fit"));
        // A flipped entry byte fails the checksum.
        let mut bad = rec.clone();
        bad[HEAD_LEN as usize + 40] ^= 1;
        assert!(err(&slot(len, size, &bad), size, &sha).contains("checksum"));
        // Entries that do not add up to the image, checksum valid.
        let mut short = e.clone();
        short[3].len -= 1;
        let s = slot(len, size, &encode(size, &sha, &short));
        assert!(err(&s, size, &sha).contains("add up"));
        assert!(!fits(size, 10, len as u64 - 1) && fits(size, 10, len as u64));
    }
}
