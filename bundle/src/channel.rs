//! Channel documents: the small signed file (`IMAGE/CHANNEL.json`) that tells devices which
//! bundle is the newest on a channel. Specified in `docs/channels.md`.
//!
//! One file, a signed envelope, not a document plus a detached `.sig`: a static server or CDN
//! replaces files one at a time, so a device fetching two files could get a new document with
//! the old signature (a spurious refusal) between the two replacements. The signed bytes are
//! the document exactly as published, carried as a JSON string, so no canonical JSON is needed.
//! They are prefixed with [`SIGNING_CONTEXT`] before signing: the same keys sign bundle
//! manifests (also JSON), and a signature must never be valid for the other kind.

use serde::{Deserialize, Serialize};

use crate::keys::{KeyId, Signer, TrustedKeys};
use crate::manifest::Digest;
use crate::version::Version;
use crate::FormatError;

/// Longest channel file read, refused before parsing: a document is under 1 KiB, and a
/// few signatures add 150 bytes each.
pub const MAX_CHANNEL_LEN: u64 = 64 * 1024;
/// Most signatures one channel file may carry (key rotation needs two or three).
pub const MAX_CHANNEL_SIGNATURES: usize = 16;
/// Prepended to the document bytes before signing and verifying (domain separation).
pub const SIGNING_CONTEXT: &[u8] = b"abupdate-channel-v1\0";
/// `apiVersion` of the envelope and the document.
pub const API_VERSION: &str = "abupdate/v1";

/// What a channel says: the newest bundle and how long the statement holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Channel {
    pub api_version: String,
    /// Always `Channel`.
    pub kind: String,
    /// The channel's name (`stable`).
    pub channel: String,
    /// Devices with another compatible string must not install this.
    pub compatible: String,
    pub version: Version,
    /// The bundle's URL relative to the channel file (`vps-2026.11.22.2.abu`).
    pub bundle: String,
    /// The bundle's length in bytes.
    pub size: u64,
    /// SHA-256 of the bundle's manifest bytes: pins the exact signed bundle.
    pub manifest_sha256: Digest,
    /// Grows by one with each publication; devices refuse a lower one (replay).
    pub sequence: u64,
    /// Seconds since the epoch when it was published.
    pub issued: u64,
    /// Seconds since the epoch after which devices refuse it (a frozen mirror or an attacker
    /// replaying an old but validly signed file cannot hold devices on an old release).
    pub expires: u64,
    /// Share of devices, 0 to 100 percent, that install this version now.
    #[serde(default = "full_rollout")]
    pub rollout: u8,
}

fn full_rollout() -> u8 {
    100
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    api_version: String,
    kind: String,
    /// The document's exact bytes, the ones signed.
    document: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnvelopeSignature {
    key_id: String,
    signature: String,
}

/// Why a channel file is refused; each has its own exit code in abupdate.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("channel file is too large: more than {max} bytes")]
    TooLarge { max: u64 },
    #[error("channel file is malformed: {0}")]
    Malformed(String),
    #[error("channel file carries no signature")]
    Unsigned,
    #[error(
        "channel file is not signed by a trusted key (signed by: {key_ids}); trusted: {trusted}"
    )]
    Untrusted { key_ids: String, trusted: String },
    #[error("bad signature by trusted key {0} on the channel file: it was altered")]
    BadSignature(String),
}

impl Channel {
    /// Checks what serde cannot: kind, apiVersion, rollout range, a relative bundle path.
    pub fn validate(&self) -> Result<(), String> {
        if self.api_version != API_VERSION || self.kind != "Channel" {
            return Err(format!(
                "expected apiVersion {API_VERSION} and kind Channel, found {} and {}",
                self.api_version, self.kind
            ));
        }
        if self.rollout > 100 {
            return Err(format!("rollout {} is over 100 (percent)", self.rollout));
        }
        if self.expires <= self.issued {
            return Err("it expires before it was issued".into());
        }
        let b = &self.bundle;
        // Relative, inside the published tree, no scheme: a channel cannot send a device to
        // file:///dev/sda or to another host.
        if b.is_empty()
            || b.len() > 1024
            || b.starts_with('/')
            || b.contains("://")
            || b.contains('\\')
            || b.split('/').any(|p| p.is_empty() || p == "." || p == "..")
            || b.chars()
                .any(|c| c.is_control() || matches!(c, '?' | '#' | '%'))
        {
            return Err(format!(
                "bundle '{b}' is not a plain relative path inside the channel's tree"
            ));
        }
        if self.compatible.is_empty() || self.compatible.len() > crate::limits::MAX_COMPATIBLE_LEN {
            return Err("compatible is empty or too long".into());
        }
        Ok(())
    }
}

/// The signed channel file for `doc`, signed by every signer.
pub fn sign(doc: &Channel, signers: &[&dyn Signer]) -> Result<Vec<u8>, FormatError> {
    let document =
        serde_json::to_string_pretty(doc).map_err(|e| FormatError::BadManifest(e.to_string()))?;
    let message = signed_message(document.as_bytes());
    let env = Envelope {
        api_version: API_VERSION.into(),
        kind: "SignedChannel".into(),
        signatures: signers
            .iter()
            .map(|s| EnvelopeSignature {
                key_id: s.key_id().to_string(),
                signature: hex::encode(s.sign(&message)),
            })
            .collect(),
        document,
    };
    let mut out =
        serde_json::to_vec_pretty(&env).map_err(|e| FormatError::BadManifest(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

/// Verifies a channel file: size, envelope, a trusted signature, then the document. Only a
/// document a trusted key signed is parsed as one.
pub fn open(bytes: &[u8], keys: &TrustedKeys) -> Result<(Channel, KeyId), ChannelError> {
    let (document, sigs) = read_envelope(bytes)?;
    if sigs.is_empty() {
        return Err(ChannelError::Unsigned);
    }
    let message = signed_message(document.as_bytes());
    let signed_by = keys.verify(&message, &sigs).map_err(|e| match e {
        FormatError::UntrustedKey { key_ids, trusted } => {
            ChannelError::Untrusted { key_ids, trusted }
        }
        FormatError::BadSignature(id) => ChannelError::BadSignature(id),
        FormatError::NoSignature => ChannelError::Unsigned,
        other => ChannelError::Malformed(other.to_string()),
    })?;
    let doc = parse_document(&document)?;
    Ok((doc, signed_by))
}

/// The document without checking its signature: for `abbuild publish`, reading the previous
/// sequence number from its own tree.
pub fn read_unverified(bytes: &[u8]) -> Result<Channel, ChannelError> {
    let (document, _) = read_envelope(bytes)?;
    parse_document(&document)
}

fn parse_document(document: &str) -> Result<Channel, ChannelError> {
    let doc: Channel = serde_json::from_str(document)
        .map_err(|e| ChannelError::Malformed(format!("document: {e}")))?;
    doc.validate().map_err(ChannelError::Malformed)?;
    Ok(doc)
}

type Sigs = Vec<(KeyId, [u8; 64])>;

fn read_envelope(bytes: &[u8]) -> Result<(String, Sigs), ChannelError> {
    if bytes.len() as u64 > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLarge {
            max: MAX_CHANNEL_LEN,
        });
    }
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|e| ChannelError::Malformed(e.to_string()))?;
    if env.api_version != API_VERSION || env.kind != "SignedChannel" {
        return Err(ChannelError::Malformed(format!(
            "expected apiVersion {API_VERSION} and kind SignedChannel, found {} and {}",
            env.api_version, env.kind
        )));
    }
    if env.signatures.len() > MAX_CHANNEL_SIGNATURES {
        return Err(ChannelError::Malformed(format!(
            "{} signatures, the limit is {MAX_CHANNEL_SIGNATURES}",
            env.signatures.len()
        )));
    }
    let mut sigs = Vec::with_capacity(env.signatures.len());
    for s in &env.signatures {
        let mut id = [0u8; 8];
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&s.key_id, &mut id)
            .and_then(|()| hex::decode_to_slice(&s.signature, &mut sig))
            .map_err(|_| {
                ChannelError::Malformed("a signature entry is not 16 + 128 hex digits".into())
            })?;
        sigs.push((KeyId(id), sig));
    }
    Ok((env.document, sigs))
}

/// Parses a duration in seconds: `90`, `90s`, `30m`, `12h`, `14d`.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => 0,
    };
    match num.parse::<u64>() {
        Ok(n) if mult > 0 => n
            .checked_mul(mult)
            .ok_or_else(|| format!("duration '{s}' is too long")),
        _ => Err(format!(
            "invalid duration '{s}': use seconds or a number with s, m, h or d (30m, 14d)"
        )),
    }
}

fn signed_message(document: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, document].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    fn doc() -> Channel {
        Channel {
            api_version: API_VERSION.into(),
            kind: "Channel".into(),
            channel: "stable".into(),
            compatible: "vps".into(),
            version: "2".parse().unwrap(),
            bundle: "vps-2.abu".into(),
            size: 4096,
            manifest_sha256: Digest([3; 32]),
            sequence: 7,
            issued: 100,
            expires: 200,
            rollout: 100,
        }
    }

    #[test]
    fn signed_file_roundtrips_and_altering_it_is_caught() {
        let a = SecretKey::from_seed([1; 32], "test-only-a");
        let b = SecretKey::from_seed([2; 32], "test-only-b");
        let file = sign(&doc(), &[&a]).unwrap();
        let trusted = TrustedKeys::new(vec![a.public()]);
        let (d, by) = open(&file, &trusted).unwrap();
        assert_eq!(d, doc());
        assert_eq!(by, a.key_id());
        let text = String::from_utf8(file.clone()).unwrap();
        let altered = text.replace("\\\"sequence\\\": 7", "\\\"sequence\\\": 8");
        assert_ne!(altered, text);
        assert!(matches!(
            open(altered.as_bytes(), &trusted),
            Err(ChannelError::BadSignature(_))
        ));
        assert!(matches!(
            open(&file, &TrustedKeys::new(vec![b.public()])),
            Err(ChannelError::Untrusted { .. })
        ));
        assert!(matches!(
            open(&sign(&doc(), &[]).unwrap(), &trusted),
            Err(ChannelError::Unsigned)
        ));
        let big = vec![b' '; MAX_CHANNEL_LEN as usize + 1];
        assert!(matches!(
            open(&big, &trusted),
            Err(ChannelError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_manifest_signature_is_not_a_channel_signature() {
        let a = SecretKey::from_seed([1; 32], "test-only-a");
        let file = sign(&doc(), &[&a]).unwrap();
        let (document, _) = read_envelope(&file).unwrap();
        // The same bytes signed without the context, as a bundle manifest would be.
        let forged = Envelope {
            api_version: API_VERSION.into(),
            kind: "SignedChannel".into(),
            signatures: vec![EnvelopeSignature {
                key_id: a.key_id().to_string(),
                signature: hex::encode(a.sign(document.as_bytes())),
            }],
            document,
        };
        let forged = serde_json::to_vec(&forged).unwrap();
        assert!(matches!(
            open(&forged, &TrustedKeys::new(vec![a.public()])),
            Err(ChannelError::BadSignature(_))
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("14d").unwrap(), 14 * 86400);
        for bad in ["", "m", "3w", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bundle_paths_must_stay_in_the_tree() {
        for bad in [
            "/etc/x",
            "../x.abu",
            "a//b",
            "http://h/x",
            "a/./b",
            "x?y",
            "",
        ] {
            let mut d = doc();
            d.bundle = bad.into();
            assert!(d.validate().is_err(), "{bad}");
        }
        let mut d = doc();
        d.bundle = "bundles/vps-2.abu".into();
        d.validate().unwrap();
        d.rollout = 101;
        assert!(d.validate().is_err());
    }
}
