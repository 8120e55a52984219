//! The TCP tunnel: an echo server in the test process (outside a box boxd shares the test's
//! network namespace) reached through boxd's socket.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::common::Boxd;

/// What the echo server writes after its client's end-of-file, before it closes.
const TRAILER: &[u8] = b"bye";

/// An echo server on `127.0.0.1`: its port, and a channel that gets a message each time a
/// connection reads end-of-file. After that end-of-file it writes [`TRAILER`] and closes.
async fn echo_server() -> (u16, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (eof_tx, eof_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let eof_tx = eof_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0_u8; 64 * 1024];
                loop {
                    let n = conn.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    conn.write_all(&buf[..n]).await.unwrap();
                }
                let _ = eof_tx.send(());
                conn.write_all(TRAILER).await.unwrap();
                conn.shutdown().await.unwrap();
            });
        }
    });
    (port, eof_rx)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn a_mebibyte_echoes_back_byte_for_byte() {
    let boxd = Boxd::start().await;
    let (port, _eof) = echo_server().await;
    let tunnel = boxd.tunnel(&format!("/tcp?port={port}"), true).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(tunnel);
    let data: Vec<u8> = (0..1024 * 1024_u32).map(|i| (i % 253) as u8).collect();
    // Written and read at once, or both sides' buffers fill and the echo stalls.
    let write = async {
        writer.write_all(&data).await.unwrap();
        writer.flush().await.unwrap();
    };
    let read = async {
        let mut back = vec![0_u8; data.len()];
        reader.read_exact(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(write, read) })
        .await
        .expect("the echo took longer than 30 s");
    assert!(back == data, "the echoed mebibyte differs");
}

#[tokio::test]
async fn closing_the_write_half_reaches_the_server_and_the_reply_still_arrives() {
    let boxd = Boxd::start().await;
    let (port, mut eof) = echo_server().await;
    let mut tunnel = boxd.tunnel(&format!("/tcp?port={port}&host=127.0.0.1"), true).await.unwrap();
    tunnel.write_all(b"ping").await.unwrap();
    tunnel.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), eof.recv())
        .await
        .expect("the echo server did not see end-of-file")
        .unwrap();
    // The server writes after our half-close, so the other direction must still be open.
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_to_end(&mut back))
        .await
        .expect("the tunnel did not end after the server closed")
        .unwrap();
    assert_eq!(back, b"pingbye");
}

#[tokio::test]
async fn a_closed_port_is_connect_failed() {
    let boxd = Boxd::start().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (status, err) = boxd.tunnel(&format!("/tcp?port={port}"), true).await.unwrap_err();
    assert_eq!((status, code(&err)), (StatusCode::BAD_GATEWAY, "connect_failed"), "{err}");
}

#[tokio::test]
async fn bad_targets_and_missing_upgrade_headers_are_bad_requests() {
    let boxd = Boxd::start().await;
    let (port, _eof) = echo_server().await;
    for uri in [
        format!("/tcp?port={port}&host=10.0.0.1"),
        format!("/tcp?port={port}&host=localhost"),
        "/tcp?port=0".to_owned(),
        "/tcp?port=65536".to_owned(),
        "/tcp".to_owned(),
    ] {
        let (status, err) = boxd.tunnel(&uri, true).await.unwrap_err();
        assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "bad_request"), "{uri}: {err}");
    }
    // The port is open: only the missing `Upgrade` header is wrong.
    let (status, err) = boxd.tunnel(&format!("/tcp?port={port}"), false).await.unwrap_err();
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "bad_request"), "{err}");
    // A plain GET without either header.
    let (status, err) = boxd.json("GET", &format!("/tcp?port={port}"), Value::Null).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "bad_request"), "{err}");
}
