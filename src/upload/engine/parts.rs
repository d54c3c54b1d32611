//! Sending one session's parts: the layout of parts over the file (carried over from a resumed
//! session, then planned as they are needed), the part-count and in-flight-byte budget, and
//! each part's attempts (streamed from the file, stall watchdog, CRC32C checked, recorded
//! durably once acknowledged).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{Attempt, READER_REPORT_TIMEOUT, blocking, retrying, store_error};
use crate::queue::{PartLimits, PartRecord, RECORD_VERSION, Sessions};
use crate::upload::UploadError;
use crate::upload::backend::{
    Backend, BackendError, CreateRequest, Operation, PartBody, PartReceipt, PartSpec, PartSums,
    Request, SessionRef,
};
use crate::upload::bwlimit::Limiter;
use crate::upload::planner::{Observation, Outcome, PartPlanner, PlanContext, fit};
use crate::upload::progress::Progress;
use crate::upload::retry::RetryPolicy;
use crate::upload::source::{AttemptWatch, LocalFile, SumsAhead};

/// Everything a part task needs, shared by the tasks of one session.
pub(super) struct SessionContext {
    pub backend: Arc<dyn Backend>,
    pub sessions: Sessions,
    pub key: String,
    pub upload_id: String,
    pub remote_path: String,
    pub file: Arc<LocalFile>,
    pub progress: Arc<Progress>,
    pub retry: RetryPolicy,
    pub stall_timeout: Duration,
    /// The remote's planner: told how every attempt went.
    pub planner: Arc<dyn PartPlanner>,
    /// Bytes of this session acknowledged so far (what starting over would throw away).
    pub acknowledged: std::sync::atomic::AtomicU64,
    /// The session is recorded in the store, decided before its first part goes out
    /// (`Layout::plan_first`). A session whose first part is the whole file never is: after a
    /// crash there would be nothing to resume, so the file is simply sent again, and small
    /// files cost no store writes.
    pub recorded: bool,
    /// The file goes whole in one request (`Backend::put_file`) rather than in a session.
    pub whole: Option<CreateRequest>,
    /// The bandwidth limit the bodies draw from, if any.
    pub limiter: Option<Arc<Limiter>>,
    /// The parts' up-front sums, made by the hashing pass (uniform parts only).
    pub ahead: Option<Arc<SumsAhead>>,
}

impl SessionContext {
    /// The request that sends `part`, for messages: a part, or the whole file.
    fn operation(&self, part: PartSpec) -> Request {
        let operation = match self.whole {
            Some(_) => Operation::PutFile,
            None => Operation::PutPart(part.number),
        };
        self.backend.request(operation)
    }

    pub fn session(&self) -> SessionRef<'_> {
        SessionRef {
            id: &self.upload_id,
            remote_path: &self.remote_path,
        }
    }

    /// Notes a part about to be sent, when the session is recorded (not flushed: see
    /// `Sessions::plan_part`). A sled insert may wait on its log: off the runtime.
    pub async fn note_planned(&self, part: &PartRecord) -> Result<(), Attempt> {
        if !self.recorded {
            return Ok(());
        }
        let (sessions, key, planned) = (self.sessions.clone(), self.key.clone(), part.clone());
        blocking(move || Ok(sessions.plan_part(&key, &planned)))
            .await
            .expect("the closure returns Ok")
            .map_err(|source| store_error(self.file.path(), source))
    }
}

/// The parts of one session in sending order: those carried over (planned earlier and not
/// acknowledged), then new ones, sized by the planner as they are needed.
pub(super) struct Layout {
    pending: VecDeque<PartRecord>,
    next_offset: u64,
    next_number: u32,
    /// Whether any part exists yet (an empty file is one empty part).
    planned_any: bool,
    /// The size of every part but the last, once the first is planned, when the remote wants
    /// them uniform.
    uniform_size: Option<u64>,
    size: u64,
    limits: PartLimits,
}

impl Layout {
    /// The layout of a file of `size` bytes over the session's `parts`, and the parts already
    /// acknowledged, by number.
    pub fn new(
        parts: Vec<PartRecord>,
        size: u64,
        limits: PartLimits,
    ) -> (Layout, BTreeMap<u32, PartRecord>) {
        let layout = Layout {
            next_offset: parts.iter().map(PartRecord::end).max().unwrap_or(0),
            next_number: parts.iter().map(|p| p.number).max().unwrap_or(0) + 1,
            planned_any: !parts.is_empty(),
            uniform_size: parts.iter().find(|p| p.number == 1).map(|p| p.size),
            pending: VecDeque::new(),
            size,
            limits,
        };
        let (done, pending): (Vec<_>, Vec<_>) =
            parts.into_iter().partition(PartRecord::is_acknowledged);
        let acknowledged = done.into_iter().map(|part| (part.number, part)).collect();
        (
            Layout {
                pending: pending.into(),
                ..layout
            },
            acknowledged,
        )
    }

    /// For a session with no parts yet: plans the first one and keeps it first in line.
    /// Returns it, or `None` when the session has parts already.
    pub fn plan_first(&mut self, planner: &dyn PartPlanner) -> Option<PartRecord> {
        if self.planned_any {
            return None;
        }
        let first = self.plan(planner)?;
        self.pending.push_front(first.clone());
        Some(first)
    }

    /// Whether `part` is the whole file.
    pub fn is_whole_file(&self, part: &PartRecord) -> bool {
        part.offset == 0 && part.size >= self.size
    }

    /// The size of every part but the last, when the remote wants them uniform and the first
    /// is planned.
    pub fn uniform_size(&self) -> Option<u64> {
        self.uniform_size.filter(|_| self.limits.uniform)
    }

    /// The next part to send, and whether it is newly planned; `None` once the file is
    /// covered.
    fn next(&mut self, planner: &dyn PartPlanner) -> Option<(PartRecord, bool)> {
        if let Some(part) = self.pending.pop_front() {
            return Some((part, false));
        }
        self.plan(planner).map(|part| (part, true))
    }

    fn plan(&mut self, planner: &dyn PartPlanner) -> Option<PartRecord> {
        if self.next_offset >= self.size && (self.size > 0 || self.planned_any) {
            return None;
        }
        let plan = PlanContext {
            offset: self.next_offset,
            file_size: self.size,
            next_number: self.next_number,
            limits: self.limits,
        };
        let desired = match self.uniform_size.filter(|_| self.limits.uniform) {
            Some(size) => size,
            None => planner.desired_size(&plan),
        };
        let part = PartRecord {
            version: RECORD_VERSION,
            number: self.next_number,
            offset: self.next_offset,
            size: fit(desired, &plan),
            etag: None,
            crc32c: None,
        };
        self.uniform_size.get_or_insert(part.size);
        self.next_offset += part.size;
        self.next_number += 1;
        self.planned_any = true;
        Some(part)
    }
}

/// Sends every part of `layout` not yet acknowledged, as many at once as the planner says and
/// within `in_flight_bytes`; returns every acknowledged part by number (`acknowledged` and
/// those sent now). The first failure that is not retried stops the session.
pub(super) async fn send_all(
    context: &Arc<SessionContext>,
    mut layout: Layout,
    mut acknowledged: BTreeMap<u32, PartRecord>,
    in_flight_bytes: u64,
) -> Result<BTreeMap<u32, PartRecord>, Attempt> {
    let planner = context.planner.clone();
    let budget = Budget::new(in_flight_bytes);
    let mut tasks: JoinSet<PartResult> = JoinSet::new();
    let mut finished = |joined| -> Result<(), Attempt> {
        let part = part_result(joined)?;
        acknowledged.insert(part.number, part);
        Ok(())
    };
    while let Some((part, new)) = layout.next(planner.as_ref()) {
        if new {
            context.note_planned(&part).await?;
        }
        context.progress.set_part_size(part.size);
        let parallel = match layout.limits.sequential {
            true => 1,
            false => planner.parallel_parts().max(1),
        };
        while tasks.len() >= parallel {
            let joined = tasks.join_next().await.expect("tasks are running");
            finished(joined)?;
        }
        // Wait for room in the byte budget, collecting finished parts meanwhile so that a
        // failure stops the session at once.
        let permit = loop {
            tokio::select! {
                permit = budget.acquire(part.size) => break permit,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => finished(joined)?,
            }
        };
        tasks.spawn(send_part(context.clone(), part, permit));
    }
    while let Some(joined) = tasks.join_next().await {
        finished(joined)?;
    }
    Ok(acknowledged)
}

type PartResult = Result<PartRecord, Attempt>;

/// A part the remote acknowledged.
struct Stored {
    etag: String,
    /// CRC32C of what the reader streamed (and the remote confirmed, if it reports one).
    crc32c: u32,
    streamed: u64,
}

/// Sends one part, retrying it under the policy; records it durably once acknowledged.
async fn send_part(
    context: Arc<SessionContext>,
    part: PartRecord,
    _permit: OwnedSemaphorePermit,
) -> PartResult {
    let path = context.file.path().to_path_buf();
    let named = Some((part.number, part.size));
    let (stored, _) = retrying(&context.retry, &path, named, |attempt| {
        observed(&context, &part, &path, attempt)
    })
    .await?;
    let acknowledged = PartRecord {
        etag: Some(stored.etag),
        crc32c: Some(stored.crc32c),
        ..part
    };
    record_acknowledged(&context, &acknowledged, &path).await?;
    context
        .progress
        .part_acknowledged(stored.streamed, part.size);
    let counter = &context.acknowledged;
    counter.fetch_add(part.size, std::sync::atomic::Ordering::Relaxed);
    Ok(acknowledged)
}

/// One attempt (`put_once`), told to the planner: its size, the bytes that went out, its time
/// and how it ended.
/// A part that failed is abandoned with its session (`Attempt::Replan`) when it is this many
/// times the size the planner now chooses (the link has become worse than the layout), unless
/// the session holds more than this many such parts already.
const REPLAN_RATIO: u64 = 2;

async fn observed(
    context: &SessionContext,
    part: &PartRecord,
    path: &std::path::Path,
    attempt: u32,
) -> Result<Result<Stored, BackendError>, Attempt> {
    let planner = &context.planner;
    let held = context
        .acknowledged
        .load(std::sync::atomic::Ordering::Relaxed);
    let oversized = part.size > planner.size_now().saturating_mul(REPLAN_RATIO);
    if attempt > 1 && oversized && held < part.size.saturating_mul(REPLAN_RATIO) {
        return Err(Attempt::Replan(format!(
            "part {} of {} bytes keeps failing where the link now takes parts of {}",
            part.number,
            part.size,
            planner.size_now()
        )));
    }
    let in_flight = planner.begin();
    let started = Instant::now();
    let (result, streamed) = match put_once(context, part, path).await {
        Ok(attempt) => attempt,
        Err(local) => {
            planner.abandon();
            return Err(local);
        }
    };
    planner.observe(&Observation {
        size: part.size,
        sent: streamed,
        elapsed: started.elapsed(),
        outcome: outcome(&result),
        in_flight,
    });
    Ok(result)
}

/// How an attempt ended, in the controller's terms.
fn outcome(result: &Result<Stored, BackendError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Acknowledged,
        Err(BackendError::Stalled { .. }) => Outcome::Stalled,
        Err(BackendError::Status { status: 413, .. }) => Outcome::TooLarge,
        Err(BackendError::Status {
            status: 429 | 503, ..
        }) => Outcome::Failed { busy: true },
        Err(_) => Outcome::Failed { busy: false },
    }
}

/// One attempt: streams the part from the file under the stall watchdog (after computing the
/// checksums the remote wants up front), then checks the remote's receipt against the CRC32C
/// the reader computed (a mismatch is `Damaged`, sent again). A local read failure ends the
/// session's attempt (a file that shrank is a change: start over).
async fn put_once(
    context: &SessionContext,
    part: &PartRecord,
    path: &std::path::Path,
) -> Result<(Result<Stored, BackendError>, u64), Attempt> {
    let spec = PartSpec {
        number: part.number,
        offset: part.offset,
        size: part.size,
    };
    let sums = up_front(context, spec, path).await?;
    let watch = Arc::new(AttemptWatch::new());
    let (mut body, reader) = context.file.part_body(
        spec,
        watch.clone(),
        context.progress.clone(),
        context.limiter.clone(),
    );
    body.sums = sums;
    let outcome = send_watched(context, spec, body, &watch).await;
    let streamed = watch.streamed();
    let local_crc = match tokio::time::timeout(READER_REPORT_TIMEOUT, reader).await {
        Ok(Ok(Ok(crc))) => Some(crc),
        Ok(Ok(Err(source))) => {
            context.progress.attempt_failed(streamed);
            return Err(read_failed(source, path));
        }
        _ => None,
    };
    let judged = judge(context, spec, outcome, local_crc, streamed);
    if judged.is_err() {
        context.progress.attempt_failed(streamed);
    }
    Ok((judged, streamed))
}

/// Sends the part (or the whole file), failing it as `Stalled` when `watch` sees no progress
/// for the stall timeout.
async fn send_watched(
    context: &SessionContext,
    spec: PartSpec,
    body: PartBody,
    watch: &AttemptWatch,
) -> Result<PartReceipt, BackendError> {
    let request = match &context.whole {
        Some(create) => context.backend.put_file(create, body),
        None => context.backend.put_part(context.session(), spec, body),
    };
    tokio::select! {
        result = request => result,
        _ = watch.stalled(context.stall_timeout) => Err(BackendError::Stalled {
            operation: context.operation(spec),
            endpoint: context.backend.endpoint().to_string(),
            after: context.stall_timeout,
        }),
    }
}

/// The checksums the remote wants before the body: those of a preloaded file, those the hashing
/// pass made on its way, or read from the file on a blocking thread.
async fn up_front(
    context: &SessionContext,
    spec: PartSpec,
    path: &std::path::Path,
) -> Result<PartSums, Attempt> {
    let session = context.whole.is_none().then(|| context.session());
    let wanted = context.backend.up_front(session);
    if !wanted.any() {
        return Ok(PartSums::default());
    }
    if let Some(sums) = context.file.preloaded_sums(spec, wanted) {
        return Ok(sums);
    }
    if let Some(ahead) = &context.ahead
        && let Some(sums) = ahead.take(spec).await
        && wanted.met_by(&sums)
    {
        return Ok(sums);
    }
    let file = context.file.clone();
    blocking(move || file.sums(spec, wanted))
        .await
        .map_err(|source| read_failed(source, path))
}

/// A local read that failed: a file that shrank starts over, anything else stops the file.
fn read_failed(source: io::Error, path: &std::path::Path) -> Attempt {
    if source.kind() == io::ErrorKind::UnexpectedEof {
        return Attempt::Restart(source.to_string());
    }
    let path = path.to_path_buf();
    UploadError::Read { path, source }.into()
}

/// The part as stored, when the receipt agrees with what the reader streamed.
fn judge(
    context: &SessionContext,
    spec: PartSpec,
    outcome: Result<PartReceipt, BackendError>,
    local_crc: Option<u32>,
    streamed: u64,
) -> Result<Stored, BackendError> {
    match (outcome, local_crc) {
        (Ok(receipt), Some(crc)) if receipt.crc32c.is_none_or(|remote| remote == crc) => {
            Ok(Stored {
                etag: receipt.etag,
                crc32c: crc,
                streamed,
            })
        }
        (Ok(receipt), crc) => Err(BackendError::Damaged {
            operation: context.operation(spec),
            endpoint: context.backend.endpoint().to_string(),
            problem: format!(
                "the remote stored CRC32C {:?} but {:?} was sent",
                receipt.crc32c, crc
            ),
        }),
        (Err(error), _) => Err(error),
    }
}

/// Records an acknowledged part durably, when the session is recorded.
async fn record_acknowledged(
    context: &SessionContext,
    part: &PartRecord,
    path: &std::path::Path,
) -> Result<(), Attempt> {
    if !context.recorded {
        return Ok(());
    }
    context
        .sessions
        .acknowledge_part_durable(&context.key, part)
        .await
        .map_err(|source| {
            Attempt::from(UploadError::Store {
                path: PathBuf::from(path),
                source,
            })
        })?;
    tracing::debug!(part = part.number, size = part.size, "part recorded");
    Ok(())
}

fn part_result(joined: Result<PartResult, tokio::task::JoinError>) -> PartResult {
    match joined {
        Ok(result) => result,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// The in-flight-byte budget of one session.
struct Budget {
    kibibytes: Arc<Semaphore>,
    total_kibibytes: u32,
}

impl Budget {
    fn new(in_flight_bytes: u64) -> Budget {
        let total_kibibytes = in_flight_bytes
            .div_ceil(1024)
            .clamp(1, u64::from(u32::MAX >> 4)) as u32;
        Budget {
            kibibytes: Arc::new(Semaphore::new(total_kibibytes as usize)),
            total_kibibytes,
        }
    }

    /// Waits for the part's bytes (a part larger than the whole budget takes all of it, so
    /// it runs alone rather than never).
    async fn acquire(&self, part_size: u64) -> OwnedSemaphorePermit {
        let wanted = part_size
            .div_ceil(1024)
            .clamp(1, u64::from(self.total_kibibytes)) as u32;
        self.kibibytes
            .clone()
            .acquire_many_owned(wanted)
            .await
            .expect("the budget's semaphore is never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::planner::FixedPlanner;

    fn limits(max_parts: u32) -> PartLimits {
        PartLimits {
            min_part_size: 1,
            max_part_size: 1 << 30,
            max_parts,
            sequential: false,
            uniform: false,
        }
    }

    fn part(number: u32, offset: u64, size: u64, etag: Option<&str>) -> PartRecord {
        PartRecord {
            version: RECORD_VERSION,
            number,
            offset,
            size,
            etag: etag.map(str::to_owned),
            crc32c: None,
        }
    }

    fn drain(layout: &mut Layout, planner: &dyn PartPlanner) -> Vec<(u32, u64, u64, bool)> {
        std::iter::from_fn(|| layout.next(planner))
            .map(|(p, new)| (p.number, p.offset, p.size, new))
            .collect()
    }

    #[test]
    fn a_resumed_layout_sends_what_is_missing_then_plans_the_rest() {
        let planner = FixedPlanner { chunk_size: 4 };
        let parts = vec![part(1, 0, 4, Some("a")), part(2, 4, 4, None)];
        let (mut layout, acknowledged) = Layout::new(parts, 14, limits(100));
        assert_eq!(acknowledged.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(layout.plan_first(&planner), None, "it has parts");
        assert_eq!(
            drain(&mut layout, &planner),
            vec![(2, 4, 4, false), (3, 8, 4, true), (4, 12, 2, true)]
        );
    }

    /// Sizes 3, 5, 7, … as a learning planner might choose them.
    struct Growing(std::sync::atomic::AtomicU64);

    impl PartPlanner for Growing {
        fn desired_size(&self, _context: &PlanContext) -> u64 {
            let order = std::sync::atomic::Ordering::Relaxed;
            self.0.fetch_add(2, order) + 2
        }
    }

    fn growing() -> Growing {
        Growing(std::sync::atomic::AtomicU64::new(1))
    }

    #[test]
    fn a_remote_that_wants_uniform_parts_gets_the_first_size_throughout() {
        let uniform = PartLimits {
            uniform: true,
            ..limits(100)
        };
        let (mut layout, _) = Layout::new(Vec::new(), 10, uniform);
        let sizes: Vec<u64> = drain(&mut layout, &growing()).iter().map(|p| p.2).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1]);
        let (mut free, _) = Layout::new(Vec::new(), 10, limits(100));
        let sizes: Vec<u64> = drain(&mut free, &growing()).iter().map(|p| p.2).collect();
        assert_eq!(
            sizes,
            vec![3, 5, 2],
            "otherwise the planner decides each part"
        );
        let resumed = vec![part(1, 0, 4, Some("a"))];
        let (mut layout, _) = Layout::new(resumed, 10, uniform);
        let sizes: Vec<u64> = drain(&mut layout, &growing()).iter().map(|p| p.2).collect();
        assert_eq!(sizes, vec![4, 2], "a resumed session keeps its part size");
    }

    #[test]
    fn the_first_part_is_planned_once_and_says_whether_it_is_the_whole_file() {
        let planner = FixedPlanner { chunk_size: 8 };
        let (mut small, _) = Layout::new(Vec::new(), 5, limits(100));
        let first = small.plan_first(&planner).unwrap();
        assert!(small.is_whole_file(&first));
        assert_eq!(drain(&mut small, &planner), vec![(1, 0, 5, false)]);

        let (mut large, _) = Layout::new(Vec::new(), 20, limits(100));
        let first = large.plan_first(&planner).unwrap();
        assert!(!large.is_whole_file(&first));
        assert_eq!(
            drain(&mut large, &planner),
            vec![(1, 0, 8, false), (2, 8, 8, true), (3, 16, 4, true)]
        );

        let (mut empty, _) = Layout::new(Vec::new(), 0, limits(100));
        let first = empty.plan_first(&planner).unwrap();
        assert!(
            empty.is_whole_file(&first),
            "an empty file is one empty part"
        );
        assert_eq!(drain(&mut empty, &planner), vec![(1, 0, 0, false)]);
    }
}
