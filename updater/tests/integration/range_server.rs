//! A small HTTP/1.1 server with Range support on 127.0.0.1 for the delta tests: keep-alive,
//! one thread per connection, and faults injected on purpose (wrong ranges, short ranges, a
//! whole body where a range was asked, a redirect, a new ETag, stalls, a connection cut),
//! counting what it served.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server behaves.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Serve {
    /// 206 for a Range, 200 without one; keep-alive.
    Ranges,
    /// Always 200 and the whole bundle (a server without Range support).
    NoRanges,
    /// Range requests number `from` (1-based) and later get `fault`; the earlier ones are
    /// served well.
    Fault { from: u64, fault: Fault },
    /// Ranges are served well up to bundle offset `at`: a reply to a range past it ends there,
    /// in the middle of its body, and the connection is closed (a lost connection). By offset,
    /// not by bytes sent, so that ranges fetched side by side are cut the same way every run.
    CutAt(u64),
    /// As `Ranges`, each range reply held back this many milliseconds (a long round trip).
    Delayed(u64),
}

/// What a faulty range reply does.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Fault {
    /// 206 with a Content-Range (and bytes) one byte off from what was asked.
    WrongRange,
    /// 206 with a Content-Range and bytes of the same length from the bundle's start.
    OtherBytes,
    /// 206 with the range asked but another bundle length after the slash.
    OtherTotal,
    /// A different ETag (the file replaced mid-apply).
    NewEtag,
    /// 200 and the whole bundle (the server stopped honouring Range).
    Whole,
    /// The Content-Length and Content-Range asked, half the bytes, then the connection closed.
    ShortClosed,
    /// The Content-Range asked, but a Content-Length and body of half of it (keep-alive).
    ShortLength,
    /// Headers and half the body, then nothing; the socket stays open.
    StallBody,
    /// The request is read and never answered; the socket stays open.
    StallHead,
    /// A 302 to `/moved.abu` on the same server, which serves the same bundle well.
    Redirect,
}

#[derive(Default, Debug)]
pub struct Served {
    pub connections: u64,
    /// Requests with a Range header.
    pub range_requests: u64,
    /// Bytes those requests asked for.
    pub range_bytes: u64,
    /// Body bytes of range replies actually written to the client.
    pub sent_bytes: u64,
    /// Range requests being answered now, and the most there were at once.
    pub in_flight: u64,
    pub most_in_flight: u64,
}

/// Starts the server for `body`; returns its URL (`http://127.0.0.1:PORT/b.abu`) and counters.
pub fn range_server(body: Vec<u8>, mode: Serve) -> (String, Arc<Mutex<Served>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(Mutex::new(Served::default()));
    let body = Arc::new(body);
    let s2 = served.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            s2.lock().unwrap().connections += 1;
            let (body, served) = (body.clone(), s2.clone());
            std::thread::spawn(move || connection(conn, &body, mode, &served));
        }
    });
    (format!("http://127.0.0.1:{port}/b.abu"), served)
}

/// A 200 with the whole bundle (what a server without Range support sends).
fn send_whole(w: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"v1\"\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body)
}

/// Serves requests on one connection until it closes or a fault ends it.
fn connection(conn: TcpStream, body: &[u8], mode: Serve, served: &Mutex<Served>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    let total = body.len() as u64;
    loop {
        let Some((path, range)) = request(&mut r) else {
            return;
        };
        let range = range.filter(|_| mode != Serve::NoRanges);
        let Some((a, b)) = range else {
            if send_whole(&mut w, body).is_err() {
                return;
            }
            continue;
        };
        let len = b + 1 - a;
        let n = {
            let mut s = served.lock().unwrap();
            s.range_requests += 1;
            s.range_bytes += len;
            s.in_flight += 1;
            s.most_in_flight = s.most_in_flight.max(s.in_flight);
            s.range_requests
        };
        if let Serve::Delayed(ms) = mode {
            std::thread::sleep(Duration::from_millis(ms));
        }
        // Counted as answered from here (a fault below may end the connection).
        served.lock().unwrap().in_flight -= 1;
        let fault = match mode {
            Serve::Fault { from, fault } if n >= from && path != "/moved.abu" => Some(fault),
            _ => None,
        };
        // What is sent: the head, then `data`, of which only `send` bytes; then `after`.
        let (mut start, mut end) = (a, b);
        let (mut total_said, mut etag, mut length) = (total, "\"v1\"", len);
        let mut send = len;
        let mut after = After::KeepAlive;
        match fault {
            None => {}
            Some(Fault::WrongRange) => (start, end) = (a + 1, (b + 1).min(total - 1)),
            Some(Fault::OtherBytes) => (start, end) = (0, len - 1),
            Some(Fault::OtherTotal) => total_said = total + 4096,
            Some(Fault::NewEtag) => etag = "\"v2\"",
            Some(Fault::Whole) => {
                if send_whole(&mut w, body).is_err() {
                    return;
                }
                continue;
            }
            Some(Fault::ShortClosed) => (send, after) = (len / 2, After::Close),
            Some(Fault::ShortLength) => (send, length) = (len / 2, len / 2),
            Some(Fault::StallBody) => (send, after) = (len / 2, After::Hold),
            Some(Fault::StallHead) => {
                hold(&w);
                return;
            }
            Some(Fault::Redirect) => {
                let head =
                    "HTTP/1.1 302 Found\r\nLocation: /moved.abu\r\nContent-Length: 0\r\n\r\n";
                if w.write_all(head.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        if let Serve::CutAt(at) = mode {
            if b >= at {
                (send, after) = (at.saturating_sub(a), After::Close);
            }
        }
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {length}\r\n\
             Content-Range: bytes {start}-{end}/{total_said}\r\nETag: {etag}\r\n\r\n"
        );
        let data = &body[start as usize..=end as usize];
        let data = &data[..data.len().min(send as usize)];
        if w.write_all(head.as_bytes())
            .and_then(|()| w.write_all(data))
            .and_then(|()| w.flush())
            .is_err()
        {
            return;
        }
        served.lock().unwrap().sent_bytes += data.len() as u64;
        match after {
            After::KeepAlive => {}
            After::Close => {
                let _ = w.shutdown(Shutdown::Both);
                return;
            }
            After::Hold => {
                hold(&w);
                return;
            }
        }
    }
}

enum After {
    KeepAlive,
    Close,
    /// Send nothing more and keep the socket open until the client closes it.
    Hold,
}

/// Reads one request head; returns its path and `Range: bytes=A-B` (inclusive), `None` at the
/// end of the connection.
fn request(r: &mut impl BufRead) -> Option<(String, Option<(u64, u64)>)> {
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 {
            return None;
        }
        if h == "\r\n" {
            return Some((path, range));
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (a, b) = v.trim().split_once('-').unwrap();
            range = Some((a.parse().unwrap(), b.parse().unwrap()));
        }
    }
}

/// Keeps the connection open, sending nothing, until the client closes it (or two minutes,
/// far beyond any limit a test sets).
fn hold(conn: &TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let mut buf = [0u8; 4096];
    while matches!((&*conn).read(&mut buf), Ok(n) if n > 0) {}
}
