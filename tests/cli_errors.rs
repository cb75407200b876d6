//! Bad input on the command line or in a config file: a clear message, a non-zero
//! exit, and no process left behind.

mod util;
use std::process::{Command, Stdio};
use std::time::Duration;
use util::*;

/// Runs `handoff run ARGS`, expecting failure; returns stderr.
fn fails(args: &[&str]) -> String {
    let marker = format!("handoff-cli-{}-{}", std::process::id(), args.join("_").len());
    let out = Command::new(handoff_bin())
        .arg("run")
        .args(args)
        .env("HANDOFF_TEST_MARKER", &marker)
        .stdin(Stdio::null())
        .output()
        .expect("run handoff");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "handoff {args:?} should fail; stderr:\n{stderr}");
    wait_no_processes(&marker, Duration::from_secs(5))
        .unwrap_or_else(|left| panic!("{args:?} left processes behind: {left:?}"));
    stderr
}

#[test]
fn address_already_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let e = fails(&["--listen", &addr, "--workers", "2"]);
    assert!(e.contains(&format!("cannot listen on {addr}")) && e.contains("in use"), "{e}");
}

#[test]
fn unparsable_address() {
    let e = fails(&["--listen", "localhost"]);
    assert!(e.contains("HOST:PORT"), "{e}");
}

#[test]
fn zero_workers() {
    let e = fails(&["--listen", "127.0.0.1:0", "--workers", "0"]);
    assert!(e.contains("workers must be at least 1"), "{e}");
}

#[test]
fn missing_command() {
    let e = fails(&["--listen", "127.0.0.1:0", "--", "/nonexistent/worker-program"]);
    assert!(e.contains("not found or not executable"), "{e}");
}

#[test]
fn command_not_executable() {
    let path = std::env::temp_dir().join(format!("handoff-noexec-{}", std::process::id()));
    std::fs::write(&path, "#!/bin/sh\n").unwrap();
    let e = fails(&["--listen", "127.0.0.1:0", "--", path.to_str().unwrap()]);
    assert!(e.contains("not found or not executable"), "{e}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn unknown_policy() {
    let e = fails(&["--policy", "fastest"]);
    assert!(e.contains("unknown policy") && e.contains("least-conn"), "{e}");
}

#[test]
fn bad_config_key_and_value() {
    let dir = std::env::temp_dir().join(format!("handoff-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(&f, "workers = 2\nwrokers = 3\n").unwrap();
    let e = fails(&["--config", f.to_str().unwrap()]);
    assert!(e.contains("unknown field `wrokers`") && e.contains("bad.toml"), "{e}");
    std::fs::write(&f, "workers = \"many\"\n").unwrap();
    let e = fails(&["--config", f.to_str().unwrap()]);
    assert!(e.contains("workers"), "{e}");
    let e = fails(&["--config", dir.join("missing.toml").to_str().unwrap()]);
    assert!(e.contains("cannot read config file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_file_settings_are_used() {
    let dir = std::env::temp_dir().join(format!("handoff-cfg-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("ok.toml");
    std::fs::write(&f, "listen = [\"127.0.0.1:0\"]\nworkers = 3\npolicy = \"round-robin\"\n").unwrap();
    let h = Handoff::start(&["--config", f.to_str().unwrap()]);
    h.wait_ready(3);
    let addr = h.addr();
    let t = tally((0..9).map(|_| http_get(addr, "/").unwrap().worker.unwrap()), 3);
    assert_eq!(t, [3, 3, 3]);
    let _ = std::fs::remove_dir_all(&dir);
}
