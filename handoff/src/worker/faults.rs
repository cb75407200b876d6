//! Deliberate faults, for the test suite: a worker that breaks the protocol in one
//! precise way, so tests can check that the master contains the damage.
//!
//! Reached only through the hidden `handoff worker --misbehave FAULT` command line,
//! which the master never uses on its own; tests run it as an external worker command
//! (`handoff run -- handoff worker --misbehave garbage --misbehave-slot 0`).

use std::os::fd::AsFd;
use std::time::Duration;

use super::{channel_from_env, WorkerEnv, WorkerError, CAPS};
use crate::sys::fdpass;
use crate::wire;

/// One way to misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Send READY, then hang: read nothing, send nothing (a deadlocked worker).
    Stall,
    /// Send READY, then a frame that does not decode.
    Garbage,
    /// Send READY, then a frame carrying a descriptor.
    SendFd,
    /// Send READY, then an ACK for a connection it was never sent.
    UnknownAck,
    /// Send READY, then a SERVED for a connection it was never sent.
    UnknownServed,
    /// Send READY announcing ACK, then take connections and never ACK them, while
    /// sending HEARTBEAT (alive, but keeping the master's copies forever).
    NoAck,
    /// Send READY without the RETURN capability, then a RETURN frame with a descriptor.
    ReturnUnannounced,
    /// Send READY with the RETURN capability, then RETURN a connection it never had.
    ReturnUnknown,
    /// Send READY, then HEARTBEAT in a tight loop (each one valid; together a flood).
    HeartbeatFlood,
}

impl Fault {
    /// Every fault, with the name the command line gives it.
    pub const ALL: [(Fault, &'static str); 9] = [
        (Fault::Stall, "stall"),
        (Fault::Garbage, "garbage"),
        (Fault::SendFd, "send-fd"),
        (Fault::UnknownAck, "unknown-ack"),
        (Fault::UnknownServed, "unknown-served"),
        (Fault::NoAck, "no-ack"),
        (Fault::ReturnUnannounced, "return-unannounced"),
        (Fault::ReturnUnknown, "return-unknown"),
        (Fault::HeartbeatFlood, "heartbeat-flood"),
    ];
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        Fault::ALL.iter().find(|(_, name)| *name == s).map(|(f, _)| *f).ok_or_else(|| {
            let names: Vec<&str> = Fault::ALL.iter().map(|(_, n)| *n).collect();
            format!("unknown fault {s:?}: one of {}", names.join(", "))
        })
    }
}

/// Runs `fault` on the channel from the environment; never returns normally unless
/// the master closes the channel.
pub fn run(fault: Fault) -> Result<(), WorkerError> {
    let env = WorkerEnv::from_env();
    let chan = channel_from_env()?;
    let mut buf = Vec::new();
    let caps = if fault == Fault::ReturnUnknown { CAPS | wire::cap::RETURN } else { CAPS };
    wire::encode_ready(&mut buf, caps, std::process::id());
    fdpass::send_with_fds(chan.as_fd(), &buf, &[])?;
    match fault {
        Fault::Stall => {}
        Fault::Garbage => {
            fdpass::send_with_fds(chan.as_fd(), &[0x7f, 1, 0, 0, 0xde, 0xad], &[])?;
        }
        Fault::SendFd => {
            wire::encode_empty(&mut buf, wire::kind::HEARTBEAT);
            fdpass::send_with_fds(chan.as_fd(), &buf, &[std::io::stderr().as_fd()])?;
        }
        Fault::ReturnUnannounced | Fault::ReturnUnknown => {
            wire::encode_ids(&mut buf, wire::kind::RETURN, &[u64::MAX - 1]);
            fdpass::send_with_fds(chan.as_fd(), &buf, &[std::io::stderr().as_fd()])?;
        }
        Fault::UnknownAck | Fault::UnknownServed => {
            let k = if fault == Fault::UnknownAck { wire::kind::ACK } else { wire::kind::SERVED };
            wire::encode_ids(&mut buf, k, &[u64::MAX - 1]);
            fdpass::send_with_fds(chan.as_fd(), &buf, &[])?;
        }
        Fault::HeartbeatFlood => {
            eprintln!("worker {}: misbehaving ({fault:?})", env.id);
            wire::encode_empty(&mut buf, wire::kind::HEARTBEAT);
            // Ends when the master kills it (or closes the channel). The channel may be
            // non-blocking: a full one is tried again at once, as a flood would.
            loop {
                match fdpass::send_with_fds(chan.as_fd(), &buf, &[]) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                    Err(_) => return Ok(()),
                }
            }
        }
        Fault::NoAck => {
            eprintln!("worker {}: misbehaving ({fault:?})", env.id);
            let mut rbuf = vec![0u8; wire::MAX_FRAME_LEN];
            loop {
                // Take (and drop) whatever arrives, and beat.
                while let Ok(got) = fdpass::recv_with_fds(&chan, &mut rbuf, wire::MAX_CONNS) {
                    if got.len == 0 && got.fds.is_empty() {
                        return Ok(());
                    }
                }
                wire::encode_empty(&mut buf, wire::kind::HEARTBEAT);
                fdpass::send_with_fds(chan.as_fd(), &buf, &[])?;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    eprintln!("worker {}: misbehaving ({fault:?})", env.id);
    // Hold on to the channel (unread) until killed.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
