//! Reading around the page cache with `O_DIRECT`, for the read-back check: the data must come
//! from the device, not from memory. Buffers, offsets and lengths must
//! be aligned; where `O_DIRECT` is not supported (tmpfs), callers fall back to buffered reads.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment for `O_DIRECT` buffers, offsets and lengths (the largest logical block size in use).
pub const ALIGN: usize = 4096;

/// A heap buffer whose usable part starts on an [`ALIGN`] boundary.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` rounded up to [`ALIGN`].
    pub fn new(len: usize) -> AlignedBuf {
        let len = len.div_ceil(ALIGN) * ALIGN;
        let raw = vec![0u8; len + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf { raw, start, len }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

/// Opens `path` with `O_DIRECT`, read-write if `write`, if the file system supports it.
pub fn open_rw(path: &Path, write: bool) -> Option<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()?;
    let mut probe = AlignedBuf::new(ALIGN);
    f.read_at(probe.as_mut_slice(), 0).ok()?;
    Some(f)
}
