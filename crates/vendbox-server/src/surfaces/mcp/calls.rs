//! How a tool calls the native API and reads its answers: one request (as the caller's account,
//! or unpaid to learn a price), a refusal turned into what to do next, the tokens kept per
//! caller, and a command's streamed output gathered.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use base64::Engine as _;
use futures_util::StreamExt as _;
use rmcp::RoleServer;
use rmcp::model::ProgressNotificationParam;
use rmcp::service::RequestContext;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use vendbox_core::Usdc;

use super::Spend;
use super::args::{AcquireLock, BuyBox, Exec, ReadFile, WriteFile};
use super::sse::Events;
use super::tools::{Failure, Tools};

/// The most of a command's output (each of stdout and stderr) a tool answer carries.
const MAX_OUTPUT: usize = 256 * 1024;

/// The largest file `read_file` returns.
const MAX_READ: u64 = 1024 * 1024;

/// The largest JSON answer read from the API.
const MAX_JSON: usize = 4 * 1024 * 1024;

/// How often a command with no output still reports progress.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// How many tokens the book keeps in all.
const MAX_TOKENS: usize = 4096;

/// Tokens of boxes and locks, by caller (a hash of its API key) and thing.
#[derive(Debug, Default)]
pub(crate) struct TokenBook {
    /// The tokens.
    tokens: HashMap<(String, String), String>,
    /// Insertion order, to forget the oldest first.
    order: VecDeque<(String, String)>,
}

impl TokenBook {
    /// An empty book, to share between sessions.
    pub(crate) fn shared() -> Arc<Mutex<TokenBook>> {
        Arc::new(Mutex::new(TokenBook::default()))
    }

    pub(super) fn keep(&mut self, key: (String, String), token: String) {
        if self.tokens.insert(key.clone(), token).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > MAX_TOKENS {
            if let Some(old) = self.order.pop_front() {
                self.tokens.remove(&old);
            }
        }
    }
}

/// A native API answer, read whole.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Percent-encodes a path segment or query value.
pub(super) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl Tools {
    /// Sends one request to the native API and reads its answer whole.
    pub(super) async fn call(
        &self,
        ctx: &RequestContext<RoleServer>,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<(Body, &'static str)>,
        spend: Spend,
    ) -> Result<Reply, Failure> {
        let response = self.send(ctx, method, path, bearer, body, spend).await?;
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, MAX_JSON)
            .await
            .map_err(|e| Failure(format!("vendbox's answer could not be read: {e}; try again")))?;
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }

    /// Sends one request, answering the response as it starts.
    pub(super) async fn send(
        &self,
        ctx: &RequestContext<RoleServer>,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<(Body, &'static str)>,
        spend: Spend,
    ) -> Result<axum::http::Response<Body>, Failure> {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if spend != Spend::Probe
            && let Some(key) = caller_key(ctx)
        {
            request = request.header(crate::auth::X_API_KEY, key);
        }
        let request = match body {
            Some((body, content_type)) => request.header(header::CONTENT_TYPE, content_type).body(body),
            None => request.body(Body::empty()),
        }
        .map_err(|e| Failure(format!("the request could not be made: {e}")))?;
        self.api.send(request, spend).await.map_err(|e| Failure(format!("vendbox could not be reached: {e}")))
    }

    /// A JSON call whose 2xx answer is the tool's answer.
    pub(super) async fn call_json(
        &self,
        ctx: &RequestContext<RoleServer>,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
        spend: Spend,
    ) -> Result<Value, Failure> {
        let body = body.as_ref().map(json_body);
        ok_json(&self.call(ctx, method, path, bearer, body, spend).await?)
    }

    /// The price a paid `POST path` asks (from its 402 to an unpaid send), refused when above `max`.
    pub(super) async fn price(
        &self,
        ctx: &RequestContext<RoleServer>,
        path: &str,
        bearer: Option<&str>,
        body: &Value,
        max: Usdc,
    ) -> Result<Usdc, Failure> {
        let probe = self.call(ctx, Method::POST, path, bearer, Some(json_body(body)), Spend::Probe).await?;
        if probe.status != StatusCode::PAYMENT_REQUIRED {
            // Refused before any payment was asked for (a bad field, a box that cannot be
            // extended): the same refusal the paid call would get.
            ok_json(&probe)?;
            return Err(Failure(format!("{path} asked no payment; nothing was bought")));
        }
        let header = probe.headers.get("payment-required").and_then(|v| v.to_str().ok());
        let (atomic, _) = vendbox_pay::client::Challenge::read(header, &probe.body)
            .ok()
            .and_then(|c| c.price())
            .ok_or_else(|| Failure("vendbox's 402 named no price; nothing was bought".into()))?;
        let price = Usdc(atomic);
        if price > max {
            return Err(Failure(format!(
                "this costs {price} USDC, more than max_price_usdc {max}; nothing was bought. Raise \
                 max_price_usdc to at least {price}, or choose fewer minutes or a cheaper offer \
                 (list_offers)"
            )));
        }
        Ok(price)
    }

    /// A paid `POST path`: its price checked against `max`, then paid.
    pub(super) async fn paid_json(
        &self,
        ctx: &RequestContext<RoleServer>,
        path: &str,
        bearer: Option<&str>,
        body: &Value,
        max: Usdc,
    ) -> Result<Value, Failure> {
        let price = self.price(ctx, path, bearer, body, max).await?;
        let reply =
            self.call(ctx, Method::POST, path, bearer, Some(json_body(body)), Spend::UpTo(price)).await?;
        let mut value = ok_json(&reply)?;
        if let Some(object) = value.as_object_mut() {
            object.insert("paid_usdc".into(), json!(price.to_decimal_string()));
        }
        Ok(value)
    }

    pub(super) async fn buy(&self, ctx: &RequestContext<RoleServer>, args: BuyBox) -> Result<Value, Failure> {
        let max = args.max_price_usdc.usdc("max_price_usdc")?;
        let body = json!({
            "offer": args.offer_id, "minutes": args.minutes, "actions": args.actions,
            "image": args.image, "region": args.region, "ssh_public_key": args.ssh_public_key,
        });
        let body = strip_nulls(body);
        let bought = self.paid_json(ctx, "/v1/boxes", None, &body, max).await?;
        let id = bought["id"].as_str().unwrap_or_default().to_owned();
        if let Some(token) = bought["token"].as_str() {
            self.keep(ctx, "box", &id, token.to_owned());
        }
        Ok(box_summary(&bought, bought["paid_usdc"].as_str()))
    }

    pub(super) async fn run(&self, ctx: &RequestContext<RoleServer>, args: Exec) -> Result<Value, Failure> {
        let token = self.token(ctx, "box", &args.box_id, args.token)?;
        let body = strip_nulls(json!({
            "command": args.command, "timeout_seconds": args.timeout_seconds, "cwd": args.cwd,
            "env": args.env,
        }));
        let path = format!("/v1/boxes/{}/exec/stream", encode(&args.box_id));
        let response =
            self.send(ctx, Method::POST, &path, Some(&token), Some(json_body(&body)), Spend::Free).await?;
        if !response.status().is_success() {
            let (parts, body) = response.into_parts();
            let body = axum::body::to_bytes(body, MAX_JSON).await.unwrap_or_default();
            return ok_json(&Reply { status: parts.status, headers: parts.headers, body });
        }
        let progress = ctx.meta.get_progress_token();
        let mut stream = response.into_body().into_data_stream();
        let mut events = Events::default();
        let (mut stdout, mut stderr) = (Output::default(), Output::default());
        let mut exit = None;
        let mut step = 0u32;
        let started = tokio::time::Instant::now();
        let mut heartbeat = tokio::time::interval_at(started + HEARTBEAT, HEARTBEAT);
        while exit.is_none() {
            let chunk = tokio::select! {
                chunk = stream.next() => chunk,
                _ = heartbeat.tick() => {
                    if let Some(token) = &progress {
                        step += 1;
                        let message = format!("running for {} s", started.elapsed().as_secs());
                        let _ = ctx.peer.notify_progress(
                            ProgressNotificationParam::new(token.clone(), f64::from(step)).with_message(message),
                        ).await;
                    }
                    continue;
                }
            };
            let Some(chunk) = chunk else { break };
            let chunk = chunk.map_err(|e| Failure(format!("the command's output was cut off: {e}")))?;
            for (event, data) in events.feed(&chunk).map_err(Failure)? {
                let data: Value = serde_json::from_str(&data).unwrap_or(Value::String(data));
                let text = match event.as_str() {
                    "stdout" => stdout.push(&data),
                    "stderr" => stderr.push(&data),
                    "exit" => {
                        exit = Some(data);
                        None
                    }
                    "error" => {
                        return Err(Failure(format!(
                            "the command's stream failed: {}; its outcome is unknown, check with another command",
                            data.as_str().unwrap_or_default()
                        )));
                    }
                    _ => None,
                };
                if let (Some(token), Some(text)) = (&progress, text) {
                    step += 1;
                    let line = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
                    let message: String = line.chars().take(200).collect();
                    let _ = ctx
                        .peer
                        .notify_progress(
                            ProgressNotificationParam::new(token.clone(), f64::from(step))
                                .with_message(message),
                        )
                        .await;
                }
            }
        }
        let exit = exit.ok_or_else(|| {
            Failure("the command's stream ended before it exited; its outcome is unknown".into())
        })?;
        Ok(json!({
            "exit_code": exit["exit_code"], "signal": exit["signal"], "timed_out": exit["timed_out"],
            "duration_ms": exit["duration_ms"],
            "stdout": stdout.text(), "stderr": stderr.text(),
            "stdout_truncated": stdout.truncated, "stderr_truncated": stderr.truncated,
        }))
    }

    pub(super) async fn read(
        &self,
        ctx: &RequestContext<RoleServer>,
        args: ReadFile,
    ) -> Result<Value, Failure> {
        let token = self.token(ctx, "box", &args.box_id, args.token)?;
        let path = format!("/v1/boxes/{}/files?path={}", encode(&args.box_id), encode(&args.path));
        let response = self.send(ctx, Method::GET, &path, Some(&token), None, Spend::Free).await?;
        let size = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if response.status().is_success() && size.is_some_and(|s| s > MAX_READ) {
            return Err(Failure(format!(
                "{} is {} bytes, more than read_file returns ({MAX_READ}); read parts of it with exec \
                 (`head -c`, `sed -n '1,200p'`) or download it from GET /v1/boxes/{}/files",
                args.path,
                size.unwrap_or_default(),
                args.box_id
            )));
        }
        let (parts, body) = response.into_parts();
        let limit = if parts.status.is_success() {
            usize::try_from(MAX_READ).unwrap_or(usize::MAX)
        } else {
            MAX_JSON
        };
        let body = axum::body::to_bytes(body, limit)
            .await
            .map_err(|e| Failure(format!("the file could not be read: {e}")))?;
        let reply = Reply { status: parts.status, headers: parts.headers, body };
        if !reply.status.is_success() {
            return ok_json(&reply);
        }
        Ok(match std::str::from_utf8(&reply.body) {
            Ok(text) => {
                json!({ "path": args.path, "size": reply.body.len(), "encoding": "utf8", "content": text })
            }
            Err(_) => json!({
                "path": args.path, "size": reply.body.len(), "encoding": "base64",
                "content": base64::engine::general_purpose::STANDARD.encode(&reply.body),
            }),
        })
    }

    pub(super) async fn write(
        &self,
        ctx: &RequestContext<RoleServer>,
        args: WriteFile,
    ) -> Result<Value, Failure> {
        let token = self.token(ctx, "box", &args.box_id, args.token)?;
        let bytes = match args.encoding.as_deref().unwrap_or("utf8") {
            "utf8" | "utf-8" | "text" => Bytes::from(args.content.into_bytes()),
            "base64" => Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(args.content.trim())
                    .map_err(|e| Failure(format!("`content` is not base64: {e}")))?,
            ),
            other => return Err(Failure(format!("`encoding` is `utf8` or `base64`, not {other:?}"))),
        };
        let mut path = format!("/v1/boxes/{}/files?path={}", encode(&args.box_id), encode(&args.path));
        if let Some(mode) = &args.mode {
            let _ = write!(path, "&mode={}", encode(mode));
        }
        let body = Some((Body::from(bytes), "application/octet-stream"));
        ok_json(&self.call(ctx, Method::PUT, &path, Some(&token), body, Spend::Free).await?)
    }

    pub(super) async fn acquire(
        &self,
        ctx: &RequestContext<RoleServer>,
        args: AcquireLock,
    ) -> Result<Value, Failure> {
        let max = args.max_price_usdc.usdc("max_price_usdc")?;
        let mut path = format!("/v1/locks/{}", encode(&args.key));
        if let Some(wait) = args.wait_seconds {
            let _ = write!(path, "?wait_seconds={wait}");
        }
        let body = strip_nulls(json!({ "ttl_seconds": args.ttl_seconds, "owner": args.owner }));
        let acquired = self.paid_json(ctx, &path, None, &body, max).await?;
        if let Some(token) = acquired["release_token"].as_str() {
            self.keep(ctx, "lock", &args.key, token.to_owned());
        }
        if acquired["acquired"] == json!(false) {
            let mut held = acquired;
            held["paid_usdc"] = json!("0");
            held["next"] = json!(
                "someone else holds this key until lock.expires_at; try again later, or pass wait_seconds to wait for it"
            );
            return Ok(held);
        }
        Ok(acquired)
    }

    /// `given`, or the token kept for this caller's `kind` `id`.
    pub(super) fn token(
        &self,
        ctx: &RequestContext<RoleServer>,
        kind: &str,
        id: &str,
        given: Option<String>,
    ) -> Result<String, Failure> {
        if let Some(token) = given.filter(|t| !t.trim().is_empty()) {
            return Ok(token);
        }
        let key = (caller_id(ctx), format!("{kind}:{id}"));
        let found = self.book.lock().ok().and_then(|book| book.tokens.get(&key).cloned());
        found.ok_or_else(|| {
            Failure(match kind {
                "box" => format!(
                    "no token is known for box {id}: pass `token`, as buy_box answered it (check box_id)"
                ),
                _ => format!(
                    "no release token is known for lock {id}: pass `release_token`, as acquire_lock answered it"
                ),
            })
        })
    }

    pub(super) fn keep(&self, ctx: &RequestContext<RoleServer>, kind: &str, id: &str, token: String) {
        if let Ok(mut book) = self.book.lock() {
            book.keep((caller_id(ctx), format!("{kind}:{id}")), token);
        }
    }
}

/// The API key of the HTTP request that carries this MCP request (at `/mcp`), if any.
fn caller_key(ctx: &RequestContext<RoleServer>) -> Option<HeaderValue> {
    let parts = ctx.extensions.get::<axum::http::request::Parts>()?;
    if let Some(key) = parts.headers.get(crate::auth::X_API_KEY) {
        return Some(key.clone());
    }
    let bearer = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = bearer.strip_prefix("Bearer ").or_else(|| bearer.strip_prefix("bearer "))?.trim();
    HeaderValue::from_str(token).ok()
}

/// Whose tokens: a hash of the caller's API key (empty over stdio: one caller).
fn caller_id(ctx: &RequestContext<RoleServer>) -> String {
    caller_key(ctx).map(|k| hex_sha256(k.as_bytes())).unwrap_or_default()
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

pub(super) fn json_body(value: &Value) -> (Body, &'static str) {
    (Body::from(serde_json::to_vec(value).unwrap_or_default()), "application/json")
}

/// `value` without its null fields (the native API refuses none, but says less).
fn strip_nulls(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.retain(|_, v| !v.is_null());
    }
    value
}

/// The JSON of a 2xx answer; a refusal as a failure naming its code and what to do.
pub(super) fn ok_json(reply: &Reply) -> Result<Value, Failure> {
    let body = reply.json();
    if reply.status.is_success() {
        return Ok(body);
    }
    Err(Failure(refusal(reply.status, &body)))
}

/// What a refusal says, and what to do about it.
fn refusal(status: StatusCode, body: &Value) -> String {
    if status == StatusCode::PAYMENT_REQUIRED {
        let why = body["error"].as_str().or_else(|| body["detail"].as_str()).unwrap_or("payment required");
        return format!(
            "payment_required: {why}. Nothing was bought. With an API key, check `balance` and buy \
             credits with `top_up`; a key's own caps (scope, per-purchase or daily limits) may refuse \
             it too"
        );
    }
    let code = body["error"]["code"].as_str().unwrap_or("error");
    let message = body["error"]["message"].as_str().map_or_else(|| body.to_string(), str::to_owned);
    let next = match code {
        "missing_token" | "bad_token" | "invalid_token" => {
            " Pass the token buy_box (or acquire_lock) answered for this id."
        }
        "auth_required" | "invalid_api_key" | "api_key_revoked" => {
            " This needs your account: connect with an API key (X-API-Key, or VENDBOX_API_KEY for `vendbox mcp`)."
        }
        "box_expired" | "box_terminated" | "box_failed" => " Buy a new box with buy_box.",
        "actions_exhausted" => " This box has no commands left: buy a new box with buy_box.",
        "unknown_offer" => " Call list_offers for the offer ids.",
        "lock_expired" | "lock_released" | "lock_not_held" => " Take the lock again with acquire_lock.",
        _ => "",
    };
    let field = body["error"]["field"].as_str().map(|f| format!(" (field `{f}`)")).unwrap_or_default();
    format!("{code}{field}: {message}.{next}")
}

/// The parts of an offer a model needs to choose.
pub(super) fn offer_summary(o: &Value) -> Value {
    let mut summary = json!({
        "id": o["id"], "kind": o["kind"], "title": o["title"], "description": o["description"],
        "price_usdc": o["price_usdc"], "available": o["available"],
    });
    for field in
        ["includes", "pricing", "duration", "actions", "images", "default_image", "unavailable_reason"]
    {
        if !o[field].is_null() {
            summary[field] = o[field].clone();
        }
    }
    summary
}

/// A box's answer, named for tools (`box_id`).
pub(super) fn box_summary(view: &Value, paid: Option<&str>) -> Value {
    let mut summary = json!({
        "box_id": view["id"], "state": view["state"], "offer_id": view["offer"], "image": view["image"],
        "expires_at": view["expires_at"], "actions_remaining": view["actions_remaining"],
    });
    for field in ["token", "ssh_command", "ssh", "failure_reason"] {
        if !view[field].is_null() {
            summary[field] = view[field].clone();
        }
    }
    if let Some(paid) = paid {
        summary["paid_usdc"] = json!(paid);
    }
    summary
}

/// A command's output gathered from its base64 chunks, cut at [`MAX_OUTPUT`].
#[derive(Debug, Default)]
struct Output {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Output {
    /// Adds a chunk (`{"data":"<base64>"}`), answering its text for progress.
    fn push(&mut self, data: &Value) -> Option<String> {
        let chunk = base64::engine::general_purpose::STANDARD.decode(data["data"].as_str()?).ok()?;
        let room = MAX_OUTPUT.saturating_sub(self.bytes.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        Some(String::from_utf8_lossy(&chunk).into_owned())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}
