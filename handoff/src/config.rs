//! Settings: what the master runs, from the command line and/or a TOML file.
//!
//! [`Config`] is the validated, complete set of settings the master runs with.
//! [`ConfigFile`] is the TOML form, every key optional; the command line overrides the
//! file, which overrides the defaults. Unknown keys are errors (a typo must not be
//! silently ignored), and every error names the key or value and what to write instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::listener::ListenSpec;
pub use crate::listener::SourceNet;
use crate::policy::Policy;
pub use crate::wire::HandBack;
pub use crate::worker::access_log::AccessLog;

/// Default listen address of `handoff run` with no `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// A configuration problem, said so that the user knows what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a bad value.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with line and column.
        message: String,
    },
    /// A setting has a value that cannot work.
    #[error("{0}")]
    Invalid(String),
}

/// The body of a forked worker: a Rust closure the master runs in each child it forks
/// (see [`crate::Server::serve`]).
///
/// It is called once per worker process, after the fork, with the worker's
/// [`Context`](crate::worker::Context); the process exits when it returns (status 0 on
/// `Ok`, 1 on `Err`, 101 on a panic). Two `WorkerFn`s are equal only if they are the
/// same closure (`Arc::ptr_eq`), and it serializes as the string `"<closure>"`, so that
/// [`Config`] stays comparable and printable.
#[derive(Clone)]
pub struct WorkerFn(pub Arc<WorkerBody>);

pub use crate::worker::WorkerBody;

impl WorkerFn {
    /// Wraps a closure.
    pub fn new(f: impl Fn(crate::worker::Context) -> Result<(), crate::BoxError> + Send + Sync + 'static) -> WorkerFn {
        WorkerFn(Arc::new(f))
    }
}

impl std::fmt::Debug for WorkerFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerFn(<closure>)")
    }
}

impl PartialEq for WorkerFn {
    fn eq(&self, other: &WorkerFn) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for WorkerFn {}

impl Serialize for WorkerFn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<closure>")
    }
}

/// What workers run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum WorkerKind {
    /// The built-in HTTP worker, optionally serving files from a directory.
    Builtin {
        /// `--static DIR`.
        static_dir: Option<PathBuf>,
        /// `--static-no-symlinks`: follow no symlink under `static_dir` (by default,
        /// those that stay inside it).
        static_no_symlinks: bool,
        /// `--test-knobs`: honour `?cpu_ms=` and `?sleep_ms=` (tests and benchmarks).
        test_knobs: bool,
    },
    /// An external program and its arguments.
    Command(Vec<String>),
    /// A Rust closure run in a child the master forks (library use: [`crate::Server`]).
    Fork(WorkerFn),
}

/// The complete, validated settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Listen addresses, in order (the listener index of each connection).
    pub listen: Vec<ListenSpec>,
    /// Whether the addresses were given (rather than the default); with socket
    /// activation and none given, the master uses whatever systemd passed.
    #[serde(skip)]
    pub listen_given: bool,
    /// Number of worker processes.
    pub workers: usize,
    /// Balancing policy.
    pub policy: Policy,
    /// A worker holding this many active connections gets no more.
    pub max_conns_per_worker: Option<u32>,
    /// What workers run.
    pub worker: WorkerKind,
    /// A worker with work that is silent this long is killed and replaced.
    pub worker_timeout: Duration,
    /// How long a graceful stop waits for workers before killing them.
    pub shutdown_timeout: Duration,
    /// How long a graceful stop keeps accepting (health 503) before draining.
    pub drain_delay: Duration,
    /// Recycle a worker after this many connections.
    pub max_requests: Option<u64>,
    /// Add up to this many (random) to `max_requests`, per worker.
    pub max_requests_jitter: u64,
    /// Interval at which workers are asked to send HEARTBEAT.
    pub heartbeat: Duration,
    /// Control socket path.
    pub control: Option<PathBuf>,
    /// Prometheus metrics address.
    pub metrics: Option<std::net::SocketAddr>,
    /// Health endpoint address.
    pub health: Option<std::net::SocketAddr>,
    /// Run workers as this user.
    pub user: Option<String>,
    /// Run workers as this group.
    pub group: Option<String>,
    /// The master's own CPU scheduling.
    pub master_sched: MasterSched,
    /// When workers hand idle keep-alive connections back (request-level balancing).
    pub hand_back: crate::wire::HandBack,
    /// How long the master holds an idle connection a worker handed back.
    pub keepalive_timeout: Duration,
    /// Most idle connections the master holds; beyond it the oldest are closed.
    pub max_idle: usize,
    /// The built-in worker's access log on standard output, if any.
    pub access_log: Option<crate::worker::access_log::AccessLog>,
    /// A worker not proven (READY, or alive long enough) this long after it started is
    /// a failed start: killed and started again with backoff (see
    /// [`DEFAULT_READY_TIMEOUT`]).
    pub ready_timeout: Duration,
}

/// How long the master keeps an idle keep-alive connection a worker handed back, by
/// default: nginx's `keepalive_timeout` (75 s). Longer than the idle timeouts of the
/// pools that sit in front of servers (nginx `upstream keepalive_timeout` 60 s,
/// HAProxy's pool purge 5 s, browsers and client pools 15-60 s), so that the pool, not
/// the server, closes an idle connection: a server that closes first races the pool's
/// next request on that connection.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);

/// How long a new worker has to prove itself by default (`--ready-timeout`): the same
/// 60 s a new master has in an upgrade. A worker that imports a large app (a Django
/// or Flask project, a JVM) commonly takes seconds and sometimes tens of seconds to
/// say READY on a loaded host, so a shorter default would kill healthy deploys; a
/// longer one only delays the verdict on a hung start, since a start that crashes is
/// counted when it crashes.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Most idle connections the master holds by default (at most half its descriptor
/// limit, found at start).
pub const DEFAULT_MAX_IDLE: usize = 16_384;

/// The master's CPU scheduling (`--master-sched`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MasterSched {
    /// `SCHED_BATCH` (if started in the default `SCHED_OTHER`): woken by a connection,
    /// the master does not preempt a busy worker, and hands on in larger batches.
    /// Its workers run in `SCHED_OTHER` all the same.
    #[default]
    Batch,
    /// As started (`SCHED_OTHER` unless `chrt` or systemd said otherwise).
    Inherit,
}

impl std::str::FromStr for MasterSched {
    type Err = String;
    fn from_str(s: &str) -> Result<MasterSched, String> {
        match s {
            "batch" => Ok(MasterSched::Batch),
            "inherit" => Ok(MasterSched::Inherit),
            _ => Err(format!("unknown master scheduling {s:?}; choose batch or inherit")),
        }
    }
}

/// The TOML file: the same settings, each optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    /// `listen = ["127.0.0.1:8080", "unix:/run/app.sock"]`
    pub listen: Option<Vec<ListenSpec>>,
    /// `workers = 4`
    pub workers: Option<usize>,
    /// `policy = "least-conn"`
    pub policy: Option<Policy>,
    /// `max-conns-per-worker = 100`
    pub max_conns_per_worker: Option<u32>,
    /// `command = ["python3", "worker.py"]`
    pub command: Option<Vec<String>>,
    /// `static = "/srv/www"`
    #[serde(rename = "static")]
    pub static_dir: Option<PathBuf>,
    /// `static-no-symlinks = true`
    pub static_no_symlinks: Option<bool>,
    /// `test-knobs = true` (never on a public server: any client could stop a worker)
    pub test_knobs: Option<bool>,
    /// `worker-timeout = 30` (seconds)
    pub worker_timeout: Option<f64>,
    /// `shutdown-timeout = 30` (seconds)
    pub shutdown_timeout: Option<f64>,
    /// `drain-delay = 2` (seconds)
    pub drain_delay: Option<f64>,
    /// `max-requests = 10000`
    pub max_requests: Option<u64>,
    /// `max-requests-jitter = 500`
    pub max_requests_jitter: Option<u64>,
    /// `heartbeat-ms = 1000`
    pub heartbeat_ms: Option<u64>,
    /// `control = "/run/handoff.sock"`
    pub control: Option<PathBuf>,
    /// `metrics = "127.0.0.1:9100"`
    pub metrics: Option<std::net::SocketAddr>,
    /// `health = "127.0.0.1:9101"`
    pub health: Option<std::net::SocketAddr>,
    /// `user = "www-data"`
    pub user: Option<String>,
    /// `group = "www-data"`
    pub group: Option<String>,
    /// `master-sched = "batch"`
    pub master_sched: Option<MasterSched>,
    /// `hand-back = "auto"`
    pub hand_back: Option<crate::wire::HandBack>,
    /// `keepalive-timeout = 75` (seconds)
    pub keepalive_timeout: Option<f64>,
    /// `max-idle = 16384`
    pub max_idle: Option<usize>,
    /// `access-log = "combined"` (or `"json"`)
    pub access_log: Option<crate::worker::access_log::AccessLog>,
    /// `ready-timeout = 60` (seconds)
    pub ready_timeout: Option<f64>,
}

impl ConfigFile {
    /// Reads a config file and parses its text with `parse` (the `handoff` command
    /// passes its TOML parser; the library itself has no file format of its own).
    #[doc(hidden)]
    pub fn load(path: &Path, parse: ParseConfig) -> Result<ConfigFile, ConfigError> {
        // A FIFO or device would block the master's loop on reload.
        match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => {
                let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
                return Err(ConfigError::Read { path: path.into(), source });
            }
            _ => {}
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        parse(&text)
            .map_err(|message| ConfigError::Parse { path: path.into(), message: message.trim_end().to_string() })
    }

    /// Fills every unset key of `self` from `lower` (self wins).
    pub fn or(self, lower: ConfigFile) -> ConfigFile {
        macro_rules! pick {
            ($($f:ident),*) => { ConfigFile { $($f: self.$f.or(lower.$f)),* } };
        }
        pick!(
            listen,
            workers,
            policy,
            max_conns_per_worker,
            command,
            static_dir,
            static_no_symlinks,
            test_knobs,
            worker_timeout,
            shutdown_timeout,
            drain_delay,
            max_requests,
            max_requests_jitter,
            heartbeat_ms,
            control,
            metrics,
            health,
            user,
            group,
            master_sched,
            hand_back,
            keepalive_timeout,
            max_idle,
            access_log,
            ready_timeout
        )
    }

    /// Applies defaults and checks every value.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let workers = self.workers.unwrap_or_else(default_workers);
        if workers == 0 {
            return invalid("workers must be at least 1 (try --workers 1, or leave it out for one per core)".into());
        }
        if workers > 4096 {
            return invalid(format!("{workers} workers is more than the 4096 handoff supports"));
        }
        let listen_given = self.listen.is_some();
        let listen = self.listen.unwrap_or_else(|| vec![DEFAULT_LISTEN.parse().expect("the default parses")]);
        if listen.is_empty() {
            return invalid("no listen address: give at least one --listen ADDR".into());
        }
        if listen.len() > u16::MAX as usize {
            return invalid("too many listeners".into());
        }
        let static_no_symlinks = self.static_no_symlinks.unwrap_or(false);
        if self.command.is_some() && self.access_log.is_some() {
            return invalid("--access-log is the built-in worker's; a worker command writes its own access log".into());
        }
        let test_knobs = self.test_knobs.unwrap_or(false);
        if self.command.is_some() && test_knobs {
            return invalid("--test-knobs shapes the built-in worker; a worker command has its own".into());
        }
        if self.static_dir.is_none() && static_no_symlinks {
            return invalid("--static-no-symlinks needs --static DIR".into());
        }
        let worker = match (self.command, self.static_dir) {
            (Some(_), Some(_)) => {
                return invalid(
                    "--static serves files with the built-in worker; it cannot be combined with a worker command"
                        .into(),
                )
            }
            (Some(cmd), None) => {
                check_command(&cmd)?;
                WorkerKind::Command(cmd)
            }
            (None, Some(dir)) => {
                if !dir.is_dir() {
                    return invalid(format!("--static {}: not a directory", dir.display()));
                }
                WorkerKind::Builtin { static_dir: Some(dir), static_no_symlinks, test_knobs }
            }
            (None, None) => WorkerKind::Builtin { static_dir: None, static_no_symlinks, test_knobs },
        };
        // The built-in worker speaks HTTP, where the client speaks first: its TCP
        // listeners defer accept unless told not to (a connection then reaches the master
        // with its request, and the worker answers it at once; BENCHMARKS.md). Workers of
        // other kinds may speak protocols where the server speaks first: as asked.
        let listen = if matches!(worker, WorkerKind::Builtin { .. }) {
            listen
                .into_iter()
                .map(|mut l| {
                    l.deferred |= !l.no_deferred && matches!(l.addr, crate::listener::ListenAddr::Tcp(_));
                    l
                })
                .collect()
        } else {
            listen
        };
        if self.max_conns_per_worker == Some(0) {
            return invalid("max-conns-per-worker must be at least 1 (leave it out for no limit)".into());
        }
        if self.max_requests == Some(0) {
            return invalid("max-requests must be at least 1 (leave it out to never recycle)".into());
        }
        let secs = |name: &str, v: Option<f64>, d: f64| -> Result<Duration, ConfigError> {
            let v = v.unwrap_or(d);
            if !(v.is_finite() && v > 0.0 && v < 1e9) {
                return Err(ConfigError::Invalid(format!("{name} must be a positive number of seconds, not {v}")));
            }
            Ok(Duration::from_secs_f64(v))
        };
        let heartbeat_ms = self.heartbeat_ms.unwrap_or(1000);
        if !(10..=600_000).contains(&heartbeat_ms) {
            return invalid(format!("heartbeat-ms must be between 10 and 600000, not {heartbeat_ms}"));
        }
        let worker_timeout = secs("worker-timeout", self.worker_timeout, 30.0)?;
        if self.max_idle == Some(0) {
            return invalid("max-idle must be at least 1 (use --hand-back off to hold no idle connection)".into());
        }
        Ok(Config {
            listen,
            listen_given,
            workers,
            policy: self.policy.unwrap_or_default(),
            max_conns_per_worker: self.max_conns_per_worker,
            worker,
            worker_timeout,
            shutdown_timeout: secs("shutdown-timeout", self.shutdown_timeout, 30.0)?,
            drain_delay: match self.drain_delay {
                None | Some(0.0) => Duration::ZERO,
                d => secs("drain-delay", d, 0.0)?,
            },
            max_requests: self.max_requests,
            max_requests_jitter: self.max_requests_jitter.unwrap_or(0),
            // A worker must be able to beat several times within the timeout, or healthy
            // workers would be taken for hung ones.
            heartbeat: Duration::from_millis(heartbeat_ms).min(worker_timeout / 3),
            control: self.control,
            metrics: self.metrics,
            health: self.health,
            user: self.user,
            group: self.group,
            master_sched: self.master_sched.unwrap_or_default(),
            hand_back: self.hand_back.unwrap_or_default(),
            keepalive_timeout: secs(
                "keepalive-timeout",
                self.keepalive_timeout,
                DEFAULT_KEEPALIVE_TIMEOUT.as_secs_f64(),
            )?,
            max_idle: self.max_idle.unwrap_or(DEFAULT_MAX_IDLE),
            access_log: self.access_log,
            ready_timeout: secs("ready-timeout", self.ready_timeout, DEFAULT_READY_TIMEOUT.as_secs_f64())?,
        })
    }
}

/// Parses a config file's text: the `handoff` command passes its TOML parser.
#[doc(hidden)]
pub type ParseConfig = fn(&str) -> Result<ConfigFile, String>;

/// Where the settings came from, so that a reload can read them again (the `handoff`
/// command's; not part of the API).
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// Settings given on the command line (they win over the file).
    pub cli: ConfigFile,
    /// The config file, if any, and how to parse its text.
    pub file: Option<(PathBuf, ParseConfig)>,
}

impl ConfigSource {
    /// Reads and validates the settings again.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let merged = match &self.file {
            Some((path, parse)) => self.cli.clone().or(ConfigFile::load(path, *parse)?),
            None => self.cli.clone(),
        };
        merged.resolve()
    }
}

/// One worker per core.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Checks that the worker program exists and is executable, so that a typo is one
/// clear error at start-up instead of a crash loop.
fn check_command(cmd: &[String]) -> Result<(), ConfigError> {
    let Some(prog) = cmd.first().filter(|p| !p.is_empty()) else {
        return Err(ConfigError::Invalid("the worker command is empty: give a program after --".into()));
    };
    match find_program(Path::new(prog)) {
        Some(_) => Ok(()),
        None => Err(ConfigError::Invalid(format!(
            "worker command {prog:?} not found or not executable{}",
            if prog.contains('/') { "" } else { " in $PATH" }
        ))),
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Resolves a program the way `execvp` would.
pub(crate) fn find_program(prog: &Path) -> Option<PathBuf> {
    if prog.components().count() > 1 || prog.is_absolute() {
        return is_executable(prog).then(|| prog.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| is_executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = ConfigFile::default().resolve().unwrap();
        // The built-in worker speaks HTTP: its TCP listeners defer accept by default.
        let mut deferred: ListenSpec = DEFAULT_LISTEN.parse().unwrap();
        deferred.deferred = true;
        assert_eq!(c.listen, vec![deferred]);
        assert_eq!(c.workers, default_workers());
        assert_eq!(c.policy, Policy::LeastConn);
        assert_eq!(c.worker, WorkerKind::Builtin { static_dir: None, static_no_symlinks: false, test_knobs: false });
    }

    #[test]
    fn invalid_values_are_explained() {
        let e = ConfigFile { workers: Some(0), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
        let e = ConfigFile { command: Some(vec!["/nonexistent/prog".into()]), ..Default::default() }
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("not found or not executable"), "{e}");
        let e = ConfigFile { command: Some(vec!["no-such-program-xyz".into()]), ..Default::default() }
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("$PATH"), "{e}");
        let e = ConfigFile { worker_timeout: Some(-1.0), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(e.contains("worker-timeout"), "{e}");
        let e = ConfigFile { ready_timeout: Some(0.0), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(e.contains("ready-timeout must be a positive number of seconds"), "{e}");
    }

    #[test]
    fn ready_timeout_defaults_to_a_minute() {
        assert_eq!(ConfigFile::default().resolve().unwrap().ready_timeout, DEFAULT_READY_TIMEOUT);
        let c = ConfigFile { ready_timeout: Some(2.5), ..Default::default() }.resolve().unwrap();
        assert_eq!(c.ready_timeout, Duration::from_millis(2500));
    }

    #[test]
    fn heartbeat_fits_several_times_in_the_worker_timeout() {
        let c = ConfigFile { worker_timeout: Some(0.6), ..Default::default() }.resolve().unwrap();
        assert_eq!(c.heartbeat, Duration::from_millis(200));
        let c = ConfigFile::default().resolve().unwrap();
        assert_eq!(c.heartbeat, Duration::from_millis(1000));
    }

    #[test]
    fn command_line_wins_over_file() {
        let cli = ConfigFile { workers: Some(2), ..Default::default() };
        let file = ConfigFile { workers: Some(8), policy: Some(Policy::P2c), ..Default::default() };
        let c = cli.or(file).resolve().unwrap();
        assert_eq!((c.workers, c.policy), (2, Policy::P2c));
    }
}
