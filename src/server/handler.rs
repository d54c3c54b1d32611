//! One handler per protocol endpoint. Each checks its input with `validate`, runs the disk work
//! of `storage` off the async runtime (part bodies through `part`), and answers with a protocol
//! reply or an `ApiError`.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::live::{HashProgress, Live, Placement};
use super::part::{self, Reservation, Sink};
use super::storage::{self, Completion, Location, PartFile, Received, SessionRecord};
use super::validate::{self, ManifestProblem, StoredPart};
use super::webhook::Webhook;
use super::{AppState, SERVER_VERSION};
use crate::protocol::{
    CHECKSUM_HEADER, CompleteRequest, CompleteResponse, CompletedFile, ErrorCode, FileMetadata,
    Health, InitRequest, InitResponse, PART_NUMBER_HEADER, PART_OFFSET_HEADER, PartInfo,
    SessionInfo, SessionState, decode_crc32c, encode_crc32c,
};

/// Largest JSON request body accepted: a complete manifest of 10,000 parts with long etags
/// fits with room to spare.
const MAX_JSON_BYTES: usize = 4 << 20;

type Shared = State<Arc<AppState>>;

pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: SERVER_VERSION.into(),
    })
}

/// An init request's fields, each as the protocol allows it and this receiver accepts it.
fn check_init(app: &AppState, request: &InitRequest) -> Result<(), ApiError> {
    validate::filename(&request.filename).map_err(ApiError::invalid_request)?;
    crate::protocol::check_workspace_id(&request.workspace_id)
        .map_err(ApiError::invalid_request)?;
    app.check_workspace(&request.workspace_id)?;
    crate::protocol::check_metadata(&request.metadata).map_err(ApiError::invalid_request)?;
    if let Some(mime_type) = &request.mime_type
        && (mime_type.len() > 255 || mime_type.chars().any(char::is_control))
    {
        return Err(ApiError::invalid_request(
            "mime_type must be at most 255 printable bytes",
        ));
    }
    if let Some(digest) = &request.sha256 {
        validate::sha256_hex(digest).map_err(ApiError::invalid_request)?;
    }
    if let Some(mtime) = &request.mtime {
        validate::mtime(mtime).map_err(ApiError::invalid_request)?;
    }
    Ok(())
}

/// Whether a file of `total_size` bytes fits: under the size limit, and twice over in the
/// free space (parts and the assembled file coexist during complete).
async fn check_room(app: &AppState, total_size: u64) -> Result<(), ApiError> {
    let limits = app.config.limits;
    if total_size > limits.max_file_size {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "total_size {} is over this receiver's limit of {} bytes",
                total_size, limits.max_file_size
            ),
        ));
    }
    let storage = app.storage.clone();
    let available = blocking(move || storage.available_bytes(), "check free space").await?;
    if total_size.saturating_mul(2) > available {
        return Err(ApiError::new(
            ErrorCode::InsufficientStorage,
            format!(
                "the receiver has {available} bytes free, not enough for a {} byte upload",
                total_size
            ),
        ));
    }
    Ok(())
}

pub async fn init(State(app): Shared, body: Body) -> Result<Response, ApiError> {
    let request: InitRequest = parse_json(body).await?;
    check_init(&app, &request)?;
    check_room(&app, request.total_size).await?;
    let record = new_session(&app, request, SystemTime::now());
    if !app.open_sessions.take() {
        return Err(ApiError::too_many_sessions(
            app.config.guards.max_open_sessions,
        ));
    }
    let reply = InitResponse {
        upload_id: record.upload_id.clone(),
        expires_at: storage::rfc3339(record.expires_at_unix),
        min_part_size: record.min_part_size,
        max_part_size: record.max_part_size,
        max_parts: record.max_parts,
    };
    let storage = app.storage.clone();
    let created = blocking(
        move || storage.create_session(&record),
        "create the session",
    )
    .await;
    if created.is_err() {
        app.open_sessions.release(1);
    }
    created?;
    Ok((StatusCode::CREATED, Json(reply)).into_response())
}

/// The record of a new open session for `request`, made at `now`, with this receiver's limits
/// and lifetime.
fn new_session(app: &AppState, request: InitRequest, now: SystemTime) -> SessionRecord {
    let limits = app.config.limits;
    SessionRecord {
        version: SessionRecord::new_version(),
        upload_id: format!("up_{:032x}", rand::random::<u128>()),
        filename: request.filename,
        workspace_id: request.workspace_id,
        total_size: request.total_size,
        mime_type: request.mime_type,
        metadata: request.metadata,
        sha256: request.sha256,
        mtime: request.mtime,
        min_part_size: limits.min_part_size,
        max_part_size: limits.max_part_size,
        max_parts: limits.max_parts,
        created_at_unix: storage::unix_seconds(now),
        expires_at_unix: storage::unix_seconds(now + app.config.session_ttl),
        state: SessionState::Open,
        completion: None,
    }
}

pub async fn query(
    State(app): Shared,
    Path(upload_id): Path<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    let record = app.open_record(&upload_id).await?;
    let storage = app.storage.clone();
    let id = upload_id.clone();
    let parts = blocking(move || storage.list_parts(&id), "list parts").await?;
    Ok(Json(SessionInfo {
        upload_id,
        state: record.state,
        filename: record.filename,
        workspace_id: record.workspace_id,
        total_size: record.total_size,
        expires_at: storage::rfc3339(record.expires_at_unix),
        parts: parts.iter().map(part_info).collect(),
        file: record.completion.map(|completion| completion.file),
    }))
}

/// `PUT .../parts`. A refusal carries `Connection: close`: it may come before the body was
/// read, and a client that reused the connection would then fail its next request.
pub async fn put_part(
    state: Shared,
    upload_id: Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match receive_part(state, upload_id, headers, body).await {
        Ok(response) => response,
        Err(error) => {
            let mut response = error.into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

async fn receive_part(
    State(app): Shared,
    Path(upload_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let head = PartHead::parse(&headers)?;
    let record = app.open_record(&upload_id).await?;
    head.check(&record)?;
    let (part_number, content_length) = (head.part_number, head.content_length);
    let (reservation, sink) = app.reserve(&upload_id, record.total_size, &head).await?;
    let (received, crc, reservation) = part::receive(
        body,
        sink,
        content_length,
        reservation,
        app.config.guards.body_idle_timeout,
    )
    .await?;
    if let Err(error) = head.check_crc(crc) {
        discard(&received);
        return Err(error);
    }
    let etag = storage::new_etag(crc);
    app.commit_part(&upload_id, &head, reservation, &received, &etag)
        .await?;
    app.metrics.received(content_length);
    if matches!(received, Received::InPlace { .. }) {
        part::advance_hash(app.clone(), upload_id.clone());
    }
    let info = PartInfo {
        part_number,
        size: content_length,
        etag: etag.clone(),
        crc32c: encode_crc32c(crc),
    };
    Ok(([(header::ETAG, etag_header(&etag))], Json(info)).into_response())
}

/// The `ETag` header of a part's etag (hex digits), quoted.
fn etag_header(etag: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{etag}\""))
        .expect("an etag of hex digits is a valid header value")
}

/// Removes a part received into a file of its own, when it is refused after all.
fn discard(received: &Received) {
    if let Received::Loose(path) = received {
        let _ = std::fs::remove_file(path);
    }
}

/// What a part upload's headers say.
struct PartHead {
    part_number: u32,
    content_length: u64,
    crc32c: Option<u32>,
    /// Where the part lies in the file (protocol v1.1), if the client says.
    offset: Option<u64>,
}

impl PartHead {
    fn parse(headers: &HeaderMap) -> Result<PartHead, ApiError> {
        let part_number = header_text(headers, PART_NUMBER_HEADER)
            .and_then(|text| text.trim().parse::<u32>().ok())
            .filter(|number| *number >= 1)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidPartNumber,
                    "Fastio-Part-Number must be a whole number from 1 to max_parts",
                )
            })?;
        let content_length = header_text(headers, header::CONTENT_LENGTH.as_str())
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::LengthRequired,
                    "a part upload needs a Content-Length header",
                )
            })?;
        let crc32c = match header_text(headers, CHECKSUM_HEADER) {
            None => None,
            Some(text) => Some(decode_crc32c(text).ok_or_else(|| {
                ApiError::invalid_request("Fastio-Checksum-CRC32C must be base64 of 4 bytes")
            })?),
        };
        let offset = match header_text(headers, PART_OFFSET_HEADER) {
            None => None,
            Some(text) => Some(text.trim().parse::<u64>().map_err(|_| {
                ApiError::invalid_request("Fastio-Part-Offset must be a whole number of bytes")
            })?),
        };
        Ok(PartHead {
            part_number,
            content_length,
            crc32c,
            offset,
        })
    }

    /// Refuses a part whose body's CRC32C, `crc`, is not the one its header said.
    fn check_crc(&self, crc: u32) -> Result<(), ApiError> {
        let Some(expected) = self.crc32c.filter(|expected| *expected != crc) else {
            return Ok(());
        };
        Err(ApiError::new(
            ErrorCode::ChecksumMismatch,
            format!(
                "part {}: body has CRC32C {} but the header said {}",
                self.part_number,
                encode_crc32c(crc),
                encode_crc32c(expected)
            ),
        ))
    }

    /// Refuses, before any of the body is read, a part the open session cannot take.
    fn check(&self, record: &SessionRecord) -> Result<(), ApiError> {
        ensure_open(record)?;
        let (part_number, content_length) = (self.part_number, self.content_length);
        if part_number > record.max_parts {
            return Err(ApiError::new(
                ErrorCode::InvalidPartNumber,
                format!(
                    "part number {part_number} is over max_parts {}",
                    record.max_parts
                ),
            ));
        }
        if content_length > record.max_part_size || content_length > record.total_size {
            return Err(ApiError::new(
                ErrorCode::PartTooLarge,
                format!(
                    "part of {content_length} bytes is over max_part_size {} or the file's total_size {}",
                    record.max_part_size, record.total_size
                ),
            ));
        }
        Ok(())
    }
}

pub async fn complete(
    State(app): Shared,
    Path(upload_id): Path<String>,
    body: Body,
) -> Result<Json<CompleteResponse>, ApiError> {
    let request: CompleteRequest = parse_json(body).await?;
    if let Some(digest) = &request.sha256 {
        validate::sha256_hex(digest).map_err(ApiError::invalid_request)?;
    }
    let _guard = app.lock_session(&upload_id).await?;
    let record = app.open_record(&upload_id).await?;
    if let Some(file) = completed_before(&record, &request)? {
        return Ok(Json(CompleteResponse { file }));
    }
    let chosen = app.chosen_parts(&upload_id, &record, &request).await?;
    let assembly_started = std::time::Instant::now();
    let assembled = app.assemble(&upload_id, chosen, record.total_size).await?;
    let expected = request.sha256.as_ref().or(record.sha256.as_ref());
    app.check_digest(&assembled, expected)?;
    let in_place = assembled.in_place;
    let (file, post) = app.publish(record, request.parts, assembled).await?;
    app.live.remove(&upload_id);
    app.open_sessions.release(1);
    app.metrics.completed();
    if let (Some(webhook), Some(post)) = (&app.webhook, post) {
        webhook.completed(upload_id.clone(), post);
    }
    tracing::info!(
        upload_id,
        in_place,
        workspace_id = %file.workspace_id,
        path = %file.path,
        size = file.size,
        assembly = ?assembly_started.elapsed(),
        "completed upload"
    );
    Ok(Json(CompleteResponse { file }))
}

/// A file assembled for complete: where it is, its SHA-256, and whether it is the session's
/// in-place data file (else a temporary copy).
struct Assembled {
    source: std::path::PathBuf,
    digest: String,
    in_place: bool,
}

pub async fn abort(
    State(app): Shared,
    Path(upload_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let _guard = app.lock_session(&upload_id).await?;
    let mut record = app.open_record(&upload_id).await?;
    match record.state {
        SessionState::Aborted => Ok(StatusCode::NO_CONTENT),
        SessionState::Completed => Err(ApiError::upload_not_open("completed")),
        SessionState::Open => {
            let storage = app.storage.clone();
            blocking(
                move || storage.abort_session(&mut record),
                "abort the session",
            )
            .await?;
            app.live.remove(&upload_id);
            app.open_sessions.release(1);
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

pub async fn file_metadata(
    State(app): Shared,
    Path((workspace_id, path)): Path<(String, String)>,
) -> Result<Json<FileMetadata>, ApiError> {
    crate::protocol::check_workspace_id(&workspace_id).map_err(ApiError::invalid_request)?;
    validate::filename(&path).map_err(ApiError::invalid_request)?;
    app.check_workspace(&workspace_id)?;
    let storage = app.storage.clone();
    let found = blocking(
        move || storage.read_file_metadata(&workspace_id, &path),
        "read file metadata",
    )
    .await?;
    found
        .map(Json)
        .ok_or_else(|| ApiError::new(ErrorCode::FileNotFound, "no completed file at this path"))
}

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method",
    )
}

/// What file metadata says of a file `record` completed as `file`.
fn completed_metadata(record: &SessionRecord, file: &CompletedFile) -> FileMetadata {
    FileMetadata {
        workspace_id: file.workspace_id.clone(),
        path: file.path.clone(),
        size: file.size,
        sha256: file.sha256.clone(),
        completed_at: file.completed_at.clone(),
        mime_type: record.mime_type.clone(),
        metadata: record.metadata.clone(),
        mtime: record.mtime.clone(),
    }
}

/// Renames the file `record` completed (`source`, with its mtime) into place; on failure its
/// temp copy is discarded. Blocking.
fn place(
    storage: &super::Storage,
    record: &SessionRecord,
    source: &std::path::Path,
    in_place: bool,
) -> std::io::Result<()> {
    let at = (record.workspace_id.as_str(), record.filename.as_str());
    let mtime = record
        .mtime
        .as_deref()
        .and_then(|t| validate::mtime(t).ok());
    let placed = storage.publish(source, at, mtime);
    if placed.is_err() && !in_place {
        storage.discard_temp(source);
    }
    placed
}

/// Places the assembled file (`place`); once it is placed, records its metadata, the
/// webhook's `post`, the session as completed, and drops the parts. The outer error is the
/// store's, the inner the placing's. Blocking.
fn place_and_record(
    storage: &super::Storage,
    record: &SessionRecord,
    assembled: &Assembled,
    metadata: &FileMetadata,
    post: Option<&serde_json::Value>,
) -> std::io::Result<std::io::Result<()>> {
    let placed = place(storage, record, &assembled.source, assembled.in_place);
    if placed.is_ok() {
        storage.write_file_metadata(metadata)?;
        if let Some(post) = post {
            storage.record_webhook(&record.upload_id, post)?;
        }
        storage.write_session(record)?;
        storage.discard_parts(&record.upload_id)?;
    }
    Ok(placed)
}

impl AppState {
    /// Refuses an assembled file whose SHA-256 is not the one `expected` (discarding it when it
    /// is a copy); the session stays open.
    fn check_digest(
        &self,
        assembled: &Assembled,
        expected: Option<&String>,
    ) -> Result<(), ApiError> {
        let Some(expected) = expected.filter(|expected| **expected != assembled.digest) else {
            return Ok(());
        };
        if !assembled.in_place {
            self.storage.discard_temp(&assembled.source);
        }
        Err(ApiError::new(
            ErrorCode::Sha256Mismatch,
            format!(
                "the assembled file has sha256 {}, not {expected}; the session stays open",
                assembled.digest
            ),
        ))
    }

    /// The stored parts `request`'s manifest names, checked against what is stored (numbers
    /// ascending, etags, sizes adding up, none but the last under the minimum).
    async fn chosen_parts(
        &self,
        upload_id: &str,
        record: &SessionRecord,
        request: &CompleteRequest,
    ) -> Result<Vec<PartFile>, ApiError> {
        let (storage, id) = (self.storage.clone(), upload_id.to_string());
        let parts = blocking(move || storage.list_parts(&id), "list parts").await?;
        let stored: Vec<StoredPart> = parts
            .iter()
            .map(|part| StoredPart {
                part_number: part.part_number,
                size: part.size,
                etag: part.etag.clone(),
            })
            .collect();
        let chosen = validate::manifest(
            &request.parts,
            &stored,
            record.min_part_size,
            record.total_size,
        )
        .map_err(|problem| match problem {
            ManifestProblem::Mismatch(message) => {
                ApiError::new(ErrorCode::ManifestMismatch, message)
            }
            ManifestProblem::PartTooSmall(message) => {
                ApiError::new(ErrorCode::PartTooSmall, message)
            }
        })?;
        // `stored` mirrors `parts` index for index.
        Ok(chosen
            .iter()
            .map(|part| {
                let index = stored
                    .binary_search_by_key(&part.part_number, |p| p.part_number)
                    .expect("every chosen part came from this listing");
                parts[index].clone()
            })
            .collect())
    }

    /// The file the chosen parts make: the in-place data file when they all lie in it at
    /// their final offsets, else a copy assembled aside.
    async fn assemble(
        &self,
        upload_id: &str,
        chosen: Vec<PartFile>,
        total_size: u64,
    ) -> Result<Assembled, ApiError> {
        if let Some(digest) = self.finish_in_place(upload_id, &chosen, total_size).await? {
            let source = self.storage.data_path(upload_id);
            return Ok(Assembled {
                source,
                digest,
                in_place: true,
            });
        }
        let (storage, id) = (self.storage.clone(), upload_id.to_string());
        let (source, digest) =
            blocking(move || storage.assemble(&id, &chosen), "assemble the file").await?;
        Ok(Assembled {
            source,
            digest,
            in_place: false,
        })
    }

    /// Makes the assembled file visible at its path (by rename), records its metadata and the
    /// session as completed with `manifest`, and drops the parts.
    async fn publish(
        &self,
        mut record: SessionRecord,
        manifest: Vec<crate::protocol::ManifestPart>,
        assembled: Assembled,
    ) -> Result<(CompletedFile, Option<serde_json::Value>), ApiError> {
        let file = CompletedFile {
            workspace_id: record.workspace_id.clone(),
            path: record.filename.clone(),
            size: record.total_size,
            sha256: assembled.digest.clone(),
            completed_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        let metadata = completed_metadata(&record, &file);
        record.state = SessionState::Completed;
        record.completion = Some(Completion {
            manifest,
            file: file.clone(),
        });
        // The webhook's post is kept before the session is complete, so none is lost.
        let post = self
            .webhook
            .as_ref()
            .map(|_| Webhook::document(&record.upload_id, &file));
        let kept = post.clone();
        let storage = self.storage.clone();
        let published = blocking(
            move || place_and_record(&storage, &record, &assembled, &metadata, kept.as_ref()),
            "publish the file",
        )
        .await?;
        // The usual cause of a refusal: a folder on the way is a file, or the name a folder.
        published.map_err(|error| {
            ApiError::new(
                ErrorCode::PathConflict,
                format!("cannot place the file at its path: {error}"),
            )
        })?;
        Ok((file, post))
    }

    /// Stores a received part under `etag`, durably. The session lock is held across the state
    /// check and the commit, so a part never lands in a session that a concurrent complete or
    /// abort has just closed, and parallel parts never together outgrow the file. A refused
    /// part is discarded.
    async fn commit_part(
        &self,
        upload_id: &str,
        head: &PartHead,
        reservation: Reservation,
        received: &Received,
        etag: &str,
    ) -> Result<(), ApiError> {
        let (part_number, size) = (head.part_number, head.content_length);
        let guard = self.lock_session(upload_id).await?;
        let committed = match self.open_record(upload_id).await {
            Ok(record) if record.state == SessionState::Open => match reservation.still_fits() {
                Err(held) => Err(outgrows(part_number, size, held, record.total_size)),
                Ok(()) => {
                    let (storage, id, tag, what) = (
                        self.storage.clone(),
                        upload_id.to_string(),
                        etag.to_string(),
                        received.clone(),
                    );
                    blocking(
                        move || storage.commit_part(&id, part_number, &tag, &what),
                        "store the part",
                    )
                    .await
                }
            },
            Ok(record) => Err(ApiError::upload_not_open(state_name(record.state))),
            Err(error) => Err(error),
        };
        if let Err(error) = committed {
            discard(received);
            return Err(error);
        }
        reservation.commit(etag, size);
        drop(guard);
        let (storage, id) = (self.storage.clone(), upload_id.to_string());
        blocking(move || storage.sync_parts(&id), "store the part").await
    }

    /// Locks a session, once its id is known to be of our form: no per-id state is kept for
    /// an id that cannot be ours.
    async fn lock_session(
        &self,
        upload_id: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, ApiError> {
        if !validate::is_upload_id(upload_id) {
            return Err(ApiError::upload_not_found());
        }
        Ok(self.locks.lock(upload_id).await)
    }

    /// Loads a session that exists, has not expired, and is in a workspace this receiver serves.
    async fn open_record(&self, upload_id: &str) -> Result<SessionRecord, ApiError> {
        if !validate::is_upload_id(upload_id) {
            return Err(ApiError::upload_not_found());
        }
        let storage = self.storage.clone();
        let id = upload_id.to_string();
        let record = blocking(move || storage.load_session(&id), "read the session")
            .await?
            .filter(|record| !record.is_expired(SystemTime::now()))
            .ok_or_else(ApiError::upload_not_found)?;
        self.check_workspace(&record.workspace_id)?;
        Ok(record)
    }

    /// Admits a part into its session (see `Live::admit`) and chooses where it is written.
    async fn reserve(
        &self,
        upload_id: &str,
        total_size: u64,
        head: &PartHead,
    ) -> Result<(Reservation, Sink), ApiError> {
        let (part_number, size) = (head.part_number, head.content_length);
        let live = self.live_state(upload_id, total_size).await?;
        let reservation = Reservation::new(live, part_number, size, head.offset)
            .map_err(|held| outgrows(part_number, size, held, total_size))?;
        let sink = match reservation.placement() {
            Placement::InPlace { offset } => Sink::InPlace {
                data: self.storage.data_path(upload_id),
                offset,
            },
            Placement::Loose => Sink::Loose(self.storage.incoming_path(upload_id)),
        };
        Ok((reservation, sink))
    }

    /// The live state of an open session, rebuilt from its stored parts on first use.
    async fn live_state(
        &self,
        upload_id: &str,
        total_size: u64,
    ) -> Result<Arc<std::sync::Mutex<Live>>, ApiError> {
        if let Some(live) = self.live.get(upload_id) {
            return Ok(live);
        }
        let (storage, id) = (self.storage.clone(), upload_id.to_string());
        let parts = blocking(move || storage.list_parts(&id), "list parts").await?;
        Ok(self
            .live
            .insert(upload_id, Live::from_parts(total_size, &parts)))
    }

    /// When every part of the manifest lies in the data file at its final offset, the data file
    /// is the file: finishes its SHA-256 from where the background hash got to and returns it.
    /// `None` means the parts must be copied.
    async fn finish_in_place(
        &self,
        upload_id: &str,
        chosen: &[PartFile],
        total_size: u64,
    ) -> Result<Option<String>, ApiError> {
        if !all_in_place(chosen) {
            return Ok(None);
        }
        let data = self.storage.data_path(upload_id);
        let length = tokio::fs::metadata(&data)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if length != total_size {
            return Ok(None);
        }
        let live = self.live_state(upload_id, total_size).await?;
        let (mut hasher, from) = hash_so_far(idle_hash_progress(&live).await, chosen);
        let (storage, id) = (self.storage.clone(), upload_id.to_string());
        let digest = blocking(
            move || {
                storage.hash_range(&id, from, total_size - from, &mut hasher)?;
                Ok(hex::encode(sha2::Digest::finalize(hasher)))
            },
            "hash the file",
        )
        .await?;
        Ok(Some(digest))
    }

    fn check_workspace(&self, workspace_id: &str) -> Result<(), ApiError> {
        let allowed = &self.config.workspaces;
        if allowed.is_empty() || allowed.iter().any(|name| name == workspace_id) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this token may not use workspace '{workspace_id}'"),
            ))
        }
    }
}

/// Whether every part lies in the data file at its final offset, one after another.
fn all_in_place(chosen: &[PartFile]) -> bool {
    let mut end = 0;
    chosen.iter().all(|part| {
        let at = part.location == (Location::InPlace { offset: end });
        end += part.size;
        at
    })
}

/// The background hash's progress once the step in progress (one part) has ended. The wakeup
/// is armed before the check, so an end between the two is not missed.
async fn idle_hash_progress(live: &std::sync::Mutex<Live>) -> HashProgress {
    let idle = live
        .lock()
        .expect("live state is never poisoned")
        .hasher_idle();
    loop {
        let ended = idle.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        {
            let state = live.lock().expect("live state is never poisoned");
            if !state.is_hashing() {
                return state.hash_progress();
            }
        }
        ended.await;
    }
}

/// The hasher to finish the file's SHA-256 with and the offset it has reached: the background
/// hash's, if it covered a prefix of exactly these parts; otherwise a new one from 0.
fn hash_so_far(progress: HashProgress, chosen: &[PartFile]) -> (sha2::Sha256, u64) {
    let hashed = progress.etags.len();
    let usable = hashed <= chosen.len()
        && chosen
            .iter()
            .zip(&progress.etags)
            .all(|(part, etag)| part.etag == *etag);
    match usable {
        true => (progress.hasher, progress.offset),
        false => (sha2::Sha256::default(), 0),
    }
}

async fn parse_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_JSON_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::RequestTooLarge,
                format!("request body is over {MAX_JSON_BYTES} bytes or was cut short"),
            )
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|error| ApiError::invalid_request(format!("request body: {error}")))
}

/// Runs blocking disk work off the runtime; an I/O failure becomes a logged `500`.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    context: &'static str,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(ApiError::storage(context, &error)),
        Err(error) => Err(ApiError::internal(context, &error)),
    }
}

/// `413` for a part that would make its session hold more than its file.
fn outgrows(part_number: u32, size: u64, held: u64, total_size: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PartTooLarge,
        format!(
            "part {part_number} of {size} bytes does not fit: the session already holds {held} bytes in other parts of a {total_size}-byte file"
        ),
    )
}

fn ensure_open(record: &SessionRecord) -> Result<(), ApiError> {
    match record.state {
        SessionState::Open => Ok(()),
        state => Err(ApiError::upload_not_open(state_name(state))),
    }
}

/// The file a session completed with the same manifest before (a complete sent again, its
/// reply lost); `None` for an open session; refused for one completed otherwise or aborted.
fn completed_before(
    record: &SessionRecord,
    request: &CompleteRequest,
) -> Result<Option<CompletedFile>, ApiError> {
    match (&record.state, &record.completion) {
        (SessionState::Completed, Some(done)) if same_manifest(&done.manifest, request) => {
            Ok(Some(done.file.clone()))
        }
        (SessionState::Open, _) => Ok(None),
        (state, _) => Err(ApiError::upload_not_open(state_name(*state))),
    }
}

fn state_name(state: SessionState) -> &'static str {
    match state {
        SessionState::Open => "open",
        SessionState::Completed => "completed",
        SessionState::Aborted => "aborted",
    }
}

fn same_manifest(recorded: &[crate::protocol::ManifestPart], request: &CompleteRequest) -> bool {
    recorded.len() == request.parts.len()
        && recorded.iter().zip(&request.parts).all(|(a, b)| {
            a.part_number == b.part_number && a.etag.trim_matches('"') == b.etag.trim_matches('"')
        })
}

fn part_info(part: &PartFile) -> PartInfo {
    PartInfo {
        part_number: part.part_number,
        size: part.size,
        etag: part.etag.clone(),
        crc32c: encode_crc32c(part.crc32c),
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, size: u64, location: Location) -> PartFile {
        PartFile {
            part_number: number,
            etag: format!("e{number}"),
            crc32c: 0,
            size,
            location,
        }
    }

    /// The data file is the file only when the parts follow one another in it from 0.
    #[test]
    fn parts_are_in_place_only_end_to_end_from_the_start() {
        let at = |offset| Location::InPlace { offset };
        let cases = [
            (vec![], true),
            (vec![part(1, 4, at(0)), part(2, 3, at(4))], true),
            (vec![part(1, 4, at(0)), part(2, 3, at(5))], false),
            (vec![part(1, 4, at(1))], false),
            (
                vec![part(1, 4, at(0)), part(2, 3, Location::Loose("p2".into()))],
                false,
            ),
        ];
        for (parts, expected) in cases {
            assert_eq!(all_in_place(&parts), expected, "{parts:?}");
        }
    }

    /// The background hash is carried on only when it covered a prefix of exactly the chosen
    /// parts (the same etags, in order); otherwise the file is hashed from 0.
    #[test]
    fn the_background_hash_is_kept_only_over_a_prefix_of_the_chosen_parts() {
        let at = |offset| Location::InPlace { offset };
        let chosen = [part(1, 4, at(0)), part(2, 3, at(4))];
        let hashed = |etags: &[&str], offset| HashProgress {
            hasher: sha2::Sha256::default(),
            offset,
            next_part: etags.len() as u32 + 1,
            etags: etags.iter().map(|etag| etag.to_string()).collect(),
        };
        let cases = [
            (hashed(&[], 0), 0),
            (hashed(&["e1"], 4), 4),
            (hashed(&["e1", "e2"], 7), 7),
            (hashed(&["e1", "x2"], 7), 0),
            (hashed(&["e1", "e2", "e3"], 9), 0),
        ];
        for (progress, from) in cases {
            let etags = progress.etags.clone();
            assert_eq!(hash_so_far(progress, &chosen).1, from, "{etags:?}");
        }
    }
}
