//! Balancing policies: which worker gets the next connection.
//!
//! The master describes each worker as a `Candidate` (can it take a connection now,
//! how many does it hold, does it report its load at all) and asks a `Balancer` for
//! one. Pure logic, no I/O: the master decides eligibility (ready, not draining, below
//! `--max-conns-per-worker`, channel not full); the balancer decides among the eligible.
//!
//! Ties are always broken in rotation, starting after the last worker chosen, so at
//! low load every policy spreads exactly like round robin. Load-aware policies need
//! every eligible worker to report DONE; if one does not (a minimal worker), its load
//! is unknown and the choice falls back to round robin.

use std::fmt;
use std::str::FromStr;

/// A balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Each eligible worker in turn.
    RoundRobin,
    /// The eligible worker with the fewest active connections.
    #[default]
    LeastConn,
    /// Power of two random choices: the less loaded of two random workers, unless the
    /// next worker in rotation is at least as idle.
    P2c,
}

impl Policy {
    /// Every policy, for help texts and benchmarks.
    pub const ALL: [Policy; 3] = [Policy::RoundRobin, Policy::LeastConn, Policy::P2c];

    /// The name used on the command line and in config files.
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::LeastConn => "least-conn",
            Policy::P2c => "p2c",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s || (s == "rr" && *p == Policy::RoundRobin))
            .ok_or_else(|| format!("unknown policy {s:?}; choose one of: round-robin, least-conn, p2c"))
    }
}

/// What the balancer knows of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// May it take a connection now?
    pub(crate) eligible: bool,
    /// Connections handed to it and not yet DONE.
    pub(crate) active: u32,
    /// Does it report DONE (is `active` meaningful)?
    pub(crate) reports_load: bool,
    /// Has it connections it has not ACKed yet? A worker that is slow to take what it
    /// was sent is busy (stuck in a long request, or descheduled): among equally
    /// loaded workers, one that is keeping up gets the connection.
    pub(crate) behind: bool,
}

impl Candidate {
    /// What load-aware policies compare: workers keeping up first, then fewest active.
    fn load(&self) -> (bool, u32) {
        (self.behind, self.active)
    }
}

/// Chooses workers under one policy, remembering the rotation.
#[derive(Debug)]
pub(crate) struct Balancer {
    policy: Policy,
    next: usize,
    rng: fastrand::Rng,
}

impl Balancer {
    /// A balancer for `policy`.
    pub(crate) fn new(policy: Policy) -> Balancer {
        Balancer { policy, next: 0, rng: fastrand::Rng::new() }
    }

    /// A balancer with a fixed random seed (the tests).
    #[cfg(test)]
    pub(crate) fn with_seed(policy: Policy, seed: u64) -> Balancer {
        Balancer { policy, next: 0, rng: fastrand::Rng::with_seed(seed) }
    }

    /// The policy in use.
    pub(crate) fn policy(&self) -> Policy {
        self.policy
    }

    /// Changes the policy, keeping the rotation.
    pub(crate) fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Picks an eligible worker, or `None` if none is.
    pub(crate) fn pick(&mut self, ws: &[Candidate]) -> Option<usize> {
        let n = ws.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        let rotation = (0..n).map(|k| (start + k) % n).filter(|&i| ws[i].eligible);
        let load_known = || ws.iter().filter(|w| w.eligible).all(|w| w.reports_load);
        let chosen = match self.policy {
            Policy::RoundRobin => rotation.clone().next(),
            _ if !load_known() => rotation.clone().next(),
            // `min_by_key` keeps the first minimum: the first in rotation wins ties.
            Policy::LeastConn => rotation.clone().min_by_key(|&i| ws[i].load()),
            Policy::P2c => {
                let first = rotation.clone().next()?;
                let eligible: Vec<usize> = rotation.clone().collect();
                let a = eligible[self.rng.usize(..eligible.len())];
                let b = eligible[self.rng.usize(..eligible.len())];
                let sampled = if ws[b].load() < ws[a].load() { b } else { a };
                if ws[sampled].load() < ws[first].load() {
                    Some(sampled)
                } else {
                    Some(first)
                }
            }
        }?;
        self.next = chosen + 1;
        Some(chosen)
    }
}

/// Jain's fairness index of connections per worker, `(Σx)² / (n·Σx²)`: 1.0 when every
/// worker got the same number, `1/n` when one worker got them all. Used by the master's
/// status and metrics and by `handoff bench`.
///
/// An empty list, or one where nobody got anything, counts as fair (1.0): there was
/// nothing to share out unevenly.
#[doc(hidden)]
pub fn jain(xs: &[u64]) -> f64 {
    let n = xs.len() as f64;
    let sum: f64 = xs.iter().map(|&x| x as f64).sum();
    let sum_sq: f64 = xs.iter().map(|&x| (x as f64) * (x as f64)).sum();
    if sum_sq == 0.0 {
        return 1.0;
    }
    sum * sum / (n * sum_sq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(active: u32) -> Candidate {
        Candidate { eligible: true, active, reports_load: true, behind: false }
    }

    #[test]
    fn parse_names() {
        assert_eq!("least-conn".parse(), Ok(Policy::LeastConn));
        assert_eq!("rr".parse(), Ok(Policy::RoundRobin));
        assert!("fastest".parse::<Policy>().unwrap_err().contains("round-robin, least-conn, p2c"));
    }

    #[test]
    fn every_policy_is_round_robin_at_equal_load() {
        for p in Policy::ALL {
            let mut b = Balancer::with_seed(p, 7);
            let ws = [c(0), c(0), c(0), c(0)];
            let picks: Vec<_> = (0..8).map(|_| b.pick(&ws).unwrap()).collect();
            assert_eq!(picks, [0, 1, 2, 3, 0, 1, 2, 3], "{p}");
        }
    }

    #[test]
    fn round_robin_skips_ineligible() {
        let mut b = Balancer::new(Policy::RoundRobin);
        let mut ws = [c(0), c(0), c(0)];
        ws[1].eligible = false;
        let picks: Vec<_> = (0..4).map(|_| b.pick(&ws).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        ws = [Candidate { eligible: false, ..c(0) }; 3];
        assert_eq!(b.pick(&ws), None);
    }

    #[test]
    fn least_conn_picks_the_idle_worker() {
        let mut b = Balancer::new(Policy::LeastConn);
        let ws = [c(1), c(1), c(0), c(1)];
        for _ in 0..5 {
            assert_eq!(b.pick(&ws), Some(2));
        }
    }

    #[test]
    fn least_conn_passes_over_a_worker_that_is_behind() {
        {
            let p = Policy::LeastConn;
            let mut b = Balancer::new(p);
            // Worker 1 has the fewest connections but has not ACKed one: it is stuck.
            let mut ws = [c(2), c(1), c(2)];
            ws[1].behind = true;
            for _ in 0..20 {
                assert_ne!(b.pick(&ws), Some(1), "{p}");
            }
        }
    }

    #[test]
    fn load_policies_fall_back_to_rotation_without_done() {
        for p in [Policy::LeastConn, Policy::P2c] {
            let mut b = Balancer::with_seed(p, 1);
            let mut ws = [c(5), c(0), c(9)];
            ws[0].reports_load = false;
            let picks: Vec<_> = (0..3).map(|_| b.pick(&ws).unwrap()).collect();
            assert_eq!(picks, [0, 1, 2], "{p}");
        }
    }

    #[test]
    fn p2c_prefers_idle_workers() {
        let mut b = Balancer::with_seed(Policy::P2c, 42);
        let ws = [c(3), c(0), c(2), c(7)];
        let mut count = [0usize; 4];
        for _ in 0..400 {
            count[b.pick(&ws).unwrap()] += 1;
        }
        assert!(count[1] > count[0] && count[1] > count[2] && count[1] > count[3], "{count:?}");
        assert!(count[3] < 100, "the busiest worker got {count:?}");
    }
}
