//! Which worker may take a connection now, as the dispatcher asks it: eligible
//! (running or retiring, ready, its channel open and not full, below
//! `--max-conns-per-worker`), preferring proven workers (see `Worker::proven`), and
//! how many connections the workers can take together.

use std::time::{Duration, Instant};

use super::{State, Worker, Workers};
use crate::config::Config;
use crate::policy::Candidate;
use crate::wire::cap;

impl Workers {
    /// May `w` get a connection now? `proven_can`: some proven worker could take one
    /// (then unproven workers get none; see `Worker::proven`).
    fn eligible(w: &Worker, now: Instant, cfg: &Config, proven_can: bool) -> bool {
        Self::could_take(w, now, cfg) && (!proven_can || w.proven(now))
    }

    /// Whether some proven worker could take a connection now.
    fn proven_can_take(&self, now: Instant, cfg: &Config) -> bool {
        self.list.iter().any(|w| w.proven(now) && Self::could_take(w, now, cfg))
    }

    /// Eligible but for the preference for proven workers.
    fn could_take(w: &Worker, now: Instant, cfg: &Config) -> bool {
        matches!(w.state, State::Running | State::Retiring)
            && w.is_ready(now)
            && w.chan.is_some()
            && w.blocked_since.is_none()
            && !(w.reports_load() && cfg.max_conns_per_worker.is_some_and(|k| w.active() >= k))
    }

    /// Whether any worker could take a connection now.
    pub(in crate::master) fn any_could_take(&self, now: Instant, cfg: &Config) -> bool {
        self.list.iter().any(|w| Self::could_take(w, now, cfg))
    }

    /// One balancer candidate per worker, by index.
    pub(in crate::master) fn fill_candidates(&mut self, cand: &mut Vec<Candidate>, now: Instant, cfg: &Config) {
        cand.clear();
        let proven_can = self.proven_can_take(now, cfg);
        for w in &mut self.list {
            let eligible = Self::eligible(w, now, cfg, proven_can);
            let behind = w.oldest_unacked().is_some();
            cand.push(Candidate { eligible, active: w.active(), reports_load: w.reports_load(), behind });
        }
        // A BUSY worker is held by one long request: what it were sent now would wait
        // behind that request (its idle connections came back for that reason). It
        // takes nothing while another worker can.
        let free_can = self.list.iter().zip(cand.iter()).any(|(w, c)| c.eligible && !w.busy);
        if free_can {
            for (w, c) in self.list.iter().zip(cand.iter_mut()) {
                c.eligible &= !w.busy;
            }
        }
    }

    /// How many connections the workers can take right now (at most `enough`): the
    /// master accepts no more than that, so clients beyond it wait in the kernel
    /// backlog, not here. `per_worker`: what one worker that reports no load counts for.
    pub(in crate::master) fn capacity(&self, now: Instant, cfg: &Config, per_worker: usize, enough: usize) -> usize {
        let mut room = 0usize;
        let proven_can = self.proven_can_take(now, cfg);
        for w in &self.list {
            if !Self::eligible(w, now, cfg, proven_can) {
                continue;
            }
            room += match cfg.max_conns_per_worker {
                Some(k) if w.reports_load() => k.saturating_sub(w.active()) as usize,
                _ => per_worker,
            };
            if room >= enough {
                break;
            }
        }
        room
    }

    /// Each worker's continued connections in progress (see `Worker::requests_in`),
    /// by index, into `into` (a buffer the caller reuses: no allocation per pass).
    pub(in crate::master) fn requests_in(&mut self, now: Instant, age: Duration, into: &mut Vec<u32>) {
        into.clear();
        into.extend(self.list.iter_mut().map(|w| w.requests_in(now, age)));
    }

    /// Worker `i` as the dispatcher sees it: is it handing connections back now
    /// (within `window`), does it report DONE, does it ACK.
    pub(in crate::master) fn load_view(&self, i: usize, now: Instant, window: Duration) -> (bool, bool, bool) {
        let w = &self.list[i];
        (w.returning(now, window), w.reports_load(), w.caps & cap::ACK != 0)
    }
}
