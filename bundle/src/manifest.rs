//! The signed manifest: what the bundle is for, which version it is, and how to check every
//! byte of its payloads. Stored as UTF-8 JSON; the signature covers its exact bytes, so no
//! canonical form is needed.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::FormatError;
use crate::header::Header;
use crate::index::{self, IndexRef};
use crate::limits::*;
use crate::version::Version;
use crate::{align_up, FORMAT_V1};

/// A SHA-256 digest, written as 64 lower-case hex digits in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <&str>::deserialize(d)?;
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(serde::de::Error::custom(
                "digest must be 64 lower-case hex digits",
            ));
        }
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(Digest(out))
    }
}

/// What a payload is. Bundles carry exactly one of each, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// The read-only root filesystem image (squashfs), written raw into a slot partition.
    Rootfs,
    /// The kernel image, copied to the ESP.
    Kernel,
    /// The initrd, copied to the ESP.
    Initrd,
}

impl PayloadKind {
    /// The order payloads have in a bundle: the slot first, so the boot files (which make a
    /// slot bootable) are only written after the slot itself.
    pub const ORDER: [PayloadKind; 3] = [
        PayloadKind::Rootfs,
        PayloadKind::Kernel,
        PayloadKind::Initrd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PayloadKind::Rootfs => "rootfs",
            PayloadKind::Kernel => "kernel",
            PayloadKind::Initrd => "initrd",
        }
    }
}

impl fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One payload's place in the bundle and its chunk table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub kind: PayloadKind,
    /// Absolute offset in the bundle, a multiple of [`crate::ALIGN`].
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the whole payload, for comparison with external tools (`sha256sum` of a
    /// slot's first `size` bytes). Readers verify the chunk table, which covers every byte.
    pub sha256: Digest,
    /// Chunk length; the last chunk may be shorter.
    pub chunk_size: u32,
    /// SHA-256 of each chunk, in order.
    pub chunks: Vec<Digest>,
}

impl Payload {
    /// Length of chunk `index`.
    pub fn chunk_len(&self, index: u64) -> u64 {
        let start = index * self.chunk_size as u64;
        (self.size - start).min(self.chunk_size as u64)
    }

    /// Offset just past this payload.
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }
}

/// The manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Bundle format version; equals the header's.
    pub format: u32,
    /// Which devices may install this bundle; must equal the device's configured string.
    pub compatible: String,
    /// Monotonic version; devices refuse older or equal versions unless told otherwise.
    pub version: Version,
    /// Where the system came from: the Nix toplevel store path, or a free-form id.
    pub build_id: String,
    /// Creation time, seconds since the epoch (SOURCE_DATE_EPOCH when set).
    pub created: u64,
    /// Kernel command line parameters of the system (the updater adds slot-specific ones).
    pub kernel_params: String,
    /// Payloads in bundle order: rootfs, kernel, initrd.
    pub payloads: Vec<Payload>,
    /// Format 2: where the content-defined chunk index is and its digest; absent in format 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_index: Option<IndexRef>,
}

impl Manifest {
    /// The root slot's dm-verity parameters (`abinit.verity=` in `kernel_params`), if the
    /// image has a tree. Only valid manifests exist outside this module, and theirs parse.
    pub fn verity(&self) -> Option<crate::verity::Verity> {
        crate::verity::Verity::from_kernel_params(&self.kernel_params)
            .ok()
            .flatten()
    }

    /// The payload of a kind. Only valid manifests exist outside this module, and they have all.
    pub fn payload(&self, kind: PayloadKind) -> &Payload {
        self.payloads
            .iter()
            .find(|p| p.kind == kind)
            .expect("validated manifest")
    }

    /// Parses the signed bytes and checks every rule of the format.
    pub fn parse(bytes: &[u8], header: &Header) -> Result<Manifest, FormatError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| FormatError::BadManifest(e.to_string()))?;
        m.validate(header)?;
        Ok(m)
    }

    /// Checks the rules of `docs/bundle-format.md`: known format, sane strings, payloads
    /// in order, packed at aligned offsets, chunk tables of the right length, and (format 2)
    /// a chunk index where the header puts it.
    pub fn validate(&self, header: &Header) -> Result<(), FormatError> {
        let (payloads_offset, total_len) = (header.payloads_offset, header.total_len);
        let bad = |s: String| Err(FormatError::BadManifest(s));
        if self.format != header.format {
            return bad(format!(
                "format {} (the header says {})",
                self.format, header.format
            ));
        }
        match (&self.chunk_index, self.format == FORMAT_V1) {
            (Some(_), true) => return bad("format 1 has no chunk_index".into()),
            (None, false) => return bad(format!("format {} needs a chunk_index", self.format)),
            (None, true) => {}
            (Some(r), false) => {
                index::check_ref(r, header.signatures_end(), PayloadKind::ORDER.len())
                    .or_else(bad)?;
                if r.size != header.index_len {
                    return bad(format!(
                        "chunk index of {} bytes, the header says {}",
                        r.size, header.index_len
                    ));
                }
            }
        }
        check_text("compatible", &self.compatible, MAX_COMPATIBLE_LEN, false)?;
        check_text("build_id", &self.build_id, MAX_BUILD_ID_LEN, true)?;
        check_text(
            "kernel_params",
            &self.kernel_params,
            MAX_KERNEL_PARAMS_LEN,
            true,
        )?;
        crate::layout::check_kernel_params(&self.kernel_params)
            .map_err(FormatError::BadManifest)?;
        if self.payloads.len() != PayloadKind::ORDER.len() {
            return bad(format!(
                "{} payloads (expected rootfs, kernel, initrd)",
                self.payloads.len()
            ));
        }
        let mut expected_offset = payloads_offset;
        for (p, kind) in self.payloads.iter().zip(PayloadKind::ORDER) {
            if p.kind != kind {
                return bad(format!("payload '{}' where '{kind}' belongs", p.kind));
            }
            if p.offset != expected_offset {
                return bad(format!(
                    "payload {kind} at offset {} (expected {expected_offset})",
                    p.offset
                ));
            }
            if p.size == 0 || p.size > MAX_PAYLOAD_SIZE {
                return bad(format!("payload {kind} has size {}", p.size));
            }
            if !p.chunk_size.is_power_of_two()
                || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&p.chunk_size)
            {
                return bad(format!("payload {kind} has chunk size {}", p.chunk_size));
            }
            let n = p.size.div_ceil(p.chunk_size as u64);
            if p.chunks.len() as u64 != n {
                return bad(format!(
                    "payload {kind} has {} chunk hashes, needs {n}",
                    p.chunks.len()
                ));
            }
            expected_offset = align_up(p.end());
        }
        // dm-verity (docs/layout.md): the parameters ride in kernel_params, which every
        // release reads, so a device on a release before verity still installs such a bundle.
        // The root payload must be exactly image + padding + hash area.
        if let Some(v) = crate::verity::Verity::from_kernel_params(&self.kernel_params)
            .map_err(|e| FormatError::BadManifest(format!("kernel_params: {e}")))?
        {
            let root = &self.payloads[0];
            if root.size != v.payload_len() {
                return bad(format!(
                    "the rootfs payload has {} bytes, but its dm-verity parameters ({} data \
                     blocks) need {} (image, padding and hash area)",
                    root.size,
                    v.data_blocks,
                    v.payload_len()
                ));
            }
        }
        let end = self
            .payloads
            .last()
            .map(|p| p.end())
            .unwrap_or(payloads_offset);
        if end != total_len {
            return bad(format!(
                "payloads end at {end}, the header says the bundle is {total_len} bytes"
            ));
        }
        Ok(())
    }
}

fn check_text(field: &str, s: &str, max: usize, allow_spaces: bool) -> Result<(), FormatError> {
    let ok_char = |c: char| !c.is_control() && (allow_spaces || !c.is_whitespace());
    if (!allow_spaces && s.is_empty()) || s.len() > max || !s.chars().all(ok_char) {
        return Err(FormatError::BadManifest(format!(
            "field '{field}' must be at most {max} printable characters{}",
            if allow_spaces { "" } else { " without spaces" }
        )));
    }
    Ok(())
}
