//! Every event source the master registers with its poll, and the one place where a
//! source becomes a mio [`Token`] and a token becomes a source again.
//!
//! A token is a plain number, so each kind of source owns a range of them; only this
//! module knows the ranges. Worker tokens carry the worker's `key`, which only grows,
//! so an event for a dead worker never reaches its successor; idle connections live
//! above every other range and their table encodes its own slot and generation in the
//! offset (see `idle`).

use mio::Token;

const SIGNALS: usize = 0;
const UPGRADE: usize = 1;
const LISTENER_BASE: usize = 2;
const ADMIN_BASE: usize = 1 << 20;
const ADMIN_CONN_BASE: usize = ADMIN_BASE + 64;
const PROXY_BASE: usize = 1 << 22;
const WORKER_BASE: usize = 1 << 24;
/// Idle connections handed back by workers (above every worker token: worker keys only
/// grow).
pub(super) const IDLE_BASE: usize = 1 << 40;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The signal pipe (signal-hook).
    Signals,
    /// The ready pipe of a new master started by SIGUSR2.
    Upgrade,
    /// Listener at this position.
    Listener(usize),
    /// Admin server (control socket, metrics, health) at this position.
    AdminServer(usize),
    /// Admin connection in this slot.
    AdminConn(usize),
    /// A connection waiting for its PROXY header, in this slot.
    Proxy(usize),
    /// The channel of the worker with this key.
    Channel(usize),
    /// The stderr pipe of the worker with this key.
    Stderr(usize),
    /// An idle connection; the token is the idle table's to decode.
    Idle(Token),
}

impl Source {
    /// The token to register this source with.
    pub(super) fn token(self) -> Token {
        Token(match self {
            Source::Signals => SIGNALS,
            Source::Upgrade => UPGRADE,
            Source::Listener(i) => LISTENER_BASE + i,
            Source::AdminServer(i) => ADMIN_BASE + i,
            Source::AdminConn(i) => ADMIN_CONN_BASE + i,
            Source::Proxy(i) => PROXY_BASE + i,
            Source::Channel(key) => WORKER_BASE + 2 * key,
            Source::Stderr(key) => WORKER_BASE + 2 * key + 1,
            Source::Idle(t) => return t,
        })
    }

    /// The source a token was registered for.
    pub(super) fn of(token: Token) -> Source {
        match token.0 {
            SIGNALS => Source::Signals,
            UPGRADE => Source::Upgrade,
            t if t >= IDLE_BASE => Source::Idle(token),
            t if t >= WORKER_BASE && (t - WORKER_BASE) % 2 == 0 => Source::Channel((t - WORKER_BASE) / 2),
            t if t >= WORKER_BASE => Source::Stderr((t - WORKER_BASE) / 2),
            t if t >= PROXY_BASE => Source::Proxy(t - PROXY_BASE),
            t if t >= ADMIN_CONN_BASE => Source::AdminConn(t - ADMIN_CONN_BASE),
            t if t >= ADMIN_BASE => Source::AdminServer(t - ADMIN_BASE),
            t => Source::Listener(t - LISTENER_BASE),
        }
    }

    /// Events of worker sources are handled before all others in a loop turn (see the
    /// master's invariants).
    pub(super) fn is_worker(self) -> bool {
        matches!(self, Source::Channel(_) | Source::Stderr(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_comes_back_from_its_token() {
        let all = [
            Source::Signals,
            Source::Upgrade,
            Source::Listener(0),
            Source::Listener(7),
            Source::AdminServer(2),
            Source::AdminConn(0),
            Source::AdminConn(4000),
            Source::Proxy(0),
            Source::Proxy(4095),
            Source::Channel(0),
            Source::Stderr(0),
            Source::Channel(12345),
            Source::Stderr(12345),
            Source::Idle(Token(IDLE_BASE + 3)),
        ];
        for s in all {
            assert_eq!(Source::of(s.token()), s, "{s:?}");
        }
    }
}
