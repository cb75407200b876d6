//! The `handoff` command: run a master with workers, or act as a built-in worker.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use handoff::config::ConfigFile;
use handoff::listener::ListenAddr;
use handoff::master::Master;
use handoff::policy::Policy;

#[derive(Parser)]
#[command(name = "handoff", version, about = "One master accepts, workers serve: connections handed to a chosen worker over SCM_RIGHTS")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a master and its workers (the built-in HTTP worker unless a command follows `--`).
    Run(RunArgs),
    /// Measure handoff against the kernel's connection models (shared queue, SO_REUSEPORT).
    Bench(handoff::bench::BenchArgs),
    /// Internal: a worker of a `handoff bench` kernel model.
    #[command(hide = true)]
    BenchWorker(handoff::bench::WorkerArgs),
    /// Internal: the built-in HTTP worker, started by the master.
    #[command(hide = true)]
    Worker {
        /// Serve files from this directory.
        #[arg(long = "static")]
        static_dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Address to listen on (repeatable): 127.0.0.1:8080, [::1]:8080, unix:/path.sock [default: 127.0.0.1:8080]
    #[arg(long, short = 'l', value_name = "ADDR")]
    listen: Vec<ListenAddr>,
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
    /// Kill and replace a worker silent this long (seconds) while it holds connections [default: 30]
    #[arg(long, value_name = "SECS")]
    worker_timeout: Option<f64>,
    /// Graceful stop waits this long (seconds) for workers to finish [default: 30]
    #[arg(long, value_name = "SECS")]
    shutdown_timeout: Option<f64>,
    /// Recycle a worker after it took N connections
    #[arg(long, value_name = "N")]
    max_requests: Option<u64>,
    /// Add a random 0..=J to --max-requests per worker, so they do not recycle together
    #[arg(long, value_name = "J")]
    max_requests_jitter: Option<u64>,
    /// Run workers as this user (the master keeps its privileges to bind)
    #[arg(long)]
    user: Option<String>,
    /// Run workers as this group
    #[arg(long)]
    group: Option<String>,
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
            worker_timeout: self.worker_timeout,
            shutdown_timeout: self.shutdown_timeout,
            max_requests: self.max_requests,
            max_requests_jitter: self.max_requests_jitter,
            user: self.user.clone(),
            group: self.group.clone(),
            ..ConfigFile::default()
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HANDOFF_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Written synchronously to stderr: no logging thread in the master.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn run(args: RunArgs) -> Result<(), String> {
    let cli = args.to_config_file();
    let merged = match &args.config {
        Some(path) => cli.or(ConfigFile::load(path).map_err(|e| e.to_string())?),
        None => cli,
    };
    let cfg = merged.resolve().map_err(|e| e.to_string())?;
    let master = Master::new(cfg).map_err(|e| e.to_string())?;
    master.run().map_err(|e| e.to_string())
}

fn exit(r: Result<(), String>, what: &str) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(args) => {
            init_logging(args.verbose, args.quiet);
            match run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("handoff: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Bench(args) => exit(handoff::bench::main(args), "handoff bench"),
        Cmd::BenchWorker(args) => exit(handoff::bench::worker_main(args), "handoff bench-worker"),
        Cmd::Worker { static_dir } => {
            init_logging(0, true);
            match handoff::worker::http::run_from_env(static_dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("handoff worker: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
