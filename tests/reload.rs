//! SIGHUP and `handoff ctl reload`: re-read the config; workers are replaced one by one
//! (each new one READY before an old one drains); no request fails; a bad config is
//! refused and the running setup stays.

mod util;
use util::*;

#[test]
fn rolling_reload_two_to_four_workers_and_new_policy_without_a_failed_request() {
    let dir = TempDir::new("reload");
    let cfg = dir.join("h.toml");
    std::fs::write(&cfg, "listen = [\"127.0.0.1:0\"]\nworkers = 2\npolicy = \"round-robin\"\n").unwrap();
    let control = dir.path_str("ctl.sock");
    let h = Handoff::start(&["--config", cfg.to_str().unwrap(), "--control", &control, "--test-knobs"]);
    h.wait_ready(2);
    let st = status_json(&control);
    assert_eq!((running_workers(&st), st["policy"].as_str().unwrap()), (2, "round-robin"));
    let before: Vec<u64> = st["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_u64().unwrap()).collect();
    // The listener is kept across the reload: write its real port into the file.
    let port = h.addr().port();
    let load = Load::start(h.addr(), 3, "/?sleep_ms=2");
    std::fs::write(&cfg, format!("listen = [\"127.0.0.1:{port}\"]\nworkers = 4\npolicy = \"least-conn\"\n")).unwrap();
    h.signal(Signal::HUP);
    wait_until("four ready workers and no old one", || {
        let st = status_json(&control);
        let pids: Vec<u64> = st["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_u64().unwrap()).collect();
        running_workers(&st) == 4
            && st["workers"].as_array().unwrap().len() == 4
            && pids.iter().all(|p| !before.contains(p))
    });
    let r = load.stop();
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert!(r.ok > 0);
    assert_eq!(status_json(&control)["policy"], "least-conn");
    // The port was kept, not reopened: the same address still serves.
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
}

#[test]
fn an_invalid_config_is_refused_and_the_running_setup_stays() {
    let dir = TempDir::new("reload-bad");
    let cfg = dir.join("h.toml");
    std::fs::write(&cfg, "listen = [\"127.0.0.1:0\"]\nworkers = 2\n").unwrap();
    let control = dir.path_str("ctl.sock");
    let h = Handoff::start(&["--config", cfg.to_str().unwrap(), "--control", &control]);
    h.wait_ready(2);
    let before = status_json(&control);
    for bad in ["workers = 0\n", "workers = 3\nwrokers = 1\n", "policy = \"fastest\"\n", "listen = [\"nowhere\"]\n"] {
        std::fs::write(&cfg, bad).unwrap();
        let (ok, out) = ctl(&control, &["reload"]);
        assert!(!ok && out.contains("reload refused, running setup unchanged"), "{bad}: {out}");
    }
    h.signal(Signal::HUP);
    h.wait_line("reload refused");
    let after = status_json(&control);
    let pids = |s: &serde_json::Value| -> Vec<u64> {
        s["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_u64().unwrap()).collect()
    };
    assert_eq!(pids(&after), pids(&before));
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
}

/// Two entries that name one running listener (the port-0 address it was bound from,
/// and the port it got) are refused like any invalid config: the master goes on.
#[test]
fn two_addresses_of_one_listener_are_refused() {
    let dir = TempDir::new("reload-twice");
    let cfg = dir.join("h.toml");
    std::fs::write(&cfg, "listen = [\"127.0.0.1:0\"]\nworkers = 1\n").unwrap();
    let control = dir.path_str("ctl.sock");
    let h = Handoff::start(&["--config", cfg.to_str().unwrap(), "--control", &control]);
    h.wait_ready(1);
    let port = h.addr().port();
    std::fs::write(&cfg, format!("listen = [\"127.0.0.1:0\", \"127.0.0.1:{port}\"]\nworkers = 1\n")).unwrap();
    let (ok, out) = ctl(&control, &["reload"]);
    assert!(!ok && out.contains("listed twice"), "{out}");
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
    assert_eq!(status_json(&control)["phase"], "running");
}

#[test]
fn reload_turns_deferred_accept_on_and_off_for_a_kept_listener() {
    let dir = TempDir::new("reload-deferred");
    let cfg = dir.join("h.toml");
    std::fs::write(&cfg, "listen = [\"127.0.0.1:0,nodeferred\"]\nworkers = 1\n").unwrap();
    let control = dir.path_str("ctl.sock");
    let h = Handoff::start(&["--config", cfg.to_str().unwrap(), "--control", &control]);
    h.wait_ready(1);
    let port = h.addr().port();
    assert_eq!(silent_then_speaking(h.addr(), &control).0, 2, "plain listener");
    for (deferred, accepted) in [(true, 1), (false, 2)] {
        let opt = if deferred { ",deferred" } else { ",nodeferred" };
        std::fs::write(&cfg, format!("listen = [\"127.0.0.1:{port}{opt}\"]\nworkers = 1\n")).unwrap();
        let (ok, out) = ctl(&control, &["reload"]);
        assert!(ok, "{out}");
        assert_eq!(silent_then_speaking(h.addr(), &control).0, accepted, "after the reload to {opt:?}");
    }
}
