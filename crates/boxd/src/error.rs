//! `ApiError`: the one error type of boxd's HTTP API. It renders
//! `{"error":{"code":"…","message":"…"}}` with a fitting status.

use std::io;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::wire::{ErrorBody, ErrorDetail};

/// An error the host sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// HTTP status.
    pub(crate) status: StatusCode,
    /// Stable machine-readable code.
    pub(crate) code: &'static str,
    /// What is wrong, for people.
    pub(crate) message: String,
}

impl ApiError {
    /// An error with any status and code.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// 400 `bad_request`: the request itself is wrong.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `no_such_process`: no running process started through boxd has this pid.
    pub(crate) fn no_such_process(pid: u32) -> Self {
        Self::new(StatusCode::NOT_FOUND, "no_such_process", format!("no running process has pid {pid}"))
    }

    /// 500 `io_error` for a failure that is not the request's fault.
    pub(crate) fn internal(cause: &dyn std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "io_error", cause.to_string())
    }

    /// Maps a file-system error about `path` to its code.
    pub(crate) fn io(path: &std::path::Path, err: &io::Error) -> Self {
        let path = path.display();
        match err.kind() {
            io::ErrorKind::NotFound => {
                Self::new(StatusCode::NOT_FOUND, "not_found", format!("{path}: no such file or directory"))
            }
            io::ErrorKind::AlreadyExists => {
                Self::new(StatusCode::CONFLICT, "exists", format!("{path} already exists"))
            }
            io::ErrorKind::IsADirectory => {
                Self::new(StatusCode::BAD_REQUEST, "is_directory", format!("{path} is a directory"))
            }
            io::ErrorKind::NotADirectory => Self::new(
                StatusCode::BAD_REQUEST,
                "not_directory",
                format!("{path}: a component of the path is not a directory"),
            ),
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                Self::new(StatusCode::FORBIDDEN, "io_error", format!("{path}: {err}"))
            }
            io::ErrorKind::InvalidInput => {
                Self::new(StatusCode::BAD_REQUEST, "bad_request", format!("{path}: {err}"))
            }
            io::ErrorKind::DirectoryNotEmpty => {
                Self::new(StatusCode::CONFLICT, "io_error", format!("{path}: {err}"))
            }
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "io_error", format!("{path}: {err}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        (self.status, Json(body)).into_response()
    }
}
