//! The fixed 64-byte header at the start of every bundle (all integers little-endian).
//!
//! | offset | size | field                                                   |
//! |-------:|-----:|---------------------------------------------------------|
//! | 0      | 8    | magic `89 41 42 55 0D 0A 1A 0A` (`\x89ABU\r\n\x1a\n`)   |
//! | 8      | 4    | format version (1 or 2)                                 |
//! | 12     | 4    | header length (64)                                      |
//! | 16     | 4    | manifest length in bytes                                |
//! | 20     | 4    | number of signatures                                    |
//! | 24     | 8    | offset of the first payload                             |
//! | 32     | 8    | total bundle length                                     |
//! | 40     | 8    | version 2: chunk index length; version 1: zero          |
//! | 48     | 12   | reserved, zero                                          |
//! | 60     | 4    | CRC-32 (IEEE) of bytes 0..60                            |
//!
//! The header is not signed; the CRC catches accidental corruption, and every length in it is
//! bounded before use and cross-checked against the signed manifest afterwards.

use crate::error::FormatError;
use crate::limits::{MAX_INDEX_LEN, MAX_MANIFEST_LEN, MAX_SIGNATURES};
use crate::{FORMAT_V1, FORMAT_VERSION};

/// Header length in bytes.
pub const HEADER_LEN: usize = 64;
/// The first eight bytes of every bundle. The high first byte and CR-LF/EOF bytes catch
/// text-mode transfers, as PNG's magic does.
pub const MAGIC: [u8; 8] = *b"\x89ABU\r\n\x1a\n";
/// One signature entry: an 8-byte key id followed by a 64-byte ed25519 signature.
pub const SIGNATURE_ENTRY_LEN: usize = 8 + 64;

/// The decoded header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version: [`FORMAT_V1`] or [`FORMAT_VERSION`].
    pub format: u32,
    pub manifest_len: u32,
    pub signature_count: u32,
    pub payloads_offset: u64,
    pub total_len: u64,
    /// Length of the chunk index after the signatures (format 2; 0 in format 1).
    pub index_len: u64,
}

impl Header {
    /// Where the signatures end; payloads start at the next aligned offset.
    pub fn signatures_end(&self) -> u64 {
        HEADER_LEN as u64
            + self.manifest_len as u64
            + self.signature_count as u64 * SIGNATURE_ENTRY_LEN as u64
    }

    /// Where the chunk index (format 2) ends; payloads start at the next aligned offset.
    pub fn index_end(&self) -> u64 {
        self.signatures_end() + self.index_len
    }

    /// Encodes the header, computing its checksum.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.format.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.signature_count.to_le_bytes());
        b[24..32].copy_from_slice(&self.payloads_offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.total_len.to_le_bytes());
        b[40..48].copy_from_slice(&self.index_len.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header: magic, version, checksum, then bounds on every length.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, FormatError> {
        if b[0..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let version = u32_at(8);
        if !(FORMAT_V1..=FORMAT_VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if crc32fast::hash(&b[0..60]) != u32_at(60) {
            return Err(FormatError::HeaderChecksum);
        }
        if u32_at(12) as usize != HEADER_LEN {
            return Err(FormatError::BadHeader(format!(
                "header length {}",
                u32_at(12)
            )));
        }
        let index_len = u64_at(40);
        if b[48..60].iter().any(|&x| x != 0) || (version == FORMAT_V1 && index_len != 0) {
            return Err(FormatError::BadHeader("reserved bytes are not zero".into()));
        }
        let h = Header {
            format: version,
            manifest_len: u32_at(16),
            signature_count: u32_at(20),
            payloads_offset: u64_at(24),
            total_len: u64_at(32),
            index_len,
        };
        if h.manifest_len == 0 {
            return Err(FormatError::BadHeader("empty manifest".into()));
        }
        if h.manifest_len > MAX_MANIFEST_LEN {
            return Err(FormatError::TooLarge {
                what: "manifest".into(),
                len: h.manifest_len.into(),
                max: MAX_MANIFEST_LEN.into(),
                unit: "bytes",
            });
        }
        if h.signature_count > MAX_SIGNATURES {
            return Err(FormatError::TooLarge {
                what: "signature list".into(),
                len: h.signature_count.into(),
                max: MAX_SIGNATURES.into(),
                unit: "signatures",
            });
        }
        if h.index_len > MAX_INDEX_LEN {
            return Err(FormatError::TooLarge {
                what: "chunk index".into(),
                len: h.index_len,
                max: MAX_INDEX_LEN,
                unit: "bytes",
            });
        }
        if h.payloads_offset != crate::align_up(h.index_end()) {
            return Err(FormatError::BadHeader(format!(
                "payloads offset {} does not follow the signatures and index",
                h.payloads_offset
            )));
        }
        if h.total_len < h.payloads_offset {
            return Err(FormatError::BadHeader(format!(
                "total length {}",
                h.total_len
            )));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            format: FORMAT_VERSION,
            manifest_len: 1000,
            signature_count: 1,
            payloads_offset: 8192,
            total_len: 1 << 20,
            index_len: 36 * 100,
        }
    }

    #[test]
    fn roundtrip() {
        assert_eq!(Header::decode(&sample().encode()).unwrap(), sample());
    }

    #[test]
    fn every_bit_flip_is_caught() {
        let good = sample().encode();
        for bit in 0..HEADER_LEN * 8 {
            let mut b = good;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(Header::decode(&b).is_err(), "flip of bit {bit} accepted");
        }
    }

    #[test]
    fn version_1_has_no_index() {
        let v1 = Header {
            format: FORMAT_V1,
            payloads_offset: 4096,
            index_len: 0,
            ..sample()
        };
        assert_eq!(Header::decode(&v1.encode()).unwrap(), v1);
        let with_index = Header {
            index_len: 36,
            ..v1
        };
        assert!(matches!(
            Header::decode(&with_index.encode()),
            Err(FormatError::BadHeader(_))
        ));
    }

    #[test]
    fn huge_manifest_is_refused_before_reading_it() {
        let mut h = sample();
        h.manifest_len = u32::MAX;
        assert!(matches!(
            Header::decode(&h.encode()),
            Err(FormatError::TooLarge { .. })
        ));
    }
}
