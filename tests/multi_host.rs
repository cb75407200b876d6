//! Beyond one machine: Debian's HAProxy in front of two handoff instances, with
//! `send-proxy-v2` and health checks on `--health`. Under a steady load from a client
//! on 127.0.0.2, one instance is stopped (SIGTERM, `--drain-delay`): no request fails,
//! and the workers see the true client address, not HAProxy's.

mod support_haproxy;
mod util;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support_haproxy::{free_port, Backend, Haproxy, Mode};
use util::*;

fn instance(dir: &TempDir, port: u16, health: u16) -> Handoff {
    let listen = format!("127.0.0.1:{port},proxy");
    let health = format!("127.0.0.1:{health}");
    let control = dir.path_str(&format!("{port}.sock"));
    let h = Handoff::start(&[
        "--listen",
        &listen,
        "--health",
        &health,
        "--workers",
        "2",
        "--drain-delay",
        "1",
        "--control",
        &control,
    ]);
    h.wait_ready(2);
    h
}

#[test]
fn drain_one_of_two_hosts_behind_haproxy_without_a_failed_request() {
    let (pa, ha, pb, hb) = (free_port(), free_port(), free_port(), free_port());
    let dir = TempDir::new("multi-host");
    let mut a = instance(&dir, pa, ha);
    let b = instance(&dir, pb, hb);
    let sa = |p| SocketAddr::from(([127, 0, 0, 1], p));
    let hap = Haproxy::start(Mode::Http, &[Backend::with_health(sa(pa), sa(ha)), Backend::with_health(sa(pb), sa(hb))]);
    hap.wait_status(0, "UP");
    hap.wait_status(1, "UP");
    let front = hap.frontend;
    let client_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed, mut wrong_client, mut errors) = (0u64, 0u64, 0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match connect_from(client_ip, front).and_then(|s| http_get_with(s, "/", b"")) {
                        Ok(r) if r.status == 200 => {
                            ok += 1;
                            let seen = r.headers.iter().find(|(k, _)| k == "x-handoff-client").map(|(_, v)| v.clone());
                            if !seen.as_deref().is_some_and(|c| c.starts_with("127.0.0.2:")) {
                                wrong_client += 1;
                            }
                        }
                        Ok(r) => {
                            failed += 1;
                            errors.push(format!("status {}", r.status));
                        }
                        Err(e) => {
                            failed += 1;
                            errors.push(e.to_string());
                        }
                    }
                }
                errors.truncate(5);
                (ok, failed, wrong_client, errors)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let a_before = status_json(&dir.path_str(&format!("{pa}.sock")))["totals"]["dispatched"].as_u64().unwrap();
    let t0 = std::time::Instant::now();
    a.signal(Signal::TERM);
    // HAProxy sees the 503 and takes A out; A keeps accepting meanwhile, then drains.
    hap.wait_status(0, "DOWN");
    let to_down = t0.elapsed();
    assert_eq!(a.wait_exit(), Some(0));
    let to_exit = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed, mut wrong, mut errors) = (0, 0, 0, Vec::new());
    for c in clients {
        let (o, f, w, e) = c.join().unwrap();
        ok += o;
        failed += f;
        wrong += w;
        errors.extend(e);
    }
    eprintln!(
        "multi-host: {ok} requests ok, {failed} failed, {wrong} with a wrong client address; \
         host A had served {a_before} before SIGTERM; HAProxy marked it DOWN after {to_down:?}; it exited after {to_exit:?}"
    );
    assert!(ok > 50, "the load ran: {ok}");
    assert_eq!(failed, 0, "requests failed while a host drained: {errors:?}\nhaproxy log:\n{}", hap.log());
    assert_eq!(wrong, 0, "workers must see the client (127.0.0.2), not haproxy");
    // B carried the load alone at the end.
    let r = connect_from(client_ip, front).and_then(|s| http_get_with(s, "/", b"")).unwrap();
    assert_eq!(r.status, 200);
    drop(b);
}
