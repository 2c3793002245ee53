//! dm-verity for root slots: the hash tree `veritysetup format` writes (format version 1,
//! SHA-256, 4096-byte data and hash blocks, a 512-byte superblock), computed here with memory
//! bounded by one block per tree level, and the `abinit.verity=` kernel parameter that carries
//! the root hash from the signed manifest to the initrd.
//!
//! A slot with verity holds, from its first byte: the image, zero-padded to a multiple of
//! 4096 (`data_blocks` blocks); at `hash_offset` (= `data_blocks * 4096`) the superblock
//! block; then the tree, its top level first (as cryptsetup and the kernel place it). The
//! bundle's rootfs payload is exactly these bytes, so writing, delta planning and read-back
//! treat the tree like any other part of the image (docs/layout.md, "dm-verity").

use std::io;

use sha2::{Digest as _, Sha256};

/// Data and hash block size.
pub const BLOCK: u64 = 4096;
const DIGEST_LEN: usize = 32;
/// Digests per hash block.
const FANOUT: u64 = BLOCK / DIGEST_LEN as u64;
/// Length of the superblock veritysetup writes at the hash area's start (the rest of its
/// 4096-byte block is zeros here).
pub const SUPERBLOCK_LEN: usize = 512;
/// The kernel parameter, as the initrd reads it:
/// `abinit.verity=<root hash>,<salt>,<data blocks>,<hash offset>`.
pub const PARAM: &str = "abinit.verity=";

/// Everything a device needs to open or check a slot through dm-verity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verity {
    pub root_hash: [u8; 32],
    pub salt: [u8; 32],
    /// 4096-byte blocks of the (zero-padded) image.
    pub data_blocks: u64,
    /// Byte offset of the hash area in the slot: `data_blocks * 4096`.
    pub hash_offset: u64,
}

impl Verity {
    /// The whole kernel parameter, `abinit.verity=...`.
    pub fn param(&self) -> String {
        format!(
            "{PARAM}{},{},{},{}",
            hex::encode(self.root_hash),
            hex::encode(self.salt),
            self.data_blocks,
            self.hash_offset
        )
    }

    /// Parses the value after `abinit.verity=`; only the canonical form `param` writes is
    /// accepted (lower-case hex, decimals without leading zeros), so one tree has one string.
    pub fn parse_value(s: &str) -> Result<Verity, String> {
        let bad = |why: &str| Err(format!("{PARAM}{s}: {why}"));
        let parts: Vec<&str> = s.split(',').collect();
        let [root, salt, blocks, offset] = parts[..] else {
            return bad("expected <root hash>,<salt>,<data blocks>,<hash offset>");
        };
        let digest = |h: &str| -> Option<[u8; 32]> {
            let mut out = [0u8; 32];
            (h.len() == 64 && !h.bytes().any(|b| b.is_ascii_uppercase()))
                .then(|| hex::decode_to_slice(h, &mut out).ok())
                .flatten()
                .map(|()| out)
        };
        let number = |n: &str| -> Option<u64> {
            (!n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n == "0" || !n.starts_with('0')))
            .then(|| n.parse().ok())
            .flatten()
        };
        let (Some(root_hash), Some(salt)) = (digest(root), digest(salt)) else {
            return bad("the root hash and the salt must be 64 lower-case hex digits each");
        };
        let (Some(data_blocks), Some(hash_offset)) = (number(blocks), number(offset)) else {
            return bad("the data blocks and the hash offset must be decimal numbers");
        };
        let v = Verity {
            root_hash,
            salt,
            data_blocks,
            hash_offset,
        };
        if data_blocks == 0 || data_blocks > crate::limits::MAX_PAYLOAD_SIZE / BLOCK {
            return bad("the number of data blocks is out of range");
        }
        if hash_offset != data_blocks * BLOCK {
            return bad("the hash offset must be the data blocks times 4096 (the tree follows the padded image)");
        }
        Ok(v)
    }

    /// The verity parameters among kernel parameters: `None` without `abinit.verity=`, an
    /// error if it is there twice or malformed.
    pub fn from_kernel_params(params: &str) -> Result<Option<Verity>, String> {
        let mut found = params
            .split_whitespace()
            .filter_map(|p| p.strip_prefix(PARAM));
        let Some(value) = found.next() else {
            return Ok(None);
        };
        if found.next().is_some() {
            return Err(format!("{PARAM} is given more than once"));
        }
        Verity::parse_value(value).map(Some)
    }

    /// Bytes of the hash area: the superblock's block and the tree.
    pub fn hash_area_len(&self) -> u64 {
        hash_area_len(self.data_blocks)
    }

    /// Bytes the slot's image payload must have: image, padding, hash area.
    pub fn payload_len(&self) -> u64 {
        self.hash_offset + self.hash_area_len()
    }
}

/// Blocks per tree level, bottom (level 0, hashes of data blocks) first, as cryptsetup
/// counts them (`hash_levels` in lib/verity/verity_hash.c): a single data block has no tree.
pub fn level_blocks(data_blocks: u64) -> Vec<u64> {
    let mut levels = Vec::new();
    let mut n = data_blocks;
    // Level i covers FANOUT^(i+1) data blocks per block; stop once one block covers them all.
    while data_blocks > 1 && (levels.is_empty() || n > 1) {
        n = n.div_ceil(FANOUT);
        levels.push(n);
    }
    levels
}

/// Bytes of the hash area for `data_blocks`: one block for the superblock, then the tree.
pub fn hash_area_len(data_blocks: u64) -> u64 {
    BLOCK * (1 + level_blocks(data_blocks).iter().sum::<u64>())
}

/// The salt: SHA-256 of the zero-padded image, so the same image always gets the same salt
/// (and tree) and two images never share one.
pub fn salt_of(padded_image_digest: &[u8; 32]) -> [u8; 32] {
    *padded_image_digest
}

/// The superblock's UUID (veritysetup makes a random one unless given `--uuid`): derived
/// from the salt, so builds stay reproducible.
pub fn uuid(salt: &[u8; 32]) -> [u8; 16] {
    let d = Sha256::new()
        .chain_update(b"abupdate dm-verity uuid")
        .chain_update(salt)
        .finalize();
    d[..16].try_into().expect("16 bytes")
}

/// `uuid` in the form veritysetup's `--uuid` takes.
pub fn uuid_string(salt: &[u8; 32]) -> String {
    let h = hex::encode(uuid(salt));
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The first block of the hash area: cryptsetup's `struct verity_sb`, then zeros.
pub fn superblock(salt: &[u8; 32], data_blocks: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    b[0..8].copy_from_slice(b"verity\0\0");
    b[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
    b[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type 1: salt before the data
    b[16..32].copy_from_slice(&uuid(salt));
    b[32..38].copy_from_slice(b"sha256");
    b[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    b[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    b[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    b[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
    b[88..88 + salt.len()].copy_from_slice(salt);
    b
}

/// Builds the tree bottom-up as data blocks come in, handing out each finished hash block
/// with its offset in the hash area. Holds one partly filled block per level.
pub struct TreeBuilder {
    salted: Sha256,
    data_blocks: u64,
    fed: u64,
    /// Per level, bottom first: offset of its first block in the hash area.
    level_offset: Vec<u64>,
    /// Per level: the block being filled, and how many blocks were handed out.
    pending: Vec<Vec<u8>>,
    emitted: Vec<u64>,
    root: Option<[u8; 32]>,
}

impl TreeBuilder {
    pub fn new(salt: &[u8; 32], data_blocks: u64) -> TreeBuilder {
        let levels = level_blocks(data_blocks);
        // Top level first, right after the superblock's block.
        let mut level_offset = vec![0u64; levels.len()];
        let mut at = BLOCK;
        for i in (0..levels.len()).rev() {
            level_offset[i] = at;
            at += levels[i] * BLOCK;
        }
        TreeBuilder {
            salted: Sha256::new().chain_update(salt),
            data_blocks,
            fed: 0,
            pending: vec![Vec::with_capacity(BLOCK as usize); levels.len()],
            emitted: vec![0; levels.len()],
            level_offset,
            root: None,
        }
    }

    fn hash(&self, block: &[u8]) -> [u8; 32] {
        self.salted.clone().chain_update(block).finalize().into()
    }

    /// Adds the next data block (4096 bytes). `emit(offset in the hash area, block)`.
    pub fn feed<E>(
        &mut self,
        block: &[u8],
        emit: &mut impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        assert_eq!(
            block.len() as u64,
            BLOCK,
            "dm-verity data blocks are 4096 bytes"
        );
        assert!(
            self.fed < self.data_blocks,
            "more data blocks than announced"
        );
        self.fed += 1;
        let h = self.hash(block);
        self.push(0, h, emit)
    }

    fn push<E>(
        &mut self,
        level: usize,
        digest: [u8; 32],
        emit: &mut impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if level == self.pending.len() {
            // Only the top level's single block (or a lone data block) hashes into the root.
            self.root = Some(digest);
            return Ok(());
        }
        self.pending[level].extend_from_slice(&digest);
        if self.pending[level].len() as u64 == BLOCK {
            self.flush(level, emit)?;
        }
        Ok(())
    }

    fn flush<E>(
        &mut self,
        level: usize,
        emit: &mut impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut block = std::mem::take(&mut self.pending[level]);
        block.resize(BLOCK as usize, 0);
        emit(
            self.level_offset[level] + self.emitted[level] * BLOCK,
            &block,
        )?;
        self.emitted[level] += 1;
        let h = self.hash(&block);
        block.clear();
        self.pending[level] = block;
        self.push(level + 1, h, emit)
    }

    /// Pads and hands out the last block of each level; returns the root hash.
    pub fn finish<E>(
        mut self,
        emit: &mut impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<[u8; 32], E> {
        assert_eq!(
            self.fed, self.data_blocks,
            "fewer data blocks than announced"
        );
        for level in 0..self.pending.len() {
            if !self.pending[level].is_empty() {
                self.flush(level, emit)?;
            }
        }
        Ok(self.root.expect("every level was flushed"))
    }
}

/// Reads `len` bytes of image from `read`, zero-padded to whole blocks, in 1 MiB pieces.
fn for_each_block<E: From<io::Error>>(
    read: &mut impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    len: u64,
    mut f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    const PIECE: u64 = 256 * BLOCK;
    let mut buf = vec![0u8; PIECE as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(PIECE);
        let padded = n.div_ceil(BLOCK) * BLOCK;
        buf[n as usize..padded as usize].fill(0);
        read(at, &mut buf[..n as usize])?;
        for block in buf[..padded as usize].chunks(BLOCK as usize) {
            f(block)?;
        }
        at += n;
    }
    Ok(())
}

/// The verity parameters and hash area for an image of `len` bytes read through `read`
/// (two passes: the salt is the padded image's digest).
pub fn format(
    mut read: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    len: u64,
) -> io::Result<(Verity, Vec<u8>)> {
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an empty image has no dm-verity tree",
        ));
    }
    let data_blocks = len.div_ceil(BLOCK);
    let mut digest = Sha256::new();
    for_each_block::<io::Error>(&mut read, len, |b| {
        digest.update(b);
        Ok(())
    })?;
    let salt = salt_of(&digest.finalize().into());
    let mut area = superblock(&salt, data_blocks);
    area.resize(hash_area_len(data_blocks) as usize, 0);
    let mut tree = TreeBuilder::new(&salt, data_blocks);
    let mut emit = |at: u64, b: &[u8]| -> io::Result<()> {
        area[at as usize..(at + BLOCK) as usize].copy_from_slice(b);
        Ok(())
    };
    for_each_block::<io::Error>(&mut read, len, |b| tree.feed(b, &mut emit))?;
    let root_hash = tree.finish(&mut emit)?;
    let v = Verity {
        root_hash,
        salt,
        data_blocks,
        hash_offset: data_blocks * BLOCK,
    };
    Ok((v, area))
}

/// Why a slot does not hold the tree its parameters describe.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("{0}")]
    Mismatch(String),
}

/// Checks that the bytes read through `read` (a slot, or a payload file) are an image with
/// the hash area `v` describes: the superblock, every hash block recomputed from the image
/// and compared byte for byte, and the root hash. One pass over the image and the tree;
/// memory: one 1 MiB buffer and a block per tree level.
pub fn check(
    v: &Verity,
    mut read: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> Result<(), CheckError> {
    let mut stored = vec![0u8; BLOCK as usize];
    read(v.hash_offset, &mut stored)?;
    if stored != superblock(&v.salt, v.data_blocks) {
        return Err(CheckError::Mismatch(format!(
            "the dm-verity superblock at byte {} is not the one for this salt and size",
            v.hash_offset
        )));
    }
    let mut tree = TreeBuilder::new(&v.salt, v.data_blocks);
    let hash_offset = v.hash_offset;
    // The data and the stored tree come through the same reader, one after the other.
    let read = std::cell::RefCell::new(&mut read);
    let mut emit = |at: u64, want: &[u8]| -> Result<(), CheckError> {
        (read.borrow_mut())(hash_offset + at, &mut stored)?;
        if stored != want {
            return Err(CheckError::Mismatch(format!(
                "the dm-verity hash block at byte {} does not match the image",
                hash_offset + at
            )));
        }
        Ok(())
    };
    let mut data = |at: u64, buf: &mut [u8]| (read.borrow_mut())(at, buf);
    for_each_block::<CheckError>(&mut data, hash_offset, |b| tree.feed(b, &mut emit))?;
    let root = tree.finish(&mut emit)?;
    if root != v.root_hash {
        return Err(CheckError::Mismatch(format!(
            "the image and its dm-verity tree have root hash {}, the signed manifest says {}",
            hex::encode(root),
            hex::encode(v.root_hash)
        )));
    }
    Ok(())
}

/// [`check`] for a payload read front to back once (`abupdate verify` reads the bundle as a
/// stream): the image's blocks build the tree, and the digest of each hash block it makes is
/// kept (32 bytes per 4 KiB of tree) until the stored block comes by. Feed every byte of the
/// payload in order, then [`StreamCheck::finish`].
pub struct StreamCheck {
    v: Verity,
    tree: Option<TreeBuilder>,
    /// Bytes of whole blocks taken so far, and the block being filled.
    at: u64,
    block: Vec<u8>,
    /// Per block of the hash area: the digest it must have.
    expected: Vec<Option<[u8; 32]>>,
}

impl StreamCheck {
    pub fn new(v: &Verity) -> StreamCheck {
        let mut expected = vec![None; (v.hash_area_len() / BLOCK) as usize];
        expected[0] = Some(Sha256::digest(superblock(&v.salt, v.data_blocks)).into());
        StreamCheck {
            v: *v,
            tree: Some(TreeBuilder::new(&v.salt, v.data_blocks)),
            at: 0,
            block: Vec::with_capacity(BLOCK as usize),
            expected,
        }
    }

    /// The next bytes of the payload.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), CheckError> {
        while !data.is_empty() {
            let n = data.len().min(BLOCK as usize - self.block.len());
            self.block.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.block.len() as u64 == BLOCK {
                self.take_block()?;
                self.block.clear();
            }
        }
        Ok(())
    }

    fn take_block(&mut self) -> Result<(), CheckError> {
        let hash_offset = self.v.hash_offset;
        if self.at >= self.v.payload_len() {
            return Err(CheckError::Mismatch(
                "more bytes than image and hash area".into(),
            ));
        }
        let StreamCheck {
            tree,
            expected,
            block,
            ..
        } = self;
        let mut emit = |at: u64, b: &[u8]| -> Result<(), CheckError> {
            expected[(at / BLOCK) as usize] = Some(Sha256::digest(b).into());
            Ok(())
        };
        if self.at < hash_offset {
            let t = tree
                .as_mut()
                .expect("the tree is built until the image ends");
            t.feed(block, &mut emit)?;
            self.at += BLOCK;
            if self.at == hash_offset {
                let root = tree.take().expect("once").finish(&mut emit)?;
                if root != self.v.root_hash {
                    return Err(CheckError::Mismatch(format!(
                        "the image and its dm-verity tree have root hash {}, the signed manifest says {}",
                        hex::encode(root),
                        hex::encode(self.v.root_hash)
                    )));
                }
            }
            return Ok(());
        }
        let i = ((self.at - hash_offset) / BLOCK) as usize;
        if expected[i] != Some(Sha256::digest(&*block).into()) {
            return Err(CheckError::Mismatch(format!(
                "the dm-verity {} at byte {} does not match the image",
                if i == 0 { "superblock" } else { "hash block" },
                self.at
            )));
        }
        self.at += BLOCK;
        Ok(())
    }

    /// Whether every byte of image and hash area came.
    pub fn done(&self) -> bool {
        self.at == self.v.payload_len()
    }

    /// After the last byte: everything was there.
    pub fn finish(self) -> Result<(), CheckError> {
        if self.at != self.v.payload_len() || !self.block.is_empty() {
            return Err(CheckError::Mismatch(format!(
                "{} bytes of image and hash area, the parameters need {}",
                self.at + self.block.len() as u64,
                self.v.payload_len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
            .collect()
    }

    fn read_from(bytes: &[u8]) -> impl FnMut(u64, &mut [u8]) -> io::Result<()> + '_ {
        move |at, buf| {
            let at = at as usize;
            buf.copy_from_slice(&bytes[at..at + buf.len()]);
            Ok(())
        }
    }

    fn slot(img: &[u8]) -> (Verity, Vec<u8>) {
        let (v, area) = format(read_from(img), img.len() as u64).unwrap();
        let mut s = img.to_vec();
        s.resize(v.hash_offset as usize, 0);
        s.extend_from_slice(&area);
        (v, s)
    }

    #[test]
    fn levels_as_cryptsetup_counts_them() {
        assert_eq!(level_blocks(1), Vec::<u64>::new());
        assert_eq!(level_blocks(2), vec![1]);
        assert_eq!(level_blocks(128), vec![1]);
        assert_eq!(level_blocks(129), vec![2, 1]);
        assert_eq!(level_blocks(128 * 128), vec![128, 1]);
        assert_eq!(level_blocks(128 * 128 + 1), vec![129, 2, 1]);
        // 1 GiB: 262144 blocks -> 2048 + 16 + 1 tree blocks.
        assert_eq!(hash_area_len(262_144), 4096 * (1 + 2048 + 16 + 1));
    }

    #[test]
    fn param_round_trips_and_refuses_other_spellings() {
        let (v, _) = slot(&image(10_000, 1));
        assert_eq!(v.data_blocks, 3);
        assert_eq!(v.hash_offset, 3 * 4096);
        let p = v.param();
        assert_eq!(
            Verity::from_kernel_params(&format!("console=ttyS0 {p} panic=5")),
            Ok(Some(v))
        );
        assert_eq!(Verity::from_kernel_params("console=ttyS0"), Ok(None));
        assert!(Verity::from_kernel_params(&format!("{p} {p}")).is_err());
        let value = p.strip_prefix(PARAM).unwrap();
        for bad in [
            value.to_uppercase(),
            value.replace(",3,", ",03,"),
            value.replace(",12288", ",12289"),
            value.replace(",3,12288", ",0,0"),
            format!("{value},1"),
            value[2..].to_string(),
        ] {
            assert!(Verity::parse_value(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn check_accepts_its_own_tree_and_finds_any_flipped_byte() {
        for len in [4096, 5000, 128 * 4096, 129 * 4096 + 7] {
            let (v, s) = slot(&image(len, 7));
            assert_eq!(s.len() as u64, v.payload_len());
            check(&v, read_from(&s)).unwrap();
            // A byte of the image, of the padding, of the superblock, of the tree.
            let mut places = vec![0, len - 1, v.hash_offset as usize + 100];
            if v.hash_offset as usize > len {
                places.push(len);
            }
            if s.len() > v.hash_offset as usize + BLOCK as usize {
                places.push(s.len() - 1);
                places.push(v.hash_offset as usize + BLOCK as usize);
            }
            for at in places {
                let mut bad = s.clone();
                bad[at] ^= 1;
                assert!(
                    matches!(check(&v, read_from(&bad)), Err(CheckError::Mismatch(_))),
                    "len {len}, byte {at}"
                );
            }
            let mut other = v;
            other.root_hash[0] ^= 1;
            assert!(check(&other, read_from(&s)).is_err());
            // The stream check agrees, fed in pieces that do not fall on blocks.
            let stream = |v: &Verity, bytes: &[u8]| {
                let mut c = StreamCheck::new(v);
                for piece in bytes.chunks(1000) {
                    c.feed(piece)?;
                }
                c.finish()
            };
            stream(&v, &s).unwrap();
            assert!(stream(&other, &s).is_err());
            assert!(stream(&v, &s[..s.len() - 1]).is_err());
            for at in [0, len - 1, v.hash_offset as usize + 100, s.len() - 1] {
                let mut bad = s.clone();
                bad[at] ^= 1;
                assert!(stream(&v, &bad).is_err(), "len {len}, byte {at}");
            }
        }
    }

    #[test]
    fn same_image_same_tree_other_image_other_salt() {
        let a = slot(&image(300_000, 3));
        assert_eq!(a, slot(&image(300_000, 3)));
        let b = slot(&image(300_000, 4));
        assert_ne!(a.0.salt, b.0.salt);
        assert_ne!(a.0.root_hash, b.0.root_hash);
    }
}
