//! Worker protocol v1: the frames exchanged over a worker's channel.
//!
//! The channel is one end of a `SOCK_SEQPACKET` socket pair, so one `sendmsg` is one
//! frame and no framing is needed beyond the message boundary. Every frame is
//! little-endian with a fixed layout (see `docs/PROTOCOL.md`, the normative text):
//!
//! ```text
//! offset 0  u8   type
//! offset 1  u8   version (1)
//! offset 2  u16  n, the number of items that follow
//! offset 4  n items, each of the type's fixed size
//! ```
//!
//! Decoding is strict: an unknown type, a wrong version, a length that is not exactly
//! `4 + n * item_size`, or an item count the type does not allow is an error, never a
//! panic. This module does no I/O; [`crate::sys::fdpass`] carries the bytes and the
//! descriptors.

use std::fmt;

/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Size of the frame header.
pub const HEADER_LEN: usize = 4;
/// No frame is longer than this; receivers need a buffer of this size.
pub const MAX_FRAME_LEN: usize = 4096;
/// Most ids one ACK, DONE or SERVED frame may carry.
pub const MAX_IDS: usize = (MAX_FRAME_LEN - HEADER_LEN) / 8;
/// Most connections one CONN frame may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_CONNS: usize = crate::sys::fdpass::MAX_FDS_PER_MSG;
/// Most connections one RETURN frame may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_RETURNS: usize = crate::sys::fdpass::MAX_FDS_PER_MSG;
/// Size of one CONN item.
pub const CONN_ITEM_LEN: usize = 16;
/// Size of one CONN_ADDR item: a CONN item and the 40-byte address block.
pub const CONN_ADDR_ITEM_LEN: usize = CONN_ITEM_LEN + crate::proxy::ADDRS_LEN;
/// Most connections one CONN_ADDR frame may carry (it must fit [`MAX_FRAME_LEN`]).
pub const MAX_CONN_ADDRS: usize = (MAX_FRAME_LEN - HEADER_LEN) / CONN_ADDR_ITEM_LEN;

/// Frame types. Worker-to-master types have the high bit clear, master-to-worker set.
pub mod kind {
    /// worker → master: "I speak protocol v1 with these capabilities".
    pub const READY: u8 = 0x01;
    /// worker → master: these connection ids were received.
    pub const ACK: u8 = 0x02;
    /// worker → master: these connections are finished.
    pub const DONE: u8 = 0x03;
    /// worker → master: still alive.
    pub const HEARTBEAT: u8 = 0x04;
    /// worker → master: these idle connections come back, one descriptor per id
    /// (only from workers that announced `cap::RETURN`).
    pub const RETURN: u8 = 0x05;
    /// worker → master: one request holds this worker (a long, CPU-bound handler):
    /// send it nothing new until FREE. Sent by workers whose stall watch runs on its own
    /// thread, together with the RETURN of the connections idle behind that request.
    pub const BUSY: u8 = 0x06;
    /// worker → master: the request that made this worker BUSY is finished.
    pub const FREE: u8 = 0x07;
    /// worker → master: these connections were received and are finished, ACK and
    /// DONE in one frame (connections a worker answered as soon as they came).
    pub const SERVED: u8 = 0x08;
    /// master → worker: connections, one descriptor per item.
    pub const CONN: u8 = 0x81;
    /// master → worker: finish what you have, take no more, exit.
    pub const DRAIN: u8 = 0x82;
    /// master → worker: connections with the client's original addresses (from a
    /// PROXY protocol header), only to workers that announced `cap::ADDRS`.
    pub const CONN_ADDR: u8 = 0x83;
}

// The environment a master gives each worker process (docs/PROTOCOL.md, section 1).

/// Environment variable naming the channel descriptor.
pub const ENV_FD: &str = "HANDOFF_FD";
/// Environment variable with this worker's slot, `0..N`.
pub const ENV_WORKER_ID: &str = "HANDOFF_WORKER_ID";
/// Environment variable with the number of worker slots.
pub const ENV_WORKERS: &str = "HANDOFF_WORKERS";
/// Environment variable with the heartbeat interval the master expects, in ms.
pub const ENV_HEARTBEAT_MS: &str = "HANDOFF_HEARTBEAT_MS";
/// Environment variable saying when to hand idle connections back (`auto`, `always`,
/// `off`; see [`HandBack`]). Absent means `auto`.
pub const ENV_RETURN: &str = "HANDOFF_RETURN";

/// Environment variable asking the built-in HTTP worker for an access log (`combined`
/// or `json`).
pub const ENV_ACCESS_LOG: &str = "HANDOFF_ACCESS_LOG";

/// Capability bits a worker announces in READY.
pub mod cap {
    /// The worker sends ACK for every connection it receives. The master then keeps
    /// its copy of each descriptor until the ACK, and hands it to another worker if
    /// this one dies first.
    pub const ACK: u32 = 1 << 0;
    /// The worker sends DONE when a connection ends; load-aware policies use it.
    pub const DONE: u32 = 1 << 1;
    /// The worker sends HEARTBEAT at least every heartbeat interval while running.
    pub const HEARTBEAT: u32 = 1 << 2;
    /// The worker accepts CONN frames carrying more than one descriptor.
    pub const BATCH: u32 = 1 << 3;
    /// The worker understands CONN_ADDR frames (client addresses from PROXY headers).
    pub const ADDRS: u32 = 1 << 4;
    /// The worker may hand idle keep-alive connections back with RETURN frames, at a
    /// request boundary, so that the master places each request, not just each
    /// connection. Needs ACK and DONE.
    pub const RETURN: u32 = 1 << 5;
    /// Every capability this crate knows.
    pub const ALL: u32 = ACK | DONE | HEARTBEAT | BATCH | ADDRS | RETURN;
}

/// What kind of socket a CONN item carries (byte 10 of the item): a hint that saves
/// the worker a `getsockname`. Workers must accept [`sock::UNKNOWN`] and look for
/// themselves.
pub mod sock {
    /// Not said: ask the socket.
    pub const UNKNOWN: u8 = 0;
    /// A TCP socket (IPv4 or IPv6).
    pub const TCP: u8 = 1;
    /// A Unix stream socket.
    pub const UNIX: u8 = 2;
}

/// Bits of a CONN item's `flags` byte (byte 11).
pub mod flags {
    /// The connection was handed back by a worker before (RETURN) and its client has
    /// sent its next request: not a new client. Sent only to workers that announced
    /// `cap::RETURN`.
    pub const CONTINUED: u8 = 1 << 0;
}

/// When workers hand idle keep-alive connections back to the master (`--hand-back`,
/// passed to workers as `HANDOFF_RETURN`): see `docs/PROTOCOL.md`, "Request-level
/// balancing".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HandBack {
    /// When a request holds the worker for [`SLOW_REQUEST`]: during it, for workers
    /// that watch themselves from a second thread (the stall rescue: BUSY, then the
    /// idle connections RETURNed at once), else after it, until [`SLOW_HOLD`] later;
    /// and any connection idle for a second. Uniform fast traffic never pays for a
    /// hand-back; a worker stuck behind slow requests stops hoarding idle clients.
    #[default]
    Auto,
    /// After every response whose connection stays open.
    Always,
    /// Never: workers do not announce `cap::RETURN`; every request of a connection
    /// goes to the worker that has it, as before request-level balancing.
    Off,
}

/// A request that holds a worker this long makes it slow for [`HandBack::Auto`].
pub const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_millis(2);
/// How long a worker stays slow after its last slow request.
pub const SLOW_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

impl HandBack {
    /// The name on the command line, in config files and in `HANDOFF_RETURN`.
    pub fn name(self) -> &'static str {
        match self {
            HandBack::Auto => "auto",
            HandBack::Always => "always",
            HandBack::Off => "off",
        }
    }
}

impl std::str::FromStr for HandBack {
    type Err = String;
    fn from_str(s: &str) -> Result<HandBack, String> {
        match s {
            "auto" => Ok(HandBack::Auto),
            "always" => Ok(HandBack::Always),
            "off" | "never" => Ok(HandBack::Off),
            _ => Err(format!("unknown hand-back mode {s:?}; choose auto, always or off")),
        }
    }
}

/// One connection handed to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnItem {
    /// Master-assigned id, unique for the master's lifetime; echoed in ACK and DONE.
    pub id: u64,
    /// Index of the listener (in `--listen` order) that accepted the connection.
    pub listener: u16,
    /// A [`sock`] value.
    pub sock: u8,
    /// [`flags`] bits.
    pub flags: u8,
    /// The addresses a PROXY protocol header gave (CONN_ADDR frames only).
    pub addrs: Option<crate::proxy::ProxyHeader>,
}

/// A decoded frame. Id lists borrow nothing: frames are small and decoded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// worker → master.
    Ready {
        /// Protocol version the worker speaks.
        version: u8,
        /// [`cap`] bits.
        caps: u32,
        /// The worker's process id (informational; the master knows the real one).
        pid: u32,
    },
    /// worker → master.
    Ack(Vec<u64>),
    /// worker → master.
    Done(Vec<u64>),
    /// worker → master: ACK and DONE at once.
    Served(Vec<u64>),
    /// worker → master.
    Heartbeat,
    /// worker → master, with exactly one descriptor per id, in order.
    Return(Vec<u64>),
    /// worker → master: a request holds this worker; send it nothing new until FREE.
    Busy,
    /// worker → master: no longer held (ends BUSY).
    Free,
    /// master → worker, with exactly one descriptor per item, in order.
    Conn(Vec<ConnItem>),
    /// master → worker.
    Drain,
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer than [`HEADER_LEN`] bytes.
    Short(usize),
    /// A version this crate does not speak.
    Version(u8),
    /// A type byte this version does not define.
    UnknownType(u8),
    /// The length does not match the item count.
    Length {
        /// Frame type.
        kind: u8,
        /// Item count from the header.
        n: u16,
        /// Bytes received.
        len: usize,
    },
    /// A CONN_ADDR address block is invalid.
    Addrs(crate::proxy::AddrsError),
    /// The item count is not allowed for this type.
    Count {
        /// Frame type.
        kind: u8,
        /// Item count from the header.
        n: u16,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Short(len) => write!(f, "frame of {len} bytes is shorter than the 4-byte header"),
            DecodeError::Version(v) => write!(f, "protocol version {v} is not supported (this is version {VERSION})"),
            DecodeError::UnknownType(t) => write!(f, "unknown frame type {t:#04x}"),
            DecodeError::Length { kind, n, len } => {
                write!(f, "frame type {kind:#04x} with {n} items cannot be {len} bytes long")
            }
            DecodeError::Count { kind, n } => write!(f, "frame type {kind:#04x} cannot carry {n} items"),
            DecodeError::Addrs(e) => write!(f, "CONN_ADDR address block: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn item_len(kind: u8) -> Option<usize> {
    Some(match kind {
        kind::READY => 8,
        kind::ACK | kind::DONE | kind::SERVED | kind::RETURN => 8,
        kind::HEARTBEAT | kind::DRAIN | kind::BUSY | kind::FREE => 0,
        kind::CONN => CONN_ITEM_LEN,
        kind::CONN_ADDR => CONN_ADDR_ITEM_LEN,
        _ => return None,
    })
}

fn count_ok(kind: u8, n: usize) -> bool {
    match kind {
        kind::READY => n == 1,
        kind::ACK | kind::DONE | kind::SERVED => (1..=MAX_IDS).contains(&n),
        kind::RETURN => (1..=MAX_RETURNS).contains(&n),
        kind::CONN => (1..=MAX_CONNS).contains(&n),
        kind::CONN_ADDR => (1..=MAX_CONN_ADDRS).contains(&n),
        _ => n == 0,
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// The ids of an ACK, DONE or RETURN frame, read in place from the received bytes
/// (see [`decode_ref`]): the master decodes one such frame per worker frame, and an id
/// list built for each would be an allocation per frame on its hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids<'a> {
    /// The items, 8 bytes each (a length checked by the decoder).
    body: &'a [u8],
}

impl<'a> Ids<'a> {
    /// How many ids.
    pub fn len(&self) -> usize {
        self.body.len() / 8
    }

    /// No ids (never, in a frame that decoded: ACK, DONE and RETURN carry at least one).
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The ids, in frame order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        self.body.chunks_exact(8).map(|c| u64_at(c, 0))
    }

    /// The ids in a `Vec` (for [`decode`]).
    pub fn to_vec(&self) -> Vec<u64> {
        self.iter().collect()
    }
}

/// A decoded frame whose id lists borrow the received bytes ([`decode_ref`]). The
/// frames a master sends carry no items here: a master that receives one has nothing
/// to read in it (it is a protocol error); [`decode`] reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRef<'a> {
    /// worker → master.
    Ready {
        /// Protocol version the worker speaks.
        version: u8,
        /// [`cap`] bits.
        caps: u32,
        /// The worker's process id (informational; the master knows the real one).
        pid: u32,
    },
    /// worker → master.
    Ack(Ids<'a>),
    /// worker → master.
    Done(Ids<'a>),
    /// worker → master: ACK and DONE at once.
    Served(Ids<'a>),
    /// worker → master.
    Heartbeat,
    /// worker → master, with exactly one descriptor per id, in order.
    Return(Ids<'a>),
    /// worker → master: a request holds this worker; send it nothing new until FREE.
    Busy,
    /// worker → master: no longer held (ends BUSY).
    Free,
    /// master → worker: CONN or CONN_ADDR (the items unread; see [`decode`]).
    Conn,
    /// master → worker.
    Drain,
}

/// Checks the header and length of a frame: its type, item count and items.
fn checked(b: &[u8]) -> Result<(u8, u8, u16, usize, &[u8]), DecodeError> {
    if b.len() < HEADER_LEN {
        return Err(DecodeError::Short(b.len()));
    }
    let (kind, version, n) = (b[0], b[1], u16::from_le_bytes([b[2], b[3]]));
    let size = item_len(kind).ok_or(DecodeError::UnknownType(kind))?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    if !count_ok(kind, n as usize) {
        return Err(DecodeError::Count { kind, n });
    }
    if b.len() != HEADER_LEN + n as usize * size {
        return Err(DecodeError::Length { kind, n, len: b.len() });
    }
    Ok((kind, version, n, size, &b[HEADER_LEN..]))
}

/// Decodes one frame without allocating, as strictly as [`decode`] (but for the items
/// of CONN and CONN_ADDR frames, which it does not read): id lists are read in place.
pub fn decode_ref(b: &[u8]) -> Result<FrameRef<'_>, DecodeError> {
    let (kind, version, _, _, body) = checked(b)?;
    let ids = Ids { body };
    Ok(match kind {
        kind::READY => FrameRef::Ready { version, caps: u32_at(body, 0), pid: u32_at(body, 4) },
        kind::ACK => FrameRef::Ack(ids),
        kind::DONE => FrameRef::Done(ids),
        kind::SERVED => FrameRef::Served(ids),
        kind::HEARTBEAT => FrameRef::Heartbeat,
        kind::RETURN => FrameRef::Return(ids),
        kind::BUSY => FrameRef::Busy,
        kind::FREE => FrameRef::Free,
        kind::DRAIN => FrameRef::Drain,
        kind::CONN | kind::CONN_ADDR => FrameRef::Conn,
        _ => unreachable!("item_len rejected unknown types"),
    })
}

/// Decodes one frame. The descriptor count of a CONN frame is checked by the caller,
/// which holds the descriptors.
pub fn decode(b: &[u8]) -> Result<Frame, DecodeError> {
    let (kind, version, n, size, body) = checked(b)?;
    let ids = || Ids { body }.to_vec();
    Ok(match kind {
        kind::READY => Frame::Ready { version, caps: u32_at(body, 0), pid: u32_at(body, 4) },
        kind::ACK => Frame::Ack(ids()),
        kind::DONE => Frame::Done(ids()),
        kind::SERVED => Frame::Served(ids()),
        kind::HEARTBEAT => Frame::Heartbeat,
        kind::RETURN => Frame::Return(ids()),
        kind::BUSY => Frame::Busy,
        kind::FREE => Frame::Free,
        kind::DRAIN => Frame::Drain,
        kind::CONN | kind::CONN_ADDR => {
            let with_addrs = kind == kind::CONN_ADDR;
            let mut items = Vec::with_capacity(n as usize);
            for i in 0..n as usize {
                let at = i * size;
                let addrs = if with_addrs {
                    let block = &body[at + CONN_ITEM_LEN..at + CONN_ADDR_ITEM_LEN];
                    Some(crate::proxy::decode_addrs(block).map_err(DecodeError::Addrs)?)
                } else {
                    None
                };
                items.push(ConnItem {
                    sock: body[at + 10],
                    flags: body[at + 11],
                    id: u64_at(body, at),
                    listener: u16::from_le_bytes([body[at + 8], body[at + 9]]),
                    addrs,
                });
            }
            Frame::Conn(items)
        }
        _ => unreachable!("item_len rejected unknown types"),
    })
}

fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.clear();
    out.extend_from_slice(&[kind, VERSION]);
    out.extend_from_slice(&(n as u16).to_le_bytes());
}

/// Encodes READY into `out` (cleared first).
pub fn encode_ready(out: &mut Vec<u8>, caps: u32, pid: u32) {
    header(out, kind::READY, 1);
    out.extend_from_slice(&caps.to_le_bytes());
    out.extend_from_slice(&pid.to_le_bytes());
}

/// Encodes an ACK, DONE, SERVED or RETURN list. Panics in debug builds only if `ids` is
/// empty or longer than the type allows ([`MAX_IDS`], [`MAX_RETURNS`]); callers chunk
/// their lists.
pub fn encode_ids(out: &mut Vec<u8>, kind: u8, ids: &[u64]) {
    debug_assert!(matches!(kind, kind::ACK | kind::DONE | kind::SERVED | kind::RETURN));
    debug_assert!(count_ok(kind, ids.len()));
    header(out, kind, ids.len());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// Encodes a frame without items (HEARTBEAT, BUSY, FREE, DRAIN).
pub fn encode_empty(out: &mut Vec<u8>, kind: u8) {
    header(out, kind, 0);
}

/// Encodes a CONN frame, or a CONN_ADDR frame if any item carries addresses; send it
/// with one descriptor per item, in order. At most [`MAX_CONNS`] items, or
/// [`MAX_CONN_ADDRS`] with addresses.
pub fn encode_conn(out: &mut Vec<u8>, items: &[ConnItem]) {
    let with_addrs = items.iter().any(|i| i.addrs.is_some());
    debug_assert!((1..=if with_addrs { MAX_CONN_ADDRS } else { MAX_CONNS }).contains(&items.len()));
    header(out, if with_addrs { kind::CONN_ADDR } else { kind::CONN }, items.len());
    for it in items {
        out.extend_from_slice(&it.id.to_le_bytes());
        out.extend_from_slice(&it.listener.to_le_bytes());
        out.push(it.sock);
        out.push(it.flags);
        out.extend_from_slice(&[0u8; 4]);
        if with_addrs {
            crate::proxy::encode_addrs(&it.addrs.unwrap_or_default(), out);
        }
    }
}

/// Encodes any frame (convenience for tests and tools; hot paths use the `encode_*`
/// functions, which reuse the caller's buffer).
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    match frame {
        Frame::Ready { caps, pid, .. } => encode_ready(&mut out, *caps, *pid),
        Frame::Ack(ids) => encode_ids(&mut out, kind::ACK, ids),
        Frame::Done(ids) => encode_ids(&mut out, kind::DONE, ids),
        Frame::Served(ids) => encode_ids(&mut out, kind::SERVED, ids),
        Frame::Heartbeat => encode_empty(&mut out, kind::HEARTBEAT),
        Frame::Return(ids) => encode_ids(&mut out, kind::RETURN, ids),
        Frame::Busy => encode_empty(&mut out, kind::BUSY),
        Frame::Free => encode_empty(&mut out, kind::FREE),
        Frame::Drain => encode_empty(&mut out, kind::DRAIN),
        Frame::Conn(items) => encode_conn(&mut out, items),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layouts_are_as_documented() {
        assert_eq!(encode(&Frame::Heartbeat), [0x04, 1, 0, 0]);
        assert_eq!(encode(&Frame::Drain), [0x82, 1, 0, 0]);
        assert_eq!(
            encode(&Frame::Ready { version: 1, caps: cap::ACK | cap::DONE, pid: 0x0102 }),
            [0x01, 1, 1, 0, 3, 0, 0, 0, 2, 1, 0, 0]
        );
        assert_eq!(encode(&Frame::Ack(vec![5])), [0x02, 1, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
        let conn =
            encode(&Frame::Conn(vec![ConnItem { id: 0x0a0b, listener: 2, sock: sock::TCP, flags: 0, addrs: None }]));
        assert_eq!(conn, [0x81, 1, 1, 0, 0x0b, 0x0a, 0, 0, 0, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0, 0]);
        let again = ConnItem { id: 7, listener: 0, sock: sock::TCP, flags: flags::CONTINUED, addrs: None };
        assert_eq!(encode(&Frame::Conn(vec![again])), [0x81, 1, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]);
        assert_eq!(encode(&Frame::Return(vec![7])), [0x05, 1, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode(&[0x05, 1, 0, 0]), Err(DecodeError::Count { kind: 5, n: 0 }));
    }

    #[test]
    fn strict_decoding() {
        assert_eq!(decode(&[1, 1]), Err(DecodeError::Short(2)));
        assert_eq!(decode(&[0x42, 1, 0, 0]), Err(DecodeError::UnknownType(0x42)));
        assert_eq!(decode(&[0x04, 2, 0, 0]), Err(DecodeError::Version(2)));
        assert_eq!(decode(&[0x04, 1, 1, 0]), Err(DecodeError::Count { kind: 4, n: 1 }));
        assert_eq!(decode(&[0x02, 1, 0, 0]), Err(DecodeError::Count { kind: 2, n: 0 }));
        assert_eq!(decode(&[0x02, 1, 1, 0, 1, 2, 3]), Err(DecodeError::Length { kind: 2, n: 1, len: 7 }));
        assert_eq!(decode(&[0x04, 1, 0, 0, 9]), Err(DecodeError::Length { kind: 4, n: 0, len: 5 }));
        assert_eq!(decode(&[0x01, 1, 2, 0]), Err(DecodeError::Count { kind: 1, n: 2 }));
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let ids = prop::collection::vec(any::<u64>(), 1..=MAX_IDS);
        let items = prop::collection::vec((any::<u64>(), any::<u16>(), 0u8..=2), 1..=MAX_CONNS).prop_map(|v| {
            v.into_iter()
                .map(|(id, listener, sock)| ConnItem {
                    id,
                    listener,
                    sock,
                    flags: flags::CONTINUED & id as u8,
                    addrs: None,
                })
                .collect()
        });
        let v4 = |(a, p): (u32, u16)| std::net::SocketAddr::from((std::net::Ipv4Addr::from(a), p));
        let addr_items = prop::collection::vec(
            (any::<u64>(), any::<u16>(), any::<(u32, u16)>(), any::<(u32, u16)>()),
            1..=MAX_CONN_ADDRS,
        )
        .prop_map(move |v| {
            v.into_iter()
                .map(|(id, listener, s, d)| ConnItem {
                    sock: sock::TCP,
                    flags: 0,
                    id,
                    listener,
                    addrs: Some(crate::proxy::ProxyHeader { source: Some(v4(s)), destination: Some(v4(d)) }),
                })
                .collect()
        });
        prop_oneof![
            (any::<u32>(), any::<u32>()).prop_map(|(caps, pid)| Frame::Ready { version: VERSION, caps, pid }),
            ids.clone().prop_map(Frame::Ack),
            ids.clone().prop_map(Frame::Done),
            ids.prop_map(Frame::Served),
            prop::collection::vec(any::<u64>(), 1..=MAX_RETURNS).prop_map(Frame::Return),
            Just(Frame::Heartbeat),
            Just(Frame::Busy),
            Just(Frame::Free),
            Just(Frame::Drain),
            items.prop_map(Frame::Conn),
            addr_items.prop_map(Frame::Conn),
        ]
    }

    /// Whether `decode_ref` agrees with `decode` on `b`.
    fn same_as_decode(b: &[u8]) -> Result<(), String> {
        let owned = |r: FrameRef<'_>| match r {
            FrameRef::Ready { version, caps, pid } => Some(Frame::Ready { version, caps, pid }),
            FrameRef::Ack(ids) => Some(Frame::Ack(ids.to_vec())),
            FrameRef::Done(ids) => Some(Frame::Done(ids.to_vec())),
            FrameRef::Served(ids) => Some(Frame::Served(ids.to_vec())),
            FrameRef::Heartbeat => Some(Frame::Heartbeat),
            FrameRef::Return(ids) => Some(Frame::Return(ids.to_vec())),
            FrameRef::Busy => Some(Frame::Busy),
            FrameRef::Free => Some(Frame::Free),
            FrameRef::Drain => Some(Frame::Drain),
            FrameRef::Conn => None,
        };
        match (decode(b), decode_ref(b)) {
            (Ok(Frame::Conn(_)), Ok(FrameRef::Conn)) => Ok(()),
            (Ok(f), Ok(r)) if owned(r).as_ref() == Some(&f) => Ok(()),
            (Err(DecodeError::Addrs(_)), Ok(FrameRef::Conn)) => Ok(()),
            (Err(a), Err(b)) if a == b => Ok(()),
            (a, b) => Err(format!("decode {a:?}, decode_ref {b:?}")),
        }
    }

    proptest! {
        #[test]
        fn round_trip(f in frame()) {
            let bytes = encode(&f);
            prop_assert!(bytes.len() <= MAX_FRAME_LEN);
            prop_assert_eq!(decode(&bytes), Ok(f));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&b);
            let _ = decode_ref(&b);
        }

        /// The master's decoder accepts and refuses what `decode` does, and reads the
        /// same ids (CONN items are `decode`'s only).
        #[test]
        fn decode_ref_reads_what_decode_reads(f in frame()) {
            let bytes = encode(&f);
            prop_assert_eq!(same_as_decode(&bytes), Ok(()));
        }

        #[test]
        fn decode_ref_refuses_what_decode_refuses(
            kind in prop_oneof![Just(1u8), Just(2), Just(3), Just(4), Just(5), Just(6), Just(0x81), Just(0x42)],
            version in prop_oneof![Just(VERSION), Just(2)],
            n in 0u16..4,
            len in 0usize..40,
        ) {
            let mut b = vec![kind, version];
            b.extend_from_slice(&n.to_le_bytes());
            b.extend((0..len).map(|i| i as u8));
            prop_assert_eq!(same_as_decode(&b), Ok(()));
        }

        #[test]
        fn near_valid_bytes_never_panic(kind in prop_oneof![Just(1u8), Just(2), Just(3), Just(4), Just(5), Just(0x81), Just(0x82)],
                                        n in any::<u16>(), tail in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut b = vec![kind, VERSION];
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(&tail);
            let _ = decode(&b);
        }
    }
}
