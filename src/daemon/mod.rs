//! The daemon: wires watch → queue → workers → remotes, serves the control socket, and runs
//! the lifecycle (start, reload, graceful stop).
//!
//! `run` is a library function: the binary calls it with a cancellation token (SIGTERM/SIGINT)
//! and a channel of reloaded configurations (SIGHUP), and tests can do the same in-process.
//! Shutdown stops intake first, gives in-flight uploads the grace period to finish (every
//! acknowledged part is already recorded, so what is cut off resumes at the next start), then
//! flushes the store.

mod events;
mod hooks;
mod metrics;
mod remotes;
mod store_health;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cleanup;
use crate::config::{Config, RemoteConfig, WatchConfig};
use crate::control::protocol::{ActiveTransfer, FailedJob, IntakeStatus, WatchStatus};
use crate::control::{self, Command, EventKind, RemoteStatus, Reply, StatusReply};
use crate::queue::jobs::now_ms;
use crate::queue::{Candidate, JobId, JobQueue, JobState, QueueError, Store};
use crate::server;
use crate::upload::bwlimit::Bandwidth;
use crate::upload::{NativeConfig, Progress, UploadSettings, Uploader};
use crate::watch::{self, WatchHandle};

/// Settled-file batches buffered between the watcher and the queue.
const INTAKE_BATCHES: usize = 16;
/// How often finished jobs past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often orphaned S3 uploads are looked for (`[daemon] orphan_cleanup`).
const CLEANUP_EVERY: Duration = Duration::from_secs(3600);
/// Failed jobs listed in `ferry status`.
pub(super) const STATUS_FAILED_SHOWN: usize = 20;
/// Longest a `ferry events` poll waits for an event: well inside the control socket's
/// exchange timeout.
const MAX_EVENTS_WAIT: Duration = Duration::from_secs(5);

/// Fatal daemon errors (per-file errors are recorded on the job instead).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] QueueError),
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
    #[error(transparent)]
    Socket(#[from] control::SocketError),
    #[error("cannot start the embedded receiver")]
    Receiver(#[source] std::io::Error),
    #[error("cannot serve metrics on {address} (metrics_listen)")]
    Metrics {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    ReceiverSetup(#[from] server::ServerError),
    #[error("remote {name} cannot be used")]
    Remote {
        name: String,
        #[source]
        source: Box<crate::upload::BackendError>,
    },
}

/// What `run` reports once it is up.
#[derive(Clone)]
pub struct Started {
    pub socket: PathBuf,
    pub watches: Vec<PathBuf>,
    /// URL and storage folder of the embedded receiver, when there is one.
    pub receiver: Option<(String, PathBuf)>,
    /// The daemon's state, for a service manager's status line and watchdog.
    pub probe: Probe,
}

/// A reloaded configuration; `applied` fires once the daemon has taken it (or kept the
/// running one because it could not be applied, which the daemon logs).
pub struct Reload {
    pub config: Config,
    pub applied: tokio::sync::oneshot::Sender<()>,
}

/// Reads the daemon's state from outside it (see `service::notify`).
#[derive(Clone)]
pub struct Probe(Arc<Daemon>);

impl Probe {
    /// What `ferry status` shows. Goes through the queue's lock on a blocking thread, so an
    /// answer also shows that the runtime, the blocking pool and the queue are all alive.
    pub async fn status(&self) -> Result<StatusReply, QueueError> {
        self.0.status().await
    }
}

/// What a reload may change.
struct Settings {
    watches: Vec<WatchConfig>,
    uploaders: BTreeMap<String, Arc<Uploader>>,
    transfers: usize,
    upload: UploadSettings,
    /// The configured remotes, for status and orphan cleanup.
    remotes: BTreeMap<String, RemoteConfig>,
    orphan_cleanup: Option<Duration>,
}

/// A file being uploaded, for `ferry status`.
struct ActiveJob {
    path: PathBuf,
    remote_path: String,
    progress: Arc<Progress>,
    started: Instant,
}

/// State shared by the daemon's tasks.
pub(crate) struct Daemon {
    store: Store,
    settings: RwLock<Settings>,
    paused: AtomicBool,
    wake: Notify,
    active: Mutex<HashMap<JobId, ActiveJob>>,
    watcher: Mutex<Option<WatchHandle>>,
    intake: mpsc::Sender<Vec<Candidate>>,
    watch_stats: Arc<watch::WatchStats>,
    /// Files the intake has checked against the queue, since start.
    checked: AtomicU64,
    own_paths: Vec<PathBuf>,
    /// The embedded receiver's remote, kept across reloads.
    embedded: Option<(String, NativeConfig)>,
    /// The embedded receiver's URL and storage, when there is one.
    receiver: Option<(String, PathBuf)>,
    store_health: store_health::StoreHealth,
    /// An orphan cleanup pass is running.
    cleaning: AtomicBool,
    /// The bandwidth limits, kept across reloads.
    limiters: remotes::Limiters,
    /// Job events, for `ferry events`.
    events: events::EventLog,
    /// What `/metrics` serves.
    metrics: metrics::Metrics,
    /// Woken when hook deliveries were written.
    hooks_wake: Notify,
    /// Set when waiting hook deliveries changed (`ferry retry --failed`): read them all again.
    hooks_reread: AtomicBool,
    /// What `ferry status` says of the hook deliveries, kept by their deliverer.
    hooks_status: std::sync::Mutex<control::protocol::HooksStatus>,
}

/// Runs the daemon until `shutdown` is cancelled. `reloads` delivers new configurations
/// (SIGHUP); `started` is called once everything listens.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    mut reloads: mpsc::Receiver<Reload>,
    started: impl FnOnce(&Started),
) -> Result<(), DaemonError> {
    let store = open_store(&config.daemon.data_dir).await?;
    // Services that outlive the workers: the embedded receiver and the control socket stop last.
    let services = CancellationToken::new();
    let tracker = TaskTracker::new();
    let embedded = remotes::start_embedded_receiver(&config, &services, &tracker).await?;
    let (daemon, intake_receiver) = build(&config, store.clone(), embedded)?;
    daemon.restore_learned().await;

    let socket = serve_control_and_metrics(&config, &daemon, &services, &tracker).await?;
    start_watching(&daemon).await?;
    let tasks = Tasks::start(&daemon, intake_receiver);

    started(&Started {
        socket,
        watches: daemon.watches().iter().map(|w| w.path.clone()).collect(),
        receiver: daemon.receiver.clone(),
        probe: Probe(daemon.clone()),
    });

    until_stopped(&daemon, &config, &shutdown, &mut reloads, &tracker).await;
    tracing::info!("stopping: no new files are taken");
    tasks.stop(&daemon, config.daemon.shutdown_grace).await;
    // Flushes, and records what the store holds for the damage check at the next open.
    tokio::task::spawn_blocking(move || store.checkpoint())
        .await
        .expect("a checkpoint does not panic")?;
    services.cancel();
    tracker.close();
    tracker.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// Arms the watches (one per folder, recursively) and makes the first scan: both block, so
/// off the runtime.
async fn start_watching(daemon: &Arc<Daemon>) -> Result<(), DaemonError> {
    let starting = daemon.clone();
    let roots = daemon.watches();
    tokio::task::spawn_blocking(move || starting.restart_watcher(&roots))
        .await
        .expect("starting the watcher does not panic")?;
    Ok(())
}

/// Until `shutdown`: applies each reload (what the uploaders learned carried over to the new
/// ones), prunes the store and looks for orphaned uploads, each on its interval.
async fn until_stopped(
    daemon: &Arc<Daemon>,
    config: &Config,
    shutdown: &CancellationToken,
    reloads: &mut mpsc::Receiver<Reload>,
    tracker: &TaskTracker,
) {
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    let mut cleanup = tokio::time::interval(CLEANUP_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(Reload { config, applied }) = reloads.recv() => {
                // What the old uploaders learned is kept for the new ones to start from.
                daemon.keep_learned().await;
                let reloading = daemon.clone();
                let _ = tokio::task::spawn_blocking(move || reloading.reload(config)).await;
                // The reload built new uploaders: they start from what was learned too.
                daemon.restore_learned().await;
                let _ = applied.send(());
            }
            _ = prune.tick() => daemon.maintain(config.daemon.done_retention).await,
            _ = cleanup.tick() => {
                let cleaning = daemon.clone();
                tracker.spawn(async move { cleaning.clean_orphans().await });
            }
        }
    }
}

/// Creates the data folder (private: the store lists file names, remote paths and session
/// ids), opens the store and queues again the jobs the last stop interrupted.
async fn open_store(data_dir: &std::path::Path) -> Result<Store, DaemonError> {
    std::fs::create_dir_all(data_dir)
        .and_then(|()| server::storage::make_private(data_dir))
        .map_err(|source| DaemonError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
    let store_dir = data_dir.join("store");
    let store = tokio::task::spawn_blocking(move || Store::open(&store_dir))
        .await
        .expect("opening the store does not panic")?;
    let queue = store.jobs();
    let requeued = tokio::task::spawn_blocking(move || queue.requeue_active(now_ms()))
        .await
        .expect("recovery does not panic")?;
    if requeued > 0 {
        tracing::info!(requeued, "resuming uploads interrupted by the last stop");
    }
    Ok(store)
}

/// Builds the daemon's shared state from the configuration: the watched folders (the
/// built-in default's outbox is created), an uploader per remote.
fn build(
    config: &Config,
    store: Store,
    (embedded, receiver): remotes::Embedded,
) -> Result<(Arc<Daemon>, mpsc::Receiver<Vec<Candidate>>), DaemonError> {
    let watches = watched_folders(config)?;
    let limiters = remotes::Limiters::default();
    let uploaders = remotes::build_uploaders(config, &store, embedded.as_ref(), &limiters)?;
    limiters.apply(config);
    let (intake, intake_receiver) = mpsc::channel(INTAKE_BATCHES);
    let own_paths = own_paths(config, receiver.as_ref());
    let daemon = Arc::new(Daemon {
        store,
        settings: RwLock::new(Settings {
            watches,
            uploaders,
            transfers: config.daemon.transfers,
            upload: config.upload,
            remotes: config.remotes.clone(),
            orphan_cleanup: config.daemon.orphan_cleanup,
        }),
        paused: AtomicBool::new(false),
        wake: Notify::new(),
        active: Mutex::new(HashMap::new()),
        watcher: Mutex::new(None),
        intake,
        watch_stats: Arc::default(),
        checked: AtomicU64::new(0),
        own_paths,
        embedded,
        receiver,
        store_health: Default::default(),
        cleaning: AtomicBool::new(false),
        limiters,
        events: Default::default(),
        metrics: metrics::Metrics::new(),
        hooks_wake: Notify::new(),
        hooks_reread: AtomicBool::new(false),
        hooks_status: Default::default(),
    });
    Ok((daemon, intake_receiver))
}

/// The configured watches with their roots resolved; the built-in default's outbox is
/// created first.
fn watched_folders(config: &Config) -> Result<Vec<WatchConfig>, DaemonError> {
    let mut watches = config.watches.clone();
    if config.source.is_none() {
        for watch in &watches {
            std::fs::create_dir_all(&watch.path).map_err(|source| DaemonError::DataDir {
                path: watch.path.clone(),
                source,
            })?;
        }
    }
    watch::resolve_roots(&mut watches)?;
    Ok(watches)
}

/// The daemon's own files, never uploaded: the store, the socket, the embedded receiver's
/// storage (the default outbox sits beside them in the data directory, so not all of it).
fn own_paths(config: &Config, receiver: Option<&(String, PathBuf)>) -> Vec<PathBuf> {
    [
        Some(config.daemon.data_dir.join("store")),
        Some(config.daemon.socket.clone()),
        receiver.map(|(_, storage)| storage.clone()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Binds the control socket, and `/metrics` when configured, and serves them until `services`
/// is cancelled; returns the socket's path.
async fn serve_control_and_metrics(
    config: &Config,
    daemon: &Arc<Daemon>,
    services: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<PathBuf, DaemonError> {
    let socket = config.daemon.socket.clone();
    let listener = control::bind(&socket).await?;
    let handler = Arc::new(Handle(daemon.clone()));
    tracker.spawn(control::serve(
        listener,
        socket.clone(),
        handler,
        services.clone(),
    ));
    if let Some(address) = config.daemon.metrics_listen {
        let listener = metrics::bind(address).await?;
        let local = listener.local_addr().map_err(DaemonError::Receiver)?;
        tracing::info!(%local, "serving Prometheus metrics at /metrics");
        tracker.spawn(metrics::serve(listener, daemon.clone(), services.clone()));
    }
    Ok(socket)
}

/// A hook delivery not made yet, as `ferry jobs` shows it.
fn hook_delivery(delivery: &crate::queue::Delivery) -> control::protocol::HookDelivery {
    control::protocol::HookDelivery {
        job_id: delivery.job_id,
        event: delivery.event.clone(),
        path: delivery.path(),
        state: if delivery.failed { "failed" } else { "pending" }.into(),
        attempts: delivery.attempts,
        last_error: delivery.last_error.clone(),
    }
}

/// The daemon's long-lived tasks besides the services: intake, store recovery, scheduler and
/// the workers it starts.
struct Tasks {
    intake: tokio::task::JoinHandle<()>,
    recovery: tokio::task::JoinHandle<()>,
    stop_recovery: CancellationToken,
    scheduler: tokio::task::JoinHandle<()>,
    stop_claiming: CancellationToken,
    workers: TaskTracker,
    abandon: CancellationToken,
    /// Hook deliveries: aborted at stop (what was not delivered is tried at the next start).
    hooks: tokio::task::JoinHandle<()>,
}

impl Tasks {
    fn start(daemon: &Arc<Daemon>, intake_receiver: mpsc::Receiver<Vec<Candidate>>) -> Tasks {
        let stop_recovery = CancellationToken::new();
        let workers = TaskTracker::new();
        let stop_claiming = CancellationToken::new();
        let abandon = CancellationToken::new();
        Tasks {
            intake: tokio::spawn(intake_loop(daemon.clone(), intake_receiver)),
            recovery: tokio::spawn(store_health::recover(daemon.clone(), stop_recovery.clone())),
            stop_recovery,
            scheduler: tokio::spawn(worker::schedule(
                daemon.clone(),
                workers.clone(),
                stop_claiming.clone(),
                abandon.clone(),
            )),
            stop_claiming,
            workers,
            abandon,
            hooks: tokio::spawn(hooks::run(daemon.clone(), CancellationToken::new())),
        }
    }

    /// The ordered stop: the watcher and intake first, then claiming; uploads in flight get
    /// `grace` to finish, and what is cut off then resumes at the next start.
    async fn stop(self, daemon: &Arc<Daemon>, grace: Duration) {
        // Stopping the watch thread waits for it (it may be mid-scan): off the runtime.
        let watcher = daemon
            .watcher
            .lock()
            .expect("watcher lock is never poisoned")
            .take();
        let _ = tokio::task::spawn_blocking(move || drop(watcher)).await;
        self.intake.abort();
        self.stop_recovery.cancel();
        let _ = self.recovery.await;
        self.stop_claiming.cancel();
        let _ = self.scheduler.await;
        self.workers.close();
        if tokio::time::timeout(grace, self.workers.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "uploads still running after the grace period; they resume at the next start"
            );
            self.abandon.cancel();
            self.workers.wait().await;
        }
        self.hooks.abort();
        let _ = self.hooks.await;
        daemon.keep_learned().await;
    }
}

/// Queues settled files as the watcher hands them over.
async fn intake_loop(daemon: Arc<Daemon>, mut batches: mpsc::Receiver<Vec<Candidate>>) {
    while let Some(batch) = batches.recv().await {
        let queue = daemon.store.jobs();
        let count = batch.len();
        let telling = daemon.clone();
        let enqueued = tokio::task::spawn_blocking(move || {
            queue.enqueue_telling(&batch, now_ms(), |id, candidate| {
                telling
                    .events
                    .record(EventKind::Queued, id, &candidate.path, None)
            })
        });
        match enqueued.await {
            Ok(Ok(outcomes)) => {
                daemon
                    .checked
                    .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
                let queued = outcomes
                    .iter()
                    .filter(|o| !matches!(o, crate::queue::Enqueued::Unchanged))
                    .count();
                tracing::debug!(count, queued, "files settled");
                if queued > 0 {
                    daemon.wake.notify_one();
                }
            }
            Ok(Err(error)) => {
                // Handled, if not queued: the rescan after the failure finds them again.
                daemon.checked.fetch_add(count as u64, Ordering::Relaxed);
                daemon.store_health.failed(&error);
                // A failing store rescans once it recovers; anything else, now.
                if !daemon.store_health.is_failing() {
                    tracing::error!(error = %crate::error::chain(&error), count, "cannot queue files; rescanning to find them again");
                    daemon.request_rescan();
                }
            }
            Err(error) => tracing::error!(%error, "queueing panicked"),
        }
    }
}

impl Daemon {
    /// The settings as configured now.
    fn settings(&self) -> std::sync::RwLockReadGuard<'_, Settings> {
        self.settings
            .read()
            .expect("settings lock is never poisoned")
    }

    /// The watches as configured now.
    fn watches(&self) -> Vec<WatchConfig> {
        self.settings
            .read()
            .expect("settings lock is never poisoned")
            .watches
            .clone()
    }

    /// Asks the watcher for a full scan of every watched folder.
    fn request_rescan(&self) {
        if let Some(watcher) = self
            .watcher
            .lock()
            .expect("watcher lock is never poisoned")
            .as_ref()
        {
            watcher.rescan();
        }
    }

    /// Replaces the watch thread. Blocking: call it off the runtime.
    fn restart_watcher(&self, watches: &[WatchConfig]) -> Result<(), watch::WatchError> {
        // The lock is held only to swap: starting and stopping a watcher take a while, and the
        // control handler takes this lock on the runtime.
        let old = self
            .watcher
            .lock()
            .expect("watcher lock is never poisoned")
            .take();
        drop(old); // the old thread stops first, so two never feed the queue at once
        let new = watch::start(
            watches,
            self.own_paths.clone(),
            self.intake.clone(),
            self.watch_stats.clone(),
        )?;
        *self.watcher.lock().expect("watcher lock is never poisoned") = Some(new);
        Ok(())
    }

    /// Applies a reloaded configuration: remotes, watches, transfers and upload settings. A
    /// configuration that cannot be applied is logged and the running one kept. Blocking.
    fn reload(&self, config: Config) {
        let mut watches = config.watches.clone();
        let applied = watch::resolve_roots(&mut watches)
            .map_err(|e| crate::error::chain(&e))
            .and_then(|()| {
                let (store, embedded) = (&self.store, self.embedded.as_ref());
                remotes::build_uploaders(&config, store, embedded, &self.limiters)
                    .map_err(|e| crate::error::chain(&e))
            });
        let uploaders = match applied {
            Ok(uploaders) => uploaders,
            Err(error) => {
                tracing::error!(%error, "the new configuration cannot be applied; keeping the running one");
                return;
            }
        };
        if let Err(error) = self.restart_watcher(&watches) {
            tracing::error!(error = %crate::error::chain(&error), "cannot watch the new folders; keeping the old ones");
            if let Err(error) = self.restart_watcher(&self.watches()) {
                tracing::error!(error = %crate::error::chain(&error), "cannot watch the old folders either; fix them and send SIGHUP");
            }
            return;
        }
        let mut settings = self
            .settings
            .write()
            .expect("settings lock is never poisoned");
        *settings = Settings {
            watches,
            uploaders,
            transfers: config.daemon.transfers,
            upload: config.upload,
            remotes: config.remotes.clone(),
            orphan_cleanup: config.daemon.orphan_cleanup,
        };
        drop(settings);
        self.limiters.apply(&config);
        tracing::info!("configuration reloaded");
        self.wake.notify_one();
    }

    /// Aborts the orphaned multipart uploads of the S3 remotes, when `orphan_cleanup` says so
    /// (hourly, from `run`'s loop; one pass at a time).
    async fn clean_orphans(&self) {
        let configured = self.settings().orphan_cleanup;
        let Some(older_than) = configured else {
            return;
        };
        if self.cleaning.swap(true, Ordering::SeqCst) {
            return;
        }
        let request = cleanup::Request {
            remote: None,
            older_than,
            dry_run: false,
        };
        match self.cleanup(&request).await {
            Ok(report) => {
                for orphan in report.orphans {
                    tracing::info!(remote = %orphan.remote, key = %orphan.key, upload_id = %orphan.upload_id, outcome = ?orphan.outcome, "orphaned upload");
                }
                for unlisted in report.unlisted {
                    tracing::warn!(remote = %unlisted.remote, error = %unlisted.error, "orphan cleanup skipped a remote");
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::error::chain(&error), "orphan cleanup failed")
            }
        }
        self.cleaning.store(false, Ordering::SeqCst);
    }

    /// `cleanup::run` over the configured remotes and this daemon's sessions.
    async fn cleanup(
        &self,
        request: &cleanup::Request,
    ) -> Result<cleanup::Report, cleanup::CleanupError> {
        let remotes = self.settings().remotes.clone();
        let report = cleanup::run(&remotes, &self.store.sessions(), request).await?;
        let now_seconds = (crate::queue::jobs::now_ms() / 1000) as i64;
        self.metrics.cleaned(&report, now_seconds);
        Ok(report)
    }

    /// Periodic upkeep: prunes finished jobs past `retention`, then checkpoints the store
    /// (what it holds, for the damage check at the next open).
    async fn maintain(&self, retention: Duration) {
        self.prune(retention).await;
        let store = self.store.clone();
        if let Err(error) = self.on_store(move || store.checkpoint()).await {
            tracing::warn!(error = %crate::error::chain(&error), "cannot checkpoint the store");
        }
    }

    async fn prune(&self, retention: Duration) {
        let before = now_ms().saturating_sub(retention.as_millis() as u64);
        match self.with_queue(move |queue| queue.prune_done(before)).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned finished jobs"),
            Err(error) => {
                tracing::warn!(error = %crate::error::chain(&error), "pruning failed")
            }
        }
    }

    /// Runs a job-queue operation on a blocking thread (sled scans and flushes block).
    async fn with_queue<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&JobQueue) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let queue = self.store.jobs();
        self.on_store(move || operation(&queue)).await
    }

    /// Runs a store operation on a blocking thread; a failure is the store health's to know.
    async fn on_store<T: Send + 'static>(
        &self,
        operation: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let result = tokio::task::spawn_blocking(operation)
            .await
            .expect("store operations do not panic");
        if let Err(error) = &result {
            self.store_health.failed(error);
        }
        result
    }

    /// Why the store cannot take writes now, or what it found lost when opened.
    fn store_problem(&self) -> Option<String> {
        self.store_health
            .problem()
            .map(|problem| {
                let dir = self.store.dir().display();
                format!("{problem} on {dir}; uploads wait until it takes writes")
            })
            .or_else(|| self.store.damage())
    }

    async fn status(&self) -> Result<StatusReply, QueueError> {
        let hooks = self
            .hooks_status
            .lock()
            .expect("hooks status lock is never poisoned")
            .clone();
        let (queue, failed) = self
            .with_queue(move |queue| {
                let counts = queue.counts()?;
                // Reads only the records shown, through the index of failures. Best effort: a
                // failing store still gets its status shown.
                let failed = match counts.failed {
                    0 => Vec::new(),
                    _ => queue
                        .recent_failures(STATUS_FAILED_SHOWN)
                        .unwrap_or_default(),
                };
                Ok((counts, failed))
            })
            .await?;
        Ok(StatusReply {
            version: env!("CARGO_PKG_VERSION").into(),
            paused: self.paused.load(Ordering::Relaxed),
            queue,
            active: self.active_transfers(),
            watches: self.watched_paths(),
            failed: failed
                .into_iter()
                .map(|job| FailedJob {
                    job_id: job.id,
                    path: job.path,
                    error: job.last_error.unwrap_or_default(),
                })
                .collect(),
            intake: self.intake_status(),
            store_problem: self.store_problem(),
            watch_health: self.watch_health(),
            remotes: self.remote_status(),
            hooks,
            store_flushes: self.store.flushes(),
        })
    }

    /// The uploads in progress, with how far each has come.
    fn active_transfers(&self) -> Vec<ActiveTransfer> {
        self.active
            .lock()
            .expect("active lock is never poisoned")
            .iter()
            .map(|(job_id, job)| {
                let snapshot = job.progress.snapshot();
                let sent = snapshot.acknowledged + snapshot.in_flight;
                let seconds = job.started.elapsed().as_secs_f64().max(0.001);
                ActiveTransfer {
                    job_id: *job_id,
                    path: job.path.clone(),
                    remote_path: job.remote_path.clone(),
                    size: snapshot.total,
                    bytes_sent: snapshot.position(),
                    part_size: snapshot.part_size,
                    throughput_bytes_per_sec: (sent as f64 / seconds) as u64,
                    part_attempts_failed: job.progress.failed_attempts(),
                }
            })
            .collect()
    }

    fn watched_paths(&self) -> Vec<PathBuf> {
        let settings = self.settings.read();
        let settings = settings.expect("settings lock is never poisoned");
        settings.watches.iter().map(|w| w.path.clone()).collect()
    }

    /// What the watchers have found and are settling.
    fn intake_status(&self) -> IntakeStatus {
        let stats = &self.watch_stats;
        IntakeStatus {
            scans: stats.scans.load(Ordering::Relaxed),
            settling: stats.settling.load(Ordering::Relaxed),
            found: stats.handed_over.load(Ordering::Relaxed),
            checked: self.checked.load(Ordering::Relaxed),
            watch_limited: stats.limited.load(Ordering::Relaxed),
            overflows: stats.overflows.load(Ordering::Relaxed),
        }
    }

    /// The jobs `ferry jobs` asked for, and the oldest hook deliveries waiting, as many.
    async fn jobs(
        &self,
        state: Option<JobState>,
        limit: Option<usize>,
    ) -> Result<Reply, QueueError> {
        let limit = limit.unwrap_or(1000);
        let deliveries = self.store.deliveries();
        let (jobs, waiting) = self
            .with_queue(move |queue| Ok((queue.list(state, limit)?, deliveries.first(limit)?)))
            .await?;
        let hooks = waiting.iter().map(hook_delivery).collect();
        Ok(Reply::Jobs { jobs, hooks })
    }

    /// Queues failed jobs again: those named, or all of them (`None`, `ferry retry --failed`),
    /// which also tries failed hook deliveries again.
    async fn retry(&self, ids: Option<Vec<JobId>>) -> Result<Reply, QueueError> {
        let all_failed = ids.is_none();
        let deliveries = self.store.deliveries();
        let count = self
            .with_queue(move |queue| {
                let jobs = queue.retry_failed(ids.as_deref(), now_ms())?;
                let hooks = match all_failed {
                    true => deliveries.retry_failed(now_ms())?,
                    false => 0,
                };
                Ok(jobs + hooks)
            })
            .await?;
        self.hooks_reread.store(true, Ordering::Relaxed);
        self.hooks_wake.notify_one();
        self.wake.notify_one();
        Ok(Reply::Retried { count })
    }

    /// Starts each remote's planner from what the last run learned of it.
    async fn restore_learned(&self) {
        for uploader in self.uploaders() {
            uploader.restore().await;
        }
    }

    /// Keeps what each remote's planner has learned (before a reload replaces the uploaders,
    /// and when the daemon stops).
    async fn keep_learned(&self) {
        for uploader in self.uploaders() {
            uploader.keep_learned().await;
        }
    }

    fn uploaders_by_name(&self) -> Vec<(String, Arc<Uploader>)> {
        self.settings
            .read()
            .expect("settings lock is never poisoned")
            .uploaders
            .iter()
            .map(|(name, uploader)| (name.clone(), uploader.clone()))
            .collect()
    }

    fn uploaders(&self) -> Vec<Arc<Uploader>> {
        self.settings
            .read()
            .expect("settings lock is never poisoned")
            .uploaders
            .values()
            .cloned()
            .collect()
    }

    /// Pauses (no new uploads start; those in progress finish) or resumes.
    fn pause(&self, paused: bool) -> Reply {
        self.paused.store(paused, Ordering::Relaxed);
        let message = match paused {
            true => "paused: uploads in progress finish, no new ones start",
            false => {
                self.wake.notify_one();
                "resumed"
            }
        };
        Reply::Done {
            message: message.into(),
        }
    }

    /// `ferry bwlimit`: sets every bandwidth limit to `bandwidth` until the next reload or
    /// restart, or (without one) tells the limits in force.
    fn bwlimit(&self, bandwidth: Option<String>) -> Result<Reply, (String, String)> {
        let Some(text) = bandwidth else {
            let limits: Vec<String> = self
                .uploaders_by_name()
                .into_iter()
                .map(|(name, uploader)| match uploader.limiter() {
                    Some(limiter) => format!("{name}: {}", limiter.bandwidth()),
                    None => format!("{name}: off"),
                })
                .collect();
            return Ok(Reply::Done {
                message: format!("bandwidth limits: {}", limits.join(", ")),
            });
        };
        match Bandwidth::parse(&text) {
            Ok(limit) => {
                tracing::info!(limit = %limit, "bandwidth limit set by ferry bwlimit");
                self.limiters.set_all(limit.clone());
                Ok(Reply::Done {
                    message: format!(
                        "bandwidth limit {limit} for every remote, until the next reload or restart"
                    ),
                })
            }
            Err(problem) => Err(("bad_request".into(), format!("bwlimit: {problem}"))),
        }
    }

    /// Each remote's part size, parallelism and link estimates, as its planner has them.
    fn remote_status(&self) -> Vec<RemoteStatus> {
        let settings = self
            .settings
            .read()
            .expect("settings lock is never poisoned");
        settings
            .uploaders
            .iter()
            .filter_map(|(name, uploader)| {
                let (estimates, in_flight) = uploader.estimates()?;
                let (kind, location) = settings
                    .remotes
                    .get(name)
                    .map(crate::remotes::describe)
                    .unwrap_or_default();
                Some(RemoteStatus {
                    name: name.clone(),
                    kind: kind.to_string(),
                    location,
                    part_size: estimates.part_size,
                    parallel_parts: estimates.parallel_parts,
                    in_flight,
                    throughput_bytes_per_sec: estimates.throughput.map(|rate| rate as u64),
                    round_trip_ms: estimates.round_trip.map(|seconds| seconds * 1000.0),
                    failures_per_gib: estimates.failures_per_gib,
                    part_size_cap: estimates.cap,
                    bandwidth: uploader
                        .limiter()
                        .map(|limiter| limiter.bandwidth().to_string()),
                    bandwidth_now: uploader.limiter().and_then(|limiter| limiter.rate_now()),
                    notices: uploader.notices(),
                })
            })
            .collect()
    }

    /// Each watch's health, as `ferry status` shows it.
    fn watch_health(&self) -> Vec<WatchStatus> {
        self.watch_stats
            .health()
            .into_iter()
            .map(|(path, health)| WatchStatus {
                path,
                state: health.state().into(),
                detail: match health {
                    watch::Health::Watching => String::new(),
                    other => other.describe(),
                },
            })
            .collect()
    }
}

/// The control socket's view of the daemon.
struct Handle(Arc<Daemon>);

#[async_trait::async_trait]
impl control::Handler for Handle {
    async fn handle(&self, command: Command) -> Result<Reply, (String, String)> {
        let daemon = &self.0;
        let store_error = |error: QueueError| ("internal".to_string(), crate::error::chain(&error));
        match command {
            Command::Status => daemon
                .status()
                .await
                .map(|status| Reply::Status(Box::new(status)))
                .map_err(store_error),
            Command::Jobs { state, limit } => daemon.jobs(state, limit).await.map_err(store_error),
            Command::Retry { ids } => daemon.retry(Some(ids)).await.map_err(store_error),
            Command::RetryFailed => daemon.retry(None).await.map_err(store_error),
            Command::Pause => Ok(daemon.pause(true)),
            Command::Resume => Ok(daemon.pause(false)),
            Command::Rescan => {
                daemon.request_rescan();
                let message = "rescanning the watched folders".into();
                Ok(Reply::Done { message })
            }
            Command::BwLimit { bandwidth } => daemon.bwlimit(bandwidth),
            Command::Events { since, wait_ms } => {
                let wait = Duration::from_millis(wait_ms).min(MAX_EVENTS_WAIT);
                let (events, oldest) = daemon.events.after(since, wait).await;
                Ok(Reply::Events { events, oldest })
            }
            Command::Cleanup(request) => daemon
                .cleanup(&request)
                .await
                .map(|report| Reply::Cleaned {
                    orphans: report.orphans,
                    unlisted: report.unlisted,
                })
                .map_err(|error| ("cleanup".to_string(), crate::error::chain(&error))),
        }
    }
}
