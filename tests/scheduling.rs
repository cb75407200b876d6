//! `--master-sched`: the master runs as `SCHED_BATCH` (it does not preempt busy
//! workers to accept), its workers as `SCHED_OTHER`; `inherit` leaves it as started.
#![allow(
    unsafe_code,
    reason = "Command::pre_exec sets up the child under test; the one unsafe block says why it is sound"
)]

mod util;
use util::*;

#[test]
fn the_master_runs_as_sched_batch_and_its_workers_do_not() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "2"]);
    h.wait_ready(2);
    assert_eq!(sched_policy(h.pid()), Some(SCHED_BATCH), "the master");
    let workers = h.children();
    assert_eq!(workers.len(), 2, "{workers:?}");
    for w in workers {
        assert_eq!(sched_policy(w), Some(SCHED_OTHER), "worker {w}");
    }
    // A worker started later (a replacement) too.
    let old = h.worker_pid(0);
    h.kill_worker(old);
    h.wait_ready(3);
    let new = h.worker_pid(0);
    assert_ne!(new, old);
    assert_eq!(sched_policy(new), Some(SCHED_OTHER), "the replacement {new}");
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
}

#[test]
fn inherit_leaves_the_master_as_started() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "1", "--master-sched", "inherit"]);
    h.wait_ready(1);
    assert_eq!(sched_policy(h.pid()), Some(SCHED_OTHER), "the master");
    assert_eq!(sched_policy(h.worker_pid(0)), Some(SCHED_OTHER), "its worker");
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
}

#[test]
fn a_policy_set_from_outside_is_kept_for_master_and_workers() {
    // `chrt --batch 0 handoff run ...`: not the default SCHED_OTHER, so the master keeps
    // it as the operator's choice, and its workers inherit it as they always did (not
    // reset, as they are when the master chose SCHED_BATCH itself). (SCHED_IDLE would
    // show the same, but could starve the test on a busy machine.)
    let h = Handoff::start_with(&["--listen", "127.0.0.1:0", "--workers", "1"], |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the child before exec: one sched_setscheduler system call on
        // a `sched_param` that lives for the call; no allocation, no lock.
        unsafe {
            cmd.pre_exec(|| {
                let param = libc::sched_param { sched_priority: 0 };
                if libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    h.wait_ready(1);
    assert_eq!(sched_policy(h.pid()), Some(SCHED_BATCH), "the master");
    assert_eq!(sched_policy(h.worker_pid(0)), Some(SCHED_BATCH), "its worker, inheriting the operator's choice");
}

#[test]
fn an_unknown_value_is_a_clear_error() {
    let out = std::process::Command::new(handoff_bin())
        .args(["run", "--listen", "127.0.0.1:0", "--master-sched", "fast"])
        .output()
        .expect("run handoff");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("choose batch or inherit"), "{err}");
}

#[test]
fn a_reload_switches_the_master_and_its_workers_stay_sched_other() {
    let dir = TempDir::new("sched-reload");
    let cfg = dir.join("h.toml");
    std::fs::write(&cfg, "listen = [\"127.0.0.1:0\"]\nworkers = 1\nmaster-sched = \"inherit\"\n").unwrap();
    let control = dir.path_str("ctl.sock");
    let h = Handoff::start(&["--config", cfg.to_str().unwrap(), "--control", &control]);
    h.wait_ready(1);
    assert_eq!(sched_policy(h.pid()), Some(SCHED_OTHER), "the master, inherit");
    let port = h.addr().port();
    for (sched, want, ready) in [("batch", SCHED_BATCH, 2), ("inherit", SCHED_OTHER, 3)] {
        std::fs::write(&cfg, format!("listen = [\"127.0.0.1:{port}\"]\nworkers = 1\nmaster-sched = \"{sched}\"\n"))
            .unwrap();
        let (ok, out) = ctl(&control, &["reload"]);
        assert!(ok, "{out}");
        assert_eq!(sched_policy(h.pid()), Some(want), "the master after a reload to {sched}");
        // The rolling restart's new worker, started by a master in either policy.
        h.wait_ready(ready);
        let w = h.worker_pid(0);
        assert_eq!(sched_policy(w), Some(SCHED_OTHER), "worker {w} after a reload to {sched}");
    }
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
}
