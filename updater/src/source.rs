//! Where a bundle comes from: a file, a block device holding one, or an http(s) URL streamed
//! straight into the verifier (no temporary file: the device may have no room for one).

use std::fs::File;
use std::io::{BufReader, Cursor, Read};
use std::os::unix::fs::FileTypeExt;

use abbundle::{Header, HEADER_LEN};
use anyhow::{Context, Result};

/// Read buffer for bundle sources: a few chunks' worth keeps syscalls and TCP reads out of the
/// profile while memory stays small and constant.
const READ_BUFFER: usize = 1 << 20;

fn advise_sequential(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise takes a descriptor and integers; it is advice, errors are ignored.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

/// Opens `source` as a byte stream of the bundle.
pub fn open(source: &str) -> Result<Box<dyn Read + Send>> {
    if source.starts_with("http://") || source.starts_with("https://") {
        return open_url(source);
    }
    let file = File::open(source).with_context(|| format!("opening {source}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("inspecting {source}"))?;
    if !meta.file_type().is_block_device() {
        // Read ahead: the bundle is read once, front to back. (Buffered reads with kernel
        // read-ahead were clearly faster here than O_DIRECT reads one buffer at a time.)
        // No BufReader: the bundle reader reads whole chunks, straight from the page cache.
        advise_sequential(&file);
        return Ok(Box::new(file));
    }
    advise_sequential(&file);
    let mut r = BufReader::with_capacity(READ_BUFFER, file);
    // A bundle on a block device is followed by whatever else the device holds: stop at the
    // length its header states (the header is checked again by the bundle reader).
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head)
        .with_context(|| format!("reading the bundle header from {source}"))?;
    let h = Header::decode(&head).with_context(|| format!("reading {source}"))?;
    let rest = r.take(h.total_len - HEADER_LEN as u64);
    Ok(Box::new(Cursor::new(head).chain(rest)))
}

#[cfg(feature = "http")]
fn open_url(url: &str) -> Result<Box<dyn Read + Send>> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(30))
        .timeout_read(std::time::Duration::from_secs(60))
        .build();
    let resp = agent
        .get(url)
        .call()
        .map_err(|e| anyhow::anyhow!("fetching {url}: {e}"))?;
    Ok(Box::new(BufReader::with_capacity(
        READ_BUFFER,
        resp.into_reader(),
    )))
}

#[cfg(not(feature = "http"))]
fn open_url(url: &str) -> Result<Box<dyn Read + Send>> {
    anyhow::bail!("{url}: this abupdate was built without HTTP support (feature 'http')")
}
