//! A reload whose new workers never become ready is a failed reload: the old workers
//! keep serving (never drained), the new ones are stopped, and the failure is reported
//! (an error line with the reason, `handoff status`, `/metrics`, sd_notify), with
//! `handoff ctl reload` waiting for the outcome and exiting non-zero. A worker not
//! proven within `--ready-timeout` is killed and counted as a failed start.

mod util;
use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use util::*;

/// A config file running `command` (a TOML array) on the listener at `port` (0: any).
fn config(port: u16, command: &str) -> String {
    format!("listen = [\"127.0.0.1:{port}\"]\nworkers = 2\npolicy = \"round-robin\"\ncommand = {command}\n")
}

const WORKER: &str = r#"["python3", "examples/python/worker.py"]"#;
/// A deploy that dies after its imports: silent for a second, then exit status 1.
const BROKEN: &str = r#"["sh", "-c", "sleep 1; exit 1"]"#;

/// The pids that answered `n` requests (the python worker names its pid in the body).
fn serving_pids(h: &Handoff, n: usize) -> BTreeSet<u32> {
    (0..n)
        .map(|_| {
            let r = http_get(h.addr(), "/").unwrap();
            assert_eq!(r.status, 200, "{r:?}");
            r.body.split("(pid ").nth(1).and_then(|p| p.trim_end().trim_end_matches(')').parse().ok()).unwrap()
        })
        .collect()
}

/// `/metrics` from the endpoint the master logged.
fn metrics(h: &Handoff) -> String {
    let line = h.wait_line("metrics endpoint on http://");
    let addr = line.split("http://").nth(1).unwrap().trim().parse().unwrap();
    let r = http_get(addr, "/metrics").unwrap();
    assert_eq!(r.status, 200);
    r.body
}

/// Every notification so far, until one contains `needle`.
fn notifications_until(sock: &UnixDatagram, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.iter().any(|m: &String| m.contains(needle)) {
        let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("no notification with {needle:?} ({e}): {seen:#?}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    seen
}

#[test]
fn a_reload_to_a_deploy_that_dies_after_a_second_fails_loudly_and_a_fixed_one_succeeds() {
    let dir = TempDir::new("reload-failed");
    let cfg = dir.join("h.toml");
    std::fs::write(&cfg, config(0, WORKER)).unwrap();
    let control = dir.path_str("ctl.sock");
    let notify = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let args = ["--config", cfg.to_str().unwrap(), "--control", &control, "--metrics", "127.0.0.1:0"];
    let h = Handoff::start_with(&args, |cmd| {
        cmd.env("NOTIFY_SOCKET", &notify);
    });
    let old: BTreeSet<u32> = h.wait_ready_slots(2).into_values().collect();
    notifications_until(&sock, "READY=1");
    let load = Load::start(h.addr(), 2, "/");

    std::fs::write(&cfg, config(h.addr().port(), BROKEN)).unwrap();
    let (ok, out) = ctl(&control, &["reload"]);
    assert!(!ok, "ctl reload must fail: {out}");
    assert!(out.contains("reload #1 failed: worker "), "{out}");
    assert!(out.contains("exit status 1 after") && out.contains("before it was ready"), "the reason: {out}");
    assert!(out.contains(&format!("master pid {}", h.pid())), "which master: {out}");
    // Logged as an error, with the reason.
    let line = h.wait_line("reload #1 failed");
    assert!(line.contains("ERROR") && line.contains("exit status 1"), "{line}");
    // Told to systemd: the reload ended (READY=1) and how.
    let seen = notifications_until(&sock, "STATUS=reload #1 failed");
    assert!(seen.iter().any(|m| m.contains("RELOADING=1") && m.contains("MONOTONIC_USEC=")), "{seen:#?}");
    assert!(seen.last().unwrap().contains("READY=1"), "{seen:#?}");
    // Status: the last reload failed, when and why; the failed starts are counted.
    let st = status_json(&control);
    let r = &st["reload"];
    assert_eq!((r["id"].as_u64(), r["state"].as_str()), (Some(1), Some("failed")), "{r}");
    assert!(r["message"].as_str().unwrap().contains("exit status 1"), "{r}");
    assert!(r["finished_unix"].as_f64().unwrap() >= r["started_unix"].as_f64().unwrap(), "{r}");
    assert_eq!(st["totals"]["reloads_failed"], 1, "{st}");
    assert!(st["totals"]["failed_starts"].as_u64().unwrap() >= 3, "{st}");
    let table = std::process::Command::new(handoff_bin()).args(["status", "--control", &control]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("last reload: #1 failed"), "{table}");
    let m = metrics(&h);
    assert!(m.lines().any(|l| l == "handoff_reloads_failed_total 1"), "{m}");
    // The old workers were never drained: the same processes, the only ones, serve on.
    wait_until("only the old workers left", || h.children().into_iter().collect::<BTreeSet<_>>() == old);
    assert_eq!(serving_pids(&h, 8), old);
    let r = load.stop();
    assert_eq!(r.failed, 0, "requests failed during the failed reload: {:?}", r.errors);
    assert!(r.ok > 0);

    // Fixed: the next reload replaces every worker and says so.
    let load = Load::start(h.addr(), 2, "/");
    std::fs::write(&cfg, config(h.addr().port(), WORKER)).unwrap();
    let (ok, out) = ctl(&control, &["reload"]);
    assert!(ok, "ctl reload must succeed: {out}");
    assert!(out.contains("reload #2 done: 2 workers"), "{out}");
    let st = status_json(&control);
    assert_eq!(st["reload"]["state"], "ok", "{st}");
    wait_until("the old workers to exit", || h.children().iter().all(|p| !old.contains(p)));
    let now = serving_pids(&h, 8);
    assert!(now.len() == 2 && now.is_disjoint(&old), "new workers serve: {now:?}, old were {old:?}");
    let r = load.stop();
    assert_eq!(r.failed, 0, "requests failed during the good reload: {:?}", r.errors);
}

#[test]
fn a_reload_whose_workers_are_not_ready_within_the_ready_timeout_fails() {
    let dir = TempDir::new("reload-timeout");
    let cfg = dir.join("h.toml");
    std::fs::write(&cfg, config(0, WORKER)).unwrap();
    let control = dir.path_str("ctl.sock");
    let h = Handoff::start(&["--config", cfg.to_str().unwrap(), "--control", &control, "--ready-timeout", "2"]);
    let old: BTreeSet<u32> = h.wait_ready_slots(2).into_values().collect();
    // Alive but silent: never READY, and 2 s is less than a silent worker needs to
    // prove itself.
    std::fs::write(&cfg, config(h.addr().port(), r#"["sleep", "30"]"#)).unwrap();
    let (ok, out) = ctl(&control, &["reload"]);
    assert!(!ok, "{out}");
    assert!(out.contains("reload #1 failed: worker 0 was not ready after 2s"), "{out}");
    assert!(out.contains("the old workers keep serving"), "{out}");
    wait_until("only the old workers left", || h.children().into_iter().collect::<BTreeSet<_>>() == old);
    assert_eq!(serving_pids(&h, 4), old);
    let st = status_json(&control);
    assert_eq!(st["totals"]["ready_timeouts"], 1, "{st}");
}

#[test]
fn a_worker_not_ready_within_the_ready_timeout_is_killed_counted_and_started_again() {
    let dir = TempDir::new("ready-timeout");
    let control = dir.path_str("ctl.sock");
    let args = ["--listen", "127.0.0.1:0", "--workers", "1", "--control", &control, "--ready-timeout", "2"];
    let h = Handoff::start(&[&args[..], &["--", "sleep", "30"]].concat());
    // The operator is told that 2 s leaves a silent worker no time to prove itself.
    h.wait_line("--ready-timeout 2s is not longer than");
    let line = h.wait_line("not ready after 2s");
    assert!(line.contains("ERROR") && line.contains("a failed start"), "{line}");
    let pid: u32 = line.split("(pid ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
    wait_until("the worker that was not ready to be gone", || !h.children().contains(&pid));
    // Started again, after the backoff of one failed start.
    h.wait_line("restarting worker 0 in 0.1s (1 failed starts in a row)");
    let next = h.wait_log("a new worker 0", |l| slot_pids(l, "started (pid ").get(&0).copied().filter(|&p| p != pid));
    assert_ne!(next, pid);
    let st = status_json(&control);
    assert!(st["totals"]["ready_timeouts"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["totals"]["failed_starts"].as_u64().unwrap() >= 1, "{st}");
}
