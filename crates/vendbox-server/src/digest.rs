//! The SHA-256 of a request's body, taken while the handler reads the body (no second copy and
//! no size limit of its own), and handed to the payment gate (`gate::proof`) through a
//! task-local, as `auth` hands it the principal: a payment method may bind its challenge to the
//! body it was issued for (MPP's `digest`). A body never read, or not read to its end, has none.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use http_body::{Frame, SizeHint};
use sha2::{Digest, Sha256};

/// Where the digest of the request being served lands once its body was read to the end.
#[derive(Debug, Clone, Default)]
pub struct BodyDigest(Arc<Mutex<Option<[u8; 32]>>>);

impl BodyDigest {
    fn set(&self, digest: [u8; 32]) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(digest);
    }

    fn get(&self) -> Option<[u8; 32]> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

tokio::task_local! {
    /// The body digest of the request being served.
    static BODY: BodyDigest;
}

/// `request`, whose body is hashed as it is read, and where its digest will be.
pub fn hashing(request: Request) -> (Request, BodyDigest) {
    let digest = BodyDigest::default();
    let (parts, body) = request.into_parts();
    let body = Body::new(Hashing { inner: body, hasher: Some(Sha256::new()), digest: digest.clone() });
    (Request::from_parts(parts, body), digest)
}

/// Runs `serve` with `digest` as the request's body digest.
pub async fn scope<F: Future>(digest: BodyDigest, serve: F) -> F::Output {
    BODY.scope(digest, serve).await
}

/// The SHA-256 of the body of the request being served, once it was read to its end.
pub fn current() -> Option<[u8; 32]> {
    BODY.try_with(BodyDigest::get).ok().flatten()
}

/// A body that hashes what passes through it.
struct Hashing {
    inner: Body,
    hasher: Option<Sha256>,
    digest: BodyDigest,
}

impl http_body::Body for Hashing {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(hasher), Some(data)) = (this.hasher.as_mut(), frame.data_ref()) {
                    hasher.update(data);
                }
            }
            Poll::Ready(None) => {
                if let Some(hasher) = this.hasher.take() {
                    this.digest.set(hasher.finalize().into());
                }
            }
            Poll::Ready(Some(Err(_))) => this.hasher = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_read_to_its_end_has_its_digest() {
        let (request, digest) = hashing(Request::new(Body::from("{\"a\":1}")));
        assert_eq!(digest.get(), None, "not read yet");
        let read = scope(digest.clone(), async move {
            let bytes = axum::body::to_bytes(request.into_body(), 1024).await.unwrap();
            (bytes, current())
        })
        .await;
        assert_eq!(read.0, "{\"a\":1}");
        let expected: [u8; 32] = Sha256::digest(b"{\"a\":1}").into();
        assert_eq!(read.1, Some(expected));
        assert_eq!(current(), None, "outside a request");
    }
}
