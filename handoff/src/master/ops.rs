//! What the master says about itself on its admin endpoints: the control commands it
//! understands, the `handoff status` snapshot, `/metrics` and the health answer. Each
//! is computed at once from a [`View`] of the parts; none changes anything (the
//! commands that do are carried out by the master, which owns the parts).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::admin::Admin;
use super::dispatch::Dispatcher;
use super::supervisor::Workers;
use super::Totals;
use crate::control::{MasterId, ReloadStatus, Reply, Status, WorkerStatus};
use crate::policy::jain;

/// The parts, read-only, as the reports read them.
pub(super) struct View<'a> {
    pub(super) workers: &'a Workers,
    pub(super) dispatch: &'a Dispatcher,
    pub(super) admin: &'a Admin,
    /// The phase as `handoff status` names it.
    pub(super) phase: &'static str,
    pub(super) uptime: Duration,
    pub(super) listeners: Vec<String>,
    pub(super) totals: Totals,
    /// The last reload, as the lifecycle reports it.
    pub(super) reload: Option<ReloadStatus>,
}

/// A control command.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Command<'a> {
    Status,
    Reload,
    Stop,
    /// `scale N`, N in 1..=4096.
    Scale(usize),
    /// `drain ID`, as typed.
    Drain(&'a str),
}

/// Parses a control command line; an error is the message to answer with.
pub(super) fn parse_command(line: &str) -> Result<Command<'_>, String> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("status"), None, _) => Ok(Command::Status),
        (Some("reload"), None, _) => Ok(Command::Reload),
        (Some("stop"), None, _) => Ok(Command::Stop),
        (Some("scale"), Some(n), None) => match n.parse::<usize>() {
            Ok(n) if (1..=4096).contains(&n) => Ok(Command::Scale(n)),
            _ => Err(format!("scale takes a number of workers from 1 to 4096, not {n:?}")),
        },
        (Some("drain"), Some(id), None) => Ok(Command::Drain(id)),
        _ => Err(format!("unknown command {line:?}; try: status, reload, scale N, drain ID, stop")),
    }
}

/// The answer to a command other than `status`.
pub(super) fn reply(ok: bool, message: String, listeners: Vec<String>) -> Vec<u8> {
    let master = Some(MasterId { pid: std::process::id(), listeners });
    serde_json::to_vec(&Reply { ok, message, master, reload: None }).unwrap_or_default()
}

/// The answer to a `reload` that started: the reload's id, for the client to follow.
pub(super) fn reload_reply(id: u64, message: String, listeners: Vec<String>) -> Vec<u8> {
    let master = Some(MasterId { pid: std::process::id(), listeners });
    serde_json::to_vec(&Reply { ok: true, message, master, reload: Some(id) }).unwrap_or_default()
}

/// A snapshot for `handoff status`.
pub(super) fn status(v: &View<'_>) -> Status {
    let now = Instant::now();
    let slots = v.workers.slots();
    Status {
        pid: std::process::id(),
        phase: v.phase.into(),
        uptime_s: v.uptime.as_secs_f64(),
        policy: v.dispatch.policy(),
        workers_wanted: v.workers.slot_count(),
        listeners: v.listeners.clone(),
        workers: v
            .workers
            .iter()
            .map(|w| WorkerStatus {
                id: w.slot,
                pid: w.pid,
                state: serde_json::to_value(w.state)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                ready: w.ready,
                uptime_s: now.duration_since(w.started).as_secs_f64(),
                restarts: slots.get(w.slot).map(|s| s.restarts).unwrap_or(0),
                dispatched: w.dispatched,
                active: w.active(),
                unacked: w.unacked(),
                busy: w.busy,
                stalls: w.stalls,
            })
            .collect(),
        idle: v.dispatch.idle_len(),
        totals: v.totals.clone(),
        fairness: fairness(v.workers),
        admin: v.admin.status(),
        reload: v.reload.clone(),
    }
}

fn fairness(workers: &Workers) -> f64 {
    let per_slot: Vec<u64> = workers.slots().iter().map(|s| s.dispatched).collect();
    jain(&per_slot)
}

/// One labelled family of Prometheus counters: its HELP and TYPE, then a line per
/// label value.
fn labelled(o: &mut String, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
    let _ = writeln!(o, "# HELP handoff_{name} {help}\n# TYPE handoff_{name} counter");
    for (value, n) in values {
        let _ = writeln!(o, "handoff_{name}{{{label}=\"{value}\"}} {n}");
    }
}

pub(super) fn metrics_text(v: &View<'_>) -> String {
    let mut o = String::new();
    let t = &v.totals;
    let mut counter = |name: &str, help: &str, v: f64| {
        let _ = writeln!(o, "# HELP handoff_{name} {help}\n# TYPE handoff_{name} counter\nhandoff_{name} {v}");
    };
    counter("connections_accepted_total", "Connections accepted by the master.", t.accepted as f64);
    counter("connections_dispatched_total", "Connections handed to workers.", t.dispatched as f64);
    counter(
        "connections_handed_on_total",
        "Connections taken back from dead workers and handed on.",
        t.redispatched as f64,
    );
    counter("accept_paused_seconds_total", "Time accepting was paused after accept errors.", t.paused.as_secs_f64());
    counter(
        "connections_returned_total",
        "Idle keep-alive connections workers handed back to the master.",
        t.returned as f64,
    );
    counter(
        "connections_continued_total",
        "Handed-back connections dispatched again for their next request.",
        t.continued as f64,
    );
    counter(
        "connections_continued_at_return_total",
        "Of those continued: next request already there when handed back, placed at once.",
        t.continued_at_return as f64,
    );
    counter("workers_started_total", "Worker processes started.", t.spawned as f64);
    counter("workers_recycled_total", "Workers replaced after --max-requests.", t.recycled as f64);
    counter(
        "worker_output_dropped_bytes_total",
        "Bytes of worker stderr and master log dropped: the master's stderr was not being read.",
        t.worker_output_dropped as f64,
    );
    counter(
        "proxy_refused_total",
        "Connections to a PROXY listener closed unread: their source is not in its proxy-from.",
        t.proxy_refused as f64,
    );
    labelled(
        &mut o,
        "accept_errors_total",
        "Accept errors by kind.",
        "kind",
        &[("exhaustion", t.accept_exhausted), ("transient", t.accept_transient)],
    );
    let proxy_closed = t.proxy_errors.saturating_sub(t.proxy_header_timeouts + t.proxy_header_bad);
    labelled(
        &mut o,
        "connections_lost_total",
        "Connections closed without an answer from a worker, by cause.",
        "cause",
        &[
            ("worker_died_serving", t.lost_with_worker),
            ("worker_died_unread", t.lost_in_channel),
            ("not_received", t.lost_not_received),
            ("return_truncated", t.lost_return_truncated),
            ("proxy_header_timeout", t.proxy_header_timeouts),
            ("proxy_header_bad", t.proxy_header_bad),
            ("proxy_client_closed", proxy_closed),
            ("stop", t.lost_at_stop),
        ],
    );
    labelled(
        &mut o,
        "connections_retried_total",
        "Connections a worker never took, handed to another, by cause.",
        "cause",
        &[("worker_died_before_ack", t.redispatched), ("not_received", t.retried_not_received)],
    );
    labelled(
        &mut o,
        "idle_closed_total",
        "Idle connections held by the master and closed, by reason.",
        "reason",
        &[
            ("hangup", t.idle_hangups),
            ("timeout", t.idle_timeouts),
            ("evicted", t.idle_evicted),
            ("stop", t.idle_closed_at_stop),
            ("not_held", t.idle_not_held),
        ],
    );
    let _ = writeln!(
        o,
        "# HELP handoff_idle_connections Idle keep-alive connections the master holds.\n# TYPE handoff_idle_connections gauge\nhandoff_idle_connections {}",
        v.dispatch.idle_len()
    );
    labelled(
        &mut o,
        "worker_kills_total",
        "Workers killed by the master, by reason.",
        "reason",
        &[("protocol", t.protocol_kills), ("hung", t.hung_kills), ("ready_timeout", t.ready_timeouts)],
    );
    let _ = writeln!(o, "# HELP handoff_worker_failed_starts_total Worker starts that failed: ended before proven ready, or not ready within --ready-timeout.\n# TYPE handoff_worker_failed_starts_total counter\nhandoff_worker_failed_starts_total {}", t.failed_starts);
    let _ = writeln!(o, "# HELP handoff_reloads_total Reloads asked for (SIGHUP or ctl reload), refused ones included.\n# TYPE handoff_reloads_total counter\nhandoff_reloads_total {}", t.reloads);
    let _ = writeln!(o, "# HELP handoff_reloads_failed_total Reloads refused, or whose new workers did not become ready (the old ones kept serving).\n# TYPE handoff_reloads_failed_total counter\nhandoff_reloads_failed_total {}", t.reloads_failed);
    let in_progress = v.reload.as_ref().is_some_and(ReloadStatus::in_progress);
    let _ = writeln!(o, "# HELP handoff_reload_in_progress 1 while a reload replaces the workers.\n# TYPE handoff_reload_in_progress gauge\nhandoff_reload_in_progress {}", u8::from(in_progress));
    let _ = writeln!(
        o,
        "# HELP handoff_workers Worker slots wanted.\n# TYPE handoff_workers gauge\nhandoff_workers {}",
        v.workers.slot_count()
    );
    let _ = writeln!(o, "# HELP handoff_fairness_index Jain's index of connections dispatched per worker slot (1 = even).\n# TYPE handoff_fairness_index gauge\nhandoff_fairness_index {}", fairness(v.workers));
    let a = v.admin.status();
    let _ = writeln!(o, "# HELP handoff_admin_connections Connections open to the master's own endpoints.\n# TYPE handoff_admin_connections gauge");
    let _ = writeln!(o, "# HELP handoff_admin_refused_total Connections to the master's own endpoints refused, by reason: full (the endpoint's cap), peer (a control client of another user).\n# TYPE handoff_admin_refused_total counter");
    for (name, open, full) in [
        ("control", a.open.control, a.refused_full.control),
        ("metrics", a.open.metrics, a.refused_full.metrics),
        ("health", a.open.health, a.refused_full.health),
    ] {
        let _ = writeln!(o, "handoff_admin_connections{{endpoint=\"{name}\"}} {open}");
        let _ = writeln!(o, "handoff_admin_refused_total{{endpoint=\"{name}\",reason=\"full\"}} {full}");
    }
    let _ = writeln!(o, "handoff_admin_refused_total{{endpoint=\"control\",reason=\"peer\"}} {}", a.refused_peer);
    let _ = writeln!(o, "# HELP handoff_admin_reserve_used_total Admin connections accepted with a reserved descriptor (the master had no other).\n# TYPE handoff_admin_reserve_used_total counter\nhandoff_admin_reserve_used_total {}", a.from_reserve);
    type Field = fn(&Workers, usize) -> f64;
    let per_slot: [(&str, &str, &str, Field); 6] = [
        ("worker_dispatched_total", "counter", "Connections handed to the workers of this slot.", |m, s| {
            m.slots()[s].dispatched as f64
        }),
        ("worker_restarts_total", "counter", "Workers started in this slot after the first.", |m, s| {
            m.slots()[s].restarts as f64
        }),
        ("worker_active", "gauge", "Active connections of the slot's workers (from DONE).", |m, s| {
            m.iter().filter(|w| w.slot == s).map(|w| w.active() as f64).sum()
        }),
        ("worker_unacked", "gauge", "Connections sent to the slot's workers and not yet ACKed.", |m, s| {
            m.iter().filter(|w| w.slot == s).map(|w| w.unacked() as f64).sum()
        }),
        ("worker_busy", "gauge", "1 while one long request holds the slot's worker (BUSY to FREE).", |m, s| {
            m.iter().filter(|w| w.slot == s && w.busy).count() as f64
        }),
        (
            "worker_stalls_total",
            "counter",
            "Long requests the slot's current worker reported (BUSY); each sent its idle connections back.",
            |m, s| m.iter().filter(|w| w.slot == s).map(|w| w.stalls as f64).sum(),
        ),
    ];
    for (name, ty, help, f) in per_slot {
        let _ = writeln!(o, "# HELP handoff_{name} {help}\n# TYPE handoff_{name} {ty}");
        for s in 0..v.workers.slot_count() {
            let _ = writeln!(o, "handoff_{name}{{worker=\"{s}\"}} {}", f(v.workers, s));
        }
    }
    o
}
