//! Reading a bundle as a stream: the header and manifest are checked and the signature
//! verified before any payload byte is handed out, and then every chunk is checked against
//! the signed chunk table before the caller sees it. Memory use is one chunk buffer plus
//! the manifest, whatever the payload size.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::error::FormatError;
use crate::header::{Header, HEADER_LEN, SIGNATURE_ENTRY_LEN};
use crate::index::ChunkIndex;
use crate::keys::{KeyId, TrustedKeys};
use crate::manifest::{Digest, Manifest, PayloadKind};

/// A verified piece of a payload.
#[derive(Debug)]
pub struct Chunk<'a> {
    pub kind: PayloadKind,
    /// Chunk number within its payload.
    pub index: u64,
    /// Byte offset of the chunk within its payload.
    pub offset: u64,
    /// The bytes, already checked against the signed chunk table.
    pub data: &'a [u8],
    /// True for the payload's final chunk.
    pub last: bool,
}

/// Where a chunk read by [`BundleReader::next_chunk_into`] belongs; its bytes are the first
/// `len` of the caller's buffer, already checked against the signed chunk table.
#[derive(Clone, Copy, Debug)]
pub struct ChunkInfo {
    pub kind: PayloadKind,
    pub index: u64,
    pub offset: u64,
    pub len: usize,
    pub last: bool,
}

/// A signature entry as stored: key id and ed25519 signature.
pub type SignatureEntry = (KeyId, [u8; 64]);

/// The parts of a bundle before its payloads, not verified: for `inspect` only.
pub struct Unverified {
    pub header: Header,
    pub manifest: Manifest,
    pub signatures: Vec<SignatureEntry>,
    /// SHA-256 of the manifest bytes, as a channel file names the bundle.
    pub manifest_sha256: Digest,
}

/// A streaming reader over a bundle whose signature has been verified.
pub struct BundleReader<R> {
    inner: R,
    pos: u64,
    header: Header,
    manifest: Manifest,
    signed_by: KeyId,
    manifest_sha256: Digest,
    /// Format 2: the chunk index, checked against its signed digest.
    index: Option<ChunkIndex>,
    /// Next payload (index into the manifest) and chunk to hand out.
    payload: usize,
    chunk: u64,
    buf: Vec<u8>,
}

impl<R: Read> BundleReader<R> {
    /// Reads the header, manifest and signatures, verifies that a trusted key signed the
    /// manifest, and (format 2) reads the chunk index and checks it against the manifest.
    /// Nothing after the index has been read when this returns.
    pub fn open(mut inner: R, keys: &TrustedKeys) -> Result<Self, FormatError> {
        let mut pos = 0;
        let (header, manifest_bytes, sigs) = read_front(&mut inner, &mut pos)?;
        let signed_by = keys.verify(&manifest_bytes, &sigs)?;
        let manifest = Manifest::parse(&manifest_bytes, &header)?;
        let index = read_index(&mut inner, &manifest)?;
        pos = header.index_end();
        Ok(BundleReader {
            inner,
            pos,
            header,
            manifest,
            signed_by,
            manifest_sha256: Digest(Sha256::digest(&manifest_bytes).into()),
            index,
            payload: 0,
            chunk: 0,
            buf: Vec::new(),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The chunk index (format 2), checked against the signed manifest; `None` in format 1.
    pub fn index(&self) -> Option<&ChunkIndex> {
        self.index.as_ref()
    }

    /// The verified front of the bundle, for a caller that reads payloads by offset itself
    /// (a delta apply reads only the chunks it does not hold).
    pub fn into_parts(self) -> (Header, Manifest, Option<ChunkIndex>, KeyId) {
        (self.header, self.manifest, self.index, self.signed_by)
    }

    /// The trusted key whose signature was accepted.
    pub fn signed_by(&self) -> KeyId {
        self.signed_by
    }

    /// SHA-256 of the signed manifest bytes (what a channel file pins).
    pub fn manifest_sha256(&self) -> Digest {
        self.manifest_sha256
    }

    /// Fails unless the bundle's `compatible` string is `expected`.
    pub fn check_compatible(&self, expected: &str) -> Result<(), FormatError> {
        if self.manifest.compatible != expected {
            return Err(FormatError::Incompatible {
                expected: expected.to_string(),
                found: self.manifest.compatible.clone(),
            });
        }
        Ok(())
    }

    /// The next verified chunk, in bundle order (all of rootfs, then kernel, then initrd),
    /// or `None` once the whole bundle has been read and found to end where it should.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk<'_>>, FormatError> {
        let Some(p) = self.manifest.payloads.get(self.payload) else {
            return Ok(None);
        };
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(p.chunk_size as usize, 0);
        let read = self.next_chunk_into(&mut buf);
        self.buf = buf;
        Ok(read?.map(|c| Chunk {
            kind: c.kind,
            index: c.index,
            offset: c.offset,
            data: &self.buf[..c.len],
            last: c.last,
        }))
    }

    /// The payload and length of the chunk [`BundleReader::next_chunk_into`] reads next, or
    /// `None` at the end of the bundle.
    pub fn upcoming(&self) -> Option<(PayloadKind, usize)> {
        let p = self.manifest.payloads.get(self.payload)?;
        Some((p.kind, p.chunk_len(self.chunk) as usize))
    }

    /// [`BundleReader::next_chunk`], reading the chunk into the front of `out` (which must
    /// hold it) instead of an internal buffer: the caller saves a copy.
    pub fn next_chunk_into(&mut self, out: &mut [u8]) -> Result<Option<ChunkInfo>, FormatError> {
        let Some(p) = self.manifest.payloads.get(self.payload) else {
            return Ok(None);
        };
        if self.chunk == 0 {
            skip_padding(&mut self.inner, &mut self.pos, p.offset)?;
        }
        let index = self.chunk;
        let len = p.chunk_len(index) as usize;
        assert!(out.len() >= len, "chunk buffer too small");
        let data = &mut out[..len];
        let section = format!("{} payload", p.kind);
        read_exact(&mut self.inner, data, &section)?;
        self.pos += len as u64;
        if Sha256::digest(&*data)[..] != p.chunks[index as usize].0 {
            return Err(FormatError::ChunkHashMismatch {
                payload: p.kind.to_string(),
                index,
            });
        }
        let info = ChunkInfo {
            kind: p.kind,
            index,
            offset: index * p.chunk_size as u64,
            len,
            last: index + 1 == p.chunks.len() as u64,
        };
        if info.last {
            self.payload += 1;
            self.chunk = 0;
            if self.payload == self.manifest.payloads.len() {
                expect_eof(&mut self.inner, self.pos)?;
            }
        } else {
            self.chunk += 1;
        }
        Ok(Some(info))
    }

    /// Reads and verifies everything that is left.
    pub fn verify_rest(&mut self) -> Result<(), FormatError> {
        while self.next_chunk()?.is_some() {}
        Ok(())
    }
}

/// Reads the header, manifest and signatures without checking the signature, for display.
/// The manifest is still validated, so its fields can be trusted to be well-formed.
pub fn read_unverified<R: Read>(mut inner: R) -> Result<Unverified, FormatError> {
    let mut pos = 0;
    let (header, manifest_bytes, signatures) = read_front(&mut inner, &mut pos)?;
    let manifest = Manifest::parse(&manifest_bytes, &header)?;
    Ok(Unverified {
        header,
        manifest,
        signatures,
        manifest_sha256: Digest(Sha256::digest(&manifest_bytes).into()),
    })
}

fn read_front<R: Read>(
    r: &mut R,
    pos: &mut u64,
) -> Result<(Header, Vec<u8>, Vec<SignatureEntry>), FormatError> {
    let mut hb = [0u8; HEADER_LEN];
    read_exact(r, &mut hb, "header")?;
    let header = Header::decode(&hb)?;
    // Bounded by Header::decode (MAX_MANIFEST_LEN); grown as bytes arrive, so a short
    // hostile file cannot make us allocate the maximum up front.
    let mut manifest = Vec::new();
    r.by_ref()
        .take(header.manifest_len as u64)
        .read_to_end(&mut manifest)?;
    if manifest.len() != header.manifest_len as usize {
        return Err(FormatError::Truncated("manifest".to_string()));
    }
    let mut sigs = Vec::with_capacity(header.signature_count as usize);
    for _ in 0..header.signature_count {
        let mut e = [0u8; SIGNATURE_ENTRY_LEN];
        read_exact(r, &mut e, "signatures")?;
        sigs.push((
            KeyId(e[..8].try_into().unwrap()),
            e[8..].try_into().unwrap(),
        ));
    }
    *pos = header.signatures_end();
    Ok((header, manifest, sigs))
}

/// Format 2: reads the chunk index that follows the signatures, checks it against the digest
/// the signed manifest gives (exit 19 if it differs) and decodes it. Format 1: nothing.
/// Memory: the index (36 bytes per chunk: 2.3 MB for a 1 GiB root), read as it arrives.
pub fn read_index<R: Read>(r: &mut R, m: &Manifest) -> Result<Option<ChunkIndex>, FormatError> {
    let Some(iref) = &m.chunk_index else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    r.by_ref().take(iref.size).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != iref.size {
        return Err(FormatError::Truncated("chunk index".to_string()));
    }
    if Sha256::digest(&bytes)[..] != iref.sha256.0 {
        return Err(FormatError::IndexMismatch);
    }
    let sizes: Vec<u64> = m.payloads.iter().map(|p| p.size).collect();
    ChunkIndex::decode(&bytes, iref, &sizes).map(Some)
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], section: &str) -> Result<(), FormatError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FormatError::Truncated(section.to_string()),
        _ => FormatError::Io(e),
    })
}

/// Reads up to `target`, requiring zeros: stray bytes there mean the file was damaged.
fn skip_padding<R: Read>(r: &mut R, pos: &mut u64, target: u64) -> Result<(), FormatError> {
    let mut zeros = [0u8; 4096];
    while *pos < target {
        let n = (target - *pos).min(zeros.len() as u64) as usize;
        read_exact(r, &mut zeros[..n], "padding")?;
        if zeros[..n].iter().any(|&b| b != 0) {
            return Err(FormatError::BadPadding(target));
        }
        *pos += n as u64;
    }
    Ok(())
}

fn expect_eof<R: Read>(r: &mut R, pos: u64) -> Result<(), FormatError> {
    let mut one = [0u8; 1];
    loop {
        match r.read(&mut one) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(FormatError::TrailingData(pos)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FormatError::Io(e)),
        }
    }
}
