//! A worker that breaks the protocol is killed and replaced; the others never notice.

mod util;
use util::*;

fn misbehaving(fault: &str, expect: &str) {
    let h =
        Handoff::start(&[&["--listen", "127.0.0.1:0", "--workers", "3"][..], &misbehaving_in_slot_0(fault)].concat());
    let load = Load::start(h.addr(), 2, "/");
    let line = h.wait_line(expect);
    assert!(line.contains("worker 0"), "{line}");
    // Replaced (and, misbehaving again, killed again): the slot keeps being refilled.
    h.wait_lines("worker 0 started", 2);
    let r = load.stop();
    assert_eq!(r.failed, 0, "{fault}: the other workers' clients noticed: {:?}", r.errors);
    assert!(r.ok > 0);
}

#[test]
fn garbage_frame() {
    misbehaving("garbage", "sent a malformed frame: unknown frame type 0x7f; killing it");
}

#[test]
fn descriptor_sent_to_the_master() {
    misbehaving("send-fd", "sent a descriptor (workers must not send any); killing it");
}

#[test]
fn ack_for_a_connection_never_sent() {
    misbehaving("unknown-ack", "which it was never sent; killing it");
}

#[test]
fn served_for_a_connection_never_sent() {
    misbehaving("unknown-served", "a SERVED for connection 18446744073709551614, which it does not hold; killing it");
}

#[test]
fn connection_handed_back_without_the_return_capability() {
    misbehaving("return-unannounced", "sent a descriptor (workers must not send any); killing it");
}

#[test]
fn connection_handed_back_that_it_never_had() {
    misbehaving(
        "return-unknown",
        "sent a RETURN of connection 18446744073709551614, which it does not hold; killing it",
    );
}

/// Every frame valid, but sent in a tight loop (it cost the master most of a core): past
/// the frame budget the worker is killed and replaced; the other workers serve on. Each
/// flooding worker is killed (and logged, and counted) once, whatever it had queued.
#[test]
fn heartbeat_flood() {
    let flood = "sent frames faster than any honest worker (over 10000 a second beyond 3 per connection it was sent): a frame flood; killing it";
    misbehaving("heartbeat-flood", flood);
    let dir = TempDir::new("flood");
    let control = dir.path_str("c.sock");
    let h = Handoff::start(
        &[
            &["--listen", "127.0.0.1:0", "--workers", "2", "--control", &control][..],
            &misbehaving_in_slot_0("heartbeat-flood"),
        ]
        .concat(),
    );
    let first = h.wait_line(flood);
    let pid = first.split("(pid ").nth(1).and_then(|p| p.split(')').next()).expect("a pid").to_string();
    h.wait_lines("worker 0 started", 2);
    let kills = h.lines().iter().filter(|l| l.contains(flood) && l.contains(&format!("(pid {pid})"))).count();
    assert_eq!(kills, 1, "worker pid {pid} was reported more than once");
    assert!(status_json(&control)["totals"]["protocol_kills"].as_u64().unwrap() >= 1);
}
