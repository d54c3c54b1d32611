//! The `ferry` binary: parses arguments, starts logging, calls into the library, and maps errors
//! to the documented exit codes (0 success, 1 operational failure, 2 usage or configuration
//! error, 3 daemon not reachable, 4 permission denied on its socket).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use ferry::UsageError;
use ferry::cli::check::Connect;
use ferry::cli::push::{PushRequest, Target};
use ferry::cli::serve::ServeRequest;
use ferry::config::LogFormat;
use ferry::control::{Command as ControlCommand, ControlError};
use ferry::queue::{JobId, JobState};
use ferry::server::{Guards, Limits};
use ferry::upload::bwlimit::Bandwidth;
use ferry::upload::{ChunkSize, PartsInFlight, RetryPolicy, UploadSettings};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Watches folders and reliably uploads every new or changed file"
)]
struct Cli {
    /// Configuration file; else $FERRY_CONFIG; else the platform config file; else built-in.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Control socket of the daemon; default: the configuration's.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (what the service runs).
    Run,
    /// Show the daemon's state: queue counts, active transfers, failures.
    ///
    /// Exit status, as systemctl's: 0 healthy; 1 degraded (a job failed, a watch cannot watch,
    /// the store refuses writes); 3 the daemon is not running; 4 its socket is not yours.
    Status {
        /// Print one JSON object: queue counts, transfers, remotes, watches, recent failures.
        #[arg(long)]
        json: bool,
        /// Refresh every second.
        #[arg(long)]
        watch: bool,
    },
    /// List jobs.
    Jobs {
        /// Only the jobs in this state.
        #[arg(long)]
        state: Option<JobState>,
        /// Print the jobs as one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Follow the daemon's job events (queued, started, uploaded, failed, retrying, dropped),
    /// each with an id one above the last, until interrupted.
    Events {
        /// Print each event as one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only the events after this id (0: every event the daemon still holds).
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Queue failed jobs again.
    Retry {
        /// Job ids, as `ferry jobs` shows them.
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        ids: Vec<JobId>,
        /// Every failed job.
        #[arg(long)]
        failed: bool,
    },
    /// Let uploads in progress finish, start no new ones.
    Pause,
    /// Start uploads again after `pause`.
    Resume,
    /// Scan the watched folders for files the watcher missed.
    Rescan,
    /// Change the running daemon's bandwidth limit for every remote, until the next reload or
    /// restart; without RATE, show the limits in force.
    Bwlimit {
        /// A rate as rclone's --bwlimit takes it (10M is 10 MiB/s; 512k; 5MiB/s), a timetable
        /// such as "Mon-08:00,512k 18:00,off" (local time), or off.
        #[arg(value_parser = ferry::cli::push::parse_bwlimit)]
        rate: Option<Bandwidth>,
    },
    /// Abort multipart uploads under the S3 remotes' prefixes that no local session owns and
    /// that have been idle a while (they cost storage until aborted).
    Cleanup(CleanupArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run the reference receiver of the native upload protocol.
    Serve(ServeArgs),
    /// Upload files once, resuming an earlier interrupted push of the same file.
    Push(PushArgs),
    /// Install Ferry as a systemd unit (Linux) or launchd agent (macOS).
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Print a shell completion script, e.g. `ferry completions bash > /etc/bash_completion.d/ferry`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), e.g. `ferry manpage > ferry.1`.
    #[command(hide = true)]
    Manpage,
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Write the unit (or agent) for this binary, then enable and start it.
    Install(ServiceArgs),
    /// Stop and disable the service and remove its unit.
    Uninstall(ServiceArgs),
    /// Where the unit is, and what the service manager says of it.
    Status(ServiceArgs),
}

#[derive(Args)]
struct ServiceArgs {
    /// The current user's service (`systemctl --user`, a launch agent). The default.
    #[arg(long, conflicts_with = "system")]
    user: bool,
    /// The machine's service, run as the `ferry` user (needs root).
    #[arg(long)]
    system: bool,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print what it means.
    Check(CheckArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// Also open and abort an upload at each remote: shows that it answers and takes the
    /// credentials, and that the bucket or workspace is there and may be written to.
    #[arg(long)]
    connect: bool,
    /// With --connect, only this remote.
    #[arg(long, requires = "connect")]
    remote: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:7373 (port 0 picks a free one).
    #[arg(long)]
    listen: SocketAddr,
    /// Folder that receives files, at <storage>/<workspace_id>/<filename>.
    #[arg(long)]
    storage: PathBuf,
    /// File holding the bearer token; else $FERRY_SERVE_TOKEN; else one is generated.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Accept only this workspace (repeatable); by default any.
    #[arg(long = "workspace")]
    workspaces: Vec<String>,
    /// How long an upload session stays open.
    #[arg(long, default_value = "24h")]
    session_ttl: humantime::Duration,
    /// Smallest part accepted, except a file's last.
    #[arg(long, default_value = "256KiB")]
    min_part_size: ByteSize,
    /// Largest part accepted.
    #[arg(long, default_value = "5GiB")]
    max_part_size: ByteSize,
    /// Most parts in one session.
    #[arg(long, default_value_t = 10_000)]
    max_parts: u32,
    /// Largest file accepted.
    #[arg(long, default_value = "1TiB")]
    max_file_size: ByteSize,
    /// Time a client has to send a request's headers; also how long an idle connection is kept.
    #[arg(long, default_value = "30s")]
    header_timeout: humantime::Duration,
    /// A part upload that sends nothing for this long is abandoned (408).
    #[arg(long, default_value = "60s")]
    idle_timeout: humantime::Duration,
    /// Connections served at once; more wait until one closes.
    #[arg(long, default_value_t = ferry::server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Upload sessions open at once; more are refused with 429 and Retry-After.
    #[arg(long, default_value_t = ferry::server::DEFAULT_MAX_OPEN_SESSIONS)]
    max_open_sessions: usize,
    /// POST a JSON document to this URL when an upload completes (retried with backoff).
    #[arg(long)]
    webhook: Option<String>,
    /// Sign the webhook's posts with the secret in this file (X-Ferry-Signature, HMAC-SHA256).
    #[arg(long, requires = "webhook")]
    webhook_secret_file: Option<PathBuf>,
    /// Serve Prometheus metrics at /metrics on the same address (without the token).
    #[arg(long)]
    metrics: bool,
}

#[derive(Args)]
struct CleanupArgs {
    /// Only this remote; default: every S3 remote.
    #[arg(long)]
    remote: Option<String>,
    /// Idle time (since the upload began or its last part landed) that makes an upload no
    /// session owns an orphan.
    #[arg(long, default_value = "24h")]
    older_than: humantime::Duration,
    /// List the orphans without aborting them.
    #[arg(long)]
    dry_run: bool,
    /// Print the orphans as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PushArgs {
    /// Files to upload.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Base URL of a native-protocol receiver, e.g. http://127.0.0.1:7373.
    #[arg(long, required_unless_present = "remote")]
    url: Option<String>,
    /// A remote of the configuration (native or S3) to upload to, instead of --url.
    #[arg(long, conflicts_with_all = ["url", "workspace", "token_file", "ca_cert"])]
    remote: Option<String>,
    /// Workspace to upload into (with --url).
    #[arg(long, default_value = "default")]
    workspace: String,
    /// Remote path (only with a single file); default: the file's name.
    #[arg(long)]
    name: Option<String>,
    /// File holding the bearer token; else $FERRY_TOKEN.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM bundle of CA certificates to trust beside the system's (with an https --url).
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Where interrupted sessions are remembered; default: the platform data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print one JSON object describing the uploads at the end.
    #[arg(long)]
    json: bool,
    /// Part size: `auto` (the default, or the remote's configured size) learns it from the
    /// link and remembers it per remote in --data-dir; or a fixed size such as 8MiB.
    #[arg(long, value_parser = ferry::cli::push::parse_chunk_size)]
    chunk_size: Option<ChunkSize>,
    /// Parts of a file sent at once: `auto` (the default) learns it; or a number.
    #[arg(long, value_parser = ferry::cli::push::parse_parallel_parts)]
    parallel_parts: Option<PartsInFlight>,
    /// Attempts per request before giving up on a transient failure (1 to 1000, as in the
    /// configuration's `max_attempts`).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=i64::from(ferry::config::MAX_RETRY_ATTEMPTS)))]
    retry_attempts: u32,
    /// First retry's wait ceiling (doubles each retry, with full jitter).
    #[arg(long, default_value = "500ms")]
    retry_base: humantime::Duration,
    /// Longest wait between retries.
    #[arg(long, default_value = "5m")]
    retry_max: humantime::Duration,
    /// Abandon and retry a part that made no progress for this long.
    #[arg(long, default_value = "60s")]
    stall_timeout: humantime::Duration,
    /// Bandwidth limit, as rclone's --bwlimit: a rate such as 10M (MiB/s), 512k or 5MiB/s, or
    /// a timetable such as "Mon-08:00,512k 18:00,off" (local time; off: unlimited).
    #[arg(long, value_parser = ferry::cli::push::parse_bwlimit)]
    bwlimit: Option<Bandwidth>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs as its configuration says; everything else logs text.
    let daemon_config = match &cli.command {
        Command::Run => match ferry::cli::load_runnable_config(cli.config.as_deref()) {
            Ok(config) => Some(config),
            Err(error) => return report(error),
        },
        _ => None,
    };
    let format = daemon_config
        .as_ref()
        .map_or(LogFormat::Text, |c| c.daemon.log_format);
    ferry::telemetry::init("info", format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(dispatch(cli, daemon_config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(error),
    }
}

/// Prints the error chain and picks the exit code.
fn report(error: anyhow::Error) -> ExitCode {
    if ferry::output::is_broken_pipe(error.as_ref()) {
        // The reader went away (`ferry jobs | head -1`): what it did not read it did not want.
        return ExitCode::SUCCESS;
    }
    ferry::output::errln(&format!("error: {}", ferry::error::chain(error.as_ref())));
    if error.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(2)
    } else if matches!(
        error.downcast_ref::<ControlError>(),
        Some(ControlError::NotRunning { .. })
    ) {
        ExitCode::from(3)
    } else if matches!(
        error.downcast_ref::<ControlError>(),
        Some(ControlError::PermissionDenied { .. })
    ) {
        ExitCode::from(4)
    } else {
        ExitCode::from(1)
    }
}

async fn dispatch(cli: Cli, daemon_config: Option<ferry::config::Config>) -> Result<()> {
    let socket = || ferry::cli::socket_path(cli.socket.clone(), cli.config.as_deref());
    match cli.command {
        Command::Run => {
            let config = daemon_config.expect("loaded before logging started");
            run(cli.config.clone(), cli.socket.clone(), config).await
        }
        Command::Status { json, watch } => ferry::cli::status(&socket()?, json, watch).await,
        Command::Jobs { state, json } => ferry::cli::jobs(&socket()?, state, json).await,
        Command::Events { json, since } => ferry::cli::events(&socket()?, since, json).await,
        Command::Retry { ids, failed } => ferry::cli::retry(&socket()?, ids, failed).await,
        Command::Pause => ferry::cli::simple(&socket()?, ControlCommand::Pause).await,
        Command::Resume => ferry::cli::simple(&socket()?, ControlCommand::Resume).await,
        Command::Rescan => ferry::cli::simple(&socket()?, ControlCommand::Rescan).await,
        Command::Bwlimit { rate } => {
            let bandwidth = rate.map(|rate| rate.to_string());
            ferry::cli::simple(&socket()?, ControlCommand::BwLimit { bandwidth }).await
        }
        Command::Cleanup(args) => {
            let request = ferry::cleanup::Request {
                remote: args.remote,
                older_than: args.older_than.into(),
                dry_run: args.dry_run,
            };
            let (config, socket) = (cli.config.as_deref(), cli.socket.clone());
            ferry::cli::cleanup::cleanup(config, socket, request, args.json).await
        }
        Command::Config {
            command: ConfigCommand::Check(args),
        } => {
            let connect = match (args.connect, args.remote) {
                (false, _) => Connect::None,
                (true, None) => Connect::Every,
                (true, Some(name)) => Connect::Only(name),
            };
            ferry::cli::check::config_check(cli.config.as_deref(), connect).await
        }
        Command::Serve(args) => {
            ferry::cli::private_umask();
            ferry::cli::serve::serve(serve_request(args)).await
        }
        Command::Push(args) => ferry::cli::push::push(push_request(args, cli.config)).await,
        Command::Service { command } => service(command, cli.config.as_deref()),
        Command::Completions { shell } => completions(shell),
        Command::Manpage => manpage(),
    }
}

/// `ferry run`: the daemon on `config`, its socket `socket` when given.
async fn run(
    path: Option<std::path::PathBuf>,
    socket: Option<std::path::PathBuf>,
    mut config: ferry::config::Config,
) -> Result<()> {
    ferry::cli::private_umask();
    if let Some(socket) = socket {
        config.daemon.socket = socket;
    }
    ferry::cli::run(path, config).await
}

/// `ferry completions SHELL`: the completion script on stdout.
fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "ferry", &mut script);
    Ok(std::io::stdout().write_all(&script)?)
}

/// `ferry manpage`: the man page (roff) on stdout.
fn manpage() -> Result<()> {
    let command = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(command)
        .render(&mut std::io::stdout())
        .context("cannot write the man page")
}

fn service(command: ServiceCommand, config: Option<&std::path::Path>) -> Result<()> {
    use ferry::service::install::{Scope, Service};
    let (ServiceCommand::Install(args)
    | ServiceCommand::Uninstall(args)
    | ServiceCommand::Status(args)) = &command;
    let scope = if args.system {
        Scope::System
    } else {
        Scope::User
    };
    let service = Service::for_this_binary(scope, config)?;
    let report = match command {
        ServiceCommand::Install(_) => service.install()?,
        ServiceCommand::Uninstall(_) => service.uninstall()?,
        ServiceCommand::Status(_) => service.status(),
    };
    Ok(ferry::output::out(&report.to_string())?)
}

/// `ferry serve`'s flags, as the library takes them.
fn serve_request(args: ServeArgs) -> ServeRequest {
    ServeRequest {
        listen: args.listen,
        storage: args.storage,
        token_file: args.token_file,
        workspaces: args.workspaces,
        session_ttl: args.session_ttl.into(),
        limits: Limits {
            min_part_size: args.min_part_size.as_u64(),
            max_part_size: args.max_part_size.as_u64(),
            max_parts: args.max_parts,
            max_file_size: args.max_file_size.as_u64(),
        },
        guards: Guards {
            header_timeout: args.header_timeout.into(),
            body_idle_timeout: args.idle_timeout.into(),
            max_connections: args.max_connections,
            max_open_sessions: args.max_open_sessions,
        },
        webhook: args.webhook,
        webhook_secret_file: args.webhook_secret_file,
        metrics: args.metrics,
    }
}

/// `ferry push`'s flags, as the library takes them.
fn push_request(args: PushArgs, config: Option<PathBuf>) -> PushRequest {
    let target = match (args.remote, args.url) {
        (Some(name), _) => Target::Remote { name, config },
        (None, url) => Target::Url {
            url: url.unwrap_or_default(),
            workspace: args.workspace,
            token_file: args.token_file,
            ca_cert: args.ca_cert,
        },
    };
    PushRequest {
        files: args.files,
        target,
        name: args.name,
        data_dir: args.data_dir,
        json: args.json,
        settings: UploadSettings {
            retry: RetryPolicy {
                max_attempts: args.retry_attempts,
                backoff_base: args.retry_base.into(),
                backoff_max: args.retry_max.into(),
            },
            stall_timeout: args.stall_timeout.into(),
            ..UploadSettings::default()
        },
        chunk_size: args.chunk_size,
        parallel_parts: args.parallel_parts,
        bwlimit: args.bwlimit,
    }
}
