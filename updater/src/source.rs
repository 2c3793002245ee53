//! Where a bundle comes from: a file, a block device holding one, or an http(s) URL streamed
//! straight into the verifier (no temporary file: the device may have no room for one).

use std::fs::File;
use std::io::{BufReader, Cursor, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

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

/// Opens `source` as a byte stream of the bundle. `ca_file`: PEM certificates that https://
/// servers are checked against instead of the built-in Mozilla roots (a private update server).
pub fn open(source: &str, ca_file: Option<&Path>) -> Result<Box<dyn Read + Send>> {
    if source.starts_with("http://") || source.starts_with("https://") {
        return open_url(source, ca_file);
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
fn open_url(url: &str, ca_file: Option<&Path>) -> Result<Box<dyn Read + Send>> {
    use crate::codes::{self, Refusal};
    let mut agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(30))
        .timeout_read(std::time::Duration::from_secs(60));
    if let Some(ca) = ca_file {
        agent = with_roots(agent, ca)?;
    }
    let resp = agent.build().get(url).call().map_err(|e| {
        let hint = if e.to_string().contains("certificate") {
            " (a server with a private CA needs ca-file in the config)"
        } else {
            ""
        };
        Refusal::new(
            codes::SOURCE_UNAVAILABLE,
            format!("fetching {url}: {e}{hint}; nothing was changed"),
        )
    })?;
    Ok(Box::new(BufReader::with_capacity(
        READ_BUFFER,
        resp.into_reader(),
    )))
}

/// Trusts only the certificates in the PEM file `ca` for https://.
#[cfg(feature = "https")]
fn with_roots(agent: ureq::AgentBuilder, ca: &Path) -> Result<ureq::AgentBuilder> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let what = || format!("reading CA certificates from {}", ca.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(what)? {
        roots.add(cert.with_context(what)?).with_context(what)?;
    }
    if roots.is_empty() {
        anyhow::bail!("{}: no certificates in it", ca.display());
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(agent.tls_config(std::sync::Arc::new(tls)))
}

#[cfg(all(feature = "http", not(feature = "https")))]
fn with_roots(_: ureq::AgentBuilder, _: &Path) -> Result<ureq::AgentBuilder> {
    anyhow::bail!("ca-file is set, but this abupdate was built without https (feature 'https')")
}

#[cfg(not(feature = "http"))]
fn open_url(url: &str, _: Option<&Path>) -> Result<Box<dyn Read + Send>> {
    anyhow::bail!("{url}: this abupdate was built without HTTP support (feature 'http')")
}
