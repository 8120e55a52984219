//! The native box API: `POST /v1/boxes` (paid), `GET /v1/boxes/{id}`, `POST …/exec`,
//! `POST …/exec/stream` (Server-Sent Events), `GET`/`PUT …/files?path=`, `DELETE /v1/boxes/{id}`.
//! Every call but the purchase takes the lease's token as a bearer.
//!
//! Streaming uses Server-Sent Events rather than WebSocket: a command's output flows one way,
//! SSE is plain HTTP that every proxy, `curl -N` and `EventSource` understand, and the request
//! that starts the command is an ordinary paid-or-metered POST with a JSON body. Input to a
//! running process belongs to the interactive (SSH) path.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vendbox_core::{Capability, Lease, LeaseState, OfferId, QuoteParams, Usdc};

use crate::app::AppState;
use crate::auth::optional_bearer;
use crate::boxes::{self, Boxes, Extension, Provisioned, SshKey};
use crate::error::ApiError;
use crate::gate;
use crate::json::ApiJson;
use vendbox_box::wire::ProcessSpec;
use vendbox_pay::ChargeKind;
use vendbox_service::{Delivery, Paid, PayError};

/// A box to buy.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBox {
    /// The offer (`GET /v1/offers`; a `sandbox` or `machine` offer).
    #[schema(example = "h3retik-micro")]
    pub offer: String,
    /// Minutes, for offers sold by time within bounds.
    pub minutes: Option<u32>,
    /// Actions, for offers with a chosen budget.
    pub actions: Option<u32>,
    /// Region; the offer's default when absent.
    pub region: Option<String>,
    /// Image; the offer's default when absent.
    pub image: Option<String>,
    /// An OpenSSH public key (`ssh-ed25519 AAAA…`) that opens the box through the SSH gateway.
    pub ssh_public_key: Option<String>,
}

/// A box as its owner sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BoxView {
    /// Its id (the lease's).
    pub id: String,
    /// `provisioning`, `active`, `expired`, `terminated` or `failed`.
    pub state: LeaseState,
    /// The offer it was bought from.
    pub offer: OfferId,
    /// Region.
    pub region: Option<String>,
    /// Image.
    pub image: Option<String>,
    /// When it was bought.
    pub created_at: DateTime<Utc>,
    /// When it ends.
    pub expires_at: Option<DateTime<Utc>>,
    /// Commands left (`null`: no budget).
    pub actions_remaining: Option<u32>,
    /// Why it failed, when it did.
    pub failure_reason: Option<String>,
    /// The command that opens it over SSH (with the key given at purchase), when this vendbox
    /// runs its SSH gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_command: Option<String>,
}

impl BoxView {
    /// The view of `lease`, with its `ssh` command when the gateway runs. The command logs in
    /// as the lease's id, which opens exactly this box (see `ssh::SshLeases::by_key`).
    pub fn of(lease: &Lease, state: &AppState) -> BoxView {
        let ssh_command = state.ssh.as_ref().map(|ssh| ssh.command(&lease.id.to_string()));
        BoxView { ssh_command, ..BoxView::from(lease) }
    }
}

impl From<&Lease> for BoxView {
    fn from(lease: &Lease) -> Self {
        BoxView {
            id: lease.id.to_string(),
            state: lease.state,
            offer: lease.offer_id.clone(),
            region: lease.region.clone(),
            image: lease.image.clone(),
            created_at: lease.created_at,
            expires_at: lease.expires_at,
            actions_remaining: lease.actions_remaining,
            failure_reason: lease.failure_reason.clone(),
            ssh_command: None,
        }
    }
}

/// A box just bought: the only time its token is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedBox {
    /// The box.
    #[serde(flatten)]
    pub view: BoxView,
    /// Bearer token for every other call on this box. Keep it; it is not shown again.
    pub token: String,
}

/// A command to run: a shell line (`command`) or an argument vector (`argv`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// A shell command line, run with `/bin/sh -c`.
    #[schema(example = "uname -a && id")]
    pub command: Option<String>,
    /// A program and its arguments, run without a shell.
    pub argv: Option<Vec<String>>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/root`).
    pub cwd: Option<String>,
    /// Time limit in seconds (default 60, at most 1800); the command's process group is killed
    /// after it.
    #[schema(minimum = 1, maximum = 1800)]
    pub timeout_seconds: Option<u64>,
}

/// What a command did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExecResponse {
    /// Its exit code, when it exited on its own.
    pub exit_code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
    /// Killed for running past its time limit.
    pub timed_out: bool,
    /// Standard output (UTF-8, invalid bytes replaced), at most 1 MiB.
    pub stdout: String,
    /// Standard error, likewise.
    pub stderr: String,
    /// Output past 1 MiB was dropped from stdout.
    pub stdout_truncated: bool,
    /// Output past 1 MiB was dropped from stderr.
    pub stderr_truncated: bool,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    /// Actions left after this one (`null`: no budget).
    pub actions_remaining: Option<u32>,
}

/// `?path=` of the file routes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FileQuery {
    /// Absolute, or relative to `/root`.
    pub path: String,
    /// Permission bits in octal for `PUT` (default `644`).
    pub mode: Option<String>,
}

/// The box service, or 503 when this vendbox cannot run boxes.
pub(crate) fn service(state: &AppState) -> Result<Arc<Boxes>, ApiError> {
    state.boxes.clone().map_err(|why| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "boxes_unavailable",
            format!("this vendbox runs no boxes: {why}"),
        )
    })
}

/// Buys a box: prices the offer, takes the payment, makes the box, and settles once it answers.
#[utoipa::path(post, path = "/v1/boxes", tag = "boxes", request_body = CreateBox,
    responses((status = 201, body = CreatedBox), (status = 402, description = "Payment required"),
        (status = 400, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateBox>,
) -> Result<Response, ApiError> {
    let params = QuoteParams {
        minutes: request.minutes,
        actions: request.actions,
        region: request.region,
        image: request.image,
    };
    let ssh_keys =
        request.ssh_public_key.as_deref().map(|k| SshKey::parse(k, "ssh_public_key")).transpose()?;
    let bought = buy(
        &state,
        &headers,
        &request.offer,
        &params,
        "/v1/boxes",
        Access::root(ssh_keys.into_iter().collect()),
    )
    .await?;
    Ok(gate::respond(bought, |provisioned| {
        let view = BoxView::of(&provisioned.lease, &state);
        (StatusCode::CREATED, Json(CreatedBox { view, token: provisioned.token(Capability::Root) }))
    }))
}

/// Who may open a box being bought: SSH keys, and the capabilities to make tokens for.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// Keys that open it through the SSH gateway.
    pub(crate) ssh_keys: Vec<SshKey>,
    /// One bearer token is made for each.
    pub(crate) capabilities: Vec<Capability>,
}

impl Access {
    /// One root token, and these keys.
    pub(crate) fn root(ssh_keys: Vec<SshKey>) -> Access {
        Access { ssh_keys, capabilities: vec![Capability::Root] }
    }
}

/// What the gate answered a purchase: the box made and paid for, or why not.
pub(crate) type Bought = Result<Paid<Provisioned>, PayError<ApiError>>;

/// Sells `offer_id` on `params` through the gate. Refusals before any payment is asked for (a
/// bad offer or duration, a box the host cannot hold) are the outer error; the gate's answer is
/// for the surface to render in its own shape ([`gate::respond`]).
pub(crate) async fn buy(
    state: &AppState,
    headers: &HeaderMap,
    offer_id: &str,
    params: &QuoteParams,
    path: &str,
    access: Access,
) -> Result<Bought, ApiError> {
    let Access { ssh_keys, capabilities } = access;
    let boxes = service(state)?;
    let offer =
        state.catalog.now().offer(offer_id).map_err(|e| ApiError::from(e).with_field("offer"))?.clone();
    let terms = offer.quote(params)?;
    // Before any payment is asked for: a box the host cannot hold is not sold.
    boxes.admit(&offer).await?;
    let charge = state.payments.charge_for(ChargeKind::Box, terms.price, path, &offer.title)?;
    let work = |payment_id| async move {
        let provisioned = boxes.provision(&offer, &terms, payment_id, &ssh_keys, &capabilities).await?;
        let id = provisioned.lease.id;
        let undo = async move { boxes.unpaid(id).await };
        Ok(Delivery::delivered(provisioned).undo_with(undo))
    };
    Ok(state.payments.pay(&gate::proof(&state.payments, headers), charge, work).await)
}

/// Sells `extension` of a lease at `price` through the gate, answering `body`: the expiry moves
/// only once the payment settled, and a lease that cannot be extended was refused before.
pub(crate) async fn sell_extension<T: IntoResponse + Send + 'static>(
    state: &AppState,
    headers: &HeaderMap,
    extension: Extension,
    price: Usdc,
    path: &str,
    title: &str,
    body: T,
) -> Result<Result<Paid<T>, PayError<ApiError>>, ApiError> {
    let boxes = service(state)?;
    let charge = state.payments.charge_for(ChargeKind::Box, price, path, title)?;
    let work = |payment| async move {
        let apply = boxes.apply(extension, payment);
        Ok(Delivery::delivered(body).after_settlement(async move { Ok(apply.await?) }))
    };
    Ok(state.payments.pay(&gate::proof(&state.payments, headers), charge, work).await)
}

/// The box, for its owner.
#[utoipa::path(get, path = "/v1/boxes/{id}", tag = "boxes", security(("lease_token" = [])),
    responses((status = 200, body = BoxView), (status = 401, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<BoxView>, ApiError> {
    let lease = service(&state)?.open(&id, optional_bearer(&headers).as_ref(), Capability::Read).await?;
    Ok(Json(BoxView::of(&lease, &state)))
}

/// Ends the box now.
#[utoipa::path(delete, path = "/v1/boxes/{id}", tag = "boxes", security(("lease_token" = [])),
    responses((status = 200, body = BoxView), (status = 401, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn terminate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<BoxView>, ApiError> {
    let boxes = service(&state)?;
    let lease = boxes.open(&id, optional_bearer(&headers).as_ref(), Capability::Terminate).await?;
    Ok(Json(BoxView::from(&boxes.terminate(&lease).await?)))
}

/// Validates a command request.
pub(crate) fn command(request: ExecRequest) -> Result<ProcessSpec, ApiError> {
    let timeout = match request.timeout_seconds {
        None => boxes::DEFAULT_EXEC_TIMEOUT,
        Some(s) if (1..=boxes::MAX_EXEC_TIMEOUT.as_secs()).contains(&s) => Duration::from_secs(s),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "out_of_range",
                format!("`timeout_seconds` must be between 1 and {}", boxes::MAX_EXEC_TIMEOUT.as_secs()),
            )
            .with_field("timeout_seconds"));
        }
    };
    let (cmd, args, shell) = match (request.command, request.argv) {
        (Some(line), None) if !line.trim().is_empty() => (line, Vec::new(), true),
        (None, Some(argv)) if argv.first().is_some_and(|a| !a.is_empty()) => {
            let mut argv = argv.into_iter();
            (argv.next().unwrap_or_default(), argv.collect(), false)
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_field",
                "send either `command` (a shell line) or `argv` (a program and its arguments), not both",
            )
            .with_field("command"));
        }
    };
    Ok(ProcessSpec {
        cmd,
        args,
        shell,
        envs: request.env,
        cwd: request.cwd,
        user: None,
        timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        tag: None,
    })
}

/// Runs one command (one action) and answers with its result.
#[utoipa::path(post, path = "/v1/boxes/{id}/exec", tag = "boxes", security(("lease_token" = [])), request_body = ExecRequest,
    responses((status = 200, body = ExecResponse), (status = 409, description = "actions_exhausted or box_not_ready", body = crate::error::ErrorBody),
        (status = 410, description = "box_expired, box_terminated or box_failed", body = crate::error::ErrorBody)))]
pub async fn exec(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ExecRequest>,
) -> Result<Json<ExecResponse>, ApiError> {
    let boxes = service(&state)?;
    let lease = boxes.open(&id, optional_bearer(&headers).as_ref(), Capability::Root).await?;
    Ok(Json(run(&boxes, &lease, request).await?))
}

/// Runs a command request on a lease's box.
pub(crate) async fn run(
    boxes: &Boxes,
    lease: &Lease,
    request: ExecRequest,
) -> Result<ExecResponse, ApiError> {
    let ran = boxes.exec(lease, command(request)?).await?;
    let r = ran.result;
    Ok(ExecResponse {
        exit_code: r.exit_code,
        signal: r.signal,
        timed_out: r.timed_out,
        stdout: r.stdout,
        stderr: r.stderr,
        stdout_truncated: r.stdout_truncated,
        stderr_truncated: r.stderr_truncated,
        duration_ms: r.duration_ms,
        actions_remaining: ran.actions_remaining,
    })
}

/// Runs one command (one action) and streams its output as Server-Sent Events: `start`
/// (`{"pid":…}`), then `stdout` / `stderr` (`{"data":"<base64>"}`), then `exit`
/// (`{"exit_code":…,"signal":…,"timed_out":…,"duration_ms":…}`).
#[utoipa::path(post, path = "/v1/boxes/{id}/exec/stream", tag = "boxes", security(("lease_token" = [])), request_body = ExecRequest,
    responses((status = 200, description = "text/event-stream of start, stdout, stderr and exit events")))]
pub async fn exec_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    let boxes = service(&state)?;
    let lease = boxes.open(&id, optional_bearer(&headers).as_ref(), Capability::Root).await?;
    let (mut stream, actions_remaining) = boxes.exec_stream(&lease, command(request)?).await?;
    let lease_id = lease.id;
    let events = async_stream(move |tx| async move {
        loop {
            let event = match stream.next().await {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(SseEvent::default().event("error").data(e.to_string())).await;
                    break;
                }
            };
            let sse = match event {
                vendbox_box::wire::Event::Start { pid } => {
                    SseEvent::default().event("start").data(format!("{{\"pid\":{pid}}}"))
                }
                vendbox_box::wire::Event::Stdout(d) | vendbox_box::wire::Event::Pty(d) => chunk("stdout", &d),
                vendbox_box::wire::Event::Stderr(d) => chunk("stderr", &d),
                vendbox_box::wire::Event::End(exit) => {
                    let body = serde_json::to_string(&exit).unwrap_or_default();
                    let _ = tx.send(SseEvent::default().event("exit").data(body)).await;
                    break;
                }
            };
            if tx.send(sse).await.is_err() {
                break;
            }
        }
        boxes.after_action(lease_id, actions_remaining);
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// An output event: `{"data":"<base64>"}` (base64 has no characters JSON must escape).
fn chunk(name: &str, base64: &str) -> SseEvent {
    SseEvent::default().event(name).data(format!("{{\"data\":\"{base64}\"}}"))
}

/// A stream fed by `produce` through a small channel.
fn async_stream<F, Fut>(produce: F) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<SseEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) })
}

/// Reads a file of the box.
#[utoipa::path(get, path = "/v1/boxes/{id}/files", tag = "boxes", security(("lease_token" = [])), params(FileQuery),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream"), (status = 404, body = crate::error::ErrorBody)))]
pub async fn read_file(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<FileQuery>,
) -> Result<Response, ApiError> {
    let boxes = service(&state)?;
    let lease = boxes.open(&id, optional_bearer(&headers).as_ref(), Capability::Root).await?;
    let file = boxes
        .boxd(&lease)?
        .read_file_stream(&query.path, boxes::MAX_DOWNLOAD_BYTES)
        .await
        .map_err(file_error)?;
    let size = file.size;
    // Chunks as boxd sends them; a failure midway cuts the download short of its length.
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        match file.next().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(file))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// Writes a file into the box (creating its parents).
#[utoipa::path(put, path = "/v1/boxes/{id}/files", tag = "boxes", security(("lease_token" = [])), params(FileQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "`{\"path\":…,\"size\":…}`")))]
pub async fn write_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<FileQuery>,
    request: axum::extract::Request,
) -> Result<Json<serde_json::Value>, ApiError> {
    let boxes = service(&state)?;
    // The token is checked before a byte of the body is read: a stranger's upload costs nothing.
    let lease = boxes.open(&id, optional_bearer(request.headers()).as_ref(), Capability::Root).await?;
    let body = <Bytes as axum::extract::FromRequest<AppState>>::from_request(request, &state)
        .await
        .map_err(crate::json::body_rejection)?;
    let mode = match query.mode.as_deref() {
        None => 0o644,
        Some(text) => u32::from_str_radix(text, 8).ok().filter(|m| *m <= 0o7777).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_mode", "`mode` is octal permission bits such as 644")
                .with_field("mode")
        })?,
    };
    let written = boxes.boxd(&lease)?.write_file(&query.path, body, mode).await.map_err(file_error)?;
    Ok(Json(written))
}

/// boxd's file errors as API errors with boxd's code.
pub(crate) fn file_error(error: vendbox_box::BoxError) -> ApiError {
    match error {
        vendbox_box::BoxError::Boxd { status, code, message } if status < 500 => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            let code: &'static str = match code.as_str() {
                "not_found" => "file_not_found",
                "not_a_file" => "not_a_file",
                "is_directory" => "is_directory",
                "not_directory" => "not_directory",
                "exists" => "exists",
                _ => "file_refused",
            };
            ApiError::new(status, code, message)
        }
        vendbox_box::BoxError::TooLarge { size, limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_too_large",
            format!(
                "the file is {size} bytes; files of at most {limit} bytes are served (read it in parts with a command)"
            ),
        ),
        other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "box_unavailable", other.to_string()),
    }
}
