//! The master's log as JSON (`--log-format json`): one object per line, for log
//! shippers, with the same messages as the text log.

mod util;
use util::*;

#[test]
fn json_log_lines_parse_and_carry_the_messages() {
    let mut h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "2", "--log-format", "json"]);
    h.wait_ready(2);
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
    h.signal(Signal::TERM);
    assert_eq!(h.wait_exit(), Some(0));
    let lines = h.lines();
    assert!(lines.len() >= 5, "{lines:#?}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        assert!(v["fields"]["message"].is_string(), "{l}");
    }
    assert!(lines.iter().any(|l| l.contains("\"message\":\"worker 0 ready (pid ")), "{lines:#?}");
}

#[test]
fn an_unknown_log_format_is_a_clear_error() {
    let out = std::process::Command::new(handoff_bin()).args(["run", "--log-format", "xml"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("xml") && err.contains("text") && err.contains("json"), "{err}");
}

#[test]
fn each_line_a_worker_writes_to_stderr_names_the_worker() {
    let script = "printf 'one-%s\\ntwo-%s\\n' $HANDOFF_WORKER_ID $HANDOFF_WORKER_ID >&2; \
                  printf 'half-' >&2; printf 'line\\n' >&2; exec python3 examples/python/worker.py";
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "2", "--", "sh", "-c", script]);
    h.wait_ready(2);
    for w in 0..2 {
        h.wait_line(&format!("[worker {w}] one-{w}"));
        h.wait_line(&format!("[worker {w}] two-{w}"));
    }
    // A line written in two pieces is labelled once, at its start.
    h.wait_lines("[worker ", 6);
    let lines = h.lines();
    let halves: Vec<&String> = lines.iter().filter(|l| l.contains("half-line")).collect();
    assert_eq!(halves.len(), 2, "{lines:#?}");
    assert!(halves.iter().all(|l| l.starts_with("[worker ") && l.matches("[worker").count() == 1), "{halves:#?}");
}

#[test]
fn the_access_log_has_one_line_per_request_in_either_format() {
    for format in ["combined", "json"] {
        let dir = TempDir::new("access-log");
        let out = dir.join("stdout");
        let h = with_stdout_to(&out, &["--listen", "127.0.0.1:0", "--workers", "2", "--access-log", format]);
        h.wait_ready(2);
        for path in ["/", "/a?b=1", "/missing"] {
            assert_eq!(http_get(h.addr(), path).unwrap().status, 200);
        }
        let mut lines = Vec::new();
        wait_until("three access log lines", || {
            lines = std::fs::read_to_string(&out).unwrap().lines().map(String::from).collect();
            lines.len() >= 3
        });
        assert_eq!(lines.len(), 3, "{format}: {lines:#?}");
        for (line, path) in lines.iter().zip(["/", "/a?b=1", "/missing"]) {
            match format {
                "combined" => {
                    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
                    assert!(line.contains(&format!("\"GET {path} HTTP/1.1\" 200 ")), "{line}");
                }
                _ => {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                    assert_eq!((v["uri"].as_str(), v["status"].as_u64()), (Some(path), Some(200)), "{line}");
                    assert_eq!(v["client"], "127.0.0.1", "{line}");
                }
            }
        }
    }
}

#[test]
fn without_the_flag_there_is_no_access_log() {
    let dir = TempDir::new("no-access-log");
    let out = dir.join("stdout");
    let mut h = with_stdout_to(&out, &["--listen", "127.0.0.1:0", "--workers", "1"]);
    h.wait_ready(1);
    assert_eq!(http_get(h.addr(), "/").unwrap().status, 200);
    h.signal(Signal::TERM);
    assert_eq!(h.wait_exit(), Some(0));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "");
}

/// `handoff run ARGS` with its standard output (where the access log goes) in `out`:
/// through `sh -c 'exec ...'`, the same process, as the helpers send stdout nowhere.
fn with_stdout_to(out: &std::path::Path, args: &[&str]) -> Handoff {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("out=$1; shift; exec \"$@\" > \"$out\"")
        .arg("sh")
        .arg(out)
        .arg(handoff_bin())
        .arg("run")
        .args(args);
    Handoff::start_command(cmd)
}
