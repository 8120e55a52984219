//! The Connect protocol (connectrpc.com/docs/protocol) as envd's clients use it, with the JSON
//! codec: a unary call is a JSON body answered with a JSON body (an error with its HTTP status
//! and `{"code","message"}`); a streaming call's messages travel in envelopes (one flags byte,
//! a 4-byte big-endian length, the JSON message), the last one of a response flagged
//! end-of-stream and carrying `{}` or `{"error":…}` (a streaming answer is always 200).
//! Compressed envelopes are refused: the SDKs never compress.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use vendbox_box::BoxError;

use crate::error::ApiError;

/// The largest message vendbox takes in an envelope or a unary body.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The content type of a streaming call with the JSON codec.
pub const STREAM_JSON: &str = "application/connect+json";

/// Envelope flag: the message is compressed.
const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: the end-of-stream message of a response.
const FLAG_END: u8 = 0x02;

/// Connect's error codes, with the HTTP status a unary error answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The call was cancelled.
    Canceled,
    /// Anything else.
    Unknown,
    /// A bad argument.
    InvalidArgument,
    /// The deadline passed.
    DeadlineExceeded,
    /// No such thing.
    NotFound,
    /// It exists already.
    AlreadyExists,
    /// Not allowed.
    PermissionDenied,
    /// Out of some resource.
    ResourceExhausted,
    /// Not in a state for this.
    FailedPrecondition,
    /// Not implemented here.
    Unimplemented,
    /// A fault of vendbox's.
    Internal,
    /// Not reachable now.
    Unavailable,
    /// No valid credentials.
    Unauthenticated,
}

impl Code {
    /// The code's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary error with this code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::Unknown | Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// A Connect error: a code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The code.
    pub code: Code,
    /// What went wrong.
    pub message: String,
}

/// Connect's error body.
#[derive(Debug, Serialize)]
struct ErrorJson<'a> {
    code: &'static str,
    message: &'a str,
}

impl RpcError {
    /// An error with `code`.
    pub fn new(code: Code, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into() }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(ErrorJson { code: self.code.name(), message: &self.message }).unwrap_or_default()
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        (self.code.status(), axum::Json(self.json())).into_response()
    }
}

impl From<BoxError> for RpcError {
    fn from(e: BoxError) -> Self {
        let code = match &e {
            BoxError::Boxd { code, .. } => match code.as_str() {
                "not_found" | "no_such_process" => Code::NotFound,
                "exists" => Code::AlreadyExists,
                "bad_request" | "is_directory" | "not_directory" | "not_a_file" | "unsupported_user" => {
                    Code::InvalidArgument
                }
                "connect_failed" => Code::Unavailable,
                _ => Code::Internal,
            },
            BoxError::TooLarge { .. } => Code::ResourceExhausted,
            BoxError::NotFound(_) => Code::NotFound,
            _ => Code::Unavailable,
        };
        let message = match e {
            BoxError::Boxd { message, .. } => message,
            other => other.to_string(),
        };
        RpcError::new(code, message)
    }
}

impl From<ApiError> for RpcError {
    fn from(e: ApiError) -> Self {
        let code = match e.status.as_u16() {
            400 | 422 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 | 410 => Code::NotFound,
            409 => Code::FailedPrecondition,
            429 => Code::ResourceExhausted,
            503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            _ => Code::Internal,
        };
        RpcError::new(code, e.message)
    }
}

/// A unary request's message, from its JSON body.
pub fn unary<M: DeserializeOwned>(body: &[u8]) -> Result<M, RpcError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(RpcError::new(Code::ResourceExhausted, "the message is too big"));
    }
    let body = if body.is_empty() { b"{}".as_slice() } else { body };
    serde_json::from_slice(body)
        .map_err(|e| RpcError::new(Code::InvalidArgument, format!("bad message: {e}")))
}

/// A unary answer.
pub fn reply<M: Serialize>(message: &M) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => {
            ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
        }
        Err(e) => RpcError::new(Code::Internal, e.to_string()).into_response(),
    }
}

/// The first message of a streaming request's body (a server-streaming call sends one).
pub fn first_message<M: DeserializeOwned>(body: &[u8]) -> Result<M, RpcError> {
    let mut frames = Frames::default();
    frames.push(body)?;
    match frames.next_frame()? {
        Some(payload) => unary(&payload),
        None => Err(RpcError::new(Code::InvalidArgument, "the request holds no whole message")),
    }
}

/// Envelopes read from a byte stream as it comes.
#[derive(Debug, Default)]
pub struct Frames {
    buffer: Vec<u8>,
}

impl Frames {
    /// Adds bytes read.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), RpcError> {
        if self.buffer.len() + bytes.len() > MAX_MESSAGE_BYTES + 5 {
            return Err(RpcError::new(Code::ResourceExhausted, "the message is too big"));
        }
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    /// The next whole message's payload, if one is there.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, RpcError> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        let flags = self.buffer[0];
        let length = u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]);
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        if length > MAX_MESSAGE_BYTES {
            return Err(RpcError::new(Code::ResourceExhausted, "the message is too big"));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(RpcError::new(
                Code::Unimplemented,
                "compressed messages are not taken; send them plain",
            ));
        }
        if self.buffer.len() < 5 + length {
            return Ok(None);
        }
        let payload = self.buffer[5..5 + length].to_vec();
        self.buffer.drain(..5 + length);
        Ok(Some(payload))
    }
}

/// One envelope.
fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(payload.len() + 5);
    frame.push(flags);
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// A message's envelope.
pub fn message_frame<M: Serialize>(message: &M) -> Bytes {
    envelope(0, &serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec()))
}

/// The end-of-stream envelope: `{}`, or the error the stream ends with.
pub fn end_frame(error: Option<&RpcError>) -> Bytes {
    let body = match error {
        None => serde_json::json!({}),
        Some(e) => serde_json::json!({ "error": e.json() }),
    };
    envelope(FLAG_END, &serde_json::to_vec(&body).unwrap_or_default())
}

/// A streaming answer from a stream of frames (the caller ends it with [`end_frame`]).
pub fn streaming(frames: impl Stream<Item = Bytes> + Send + 'static) -> Response {
    let body = Body::from_stream(frames.map(Ok::<_, std::convert::Infallible>));
    ([(header::CONTENT_TYPE, HeaderValue::from_static(STREAM_JSON))], body).into_response()
}

/// A streaming answer that is only its error.
pub fn stream_error(error: &RpcError) -> Response {
    streaming(futures_util::stream::iter([end_frame(Some(error))]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_in_pieces() {
        let frame = message_frame(&serde_json::json!({"a": 1}));
        let mut frames = Frames::default();
        frames.push(&frame[..3]).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(frames.next_frame().ok().flatten(), None);
        frames.push(&frame[3..]).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(frames.next_frame().ok().flatten(), Some(br#"{"a":1}"#.to_vec()));
        assert_eq!(end_frame(None).as_ref(), b"\x02\x00\x00\x00\x02{}");
        let mut big = Frames::default();
        assert!(big.push(&[0, 0xff, 0xff, 0xff, 0xff]).is_ok());
        assert!(big.next_frame().is_err(), "an announced length past the limit is refused");
    }
}
