//! What a model's processes hold, read from `/proc`: resident memory (`VmRSS`) and open
//! descriptors, for the held-idle workload, which asks where thousands of idle
//! keep-alive connections cost memory and descriptors (in the master, in the workers).
//!
//! Only reading `/proc` of our own children: no privileges, nothing that perturbs the
//! processes measured.

/// One process's memory and descriptors.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProcMem {
    /// The process.
    pub pid: u32,
    /// Resident memory, KiB (`VmRSS` of `/proc/PID/status`).
    pub rss_kib: u64,
    /// Open descriptors (entries of `/proc/PID/fd`).
    pub fds: u64,
}

/// A model's processes at one moment.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// The handoff master (`None` for kernel models, which have none).
    pub master: Option<ProcMem>,
    /// Every worker.
    pub workers: Vec<ProcMem>,
}

impl Sample {
    /// Reads `master` (if any) and `workers` now; processes that are gone are left out.
    pub fn take(master: Option<u32>, workers: &[u32]) -> Sample {
        Sample { master: master.and_then(read), workers: workers.iter().filter_map(|&p| read(p)).collect() }
    }

    /// Descriptors of the master and every worker.
    pub fn total_fds(&self) -> u64 {
        self.master.iter().chain(&self.workers).map(|p| p.fds).sum()
    }

    /// Resident memory of every worker, KiB.
    pub fn workers_rss_kib(&self) -> u64 {
        self.workers.iter().map(|p| p.rss_kib).sum()
    }

    /// Descriptors of every worker.
    pub fn workers_fds(&self) -> u64 {
        self.workers.iter().map(|p| p.fds).sum()
    }
}

/// `pid`'s memory and descriptors; `None` if it is gone.
pub fn read(pid: u32) -> Option<ProcMem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = parse_vm_rss_kib(&status)?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(ProcMem { pid, rss_kib, fds })
}

/// The children of `pid` (of every one of its threads).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// `VmRSS` in KiB from the text of `/proc/PID/status`; `None` without it (a zombie).
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut f = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = f.next()?.parse().ok()?;
    // The kernel always prints kB; anything else would be a format we do not know.
    (f.next() == Some("kB")).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_parsed_from_status() {
        let s = "Name:\thandoff\nVmPeak:\t  10000 kB\nVmRSS:\t    6868 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss_kib(s), Some(6868));
        assert_eq!(parse_vm_rss_kib("Name:\tzombie\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn this_process_is_read_and_counted() {
        let me = read(std::process::id()).expect("own /proc entry");
        assert!(me.rss_kib > 0 && me.fds >= 3, "{me:?}");
        let s = Sample::take(Some(std::process::id()), &[std::process::id()]);
        assert_eq!(s.total_fds(), s.master.unwrap().fds + s.workers_fds());
        assert_eq!(Sample::take(None, &[u32::MAX]).workers, vec![]);
    }
}
