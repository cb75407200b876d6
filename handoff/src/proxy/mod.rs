//! PROXY protocol v1 and v2: the header a load balancer (HAProxy `send-proxy`,
//! `send-proxy-v2`, nginx `proxy_protocol on`, AWS NLB, ...) puts in front of the
//! client's bytes to say who the client really is.
//!
//! Role: on a listener marked `,proxy`, the master reads this header before it hands the
//! connection on, so that the worker sees the original client and destination addresses
//! (carried in the CONN frame with [`encode_addrs`]) and the connection's first byte is
//! the client's first byte, exactly as on a listener without the header.
//!
//! The format is the one of HAProxy's `proxy-protocol.txt`:
//!
//! - **v1**, one line of US-ASCII: `PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n`,
//!   `PROXY TCP6 ...`, or `PROXY UNKNOWN ...\r\n`, at most [`V1_MAX_LEN`] (107) bytes
//!   with the CRLF.
//! - **v2**, binary: the 12-byte [`V2_SIGNATURE`], a version/command byte (`0x20` LOCAL,
//!   `0x21` PROXY), a family/transport byte, a big-endian `u16` length, then that many
//!   bytes of addresses and TLVs.
//!
//! # Invariants
//!
//! - [`parse`] is a pure function of the bytes it is given, meant for a master that has
//!   *peeked* at the start of a socket: it says how many bytes the header occupies
//!   ([`Parsed::Complete`]`::len`), or that more are needed, or why the bytes are not a
//!   valid header. Bytes after the header (the application's data) are never looked at.
//! - It never panics and never allocates on the success path; errors allocate at most a
//!   few dozen bytes, whatever the input. A v2 header longer than [`MAX_HEADER_LEN`] is
//!   rejected as soon as its 16-byte fixed part is seen, so a caller never needs a
//!   buffer larger than that (nor waits for bytes it would refuse anyway).
//! - It is strict: anything that does not exactly match the specification is an error
//!   whose message says what was wrong. The caller closes such a connection.
//! - In a [`ProxyHeader`], `source` and `destination` are either both `Some` (the balancer
//!   relayed a TCP connection over IPv4 or IPv6) or both `None` (a v2 LOCAL connection,
//!   such as a health check, a v1 `UNKNOWN`, a v2 `UNSPEC`, `AF_UNIX` or datagram
//!   header): then the real endpoints of the socket are the ones to use.
//!
//! # Use in a non-blocking loop
//!
//! [`read_header`] peeks with `MSG_PEEK | MSG_DONTWAIT`, and consumes exactly the header
//! once it is complete. While the header is incomplete it returns
//! [`io::ErrorKind::WouldBlock`] and leaves every byte in the socket, so the caller waits
//! for readability and calls again. With an edge-triggered poller (mio) a new event is
//! delivered when more bytes arrive, even though the peeked bytes were left unread; the
//! caller must bound the wait with its own timeout, since a client that sends half a
//! header and stops would otherwise hold the connection forever.

#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::BorrowedFd;

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Size of the fixed part of a v2 header: signature, version/command, family, length.
pub const V2_FIXED_LEN: usize = 16;
/// The longest v1 line, CRLF included (`PROXY UNKNOWN` with two full IPv6 addresses).
pub const V1_MAX_LEN: usize = 107;
/// The longest header accepted, of either version. The v2 format allows
/// `16 + 65535` bytes; real balancers send well under 1 KiB (addresses plus a few TLVs),
/// so a longer header is refused instead of buffered.
pub const MAX_HEADER_LEN: usize = 4096;

/// The v1 prefix, space included.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Shortest possible v1 header: `PROXY UNKNOWN\r\n`.
const V1_MIN_LEN: usize = 15;

/// What the balancer said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ProxyHeader {
    /// The client, as the balancer saw it. `None` when the header carries no usable
    /// address (v2 LOCAL, v1 UNKNOWN, unspecified, `AF_UNIX` or datagram families).
    pub source: Option<SocketAddr>,
    /// The address the client connected to on the balancer. `None` exactly when
    /// `source` is.
    pub destination: Option<SocketAddr>,
}

/// The outcome of [`parse`] on the bytes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes so far are a valid beginning of a header; wait for more.
    Incomplete {
        /// The buffer must hold at least this many bytes before [`parse`] can answer
        /// differently. Exact for v2 once its 16-byte fixed part has arrived; a lower
        /// bound otherwise. Always greater than the length of the buffer given and at
        /// most [`MAX_HEADER_LEN`].
        min_len: usize,
    },
    /// A complete, valid header.
    Complete {
        /// What it says.
        header: ProxyHeader,
        /// Its exact length: consume this many bytes, and the rest is the client's.
        len: usize,
    },
}

/// Why the bytes are not a valid PROXY protocol header. The connection should be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// The first bytes are neither `PROXY ` (v1) nor the v2 signature.
    NotProxy {
        /// The first bytes received (at most 16), escaped for a log line.
        start: String,
    },
    /// A v1 line without a CRLF within its first [`V1_MAX_LEN`] bytes.
    V1TooLong,
    /// A v1 line that does not follow the format.
    V1Invalid(&'static str),
    /// A v2 header whose version nibble is not 2.
    V2Version(u8),
    /// A v2 command other than LOCAL (0) and PROXY (1).
    V2Command(u8),
    /// A v2 family/transport byte with an undefined family (> 3) or transport (> 2).
    V2Family(u8),
    /// A v2 header longer than [`MAX_HEADER_LEN`].
    V2TooLarge {
        /// Total length announced (16 + the length field).
        len: usize,
    },
    /// A v2 address block shorter than its family requires.
    V2AddressTooShort {
        /// The family/transport byte.
        family: u8,
        /// The length field.
        len: usize,
        /// What the family needs.
        need: usize,
    },
    /// A v2 TLV that runs past the end of the header.
    V2Tlv {
        /// Offset of the TLV from the start of the header.
        offset: usize,
    },
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::NotProxy { start } => {
                write!(f, "expected a PROXY protocol header (v1 \"PROXY \" or the v2 signature), got \"{start}\"")
            }
            ProxyError::V1TooLong => write!(f, "PROXY v1 line has no CRLF within its first {V1_MAX_LEN} bytes"),
            ProxyError::V1Invalid(what) => write!(f, "invalid PROXY v1 line: {what}"),
            ProxyError::V2Version(v) => write!(f, "PROXY v2 header with version {v} (only 2 is defined)"),
            ProxyError::V2Command(c) => {
                write!(f, "PROXY v2 header with command {c:#x} (only 0 LOCAL and 1 PROXY are defined)")
            }
            ProxyError::V2Family(b) => write!(
                f,
                "PROXY v2 header with family/transport byte {b:#04x} \
                 (families 0-3 and transports 0-2 are defined)"
            ),
            ProxyError::V2TooLarge { len } => {
                write!(f, "PROXY v2 header of {len} bytes is longer than the {MAX_HEADER_LEN} accepted")
            }
            ProxyError::V2AddressTooShort { family, len, need } => write!(
                f,
                "PROXY v2 header with family {family:#04x} has {len} bytes of addresses, needs at least {need}"
            ),
            ProxyError::V2Tlv { offset } => {
                write!(f, "PROXY v2 header has a TLV at byte {offset} that runs past the end of the header")
            }
        }
    }
}

impl std::error::Error for ProxyError {}

/// Parses the PROXY protocol header at the start of `buf`, the first bytes received on a
/// connection. See [`Parsed`] for the outcomes; bytes after the header are ignored.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete { min_len: V1_MIN_LEN }),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(not_proxy(buf)),
    }
}

fn not_proxy(buf: &[u8]) -> ProxyError {
    let start = buf[..buf.len().min(16)].escape_ascii().to_string();
    ProxyError::NotProxy { start }
}

/// True if the first `n` bytes of `buf` equal those of `expected` (`n` = the shorter).
fn prefix_matches(buf: &[u8], expected: &[u8]) -> bool {
    let n = buf.len().min(expected.len());
    buf[..n] == expected[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if !prefix_matches(buf, V1_PREFIX) {
        return Err(not_proxy(buf));
    }
    // The CRLF must end within the first V1_MAX_LEN bytes, so the CR is at most at
    // index V1_MAX_LEN - 2; a lone CR or LF never ends (or enters) the line.
    let window = &buf[..buf.len().min(V1_MAX_LEN - 1)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        check_v1_chars(window)?;
        if window.len() == V1_MAX_LEN - 1 {
            return Err(ProxyError::V1TooLong);
        }
        check_v1_partial(window)?;
        return Ok(Parsed::Incomplete { min_len: (buf.len() + 2).clamp(V1_MIN_LEN, V1_MAX_LEN) });
    };
    let line = &window[..cr];
    check_v1_chars(line)?;
    match buf.get(cr + 1) {
        None => {
            check_v1_partial(line)?;
            Ok(Parsed::Incomplete { min_len: (cr + 2).max(V1_MIN_LEN) })
        }
        Some(b'\n') => {
            let header = parse_v1_line(&line[V1_PREFIX.len().min(line.len())..])?;
            Ok(Parsed::Complete { header, len: cr + 2 })
        }
        Some(_) => Err(ProxyError::V1Invalid("CR not followed by LF")),
    }
}

/// Every byte of a v1 line is printable US-ASCII or a space.
fn check_v1_chars(line: &[u8]) -> Result<(), ProxyError> {
    match line.iter().find(|&&b| !(b' '..=b'~').contains(&b)) {
        None => Ok(()),
        Some(b'\n') => Err(ProxyError::V1Invalid("LF without CR")),
        Some(_) => Err(ProxyError::V1Invalid("a byte that is not printable US-ASCII")),
    }
}

/// Rejects early a line whose protocol word cannot become `TCP4 `, `TCP6 ` or `UNKNOWN`.
fn check_v1_partial(line: &[u8]) -> Result<(), ProxyError> {
    if line.len() < V1_PREFIX.len() {
        return Ok(());
    }
    let rest = &line[V1_PREFIX.len()..];
    if [&b"TCP4 "[..], b"TCP6 ", b"UNKNOWN "].iter().any(|p| prefix_matches(rest, p)) {
        Ok(())
    } else {
        Err(ProxyError::V1Invalid("protocol is not TCP4, TCP6 or UNKNOWN"))
    }
}

/// Parses what follows `PROXY ` up to (not including) the CRLF.
fn parse_v1_line(rest: &[u8]) -> Result<ProxyHeader, ProxyError> {
    // The receiver ignores whatever follows UNKNOWN before the CRLF.
    if rest == b"UNKNOWN" || rest.starts_with(b"UNKNOWN ") {
        return Ok(ProxyHeader::default());
    }
    let (v6, fields) = if let Some(f) = rest.strip_prefix(b"TCP4 ") {
        (false, f)
    } else if let Some(f) = rest.strip_prefix(b"TCP6 ") {
        (true, f)
    } else {
        return Err(ProxyError::V1Invalid("protocol is not TCP4, TCP6 or UNKNOWN"));
    };
    // check_v1_chars made the line ASCII, so this cannot fail.
    let fields = std::str::from_utf8(fields).map_err(|_| ProxyError::V1Invalid("not ASCII"))?;
    let mut it = fields.split(' ');
    let (Some(src), Some(dst), Some(sport), Some(dport), None) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Err(ProxyError::V1Invalid("expected exactly 4 fields after the protocol, separated by single spaces"));
    };
    let ip = |s: &str, which: &'static str| -> Result<IpAddr, ProxyError> {
        if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| ProxyError::V1Invalid(which))
        } else {
            parse_v1_ipv4(s).map(IpAddr::V4).ok_or(ProxyError::V1Invalid(which))
        }
    };
    let (src_msg, dst_msg) = if v6 {
        ("source is not an IPv6 address", "destination is not an IPv6 address")
    } else {
        ("source is not a dotted-decimal IPv4 address", "destination is not a dotted-decimal IPv4 address")
    };
    let src = ip(src, src_msg)?;
    let dst = ip(dst, dst_msg)?;
    let sport = parse_v1_port(sport).ok_or(ProxyError::V1Invalid("source port is not a decimal in 0..=65535"))?;
    let dport = parse_v1_port(dport).ok_or(ProxyError::V1Invalid("destination port is not a decimal in 0..=65535"))?;
    Ok(ProxyHeader { source: Some(SocketAddr::new(src, sport)), destination: Some(SocketAddr::new(dst, dport)) })
}

/// A decimal number without sign or leading zeros (but `0` itself).
fn parse_v1_decimal(s: &str, max: u32) -> Option<u32> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 5 || !b.iter().all(u8::is_ascii_digit) || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    let v = b.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    (v <= max).then_some(v)
}

fn parse_v1_port(s: &str) -> Option<u16> {
    parse_v1_decimal(s, u32::from(u16::MAX)).and_then(|v| u16::try_from(v).ok())
}

/// Exactly four decimal octets, no leading zeros, separated by single dots.
fn parse_v1_ipv4(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut it = s.split('.');
    for o in &mut octets {
        *o = parse_v1_decimal(it.next()?, 255).and_then(|v| u8::try_from(v).ok())?;
    }
    it.next().is_none().then_some(Ipv4Addr::from(octets))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if !prefix_matches(buf, &V2_SIGNATURE) {
        return Err(not_proxy(buf));
    }
    // Check each fixed byte as soon as it arrives, so garbage is refused early.
    if let Some(&ver_cmd) = buf.get(12) {
        if ver_cmd >> 4 != 2 {
            return Err(ProxyError::V2Version(ver_cmd >> 4));
        }
        if ver_cmd & 0x0f > 1 {
            return Err(ProxyError::V2Command(ver_cmd & 0x0f));
        }
    }
    let local = buf.get(12).is_some_and(|&b| b & 0x0f == 0);
    if let Some(&fam) = buf.get(13) {
        // LOCAL: "the family is ignored".
        if !local && (fam >> 4 > 3 || fam & 0x0f > 2) {
            return Err(ProxyError::V2Family(fam));
        }
    }
    if buf.len() < V2_FIXED_LEN {
        return Ok(Parsed::Incomplete { min_len: V2_FIXED_LEN });
    }
    let (fam, addr_len) = (buf[13], usize::from(u16::from_be_bytes([buf[14], buf[15]])));
    let len = V2_FIXED_LEN + addr_len;
    if len > MAX_HEADER_LEN {
        return Err(ProxyError::V2TooLarge { len });
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete { min_len: len });
    }
    if local {
        return Ok(Parsed::Complete { header: ProxyHeader::default(), len });
    }
    let block = &buf[V2_FIXED_LEN..len];
    let (header, used) = match fam {
        0x11 => {
            let a = need(block, fam, 12)?;
            let src = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let dst = Ipv4Addr::new(a[4], a[5], a[6], a[7]);
            let (sport, dport) = (u16::from_be_bytes([a[8], a[9]]), u16::from_be_bytes([a[10], a[11]]));
            let header = ProxyHeader {
                source: Some(SocketAddr::V4(SocketAddrV4::new(src, sport))),
                destination: Some(SocketAddr::V4(SocketAddrV4::new(dst, dport))),
            };
            (header, 12)
        }
        0x21 => {
            let a = need(block, fam, 36)?;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&a[..16]);
            dst.copy_from_slice(&a[16..32]);
            let (sport, dport) = (u16::from_be_bytes([a[32], a[33]]), u16::from_be_bytes([a[34], a[35]]));
            let header = ProxyHeader {
                source: Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(src), sport, 0, 0))),
                destination: Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(dst), dport, 0, 0))),
            };
            (header, 36)
        }
        // Datagram over IPv4/IPv6 makes no sense on a stream listener: fall back to
        // UNSPEC, as the specification asks of receivers for combinations they do not
        // support, but still check the block is as long as the family says.
        0x12 => (ProxyHeader::default(), need(block, fam, 12)?.len()),
        0x22 => (ProxyHeader::default(), need(block, fam, 36)?.len()),
        0x31 | 0x32 => (ProxyHeader::default(), need(block, fam, 216)?.len()),
        // UNSPEC family or transport: the address layout is unknown, so is where TLVs
        // begin; ignore the whole block.
        _ => return Ok(Parsed::Complete { header: ProxyHeader::default(), len }),
    };
    check_tlvs(&block[used..], V2_FIXED_LEN + used)?;
    Ok(Parsed::Complete { header, len })
}

fn need(block: &[u8], family: u8, n: usize) -> Result<&[u8], ProxyError> {
    block.get(..n).ok_or(ProxyError::V2AddressTooShort { family, len: block.len(), need: n })
}

/// TLVs are skipped, but must tile the rest of the header exactly.
fn check_tlvs(mut tlvs: &[u8], mut offset: usize) -> Result<(), ProxyError> {
    while !tlvs.is_empty() {
        let Some(&[_, hi, lo]) = tlvs.get(..3) else {
            return Err(ProxyError::V2Tlv { offset });
        };
        let total = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        if total > tlvs.len() {
            return Err(ProxyError::V2Tlv { offset });
        }
        tlvs = &tlvs[total..];
        offset += total;
    }
    Ok(())
}

/// Reads the PROXY protocol header from a connected, non-blocking or blocking socket
/// without ever blocking, and consumes exactly the header's bytes.
///
/// Returns the header once it is complete. Errors:
/// - [`io::ErrorKind::WouldBlock`]: the header is not complete yet (or nothing has
///   arrived); nothing was consumed. Wait for readability (with a timeout) and call again.
/// - [`io::ErrorKind::InvalidData`]: the bytes are not a valid header; the inner error
///   is the [`ProxyError`] (`err.get_ref()` and `downcast_ref`). Close the connection.
/// - [`io::ErrorKind::UnexpectedEof`]: the peer closed before sending a whole header.
/// - any other error of `recv`.
pub fn read_header(fd: BorrowedFd<'_>) -> io::Result<ProxyHeader> {
    let mut buf = [0u8; MAX_HEADER_LEN];
    let n = crate::sys::socket::peek_nowait(fd, &mut buf[..])?;
    let seen = &buf[..n];
    match parse(seen).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? {
        Parsed::Incomplete { .. } if n == 0 => {
            Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a PROXY protocol header"))
        }
        Parsed::Incomplete { .. } => {
            // A closed peer would also leave the bytes here forever: tell the two apart
            // only by the caller's timeout, which it needs anyway for a slow client.
            Err(io::ErrorKind::WouldBlock.into())
        }
        Parsed::Complete { header, len } => {
            let got = crate::sys::socket::recv_nowait(fd, &mut buf[..len])?;
            if got != len {
                // The bytes were in the queue a moment ago; only a concurrent reader
                // of the same socket could take them.
                return Err(io::Error::other(format!(
                    "consumed {got} bytes of a {len}-byte PROXY header that had been peeked"
                )));
            }
            Ok(header)
        }
    }
}

/// Length of the address extension written by [`encode_addrs`].
pub const ADDRS_LEN: usize = 40;

/// Why [`decode_addrs`] refused its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddrsError {
    /// The input is not [`ADDRS_LEN`] bytes long.
    Length(usize),
    /// The family byte is not 0, 4 or 6.
    Family(u8),
}

impl fmt::Display for AddrsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrsError::Length(n) => write!(f, "address extension of {n} bytes (must be {ADDRS_LEN})"),
            AddrsError::Family(b) => write!(f, "address extension with family {b} (must be 0, 4 or 6)"),
        }
    }
}

impl std::error::Error for AddrsError {}

/// Appends the fixed [`ADDRS_LEN`]-byte (40) form of `h` to `out`, for the CONN frame's
/// address extension. Layout (integers little-endian, like every frame field;
/// addresses in network byte order, as `octets()`):
///
/// ```text
/// offset  size  field
///  0      1     family: 0 none, 4 IPv4, 6 IPv6
///  1      1     reserved, 0
///  2      2     source port
///  4      2     destination port
///  6      2     reserved, 0
///  8      16    source address (IPv4: first 4 bytes, rest 0)
/// 24      16    destination address (IPv4: first 4 bytes, rest 0)
/// ```
///
/// Family 0 (all other bytes 0) is written when either address is `None`. When both
/// are IPv4 the family is 4; otherwise 6, with an IPv4 address written as its
/// IPv4-mapped IPv6 form (`::ffff:a.b.c.d`), so a mixed pair (which [`parse`] never
/// produces) survives as two IPv6 addresses. IPv6 flow info and scope id are not
/// carried (a PROXY header has neither). Receivers ignore the reserved bytes.
pub fn encode_addrs(h: &ProxyHeader, out: &mut Vec<u8>) {
    let mut b = [0u8; ADDRS_LEN];
    if let (Some(src), Some(dst)) = (h.source, h.destination) {
        b[2..4].copy_from_slice(&src.port().to_le_bytes());
        b[4..6].copy_from_slice(&dst.port().to_le_bytes());
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                b[0] = 4;
                b[8..12].copy_from_slice(&s.octets());
                b[24..28].copy_from_slice(&d.octets());
            }
            (s, d) => {
                b[0] = 6;
                b[8..24].copy_from_slice(&to_v6(s).octets());
                b[24..40].copy_from_slice(&to_v6(d).octets());
            }
        }
    }
    out.extend_from_slice(&b);
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Decodes the [`ADDRS_LEN`]-byte form written by [`encode_addrs`].
pub fn decode_addrs(b: &[u8]) -> Result<ProxyHeader, AddrsError> {
    let b: &[u8; ADDRS_LEN] = b.try_into().map_err(|_| AddrsError::Length(b.len()))?;
    let sport = u16::from_le_bytes([b[2], b[3]]);
    let dport = u16::from_le_bytes([b[4], b[5]]);
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&b[8..24]);
    dst.copy_from_slice(&b[24..40]);
    let (s, d): (IpAddr, IpAddr) = match b[0] {
        0 => return Ok(ProxyHeader::default()),
        4 => {
            (Ipv4Addr::new(src[0], src[1], src[2], src[3]).into(), Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]).into())
        }
        6 => (Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into()),
        f => return Err(AddrsError::Family(f)),
    };
    Ok(ProxyHeader { source: Some(SocketAddr::new(s, sport)), destination: Some(SocketAddr::new(d, dport)) })
}

#[cfg(test)]
mod tests;
