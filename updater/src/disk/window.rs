//! A bounded read/write/seek window onto one partition, for the FAT driver (it cannot touch
//! anything else), with an optional write-back block cache for the ESP.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use crate::fault;

/// Block size of the cache.
const BLOCK: u64 = 4096;
/// Validity is tracked per 512-byte sector: the FAT driver writes whole clusters (2 KiB with
/// `images/vps.toml`), so a block that is written in full is never read from the disk first.
const SECTOR: u64 = 512;
/// All 8 sectors of a block valid.
const FULL: u8 = 0xff;
/// Most blocks the cache holds (1 MiB); past that, dirty blocks are written out.
const CACHE_BLOCKS: usize = 256;
/// Blocks read at once on a read miss (256 KiB): the FAT driver reads a cluster at a time,
/// and the kernel, the initrd and the FAT itself are read front to back.
const READ_AHEAD: u64 = 64;

struct Block {
    data: Box<[u8]>,
    dirty: bool,
    /// Bit `i` set: sector `i` holds the partition's current contents (read, or written).
    valid: u8,
}

/// A write-back cache of the ESP's blocks. The FAT driver reads and writes in sectors (FAT
/// entries of 4 bytes, a cluster at a time): through the cache, its reads come from a few
/// large reads and its writes reach the disk as a few large writes at each flush.
///
/// Power-cut semantics are those of the kernel's page cache, which reorders writes between
/// two syncs anyway: only what was written before a [`Window::flush_cache`] + `fdatasync` is
/// known to be on the disk, in any order. The ESP code therefore orders what matters with syncs
/// (data before the directory entry that points to it; new entry before removing the old).
#[derive(Default)]
pub struct BlockCache {
    blocks: BTreeMap<u64, Block>,
    /// Buffers of flushed blocks, reused (blocks come and go by the thousand).
    spare: Vec<Box<[u8]>>,
    read_ahead: Vec<u8>,
}

/// Where a cache reads and writes: the partition's bytes `start..start + len` of `file`.
#[derive(Clone, Copy)]
struct Area<'f> {
    file: &'f File,
    start: u64,
    len: u64,
}

impl Area<'_> {
    /// Bytes of block `idx` inside the partition (the last block may be short).
    fn block_len(&self, idx: u64) -> usize {
        BLOCK.min(self.len.saturating_sub(idx * BLOCK)) as usize
    }

    /// Sectors of block `idx` past the partition's end: they count as valid.
    fn beyond_end(&self, idx: u64) -> u8 {
        let sectors = (self.block_len(idx) as u64).div_ceil(SECTOR);
        !((1u16 << sectors) - 1) as u8
    }
}

impl BlockCache {
    fn new_buf(&mut self) -> Box<[u8]> {
        self.spare
            .pop()
            .unwrap_or_else(|| vec![0u8; BLOCK as usize].into_boxed_slice())
    }

    /// Block `idx` with all its sectors valid, reading ahead on a miss.
    fn for_read(&mut self, area: Area, idx: u64) -> io::Result<&mut Block> {
        if !self.blocks.contains_key(&idx) {
            let end = (idx + READ_AHEAD).min(area.len.div_ceil(BLOCK));
            let count = (idx..end)
                .take_while(|i| !self.blocks.contains_key(i))
                .count() as u64;
            let bytes = ((idx + count) * BLOCK).min(area.len) - idx * BLOCK;
            let mut ahead = std::mem::take(&mut self.read_ahead);
            ahead.resize(bytes as usize, 0);
            area.file
                .read_exact_at(&mut ahead, area.start + idx * BLOCK)?;
            for (i, part) in (idx..).zip(ahead.chunks(BLOCK as usize)) {
                let mut data = self.new_buf();
                data[..part.len()].copy_from_slice(part);
                let block = Block {
                    data,
                    dirty: false,
                    valid: FULL,
                };
                self.blocks.insert(i, block);
            }
            self.read_ahead = ahead;
        }
        let b = self.blocks.get_mut(&idx).expect("just read");
        fill(area, idx, b)?;
        Ok(b)
    }

    /// Block `idx`, ready for `len` bytes to be written at `at`: sectors the write covers only
    /// in part are read first, sectors it covers in full are not.
    fn for_write(&mut self, area: Area, idx: u64, at: usize, len: usize) -> io::Result<&mut Block> {
        if !self.blocks.contains_key(&idx) {
            let data = self.new_buf();
            let valid = area.beyond_end(idx);
            self.blocks.insert(
                idx,
                Block {
                    data,
                    dirty: false,
                    valid,
                },
            );
        }
        let b = self.blocks.get_mut(&idx).expect("just inserted");
        let (first, last) = (at as u64 / SECTOR, (at + len) as u64 - 1);
        let last = last / SECTOR;
        let mut covered = 0u8;
        for s in first..=last {
            if s * SECTOR >= at as u64 && (s + 1) * SECTOR <= (at + len) as u64 {
                covered |= 1 << s;
            } else if b.valid & (1 << s) == 0 {
                fill(area, idx, b)?;
            }
        }
        b.valid |= covered;
        Ok(b)
    }

    /// Writes dirty blocks out (contiguous runs as one write each, every write a
    /// fault-injection point) and empties the cache.
    fn flush(&mut self, area: Area) -> io::Result<()> {
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        let mut next = u64::MAX;
        let write_run = |run: &mut Vec<u8>, at: u64| -> io::Result<()> {
            if !run.is_empty() {
                area.file.write_all_at(run, area.start + at)?;
                fault::point("esp write");
                run.clear();
            }
            Ok(())
        };
        for (&idx, b) in self.blocks.iter_mut() {
            if !b.dirty {
                continue;
            }
            // Written in part only: the rest of the block comes from the disk.
            fill(area, idx, b)?;
            let off = idx * BLOCK;
            if off != next || run.len() >= 1 << 20 {
                write_run(&mut run, run_start)?;
                run_start = off;
            }
            let n = area.block_len(idx);
            run.extend_from_slice(&b.data[..n]);
            next = off + n as u64;
        }
        write_run(&mut run, run_start)?;
        let blocks = std::mem::take(&mut self.blocks);
        self.spare.extend(blocks.into_values().map(|b| b.data));
        Ok(())
    }
}

/// Reads the sectors of block `idx` that `b` does not hold yet from the disk.
fn fill(area: Area, idx: u64, b: &mut Block) -> io::Result<()> {
    if b.valid == FULL {
        return Ok(());
    }
    let mut disk = [0u8; BLOCK as usize];
    let n = area.block_len(idx);
    area.file
        .read_exact_at(&mut disk[..n], area.start + idx * BLOCK)?;
    for s in 0..(BLOCK / SECTOR) as usize {
        if b.valid & (1 << s) == 0 {
            let r = s * SECTOR as usize..(s + 1) * SECTOR as usize;
            b.data[r.clone()].copy_from_slice(&disk[r]);
        }
    }
    b.valid = FULL;
    Ok(())
}

/// A bounded window onto one partition. With a cache (the ESP), writes are held in memory
/// until [`Window::flush_cache`]. A clone shares the cache.
#[derive(Clone)]
pub struct Window<'a> {
    area: Area<'a>,
    pos: u64,
    cache: Option<Rc<RefCell<BlockCache>>>,
}

impl<'a> Window<'a> {
    /// The bytes `start..start + len` of `file`.
    pub fn new(
        file: &'a File,
        start: u64,
        len: u64,
        cache: Option<Rc<RefCell<BlockCache>>>,
    ) -> Window<'a> {
        Window {
            area: Area { file, start, len },
            pos: 0,
            cache,
        }
    }

    /// Writes out what the cache holds (no-op without a cache). Callers sync afterwards.
    pub fn flush_cache(&self) -> io::Result<()> {
        match &self.cache {
            Some(c) => c.borrow_mut().flush(self.area),
            None => Ok(()),
        }
    }

    /// Bytes from the position to the end of the window, at most `want`, and at most to the
    /// end of the current block: (block index, offset in it, count).
    fn span(&self, want: usize) -> (u64, usize, usize) {
        let n = self.area.len.saturating_sub(self.pos).min(want as u64) as usize;
        let in_block = (self.pos % BLOCK) as usize;
        (self.pos / BLOCK, in_block, n.min(BLOCK as usize - in_block))
    }
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let area = self.area;
        let Some(cache) = &self.cache else {
            let n = area.len.saturating_sub(self.pos).min(buf.len() as u64) as usize;
            let n = area.file.read_at(&mut buf[..n], area.start + self.pos)?;
            self.pos += n as u64;
            return Ok(n);
        };
        let (idx, at, take) = self.span(buf.len());
        if take == 0 {
            return Ok(0);
        }
        let mut c = cache.borrow_mut();
        let b = c.for_read(area, idx)?;
        buf[..take].copy_from_slice(&b.data[at..at + take]);
        self.pos += take as u64;
        if c.blocks.len() > CACHE_BLOCKS {
            c.flush(area)?;
        }
        Ok(take)
    }
}

impl Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let area = self.area;
        if self.pos >= area.len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let Some(cache) = &self.cache else {
            let n = (area.len - self.pos).min(buf.len() as u64) as usize;
            area.file.write_all_at(&buf[..n], area.start + self.pos)?;
            self.pos += n as u64;
            fault::point("esp write");
            return Ok(n);
        };
        let (idx, at, take) = self.span(buf.len());
        let mut c = cache.borrow_mut();
        let b = c.for_write(area, idx, at, take)?;
        b.data[at..at + take].copy_from_slice(&buf[..take]);
        b.dirty = true;
        self.pos += take as u64;
        if c.blocks.len() > CACHE_BLOCKS {
            c.flush(area)?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.area.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(n) if n <= self.area.len => {
                self.pos = n;
                Ok(n)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random reads, writes, seeks and flushes through a cached window, checked against a
    /// plain byte array: reads must see every earlier write, the bytes around the window
    /// must never change, and after a flush the file must hold exactly the model.
    #[test]
    fn cached_window_behaves_like_plain_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        // A partition of 300 sectors (not a whole number of blocks) between two guard areas.
        let (start, len) = (3 * SECTOR, 300 * SECTOR);
        let total = (start + len + 5 * SECTOR) as usize;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let initial: Vec<u8> = (0..total).map(|_| rand() as u8).collect();
        std::fs::write(&path, &initial).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut model = initial[start as usize..(start + len) as usize].to_vec();
        let cache = Rc::new(RefCell::new(BlockCache::default()));
        let mut w = Window::new(&file, start, len, Some(cache.clone()));
        let flusher = Window::new(&file, start, len, Some(cache));
        for step in 0..20_000 {
            let pos = rand() % len;
            // Sizes around sector and block boundaries, as the FAT driver uses them.
            let size = [1, 4, 32, 511, 512, 513, 2048, 4096, 5000][rand() as usize % 9];
            let size = size.min((len - pos) as usize);
            w.seek(SeekFrom::Start(pos)).unwrap();
            match rand() % 10 {
                0..=4 => {
                    let data: Vec<u8> = (0..size).map(|_| rand() as u8).collect();
                    w.write_all(&data).unwrap();
                    model[pos as usize..pos as usize + size].copy_from_slice(&data);
                }
                5..=8 => {
                    let mut got = vec![0u8; size];
                    w.read_exact(&mut got).unwrap();
                    assert_eq!(got, model[pos as usize..pos as usize + size], "step {step}");
                }
                _ => {
                    flusher.flush_cache().unwrap();
                    let disk = std::fs::read(&path).unwrap();
                    assert_eq!(disk[start as usize..(start + len) as usize], model[..]);
                }
            }
        }
        flusher.flush_cache().unwrap();
        let disk = std::fs::read(&path).unwrap();
        assert_eq!(disk[..start as usize], initial[..start as usize]);
        assert_eq!(disk[start as usize..(start + len) as usize], model[..]);
        assert_eq!(
            disk[(start + len) as usize..],
            initial[(start + len) as usize..]
        );
        assert!(w.seek(SeekFrom::Start(len + 1)).is_err());
        w.seek(SeekFrom::Start(len)).unwrap();
        assert!(w.write(b"x").is_err());
        assert_eq!(w.read(&mut [0u8; 8]).unwrap(), 0);
    }
}
