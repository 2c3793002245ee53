//! The pipeline's source for a bundle read as one stream (`apply --full`, format 1, a server
//! that ignores Range, a plan that would fetch most of the bundle anyway): every chunk in
//! bundle order, checked by the bundle reader against the signed table, read straight into the
//! pipeline's buffers and gathered into runs of one payload.

use std::io::Read;

use abbundle::{BundleReader, ChunkInfo};
use anyhow::Result;

use crate::install::pipeline::{Msg, Sink};

/// A run of verified chunks of one payload being gathered in one buffer.
struct Run {
    /// The first chunk's place (set once it is read).
    first: Option<ChunkInfo>,
    buf: crate::disk::direct::AlignedBuf,
    len: usize,
}

/// Sends every payload's chunks, runs of up to the sink's buffer size. Returns early (Ok) if
/// the writer is gone: its error is the one reported.
pub fn produce(mut reader: BundleReader<Box<dyn Read + Send>>, sink: Sink) -> Result<()> {
    // Hands a run to the writer; false once the writer is gone.
    let send = |run: Run, last: bool| -> bool {
        let first = run.first.expect("a run holds a chunk");
        sink.send(Msg::Data {
            kind: first.kind,
            offset: first.offset,
            data: run.buf,
            len: run.len,
            last,
        })
    };
    let cap = sink.batch;
    let mut run: Option<Run> = None;
    loop {
        let Some((kind, len)) = reader.upcoming() else {
            return Ok(());
        };
        // Runs end at their payload's last chunk or when the next chunk would not fit (below),
        // so this only guards the buffer's bounds.
        if run
            .as_ref()
            .is_some_and(|r| r.first.is_some_and(|f| f.kind != kind) || r.len + len > cap)
            && !send(run.take().expect("checked"), false)
        {
            return Ok(());
        }
        if run.is_none() {
            let Some(buf) = sink.buffer() else {
                return Ok(());
            };
            run = Some(Run {
                first: None,
                buf,
                len: 0,
            });
        }
        let r = run.as_mut().expect("just set");
        let c = match reader.next_chunk_into(&mut r.buf.as_mut_slice()[r.len..]) {
            Ok(Some(c)) => c,
            Ok(None) => unreachable!("upcoming() promised a chunk"),
            Err(e) => return Err(anyhow::Error::new(e).context("reading the bundle")),
        };
        r.first.get_or_insert(c);
        r.len += c.len;
        if (c.last || r.len + c.len > cap) && !send(run.take().expect("just set"), c.last) {
            return Ok(());
        }
    }
}
