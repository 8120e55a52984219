//! Processes on a pseudo-terminal: the terminal is theirs, resizes and input reach them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper::StatusCode;
use serde_json::json;

use crate::common::Boxd;

#[tokio::test]
async fn pty_process_has_a_terminal() {
    let boxd = Boxd::start().await;
    let mut events = boxd
        .start_process(
            json!({"cmd": "sh", "args": ["-c", "tty; echo TERM=$TERM"], "pty": {"rows": 24, "cols": 80}}),
        )
        .await;
    events.started().await;
    let (stdout, stderr, pty, end) = events.finish().await;
    assert_eq!((stdout.as_str(), stderr.as_str()), ("", ""));
    assert!(pty.starts_with("/dev/pts/"), "{pty:?}");
    assert!(pty.contains("TERM=xterm-256color\r\n"), "{pty:?}");
    assert_eq!(end.exit_code, Some(0));
}

#[tokio::test]
async fn pty_pid_is_the_command_and_resize_and_input_reach_it() {
    let boxd = Boxd::start().await;
    let script = "echo pid=$$; stty size; read line; stty size; echo got=$line";
    let mut events = boxd
        .start_process(
            json!({"cmd": "sh", "args": ["-c", script], "pty": {"rows": 24, "cols": 80}, "tag": "t"}),
        )
        .await;
    let pid = events.started().await;
    let out = events.output_until("24 80").await;
    assert!(out.contains(&format!("pid={pid}\r\n")), "setsid forked: {out:?} for pid {pid}");

    let (_, list) = boxd.json("GET", "/process", serde_json::Value::Null).await;
    assert_eq!(list["processes"][0]["pty"], true);

    let (status, _) =
        boxd.json("POST", &format!("/process/{pid}/resize"), json!({"rows": 40, "cols": 100})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        boxd.json("POST", &format!("/process/{pid}/input"), json!({"data": BASE64.encode("abc\n")})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, pty, end) = events.finish().await;
    assert!(pty.contains("40 100\r\n"), "{pty:?}");
    assert!(pty.contains("got=abc\r\n"), "{pty:?}");
    assert_eq!(end.exit_code, Some(0));
}

#[tokio::test]
async fn pty_eof_ends_cat() {
    let boxd = Boxd::start().await;
    let mut events = boxd.start_process(json!({"cmd": "cat", "pty": {"rows": 10, "cols": 40}})).await;
    let pid = events.started().await;
    let input = format!("/process/{pid}/input");
    boxd.json("POST", &input, json!({"data": BASE64.encode("ping\n")})).await;
    // The terminal echoes the line, then cat writes it back.
    events.output_until("ping\r\nping\r\n").await;
    let (status, _) = boxd.json("POST", &input, json!({"eof": true})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events.finish().await.3.exit_code, Some(0));
}
