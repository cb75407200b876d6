//! Privilege separation: the master may bind privileged ports as root; workers run as
//! `--user`/`--group`, with `PR_SET_NO_NEW_PRIVS`, before any worker code runs.
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
