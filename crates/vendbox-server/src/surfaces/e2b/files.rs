//! envd's `/files`: `GET /files?path=` streams a file out of the sandbox, `POST /files`
//! writes files into it, as `multipart/form-data` (each part a file, its file name the path
//! unless `?path=` names the one file) or as an `application/octet-stream` body to `?path=`.
//! The answer is E2B's list of written entries; errors are `{"code": <status>, "message": …}`.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use vendbox_box::BoxError;
use vendbox_service::MAX_DOWNLOAD_BYTES;

use super::connect::RpcError;
use super::envd::{self, SandboxTarget};
use crate::app::AppState;

/// `?path=&username=` of `/files`.
#[derive(Debug, Deserialize)]
pub struct FilesQuery {
    /// The file (absolute, or relative to the home directory).
    pub path: Option<String>,
    /// The user to act as (vendbox's boxes have only `root`; accepted and ignored).
    pub username: Option<String>,
}

/// One written file, as envd answers.
#[derive(Debug, Serialize)]
pub struct Written {
    /// Its last path component.
    pub name: String,
    /// Always `file`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Its path.
    pub path: String,
}

/// envd's error body for `/files`.
fn failure(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "code": status.as_u16(), "message": message.into() }))).into_response()
}

fn box_failure(e: BoxError) -> Response {
    let status = match &e {
        BoxError::Boxd { status, .. } => StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
        BoxError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_GATEWAY,
    };
    failure(status, RpcError::from(e).message)
}

fn rpc_failure(e: RpcError) -> Response {
    failure(e.code.status(), e.message)
}

/// `GET /files?path=`: the file's bytes.
pub async fn download(
    State(state): State<AppState>,
    Extension(target): Extension<SandboxTarget>,
    Query(query): Query<FilesQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    let opened = match envd::open(&state, &headers, &target).await {
        Ok(opened) => opened,
        Err(e) => return rpc_failure(e),
    };
    let Some(path) = query.path.filter(|p| !p.is_empty()) else {
        return failure(StatusCode::BAD_REQUEST, "name the file with ?path=");
    };
    let stream = match opened.boxd.read_file_stream(&path, MAX_DOWNLOAD_BYTES).await {
        Ok(stream) => stream,
        Err(e) => return box_failure(e),
    };
    let chunks = futures_util::stream::unfold(stream, |mut stream| async move {
        match stream.next().await {
            Ok(Some(chunk)) => Some((Ok::<Bytes, std::io::Error>(chunk), stream)),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), stream)),
        }
    });
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"))],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// `POST /files`: writes the files sent and answers what was written.
pub async fn upload(
    State(state): State<AppState>,
    Extension(target): Extension<SandboxTarget>,
    Query(query): Query<FilesQuery>,
    request: Request,
) -> Response {
    let opened = match envd::open(&state, request.headers(), &target).await {
        Ok(opened) => opened,
        Err(e) => return rpc_failure(e),
    };
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let mut files: Vec<(String, Bytes)> = Vec::new();
    if is_multipart {
        let mut multipart = match Multipart::from_request(request, &()).await {
            Ok(multipart) => multipart,
            Err(e) => return failure(StatusCode::BAD_REQUEST, e.body_text()),
        };
        loop {
            match multipart.next_field().await {
                Ok(Some(field)) => {
                    let name = field.file_name().map(str::to_owned);
                    let data = match field.bytes().await {
                        Ok(data) => data,
                        Err(e) => return failure(StatusCode::BAD_REQUEST, e.body_text()),
                    };
                    let path = match (&query.path, name) {
                        (Some(path), _) if !path.is_empty() => path.clone(),
                        (_, Some(name)) if !name.is_empty() => name,
                        _ => {
                            return failure(
                                StatusCode::BAD_REQUEST,
                                "name each file's path (its file name, or ?path=)",
                            );
                        }
                    };
                    files.push((path, data));
                }
                Ok(None) => break,
                Err(e) => return failure(StatusCode::BAD_REQUEST, e.body_text()),
            }
        }
    } else {
        let Some(path) = query.path.clone().filter(|p| !p.is_empty()) else {
            return failure(StatusCode::BAD_REQUEST, "name the file with ?path=");
        };
        let data = match Bytes::from_request(request, &()).await {
            Ok(data) => data,
            Err(e) => return failure(StatusCode::PAYLOAD_TOO_LARGE, e.body_text()),
        };
        files.push((path, data));
    }
    let mut written = Vec::with_capacity(files.len());
    for (path, data) in files {
        match opened.boxd.write_file(&path, data, 0o644).await {
            Ok(answer) => {
                let path = answer.get("path").and_then(|p| p.as_str()).unwrap_or(&path).to_owned();
                let name = path.rsplit('/').next().unwrap_or_default().to_owned();
                written.push(Written { name, kind: "file", path });
            }
            Err(e) => return box_failure(e),
        }
    }
    Json(written).into_response()
}
