//! boxd as PID 1: reaping orphans, its socket, and shutting down on SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::common::{Boxd, alive, children, eventually, state};

/// boxd's children that are zombies.
fn zombies(boxd: u32) -> Vec<u32> {
    children(boxd)
        .into_iter()
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| state(&s) == 'Z'))
        .collect()
}

#[tokio::test]
async fn orphans_are_adopted_and_reaped() {
    let boxd = Boxd::start().await;
    let mut orphans = Vec::new();
    for _ in 0..5 {
        let (status, r) = boxd
            .json(
                "POST",
                "/process/run",
                json!({"cmd": "sleep 0.3 >/dev/null 2>&1 & echo $!", "shell": true}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        orphans.push(r["stdout"].as_str().unwrap().trim().parse::<u32>().unwrap());
    }
    // Their parent shell is gone, so boxd (a subreaper) adopted them.
    let adopted = children(boxd.pid());
    assert!(orphans.iter().all(|pid| adopted.contains(pid)), "orphans {orphans:?}, children {adopted:?}");
    assert!(
        eventually(Duration::from_secs(3), || orphans.iter().all(|pid| !alive(*pid))).await,
        "orphans did not exit"
    );
    assert!(
        eventually(Duration::from_secs(2), || zombies(boxd.pid()).is_empty()).await,
        "zombies left: {:?}",
        zombies(boxd.pid())
    );
    assert!(children(boxd.pid()).iter().all(|pid| !orphans.contains(pid)));
}

#[tokio::test]
async fn socket_is_private_and_a_stale_one_is_replaced() {
    let first = Boxd::start().await;
    let mode = std::fs::metadata(first.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(first);

    // A file left where the socket goes does not stop boxd.
    let mut boxd = Boxd::start().await;
    let socket = boxd.socket().to_owned();
    assert_eq!(boxd.terminate(Duration::from_secs(5)), Some(0));
    std::fs::write(&socket, b"stale").unwrap();
    let again =
        std::process::Command::new(env!("CARGO_BIN_EXE_boxd")).arg("--socket").arg(&socket).spawn().unwrap();
    let pid = again.id();
    let listening =
        eventually(Duration::from_secs(5), || std::os::unix::net::UnixStream::connect(&socket).is_ok()).await;
    crate::common::signal(pid, rustix::process::Signal::TERM);
    let status = again.wait_with_output().unwrap().status;
    assert!(listening, "boxd did not replace the stale socket");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigterm_kills_running_processes_and_exits_zero() {
    let mut boxd = Boxd::start().await;
    let mut events = boxd.start_process(json!({"cmd": "sleep", "args": ["30"]})).await;
    let pid = events.started().await;
    let (_, r) = boxd.json("GET", "/process", Value::Null).await;
    assert_eq!(r["processes"][0]["pid"], pid);
    assert!(alive(pid));
    assert_eq!(boxd.terminate(Duration::from_secs(5)), Some(0));
    assert!(eventually(Duration::from_secs(2), || !alive(pid)).await, "sleep survived boxd");
    assert!(!boxd.socket().exists(), "socket left behind");
}
