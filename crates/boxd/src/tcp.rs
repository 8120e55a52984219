//! `GET /tcp`: a byte stream to a TCP port on the box's loopback, over an HTTP/1.1 upgrade. The
//! host cannot reach into the box's network namespace; boxd lives in it and bridges.
//!
//! boxd connects first and answers `101 Switching Protocols` only once the port accepted, so a
//! refused port is an ordinary JSON error. After the upgrade a task on boxd's one runtime
//! thread copies bytes both ways; end-of-file in one direction shuts down writing in the other
//! (a half-close), and the tunnel ends when both directions have.

use std::net::{IpAddr, Ipv4Addr};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::ApiError;
use crate::extract::Params;
use crate::wire::{TCP_CONNECT_TIMEOUT, TCP_UPGRADE, TcpQuery};

/// `GET /tcp?port=N&host=127.0.0.1` with `Connection: Upgrade` and `Upgrade: tcp`.
pub(crate) async fn tunnel(
    Params(query): Params<TcpQuery>,
    mut request: Request,
) -> Result<Response, ApiError> {
    if !asks_for_tcp(request.headers()) {
        return Err(ApiError::bad_request(format!(
            "send `Connection: Upgrade` and `Upgrade: {TCP_UPGRADE}` to open a TCP tunnel"
        )));
    }
    let target = (loopback(query.host.as_deref())?, port(query.port)?);
    let stream = match tokio::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(connect_failed(format!("cannot connect to {}:{}: {e}", target.0, target.1)));
        }
        Err(_) => {
            return Err(connect_failed(format!(
                "{}:{} did not accept within {TCP_CONNECT_TIMEOUT:?}",
                target.0, target.1
            )));
        }
    };
    // Interactive traffic (ssh) must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        // The host hung up before the upgrade completed; dropping `stream` closes the port.
        let Ok(upgraded) = upgrade.await else { return };
        let mut host = TokioIo::new(upgraded);
        let mut stream = stream;
        // An error (a reset on either side) ends the tunnel; both ends are closed when dropped.
        let _ = tokio::io::copy_bidirectional(&mut host, &mut stream).await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(TCP_UPGRADE));
    Ok(response)
}

/// 502 `connect_failed`: the port inside the box did not accept the connection.
fn connect_failed(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "connect_failed", message)
}

/// Whether the headers ask for the upgrade: `Connection` lists `Upgrade` and `Upgrade` lists `tcp`.
fn asks_for_tcp(headers: &HeaderMap) -> bool {
    let lists = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    };
    lists(header::CONNECTION, "upgrade") && lists(header::UPGRADE, TCP_UPGRADE)
}

/// The address to connect to: `host` when it is a loopback address, else `127.0.0.1`.
fn loopback(host: Option<&str>) -> Result<IpAddr, ApiError> {
    let Some(host) = host else { return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)) };
    let addr: IpAddr =
        host.parse().map_err(|_| ApiError::bad_request(format!("`host` {host:?} is not an IP address")))?;
    if addr.is_loopback() {
        Ok(addr)
    } else {
        Err(ApiError::bad_request(format!("`host` {addr} is not a loopback address (127.0.0.0/8 or ::1)")))
    }
}

fn port(port: u16) -> Result<u16, ApiError> {
    if port == 0 { Err(ApiError::bad_request("`port` must be 1 to 65535")) } else { Ok(port) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_allowed() {
        assert_eq!(loopback(None), Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(loopback(Some("127.1.2.3")), Ok(IpAddr::V4(Ipv4Addr::new(127, 1, 2, 3))));
        assert!(loopback(Some("::1")).is_ok_and(|a| a.is_loopback()));
        for host in ["10.0.0.1", "0.0.0.0", "::", "::ffff:127.0.0.1", "localhost", ""] {
            assert!(loopback(Some(host)).is_err(), "{host} was allowed");
        }
    }

    #[test]
    fn the_upgrade_headers_are_tokens_in_any_case() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, HeaderValue::from_static(value));
            }
            map
        };
        assert!(asks_for_tcp(&headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "TCP")])));
        assert!(!asks_for_tcp(&headers(&[("connection", "upgrade")])));
        assert!(!asks_for_tcp(&headers(&[("upgrade", "tcp")])));
        assert!(!asks_for_tcp(&headers(&[("connection", "upgrade"), ("upgrade", "websocket")])));
    }
}
