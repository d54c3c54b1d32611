//! Prometheus metrics of the daemon (`[daemon] metrics_listen`), served as `/metrics` in the
//! OpenMetrics text format that Prometheus scrapes. Counters are kept as uploads end; gauges
//! are read from the daemon's own status at each scrape, so they never drift from what
//! `ferry status` says. Names follow Prometheus's conventions: a `ferry_` prefix, base units
//! (bytes, seconds), `_total` on counters.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::control::StatusReply;

/// One label and its value, e.g. `remote="main"`.
type Labels = Vec<(&'static str, String)>;

/// The daemon's metrics: the families it updates and the registry that encodes them.
#[derive(Default)]
pub(super) struct Metrics {
    registry: Registry,
    uploaded_bytes: Family<Labels, Counter>,
    uploaded_files: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    part_attempts_failed: Family<Labels, Counter>,
    jobs: Family<Labels, Gauge>,
    oldest_pending: Gauge,
    part_size: Family<Labels, Gauge>,
    parallel_parts: Family<Labels, Gauge>,
    parts_in_flight: Family<Labels, Gauge>,
    throughput: Family<Labels, Gauge>,
    bandwidth_limit: Family<Labels, Gauge>,
    watches_unhealthy: Gauge,
    watch_limited: Gauge,
    scans: Counter,
    overflows: Counter,
    hooks: Family<Labels, Gauge>,
    store_flushes: Counter,
    orphans_aborted: Family<Labels, Counter>,
    cleanup_listed: Family<Labels, Gauge>,
    cleanup_failures: Family<Labels, Counter>,
}

/// How an upload that did not succeed ended, for `ferry_upload_errors_total{class}`.
#[derive(Debug, Clone, Copy)]
pub(super) enum ErrorClass {
    /// Retried later.
    Transient,
    /// Failed until the user retries it.
    Permanent,
    /// The file vanished or was refused.
    Dropped,
}

/// Each metric's name and help, as `/metrics` shows them.
type Described = (&'static str, &'static str);
const UPLOADED_BYTES: Described = (
    "ferry_uploaded_bytes",
    "Bytes of the files uploaded, by remote",
);
const UPLOADED_FILES: Described = ("ferry_uploaded_files", "Files uploaded, by remote");
const ERRORS: Described = (
    "ferry_upload_errors",
    "Uploads that did not succeed, by remote and class (transient: retried; permanent: failed until `ferry retry`; dropped: the file vanished or was refused)",
);
const PART_ATTEMPTS_FAILED: Described = (
    "ferry_part_attempts_failed",
    "Part attempts that failed and were retried, by remote (counted as each upload ends): a flaky link or server shows here first",
);
const JOBS: Described = ("ferry_jobs", "Jobs by state");
const OLDEST_PENDING: Described = (
    "ferry_oldest_pending_age_seconds",
    "How long the job that has waited longest for its upload has been due",
);
const PART_SIZE: Described = (
    "ferry_part_size_bytes",
    "The part size each remote's planner chooses now",
);
const PARALLEL_PARTS: Described = (
    "ferry_parallel_parts",
    "Parts of a file each remote's planner sends at once",
);
const PARTS_IN_FLIGHT: Described = (
    "ferry_parts_in_flight",
    "Parts on their way to each remote now",
);
const THROUGHPUT: Described = (
    "ferry_link_throughput_bytes_per_second",
    "Each remote's link rate as the planner estimates it",
);
const BANDWIDTH_LIMIT: Described = (
    "ferry_bandwidth_limit_bytes_per_second",
    "The bandwidth limit in force for each remote (absent while unlimited)",
);
const WATCHES_UNHEALTHY: Described = (
    "ferry_watches_unhealthy",
    "Watched folders that are missing, partly unreadable or past the inotify limit",
);
const WATCH_LIMITED: Described = (
    "ferry_watch_limit_reached",
    "1 while the inotify watch limit keeps folders unwatched (they are rescanned instead)",
);
const SCANS: Described = (
    "ferry_watch_scans",
    "Full scans of the watched folders: at start, `ferry rescan`, after the watcher's events overflowed or a folder came back",
);
const OVERFLOWS: Described = (
    "ferry_watch_event_overflows",
    "Times the file events overflowed their buffer (each answered by a rescan)",
);
const HOOKS: Described = (
    "ferry_hook_deliveries",
    "Hook deliveries not made yet, by state (pending: to be tried; failed: waiting for `ferry retry --failed`)",
);
const STORE_FLUSHES: Described = (
    "ferry_store_flushes",
    "Flushes of the job store (each a sync on a disk); outcomes reported together share one",
);

const ORPHANS_ABORTED: Described = (
    "ferry_orphan_uploads_aborted",
    "Multipart uploads no session owned that orphan cleanup aborted, by remote (the daemon's pass, and `ferry cleanup` through the daemon)",
);
const CLEANUP_LISTED: Described = (
    "ferry_orphan_cleanup_last_success_timestamp_seconds",
    "When orphan cleanup last listed each S3 remote's open uploads (Unix time); absent until it could, so alert on its age",
);
const CLEANUP_FAILURES: Described = (
    "ferry_orphan_cleanup_failures",
    "Orphan cleanup passes that could not list a remote's open uploads, by remote (its orphans keep costing)",
);

fn register<M: Metric + Clone>(registry: &mut Registry, (name, help): Described, metric: &M) {
    registry.register(name, help, metric.clone());
}

impl Metrics {
    pub(super) fn new() -> Metrics {
        let mut metrics = Metrics::default();
        let registry = &mut metrics.registry;
        register(registry, UPLOADED_BYTES, &metrics.uploaded_bytes);
        register(registry, UPLOADED_FILES, &metrics.uploaded_files);
        register(registry, ERRORS, &metrics.errors);
        register(
            registry,
            PART_ATTEMPTS_FAILED,
            &metrics.part_attempts_failed,
        );
        register(registry, JOBS, &metrics.jobs);
        register(registry, OLDEST_PENDING, &metrics.oldest_pending);
        register(registry, PART_SIZE, &metrics.part_size);
        register(registry, PARALLEL_PARTS, &metrics.parallel_parts);
        register(registry, PARTS_IN_FLIGHT, &metrics.parts_in_flight);
        register(registry, THROUGHPUT, &metrics.throughput);
        register(registry, BANDWIDTH_LIMIT, &metrics.bandwidth_limit);
        register(registry, WATCHES_UNHEALTHY, &metrics.watches_unhealthy);
        register(registry, WATCH_LIMITED, &metrics.watch_limited);
        register(registry, SCANS, &metrics.scans);
        register(registry, OVERFLOWS, &metrics.overflows);
        register(registry, HOOKS, &metrics.hooks);
        register(registry, STORE_FLUSHES, &metrics.store_flushes);
        register(registry, ORPHANS_ABORTED, &metrics.orphans_aborted);
        register(registry, CLEANUP_LISTED, &metrics.cleanup_listed);
        register(registry, CLEANUP_FAILURES, &metrics.cleanup_failures);
        metrics
    }

    /// An orphan cleanup (`report`) ended at `now_seconds` (Unix time).
    pub(super) fn cleaned(&self, report: &crate::cleanup::Report, now_seconds: i64) {
        let labels = |remote: &str| vec![("remote", remote.to_string())];
        for remote in &report.listed {
            self.cleanup_listed
                .get_or_create(&labels(remote))
                .set(now_seconds);
        }
        for unlisted in &report.unlisted {
            let failures = self
                .cleanup_failures
                .get_or_create(&labels(&unlisted.remote));
            failures.inc();
        }
        let aborted = report
            .orphans
            .iter()
            .filter(|orphan| orphan.outcome == crate::cleanup::Outcome::Aborted);
        for orphan in aborted {
            self.orphans_aborted
                .get_or_create(&labels(&orphan.remote))
                .inc();
        }
    }

    /// A file of `size` bytes uploaded to `remote`.
    pub(super) fn uploaded(&self, remote: &str, size: u64) {
        let labels = vec![("remote", remote.to_string())];
        self.uploaded_bytes.get_or_create(&labels).inc_by(size);
        self.uploaded_files.get_or_create(&labels).inc();
    }

    /// An upload to `remote` ended, successful or not, after `count` part attempts failed.
    pub(super) fn part_attempts_failed(&self, remote: &str, count: u64) {
        let labels = vec![("remote", remote.to_string())];
        self.part_attempts_failed
            .get_or_create(&labels)
            .inc_by(count);
    }

    /// An upload to `remote` that did not succeed.
    pub(super) fn failed(&self, remote: &str, class: ErrorClass) {
        let class = match class {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Dropped => "dropped",
        };
        let labels = vec![("remote", remote.to_string()), ("class", class.to_string())];
        self.errors.get_or_create(&labels).inc();
    }

    /// The exposition, with the gauges set from `status` and the oldest due job's age.
    fn render(&self, status: &StatusReply, oldest_pending_seconds: u64) -> String {
        let counts = &status.queue;
        self.jobs.clear();
        for (state, count) in [
            ("queued", counts.queued),
            ("active", counts.active),
            ("failed", counts.failed),
            ("done", counts.done),
        ] {
            self.jobs
                .get_or_create(&vec![("state", state.to_string())])
                .set(count as i64);
        }
        self.oldest_pending.set(oldest_pending_seconds as i64);
        self.render_remotes(status);
        let unhealthy = status.unhealthy_watches().count();
        self.watches_unhealthy.set(unhealthy as i64);
        self.watch_limited
            .set(i64::from(status.intake.watch_limited));
        // The daemon counts scans itself; the counter follows it.
        let scans = status.intake.scans;
        self.scans.inc_by(scans.saturating_sub(self.scans.get()));
        let overflows = status.intake.overflows;
        self.overflows
            .inc_by(overflows.saturating_sub(self.overflows.get()));
        let flushes = status.store_flushes;
        self.store_flushes
            .inc_by(flushes.saturating_sub(self.store_flushes.get()));
        for (state, count) in [
            ("pending", status.hooks.pending),
            ("failed", status.hooks.failed),
        ] {
            let labels = vec![("state", state.to_string())];
            self.hooks.get_or_create(&labels).set(count as i64);
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String does not fail");
        text
    }

    fn render_remotes(&self, status: &StatusReply) {
        let families = [
            &self.part_size,
            &self.parallel_parts,
            &self.parts_in_flight,
            &self.throughput,
            &self.bandwidth_limit,
        ];
        for family in families {
            family.clear();
        }
        for remote in &status.remotes {
            let labels = vec![("remote", remote.name.clone())];
            self.part_size
                .get_or_create(&labels)
                .set(remote.part_size as i64);
            let parallel = remote.parallel_parts as i64;
            self.parallel_parts.get_or_create(&labels).set(parallel);
            let in_flight = remote.in_flight as i64;
            self.parts_in_flight.get_or_create(&labels).set(in_flight);
            if let Some(rate) = remote.throughput_bytes_per_sec {
                self.throughput.get_or_create(&labels).set(rate as i64);
            }
            if let Some(limit) = remote.bandwidth_now {
                self.bandwidth_limit
                    .get_or_create(&labels)
                    .set(limit as i64);
            }
        }
    }
}

/// Binds `address` for `/metrics` (a failure ends the daemon's start with the address named).
pub(super) async fn bind(
    address: SocketAddr,
) -> Result<tokio::net::TcpListener, super::DaemonError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| super::DaemonError::Metrics { address, source })
}

/// Serves `/metrics` on `listener` until `shutdown`.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    daemon: Arc<Daemon>,
    shutdown: CancellationToken,
) {
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(daemon);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "the metrics endpoint stopped");
    }
}

/// One scrape: the daemon's status turned into the exposition.
async fn scrape(
    axum::extract::State(daemon): axum::extract::State<Arc<Daemon>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let found = daemon.status().await;
    let due = daemon.with_queue(|queue| queue.next_due_ms()).await;
    let (status, due) = match (found, due) {
        (Ok(status), Ok(due)) => (status, due),
        (Err(error), _) | (_, Err(error)) => {
            let message = format!(
                "cannot read the daemon's state: {}",
                crate::error::chain(&error)
            );
            return (axum::http::StatusCode::SERVICE_UNAVAILABLE, message).into_response();
        }
    };
    let now = crate::queue::jobs::now_ms();
    let oldest = due
        .filter(|due| *due <= now)
        .map_or(0, |due| (now - due) / 1000);
    let text = daemon.metrics.render(&status, oldest);
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response()
}
