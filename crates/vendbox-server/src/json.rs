//! `ApiJson`: a JSON body extractor whose rejections are [`ApiError`]s that name the field
//! (`unknown_field`, `wrong_type`, `missing_field`) instead of a bare text message.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use vendbox_core::FieldErrorCode;

use crate::error::ApiError;

/// A JSON request body of type `T`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json") || mime.to_ascii_lowercase().ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses an optional JSON body: empty (or only whitespace) means every field absent.
pub fn parse_optional<T: Default + DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) { Ok(T::default()) } else { parse(bytes) }
}

/// Parses `bytes` as `T`, turning serde's message into a field error.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {message}"),
            );
        }
        let (code, field) = classify(&message, &path);
        let mut err = ApiError::new(StatusCode::BAD_REQUEST, code.as_str(), message);
        if let Some(field) = field {
            err = err.with_field(field);
        }
        err
    })
}

/// Which kind of problem serde reported, and which field it was about.
fn classify(message: &str, path: &str) -> (FieldErrorCode, Option<String>) {
    let quoted = || message.split('`').nth(1).map(str::to_owned);
    let join = |name: Option<String>| match (path, name) {
        (".", n) => n,
        (p, Some(n)) => Some(format!("{p}.{n}")),
        (p, None) => Some(p.to_owned()),
    };
    if message.starts_with("unknown field") {
        // The path already ends with the unknown field's name.
        (FieldErrorCode::UnknownField, join(None))
    } else if message.starts_with("missing field") {
        (FieldErrorCode::MissingField, join(quoted()))
    } else if message.starts_with("invalid type") || message.starts_with("invalid length") {
        (FieldErrorCode::WrongType, join(None))
    } else if message.starts_with("unknown variant") {
        (FieldErrorCode::UnsupportedValue, join(None))
    } else if message.starts_with("invalid value") {
        (FieldErrorCode::OutOfRange, join(None))
    } else {
        (FieldErrorCode::InvalidValue, join(None))
    }
}

/// A request body that could not be read (too large, or cut off) as a coded error.
pub(crate) fn body_rejection(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        offer_id: String,
        minutes: Option<u32>,
    }

    fn err(json: &str) -> ApiError {
        parse::<Body>(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn names_the_field_and_the_kind_of_problem() {
        let e = err(r#"{"offer_id":"x","color":"red"}"#);
        assert_eq!((e.code, e.field.as_deref()), ("unknown_field", Some("color")));
        let e = err(r#"{"offer_id":"x","minutes":"ten"}"#);
        assert_eq!((e.code, e.field.as_deref()), ("wrong_type", Some("minutes")));
        let e = err(r#"{"offer_id":"x","minutes":-1}"#);
        assert_eq!((e.code, e.field.as_deref()), ("out_of_range", Some("minutes")));
        let e = err(r#"{"minutes":1}"#);
        assert_eq!((e.code, e.field.as_deref()), ("missing_field", Some("offer_id")));
        let e = err(r#"{"offer_id":"x""#);
        assert_eq!((e.code, e.field), ("malformed_json", None));
        let e = err("[]");
        assert_eq!(e.code, "wrong_type");
    }
}
