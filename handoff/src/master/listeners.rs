//! The listening sockets, as the dispatcher holds them: registered with the poll at
//! their position's token, each with its options (`,proxy`, `,deferred`) and whether an
//! edge said connections are waiting. A reload reconciles them with the new
//! configuration (kept sockets keep their queued clients); a stop closes them.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry};
use tracing::{error, info, warn};

use crate::listener::{ListenAddr, ListenSpec, Listener, SourceNet};
use crate::master::Source;
use crate::wire;

#[derive(Debug)]
pub(super) struct ListenerSlot {
    pub(super) listener: Listener,
    /// An edge said connections are waiting and we have not seen EAGAIN since.
    pub(super) readable: bool,
    /// Connections start with a PROXY protocol header.
    pub(super) proxy: bool,
    /// Who may send that header (`,proxy-from=`; empty: loopback only).
    pub(super) proxy_from: Vec<SourceNet>,
    /// `TCP_DEFER_ACCEPT` as the configuration last asked (set only on a change).
    deferred: bool,
}

/// Every listener, by position (the position names its token).
#[derive(Debug)]
pub(super) struct Listeners {
    pub(super) list: Vec<ListenerSlot>,
}

impl Listeners {
    /// Registers `given` (each with the `--listen` entry it came from, if any).
    pub(super) fn open(given: Vec<(Listener, Option<ListenSpec>)>, reg: &Registry) -> io::Result<Listeners> {
        let mut ls = Vec::new();
        for (i, (l, spec)) in given.into_iter().enumerate() {
            reg.register(&mut SourceFd(&l.as_fd().as_raw_fd()), Source::Listener(i).token(), Interest::READABLE)?;
            // Only turned on, never off: a socket systemd (`DeferAcceptSec=`) or an old
            // master passed us keeps what it has unless the configuration asks.
            let proxy = spec.as_ref().is_some_and(|s| s.proxy);
            let deferred = spec.as_ref().is_some_and(|s| s.deferred);
            let proxy_from = spec.as_ref().map(|s| s.proxy_from.clone()).unwrap_or_default();
            if deferred {
                l.set_deferred(true).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot set TCP_DEFER_ACCEPT on {}: {e}", l.local_addr()))
                })?;
            }
            info!("listening on {}{}", l.local_addr(), spec.as_ref().map(listen_notes).unwrap_or_default());
            ls.push(ListenerSlot { listener: l, readable: true, proxy, proxy_from, deferred });
        }
        Ok(Listeners { list: ls })
    }

    /// The addresses actually bound (with real ports when port 0 was asked for).
    pub(super) fn local_addrs(&self) -> Vec<ListenAddr> {
        self.list.iter().map(|l| l.listener.local_addr()).collect()
    }

    /// The sockets, to hand to a new master.
    pub(super) fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.list.iter().map(|l| l.listener.as_fd()).collect()
    }

    /// An edge on listener `i`: connections are waiting.
    pub(super) fn set_readable(&mut self, i: usize) {
        if let Some(l) = self.list.get_mut(i) {
            l.readable = true;
        }
    }

    /// Treats every listener as having connections waiting (a stop takes the backlog).
    pub(super) fn set_all_readable(&mut self) {
        for l in &mut self.list {
            l.readable = true;
        }
    }

    pub(super) fn any_readable(&self) -> bool {
        self.list.iter().any(|l| l.readable)
    }

    /// The CONN item's socket kind for a connection from listener `i`.
    pub(super) fn sock(&self, i: u16) -> u8 {
        match self.list.get(i as usize).map(|l| l.listener.addr()) {
            Some(ListenAddr::Tcp(_)) => wire::sock::TCP,
            Some(ListenAddr::Unix(_)) => wire::sock::UNIX,
            None => wire::sock::UNKNOWN,
        }
    }

    /// Closes every listener (a stop). `unlink`: remove Unix socket files (not when a
    /// new master goes on using them).
    pub(super) fn close_all(&mut self, reg: &Registry, unlink: bool) {
        for l in self.list.drain(..) {
            let _ = reg.deregister(&mut SourceFd(&l.listener.as_fd().as_raw_fd()));
            if unlink {
                l.listener.unlink();
            }
        }
    }

    /// Opens listeners that the new config adds and closes those it drops; keeps the
    /// ones that stay (their sockets, and their queued clients, are untouched).
    pub(super) fn reconcile(&mut self, want: &[ListenSpec], reg: &Registry) -> Result<(), String> {
        // Match on the configured address, or the bound one (port 0 resolved).
        let same = |l: &ListenerSlot, addr: &ListenAddr| l.listener.addr() == addr || &l.listener.local_addr() == addr;
        // Two entries that name one listener (`127.0.0.1:0` and the port it got, say)
        // would both claim it below.
        for l in &self.list {
            if want.iter().filter(|w| same(l, &w.addr)).count() > 1 {
                return Err(format!("{} is listed twice (by two addresses that name it)", l.listener.local_addr()));
            }
        }
        // Bind every new address first: if one fails, nothing has changed yet.
        let mut fresh: Vec<Option<Listener>> = Vec::new();
        for spec in want {
            let kept = self.list.iter().any(|l| same(l, &spec.addr));
            let twice = want.iter().filter(|w| w.addr == spec.addr).count() > 1;
            if twice {
                return Err(format!("{} is listed twice", spec.addr));
            }
            fresh.push(if kept {
                None
            } else {
                match Listener::bind(&spec.addr) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        for l in fresh.into_iter().flatten() {
                            l.unlink();
                        }
                        return Err(format!("cannot listen on {}: {e}", spec.addr));
                    }
                }
            });
        }
        // Tokens follow positions: deregister everything, then register the new list.
        for l in &self.list {
            let _ = reg.deregister(&mut SourceFd(&l.listener.as_fd().as_raw_fd()));
        }
        let mut old: Vec<Option<ListenerSlot>> = self.list.drain(..).map(Some).collect();
        let mut next = Vec::with_capacity(want.len());
        for (spec, new) in want.iter().zip(fresh) {
            let mut slot = match new {
                Some(listener) => {
                    info!("listening on {}{}", listener.local_addr(), listen_notes(spec));
                    ListenerSlot {
                        listener,
                        readable: true,
                        proxy: spec.proxy,
                        proxy_from: spec.proxy_from.clone(),
                        deferred: false,
                    }
                }
                None => {
                    let p = old
                        .iter()
                        .position(|o| o.as_ref().is_some_and(|l| same(l, &spec.addr)))
                        .expect("a kept listener matches exactly one entry (checked above)");
                    let mut l = old[p].take().expect("present");
                    l.proxy = spec.proxy;
                    l.proxy_from = spec.proxy_from.clone();
                    l.readable = true;
                    l
                }
            };
            // A reload turns it on or off where the configuration changed it (a socket
            // from systemd keeps its own until then); failing to set a socket option is
            // not worth refusing the reload for.
            if slot.deferred != spec.deferred {
                match slot.listener.set_deferred(spec.deferred) {
                    Ok(()) => slot.deferred = spec.deferred,
                    Err(e) => warn!("cannot set TCP_DEFER_ACCEPT on {}: {e}", slot.listener.local_addr()),
                }
            }
            next.push(slot);
        }
        for l in old.into_iter().flatten() {
            info!("closing listener {}", l.listener.local_addr());
            l.listener.unlink();
        }
        for (i, l) in next.iter().enumerate() {
            let fd = l.listener.as_fd().as_raw_fd();
            if let Err(e) = reg.register(&mut SourceFd(&fd), Source::Listener(i).token(), Interest::READABLE) {
                error!("listener {}: cannot watch it: {e}", l.listener.local_addr());
            }
        }
        self.list = next;
        Ok(())
    }
}

/// What the "listening on" line adds for a listener's options.
fn listen_notes(spec: &ListenSpec) -> String {
    let mut notes = String::new();
    if spec.proxy {
        let from: Vec<String> = spec.proxy_from.iter().map(|n| n.to_string()).collect();
        let from = if from.is_empty() { "loopback".to_string() } else { from.join(", ") };
        notes.push_str(&format!(" (PROXY protocol) (headers from {from})"));
    }
    if spec.deferred {
        notes.push_str(" (deferred accept)");
    }
    notes
}
