//! Privilege separation: the master may bind privileged ports as root; workers run as
//! `--user`/`--group`, with `PR_SET_NO_NEW_PRIVS`, before any worker code runs: for
//! an exec'd worker between `fork` and `exec`, for a forked closure in the child
//! before the closure is called ([`drop_in_forked_child`]).
//!
//! Workers never need to bind or hold a listening socket (the master accepts for
//! them), so a worker compromised by a client holds nothing but its own connections.
//! Names are looked up in `/etc/passwd` and `/etc/group` (numeric ids work too); the
//! master does not load NSS modules, which would bring threads and sockets into it.

use std::io;

use crate::config::Config;

fn lookup(file: &str, name: &str) -> io::Result<Option<(u32, u32)>> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(Some((n, n)));
    }
    let text = std::fs::read_to_string(file)?;
    Ok(text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let second = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0);
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok().map(|id| (id, second))).flatten()
    }))
}

/// The uid workers run as, from `--user`.
pub fn uid(cfg: &Config) -> io::Result<Option<u32>> {
    let Some(user) = &cfg.user else { return Ok(None) };
    match lookup("/etc/passwd", user)? {
        Some((uid, _)) => Ok(Some(uid)),
        None => Err(io::Error::new(io::ErrorKind::NotFound, format!("--user {user}: no such user in /etc/passwd"))),
    }
}

/// The gid workers run as: `--group`, else the primary group of `--user`.
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
    if user.parse::<u32>().is_ok() {
        return Ok(None);
    }
    Ok(lookup("/etc/passwd", user)?.map(|(_, gid)| gid))
}

/// Becomes `uid`/`gid` for good, in a forked worker before its closure runs: no
/// supplementary groups (as root only: anyone else cannot change them and has no
/// root's groups to shed), the group, then the user (after which the others could no
/// longer be changed), then no_new_privs, as `Command::uid`/`gid` and
/// `spawn_with_channel` do for exec'd workers.
///
/// rustix's calls change the calling thread only; that is the whole process here,
/// because a forked child has exactly one thread.
pub fn drop_in_forked_child(uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    use rustix::process::{Gid, Uid};
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    if rustix::process::geteuid().is_root() {
        rustix::thread::set_thread_groups(&[])?;
    }
    if let Some(gid) = gid {
        rustix::thread::set_thread_gid(Gid::from_raw(gid))?;
    }
    if let Some(uid) = uid {
        rustix::thread::set_thread_uid(Uid::from_raw(uid))?;
    }
    rustix::thread::set_no_new_privs(true)?;
    Ok(())
}
