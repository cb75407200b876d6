//! SIGUSR2: a new master (a copy of the binary) takes over the listening sockets;
//! the old one drains and exits only once the new one is ready. No request fails.
//! If the new binary cannot start, the old master carries on.

mod util;
use std::time::Duration;
use util::*;

/// Makes `cmd` run `bin` (a copy of handoff) with the same arguments and environment.
fn run_copy(cmd: &mut std::process::Command, bin: &str) {
    let mut c = std::process::Command::new(bin);
    c.args(cmd.get_args()).envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
    c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    *cmd = c;
}

fn copy_binary(dir: &TempDir) -> String {
    let p = dir.path_str("handoff-copy");
    std::fs::copy(handoff_bin(), &p).unwrap();
    p
}

#[test]
fn upgrade_to_a_copy_of_the_binary_under_load() {
    let dir = TempDir::new("upgrade");
    let bin = copy_binary(&dir);
    let control = dir.path_str("ctl.sock");
    let args = ["--listen", "127.0.0.1:0", "--workers", "2", "--control", &control, "--test-knobs"];
    let mut h = Handoff::spawn(&args, |cmd| run_copy(cmd, &bin));
    h.wait_ready(2);
    let old_pid = h.pid();
    assert_eq!(status_json(&control)["pid"].as_u64(), Some(old_pid as u64));
    let load = Load::start(h.addr(), 3, "/?sleep_ms=3");
    std::thread::sleep(Duration::from_millis(300));
    h.signal(Signal::USR2);
    // The old master exits by itself once the new one is ready and its own workers have
    // drained.
    assert_eq!(h.wait_exit(), Some(0));
    let log = h.lines().join("\n");
    assert!(log.contains("is ready: this master stops accepting and drains"), "{log}");
    std::thread::sleep(Duration::from_millis(300));
    let r = load.stop();
    assert_eq!(r.failed, 0, "clients saw the upgrade: {:?}", r.errors);
    assert!(r.ok > 0);
    // The new master answers on the same control socket, with its own workers.
    let st = status_json(&control);
    let new_pid = st["pid"].as_u64().unwrap();
    assert_ne!(new_pid, old_pid as u64);
    assert_eq!(running_workers(&st), 2);
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
    // Started by a master in SCHED_BATCH, the new one chose for itself, and knows its
    // workers go back to SCHED_OTHER.
    assert_eq!(sched_policy(new_pid as u32), Some(SCHED_BATCH), "the new master");
    let workers = children_of(new_pid as u32);
    assert_eq!(workers.len(), 2, "{workers:?}");
    for w in workers {
        assert_eq!(sched_policy(w), Some(SCHED_OTHER), "the new master's worker {w}");
    }
    // Stop the new master (it is not our child: found by pid, pinned, checked to carry
    // this run's marker, stopped through the pin).
    assert!(h.signal_own(new_pid as u32, Signal::TERM), "the new master {new_pid} is gone or not ours");
    wait_no_processes(&h.marker, Duration::from_secs(10)).expect("the new master and its workers stopped");
}

#[test]
fn a_new_binary_that_fails_leaves_the_old_master_serving() {
    let dir = TempDir::new("upgrade-fail");
    let bin = copy_binary(&dir);
    let control = dir.path_str("ctl.sock");
    let h = Handoff::spawn(&["--listen", "127.0.0.1:0", "--workers", "2", "--control", &control], |cmd| {
        run_copy(cmd, &bin)
    });
    h.wait_ready(2);
    // Replace the binary on disk with one that fails at once.
    std::fs::remove_file(&bin).unwrap();
    std::fs::write(&bin, "#!/bin/sh\necho 'broken build' >&2\nexit 7\n").unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let load = Load::start(h.addr(), 2, "/");
    h.signal(Signal::USR2);
    h.wait_line("upgrade failed");
    let r = load.stop();
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    let st = status_json(&control);
    assert_eq!(st["pid"].as_u64(), Some(h.pid() as u64));
    assert_eq!(st["phase"], "running");
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
}

/// Replaces `bin` on disk with a "new binary" that never takes over: it says its pid and
/// waits (as a new master whose workers are slow to start would).
fn replace_with_a_binary_that_never_takes_over(bin: &str) {
    std::fs::remove_file(bin).unwrap();
    std::fs::write(bin, "#!/bin/sh\necho \"new binary $$ starting\" >&2\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// Starts a master from a copy of the binary, replaces the copy with one that never
/// takes over, and sends SIGUSR2: returns the master and the new binary's pid.
fn upgrade_under_way(dir: &TempDir) -> (Handoff, u32) {
    let bin = copy_binary(dir);
    let h = Handoff::spawn(&["--listen", "127.0.0.1:0", "--workers", "1"], |cmd| run_copy(cmd, &bin));
    h.wait_ready(1);
    replace_with_a_binary_that_never_takes_over(&bin);
    h.signal(Signal::USR2);
    let line = h.wait_line("new binary ");
    let pid = line
        .split_whitespace()
        .skip_while(|w| *w != "binary")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    // Its environment reads empty for a moment while it execs `sleep`: wait, bounded.
    wait_until(&format!("the new binary {pid} running, with this run's marker"), || h.processes().contains(&pid));
    (h, pid)
}

/// Stopped (gracefully, or at once) while a SIGUSR2 upgrade has not taken over, the
/// master stops the new binary too: nothing is left on the listening socket.
#[test]
fn stopping_during_an_upgrade_stops_the_new_master() {
    for sig in [Signal::TERM, Signal::QUIT] {
        let dir = TempDir::new("upgrade-stop");
        let (mut h, pid) = upgrade_under_way(&dir);
        h.signal(sig);
        assert_eq!(h.wait_exit(), Some(0), "{sig:?}");
        let line = h.wait_line("stopping the new master");
        assert!(line.contains(&format!("(pid {pid})")), "{line}");
        wait_no_processes(&h.marker, Duration::from_secs(5))
            .unwrap_or_else(|l| panic!("{sig:?}: left behind: {l:?} (the new binary was {pid})"));
        if sig == Signal::TERM {
            // Waited for, not just signalled.
            h.wait_line(&format!("the new master (pid {pid}) of the unfinished upgrade exited"));
        }
    }
}

/// A master killed outright (no chance to stop anything) while an upgrade has not
/// taken over: the kernel tells the new binary (PR_SET_PDEATHSIG), which stops.
#[test]
fn the_new_master_stops_when_the_old_one_dies_before_it_took_over() {
    let dir = TempDir::new("upgrade-kill");
    let (mut h, pid) = upgrade_under_way(&dir);
    h.signal(Signal::KILL);
    h.wait_exit();
    wait_no_processes(&h.marker, Duration::from_secs(5))
        .unwrap_or_else(|l| panic!("left behind: {l:?} (the new binary was {pid})"));
}
