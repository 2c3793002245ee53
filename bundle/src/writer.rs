//! Writing a bundle from payload sources. Each payload is read twice: once to build its
//! chunk table (which the signed manifest, written first, must contain) and once to copy it,
//! re-hashing on the way so a source that changes in between is caught, not shipped.

use std::io::{self, Read, Seek, SeekFrom, Write};

use sha2::{Digest as _, Sha256};

use crate::error::FormatError;
use crate::header::{Header, HEADER_LEN, SIGNATURE_ENTRY_LEN};
use crate::index::{self, IndexRef};
use crate::keys::Signer;
use crate::manifest::{Digest, Manifest, Payload, PayloadKind};
use crate::version::Version;
use crate::{align_up, FORMAT_V1, FORMAT_VERSION};

/// One payload to put in a bundle.
pub struct PayloadInput<'a> {
    pub kind: PayloadKind,
    pub source: &'a mut dyn ReadSeek,
}

/// Anything that can be read from the start twice.
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// The manifest fields the caller chooses.
pub struct BundleInput {
    pub compatible: String,
    pub version: Version,
    pub build_id: String,
    pub created: u64,
    pub kernel_params: String,
    pub chunk_size: u32,
    /// Format to write: [`FORMAT_VERSION`] (with the chunk index for delta updates) or
    /// [`FORMAT_V1`] (for devices whose abupdate predates format 2).
    pub format: u32,
}

/// Buffer size for copying payloads: large reads keep syscall overhead out of the profile.
const COPY_BUFFER: usize = 1024 * 1024;

/// Writes a complete bundle to `out` and returns its manifest. `payloads` must hold one
/// rootfs, one kernel and one initrd (in any order). Every signer signs the manifest.
pub fn write_bundle<W: Write>(
    mut out: W,
    input: &BundleInput,
    payloads: &mut [PayloadInput<'_>],
    signers: &[&dyn Signer],
) -> Result<Manifest, FormatError> {
    payloads.sort_by_key(|p| PayloadKind::ORDER.iter().position(|k| *k == p.kind));
    if signers.is_empty() {
        return Err(FormatError::NoSignature);
    }
    if !(FORMAT_V1..=FORMAT_VERSION).contains(&input.format) {
        return Err(FormatError::UnsupportedVersion {
            found: input.format,
            supported: FORMAT_VERSION,
        });
    }
    // Pass 1: chunk tables. Offsets depend on the manifest's length, which depends on the
    // offsets' digits, so lay out with a guess and repeat until the length is stable.
    let mut tables = Vec::new();
    for p in payloads.iter_mut() {
        p.source.seek(SeekFrom::Start(0))?;
        tables.push(hash_chunks(&mut p.source, input.chunk_size)?);
    }
    // Format 2: the content-defined chunk index, its length known before the layout.
    let mut index_bytes = Vec::new();
    let mut counts = Vec::new();
    if input.format != FORMAT_V1 {
        for p in payloads.iter_mut() {
            p.source.seek(SeekFrom::Start(0))?;
            let entries = index::cut(&mut p.source)?;
            counts.push(entries.len() as u64);
            index::encode(&entries, &mut index_bytes);
        }
    }
    let index_sha256 = Digest(Sha256::digest(&index_bytes).into());
    let sig_len = signers.len() * SIGNATURE_ENTRY_LEN;
    let mut manifest_len = 0usize;
    let (manifest, bytes) = loop {
        let sigs_end = (HEADER_LEN + manifest_len + sig_len) as u64;
        let mut offset = align_up(sigs_end + index_bytes.len() as u64);
        let mut entries = Vec::new();
        for (p, (size, sha256, chunks)) in payloads.iter().zip(&tables) {
            entries.push(Payload {
                kind: p.kind,
                offset,
                size: *size,
                sha256: *sha256,
                chunk_size: input.chunk_size,
                chunks: chunks.clone(),
            });
            offset = align_up(offset + size);
        }
        let chunk_index = (input.format != FORMAT_V1).then(|| IndexRef {
            offset: sigs_end,
            size: index_bytes.len() as u64,
            sha256: index_sha256,
            min_chunk: index::MIN_CHUNK,
            avg_chunk: index::AVG_CHUNK,
            max_chunk: index::MAX_CHUNK,
            chunks: counts.clone(),
        });
        let m = Manifest {
            format: input.format,
            compatible: input.compatible.clone(),
            version: input.version.clone(),
            build_id: input.build_id.clone(),
            created: input.created,
            kernel_params: input.kernel_params.clone(),
            payloads: entries,
            chunk_index,
        };
        let bytes = serde_json::to_vec_pretty(&m).expect("manifest serializes");
        if bytes.len() == manifest_len {
            break (m, bytes);
        }
        manifest_len = bytes.len();
    };
    let header = Header {
        format: input.format,
        manifest_len: bytes.len() as u32,
        signature_count: signers.len() as u32,
        payloads_offset: manifest.payloads[0].offset,
        total_len: manifest.payloads.last().unwrap().end(),
        index_len: index_bytes.len() as u64,
    };
    // Check our own output against the rules readers apply.
    Header::decode(&header.encode())?;
    manifest.validate(&header)?;

    out.write_all(&header.encode())?;
    out.write_all(&bytes)?;
    for s in signers {
        out.write_all(&s.key_id().0)?;
        out.write_all(&s.sign(&bytes))?;
    }
    out.write_all(&index_bytes)?;
    let mut pos = header.index_end();
    // Pass 2: copy, checking the data is what was hashed.
    let mut buf = vec![0u8; COPY_BUFFER];
    for (p, entry) in payloads.iter_mut().zip(&manifest.payloads) {
        write_zeros(&mut out, entry.offset - pos)?;
        p.source.seek(SeekFrom::Start(0))?;
        let mut hasher = Sha256::new();
        let mut left = entry.size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            p.source.read_exact(&mut buf[..n])?;
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        if hasher.finalize()[..] != entry.sha256.0 {
            return Err(FormatError::Io(io::Error::other(format!(
                "payload {} changed while the bundle was written",
                entry.kind
            ))));
        }
        pos = entry.end();
    }
    out.flush()?;
    Ok(manifest)
}

/// Size, whole-payload SHA-256 and per-chunk SHA-256 of a source.
fn hash_chunks(r: &mut dyn Read, chunk_size: u32) -> io::Result<(u64, Digest, Vec<Digest>)> {
    let mut whole = Sha256::new();
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; chunk_size as usize];
    let mut size = 0u64;
    loop {
        let n = read_full(r, &mut buf)?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        chunks.push(Digest(Sha256::digest(&buf[..n]).into()));
        size += n as u64;
        if n < buf.len() {
            break;
        }
    }
    Ok((size, Digest(whole.finalize().into()), chunks))
}

/// Fills `buf` unless the source ends first; returns how much was read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn write_zeros<W: Write>(out: &mut W, n: u64) -> io::Result<()> {
    io::copy(&mut io::repeat(0).take(n), out).map(|_| ())
}
