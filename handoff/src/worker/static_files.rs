//! The built-in worker's file server (`handoff run --static DIR`), written for clients
//! that are not friendly.
//!
//! What it promises, and why:
//! - **Memory does not follow file size.** A file is streamed in [`CHUNK`]-sized reads
//!   (on tokio's blocking pool), never read whole: a client that requests a large file
//!   and reads nothing holds at most a chunk or two in the worker, not the file. `HEAD`
//!   and `304` answers read nothing at all.
//! - **Only regular files under the root.** Every request opens the root afresh and
//!   resolves its path *beneath* it (`openat2` with `RESOLVE_BENEATH`), first with
//!   `O_PATH`, which opens nothing for reading: a FIFO, socket or device is a 404
//!   without ever being opened for I/O (opening some devices has side effects, and a
//!   FIFO would block a thread until a writer came). Percent-escapes are decoded once,
//!   before the path is split; a decoded `..`, a NUL or a broken escape is a 400.
//! - **Symlinks stay inside the root** ([`Symlinks::InsideRoot`], the default): one that
//!   leads out of it is a 404, checked on the resolved path and then opened with no
//!   symlink allowed, so swapping a link in between the check and the open cannot lead
//!   out either. [`Symlinks::Never`] (`--static-no-symlinks`) refuses every one.
//! - **HTTP caching and resuming work**: `Last-Modified` and `ETag` on every file,
//!   `If-None-Match` / `If-Modified-Since` answered with 304, a single `Range` (206, or
//!   416 when it cannot be satisfied; `If-Range` honoured; several ranges are answered
//!   with the whole file, as the RFC allows, rather than a multipart body).
//! - **A client that stops reading is let go**: every connection of the built-in
//!   worker is closed when its writes make no progress for
//!   [`SEND_TIMEOUT`](crate::worker::http::SEND_TIMEOUT) (30 s).
//!
//! `/dir` (a directory) is a 301 to `/dir/`, and `/dir/` serves `dir/index.html`; there
//! are no directory listings.

use std::ffi::OsStr;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// The body of every response of the built-in worker: a buffer (the greeting, an error
/// page, an empty `HEAD` body) or a file streamed in chunks.
pub type ResponseBody = Either<Full<Bytes>, FileBody>;

/// Bytes read from a file per step. Large enough that the blocking-pool hop per read
/// is noise next to the copy; small enough that a stalled client pins little: hyper
/// queues one chunk (up to [`MAX_CONN_BUFFER`](crate::worker::http::MAX_CONN_BUFFER)),
/// plus the one being read.
pub const CHUNK: usize = 64 * 1024;

/// Which symlinks under the static root are followed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Symlinks {
    /// Those that resolve to a place inside the root (the default): a deploy may link
    /// `current/` to a release, but `/etc/passwd` is not one link away.
    #[default]
    InsideRoot,
    /// None (`--static-no-symlinks`): a path through any symlink is a 404.
    Never,
}

/// Answers `req` from the files under `root`.
pub async fn serve(req: &Request<hyper::body::Incoming>, root: &Path, symlinks: Symlinks) -> Response<ResponseBody> {
    let head_only = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
    };
    let raw_path = req.uri().path();
    let Some(rel) = relative_path(raw_path) else {
        return text(StatusCode::BAD_REQUEST, "bad path\n");
    };
    // By the name asked for (with `index.html` for a directory), as nginx does.
    let mime = content_type(&rel.to_string_lossy());
    // Path resolution and fstat may wait on the disk: off the worker's one thread.
    let root = root.to_path_buf();
    let opened = match tokio::task::spawn_blocking(move || open_under(&root, &rel, symlinks)).await {
        Ok(o) => o,
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
    };
    let file = match opened {
        Opened::File(f) => f,
        Opened::Directory => {
            // `/dir` to `/dir/`: relative links in its index.html then resolve under it.
            // The raw path went through hyper's URI parser: no CR, LF or spaces.
            let location = match req.uri().query() {
                Some(q) => format!("{raw_path}/?{q}"),
                None => format!("{raw_path}/"),
            };
            let mut r = text(StatusCode::MOVED_PERMANENTLY, "moved permanently\n");
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        Opened::Missing => return text(StatusCode::NOT_FOUND, "not found\n"),
        Opened::Forbidden => return text(StatusCode::FORBIDDEN, "forbidden\n"),
    };
    respond(req.headers(), head_only, file, mime)
}

/// A regular file, open for reading, with what its headers need.
struct OpenFile {
    file: std::fs::File,
    len: u64,
    modified: Option<SystemTime>,
    etag: String,
}

enum Opened {
    File(OpenFile),
    Directory,
    Missing,
    Forbidden,
}

fn respond(headers: &HeaderMap, head_only: bool, f: OpenFile, mime: &'static str) -> Response<ResponseBody> {
    let last_modified = f.modified.map(httpdate::fmt_http_date);
    let mut r = if not_modified(headers, &f.etag, f.modified) {
        empty(StatusCode::NOT_MODIFIED)
    } else {
        let range = if head_only || !if_range_holds(headers, &f.etag, last_modified.as_deref()) {
            None
        } else {
            headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|v| parse_range(v, f.len))
        };
        match range {
            Some(ByteRange::Unsatisfiable) => {
                let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
                insert(r.headers_mut(), header::CONTENT_RANGE, &format!("bytes */{}", f.len));
                return r;
            }
            Some(ByteRange::Bytes(first, last)) => {
                let len = last - first + 1;
                let mut r = Response::new(Either::Right(FileBody::new(f.file, first, len)));
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                insert(r.headers_mut(), header::CONTENT_RANGE, &format!("bytes {first}-{last}/{}", f.len));
                r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                r
            }
            None if head_only => {
                // Nothing is read: hyper sends the head only, with this length.
                let mut r = empty(StatusCode::OK);
                r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(f.len));
                r
            }
            None => {
                let mut r = Response::new(Either::Right(FileBody::new(f.file, 0, f.len)));
                r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(f.len));
                r
            }
        }
    };
    let modified = r.status() != StatusCode::NOT_MODIFIED;
    let h = r.headers_mut();
    if modified {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    }
    insert(h, header::ETAG, &f.etag);
    if let Some(lm) = &last_modified {
        insert(h, header::LAST_MODIFIED, lm);
    }
    r
}

fn insert(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// A short text answer (errors, redirects).
pub fn text(code: StatusCode, msg: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(msg.as_bytes()))));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn empty(code: StatusCode) -> Response<ResponseBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::new())));
    *r.status_mut() = code;
    r
}

// ---- paths ----

/// The request path as a path relative to the root, percent-escapes decoded: `None`
/// for a path that could leave the root (a `..` segment, decoded or not), contains a
/// NUL, or has a broken escape. A path ending in `/` names that directory's
/// `index.html`.
pub fn relative_path(uri_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(uri_path.as_bytes())?;
    if decoded.contains(&0) {
        return None;
    }
    let mut out = PathBuf::new();
    // Split after decoding, so `%2e%2e` and `..%2f` are the `..` they spell.
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => return None,
            s => out.push(OsStr::from_bytes(s)),
        }
    }
    if decoded.is_empty() || decoded.ends_with(b"/") {
        out.push("index.html");
    }
    Some(out)
}

/// `%XX` escapes decoded; `None` for a `%` not followed by two hex digits.
fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            let hi = hex(*s.get(i + 1)?)?;
            let lo = hex(*s.get(i + 2)?)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Whether `openat2` is missing (a kernel before 5.6, or a seccomp filter that hides
/// it): then paths are checked with `realpath` instead, which a concurrent rename in
/// the tree could race.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens `rel` under `root` as [`Symlinks`] allows; only a regular file is opened for
/// reading.
fn open_under(root: &Path, rel: &Path, symlinks: Symlinks) -> Opened {
    let dir = match rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(d) => d,
        Err(_) => return Opened::Missing,
    };
    let strict = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS;
    let first = match symlinks {
        Symlinks::Never => strict,
        Symlinks::InsideRoot => ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    };
    let rel_owned;
    let (rel, resolve) = match open_path(&dir, rel, first) {
        Ok(fd) => return classify(&dir, rel, fd, first),
        Err(rustix::io::Errno::XDEV) if symlinks == Symlinks::InsideRoot => {
            // A symlink with an absolute target, or one that leads out: resolve it and
            // look where it lands. Inside the root, open what it names with no
            // symlink at all, so a link swapped in meanwhile cannot lead out.
            match inside_root(root, rel) {
                Some(r) => {
                    rel_owned = r;
                    (rel_owned.as_path(), strict)
                }
                None => return Opened::Missing,
            }
        }
        Err(rustix::io::Errno::NOSYS) => return open_without_openat2(root, rel, symlinks),
        Err(e) => return errno_answer(e),
    };
    match open_path(&dir, rel, resolve) {
        Ok(fd) => classify(&dir, rel, fd, resolve),
        Err(e) => errno_answer(e),
    }
}

fn open_path(dir: &OwnedFd, rel: &Path, resolve: ResolveFlags) -> rustix::io::Result<OwnedFd> {
    if NO_OPENAT2.load(Ordering::Relaxed) {
        return Err(rustix::io::Errno::NOSYS);
    }
    let rel: &Path = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let r = rustix::fs::openat2(dir, rel, OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), resolve);
    if matches!(r, Err(rustix::io::Errno::NOSYS)) {
        NO_OPENAT2.store(true, Ordering::Relaxed);
    }
    r
}

/// `rel` resolved, as a path relative to the resolved root, if it lands inside it.
fn inside_root(root: &Path, rel: &Path) -> Option<PathBuf> {
    let real_root = std::fs::canonicalize(root).ok()?;
    let real = std::fs::canonicalize(root.join(rel)).ok()?;
    real.strip_prefix(&real_root).ok().map(Path::to_path_buf)
}

/// What an `O_PATH` descriptor names: a regular file is opened for reading (again
/// beneath the root, and checked to be the same file), anything else is not opened.
fn classify(dir: &OwnedFd, rel: &Path, fd: OwnedFd, resolve: ResolveFlags) -> Opened {
    let Ok(st) = rustix::fs::fstat(&fd) else { return Opened::Missing };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {}
        FileType::Directory => return Opened::Directory,
        _ => return Opened::Missing,
    }
    let rel: &Path = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    // O_NONBLOCK: if the path is no longer a regular file, the open itself cannot wait.
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let Ok(file) = rustix::fs::openat2(dir, rel, flags, Mode::empty(), resolve) else { return Opened::Missing };
    open_file(file, Some((st.st_dev, st.st_ino)))
}

/// A readable descriptor as an [`OpenFile`], if it is a regular file (and the one
/// `expect`ed, when given).
fn open_file(file: OwnedFd, expect: Option<(u64, u64)>) -> Opened {
    let Ok(st) = rustix::fs::fstat(&file) else { return Opened::Missing };
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || expect.is_some_and(|e| e != (st.st_dev, st.st_ino))
    {
        return Opened::Missing;
    }
    let len = st.st_size.max(0) as u64;
    let (secs, nanos) = (st.st_mtime, st.st_mtime_nsec);
    let modified = u64::try_from(secs).ok().map(|s| UNIX_EPOCH + Duration::from_secs(s));
    // nginx's form (mtime and size in hex), with the nanoseconds: a file rewritten within
    // the same second to the same size still gets a new tag.
    let etag = format!("\"{secs:x}.{nanos:x}-{len:x}\"");
    Opened::File(OpenFile { file: std::fs::File::from(file), len, modified, etag })
}

/// The fallback without `openat2`: the real path must be inside the real root (and
/// equal to the path asked for, without symlinks), then the last step is taken with
/// `O_NOFOLLOW`.
fn open_without_openat2(root: &Path, rel: &Path, symlinks: Symlinks) -> Opened {
    let (Ok(real_root), Ok(real)) = (std::fs::canonicalize(root), std::fs::canonicalize(root.join(rel))) else {
        return Opened::Missing;
    };
    if !real.starts_with(&real_root) || (symlinks == Symlinks::Never && real != real_root.join(rel)) {
        return Opened::Missing;
    }
    let flags = OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let Ok(fd) = rustix::fs::open(&real, flags, Mode::empty()) else { return Opened::Missing };
    let Ok(st) = rustix::fs::fstat(&fd) else { return Opened::Missing };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {}
        FileType::Directory => return Opened::Directory,
        _ => return Opened::Missing,
    }
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::NOFOLLOW;
    match rustix::fs::open(&real, flags, Mode::empty()) {
        Ok(file) => open_file(file, Some((st.st_dev, st.st_ino))),
        Err(e) => errno_answer(e),
    }
}

fn errno_answer(e: rustix::io::Errno) -> Opened {
    match e {
        rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => Opened::Forbidden,
        // ENOENT, ENOTDIR, ELOOP (a symlink refused), EXDEV (out of the root), ...
        _ => Opened::Missing,
    }
}

// ---- conditional and range requests ----

/// Whether the client's copy is current (RFC 9110 §13.2.2: `If-None-Match` decides
/// when present, else `If-Modified-Since`).
fn not_modified(h: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> bool {
    if let Some(inm) = h.get(header::IF_NONE_MATCH) {
        let Ok(inm) = inm.to_str() else { return false };
        return inm.split(',').map(str::trim).any(|t| t == "*" || weak_eq(t, etag));
    }
    let (Some(ims), Some(modified)) = (h.get(header::IF_MODIFIED_SINCE), modified) else { return false };
    let Some(ims) = ims.to_str().ok().and_then(|v| httpdate::parse_http_date(v).ok()) else { return false };
    // Last-Modified has whole seconds: compare those.
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    secs(modified) <= secs(ims)
}

fn weak_eq(a: &str, b: &str) -> bool {
    a.trim_start_matches("W/") == b.trim_start_matches("W/")
}

/// Whether a `Range` may be honoured: no `If-Range`, or one naming this very version
/// (a strong tag or the exact `Last-Modified`).
fn if_range_holds(h: &HeaderMap, etag: &str, last_modified: Option<&str>) -> bool {
    let Some(v) = h.get(header::IF_RANGE) else { return true };
    let Ok(v) = v.to_str() else { return false };
    let v = v.trim();
    if v.starts_with('"') {
        v == etag
    } else {
        last_modified == Some(v)
    }
}

/// A `Range` header's answer for a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// Bytes `first..=last`.
    Bytes(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Parses a single `bytes=` range; `None` (serve the whole file) for anything else,
/// several ranges included.
pub fn parse_range(v: &str, len: u64) -> Option<ByteRange> {
    let spec = v.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    let range = if a.trim().is_empty() {
        let n = num(b)?;
        if n == 0 || len == 0 {
            return Some(ByteRange::Unsatisfiable);
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let first = num(a)?;
        let last = if b.trim().is_empty() { u64::MAX } else { num(b)? };
        if last < first {
            return None; // invalid: ignored, as the RFC says
        }
        if first >= len {
            return Some(ByteRange::Unsatisfiable);
        }
        (first, last.min(len - 1))
    };
    Some(ByteRange::Bytes(range.0, range.1))
}

/// The `Content-Type` for a path, by its extension.
pub fn content_type(path: &str) -> &'static str {
    let ext = match path.rsplit_once('.') {
        Some((_, e)) if !e.contains('/') => e.to_ascii_lowercase(),
        _ => return "application/octet-stream",
    };
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "xml" => "application/xml",
        "rss" => "application/rss+xml",
        "atom" => "application/atom+xml",
        "txt" | "text" | "log" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "ogv" => "video/ogg",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "pdf" => "application/pdf",
        "wasm" => "application/wasm",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "zst" => "application/zstd",
        "yaml" | "yml" => "application/yaml",
        "toml" => "application/toml",
        _ => "application/octet-stream",
    }
}

// ---- the streamed body ----

/// A byte range of a file, read [`CHUNK`] by [`CHUNK`] on tokio's blocking pool as
/// hyper asks for it: hyper asks only when it can queue more, so a client that does not
/// read stops the reads too.
pub struct FileBody {
    file: Arc<std::fs::File>,
    offset: u64,
    remaining: u64,
    reading: Option<tokio::task::JoinHandle<io::Result<Bytes>>>,
}

impl FileBody {
    fn new(file: std::fs::File, offset: u64, len: u64) -> FileBody {
        FileBody { file: Arc::new(file), offset, remaining: len, reading: None }
    }
}

impl std::fmt::Debug for FileBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBody").field("offset", &self.offset).field("remaining", &self.remaining).finish()
    }
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let reading = this.reading.get_or_insert_with(|| {
            let (file, offset) = (this.file.clone(), this.offset);
            let want = this.remaining.min(CHUNK as u64) as usize;
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; want];
                let n = file.read_at(&mut buf, offset)?;
                buf.truncate(n);
                Ok(Bytes::from(buf))
            })
        });
        let done = ready!(Pin::new(reading).poll(cx));
        this.reading = None;
        let chunk = match done {
            Ok(Ok(chunk)) if !chunk.is_empty() => chunk,
            // The file shrank under us: the promised length cannot be kept, and an
            // error makes hyper cut the connection rather than end a short body.
            Ok(Ok(_)) => return Poll::Ready(Some(Err(io::Error::from(io::ErrorKind::UnexpectedEof)))),
            Ok(Err(e)) => return Poll::Ready(Some(Err(e))),
            Err(e) => return Poll::Ready(Some(Err(io::Error::other(e)))),
        };
        this.offset += chunk.len() as u64;
        this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the client sends, the path stays relative and below the root.
        #[test]
        fn no_request_path_climbs_out(path in "/[a-z./%0-9A-F\\\\]{0,24}") {
            if let Some(rel) = relative_path(&path) {
                prop_assert!(rel.components().all(|c| matches!(c, std::path::Component::Normal(_))), "{path} -> {rel:?}");
                prop_assert!(!rel.as_os_str().as_bytes().contains(&0));
            }
        }

        /// A range, when honoured, lies within the file.
        #[test]
        fn ranges_lie_within_the_file(v in "(bytes=)?[0-9]{0,3}-?[0-9]{0,3},?[0-9]{0,2}", len in 0u64..1000) {
            if let Some(ByteRange::Bytes(first, last)) = parse_range(&v, len) {
                prop_assert!(first <= last && last < len, "{v} of {len}: {first}-{last}");
            }
        }
    }

    #[test]
    fn paths_are_decoded_then_kept_under_the_root() {
        let p = |s: &str| relative_path(s).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(p("/a/b.txt").as_deref(), Some("a/b.txt"));
        assert_eq!(p("/").as_deref(), Some("index.html"));
        assert_eq!(p("/docs/").as_deref(), Some("docs/index.html"));
        assert_eq!(p("/my%20file.txt").as_deref(), Some("my file.txt"));
        assert_eq!(p("/./a//b").as_deref(), Some("a/b"));
        for bad in ["/../etc/passwd", "/a/../../x", "/%2e%2e/x", "/%2E%2E", "/..%2fx", "/a%00b", "/%zz", "/%4", "/%"] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn ranges() {
        use ByteRange::*;
        assert_eq!(parse_range("bytes=0-9", 100), Some(Bytes(0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some(Bytes(90, 99)));
        assert_eq!(parse_range("bytes=90-1000", 100), Some(Bytes(90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some(Bytes(90, 99)));
        assert_eq!(parse_range("bytes=-1000", 100), Some(Bytes(0, 99)));
        assert_eq!(parse_range("bytes=100-", 100), Some(Unsatisfiable));
        assert_eq!(parse_range("bytes=-0", 100), Some(Unsatisfiable));
        assert_eq!(parse_range("bytes=0-0", 0), Some(Unsatisfiable));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=+1-2", 100), None);
        assert_eq!(parse_range("bytes=1", 100), None);
        assert_eq!(parse_range("bytes=99999999999999999999999-", 100), None);
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("/a/INDEX.HTML"), "text/html; charset=utf-8");
        assert_eq!(content_type("/x.woff2"), "font/woff2");
        assert_eq!(content_type("/dir.d/file"), "application/octet-stream");
        assert_eq!(content_type("/noext"), "application/octet-stream");
    }
}
