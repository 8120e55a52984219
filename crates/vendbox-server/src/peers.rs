//! `PeerLoad`: how many requests each client address has in flight, capped, so that no client
//! can take every connection, task and box call of vendbox. A request holds its place until its
//! response body has been sent (a command's event stream or a download included).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};

use crate::error::ApiError;

/// In-flight requests per client address, under a cap.
#[derive(Debug)]
pub struct PeerLoad {
    limit: usize,
    in_flight: Mutex<HashMap<IpAddr, usize>>,
}

/// One request's place; given back when dropped.
#[derive(Debug)]
struct Place {
    load: Arc<PeerLoad>,
    peer: IpAddr,
}

impl PeerLoad {
    /// A cap of `limit` requests in flight per address.
    pub fn new(limit: usize) -> Arc<PeerLoad> {
        Arc::new(PeerLoad { limit: limit.max(1), in_flight: Mutex::new(HashMap::new()) })
    }

    fn enter(self: &Arc<Self>, peer: IpAddr) -> Option<Place> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        let n = in_flight.entry(peer).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Place { load: self.clone(), peer })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut in_flight = self.load.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = in_flight.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_flight.remove(&self.peer);
            }
        }
    }
}

/// The middleware: 429 `too_many_requests` past the cap. Requests without a peer address (the
/// router driven in-process) are not counted.
pub async fn cap(State(load): State<Arc<PeerLoad>>, request: Request, next: Next) -> Response {
    let Some(ConnectInfo(addr)) = request.extensions().get::<ConnectInfo<SocketAddr>>().copied() else {
        return next.run(request).await;
    };
    let Some(place) = load.enter(addr.ip()) else {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!("this address has {} requests in flight already; wait for one to finish", load.limit),
        )
        .into_response();
    };
    let response = next.run(request).await;
    response.map(|body| Body::new(Held { body, _place: place }))
}

/// A response body that keeps its request's place until it is done or dropped.
struct Held {
    body: Body,
    _place: Place,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_per_address_and_given_back() {
        let load = PeerLoad::new(2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = load.enter(a).unwrap();
        let _second = load.enter(a).unwrap();
        assert!(load.enter(a).is_none());
        assert!(load.enter(b).is_some());
        drop(first);
        assert!(load.enter(a).is_some());
    }
}
