//! End-to-end: the real `vendbox` binary on 127.0.0.1:0, as an operator runs it.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vendbox_store::testkit::PostgresSchema;

mod support;

use support::Vendbox;

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn post_json(url: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn starts_on_embedded_defaults_and_lists_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let vendbox = Vendbox::start(dir.path(), &[]);
    let (status, body) = get_json(&format!("{}/v1/offers", vendbox.url)).await;
    assert_eq!(status, 200);
    assert!(body["count"].as_u64().unwrap() >= 27, "{body}");
    let (status, health) = get_json(&format!("{}/healthz", vendbox.url)).await;
    assert_eq!((status, health["store"].as_str()), (200, Some("sqlite")));
    assert!(dir.path().join("vendbox-data/vendbox.db").exists(), "state lives under ./vendbox-data");
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut vendbox = Vendbox::start(dir.path(), &[]);
    let body = br#"{"offer_id":"bare-linux-machine","minutes":90}"#;
    let mut stream = tokio::net::TcpStream::connect(vendbox.addr()).await.unwrap();
    let head = format!(
        "POST /v1/quotes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    // Wait until vendbox counts the request in flight (the metrics request itself is the other).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = reqwest::get(format!("{}/metrics", vendbox.url)).await.unwrap().text().await.unwrap();
        let in_flight = metrics
            .lines()
            .find(|l| l.starts_with("vendbox_http_requests_in_flight "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if in_flight >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the request never arrived: {metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The request is in flight (half its body sent) when the operator stops vendbox.
    vendbox.signal("-TERM");
    // Wait until it stops taking new connections, then check it still runs for the old one.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("{}/healthz", vendbox.url)).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "vendbox kept accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(vendbox.child.try_wait().unwrap().is_none(), "vendbox must wait for the in-flight request");

    stream.write_all(&body[10..]).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(response.contains("\"price_usdc\":\"1.15\""), "{response}");
    let status = vendbox.wait(Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Vendbox::start(dir.path(), &["--data-dir", "state"]);
    let (status, quote) =
        post_json(&format!("{}/v1/quotes", first.url), r#"{"offer_id":"h3retik-micro"}"#).await;
    assert_eq!(status, 201, "{quote}");
    first.signal("-INT");
    assert!(first.wait(Duration::from_secs(10)).success());

    let second = Vendbox::start(dir.path(), &["--data-dir", "state"]);
    let (status, again) =
        get_json(&format!("{}/v1/quotes/{}", second.url, quote["id"].as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(again, quote);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_from_postgres_with_database_url() {
    let Some(schema) = PostgresSchema::create().await else { return };
    let url = schema.url();
    let dir = tempfile::tempdir().unwrap();
    let quote = {
        let vendbox = Vendbox::start(dir.path(), &["--database-url", &url]);
        let (_, health) = get_json(&format!("{}/healthz", vendbox.url)).await;
        assert_eq!(health["store"], "postgres");
        let (status, quote) = post_json(
            &format!("{}/v1/quotes", vendbox.url),
            r#"{"offer_id":"gpu-h100-machine","minutes":90}"#,
        )
        .await;
        assert_eq!(status, 201, "{quote}");
        quote
    };
    // A second host on the same database sees it.
    let other = Vendbox::start(dir.path(), &["--database-url", &url]);
    let (status, again) =
        get_json(&format!("{}/v1/quotes/{}", other.url, quote["id"].as_str().unwrap())).await;
    drop(other);
    schema.drop_schema().await;
    assert_eq!((status, again), (200, quote));
    // The data directory still holds this host's SSH host key, but no database.
    assert!(!dir.path().join("vendbox-data/vendbox.db").exists(), "no SQLite file when PostgreSQL is used");
}

#[test]
fn a_bad_config_file_stops_start_up_naming_file_key_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vendbox.toml"),
        "[[offers]]\nid = \"h3retik-custom\"\nduration = { rule = \"range\", min_minutes = 1, max_minutes = \"lots\" }\n",
    )
    .unwrap();
    let output = Command::new(support::BIN)
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("vendbox.toml"), "{stderr}");
    assert!(stderr.contains("key `offers[h3retik-custom].duration`"), "{stderr}");
    assert!(stderr.contains("invalid type: string \"lots\", expected u32"), "{stderr}");
}

#[test]
fn version_and_help_read_well() {
    let version = Command::new(support::BIN).arg("version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("vendbox {}", env!("CARGO_PKG_VERSION"))
    );
    let help = Command::new(support::BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for word in ["serve", "version", "HTTP 402"] {
        assert!(help.contains(word), "{help}");
    }
}
