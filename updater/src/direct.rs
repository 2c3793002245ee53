//! Reading around the page cache with `O_DIRECT`: for the read-back check (the data must
//! come from the device, not from memory) and for reading bundle files (a cold read through the
//! page cache costs more CPU than hashing on small machines). Buffers, offsets and lengths must
//! be aligned; where `O_DIRECT` is not supported (tmpfs), callers fall back to buffered reads.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
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

/// Opens `path` read-only with `O_DIRECT`, if the file system supports it (probed with one
/// aligned read).
pub fn open(path: &Path) -> Option<File> {
    open_rw(path, false)
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

/// A sequential reader of a whole file through `O_DIRECT`, in large aligned reads.
pub struct DirectReader {
    file: File,
    buf: AlignedBuf,
    pos: u64,
    filled: usize,
    consumed: usize,
    eof: bool,
}

/// Size of each read: large, so the device streams.
const READ_SIZE: usize = 2 << 20;

impl DirectReader {
    pub fn new(file: File) -> DirectReader {
        DirectReader {
            file,
            buf: AlignedBuf::new(READ_SIZE),
            pos: 0,
            filled: 0,
            consumed: 0,
            eof: false,
        }
    }
}

impl Read for DirectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.consumed == self.filled {
            if self.eof {
                return Ok(0);
            }
            let n = loop {
                match self.file.read_at(self.buf.as_mut_slice(), self.pos) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            self.pos += n as u64;
            self.filled = n;
            self.consumed = 0;
            // A short read happens only at the end of the file (its length is not aligned).
            self.eof = n < READ_SIZE;
            if n == 0 {
                return Ok(0);
            }
        }
        let n = out.len().min(self.filled - self.consumed);
        out[..n].copy_from_slice(&self.buf.as_slice()[self.consumed..self.consumed + n]);
        self.consumed += n;
        Ok(n)
    }
}
