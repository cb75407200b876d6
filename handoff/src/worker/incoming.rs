//! The blocking worker API: an iterator of connections.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};

use super::{channel_from_env, recv_event, Conn, Event, Reporter, Stream, WorkerEnv, WorkerError};

/// Connections handed to this worker, as a blocking iterator.
///
/// Each item is a [`Conn<Stream>`] in blocking mode. The iterator ACKs connections as
/// they arrive and sends HEARTBEAT while it waits; it ends (`None`) when the master
/// asks this worker to drain or goes away. Serving a connection inside the loop holds
/// up the next one: spawn a thread per connection, or use [`super::AsyncIncoming`],
/// to serve several at once.
#[derive(Debug)]
pub struct Incoming {
    fd: Arc<OwnedFd>,
    reporter: Arc<Reporter>,
    env: WorkerEnv,
    buf: Vec<u8>,
    queue: VecDeque<Conn<Stream>>,
    ended: Option<End>,
    last_beat: Instant,
}

/// Why an [`Incoming`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The master sent DRAIN: finish what you have and exit.
    Drain,
    /// The master closed the channel: it is gone; exit soon.
    MasterGone,
}

impl Incoming {
    /// Takes the channel from `HANDOFF_FD` and announces READY.
    pub fn from_env() -> Result<Incoming, WorkerError> {
        Incoming::from_fd(channel_from_env()?, WorkerEnv::from_env())
    }

    /// Uses `fd` (a non-blocking channel end) and announces READY.
    pub fn from_fd(fd: OwnedFd, env: WorkerEnv) -> Result<Incoming, WorkerError> {
        let fd = Arc::new(fd);
        let reporter = Arc::new(Reporter::new(fd.clone(), env.hand_back));
        reporter.ready()?;
        Ok(Incoming {
            fd,
            reporter,
            env,
            buf: vec![0; crate::wire::MAX_FRAME_LEN],
            queue: VecDeque::new(),
            ended: None,
            last_beat: Instant::now(),
        })
    }

    /// This worker's facts (slot id, worker count, heartbeat interval).
    pub fn env(&self) -> &WorkerEnv {
        &self.env
    }

    /// Why the iterator ended, once it has.
    pub fn end(&self) -> Option<End> {
        self.ended
    }

    fn wait_readable(&mut self) -> io::Result<bool> {
        let left = self.env.heartbeat.saturating_sub(self.last_beat.elapsed());
        let ts = rustix::time::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos() as _ };
        let mut pfd = [PollFd::new(&*self.fd, PollFlags::IN)];
        match rustix::event::poll(&mut pfd, Some(&ts)) {
            Ok(n) => Ok(n > 0),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl Iterator for Incoming {
    type Item = Result<Conn<Stream>, WorkerError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(c) = self.queue.pop_front() {
                return Some(Ok(c));
            }
            if self.ended.is_some() {
                let _ = self.reporter.flush();
                return None;
            }
            if self.last_beat.elapsed() >= self.env.heartbeat {
                self.reporter.heartbeat();
                self.last_beat = Instant::now();
            }
            match self.wait_readable() {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return Some(Err(e.into())),
            }
            match recv_event(&self.fd, &mut self.buf) {
                Ok(Event::Conns(conns)) => {
                    let ids: Vec<u64> = conns.iter().map(|(it, _)| it.id).collect();
                    self.reporter.ack(&ids);
                    for (item, fd) in conns {
                        match Stream::from_fd_hint(fd, item.sock) {
                            Ok(s) => self.queue.push_back(Conn::new(s, item, self.reporter.clone())),
                            // A socket we cannot even name is already dead: report it
                            // finished so the master's count stays right.
                            Err(_) => self.reporter.done(item.id),
                        }
                    }
                }
                Ok(Event::Lost(ids)) => super::lost_conns(&self.reporter, self.env.id, &ids),
                Ok(Event::Drain) => self.ended = Some(End::Drain),
                Ok(Event::Closed) => self.ended = Some(End::MasterGone),
                Err(WorkerError::Channel(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
