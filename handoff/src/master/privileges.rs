//! Privilege separation: the master may bind privileged ports as root; workers run as
//! `--user`/`--group`, with `PR_SET_NO_NEW_PRIVS`, before any worker code runs: for
//! an exec'd worker between `fork` and `exec`, for a forked closure in the child
//! before the closure is called (both in `sys::process`).
//!
//! Workers never need to bind or hold a listening socket (the master accepts for
//! them), so a worker compromised by a client holds nothing but its own connections.
//! Names are looked up in `/etc/passwd` and `/etc/group` (numeric ids work too); the
//! master does not load NSS modules, which would bring threads and sockets into it.

use std::io;

use crate::config::Config;

/// The line of `file` (`/etc/passwd` or `/etc/group` format) for `name`, a name or a
/// numeric id: (its id, its fourth field as a number: the primary group in
/// `/etc/passwd`).
fn lookup(file: &str, name: &str) -> io::Result<Option<(u32, Option<u32>)>> {
    let numeric = name.parse::<u32>().ok();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        // A numeric id needs no file (a minimal container may have none).
        Err(e) if e.kind() == io::ErrorKind::NotFound && numeric.is_some() => String::new(),
        Err(e) => return Err(e),
    };
    let found = text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let id = f.get(2)?.parse::<u32>().ok()?;
        let matches = match numeric {
            Some(n) => id == n,
            None => f[0] == name,
        };
        matches.then(|| (id, f.get(3).and_then(|g| g.parse().ok())))
    });
    Ok(found.or(numeric.map(|n| (n, None))))
}

/// The uid workers run as, from `--user`.
pub fn uid(cfg: &Config) -> io::Result<Option<u32>> {
    let Some(user) = &cfg.user else { return Ok(None) };
    match lookup("/etc/passwd", user)? {
        Some((uid, _)) => Ok(Some(uid)),
        None => Err(io::Error::new(io::ErrorKind::NotFound, format!("--user {user}: no such user in /etc/passwd"))),
    }
}

/// The gid workers run as: `--group`, else the primary group of `--user` (a numeric
/// `--user` too, from its `/etc/passwd` line). A worker never keeps the master's
/// group by default: a `--user` with no group to take is an error.
pub fn gid(cfg: &Config) -> io::Result<Option<u32>> {
    if let Some(group) = &cfg.group {
        return match lookup("/etc/group", group)? {
            Some((gid, _)) => Ok(Some(gid)),
            None => {
                Err(io::Error::new(io::ErrorKind::NotFound, format!("--group {group}: no such group in /etc/group")))
            }
        };
    }
    let Some(user) = &cfg.user else { return Ok(None) };
    match lookup("/etc/passwd", user)? {
        Some((_, Some(gid))) => Ok(Some(gid)),
        _ => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("--user {user} has no /etc/passwd line to take a group from: give --group too"),
        )),
    }
}

/// As root, lets every process the master starts come back to nice 0 after lowering
/// its own priority (`RLIMIT_NICE` 20: no higher than the default, never above it).
/// A worker's stall watch lowers the priority of a thread held by one long request and
/// restores it when that request ends (`worker::stall`); a worker that runs as
/// `--user` could not restore it with the usual limit of 0, and so would not lower it.
/// Without root nothing changes (an administrator can grant the same with systemd's
/// `LimitNICE=20`).
pub fn let_workers_restore_priority() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let now = getrlimit(Resource::Nice);
    if now.current.unwrap_or(u64::MAX) >= 20 {
        return;
    }
    let max = now.maximum.map(|m| m.max(20));
    if let Err(e) = setrlimit(Resource::Nice, Rlimit { current: Some(20), maximum: max }) {
        tracing::debug!("RLIMIT_NICE stays as it was ({e}): workers will not lower a held thread's priority");
    }
}
