//! `handoff bench` end to end: every model × workload with a tiny request count (the
//! keep-alive uneven and held-idle workloads under the kernel models and handoff's
//! default), real processes on loopback, then `--serve`; and the scripts whose numbers
//! get quoted, `bench/vs-nginx.sh` (pinned) and `bench/master-ceiling.sh`, for a second
//! each. No speed is asserted (this runs on noisy, shared 2-core machines): only that
//! every request was answered by a worker of the model, that the report adds up, and
//! that no process is left behind.
//!
//! Each run is tagged with a unique environment variable, which every process the
//! bench starts inherits; after the run, no process in `/proc` may still carry it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TAG: &str = "HANDOFF_BENCH_SMOKE_TAG";

fn tag() -> String {
    format!("{}-{:?}", std::process::id(), Instant::now())
}

/// Pids of live processes whose environment holds `TAG=value`.
fn tagged_processes(value: &str) -> Vec<u32> {
    let needle = format!("{TAG}={value}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        // Zombies have an empty environ; they are gone for our purpose.
        if env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

fn assert_no_leftovers(value: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = tagged_processes(value);
        if left.is_empty() {
            return;
        }
        if Instant::now() > until {
            for pid in &left {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            panic!("processes left behind by the bench: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child` at most `limit`, killing it (by pid) if it overruns.
fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("handoff bench ran over {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_model_and_workload_answers_with_a_tiny_count() {
    let t = tag();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_handoff"));
    cmd.args(["bench", "--workers", "2", "--requests", "24", "--duration", "5", "--concurrency", "4", "--json"]);
    let (status, out, err) = run_tagged(cmd, &t, Duration::from_secs(240));
    assert!(status.success(), "handoff bench failed: {status}\n{err}");

    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{out}\n{err}"));
    let cells = v["cells"].as_array().expect("cells");
    let models = ["shared", "shared-nginx", "reuseport", "handoff-rr", "handoff-least-conn", "handoff-p2c"];
    let workloads = ["close", "keepalive", "uneven", "trickle"];
    assert_eq!(cells.len(), models.len() * workloads.len(), "{out}");
    for m in models {
        for w in workloads {
            let c = cells
                .iter()
                .find(|c| c["model"] == m && c["workload"] == w)
                .unwrap_or_else(|| panic!("no cell {m} × {w}"));
            assert_eq!(c["errors"], 0, "{m} × {w}: {c}");
            assert_eq!(c["requests"], 24, "{m} × {w}: {c}");
            let counts: Vec<u64> =
                c["conns_per_worker"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
            assert_eq!(counts.len(), 2, "{m} × {w}: only workers 0 and 1 may answer: {c}");
            assert_eq!(counts.iter().sum::<u64>(), c["connections"].as_u64().unwrap(), "{m} × {w}: {c}");
            let jain = c["jain"].as_f64().unwrap();
            assert!((0.5..=1.0 + 1e-9).contains(&jain), "{m} × {w}: {c}");
            let is_handoff = m.starts_with("handoff");
            assert_eq!(c["master_cpu_us_per_conn"].is_number(), is_handoff, "{m} × {w}: {c}");
        }
    }
    assert!(v["rows"].as_array().unwrap().len() == 24);

    // The saved JSON redraws the report without measuring again.
    let dir = std::env::temp_dir().join(format!("handoff-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("in.json");
    std::fs::write(&json, &out).unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args(["bench", "--render"])
        .arg(&json)
        .arg("--out")
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    for f in ["report.md", "results.json", "bench-distribution.svg", "bench-latency.svg"] {
        let meta = std::fs::metadata(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(meta.len() > 100, "{f} is nearly empty");
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("| handoff-least-conn | uneven |"), "{md}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_runs_one_model_until_sigterm() {
    for model in ["shared-nginx", "reuseport", "handoff-least-conn"] {
        let t = tag();
        let mut child = Command::new(env!("CARGO_BIN_EXE_handoff"))
            .args(["bench", "--serve", model, "--listen", "127.0.0.1:0", "--workers", "2"])
            .env(TAG, &t)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start handoff bench --serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("bench --serve ended before listening").unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        for _ in 0..4 {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).unwrap();
            assert!(resp.starts_with("HTTP/1.1 200"), "{model}: {resp}");
            assert!(resp.to_ascii_lowercase().contains("x-handoff-worker: "), "{model}: {resp}");
        }
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        // Drain the log so the server never blocks on a full pipe while stopping.
        std::thread::spawn(move || for _ in lines {});
        let st = wait_bounded(&mut child, Duration::from_secs(20));
        assert!(st.success(), "{model}: --serve exited with {st}");
        assert_no_leftovers(&t);
    }
}

/// Descriptors of the master (if any) and every worker in a `procs::Sample` as JSON.
fn total_fds(sample: &serde_json::Value) -> u64 {
    let master = sample["master"]["fds"].as_u64().unwrap_or(0);
    master + sample["workers"].as_array().unwrap().iter().map(|w| w["fds"].as_u64().unwrap()).sum::<u64>()
}

#[test]
fn keepalive_uneven_and_held_idle_answer_with_tiny_counts() {
    let t = tag();
    let dir = std::env::temp_dir().join(format!("handoff-bench-smoke-ka-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let models = ["shared", "shared-nginx", "reuseport", "handoff-least-conn", "handoff-always", "handoff-off"];
    // 600 requests: the 500th asks for ?cpu_ms=25, so the slow path is exercised too.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_handoff"));
    cmd.args(["bench", "--workers", "2", "--models", &models.join(",")])
        .args(["--workloads", "keepalive-uneven-32,keepalive-uneven-16,held-idle"])
        .args(["--requests", "600", "--idle", "40", "--duration", "10", "--json", "--out"])
        .arg(&dir);
    let (status, out, err) = run_tagged(cmd, &t, Duration::from_secs(240));
    assert!(status.success(), "handoff bench failed: {status}\n{err}");

    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{out}\n{err}"));
    let cells = v["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), models.len() * 3, "{out}");
    for m in models {
        let cell = |w: &str| {
            cells.iter().find(|c| c["model"] == m && c["workload"] == w).unwrap_or_else(|| panic!("no cell {m} × {w}"))
        };
        for (w, conns) in [("keepalive-uneven-32", 32), ("keepalive-uneven-16", 16)] {
            let c = cell(w);
            assert_eq!(c["errors"], 0, "{m} × {w}: {c}");
            assert_eq!(c["requests"], 600, "{m} × {w}: {c}");
            // Every client keeps its one connection for the whole run.
            assert_eq!(c["connections"], conns, "{m} × {w}: {c}");
            // The ?cpu_ms=25 request was served as one (not refused, not skipped).
            assert!(c["latency"]["max"].as_f64().unwrap() >= 25.0, "{m} × {w}: {c}");
            assert_eq!(c["master_cpu_us_per_req"].is_number(), m.starts_with("handoff"), "{m} × {w}: {c}");
            // Fairness is counted in requests here: a few held connections carry them all.
            let reqs: Vec<f64> = c["reqs_per_worker"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(reqs.iter().sum::<f64>(), 600.0, "{m} × {w}: {c}");
            let jain = reqs.iter().sum::<f64>().powi(2) / (reqs.len() as f64 * reqs.iter().map(|x| x * x).sum::<f64>());
            assert!((c["jain"].as_f64().unwrap() - jain).abs() < 1e-9, "{m} × {w}: Jain not over requests: {c}");
        }
        let c = cell("held-idle");
        assert_eq!(c["errors"], 0, "{m} × held-idle: {c}");
        assert_eq!(c["requests"], 600, "{m} × held-idle: {c}");
        let h = &c["held"];
        assert_eq!(h["idle"], 40, "{m}: {h}");
        assert_eq!(h["closed_by_server"], 0, "{m}: idle clients cut while held: {h}");
        let (before, held, after) = (total_fds(&h["baseline"]), total_fds(&h["held"]), total_fds(&h["after"]));
        // Each idle connection is held by the master or by a worker...
        assert!(held >= before + 40, "{m}: descriptors {before} → {held}: idle connections not held? {h}");
        // ...and closed once its client has gone.
        assert!(after <= before + 4, "{m}: descriptors {before} → {held} → {after} after the clients left: {h}");
        assert!(h["held"]["workers"].as_array().unwrap().len() == 2, "{m}: {h}");
        assert_eq!(h["held"]["master"].is_object(), m.starts_with("handoff"), "{m}: {h}");
        // Where the idle connections wait: the master with every one handed back, the
        // workers with hand-back off.
        let master_fds = |s: &str| h[s]["master"]["fds"].as_u64().unwrap_or(0);
        match m {
            "handoff-always" => {
                assert!(master_fds("held") >= master_fds("baseline") + 40, "{m}: not in the master: {h}")
            }
            "handoff-off" => {
                assert!(master_fds("held") < master_fds("baseline") + 40, "{m}: in the master: {h}")
            }
            _ => {}
        }
    }
    let names: Vec<&str> = v["ratios"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    for w in ["keepalive-uneven-32", "keepalive-uneven-16"] {
        assert!(names.contains(&format!("{w} p99, handoff-least-conn / best kernel model").as_str()), "{names:?}");
    }
    for f in ["report.md", "results.json", "bench-latency.svg", "bench-held-idle.svg"] {
        let meta = std::fs::metadata(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(meta.len() > 100, "{f} is nearly empty");
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("| handoff-least-conn | 40 |"), "{md}");
    assert!(md.contains("no coordinated-omission correction"), "{md}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs a script of `bench/` with `env`, tagged, bounded by `limit`; returns its exit
/// status, stdout and stderr, after checking that it left no process behind.
fn run_script(script: &str, env: &[(&str, String)], limit: Duration) -> (std::process::ExitStatus, String, String) {
    let t = tag();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("bench").join(script)).current_dir(root).env("HANDOFF", env!("CARGO_BIN_EXE_handoff"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_tagged(cmd, &t, limit)
}

/// Runs `cmd` tagged with `t`, bounded by `limit`, reading its stdout and stderr to the
/// end; returns its exit status and both, after checking that it left no process behind.
fn run_tagged(mut cmd: Command, t: &str, limit: Duration) -> (std::process::ExitStatus, String, String) {
    cmd.env(TAG, t).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = wait_bounded(&mut child, limit);
    let (out, err) = (out_reader.join().unwrap(), err_reader.join().unwrap());
    assert_no_leftovers(t);
    (status, out, err)
}

/// The CPUs the scripts pin the server and the client to: 1 and 0 where there are two,
/// both 0 on a one-CPU machine (the pinning is exercised either way).
fn server_and_client_cpus() -> (String, String) {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if n >= 2 {
        ("1".into(), "0".into())
    } else {
        ("0".into(), "0".into())
    }
}

#[test]
fn master_ceiling_script_counts_connections_handed_out() {
    let (server, other) = server_and_client_cpus();
    for (mode, listen) in [("full", ""), ("minimal", ",deferred")] {
        let env = [
            ("DURATION", "1".to_string()),
            ("CLIENTS", "1".into()),
            ("INFLIGHT", "8".into()),
            ("MODE", mode.into()),
            ("LISTEN_OPTS", listen.into()),
            ("MASTER_CPU", server.clone()),
            ("OTHER_CPUS", other.clone()),
        ];
        let (status, out, err) = run_script("master-ceiling.sh", &env, Duration::from_secs(90));
        assert!(status.success(), "{mode}{listen}: {status}\n{out}\n{err}");
        // The figure is the master's own count; a worker killed for a protocol error
        // makes the script refuse to print one.
        let rate: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("connections/s handed out: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{mode}{listen}: no rate in:\n{out}\n{err}"));
        assert!(rate > 0.0, "{mode}{listen}: {out}");
        assert!(out.contains("µs per connection"), "{mode}{listen}: {out}");
        assert!(out.contains(&format!("master on CPU {server}; 2 '{mode}' workers")), "{out}");
    }
}

/// The figure master-ceiling.sh is compared with: nginx's own accept path (a `stream`
/// server that accepts, writes a byte and closes), pinned the same way.
#[test]
fn nginx_accept_ceiling_script_counts_connections() {
    let (server, other) = server_and_client_cpus();
    let env = [
        ("DURATION", "1".to_string()),
        ("CLIENTS", "1".into()),
        ("INFLIGHT", "8".into()),
        ("SERVER_CPU", server.clone()),
        ("OTHER_CPUS", other),
    ];
    let (status, out, err) = run_script("nginx-accept-ceiling.sh", &env, Duration::from_secs(60));
    assert!(status.success(), "{status}\n{out}\n{err}");
    let rate: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("connections/s: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rate in:\n{out}\n{err}"));
    assert!(rate > 0.0, "{out}");
    assert!(out.contains("µs per connection") && out.contains(&format!("nginx worker on CPU {server}")), "{out}");
    assert!(!out.contains("failed"), "{out}");
}

#[test]
fn vs_nginx_script_runs_pinned_with_tiny_counts() {
    let (server, client) = server_and_client_cpus();
    let env = [
        ("DURATION", "1".to_string()),
        ("RUNS", "1".into()),
        ("CONNS", "8".into()),
        ("SERVER_CPUS", server.clone()),
        ("CLIENT_CPUS", client.clone()),
    ];
    // It installs nginx and wrk with apt-get if they are missing (as root).
    let (status, out, err) = run_script("vs-nginx.sh", &env, Duration::from_secs(240));
    assert!(status.success(), "{status}\n{out}\n{err}");
    assert!(
        out.contains(&format!("PINNED: servers (every process) on CPU {server}, wrk -t1 on CPU {client}")),
        "{out}"
    );
    for name in ["nginx-reuseport", "nginx-reuseport-deferred", "handoff-default", "handoff-deferred"] {
        // Every process of every server ran on the server's CPU only...
        assert!(err.contains(&format!("  {name}: ")), "{name}: {err}");
        let line = err.lines().find(|l| l.starts_with(&format!("  {name}: "))).unwrap();
        assert!(line.ends_with(&format!("on CPUs {server}")), "{name} not pinned: {line}");
        // ...and was measured in both modes, with a CPU figure.
        for mode in ["close", "keepalive"] {
            let row = out
                .lines()
                .find(|l| l.split_whitespace().take(2).eq([name, mode]))
                .unwrap_or_else(|| panic!("no {name} {mode} row in:\n{out}"));
            let cpu: f64 = row.split_whitespace().nth(5).and_then(|v| v.parse().ok()).unwrap_or(-1.0);
            assert!(cpu > 0.0, "{name} {mode}: no CPU per request: {row}");
        }
    }
    assert!(out.contains("handoff-default / nginx-reuseport: close CPU/req"), "{out}");
    assert!(out.contains("target <= 1.0"), "{out}");
}
