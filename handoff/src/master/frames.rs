//! The worker table's conversation with its workers: frames read from each channel
//! (READY, ACK, DONE, HEARTBEAT, RETURN), CONN and DRAIN frames sent, stderr pipes
//! read, and what happens when a worker breaks the protocol or its channel closes.
//!
//! Input from workers is untrusted: a malformed frame, an unknown id or a descriptor
//! sent to the master gets that worker killed and replaced; the others never notice.
//! Reads are bounded per turn ([`RECV_BATCH`] frames, [`STDERR_CHUNKS`] reads), and a
//! worker with more to read is read on in the next turn. Frames are also bounded per
//! second ([`FrameBudget`]): a worker that floods its channel (HEARTBEAT in a
//! tight loop) is killed and replaced like any other that breaks the protocol.
//!
//! Losses are counted here, as they happen: a dead worker's connections in service
//! (from the in-flight table) or, for a minimal worker the master tracks nothing of,
//! unread in its channel (`SIOCOUTQ` on the master's end while the kernel has not freed
//! the queue; after, ECONNRESET says whether and the last look how many at most); DONE
//! without ACK ("not received": handed to another worker, or lost when there is none);
//! a RETURN the master could not receive whole (`MSG_CTRUNC`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry};
use tracing::{debug, error, info, warn};

use super::spawn::{self, StderrRead};
use super::{Handed, Inflight, Slot, Source, State, Workers, LOST_GRACE, RETRY_ELSEWHERE};
use crate::config::Config;
use crate::master::Held;
use crate::sys::fdpass;
use crate::sys::process as sysproc;
use crate::wire::{self, cap, ConnItem, FrameRef, Ids};

/// Frames read from one worker before the loop looks at other events.
const RECV_BATCH: usize = 64;
/// 8 KiB reads of one worker's stderr before the loop looks at other events.
const STDERR_CHUNKS: usize = 8;

impl Workers {
    /// Reads what the previous turn left unread (channels, then stderr pipes). True if
    /// some frame came.
    pub(in crate::master) fn read_backlog(&mut self, now: Instant, next_id: u64, cfg: &Config, reg: &Registry) -> bool {
        let mut heard = false;
        for key in std::mem::take(&mut self.unread) {
            heard |= self.read(key, now, next_id, cfg, reg);
        }
        for key in std::mem::take(&mut self.unread_stderr) {
            self.read_stderr(key, reg);
        }
        heard
    }

    /// Whether a channel or pipe has more to read than one turn read.
    pub(in crate::master) fn has_backlog(&self) -> bool {
        !self.unread.is_empty() || !self.unread_stderr.is_empty()
    }

    /// The channel of worker `key` is writable again: send what was owed.
    pub(in crate::master) fn writable(&mut self, key: usize, now: Instant) {
        if let Some(i) = self.index(key) {
            self.list[i].blocked_since = None;
            self.send_drain(i, now);
        }
    }

    /// Watches each worker's channel for room (WRITABLE) exactly while a send to it
    /// waits for room, once a loop turn. Watched always, the master would be woken
    /// each time a worker reads a frame (the kernel reports room on every read): a
    /// wake-up per CONN frame for nothing. Turned on, epoll reports room at once if
    /// there is some already, so no edge is missed.
    pub(in crate::master) fn watch_for_room(&mut self, reg: &Registry) {
        for w in &mut self.list {
            let want = w.blocked_since.is_some();
            let Some(chan) = w.chan.as_ref().filter(|_| w.watching_room != want) else { continue };
            let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            match reg.reregister(&mut SourceFd(&chan.as_raw_fd()), Source::Channel(w.key).token(), interest) {
                Ok(()) => w.watching_room = want,
                // Tried again next turn; a channel that stays full gets its worker
                // killed by the stuck-worker timeout, as always.
                Err(e) => warn!("worker {}: cannot watch its channel for room: {e}", w.slot),
            }
        }
    }

    /// Reads frames from worker `key`'s channel. `next_id`: the id the next connection
    /// will get. True if some frame came (a worker may have room again).
    pub(in crate::master) fn read(
        &mut self,
        key: usize,
        now: Instant,
        next_id: u64,
        cfg: &Config,
        reg: &Registry,
    ) -> bool {
        // The frames read borrow the buffer while the table changes: it is lent out
        // for the read (a move, not a copy) and put back whatever the way out.
        let mut buf = std::mem::take(&mut self.recv_buf);
        let heard = self.read_into(&mut buf, key, now, next_id, cfg, reg);
        self.recv_buf = buf;
        heard
    }

    /// [`Workers::read`] with the receive buffer lent out.
    fn read_into(
        &mut self,
        buf: &mut [u8],
        key: usize,
        now: Instant,
        next_id: u64,
        cfg: &Config,
        reg: &Registry,
    ) -> bool {
        let mut heard = false;
        for _ in 0..RECV_BATCH {
            let Some(i) = self.index(key) else { return heard };
            let Some(chan) = self.list[i].chan.as_ref() else { return heard };
            // Room for descriptors only for a worker that may hand connections back:
            // any other that sends one is caught by MSG_CTRUNC, and the kernel-delivered
            // descriptor is closed before we look further.
            let returns = self.list[i].returns();
            let room = if returns { wire::MAX_RETURNS } else { 0 };
            let got = match fdpass::recv_with_fds(chan, buf, room) {
                Ok(g) => g,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return heard,
                Err(e) if fdpass::Truncated::of(&e).is_some() => {
                    let t = *fdpass::Truncated::of(&e).expect("just matched");
                    if let Err(what) = self.truncated(i, &buf[..t.len], t, now) {
                        self.violation(i, &what);
                        return heard;
                    }
                    self.list[i].last_heard = now;
                    heard = true;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.violation(i, &e.to_string());
                    return heard;
                }
                Err(e) => {
                    debug!("worker channel read: {e}");
                    // The worker closed its end with frames unread (see `channel_closed`).
                    if e.raw_os_error() == Some(rustix::io::Errno::CONNRESET.raw_os_error()) {
                        self.list[i].channel_reset = true;
                    }
                    self.channel_closed(i, cfg, reg);
                    return heard;
                }
            };
            if got.len == 0 && got.fds.is_empty() {
                self.channel_closed(i, cfg, reg);
                return heard;
            }
            if !self.list[i].frames.spend(now) {
                let what = format!(
                    "frames faster than any honest worker (over {FRAME_RATE} a second beyond {FRAMES_PER_CONN} per \
                     connection it was sent): a frame flood"
                );
                self.violation(i, &what);
                return heard;
            }
            let frame = match wire::decode_ref(&buf[..got.len]) {
                Ok(f) => f,
                Err(e) => {
                    self.violation(i, &format!("a malformed frame: {e}"));
                    return heard;
                }
            };
            self.list[i].last_heard = now;
            heard = true;
            let handled = match frame {
                FrameRef::Return(ids) => self.take_back(i, ids, got.fds, now, next_id),
                _ if !got.fds.is_empty() => Err("a descriptor with a frame other than RETURN".into()),
                frame => self.handle_frame(i, frame, next_id, now),
            };
            if let Err(what) = handled {
                self.violation(i, &what);
                return heard;
            }
        }
        // More may be queued, and the edge will not fire again for it: read on in the
        // next turn, after the other events (a chatty worker cannot starve the loop).
        if !self.unread.contains(&key) {
            self.unread.push(key);
        }
        heard
    }

    fn handle_frame(&mut self, i: usize, frame: FrameRef<'_>, next_id: u64, now: Instant) -> Result<(), String> {
        let w = &mut self.list[i];
        match frame {
            FrameRef::Ready { caps, .. } => {
                if w.ready {
                    return Err("READY twice".into());
                }
                w.ready = true;
                w.caps = caps & cap::ALL;
                // RETURN stands for a DONE of a tracked connection: without ACK and DONE
                // the master has nothing to check a hand-back against.
                if w.caps & (cap::ACK | cap::DONE) != cap::ACK | cap::DONE {
                    w.caps &= !cap::RETURN;
                }
                w.tracked_from = next_id;
                info!(
                    "worker {} ready (pid {}, protocol v{}, capabilities {})",
                    w.slot,
                    w.pid,
                    wire::VERSION,
                    caps_names(w.caps)
                );
            }
            FrameRef::Ack(ids) => {
                for id in ids.iter() {
                    if id < w.tracked_from {
                        continue;
                    }
                    let keep = w.caps & cap::DONE != 0;
                    match w.inflight.get_mut(&id) {
                        Some(e) if keep => e.fd = None,
                        Some(_) => {
                            w.forget(id);
                        }
                        None => return Err(format!("an ACK for connection {id}, which it was never sent")),
                    }
                }
            }
            FrameRef::Done(ids) => {
                if w.caps & cap::DONE == 0 && w.ready {
                    return Err("DONE without the DONE capability".into());
                }
                // DONE for a connection it never ACKed: its descriptor never arrived
                // (the worker is out of descriptors). The master still holds its copy,
                // so the client is not lost yet.
                let acks = w.caps & cap::ACK != 0;
                let mut unreceived = Vec::new();
                let mut bad = None;
                for id in ids.iter() {
                    if id < w.tracked_from {
                        continue;
                    }
                    match w.forget(id) {
                        Some(Inflight { fd: Some(fd), listener, addrs, flags }) if acks => {
                            unreceived.push(Held { fd, listener, addrs, flags });
                        }
                        Some(_) => {}
                        None => {
                            bad = Some(format!("a DONE for connection {id}, which it does not hold"));
                            break;
                        }
                    }
                }
                if !unreceived.is_empty() {
                    self.not_received(i, unreceived, now);
                }
                if let Some(what) = bad {
                    return Err(what);
                }
            }
            FrameRef::Served(ids) => {
                if w.caps & cap::DONE == 0 && w.ready {
                    return Err("SERVED without the DONE capability".into());
                }
                // Received and finished: the copy held until an ACK closes with its
                // record (the worker sends the FIN after this frame).
                for id in ids.iter() {
                    if id >= w.tracked_from && w.forget(id).is_none() {
                        return Err(format!("a SERVED for connection {id}, which it does not hold"));
                    }
                }
            }
            FrameRef::Heartbeat => {}
            FrameRef::Busy => {
                w.busy = true;
                w.stalls += 1;
            }
            FrameRef::Free => w.busy = false,
            FrameRef::Return(_) => return Err("RETURN without descriptors".into()),
            FrameRef::Conn | FrameRef::Drain => return Err("a master-to-worker frame".into()),
        }
        Ok(())
    }

    /// Connections worker `i` reported DONE without ACKing (never received): each goes
    /// to another worker (retried: not to this one nor any other that lost one in the
    /// last second), or, when there is none, is closed unanswered (lost).
    fn not_received(&mut self, i: usize, conns: Vec<Held>, now: Instant) {
        self.list[i].lost_frame_at = Some(now);
        let elsewhere = self.list.iter().enumerate().any(|(k, o)| {
            k != i
                && matches!(o.state, State::Running | State::Retiring)
                && o.chan.is_some()
                && !o.lost_frame_recently(now)
        });
        for mut h in conns {
            if elsewhere {
                self.counts.retried_not_received += 1;
                h.flags |= RETRY_ELSEWHERE;
                self.handed.push(Handed::TakenBack(h));
            } else {
                // Closing the master's copy (its only one) ends the connection.
                self.counts.lost_not_received += 1;
            }
        }
    }

    /// A frame whose descriptors did not all arrive (`MSG_CTRUNC`): from a worker that
    /// may hand back, a RETURN the master could not take whole (it is at its own
    /// descriptor limit, which is not the worker's fault). Its connections count as
    /// DONE (the worker closed its copies) and are lost: the kernel closed the
    /// descriptors that did not fit. Ids it does not hold are passed over: their
    /// descriptors are gone either way. Anything else is a violation.
    fn truncated(&mut self, i: usize, frame: &[u8], t: fdpass::Truncated, now: Instant) -> Result<(), String> {
        if !self.list[i].returns() {
            return Err("a descriptor (workers must not send any)".into());
        }
        let ids = match wire::decode_ref(frame) {
            Ok(FrameRef::Return(ids)) => ids,
            Ok(_) => return Err("a descriptor with a frame other than RETURN".into()),
            Err(e) => return Err(format!("a malformed frame: {e}")),
        };
        let w = &mut self.list[i];
        for id in ids.iter() {
            w.forget(id);
        }
        self.counts.lost_return_truncated += ids.len() as u64;
        let quiet =
            self.last_truncated_log.is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(1));
        if !quiet {
            self.last_truncated_log = Some(now);
            error!(
                "worker {}: a RETURN of {} idle connections did not reach the master whole ({t}); they are closed \
                 ({} so far). The master is out of descriptors: raise its limit (`ulimit -n`, LimitNOFILE=) \
                 or lower --max-idle",
                w.slot,
                ids.len(),
                self.counts.lost_return_truncated
            );
        }
        Ok(())
    }

    /// Looks at how many frames worker `i` has not read from its channel, if the master
    /// tracks nothing of it (a minimal worker): what is lost if it dies now.
    pub(super) fn sample_unread(&mut self, i: usize) {
        let w = &mut self.list[i];
        if w.tracks() {
            return;
        }
        if let (Some(charge), Some(chan)) = (self.frame_charge, w.chan.as_ref()) {
            if let Ok(bytes) = crate::sys::socket::unread_by_peer(chan.as_fd()) {
                w.unread_frames = (bytes / charge) as u64;
            }
        }
    }

    /// Reads worker `key`'s stderr pipe (bounded) into its slot's tail and our stderr.
    pub(in crate::master) fn read_stderr(&mut self, key: usize, reg: &Registry) {
        let Some(i) = self.index(key) else { return };
        let w = &mut self.list[i];
        if let Some(fd) = &w.stderr {
            let mut gone = Slot::default();
            // A worker of a slot removed by scaling down still has its output forwarded.
            let slot = self.slots.get_mut(w.slot).unwrap_or(&mut gone);
            match spawn::read_stderr(fd, slot, STDERR_CHUNKS, &mut self.forward, &mut w.lines) {
                StderrRead::Empty => {}
                // The edge will not fire again for what is left: read on next turn.
                StderrRead::More => {
                    if !self.unread_stderr.contains(&key) {
                        self.unread_stderr.push(key);
                    }
                }
                StderrRead::Eof => {
                    let _ = reg.deregister(&mut SourceFd(&fd.as_raw_fd()));
                    w.stderr = None;
                }
            }
        }
    }

    /// A worker broke the protocol: kill it now; its connections are handed on when
    /// its channel closes.
    fn violation(&mut self, i: usize, what: &str) {
        let w = &mut self.list[i];
        if w.state == State::Killing && w.kill_at.is_none() {
            // Already SIGKILLed: what it still had queued (a flood's rest) is no news.
            return;
        }
        error!("worker {} (pid {}) sent {what}; killing it", w.slot, w.pid);
        self.counts.protocol_kills += 1;
        let _ = sysproc::signal(w.pid, rustix::process::Signal::KILL);
        w.state = State::Killing;
        w.kill_at = None;
    }

    /// A RETURN frame: worker `i` hands back idle connections, each at a request
    /// boundary. They count as DONE and go to the dispatcher (as [`Handed::Returned`]),
    /// which holds them until their next request.
    fn take_back(
        &mut self,
        i: usize,
        ids: Ids<'_>,
        fds: Vec<OwnedFd>,
        now: Instant,
        next_id: u64,
    ) -> Result<(), String> {
        let w = &mut self.list[i];
        if !w.returns() {
            return Err("RETURN without the RETURN capability".into());
        }
        if ids.len() != fds.len() {
            return Err(format!("a RETURN of {} connections with {} descriptors", ids.len(), fds.len()));
        }
        // All checked before any is taken: a bad frame changes nothing but the
        // worker's fate (its descriptors are closed with it). Connections sent before
        // its READY are not tracked (as for ACK and DONE), so they cannot be checked
        // against what it holds: their ids must predate its READY, and their
        // descriptors be stream sockets.
        let held_or_untracked = |id: u64, fd: &OwnedFd| {
            w.inflight.contains_key(&id)
                || (id < w.tracked_from.min(next_id) && crate::sys::socket::is_stream_socket(fd))
        };
        // Twice in one frame: looked up among the ids before it while they are few
        // (most frames carry one: no set to build per frame), in a set beyond.
        let mut seen = std::collections::HashSet::new();
        let mut twice = |k: usize, id: u64| {
            if ids.len() <= 16 {
                ids.iter().take(k).any(|x| x == id)
            } else {
                !seen.insert(id)
            }
        };
        if let Some(id) = ids
            .iter()
            .zip(&fds)
            .enumerate()
            .find(|&(k, (id, fd))| !held_or_untracked(id, fd) || twice(k, id))
            .map(|(_, (id, _))| id)
        {
            return Err(format!("a RETURN of connection {id}, which it does not hold"));
        }
        for (id, fd) in ids.iter().zip(fds) {
            let (listener, addrs) = match self.list[i].forget(id) {
                Some(e) => (e.listener, e.addrs),
                // Sent before READY: its listener and PROXY addresses are not known
                // any more; the listener index goes unsaid (0) and the addresses, if
                // any, are lost for its next requests.
                None => (0, None),
            };
            self.counts.returned += 1;
            // Connections rescued from behind a long request (the worker is BUSY) do
            // not make it a worker that hands back per request: it keeps the ones it
            // serves next, so its requests in progress are not known.
            if !self.list[i].busy {
                self.list[i].last_return = Some(now);
            }
            self.handed.push(Handed::Returned(Held { fd, listener, addrs, flags: 0 }));
        }
        Ok(())
    }

    /// The worker's channel closed (it exited, or closed it): take back what it had
    /// not ACKed and stop talking to it.
    pub(super) fn channel_closed(&mut self, i: usize, cfg: &Config, reg: &Registry) {
        let w = &mut self.list[i];
        if let Some(chan) = w.chan.take() {
            // The kernel flags a channel whose peer closed it with frames unread (read
            // errors give it once; a read not yet made leaves it here).
            let reset =
                matches!(rustix::net::sockopt::socket_error(&chan), Ok(Err(e)) if e == rustix::io::Errno::CONNRESET);
            w.channel_reset |= reset;
            // A worker reaped before the kernel released its end (the release can run
            // after the exit is reported): its frames are still queued, and no one will
            // read them. Counted now, exactly.
            if !w.tracks() {
                if let (Some(charge), Ok(bytes)) = (self.frame_charge, crate::sys::socket::unread_by_peer(chan.as_fd()))
                {
                    if bytes / charge > 0 {
                        w.unread_frames = (bytes / charge) as u64;
                        w.channel_reset = true;
                    }
                }
            }
            let _ = reg.deregister(&mut SourceFd(&chan.as_raw_fd()));
        }
        // A worker the master tracks nothing of (a minimal worker): what was unread in
        // its channel died with it: as counted above, or as many as the last look saw
        // (at least one).
        if !w.tracks() && w.channel_reset {
            let unread = w.unread_frames.max(1);
            w.channel_reset = false;
            self.counts.lost_in_channel += unread;
            warn!(
                "worker {} (pid {}) is gone with connections unread in its channel: {unread} lost (it announced \
                 no ACK, so the master had let them go)",
                w.slot, w.pid
            );
        }
        let unacked = w.take_unacked();
        let lost = w.inflight.len() as u64;
        w.inflight.clear();
        w.requests_in = 0;
        w.continued.clear();
        if !matches!(w.state, State::Killing | State::Draining) {
            w.state = State::Lost;
        }
        // A draining worker may close its channel first and finish its connections
        // after: give it the shutdown timeout, not the lost-worker grace.
        let grace = if w.state == State::Draining { cfg.shutdown_timeout } else { LOST_GRACE };
        w.kill_at = Some(Instant::now() + grace);
        let (slot, pid) = (w.slot, w.pid);
        if !unacked.is_empty() || lost > 0 {
            warn!("worker {slot} (pid {pid}) is gone: handing on {} connections it had not taken; {lost} it was serving are lost with it", unacked.len());
        }
        self.counts.lost_with_worker += lost;
        for (_, Inflight { fd, listener, addrs, flags }) in unacked {
            if let Some(fd) = fd {
                self.counts.redispatched += 1;
                self.handed.push(Handed::TakenBack(Held { fd, listener, addrs, flags }));
            }
        }
    }

    /// Sends connections to worker `i`, taking every one out of `conns` (a buffer the
    /// caller reuses); returns those it cannot take now, for the dispatcher to hold.
    /// `running`: not stopping (then a worker that reached `--max-requests` is
    /// recycled; connections handed out while stopping are the last).
    pub(in crate::master) fn send_conns(
        &mut self,
        i: usize,
        conns: &mut Vec<(ConnItem, OwnedFd)>,
        now: Instant,
        running: bool,
        cfg: &Config,
        reg: &Registry,
    ) -> Vec<Held> {
        let mut back = Vec::new();
        // Addresses go only to workers that understand CONN_ADDR (they stay in `conns`,
        // and in the in-flight table, for a hand-on to one that does).
        let addrs_ok = self.list[i].caps & cap::ADDRS != 0;
        // Flags likewise only to workers that know them.
        let flags_ok = self.list[i].returns();
        let per_frame =
            match (self.list[i].caps & cap::BATCH != 0, addrs_ok && conns.iter().any(|(it, _)| it.addrs.is_some())) {
                (false, _) => 1,
                (true, false) => wire::MAX_CONNS,
                (true, true) => wire::MAX_CONN_ADDRS,
            };
        let mut items = std::mem::take(&mut self.items);
        while !conns.is_empty() {
            let n = per_frame.min(conns.len());
            items.clear();
            items.extend(conns[..n].iter().map(|(it, _)| ConnItem {
                addrs: it.addrs.filter(|_| addrs_ok),
                // The master's own bits never go out.
                flags: if flags_ok { it.flags & !RETRY_ELSEWHERE } else { 0 },
                ..*it
            }));
            wire::encode_conn(&mut self.frame, &items);
            let w = &mut self.list[i];
            let sent = match w.chan.as_ref() {
                // One connection a frame is the common case (and every frame of a
                // worker without BATCH): no list of descriptors to build.
                Some(chan) if n == 1 => fdpass::send_with_fds(chan.as_fd(), &self.frame, &[conns[0].1.as_fd()]),
                Some(chan) => {
                    // On the stack, not a list allocated per frame (a BorrowedFd is a
                    // number: the array is 1 KiB; its unused tail holds the channel's).
                    let mut fds = [chan.as_fd(); wire::MAX_CONNS];
                    for (slot, (_, fd)) in fds.iter_mut().zip(&conns[..n]) {
                        *slot = fd.as_fd();
                    }
                    fdpass::send_with_fds(chan.as_fd(), &self.frame, &fds[..n])
                }
                None => Err(io::ErrorKind::BrokenPipe.into()),
            };
            match sent {
                Ok(_) => {
                    let track = w.ready && w.caps & (cap::ACK | cap::DONE) != 0;
                    let keep = w.caps & cap::ACK != 0;
                    for (item, fd) in conns.drain(..n) {
                        w.dispatched += 1;
                        if track && item.id >= w.tracked_from {
                            w.track(
                                item.id,
                                Inflight {
                                    fd: keep.then_some(fd),
                                    listener: item.listener,
                                    addrs: item.addrs,
                                    flags: item.flags,
                                },
                                now,
                            );
                            if keep {
                                w.ack_queue.push_back((item.id, now));
                            }
                        }
                        // Otherwise `fd` drops here: the worker has its own copy.
                    }
                    w.frames.earn(n as u64);
                    self.counts.dispatched += n as u64;
                    if let Some(s) = self.slots.get_mut(w.slot) {
                        s.dispatched += n as u64;
                    }
                    // Not while stopping (connections handed out then are the last).
                    if w.max_requests.is_some_and(|m| w.dispatched >= m) && w.state == State::Running && running {
                        self.recycle(i, cfg, reg);
                    }
                }
                Err(e) => {
                    use rustix::io::Errno;
                    let gone = [Errno::PIPE, Errno::CONNRESET, Errno::NOTCONN]
                        .iter()
                        .any(|x| e.raw_os_error() == Some(x.raw_os_error()))
                        || e.kind() == io::ErrorKind::BrokenPipe;
                    if gone {
                        debug!("send to worker {}: {e}", w.slot);
                        self.channel_closed(i, cfg, reg);
                    } else {
                        // Full channel, or the kernel short of memory or of room for
                        // descriptors in flight (ENOBUFS, ENOMEM, ETOOMANYREFS): not the
                        // worker's fault; try again when it is writable.
                        if e.kind() != io::ErrorKind::WouldBlock {
                            warn!("send to worker {}: {e}; will retry", w.slot);
                        }
                        w.blocked_since = Some(Instant::now());
                    }
                    // Nothing of a failed send was transferred: hand these on later.
                    for (item, fd) in conns.drain(..) {
                        back.push(Held { fd, listener: item.listener, addrs: item.addrs, flags: item.flags });
                    }
                }
            }
        }
        self.items = items;
        if i < self.list.len() {
            self.sample_unread(i);
        }
        back
    }

    /// Sends an owed DRAIN. A full channel keeps it owed until the channel is writable
    /// again (a worker busy with its connections is no reason to kill them); a channel
    /// full for `--worker-timeout` gets the worker killed like any stuck one.
    pub(super) fn send_drain(&mut self, i: usize, now: Instant) {
        let w = &mut self.list[i];
        if !w.drain_pending {
            return;
        }
        let Some(chan) = &w.chan else {
            w.drain_pending = false;
            return;
        };
        wire::encode_empty(&mut self.frame, wire::kind::DRAIN);
        match fdpass::send_with_fds(chan.as_fd(), &self.frame, &[]) {
            Ok(_) => w.drain_pending = false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                w.blocked_since.get_or_insert(now);
            }
            Err(e) => {
                debug!("DRAIN to worker {}: {e}", w.slot);
                w.drain_pending = false;
            }
        }
    }
}

fn caps_names(caps: u32) -> String {
    let names: Vec<&str> = [
        (cap::ACK, "ack"),
        (cap::DONE, "done"),
        (cap::HEARTBEAT, "heartbeat"),
        (cap::BATCH, "batch"),
        (cap::ADDRS, "addrs"),
        (cap::RETURN, "return"),
    ]
    .iter()
    .filter(|(b, _)| caps & b != 0)
    .map(|(_, n)| *n)
    .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// Frames a worker may send beyond [`FRAMES_PER_CONN`] per connection it was sent:
/// this many a second, sustained. An honest worker sends a few (READY, and HEARTBEAT at
/// most every 10 ms, the shortest `--heartbeat`): this is a hundred times that, and
/// far below what a worker sending in a tight loop makes the master read.
pub(super) const FRAME_RATE: u32 = 10_000;
/// Frames a worker may send at once beyond its connections' (the bucket's size).
pub(super) const FRAME_BURST: u32 = 10_000;
/// Frames each connection sent to a worker pays for: its ACK, its DONE and a RETURN.
pub(super) const FRAMES_PER_CONN: u64 = 3;
/// Unspent per-connection frames a worker may save (a worker that batches its ACKs
/// must not build a reserve for a long flood later).
const FRAME_CREDIT_MAX: u64 = FRAMES_PER_CONN * 65_536;

/// A token bucket on the frames one worker sends: the master reads frames one by one
/// (a tight loop of HEARTBEAT cost it most of a core), so a worker that sends far more
/// than its connections and a heartbeat explain breaks the protocol. Each connection
/// sent earns [`FRAMES_PER_CONN`]; on top of that [`FRAME_RATE`] a second refill a
/// bucket of [`FRAME_BURST`]. Fairness within one loop turn is the reading's own bound.
#[derive(Debug)]
pub struct FrameBudget {
    credit: u64,
    tokens: f64,
    refilled: Instant,
}

impl FrameBudget {
    /// A full bucket at `now`.
    pub fn new(now: Instant) -> FrameBudget {
        FrameBudget { credit: 0, tokens: f64::from(FRAME_BURST), refilled: now }
    }

    /// `n` connections were sent to the worker.
    pub fn earn(&mut self, n: u64) {
        self.credit = self.credit.saturating_add(n * FRAMES_PER_CONN).min(FRAME_CREDIT_MAX);
    }

    /// A frame arrived at `now`: false if the worker had nothing left to pay for it.
    pub fn spend(&mut self, now: Instant) -> bool {
        if self.credit > 0 {
            self.credit -= 1;
            return true;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * f64::from(FRAME_RATE)).min(f64::from(FRAME_BURST));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn frame_budget_pays_for_connections_and_heartbeats_not_a_flood() {
        let t0 = Instant::now();
        let mut b = FrameBudget::new(t0);
        // A busy honest worker: 100 000 connections in a second, an ACK and a DONE each,
        // and a heartbeat every 10 ms.
        for ms in 0..1000u64 {
            let now = t0 + Duration::from_millis(ms);
            b.earn(100);
            assert!((0..200).all(|_| b.spend(now)), "honest traffic refused at {ms} ms");
            if ms % 10 == 0 {
                assert!(b.spend(now));
            }
        }
        // A flood with no connections: the bucket runs dry, then refills at FRAME_RATE.
        let t1 = t0 + Duration::from_secs(2);
        let mut b = FrameBudget::new(t1);
        assert_eq!((0..2 * FRAME_BURST).filter(|_| b.spend(t1)).count(), FRAME_BURST as usize);
        // A millisecond later: FRAME_RATE / 1000 more, and no more.
        let t2 = t1 + Duration::from_millis(1);
        assert_eq!((0..100).filter(|_| b.spend(t2)).count(), FRAME_RATE as usize / 1000);
    }
}
