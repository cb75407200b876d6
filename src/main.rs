//! The `handoff` command: run a master with workers, or act as a built-in worker.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use handoff::__private::{control, master::Master, sys, worker as builtin};
use handoff::config::{AccessLog, ConfigFile, ConfigSource, HandBack, ListenSpec, MasterSched, ParseConfig};
use handoff::policy::Policy;

mod config_file;

#[derive(Parser)]
#[command(
    name = "handoff",
    version,
    about = "One master accepts, workers serve: connections handed to a chosen worker over SCM_RIGHTS"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// RunArgs is big and parsed once: boxing it buys nothing (main boxes it; drop this then).
#[derive(Subcommand)]
enum Cmd {
    /// Run a master and its workers (the built-in HTTP worker unless a command follows `--`).
    Run(Box<RunArgs>),
    /// Show a running master's workers and counters (through its control socket), or
    /// list the running masters.
    Status {
        #[command(flatten)]
        target: Target,
        /// List the running masters (pid, listeners, control socket) instead
        #[arg(long, conflicts_with_all = ["control", "master", "listen"])]
        list: bool,
        /// Print JSON for scripts
        #[arg(long)]
        json: bool,
    },
    /// Steer a running master: reload | scale N | drain ID | stop.
    Ctl {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        action: CtlAction,
    },
    /// Measure handoff against the kernel's connection models (shared queue, SO_REUSEPORT).
    Bench(handoff_bench::BenchArgs),
    /// Internal: a worker of a `handoff bench` kernel model.
    #[command(hide = true)]
    BenchWorker(handoff_bench::WorkerArgs),
    /// Internal: the built-in HTTP worker, started by the master.
    #[command(hide = true)]
    Worker {
        /// Serve files from this directory.
        #[arg(long = "static")]
        static_dir: Option<PathBuf>,
        /// Follow no symlink under the static directory.
        #[arg(long)]
        static_no_symlinks: bool,
        /// Honour `?cpu_ms=` and `?sleep_ms=`.
        #[arg(long)]
        test_knobs: bool,
        /// Test suite only: break the protocol this way.
        #[arg(long, value_parser = |s: &str| s.parse::<builtin::faults::Fault>())]
        misbehave: Option<builtin::faults::Fault>,
        /// Test suite only: only the worker in this slot misbehaves.
        #[arg(long)]
        misbehave_slot: Option<usize>,
    },
}

/// Which master `status` and `ctl` talk to: the only one running, unless one of these
/// chooses (masters register in /run/handoff for root, else $XDG_RUNTIME_DIR/handoff,
/// else /tmp/handoff-UID; $HANDOFF_RUNTIME_DIR overrides).
#[derive(Args)]
struct Target {
    /// The master's control socket, as given to `handoff run --control`
    #[arg(long, value_name = "PATH", conflicts_with_all = ["master", "listen"])]
    control: Option<PathBuf>,
    /// The running master with this pid
    #[arg(long, value_name = "PID", conflicts_with = "listen")]
    master: Option<u32>,
    /// The running master listening on ADDR (127.0.0.1:8080, unix:/path, or a port)
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

impl Target {
    /// The control socket to use.
    fn path(self) -> Result<PathBuf, String> {
        use control::Selector;
        if let Some(p) = self.control {
            return Ok(p);
        }
        let sel = match (self.master, self.listen) {
            (Some(pid), _) => Selector::Pid(pid),
            (None, Some(a)) => Selector::Listen(a),
            (None, None) => Selector::Only,
        };
        control::find_master(&sel).map(|e| e.control).map_err(|e| e.to_string())
    }
}

#[derive(Subcommand)]
enum CtlAction {
    /// Re-read the config file and restart workers one by one (as SIGHUP); waits until
    /// every new worker is ready, or the reload failed (exit status 1, with the reason:
    /// the old workers keep serving).
    Reload {
        /// Return once the reload has started, without waiting for its outcome
        #[arg(long)]
        no_wait: bool,
    },
    /// Run N workers.
    Scale {
        /// Number of workers.
        n: usize,
    },
    /// Replace worker ID: start a fresh one, then drain the old one.
    Drain {
        /// Worker id (0..N-1).
        id: usize,
    },
    /// Stop gracefully (as SIGTERM).
    Stop,
}

#[derive(Args)]
struct RunArgs {
    /// Address to listen on (repeatable): 127.0.0.1:8080, [::1]:8080, unix:/path.sock; add ",proxy" for a PROXY protocol listener (",proxy-from=10.0.0.0/8+::1" names who may send the header; default loopback only), ",deferred" for TCP_DEFER_ACCEPT (HTTP and other client-speaks-first protocols) [default: 127.0.0.1:8080]
    #[arg(long, short = 'l', value_name = "ADDR")]
    listen: Vec<ListenSpec>,
    /// Number of worker processes [default: one per core]
    #[arg(long, short = 'w', value_name = "N")]
    workers: Option<usize>,
    /// Balancing policy: round-robin, least-conn or p2c [default: least-conn]
    #[arg(long, short = 'p', value_name = "POLICY")]
    policy: Option<Policy>,
    /// A worker holding K active connections gets no more; when all are full the master stops accepting
    #[arg(long, value_name = "K")]
    max_conns_per_worker: Option<u32>,
    /// Read settings from this TOML file (command-line options win)
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Built-in worker: serve files from DIR
    #[arg(long = "static", value_name = "DIR")]
    static_dir: Option<PathBuf>,
    /// Built-in worker: follow no symlink under --static DIR [default: only those that stay inside it]
    #[arg(long)]
    static_no_symlinks: bool,
    /// Built-in worker: honour ?cpu_ms=N and ?sleep_ms=N (load tests only: any client could stop a worker)
    #[arg(long)]
    test_knobs: bool,
    /// Kill and replace a worker silent this long (seconds) while it holds connections [default: 30]
    #[arg(long, value_name = "SECS")]
    worker_timeout: Option<f64>,
    /// Graceful stop waits this long (seconds) for workers to finish [default: 30]
    #[arg(long, value_name = "SECS")]
    shutdown_timeout: Option<f64>,
    /// On SIGTERM keep accepting this long (seconds) with health at 503, so a load balancer stops sending first [default: 0]
    #[arg(long, value_name = "SECS")]
    drain_delay: Option<f64>,
    /// Recycle a worker after it took N connections
    #[arg(long, value_name = "N")]
    max_requests: Option<u64>,
    /// Add a random 0..=J to --max-requests per worker, so they do not recycle together
    #[arg(long, value_name = "J")]
    max_requests_jitter: Option<u64>,
    /// Control socket for `handoff status` / `handoff ctl` [default: PID.sock in /run/handoff for root, else in $XDG_RUNTIME_DIR/handoff or /tmp/handoff-UID]
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Health endpoint for load balancers: 200 while serving, 503 while draining or upgrading
    #[arg(long, value_name = "ADDR")]
    health: Option<std::net::SocketAddr>,
    /// Run workers as this user (the master keeps its privileges to bind)
    #[arg(long)]
    user: Option<String>,
    /// Run workers as this group
    #[arg(long)]
    group: Option<String>,
    /// The master's CPU scheduling: batch (SCHED_BATCH: it does not preempt busy workers,
    /// and hands on in larger batches; workers stay SCHED_OTHER) or inherit [default: batch]
    #[arg(long, value_name = "batch|inherit")]
    master_sched: Option<MasterSched>,
    /// When workers hand idle keep-alive connections back to the master, which then places
    /// each request, not just each connection: auto (while a worker is slow), always, or off
    /// [default: auto]
    #[arg(long, value_name = "auto|always|off")]
    hand_back: Option<HandBack>,
    /// A worker not ready this long (seconds) after it started is a failed start: killed and started again; a reload whose new workers fail so is reported failed [default: 60]
    #[arg(long, value_name = "SECS")]
    ready_timeout: Option<f64>,
    /// Close an idle connection the master holds after this long (seconds) [default: 75]
    #[arg(long, value_name = "SECS")]
    keepalive_timeout: Option<f64>,
    /// Most idle connections the master holds; beyond it the oldest are closed [default: 16384]
    #[arg(long, value_name = "N")]
    max_idle: Option<usize>,
    /// Built-in worker: one line per request on standard output, combined (nginx's) or json [default: off]
    #[arg(long, value_name = "combined|json")]
    access_log: Option<AccessLog>,
    /// The master's log lines: text, or json (one JSON object per line, for log shippers)
    #[arg(long, value_name = "text|json", default_value = "text")]
    log_format: LogFormat,
    /// More log output (-vv for debug)
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less log output (warnings and errors only)
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Worker program and its arguments
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

impl RunArgs {
    fn to_config_file(&self) -> ConfigFile {
        ConfigFile {
            listen: (!self.listen.is_empty()).then(|| self.listen.clone()),
            workers: self.workers,
            policy: self.policy,
            max_conns_per_worker: self.max_conns_per_worker,
            command: (!self.command.is_empty()).then(|| self.command.clone()),
            static_dir: self.static_dir.clone(),
            static_no_symlinks: self.static_no_symlinks.then_some(true),
            test_knobs: self.test_knobs.then_some(true),
            worker_timeout: self.worker_timeout,
            shutdown_timeout: self.shutdown_timeout,
            drain_delay: self.drain_delay,
            max_requests: self.max_requests,
            max_requests_jitter: self.max_requests_jitter,
            user: self.user.clone(),
            group: self.group.clone(),
            control: self.control.clone(),
            metrics: self.metrics,
            health: self.health,
            master_sched: self.master_sched,
            hand_back: self.hand_back,
            keepalive_timeout: self.keepalive_timeout,
            max_idle: self.max_idle,
            access_log: self.access_log,
            ready_timeout: self.ready_timeout,
            ..ConfigFile::default()
        }
    }
}

/// How the master writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, fields).
    Json,
}

fn init_logging(verbose: u8, quiet: bool, format: LogFormat) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HANDOFF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Written synchronously to stderr (no logging thread in the master), but never
    // waiting on a stalled reader: such lines are dropped and counted.
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| sys::StderrNoWait);
    match format {
        LogFormat::Text => {
            fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_target(false).init()
        }
        LogFormat::Json => fmt.json().with_target(false).init(),
    }
}

fn run(args: RunArgs) -> Result<(), String> {
    let source = ConfigSource {
        cli: args.to_config_file(),
        file: args.config.clone().map(|path| (path, config_file::parse as ParseConfig)),
    };
    let cfg = source.load().map_err(|e| e.to_string())?;
    let master = Master::new(cfg).map_err(|e| e.to_string())?.with_source(source);
    master.run().map_err(|e| e.to_string())
}

fn status(target: Target, list: bool, json: bool) -> Result<(), String> {
    if list {
        let masters = control::list_masters().map_err(|e| e.to_string())?;
        if json {
            say(&format!("{}\n", serde_json::to_string_pretty(&masters).map_err(|e| e.to_string())?));
        } else {
            say(&control::list_text(&masters));
        }
        return Ok(());
    }
    let path = target.path()?;
    if json {
        let raw = control::status_json(&path).map_err(|e| e.to_string())?;
        say(&format!("{raw}\n"));
    } else {
        let st = control::status(&path).map_err(|e| e.to_string())?;
        say(&control::format_table(&st));
    }
    Ok(())
}

fn ctl(target: Target, action: CtlAction) -> Result<(), String> {
    let path = target.path()?;
    let wait = matches!(action, CtlAction::Reload { no_wait: false });
    let line = match action {
        CtlAction::Reload { .. } => "reload".to_string(),
        CtlAction::Scale { n } => format!("scale {n}"),
        CtlAction::Drain { id } => format!("drain {id}"),
        CtlAction::Stop => "stop".to_string(),
    };
    let reply = control::command(&path, &line).map_err(|e| e.to_string())?;
    // Which master acted: the one that answered says so itself.
    let who = match &reply.master {
        Some(m) => format!("master pid {} ({}): ", m.pid, m.listeners.join(", ")),
        None => format!("master at {}: ", path.display()),
    };
    if !reply.ok {
        return Err(format!("{who}{}", reply.message));
    }
    let Some(id) = reply.reload.filter(|_| wait) else {
        say(&format!("{who}{}\n", reply.message));
        return Ok(());
    };
    // The reload has started: follow it to its outcome (see `control::wait_reload`).
    let done =
        control::wait_reload(&path, id, std::time::Duration::from_millis(200)).map_err(|e| format!("{who}{e}"))?;
    match done.state.as_str() {
        _ if done.id != id => Err(format!(
            "{who}reload #{id} was superseded by reload #{} before it was done (now {}: {})",
            done.id, done.state, done.message
        )),
        "ok" => {
            say(&format!("{who}{}\n", done.message));
            Ok(())
        }
        _ => Err(format!("{who}{}", done.message)),
    }
}

fn exit_with(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!, which panics when stderr is gone (`handoff ... 2>&1 | head`).
            let _ = writeln!(std::io::stderr(), "handoff: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints to stdout; a reader that has gone (`handoff status | head -1`) is not an
/// error worth a panic.
fn say(text: &str) {
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(args) => {
            init_logging(args.verbose, args.quiet, args.log_format);
            exit_with(run(*args))
        }
        Cmd::Status { target, list, json } => exit_with(status(target, list, json)),
        Cmd::Ctl { target, action } => exit_with(ctl(target, action)),
        Cmd::Bench(args) => exit_with(handoff_bench::main(args)),
        Cmd::BenchWorker(args) => exit_with(handoff_bench::worker_main(args)),
        Cmd::Worker { static_dir, static_no_symlinks, test_knobs, misbehave, misbehave_slot } => {
            init_logging(0, true, LogFormat::Text);
            let slot = handoff::worker::WorkerEnv::from_env().id;
            let result = match misbehave {
                Some(f) if misbehave_slot.is_none_or(|s| s == slot) => builtin::faults::run(f),
                _ => {
                    use builtin::static_files::Symlinks;
                    let symlinks = if static_no_symlinks { Symlinks::Never } else { Symlinks::InsideRoot };
                    builtin::http::run_from_env(static_dir, symlinks, test_knobs)
                }
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("handoff worker: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
