//! Listening sockets: parsing `--listen` addresses, binding, accepting.
//!
//! Only the master holds listening sockets; workers never bind or see one (a worker
//! compromised by a client cannot accept on the server's port). Listeners are
//! non-blocking and `CLOEXEC`; accepted sockets are `CLOEXEC` and in **blocking**
//! mode, as the worker protocol promises.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;

use crate::sys::socket::{self, LocalAddr};

/// Kernel accept queue length requested for every listener (capped by somaxconn).
pub const BACKLOG: i32 = 4096;

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// TCP on IPv4 or IPv6.
    Tcp(SocketAddr),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: a unix listener needs a path, as in unix:/run/app.sock"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!("{s:?} is not a listen address; write HOST:PORT (127.0.0.1:8080, [::1]:8080) or unix:/path.sock")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl serde::Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ListenAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A `--listen` value: an address and its options, as in `0.0.0.0:8080,proxy`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenSpec {
    /// Where to listen.
    pub addr: ListenAddr,
    /// Connections start with a PROXY protocol (v1 or v2) header, read and checked by
    /// the master before the connection is handed on.
    pub proxy: bool,
    /// `TCP_DEFER_ACCEPT` (nginx's `deferred`, HAProxy's `defer-accept`): a connection
    /// reaches the master only once its client has sent something, for protocols where
    /// the client speaks first (HTTP). See [`Listener::set_deferred`]. On by default
    /// for the built-in HTTP worker's TCP listeners (see `no_deferred`).
    pub deferred: bool,
    /// `,nodeferred`: not deferred, even for the built-in HTTP worker.
    pub no_deferred: bool,
    /// `,proxy-from=NET+NET`: the sources allowed to send PROXY headers on a `,proxy`
    /// TCP listener (nginx's `set_real_ip_from`). Empty: the default,
    /// [`DEFAULT_PROXY_FROM`] (loopback only). See [`ListenSpec::proxy_allows`].
    pub proxy_from: Vec<SourceNet>,
}

/// Who may send PROXY headers when a `,proxy` listener names nobody: loopback only.
/// A PROXY header lets its sender claim any client address; trusting every source
/// would let anyone on the network do so (nginx trusts nobody until
/// `set_real_ip_from`). Loopback is the one source that is the local host itself,
/// where the usual proxy (HAProxy, a TLS terminator) runs; a proxy elsewhere is named
/// with `,proxy-from=`.
pub const DEFAULT_PROXY_FROM: [SourceNet; 2] = [
    SourceNet { addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), prefix: 8 },
    SourceNet { addr: IpAddr::V6(Ipv6Addr::LOCALHOST), prefix: 128 },
];

/// A network of source addresses, as in `10.0.0.0/8` or `::1` (a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceNet {
    addr: IpAddr,
    prefix: u8,
}

impl SourceNet {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for SourceNet {
    type Err = String;
    fn from_str(s: &str) -> Result<SourceNet, String> {
        let bad = || format!("{s:?} is not a source network; write an address or ADDRESS/PREFIX (10.0.0.0/8, ::1)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(SourceNet { addr, prefix })
    }
}

impl fmt::Display for SourceNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl ListenSpec {
    /// Whether a connection from `peer` may send a PROXY header here: a Unix peer is
    /// on this host (always); a TCP peer must be in `proxy_from` (or the default).
    pub fn proxy_allows(proxy_from: &[SourceNet], peer: Option<IpAddr>) -> bool {
        let Some(ip) = peer else { return true };
        let nets = if proxy_from.is_empty() { &DEFAULT_PROXY_FROM[..] } else { proxy_from };
        nets.iter().any(|n| n.contains(ip))
    }
}

impl FromStr for ListenSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<ListenSpec, String> {
        let mut parts = s.split(',');
        let addr = parts.next().unwrap_or_default().parse()?;
        let mut spec = ListenSpec { addr, proxy: false, deferred: false, no_deferred: false, proxy_from: Vec::new() };
        for opt in parts {
            // `+` separates the networks: `,` already separates the options.
            if let Some(nets) = opt.strip_prefix("proxy-from=") {
                for net in nets.split('+') {
                    spec.proxy_from.push(net.parse().map_err(|e| format!("{s:?}: proxy-from: {e}"))?);
                }
                continue;
            }
            match opt {
                "proxy" => spec.proxy = true,
                "deferred" => spec.deferred = true,
                "nodeferred" => spec.no_deferred = true,
                _ => {
                    return Err(format!(
                        "{s:?}: unknown listen option {opt:?}; the options are \"proxy\", \"proxy-from=NET+NET\", \
                         \"deferred\" and \"nodeferred\" (as in 0.0.0.0:8080,proxy,deferred)"
                    ))
                }
            }
        }
        if spec.deferred && spec.no_deferred {
            return Err(format!("{s:?}: \"deferred\" and \"nodeferred\" contradict each other: keep one"));
        }
        if !spec.proxy_from.is_empty() && !spec.proxy {
            return Err(format!(
                "{s:?}: \"proxy-from\" names who may send PROXY headers: add \"proxy\" (as in 0.0.0.0:8080,proxy,proxy-from=10.0.0.0/8)"
            ));
        }
        if !spec.proxy_from.is_empty() && matches!(spec.addr, ListenAddr::Unix(_)) {
            return Err(format!("{s:?}: \"proxy-from\" is for TCP listeners: a Unix socket's peers are on this host"));
        }
        if spec.deferred && matches!(spec.addr, ListenAddr::Unix(_)) {
            return Err(format!("{s:?}: \"deferred\" (TCP_DEFER_ACCEPT) is for TCP listeners, not Unix sockets"));
        }
        Ok(spec)
    }
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if self.proxy {
            f.write_str(",proxy")?;
        }
        for (i, net) in self.proxy_from.iter().enumerate() {
            f.write_str(if i == 0 { ",proxy-from=" } else { "+" })?;
            write!(f, "{net}")?;
        }
        if self.deferred {
            f.write_str(",deferred")?;
        }
        if self.no_deferred {
            f.write_str(",nodeferred")?;
        }
        Ok(())
    }
}

impl serde::Serialize for ListenSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ListenSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ListenSpec, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A bound, listening socket.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    addr: ListenAddr,
}

impl Listener {
    /// Binds and listens on `addr`.
    ///
    /// TCP listeners set `SO_REUSEADDR` (restart without waiting out TIME_WAIT) and,
    /// for IPv6, `IPV6_V6ONLY` (so `[::]:80` and `0.0.0.0:80` can coexist). A Unix
    /// path left behind by a dead server (nobody accepts on it) is replaced; a path
    /// with a live server behind it is "address in use".
    pub fn bind(addr: &ListenAddr) -> io::Result<Listener> {
        let fd = match addr {
            ListenAddr::Tcp(sa) => socket::listen_tcp(*sa, BACKLOG)?,
            ListenAddr::Unix(path) => socket::listen_unix(path, BACKLOG)?,
        };
        Ok(Listener { fd, addr: addr.clone() })
    }

    /// Turns `TCP_DEFER_ACCEPT` on or off (TCP only; a Unix listener is left alone).
    ///
    /// On, the kernel queues a connection for `accept` only when its first data
    /// arrives: the master never wakes for a client that has not spoken yet, and the
    /// worker finds the request already there (the built-in worker then answers a
    /// `Connection: close` request without registering the socket with its event
    /// loop). A client that connects and stays silent is accepted after about a second,
    /// like any other. Only for protocols where the client speaks first. A socket that
    /// has it on already (systemd's `DeferAcceptSec=`) keeps its own timeout.
    pub fn set_deferred(&self, on: bool) -> io::Result<()> {
        match self.addr {
            ListenAddr::Tcp(_) if on && socket::tcp_defer_accept(self.fd.as_fd())? > 0 => Ok(()),
            ListenAddr::Tcp(_) => socket::set_tcp_defer_accept(self.fd.as_fd(), u32::from(on)),
            ListenAddr::Unix(_) => Ok(()),
        }
    }

    /// Wraps an already listening socket (socket activation, upgrade).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Listener> {
        socket::set_nonblocking(fd.as_fd(), true)?;
        let addr = match socket::local_addr(fd.as_fd())? {
            LocalAddr::Unix(path) => ListenAddr::Unix(path),
            LocalAddr::Inet(a) => ListenAddr::Tcp(a),
        };
        Ok(Listener { fd, addr })
    }

    /// The address as configured, with the real port if port 0 was asked for.
    pub fn local_addr(&self) -> ListenAddr {
        match &self.addr {
            ListenAddr::Tcp(_) => match socket::local_addr(self.fd.as_fd()) {
                Ok(LocalAddr::Inet(a)) => ListenAddr::Tcp(a),
                _ => self.addr.clone(),
            },
            other => other.clone(),
        }
    }

    /// The address this listener was created for.
    pub fn addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// Accepts one connection: `CLOEXEC`, blocking mode.
    pub fn accept(&self) -> io::Result<OwnedFd> {
        Ok(socket::accept(self.fd.as_fd(), false)?)
    }

    /// Removes the socket file of a Unix listener (call when closing for good).
    pub fn unlink(&self) {
        if let ListenAddr::Unix(p) = &self.addr {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Listener> for OwnedFd {
    fn from(l: Listener) -> OwnedFd {
        l.fd
    }
}

/// Whether an accept error is about this one connection (skip it and go on) rather than
/// about the process or system (pause accepting).
pub fn accept_error_is_transient(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let Some(raw) = e.raw_os_error() else { return false };
    [
        Errno::CONNABORTED,
        Errno::PROTO,
        Errno::PERM,
        Errno::NETDOWN,
        Errno::NOPROTOOPT,
        Errno::HOSTDOWN,
        Errno::NONET,
        Errno::HOSTUNREACH,
        Errno::OPNOTSUPP,
        Errno::NETUNREACH,
        Errno::TIMEDOUT,
        Errno::CONNRESET,
    ]
    .iter()
    .any(|x| x.raw_os_error() == raw)
}

/// Whether an accept error means "out of descriptors or memory": stop accepting for a
/// short while (a level-triggered retry would spin), as nginx does.
pub fn accept_error_is_exhaustion(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let Some(raw) = e.raw_os_error() else { return false };
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].iter().any(|x| x.raw_os_error() == raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_addresses() {
        assert_eq!("127.0.0.1:8080".parse(), Ok(ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap())));
        assert_eq!("[::1]:80".parse(), Ok(ListenAddr::Tcp("[::1]:80".parse().unwrap())));
        assert_eq!("unix:/tmp/x.sock".parse(), Ok(ListenAddr::Unix("/tmp/x.sock".into())));
        assert!("localhost".parse::<ListenAddr>().unwrap_err().contains("HOST:PORT"));
        assert!("unix:".parse::<ListenAddr>().is_err());
        let spec: ListenSpec = "0.0.0.0:80,proxy".parse().unwrap();
        assert!(spec.proxy && spec.to_string() == "0.0.0.0:80,proxy");
        let spec: ListenSpec = "0.0.0.0:80,deferred,proxy".parse().unwrap();
        assert!(spec.proxy && spec.deferred && spec.to_string() == "0.0.0.0:80,proxy,deferred");
        let e = "unix:/run/a.sock,deferred".parse::<ListenSpec>().unwrap_err();
        assert!(e.contains("for TCP listeners"), "{e}");
        let e = "0.0.0.0:80,fast".parse::<ListenSpec>().unwrap_err();
        assert!(e.contains("\"proxy\", \"proxy-from=NET+NET\", \"deferred\" and"), "{e}");
        assert!("0.0.0.0:80,tls".parse::<ListenSpec>().unwrap_err().contains("unknown listen option"));
    }

    #[test]
    fn proxy_sources() {
        let spec: ListenSpec = "0.0.0.0:80,proxy,proxy-from=10.0.0.0/8+192.0.2.7+::1".parse().unwrap();
        assert_eq!(spec.to_string(), "0.0.0.0:80,proxy,proxy-from=10.0.0.0/8+192.0.2.7/32+::1/128");
        assert_eq!(spec.to_string().parse::<ListenSpec>().unwrap(), spec);
        let allows = |ip: &str| ListenSpec::proxy_allows(&spec.proxy_from, Some(ip.parse().unwrap()));
        assert!(allows("10.1.2.3") && allows("192.0.2.7") && allows("::1") && allows("::ffff:10.0.0.1"));
        assert!(!allows("11.0.0.1") && !allows("192.0.2.8") && !allows("127.0.0.1") && !allows("::2"));
        // The default: loopback only; a Unix peer always.
        let none: &[SourceNet] = &[];
        assert!(ListenSpec::proxy_allows(none, Some("127.0.0.2".parse().unwrap())));
        assert!(ListenSpec::proxy_allows(none, Some("::1".parse().unwrap())));
        assert!(!ListenSpec::proxy_allows(none, Some("192.168.1.1".parse().unwrap())));
        assert!(ListenSpec::proxy_allows(none, None));
        let any: ListenSpec = "[::]:80,proxy,proxy-from=0.0.0.0/0+::/0".parse().unwrap();
        assert!(ListenSpec::proxy_allows(&any.proxy_from, Some("203.0.113.9".parse().unwrap())));
        assert!(ListenSpec::proxy_allows(&any.proxy_from, Some("2001:db8::1".parse().unwrap())));
        for (bad, says) in [
            ("0.0.0.0:80,proxy-from=10.0.0.0/8", "add \"proxy\""),
            ("0.0.0.0:80,proxy,proxy-from=10.0.0.0/33", "not a source network"),
            ("0.0.0.0:80,proxy,proxy-from=", "not a source network"),
            ("0.0.0.0:80,proxy,proxy-from=host.example", "not a source network"),
            ("unix:/run/a.sock,proxy,proxy-from=::1", "for TCP listeners"),
        ] {
            let e = bad.parse::<ListenSpec>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn accepted_sockets_are_blocking_and_cloexec() {
        let l = Listener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let ListenAddr::Tcp(a) = l.local_addr() else { panic!() };
        let _c = std::net::TcpStream::connect(a).unwrap();
        let s = loop {
            match l.accept() {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        assert!(rustix::io::fcntl_getfd(&s).unwrap().contains(rustix::io::FdFlags::CLOEXEC));
        assert!(!rustix::fs::fcntl_getfl(&s).unwrap().contains(rustix::fs::OFlags::NONBLOCK));
    }

    #[test]
    fn stale_unix_path_is_replaced_live_one_is_in_use() {
        let dir = std::env::temp_dir().join(format!("handoff-l-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let addr = ListenAddr::Unix(path.clone());
        let first = Listener::bind(&addr).unwrap();
        let err = Listener::bind(&addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(first); // the file stays behind, with nobody listening
        Listener::bind(&addr).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
