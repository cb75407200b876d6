//! `handoff run --static DIR` against hostile clients and trees: large files streamed
//! (3 stalled readers of 200 MB keep the worker small), `HEAD` without reading, `Range`,
//! conditional requests, percent-escapes, traversal, symlinks out of the root, FIFOs and
//! devices, `/dir` redirects, and a send timeout for a client that stops reading.

mod util;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use util::*;

/// The large file: sparse, so it costs no disk, but read like any other.
const BIG: u64 = 200 * 1024 * 1024;
/// The most a worker serving it to 3 clients that read nothing may hold.
const RSS_LIMIT_KIB: u64 = 64 * 1024;
const HELLO: &str = "hello, world\n";

/// A static root: `hello.txt`, `my file.txt`, `page.css`, `dir/index.html`,
/// `big.bin` (sparse), and `secret.txt` beside the root (outside it).
struct Tree {
    tmp: TempDir,
}

impl Tree {
    fn new(tag: &str) -> Tree {
        let tmp = TempDir::new(tag);
        let root = tmp.join("root");
        std::fs::create_dir_all(root.join("dir")).unwrap();
        std::fs::write(root.join("hello.txt"), HELLO).unwrap();
        std::fs::write(root.join("my file.txt"), "spaced\n").unwrap();
        std::fs::write(root.join("page.css"), "body{}\n").unwrap();
        std::fs::write(root.join("dir/index.html"), "<p>index</p>\n").unwrap();
        std::fs::File::create(root.join("big.bin")).unwrap().set_len(BIG).unwrap();
        std::fs::create_dir_all(tmp.join("outside")).unwrap();
        std::fs::write(tmp.join("outside/secret.txt"), "secret\n").unwrap();
        Tree { tmp }
    }
    fn root(&self) -> String {
        self.tmp.path_str("root")
    }
    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.tmp.join("root").join(rel)
    }
    fn serve(&self, extra: &[&str]) -> Handoff {
        let root = self.root();
        let mut args = vec!["--listen", "127.0.0.1:0", "--workers", "1", "--static", &root];
        args.extend_from_slice(extra);
        let h = Handoff::start(&args);
        h.wait_ready(1);
        h
    }
}

/// A response with its body as bytes.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn parse(raw: &[u8]) -> Reply {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| {
        panic!("no response head in {:?}", String::from_utf8_lossy(raw));
    });
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply { status, headers, body: raw[end + 4..].to_vec() }
}

/// `METHOD target` with `headers` on a new connection (`Connection: close`), read to
/// the end.
fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap_or_else(|e| panic!("{method} {target}: {e}"));
    parse(&raw)
}

fn get(addr: SocketAddr, target: &str) -> Reply {
    request(addr, "GET", target, &[])
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn stalled_readers_of_a_large_file_keep_the_worker_small() {
    let tree = Tree::new("static-big");
    let h = tree.serve(&[]);
    let worker = h.worker_pid(0);

    // HEAD reads nothing: its length comes from the file's metadata.
    let r = request(h.addr(), "HEAD", "/big.bin", &[]);
    assert_eq!((r.status, r.header("content-length")), (200, Some(BIG.to_string().as_str())), "{r:?}");
    assert!(r.body.is_empty());

    // Three clients ask for the whole file and read only the head of the answer: the
    // worker sends what the sockets take and waits, holding a chunk or two each.
    let stalled: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(h.addr()).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(s.read(&mut byte).unwrap(), 1, "the answer ended within its head");
                head.push(byte[0]);
            }
            let r = parse(&head);
            assert_eq!((r.status, r.header("content-length")), (200, Some(BIG.to_string().as_str())), "{r:?}");
            s
        })
        .collect();
    // Sampled while the worker fills the three sockets' buffers and then waits.
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(rss_kib(worker));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(peak < RSS_LIMIT_KIB, "worker RSS {peak} KiB with 3 stalled readers of {BIG} bytes");
    // Meanwhile it serves everyone else.
    let r = get(h.addr(), "/hello.txt");
    assert_eq!((r.status, r.body.as_slice()), (200, HELLO.as_bytes()));
    drop(stalled);
}

#[test]
fn ranges_and_conditional_requests() {
    let tree = Tree::new("static-range");
    let h = tree.serve(&[]);
    let addr = h.addr();

    let full = get(addr, "/hello.txt");
    assert_eq!((full.status, full.body.as_slice()), (200, HELLO.as_bytes()));
    assert_eq!(full.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    let etag = full.header("etag").expect("ETag").to_string();
    let modified = full.header("last-modified").expect("Last-Modified").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(get(addr, "/page.css").header("content-type"), Some("text/css; charset=utf-8"));

    // One range: 206 with exactly those bytes.
    let r = request(addr, "GET", "/hello.txt", &[("Range", "bytes=7-11")]);
    assert_eq!((r.status, r.body.as_slice()), (206, &b"world"[..]), "{r:?}");
    assert_eq!(r.header("content-range"), Some("bytes 7-11/13"));
    let r = request(addr, "GET", "/hello.txt", &[("Range", "bytes=-6")]);
    assert_eq!((r.status, r.body.as_slice()), (206, &b"world\n"[..]), "{r:?}");
    // The end of the large file, read from its offset.
    let r = request(addr, "GET", "/big.bin", &[("Range", &format!("bytes={}-", BIG - 10))]);
    assert_eq!((r.status, r.body.as_slice()), (206, &[0u8; 10][..]), "{:?}", r.headers);
    // Past the end: 416, with the length.
    let r = request(addr, "GET", "/hello.txt", &[("Range", "bytes=13-")]);
    assert_eq!((r.status, r.header("content-range")), (416, Some("bytes */13")), "{r:?}");
    // Several ranges, or an If-Range for another version: the whole file.
    let r = request(addr, "GET", "/hello.txt", &[("Range", "bytes=0-1,3-4")]);
    assert_eq!((r.status, r.body.as_slice()), (200, HELLO.as_bytes()));
    let r = request(addr, "GET", "/hello.txt", &[("Range", "bytes=0-4"), ("If-Range", "\"other\"")]);
    assert_eq!((r.status, r.body.as_slice()), (200, HELLO.as_bytes()));
    let r = request(addr, "GET", "/hello.txt", &[("Range", "bytes=0-4"), ("If-Range", &etag)]);
    assert_eq!((r.status, r.body.as_slice()), (206, &b"hello"[..]));

    // The client's copy is current: 304, no body.
    for headers in [
        [("If-None-Match", etag.as_str())],
        [("If-None-Match", &format!("\"x\", W/{etag}"))],
        [("If-Modified-Since", modified.as_str())],
    ] {
        let r = request(addr, "GET", "/hello.txt", &headers);
        assert_eq!((r.status, r.body.len()), (304, 0), "{headers:?}: {r:?}");
        assert_eq!(r.header("etag"), Some(etag.as_str()));
    }
    // If-None-Match decides over If-Modified-Since; an older copy gets the file.
    let r = request(addr, "GET", "/hello.txt", &[("If-None-Match", "\"x\""), ("If-Modified-Since", &modified)]);
    assert_eq!(r.status, 200);
    let r = request(addr, "GET", "/hello.txt", &[("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")]);
    assert_eq!((r.status, r.body.as_slice()), (200, HELLO.as_bytes()));
}

#[test]
fn escapes_traversal_and_directories() {
    let tree = Tree::new("static-paths");
    let h = tree.serve(&[]);
    let (addr, worker) = (h.addr(), h.worker_pid(0));

    let r = get(addr, "/my%20file.txt");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"spaced\n"[..]));
    // The way out, spelt every way: refused before any file is looked at.
    for target in [
        "/../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/%2E%2E%2Foutside%2Fsecret.txt",
        "/dir/..%2f..%2foutside/secret.txt",
    ] {
        let r = get(addr, target);
        assert_eq!(r.status, 400, "{target}: {r:?}");
    }
    for target in ["/hello.txt%00.css", "/%zz", "/hello%2"] {
        assert_eq!(get(addr, target).status, 400, "{target}");
    }
    // A directory: 301 to its slash form (query kept), which serves its index.html.
    let r = get(addr, "/dir");
    assert_eq!((r.status, r.header("location")), (301, Some("/dir/")), "{r:?}");
    let r = get(addr, "/dir?a=1");
    assert_eq!((r.status, r.header("location")), (301, Some("/dir/?a=1")), "{r:?}");
    let r = get(addr, "/dir/");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"<p>index</p>\n"[..]));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(get(addr, "/").status, 404, "no index.html, no listing");
    assert_eq!(get(addr, "/missing.txt").status, 404);
    assert_eq!(request(addr, "POST", "/hello.txt", &[("Content-Length", "0")]).status, 405);

    // No load-test knob on a 404 or a HEAD either (the worker runs without --test-knobs).
    let before = cpu_ticks(worker);
    assert_eq!(request(addr, "HEAD", "/missing?cpu_ms=5000", &[]).status, 404);
    assert_eq!(request(addr, "HEAD", "/hello.txt?cpu_ms=5000", &[]).status, 200);
    let spent_ms = (cpu_ticks(worker) - before) * 1000 / rustix::param::clock_ticks_per_second().max(1);
    assert!(spent_ms < 1000, "{spent_ms} ms of CPU for two ?cpu_ms=5000 requests");
}

#[test]
fn symlinks_are_followed_only_inside_the_root() {
    let tree = Tree::new("static-links");
    let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, tree.path(name)).unwrap();
    link(Path::new("hello.txt"), "relative.txt");
    link(&tree.path("hello.txt"), "absolute.txt");
    link(Path::new("../outside/secret.txt"), "escape.txt");
    link(&tree.tmp.join("outside/secret.txt"), "escape-absolute.txt");
    link(&tree.tmp.join("outside"), "escape-dir");
    link(Path::new("/etc/passwd"), "passwd");

    let h = tree.serve(&[]);
    for name in ["/relative.txt", "/absolute.txt"] {
        let r = get(h.addr(), name);
        assert_eq!((r.status, r.body.as_slice()), (200, HELLO.as_bytes()), "{name}");
    }
    for name in ["/escape.txt", "/escape-absolute.txt", "/escape-dir/secret.txt", "/passwd"] {
        let r = get(h.addr(), name);
        assert_eq!(r.status, 404, "{name}: {r:?}");
    }
    drop(h);

    // --static-no-symlinks: none at all.
    let h = tree.serve(&["--static-no-symlinks"]);
    for name in ["/relative.txt", "/absolute.txt", "/escape.txt", "/escape-dir/secret.txt"] {
        assert_eq!(get(h.addr(), name).status, 404, "{name}");
    }
    assert_eq!(get(h.addr(), "/hello.txt").status, 200);
}

#[test]
fn fifos_and_devices_are_not_opened() {
    use rustix::fs::{FileType, Mode, CWD};
    let tree = Tree::new("static-special");
    // A FIFO with no writer: opened for reading, it would block until one came.
    rustix::fs::mknodat(CWD, tree.path("fifo"), FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
    // /dev/null's numbers (1, 3): only where this test may create device nodes.
    let device = rustix::fs::mknodat(
        CWD,
        tree.path("null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .is_ok();
    let h = tree.serve(&[]);
    assert_eq!(get(h.addr(), "/fifo").status, 404);
    assert_eq!(request(h.addr(), "HEAD", "/fifo", &[]).status, 404);
    if device {
        assert_eq!(get(h.addr(), "/null").status, 404);
    } else {
        eprintln!("no device node here (not permitted): only the FIFO is checked");
    }
    // Nothing waits on the FIFO: the worker still answers, and nobody opened it.
    let r = get(h.addr(), "/hello.txt");
    assert_eq!((r.status, r.body.as_slice()), (200, HELLO.as_bytes()));
    let worker = h.worker_pid(0);
    let fifo = tree.path("fifo").to_string_lossy().into_owned();
    assert!(!fd_links(worker).iter().any(|(_, l)| *l == fifo), "the worker holds the FIFO open");
}

#[test]
fn a_client_that_stops_reading_is_closed_after_the_send_timeout() {
    use handoff::__private::worker::http::{serve_connection, HttpConfig};
    let tree = Tree::new("static-timeout");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();

    // The built-in worker's connection handling, in this process: a short send timeout
    // so that the test need not wait 30 s.
    let mut cfg = HttpConfig::new(0, Some(tree.path("")));
    cfg.send_timeout = Duration::from_millis(500);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let served = std::thread::spawn(move || {
        rt.block_on(async move {
            let (_stop_tx, stop) = tokio::sync::watch::channel(false);
            let stream = tokio::net::TcpStream::from_std(server).unwrap();
            tokio::time::timeout(WAIT, serve_connection(stream, Arc::new(cfg), stop)).await.is_ok()
        })
    });
    client.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    // The client reads nothing: the worker fills the socket buffers, then gives up.
    assert!(served.join().unwrap(), "the connection was still open after {WAIT:?}");
    // What it had sent arrives, and then the end: far short of the file.
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    assert!(got < BIG, "the whole file arrived ({got} bytes)");
}
