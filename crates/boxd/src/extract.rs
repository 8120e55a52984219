//! Extractors whose rejections are `bad_request` [`ApiError`]s rather than axum's plain-text
//! answers: a JSON body, a query string and a pid in the path.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body of type `T`. The content type is not checked.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "bad_request", "the request body is too large")
            } else {
                ApiError::bad_request(rejection.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("the body is not the expected JSON: {e}")))
    }
}

/// A query string of type `T`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Params<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| Params(t))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// The `{pid}` segment of a `/process/{pid}/…` path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PidParam(pub(crate) u32);

impl<S: Send + Sync> FromRequestParts<S> for PidParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<u32>::from_request_parts(parts, state)
            .await
            .map(|Path(pid)| PidParam(pid))
            .map_err(|_| ApiError::bad_request("the pid in the path must be a positive integer"))
    }
}
