//! Running processes: one-shot runs, streams with stdin, signals, timeouts, bad requests.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper::StatusCode;
use serde_json::{Value, json};

use crate::common::{Boxd, alive, eventually};

async fn run(boxd: &Boxd, body: Value) -> Value {
    let (status, result) = boxd.json("POST", "/process/run", body).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    result
}

#[tokio::test]
async fn health_names_boxd() {
    let boxd = Boxd::start().await;
    let (status, health) = boxd.json("GET", "/health", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health, json!({"ok": true, "pid": boxd.pid(), "version": env!("CARGO_PKG_VERSION")}));
}

#[tokio::test]
async fn run_collects_output_and_exit_codes() {
    let boxd = Boxd::start().await;
    let r = run(&boxd, json!({"cmd": "echo", "args": ["hi", "there"]})).await;
    assert_eq!(r["stdout"], "hi there\n");
    assert_eq!(
        (r["exit_code"].clone(), r["signal"].clone(), r["timed_out"].clone()),
        (json!(0), json!(null), json!(false))
    );
    assert_eq!((r["stdout_truncated"].clone(), r["stderr_truncated"].clone()), (json!(false), json!(false)));

    let r = run(&boxd, json!({"cmd": "sh", "args": ["-c", "echo oops >&2; exit 3"]})).await;
    assert_eq!(
        (r["exit_code"].clone(), r["stdout"].clone(), r["stderr"].clone()),
        (json!(3), json!(""), json!("oops\n"))
    );

    let r = run(&boxd, json!({"cmd": "false"})).await;
    assert_eq!(r["exit_code"], 1);
}

#[tokio::test]
async fn run_truncates_each_stream_at_max_output_bytes() {
    let boxd = Boxd::start().await;
    let r = run(
        &boxd,
        json!({"cmd": "head -c 300000 /dev/zero | tr '\\0' a; echo short >&2", "shell": true, "max_output_bytes": 1000}),
    )
    .await;
    assert_eq!(r["stdout"].as_str().unwrap(), "a".repeat(1000));
    assert_eq!(r["stdout_truncated"], true);
    assert_eq!((r["stderr"].clone(), r["stderr_truncated"].clone()), (json!("short\n"), json!(false)));
    // The writer was never blocked: it ran to completion.
    assert_eq!(r["exit_code"], 0);
}

#[tokio::test]
async fn shell_mode_runs_sh_and_ignores_args() {
    let boxd = Boxd::start().await;
    let r = run(&boxd, json!({"cmd": "echo $((6 * 7)) | tr 4 x", "shell": true, "args": ["ignored"]})).await;
    assert_eq!(r["stdout"], "x2\n");
}

#[tokio::test]
async fn children_get_a_clean_env_and_the_requested_cwd() {
    let boxd = Boxd::start().await;
    let cwd = boxd.path("work");
    std::fs::create_dir(&cwd).unwrap();
    let r = run(
        &boxd,
        json!({
            "cmd": "echo \"$FOO|$HOME|$USER|$LANG|$PATH|${BOXD_TEST_LEAK:-clean}\"; pwd",
            "shell": true,
            "envs": {"FOO": "bar baz"},
            "cwd": cwd.to_str().unwrap(),
        }),
    )
    .await;
    let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    assert_eq!(r["stdout"], format!("bar baz|/root|root|C.UTF-8|{path}|clean\n{}\n", cwd.display()));

    let (status, err) =
        boxd.json("POST", "/process/run", json!({"cmd": "true", "cwd": "/no/such/dir"})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let boxd = Boxd::start().await;
    let r =
        run(&boxd, json!({"cmd": "sleep 30 & echo $!; sleep 30", "shell": true, "timeout_ms": 300})).await;
    assert_eq!(r["timed_out"], true);
    assert_eq!((r["exit_code"].clone(), r["signal"].clone()), (json!(null), json!(9)));
    let duration = r["duration_ms"].as_u64().unwrap();
    assert!((300..5000).contains(&duration), "{duration} ms");
    let background: u32 = r["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(eventually(Duration::from_secs(2), || !alive(background)).await, "background sleep survived");
}

#[tokio::test]
async fn streamed_process_reads_stdin_until_eof() {
    let boxd = Boxd::start().await;
    let mut events = boxd.start_process(json!({"cmd": "cat", "stdin": true, "tag": "echoer"})).await;
    let pid = events.started().await;

    let (status, list) = boxd.json("GET", "/process", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list["processes"],
        json!([{"pid": pid, "cmd": "cat", "args": [], "tag": "echoer", "pty": false}])
    );

    let input = format!("/process/{pid}/input");
    let (status, ack) = boxd.json("POST", &input, json!({"data": BASE64.encode("hello\n")})).await;
    assert_eq!((status, ack), (StatusCode::OK, json!({"ok": true})));
    assert_eq!(events.output_until("hello\n").await, "hello\n");
    let (status, _) = boxd.json("POST", &input, json!({"data": BASE64.encode("bye"), "eof": true})).await;
    assert_eq!(status, StatusCode::OK);
    let (stdout, stderr, _, end) = events.finish().await;
    assert_eq!((stdout.as_str(), stderr.as_str()), ("bye", ""));
    assert_eq!((end.exit_code, end.signal, end.timed_out), (Some(0), None, false));

    let (status, err) = boxd.json("POST", &input, json!({"data": "eA=="})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("no_such_process")));
    let (_, list) = boxd.json("GET", "/process", Value::Null).await;
    assert_eq!(list["processes"], json!([]));
}

#[tokio::test]
async fn stream_keeps_stdout_and_stderr_apart() {
    let boxd = Boxd::start().await;
    let mut events =
        boxd.start_process(json!({"cmd": "echo out; echo err >&2; exit 4", "shell": true})).await;
    events.started().await;
    let (stdout, stderr, pty, end) = events.finish().await;
    assert_eq!((stdout.as_str(), stderr.as_str(), pty.as_str()), ("out\n", "err\n", ""));
    assert_eq!(end.exit_code, Some(4));
}

#[tokio::test]
async fn signal_reaches_a_sleeping_process() {
    let boxd = Boxd::start().await;
    let mut events = boxd.start_process(json!({"cmd": "sleep", "args": ["30"]})).await;
    let pid = events.started().await;
    let (status, ack) =
        boxd.json("POST", &format!("/process/{pid}/signal"), json!({"signal": "SIGTERM"})).await;
    assert_eq!((status, ack), (StatusCode::OK, json!({"ok": true})));
    let (_, _, _, end) = events.finish().await;
    assert_eq!((end.exit_code, end.signal, end.timed_out), (None, Some(15), false));

    let (status, err) = boxd.json("POST", "/process/999999/signal", json!({"signal": "SIGKILL"})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("no_such_process")));
    let (status, err) =
        boxd.json("POST", &format!("/process/{pid}/signal"), json!({"signal": "SIGNOPE"})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
}

#[tokio::test]
async fn dropped_stream_leaves_the_process_running() {
    let boxd = Boxd::start().await;
    let marker = boxd.path("done");
    let mut events = boxd
        .start_process(
            json!({"cmd": format!("sleep 0.3; echo lots; touch {}", marker.display()), "shell": true}),
        )
        .await;
    events.started().await;
    drop(events);
    assert!(eventually(Duration::from_secs(5), || marker.exists()).await, "the process did not finish");
}

#[tokio::test]
async fn bad_requests_get_4xx_codes() {
    let boxd = Boxd::start().await;
    let code = |v: &Value| v["error"]["code"].as_str().unwrap().to_owned();

    let (status, body) = boxd.call("POST", "/process/run", "{not json").await;
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "bad_request".to_owned()));

    let (status, err) = boxd.json("POST", "/process/start", json!({"args": []})).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "bad_request".to_owned()));

    let (status, err) = boxd.json("POST", "/process/run", json!({"cmd": "true", "user": "nobody"})).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "unsupported_user".to_owned()));
    let r = run(&boxd, json!({"cmd": "true", "user": "root"})).await;
    assert_eq!(r["exit_code"], 0);

    let (status, err) = boxd.json("POST", "/process/run", json!({"cmd": "no-such-command-here"})).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "spawn_failed".to_owned()));
    let (status, err) = boxd.json("POST", "/process/start", json!({"cmd": "no-such-command-here"})).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "spawn_failed".to_owned()));

    let (status, err) = boxd.json("POST", "/process/abc/signal", json!({"signal": "SIGTERM"})).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "bad_request".to_owned()));
    let (status, err) = boxd.json("POST", "/process/1/input", json!({})).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "bad_request".to_owned()));
    let (status, err) = boxd.json("GET", "/nowhere", Value::Null).await;
    assert_eq!((status, code(&err)), (StatusCode::NOT_FOUND, "not_found".to_owned()));
}

#[tokio::test]
async fn input_to_a_process_without_stdin_is_refused() {
    let boxd = Boxd::start().await;
    let mut events = boxd.start_process(json!({"cmd": "sleep", "args": ["30"]})).await;
    let pid = events.started().await;
    let (status, err) = boxd.json("POST", &format!("/process/{pid}/input"), json!({"data": "eA=="})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    let (status, err) =
        boxd.json("POST", &format!("/process/{pid}/resize"), json!({"rows": 5, "cols": 5})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    boxd.json("POST", &format!("/process/{pid}/signal"), json!({"signal": "SIGKILL"})).await;
    assert_eq!(events.finish().await.3.signal, Some(9));
}
