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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    fn v4(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    /// Test-only v1 encoder.
    fn encode_v1(h: &ProxyHeader) -> Vec<u8> {
        match (h.source, h.destination) {
            (Some(s), Some(d)) => {
                let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
                format!("PROXY {proto} {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port()).into_bytes()
            }
            _ => b"PROXY UNKNOWN\r\n".to_vec(),
        }
    }

    /// Test-only v2 encoder: PROXY over TCP (or LOCAL when the header has no addresses),
    /// followed by `tlvs` as (type, value) pairs.
    fn encode_v2(h: &ProxyHeader, tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        let (cmd, fam) = match (h.source, h.destination) {
            (Some(SocketAddr::V4(s)), Some(SocketAddr::V4(d))) => {
                body.extend_from_slice(&s.ip().octets());
                body.extend_from_slice(&d.ip().octets());
                body.extend_from_slice(&s.port().to_be_bytes());
                body.extend_from_slice(&d.port().to_be_bytes());
                (0x21, 0x11)
            }
            (Some(SocketAddr::V6(s)), Some(SocketAddr::V6(d))) => {
                body.extend_from_slice(&s.ip().octets());
                body.extend_from_slice(&d.ip().octets());
                body.extend_from_slice(&s.port().to_be_bytes());
                body.extend_from_slice(&d.port().to_be_bytes());
                (0x21, 0x21)
            }
            _ => (0x20, 0x00),
        };
        for (t, v) in tlvs {
            body.push(*t);
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
        }
        v2_raw(cmd, fam, &body)
    }

    fn v2_raw(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend_from_slice(&[ver_cmd, fam]);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn complete(b: &[u8]) -> (ProxyHeader, usize) {
        match parse(b) {
            Ok(Parsed::Complete { header, len }) => (header, len),
            other => panic!("{:?}: {other:?}", b.escape_ascii().to_string()),
        }
    }

    fn err(b: &[u8]) -> ProxyError {
        match parse(b) {
            Err(e) => {
                assert!(!e.to_string().is_empty());
                e
            }
            other => panic!("{:?} should be refused: {other:?}", b.escape_ascii().to_string()),
        }
    }

    /// Every strict prefix of a valid header is Incomplete with a true lower bound, and
    /// the whole is Complete.
    fn assert_splits(full: &[u8]) {
        let (_, len) = complete(full);
        for i in 0..len {
            match parse(&full[..i]) {
                Ok(Parsed::Incomplete { min_len }) => {
                    assert!(min_len > i && min_len <= len, "prefix {i}: min_len {min_len}, header {len}")
                }
                other => panic!("prefix {i} of {:?}: {other:?}", full.escape_ascii().to_string()),
            }
        }
    }

    #[test]
    fn v1_spec_examples() {
        let req = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";
        let (h, len) = complete(req);
        assert_eq!(h.source, v4("192.168.0.1:56324"));
        assert_eq!(h.destination, v4("192.168.0.11:443"));
        assert_eq!(&req[len..len + 3], b"GET");

        let max4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(max4.len(), 56);
        assert_eq!(complete(max4).0.source, v4("255.255.255.255:65535"));

        let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let max6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
        assert_eq!(max6.len(), 104);
        let (h, len) = complete(max6.as_bytes());
        assert_eq!((h.source, len), (Some(SocketAddr::new(f.parse().unwrap(), 65535)), 104));

        assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (ProxyHeader::default(), 15));
        let worst = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
        assert_eq!(worst.len(), V1_MAX_LEN);
        assert_eq!(complete(worst.as_bytes()), (ProxyHeader::default(), V1_MAX_LEN));

        for full in [&req[..], max4, max6.as_bytes(), b"PROXY UNKNOWN\r\n", worst.as_bytes()] {
            assert_splits(full);
        }
    }

    #[test]
    fn v1_tcp6() {
        let (h, len) = complete(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\nxyz");
        assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));
        assert_eq!(h.destination, Some("[::1]:65535".parse().unwrap()));
        assert_eq!(len, 36);
        assert_eq!(
            complete(b"PROXY TCP6 ::ffff:1.2.3.4 :: 0 0\r\n").0.source,
            Some("[::ffff:1.2.3.4]:0".parse().unwrap())
        );
    }

    #[test]
    fn v1_refusals() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 192.168.0.01 1.2.3.4 1 2\r\n", // leading zero in an octet
            b"PROXY TCP4 1.2.3.4 1.2.3.4 0443 2\r\n",   // leading zero in a port
            b"PROXY TCP4 1.2.3.4 1.2.3.4 +443 2\r\n",   // sign
            b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",  // port out of range
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n",    // extra field
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",        // missing field
            b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n",     // double space
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n",     // trailing space
            b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n",        // three octets
            b"PROXY TCP4 1.2.3.4.5 1.2.3.4 1 2\r\n",    // five octets
            b"PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n",    // octet out of range
            b"PROXY TCP4 ::1 ::1 1 2\r\n",              // wrong family
            b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n",      // wrong family
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",     // zone id
            b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",      // protocol
            b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n",      // case
            b"PROXY UNKNOWNX\r\n",                      // protocol
            b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n",     // double space
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",        // LF alone
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX",       // CR alone
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\0\r\n",    // NUL
            b"PROXY UNKNOWN \xff\r\n",                  // not ASCII
            b"PROXY UNKNOWN a\nb\r\n",                  // LF inside
            b"PROXY\r\n",                               // nothing
            b"PROXY \r\n",                              // nothing
            b"PROXY TCP4\r\n",                          // nothing
            b"PROXY TCP4 \r\n",                         // nothing
            b"PROXX TCP4 1.2.3.4 1.2.3.4 1 2\r\n",      // signature
        ];
        for b in bad {
            err(b);
        }
        // Refused as early as the bytes allow, not after waiting for the CRLF.
        err(b"PROXY X");
        err(b"PROXY TCP4 1.2\n");
        err(b"PROXY UNKNOWNX");
        err(b"PROXX");
        assert_eq!(err(b"GET / HTTP/1.1\r\n"), ProxyError::NotProxy { start: "GET / HTTP/1.1\\r\\n".into() });
    }

    #[test]
    fn v1_length_limit() {
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN - 1, b'a');
        // 106 bytes without a CR: the CRLF can no longer end within 107 bytes.
        assert_eq!(err(&long), ProxyError::V1TooLong);
        assert!(matches!(parse(&long[..105]), Ok(Parsed::Incomplete { min_len: 107 })));
        let mut exact = long[..105].to_vec();
        exact.extend_from_slice(b"\r\n");
        assert_eq!(complete(&exact), (ProxyHeader::default(), 107));
        long.extend_from_slice(b"\r\n");
        assert_eq!(err(&long), ProxyError::V1TooLong);
    }

    #[test]
    fn v2_proxy_ipv4_and_ipv6() {
        let h4 = ProxyHeader { source: v4("10.1.2.3:40000"), destination: v4("192.0.2.9:443") };
        let b = encode_v2(&h4, &[]);
        assert_eq!(b.len(), 28);
        assert_eq!(&b[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(complete(&b), (h4, 28));
        assert_splits(&b);

        let h6 = ProxyHeader {
            source: Some("[2001:db8::7]:1234".parse().unwrap()),
            destination: Some("[2001:db8::1]:80".parse().unwrap()),
        };
        let mut b = encode_v2(&h6, &[]);
        assert_eq!(b.len(), 52);
        b.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(complete(&b), (h6, 52));
        assert_splits(&b);
    }

    #[test]
    fn v2_local_ignores_family_and_addresses() {
        assert_eq!(complete(&v2_raw(0x20, 0x00, &[])), (ProxyHeader::default(), 16));
        // Receivers must honour the length for LOCAL, and ignore the family.
        assert_eq!(complete(&v2_raw(0x20, 0x11, &[7; 12])), (ProxyHeader::default(), 28));
        assert_eq!(complete(&v2_raw(0x20, 0xff, &[1, 2, 3])), (ProxyHeader::default(), 19));
        assert_splits(&v2_raw(0x20, 0x11, &[7; 12]));
    }

    #[test]
    fn v2_families_without_usable_addresses() {
        let unix = v2_raw(0x21, 0x31, &[b'/'; 216]);
        assert_eq!(complete(&unix), (ProxyHeader::default(), 232));
        assert_eq!(complete(&v2_raw(0x21, 0x32, &[0; 216])).1, 232);
        assert_eq!(
            err(&v2_raw(0x21, 0x31, &[0; 215])),
            ProxyError::V2AddressTooShort { family: 0x31, len: 215, need: 216 }
        );
        assert_eq!(complete(&v2_raw(0x21, 0x00, &[])), (ProxyHeader::default(), 16));
        assert_eq!(complete(&v2_raw(0x21, 0x00, &[9; 5])), (ProxyHeader::default(), 21));
        assert_eq!(complete(&v2_raw(0x21, 0x10, &[9; 5])), (ProxyHeader::default(), 21));
        assert_eq!(complete(&v2_raw(0x21, 0x12, &[1; 12])), (ProxyHeader::default(), 28));
        assert_eq!(complete(&v2_raw(0x21, 0x22, &[1; 36])), (ProxyHeader::default(), 52));
        assert_splits(&unix);
    }

    #[test]
    fn v2_tlvs_are_skipped_but_checked() {
        let h = ProxyHeader { source: v4("1.2.3.4:5"), destination: v4("6.7.8.9:10") };
        let tlvs = vec![(0x01, b"h2".to_vec()), (0x04, vec![]), (0x05, vec![0xaa; 128]), (0xe0, vec![0; 300])];
        let b = encode_v2(&h, &tlvs);
        assert_eq!(complete(&b), (h, b.len()));
        assert_splits(&b);
        // A TLV whose length runs past the header.
        let mut body = b[16..28].to_vec();
        body.extend_from_slice(&[0x01, 0, 5, b'a', b'b']);
        assert_eq!(err(&v2_raw(0x21, 0x11, &body)), ProxyError::V2Tlv { offset: 28 });
        // A truncated TLV header.
        let mut body = b[16..28].to_vec();
        body.extend_from_slice(&[0x04, 0, 0, 0x04, 0]);
        assert_eq!(err(&v2_raw(0x21, 0x11, &body)), ProxyError::V2Tlv { offset: 31 });
    }

    #[test]
    fn v2_refusals() {
        assert_eq!(err(&v2_raw(0x11, 0x11, &[0; 12])), ProxyError::V2Version(1));
        assert_eq!(err(&v2_raw(0x31, 0x11, &[0; 12])), ProxyError::V2Version(3));
        assert_eq!(err(&v2_raw(0x22, 0x11, &[0; 12])), ProxyError::V2Command(2));
        assert_eq!(err(&v2_raw(0x2f, 0x11, &[0; 12])), ProxyError::V2Command(0xf));
        assert_eq!(err(&v2_raw(0x21, 0x41, &[0; 12])), ProxyError::V2Family(0x41));
        assert_eq!(err(&v2_raw(0x21, 0x13, &[0; 12])), ProxyError::V2Family(0x13));
        assert_eq!(
            err(&v2_raw(0x21, 0x11, &[0; 11])),
            ProxyError::V2AddressTooShort { family: 0x11, len: 11, need: 12 }
        );
        assert_eq!(
            err(&v2_raw(0x21, 0x21, &[0; 12])),
            ProxyError::V2AddressTooShort { family: 0x21, len: 12, need: 36 }
        );
        // Refused from the fixed part alone, before the bytes arrive.
        let mut big = v2_raw(0x21, 0x11, &[]);
        big[14..16].copy_from_slice(&((MAX_HEADER_LEN - 16 + 1) as u16).to_be_bytes());
        assert_eq!(err(&big), ProxyError::V2TooLarge { len: MAX_HEADER_LEN + 1 });
        big[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(err(&big), ProxyError::V2TooLarge { len: 16 + 65535 });
        // The largest accepted header.
        let mut body = vec![0u8; 12];
        body.extend_from_slice(&[0x04]);
        body.extend_from_slice(&((MAX_HEADER_LEN - 16 - 12 - 3) as u16).to_be_bytes());
        body.resize(MAX_HEADER_LEN - 16, 0);
        assert_eq!(complete(&v2_raw(0x21, 0x11, &body)).1, MAX_HEADER_LEN);
        // Early refusal on the 13th and 14th bytes.
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x10);
        assert_eq!(err(&b), ProxyError::V2Version(1));
        b[12] = 0x21;
        b.push(0x51);
        assert_eq!(err(&b), ProxyError::V2Family(0x51));
        // A signature that goes wrong part way.
        let mut b = V2_SIGNATURE[..6].to_vec();
        b.push(b'X');
        assert!(matches!(err(&b), ProxyError::NotProxy { .. }));
    }

    #[test]
    fn empty_and_signature_prefixes_are_incomplete() {
        assert_eq!(parse(b""), Ok(Parsed::Incomplete { min_len: V1_MIN_LEN }));
        assert_eq!(parse(b"\r"), Ok(Parsed::Incomplete { min_len: 16 }));
        assert_eq!(parse(b"P"), Ok(Parsed::Incomplete { min_len: V1_MIN_LEN }));
        assert!(matches!(err(b"\0"), ProxyError::NotProxy { .. }));
    }

    #[test]
    fn addrs_layout_is_as_documented() {
        let h = ProxyHeader { source: v4("1.2.3.4:258"), destination: v4("5.6.7.8:80") };
        let mut out = vec![0xee];
        encode_addrs(&h, &mut out);
        let mut want = vec![0xee, 4, 0, 2, 1, 80, 0, 0, 0, 1, 2, 3, 4];
        want.extend_from_slice(&[0; 12]);
        want.extend_from_slice(&[5, 6, 7, 8]);
        want.extend_from_slice(&[0; 12]);
        assert_eq!(out, want);
        assert_eq!(decode_addrs(&out[1..]), Ok(h));

        let none = ProxyHeader::default();
        let mut out = Vec::new();
        encode_addrs(&none, &mut out);
        assert_eq!(out, [0; ADDRS_LEN]);
        assert_eq!(decode_addrs(&out), Ok(none));
        // Half a header is no header.
        out.clear();
        encode_addrs(&ProxyHeader { source: v4("1.2.3.4:1"), destination: None }, &mut out);
        assert_eq!(out, [0; ADDRS_LEN]);

        // A mixed pair becomes two IPv6 addresses.
        let mixed = ProxyHeader { source: v4("1.2.3.4:1"), destination: Some("[::1]:2".parse().unwrap()) };
        out.clear();
        encode_addrs(&mixed, &mut out);
        assert_eq!(out[0], 6);
        let back = decode_addrs(&out).unwrap();
        assert_eq!(back.source, Some("[::ffff:1.2.3.4]:1".parse().unwrap()));
        assert_eq!(back.destination, mixed.destination);

        assert_eq!(decode_addrs(&[0; 39]), Err(AddrsError::Length(39)));
        let mut bad = [0u8; ADDRS_LEN];
        bad[0] = 5;
        assert_eq!(decode_addrs(&bad), Err(AddrsError::Family(5)));
        assert!(!AddrsError::Family(5).to_string().is_empty());
    }

    fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        (c, s)
    }

    /// Waits until `n` bytes are queued on `s`, so a peek sees them all.
    fn wait_queued(s: &std::net::TcpStream, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut b = [0u8; 256];
        while s.peek(&mut b).unwrap_or(0) < n {
            assert!(std::time::Instant::now() < deadline, "bytes did not arrive");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[test]
    fn read_header_consumes_exactly_the_header() {
        let (mut c, mut s) = tcp_pair();
        let h = ProxyHeader { source: v4("203.0.113.5:5555"), destination: v4("127.0.0.1:8080") };
        let mut b = encode_v2(&h, &[(0x04, vec![0; 3])]);
        b.extend_from_slice(b"hello");
        // Nothing yet, then half a header: WouldBlock, nothing consumed.
        assert_eq!(read_header(s.as_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        c.write_all(&b[..10]).unwrap();
        wait_queued(&s, 10);
        assert_eq!(read_header(s.as_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        c.write_all(&b[10..]).unwrap();
        wait_queued(&s, b.len());
        assert_eq!(read_header(s.as_fd()).unwrap(), h);
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"hello");

        // v1, then EOF before any application data.
        let (mut c, mut s) = tcp_pair();
        c.write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").unwrap();
        drop(c);
        wait_queued(&s, 32);
        assert_eq!(read_header(s.as_fd()).unwrap().source, v4("1.2.3.4:1"));
        assert_eq!(s.read(&mut rest).unwrap(), 0);
    }

    #[test]
    fn read_header_reports_garbage_and_eof() {
        let (mut c, s) = tcp_pair();
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        wait_queued(&s, 18);
        let e = read_header(s.as_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.get_ref().and_then(|e| e.downcast_ref::<ProxyError>()).is_some(), "{e}");

        let (c, s) = tcp_pair();
        drop(c);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match read_header(s.as_fd()) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(2))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    fn socket_addr(v6: bool) -> impl Strategy<Value = SocketAddr> {
        if v6 {
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(Ipv6Addr::from(ip).into(), p)).boxed()
        } else {
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(Ipv4Addr::from(ip).into(), p)).boxed()
        }
    }

    fn header() -> impl Strategy<Value = ProxyHeader> {
        prop_oneof![
            Just(ProxyHeader::default()),
            any::<bool>()
                .prop_flat_map(|v6| (socket_addr(v6), socket_addr(v6)))
                .prop_map(|(s, d)| ProxyHeader { source: Some(s), destination: Some(d) }),
        ]
    }

    proptest! {
        #[test]
        fn v1_round_trip(h in header(), tail in prop::collection::vec(any::<u8>(), 0..32)) {
            let mut b = encode_v1(&h);
            let n = b.len();
            prop_assert!(n <= V1_MAX_LEN);
            b.extend_from_slice(&tail);
            prop_assert_eq!(parse(&b), Ok(Parsed::Complete { header: h, len: n }));
        }

        #[test]
        fn v2_round_trip(h in header(),
                         tlvs in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)), 0..8),
                         tail in prop::collection::vec(any::<u8>(), 0..32)) {
            let mut b = encode_v2(&h, &tlvs);
            let n = b.len();
            b.extend_from_slice(&tail);
            prop_assert_eq!(parse(&b), Ok(Parsed::Complete { header: h, len: n }));
            let cut = n * 3 / 4;
            let incomplete = matches!(parse(&b[..cut]), Ok(Parsed::Incomplete { .. }));
            prop_assert!(incomplete);
        }

        #[test]
        fn addrs_round_trip(h in header()) {
            let mut out = Vec::new();
            encode_addrs(&h, &mut out);
            prop_assert_eq!(out.len(), ADDRS_LEN);
            prop_assert_eq!(decode_addrs(&out), Ok(h));
        }

        #[test]
        fn arbitrary_addrs_never_panic(b in prop::collection::vec(any::<u8>(), 0..48)) {
            let _ = decode_addrs(&b);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..300)) {
            check_outcome(&b)?;
        }

        #[test]
        fn near_valid_v2_never_panics(ver_cmd in any::<u8>(), fam in any::<u8>(), len in any::<u16>(),
                                      body in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut b = V2_SIGNATURE.to_vec();
            b.extend_from_slice(&[ver_cmd, fam]);
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&body);
            check_outcome(&b)?;
        }

        #[test]
        fn near_valid_v1_never_panics(s in "PROXY (TCP4|TCP6|UNKNOWN)[ 0-9a-f.:]{0,110}(\r\n)?") {
            check_outcome(s.as_bytes())?;
        }
    }

    /// Whatever the input: no panic, and a consistent answer.
    fn check_outcome(b: &[u8]) -> Result<(), TestCaseError> {
        match parse(b) {
            Ok(Parsed::Complete { header, len }) => {
                prop_assert!(len <= b.len() && len <= MAX_HEADER_LEN);
                prop_assert_eq!(header.source.is_some(), header.destination.is_some());
                // The header alone parses the same.
                prop_assert_eq!(parse(&b[..len]), Ok(Parsed::Complete { header, len }));
            }
            Ok(Parsed::Incomplete { min_len }) => prop_assert!(min_len > b.len() && min_len <= MAX_HEADER_LEN),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        Ok(())
    }
}
