//! Finding masters without guessing: the runtime directory each master registers in
//! (a private directory per user), one entry per master (pid, start time, listeners,
//! control socket), and choosing one by pid or listen address, refusing when the
//! choice is ambiguous.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use super::ControlError;

/// The directory where masters put their control sockets and registry entries when
/// `--control` is not given: `$HANDOFF_RUNTIME_DIR` if set (an absolute path); else
/// `/run/handoff` for root (the same for a system service and a root shell, which
/// often has `$XDG_RUNTIME_DIR=/run/user/0`); else `$XDG_RUNTIME_DIR/handoff` if that
/// is a directory of this user; else `/tmp/handoff-<uid>`.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HANDOFF_RUNTIME_DIR").filter(|d| Path::new(d).is_absolute()) {
        return d.into();
    }
    let uid = rustix::process::getuid();
    if uid.is_root() && Path::new("/run").is_dir() {
        return PathBuf::from("/run/handoff");
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| Path::new(d).is_absolute()) {
        // A runtime directory inherited from another user (`sudo` may keep it) is not ours.
        if std::fs::metadata(&x).is_ok_and(|m| m.is_dir() && m.uid() == uid.as_raw()) {
            return Path::new(&x).join("handoff");
        }
    }
    PathBuf::from(format!("/tmp/handoff-{}", uid.as_raw()))
}

/// Creates the runtime directory (mode 0700) if it is missing, then checks it as
/// [`check_private_dir`] does.
pub fn prepare_runtime_dir(dir: &Path) -> Result<(), ControlError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(ControlError::Io { path: dir.into(), source }),
    }
    check_private_dir(dir)
}

/// Checks that `dir` is a directory (not a symlink) of this user that no one else can
/// write or read: anything else may have been put there to catch the commands.
pub fn check_private_dir(dir: &Path) -> Result<(), ControlError> {
    let m = std::fs::symlink_metadata(dir).map_err(|source| ControlError::Io { path: dir.into(), source })?;
    let uid = rustix::process::getuid().as_raw();
    let why = if m.file_type().is_symlink() {
        "is a symbolic link".to_string()
    } else if !m.is_dir() {
        "is not a directory".to_string()
    } else if m.uid() != uid {
        format!("belongs to uid {}, not to you (uid {uid})", m.uid())
    } else if m.mode() & 0o077 != 0 {
        format!("has mode {:04o}: others may use it", m.mode() & 0o7777)
    } else {
        return Ok(());
    };
    Err(ControlError::Unsafe { path: dir.into(), why })
}

/// Checks a control socket path given with `--control` before the master binds it:
/// its directory must not let others replace it (owned by this user or root, and not
/// writable by others unless sticky, like `/tmp`), and a file already there must be
/// this user's socket (a stale one is replaced; a live master's is refused when bound).
pub fn check_socket_path(path: &Path) -> Result<(), ControlError> {
    let uid = rustix::process::getuid().as_raw();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::symlink_metadata(path) {
        Err(_) => {}
        Ok(m) if m.uid() != uid => {
            return Err(ControlError::Unsafe {
                path: path.into(),
                why: format!(
                    "already exists and belongs to uid {}: someone else may be listening there in a master's place",
                    m.uid()
                ),
            })
        }
        Ok(m) if !m.file_type().is_socket() => {
            return Err(ControlError::Unsafe { path: path.into(), why: "already exists and is not a socket".into() })
        }
        Ok(_) => {}
    }
    if let Ok(m) = std::fs::metadata(dir) {
        let open = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if m.uid() != uid && m.uid() != 0 {
            let why = format!("is in {}, which belongs to uid {}", dir.display(), m.uid());
            return Err(ControlError::Unsafe { path: path.into(), why });
        }
        if open {
            let why = format!("is in {}, which others may write (mode {:04o})", dir.display(), m.mode() & 0o7777);
            return Err(ControlError::Unsafe { path: path.into(), why });
        }
    }
    Ok(())
}

/// The file name stem of this process's next master (`PID`, then `PID-1`, ... for
/// further masters a library program runs in the same process).
pub fn next_stem() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    match N.fetch_add(1, Ordering::Relaxed) {
        0 => std::process::id().to_string(),
        n => format!("{}-{n}", std::process::id()),
    }
}

/// A running master as its registry entry (`<runtime dir>/<pid>.json`) describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MasterEntry {
    /// The master's pid.
    pub pid: u32,
    /// The process's start time (field 22 of `/proc/PID/stat`): tells the master from a
    /// later process that got the same pid.
    #[serde(default)]
    pub start_time: u64,
    /// Its listen addresses, as `handoff status` shows them.
    pub listeners: Vec<String>,
    /// Its control socket.
    pub control: PathBuf,
}

impl std::fmt::Display for MasterEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "master pid {} on {} (control {})", self.pid, self.listeners.join(", "), self.control.display())
    }
}

/// A process's start time in clock ticks since boot, from `/proc/PID/stat`.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the master an entry describes still runs.
fn alive(e: &MasterEntry) -> bool {
    match process_start_time(e.pid) {
        Some(t) => e.start_time == 0 || t == e.start_time,
        // /proc works, and has no such process.
        None if Path::new("/proc/self/stat").exists() => false,
        // No /proc (a sandbox): whether the pid exists at all is all we can tell.
        None => i32::try_from(e.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|p| matches!(rustix::process::test_kill_process(p), Ok(()) | Err(rustix::io::Errno::PERM))),
    }
}

/// Writes a registry entry (through a temporary file and a rename: a reader sees the
/// old entry or the new one, never half of one).
pub fn write_entry(path: &Path, entry: &MasterEntry) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(entry).map_err(io::Error::other)?;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&text)?;
    std::fs::rename(&tmp, path)
}

/// The masters of this user that run now, by pid, from the registry in `dir`.
/// Entries of masters that have died are removed (with their socket, when it is in
/// `dir`). A missing directory means no master.
pub fn list_masters_in(dir: &Path) -> Result<Vec<MasterEntry>, ControlError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ControlError::Io { path: dir.into(), source }),
    };
    check_private_dir(dir)?;
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let p = ent.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Some(e) = std::fs::read(&p).ok().and_then(|b| serde_json::from_slice::<MasterEntry>(&b).ok()) else {
            continue;
        };
        if alive(&e) {
            out.push(e);
        } else {
            let _ = std::fs::remove_file(&p);
            if e.control.parent() == Some(dir) {
                let _ = std::fs::remove_file(&e.control);
            }
        }
    }
    out.sort_by_key(|e| e.pid);
    Ok(out)
}

/// [`list_masters_in`] the [`runtime_dir`].
pub fn list_masters() -> Result<Vec<MasterEntry>, ControlError> {
    list_masters_in(&runtime_dir())
}

/// Which master a command is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Selector {
    /// The one master running (an error if there are several).
    #[default]
    Only,
    /// The master with this pid.
    Pid(u32),
    /// The master listening on this address (`127.0.0.1:8080`, `unix:/path`, or just a
    /// port: `8080`).
    Listen(String),
}

impl Selector {
    fn matches(&self, e: &MasterEntry) -> bool {
        match self {
            Selector::Only => true,
            Selector::Pid(p) => e.pid == *p,
            Selector::Listen(a) => e.listeners.iter().any(|l| listen_matches(l, a)),
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Only => write!(f, "any master"),
            Selector::Pid(p) => write!(f, "--master {p}"),
            Selector::Listen(a) => write!(f, "--listen {a}"),
        }
    }
}

/// Whether listener `l` (as a master shows it) is the address `a` a user typed.
pub(super) fn listen_matches(l: &str, a: &str) -> bool {
    if l == a || l.strip_prefix("unix:") == Some(a) {
        return true;
    }
    if a.parse::<u16>().is_ok() {
        return l.rsplit_once(':').is_some_and(|(_, port)| port == a);
    }
    matches!((l.parse::<std::net::SocketAddr>(), a.parse::<std::net::SocketAddr>()), (Ok(x), Ok(y)) if x == y)
}

/// The one running master that `sel` names, from the registry in `dir`.
pub fn find_master_in(dir: &Path, sel: &Selector) -> Result<MasterEntry, ControlError> {
    let all = list_masters_in(dir)?;
    let mut found: Vec<MasterEntry> = all.iter().filter(|e| sel.matches(e)).cloned().collect();
    match (found.len(), sel) {
        (1, _) => Ok(found.remove(0)),
        (0, _) if all.is_empty() => Err(ControlError::NoMaster { dir: dir.into() }),
        (0, _) => Err(ControlError::NoMatch { selector: sel.to_string(), running: list_text(&all).trim_end().into() }),
        _ => Err(ControlError::Ambiguous { n: found.len(), running: list_text(&found).trim_end().into() }),
    }
}

/// [`find_master_in`] the [`runtime_dir`].
pub fn find_master(sel: &Selector) -> Result<MasterEntry, ControlError> {
    find_master_in(&runtime_dir(), sel)
}

/// One line per master: pid, listeners, control socket.
pub fn list_text(masters: &[MasterEntry]) -> String {
    let mut out = format!("{:>8}  {:<40}  {}\n", "PID", "LISTENING ON", "CONTROL SOCKET");
    for e in masters {
        out += &format!("{:>8}  {:<40}  {}\n", e.pid, e.listeners.join(", "), e.control.display());
    }
    out
}
