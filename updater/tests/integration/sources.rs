//! Bundle sources (updater/src/source.rs) under bad conditions: truncated files and downloads
//! refused before anything changes, slow and broken HTTP servers, redirects, secrets in URLs,
//! and `verify` reading a block device the way `apply` does. The servers are small threads on
//! 127.0.0.1 that misbehave on purpose.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::util::*;

const TRUNCATED: i32 = 11;
const MALFORMED: i32 = 10;
const SOURCE_UNAVAILABLE: i32 = 41;

/// A small bundle for the test device, signed by the test-only key (no disk image needed).
pub fn small_bundle() -> Vec<u8> {
    RawBundle::default().bytes()
}

/// Serves one connection on 127.0.0.1: reads the request head, then hands the socket to
/// `respond`. Returns the port.
fn serve_once(respond: impl FnOnce(TcpStream) + Send + 'static) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 2 {
            line.clear();
        }
        respond(s);
    });
    (port, server)
}

fn ok_head(len: usize) -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
}

/// Runs abupdate with `args`, killing it after 20 s (an unbounded download is one of the
/// defects tested here); returns its output and how long it ran.
pub fn run_bounded(env: &Env, disk: &Path, args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = env
        .cmd(disk, None, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), start.elapsed())
}

/// Small HTTP limits so that the slow-server tests end in seconds.
pub fn set_http_limits(env: &Env, min_rate: u64, window: u64, timeout: u64) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(env.path("abupdate.toml"))
        .unwrap();
    writeln!(
        f,
        "http-min-rate = {min_rate}\nhttp-rate-window = {window}\nhttp-timeout = {timeout}\nhttp-connect-timeout = 2"
    )
    .unwrap();
}

/// A bundle file shorter than its header says is refused before anything is written: the
/// disk image stays byte-identical, exit 11. A file with data after the bundle's end keeps
/// its own error (exit 10).
#[test]
fn truncated_bundle_file_is_refused_before_anything_changes() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let full = fs::read(&v2.bundle).unwrap();
    let before = sha256_file(&disk);
    // Cut inside the root image, and one byte short of the end (inside the initrd).
    for cut in [full.len() / 2, full.len() - 1] {
        let short = env.path("short.abu");
        fs::write(&short, &full[..cut]).unwrap();
        let err = fails(
            &env.abupdate(&disk, &["apply", short.to_str().unwrap()]),
            TRUNCATED,
        );
        assert!(
            err.contains(&format!("it has {cut} bytes")) && err.ends_with("nothing was changed"),
            "{err}"
        );
        assert_eq!(
            sha256_file(&disk),
            before,
            "a truncated bundle changed the disk"
        );
    }
    let long = env.path("long.abu");
    fs::write(&long, [&full[..], b"trailing"].concat()).unwrap();
    let err = fails(
        &env.abupdate(&disk, &["verify", long.to_str().unwrap()]),
        MALFORMED,
    );
    assert!(err.contains("data after its last payload"), "{err}");
}

/// The same over HTTP: a Content-Length shorter than the bundle is refused before anything
/// is written.
#[test]
fn truncated_bundle_over_http_is_refused_before_anything_changes() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let full = fs::read(&v2.bundle).unwrap();
    let body = full[..full.len() * 2 / 3].to_vec();
    let (port, server) = serve_once(move |mut s| {
        let _ = s.write_all(ok_head(body.len()).as_bytes());
        let _ = s.write_all(&body);
    });
    let before = sha256_file(&disk);
    let url = format!("http://127.0.0.1:{port}/v2.abu");
    let (out, _) = run_bounded(&env, &disk, &["apply", &url]);
    let err = fails(&out, TRUNCATED);
    assert!(err.ends_with("nothing was changed"), "{err}");
    server.join().unwrap();
    assert_eq!(
        sha256_file(&disk),
        before,
        "a truncated download changed the disk"
    );
}

/// A server that trickles a byte at a time is given up on once a rate window brought less
/// than http-min-rate (exit 41), instead of holding apply and its lock for ever.
#[test]
fn trickling_server_fails_on_the_minimum_rate() {
    let env = Env::new();
    set_http_limits(&env, 1024, 1, 30);
    let body = small_bundle();
    let (port, server) = serve_once(move |mut s| {
        let _ = s.write_all(ok_head(body.len()).as_bytes());
        let start = Instant::now();
        for b in &body {
            if start.elapsed() > Duration::from_secs(15) || s.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let url = format!("http://127.0.0.1:{port}/small.abu");
    let (out, took) = run_bounded(&env, &env.path("no-disk"), &["verify", &url]);
    let err = fails(&out, SOURCE_UNAVAILABLE);
    assert!(err.contains("http-min-rate"), "{err}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    server.join().unwrap();
}

/// A server that trickles its response head (a header line every 2 s, each read well within
/// the 3 s rate window) is cut once connect + one rate window passed without a whole head, on
/// the first request of an apply, as docs/updater.md promises: before, that request waited for
/// http-timeout (here 600 s), holding the lock. The disk is untouched.
#[test]
fn a_trickled_response_head_is_cut_after_one_rate_window() {
    let env = Env::new();
    set_http_limits(&env, 0, 3, 600);
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    let (port, server) = serve_once(move |mut s| {
        let start = Instant::now();
        let _ = s.write_all(b"HTTP/1.1 206 Partial Content\r\n");
        while start.elapsed() < Duration::from_secs(30) && s.write_all(b"X-Slow: 1\r\n").is_ok() {
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    let url = format!("http://127.0.0.1:{port}/v2.abu");
    let (out, took) = run_bounded(&env, &disk, &["apply", &url]);
    let err = fails(&out, SOURCE_UNAVAILABLE);
    assert!(
        err.contains("no complete response head within 5 s")
            && err.contains("(http-connect-timeout + http-rate-window)"),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(sha256_file(&disk), before, "the disk changed");
    server.join().unwrap();
}

/// Fast enough per window, but the whole download is bounded by http-timeout.
#[test]
fn slow_download_fails_on_the_overall_deadline() {
    let env = Env::new();
    set_http_limits(&env, 0, 1, 2);
    let body = small_bundle();
    let (port, server) = serve_once(move |mut s| {
        let _ = s.write_all(ok_head(body.len()).as_bytes());
        let start = Instant::now();
        for b in body.chunks(100) {
            if start.elapsed() > Duration::from_secs(15) || s.write_all(b).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let url = format!("http://127.0.0.1:{port}/small.abu");
    let (out, took) = run_bounded(&env, &env.path("no-disk"), &["verify", &url]);
    let err = fails(&out, SOURCE_UNAVAILABLE);
    assert!(err.contains("http-timeout"), "{err}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    server.join().unwrap();
}

/// A connection that breaks in the middle of the body (closed early, or reset) is a fetch
/// error, exit 41, not a generic failure.
#[test]
fn connection_lost_mid_transfer_is_a_fetch_error() {
    let env = Env::new();
    for reset in [false, true] {
        let body = small_bundle();
        let (port, server) = serve_once(move |mut s| {
            let _ = s.write_all(ok_head(body.len()).as_bytes());
            let _ = s.write_all(&body[..body.len() / 2]);
            let _ = s.flush();
            std::thread::sleep(Duration::from_millis(200));
            if reset {
                // SO_LINGER with a zero timeout: close() sends a RST.
                use std::os::fd::AsRawFd;
                let l = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: a valid socket and a linger struct of the size passed.
                unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        &l as *const libc::linger as *const libc::c_void,
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
            }
        });
        let url = format!("http://127.0.0.1:{port}/small.abu");
        let (out, _) = run_bounded(&env, &env.path("no-disk"), &["verify", &url]);
        let err = fails(&out, SOURCE_UNAVAILABLE);
        assert!(
            err.contains(&format!("127.0.0.1:{port}")),
            "reset {reset}: {err}"
        );
        server.join().unwrap();
    }
}

/// Redirects are followed to http(s) only: one to file:// is refused with exit 41 (it
/// panicked before), and nothing is read from the file.
#[test]
fn redirect_to_a_file_url_is_refused() {
    let env = Env::new();
    let secret = env.path("small.abu");
    fs::write(&secret, small_bundle()).unwrap();
    let location = format!("file://{}", secret.display());
    let (port, server) = serve_once(move |mut s| {
        let _ = write!(
            s,
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    });
    let url = format!("http://127.0.0.1:{port}/small.abu");
    let (out, _) = run_bounded(&env, &env.path("no-disk"), &["verify", &url]);
    let err = fails(&out, SOURCE_UNAVAILABLE);
    assert!(err.contains("refusing a redirect to a file: URL"), "{err}");
    server.join().unwrap();
}

/// A password in the URL never appears in a message; the user name does.
#[test]
fn password_in_url_is_redacted() {
    let env = Env::new();
    let (port, server) = serve_once(|mut s| {
        let _ = s
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    });
    let url = format!("http://fleet:hunter2@127.0.0.1:{port}/small.abu");
    let (out, _) = run_bounded(&env, &env.path("no-disk"), &["verify", &url]);
    let err = fails(&out, SOURCE_UNAVAILABLE);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("hunter2"), "{all}");
    assert!(err.contains("fleet:***@127.0.0.1"), "{err}");
    server.join().unwrap();
}

/// `verify` reads a URL like apply does.
#[test]
fn verify_reads_a_url() {
    let env = Env::new();
    let body = small_bundle();
    let (port, server) = serve_once(move |mut s| {
        let _ = s.write_all(ok_head(body.len()).as_bytes());
        let _ = s.write_all(&body);
    });
    let url = format!("http://127.0.0.1:{port}/small.abu");
    let (out, _) = run_bounded(&env, &env.path("no-disk"), &["verify", &url]);
    let stdout = ok(&out);
    assert!(stdout.starts_with("OK: "), "{stdout}");
    server.join().unwrap();
}

/// `verify /dev/loopN`: a device holds more than the bundle; verify stops at the bundle's
/// end, as apply does (it refused the rest as "data after its last payload" before).
#[test]
fn verify_reads_a_block_device_like_apply() {
    let env = Env::on_disk();
    let file = env.path("device.img");
    let bundle = small_bundle();
    fs::write(&file, [bundle.clone(), noise(3 << 20, 9)].concat()).unwrap();
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&file)
        .output()
        .unwrap();
    if !out.status.success() {
        // Containers without loop devices: nothing to test against here.
        eprintln!(
            "skipping: losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let verified = env.abupdate(&env.path("no-disk"), &["verify", &dev]);
    let truncated = {
        // A device smaller than the bundle's header says: refused as truncated.
        fs::write(&file, &bundle[..bundle.len() / 2]).unwrap();
        let _ = Command::new("losetup").args(["-c", &dev]).status();
        env.abupdate(&env.path("no-disk"), &["verify", &dev])
    };
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    let stdout = ok(&verified);
    assert!(stdout.contains(&format!("OK: {dev}")), "{stdout}");
    let err = fails(&truncated, TRUNCATED);
    assert!(err.ends_with("nothing was changed"), "{err}");
}

/// Runs openssl with `args` in `dir`; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A throw-away CA and a certificate for localhost signed by it, in `dir`.
fn make_test_ca(dir: &Path) {
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let ca = format!("req -x509 {ec} -keyout ca.key -out ca.pem -days 2");
    let mut args: Vec<&str> = ca.split(' ').collect();
    args.extend([
        "-subj",
        "/CN=abupdate test-only CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(dir, &args);
    let req = format!("req {ec} -keyout server.key -out server.csr -subj /CN=localhost");
    openssl(dir, &req.split(' ').collect::<Vec<_>>());
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &"x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext"
            .split(' ')
            .collect::<Vec<_>>(),
    );
}

/// Redirects from https: to https they are followed, to http refused (exit 41), even when
/// the http server would serve a good bundle. The https server is `openssl s_server -HTTP`,
/// which sends files that hold whole HTTP responses.
#[test]
fn https_redirects_to_http_are_refused() {
    let env = Env::new();
    let tls = env.path("tls");
    fs::create_dir_all(tls.join("www")).unwrap();
    make_test_ca(&tls);
    let mut cfg = fs::OpenOptions::new()
        .append(true)
        .open(env.path("abupdate.toml"))
        .unwrap();
    writeln!(cfg, "ca-file = \"{}\"", tls.join("ca.pem").display()).unwrap();
    let body = small_bundle();
    fs::write(
        tls.join("www/small.abu"),
        [
            format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes(),
            body.clone(),
        ]
        .concat(),
    )
    .unwrap();
    // A plain http server with the same good bundle: only the scheme makes it wrong.
    let (http_port, _server) = serve_once(move |mut s| {
        let _ = s.write_all(ok_head(body.len()).as_bytes());
        let _ = s.write_all(&body);
    });
    fs::write(
        tls.join("www/to-http"),
        format!("HTTP/1.0 302 Found\r\nLocation: http://127.0.0.1:{http_port}/small.abu\r\n\r\n"),
    )
    .unwrap();
    fs::write(
        tls.join("www/to-https"),
        "HTTP/1.0 301 Moved Permanently\r\nLocation: small.abu\r\n\r\n",
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-HTTP", "-quiet"])
        .args(["-cert", "../server.pem", "-key", "../server.key"])
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .current_dir(tls.join("www"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let result = std::panic::catch_unwind(|| {
        assert!(up, "openssl s_server did not start");
        let no_disk = env.path("no-disk");
        let to_https = format!("https://localhost:{port}/to-https");
        let (out, _) = run_bounded(&env, &no_disk, &["verify", &to_https]);
        ok(&out);
        let to_http = format!("https://localhost:{port}/to-http");
        let (out, _) = run_bounded(&env, &no_disk, &["verify", &to_http]);
        let err = fails(&out, SOURCE_UNAVAILABLE);
        assert!(
            err.contains("refusing a redirect from https to http"),
            "{err}"
        );
    });
    server.kill().unwrap();
    server.wait().unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
