//! Boxes end to end with the real binary, bubblewrap and cgroups: the native API, H3RETIK
//! sessions (paid with the official Python client), expiry, and the restart with live boxes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod boxhost;
mod shop;
mod support;

use std::time::{Duration, Instant};

use boxhost::BoxHost;
use serde_json::{Value, json};
use shop::Shop;
use vendbox_box::{Backend as _, BoxId};
use vendbox_pay::client::Challenge;
use vendbox_pay::wire;

#[tokio::test]
async fn a_box_runs_commands_moves_files_streams_and_ends_on_request() {
    let Some(host) = BoxHost::start() else { return };
    let b = host.buy("test-box", 10).await;

    // Root in the box, in its own hostname, with a writable home.
    let out = host.ok(&b, "id -u; hostname; echo hi > /root/note; cat /root/note; pwd").await;
    assert_eq!(out, "0\nbox\nhi\n/root\n");
    // argv without a shell, environment and working directory.
    let body = json!({ "argv": ["sh", "-c", "echo $GREETING from $(pwd)"], "env": { "GREETING": "hello" }, "cwd": "/tmp" });
    let (status, out) = host.post(&format!("/v1/boxes/{}/exec", b.id), Some(&b.token), &body).await;
    assert_eq!((status, out["stdout"].as_str()), (200, Some("hello from /tmp\n")), "{out}");
    // Exit codes and stderr come back as they are.
    let (_, out) = host.sh(&b, "echo oops >&2; exit 3", 10).await;
    assert_eq!((out["exit_code"].as_i64(), out["stderr"].as_str()), (Some(3), Some("oops\n")), "{out}");
    // A command past its time limit is killed with its children.
    let started = Instant::now();
    let (_, out) = host.sh(&b, "sleep 30 & sleep 30", 1).await;
    assert_eq!(out["timed_out"], true, "{out}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(host.ok(&b, "pgrep -c sleep || true").await.trim(), "0");
    // Output above the cap is cut and says so.
    let (_, out) = host.sh(&b, "head -c 3000000 /dev/zero | tr '\\0' x", 30).await;
    assert_eq!(out["stdout_truncated"], true);
    assert_eq!(out["stdout"].as_str().unwrap().len(), 1024 * 1024);

    // Files in and out, byte for byte.
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let url = host.url(&format!("/v1/boxes/{}/files?path=/root/data/blob.bin", b.id));
    let put = host.http.put(&url).bearer_auth(&b.token).body(bytes.clone()).send().await.unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(host.ok(&b, "stat -c %s /root/data/blob.bin").await.trim(), "3000000");
    let got = host.http.get(&url).bearer_auth(&b.token).send().await.unwrap().bytes().await.unwrap();
    assert!(got == bytes, "the file came back changed");
    let missing = host.url(&format!("/v1/boxes/{}/files?path=/root/nothing", b.id));
    let response = host.http.get(&missing).bearer_auth(&b.token).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "file_not_found");

    // Streaming: Server-Sent Events in order, ending with the exit.
    let stream = host
        .http
        .post(host.url(&format!("/v1/boxes/{}/exec/stream", b.id)))
        .bearer_auth(&b.token)
        .json(&json!({ "command": "for i in 1 2 3; do echo line $i; sleep 0.1; done; exit 4" }))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let text = stream.text().await.unwrap();
    let events: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(events.first(), Some(&"start"), "{text}");
    assert_eq!(events.last(), Some(&"exit"), "{text}");
    assert!(text.contains("\"exit_code\":4"), "{text}");
    let output: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: {\"data\":\""))
        .map(|d| {
            use base64::Engine as _;
            String::from_utf8(
                base64::engine::general_purpose::STANDARD.decode(d.trim_end_matches("\"}")).unwrap(),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(output, "line 1\nline 2\nline 3\n");

    // Tokens: none, wrong, right.
    let (status, body) =
        host.post(&format!("/v1/boxes/{}/exec", b.id), None, &json!({ "command": "true" })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("missing_token")));
    let (status, body) = host
        .post(&format!("/v1/boxes/{}/exec", b.id), Some("vbx_wrong"), &json!({ "command": "true" }))
        .await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("bad_token")));
    let (status, view) = host.get(&format!("/v1/boxes/{}", b.id), &b.token).await;
    assert_eq!((status, view["state"].as_str()), (200, Some("active")));
    assert!(view.get("token").is_none(), "the token is shown once: {view}");

    // Ending it: the box is gone from the host, and commands say why they are refused.
    let (status, ended) = host.end(&b).await;
    assert_eq!((status, ended["state"].as_str()), (200, Some("terminated")), "{ended}");
    host.assert_gone_within(&b.id, Duration::from_secs(5));
    let (status, body) = host.sh(&b, "true", 5).await;
    assert_eq!((status, body["error"]["code"].as_str()), (410, Some("box_terminated")));
}

#[tokio::test]
async fn h3retik_sessions_take_the_seeds_requests_and_count_actions() {
    let Some(host) = BoxHost::start() else { return };
    let bad = [
        ("/x402/sessions/micro", json!({ "location": "mars" }), "invalid_location", "location"),
        ("/x402/sessions/micro", json!({ "region": "us" }), "unknown_field", "region"),
        ("/x402/sessions", json!({ "minutes": 0, "actions": 5 }), "out_of_range", "minutes"),
        ("/x402/sessions", json!({ "minutes": 361, "actions": 5 }), "out_of_range", "minutes"),
        ("/x402/sessions", json!({ "minutes": 20, "actions": 301 }), "out_of_range", "actions"),
        ("/x402/sessions", json!({ "minutes": 20 }), "missing_field", "actions"),
        (
            "/x402/sessions",
            json!({ "minutes": 20, "actions": 2, "location": "auto", "x": 1 }),
            "unknown_field",
            "x",
        ),
    ];
    for (path, body, code, field) in bad {
        let (status, answer) = host.post(path, None, &body).await;
        let error = &answer["error"];
        assert_eq!(
            (status, error["code"].as_str(), error["field"].as_str()),
            (400, Some(code), Some(field)),
            "{path} {body}: {answer}"
        );
    }
    // A custom session: the seed's fields plus the token, and three actions to spend.
    let (status, session) = host
        .post("/x402/sessions", None, &json!({ "minutes": 20, "actions": 3, "location": "europe" }))
        .await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["ok"], true);
    assert_eq!(session["location"], "europe");
    assert_eq!(session["actions_remaining"], 3);
    assert!(session["expires_at"].as_str().unwrap().ends_with('Z'));
    let id = session["session_id"].as_str().unwrap();
    let token = session["session_token"].as_str().unwrap();
    let exec = format!("/x402/sessions/{id}/exec");
    for left in [2, 1, 0] {
        let (status, out) = host.post(&exec, Some(token), &json!({ "command": "echo $((6*7))" })).await;
        assert_eq!(status, 200, "{out}");
        assert_eq!((out["stdout"].as_str(), out["actions_remaining"].as_u64()), (Some("42\n"), Some(left)));
    }
    let (status, out) = host.post(&exec, Some(token), &json!({ "command": "echo again" })).await;
    assert_eq!((status, out["error"]["code"].as_str()), (409, Some("actions_exhausted")), "{out}");
    // With its last action spent the session's box is gone.
    host.assert_gone_within(id, Duration::from_secs(5));
    let (_, read) = host.get(&format!("/x402/sessions/{id}"), token).await;
    assert_eq!(read["status"], "expired", "{read}");
}

#[tokio::test]
async fn a_box_past_its_minutes_is_gone_within_seconds() {
    let Some(host) = BoxHost::start() else { return };
    let b = host.buy("test-box", 1).await;
    host.ok(&b, "sleep 600 >/dev/null 2>&1 & echo started").await;
    let (_, view) = host.get(&format!("/v1/boxes/{}", b.id), &b.token).await;
    let expires: chrono::DateTime<chrono::Utc> = view["expires_at"].as_str().unwrap().parse().unwrap();
    // Sleeping to the expiry is the test (a time it knows); what follows waits on the effect.
    let wait = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    host.assert_gone_within(&b.id, Duration::from_secs(5));
    let (status, body) = host.sh(&b, "true", 5).await;
    assert_eq!((status, body["error"]["code"].as_str()), (410, Some("box_expired")));
}

#[tokio::test]
async fn a_restart_keeps_paid_boxes_destroys_orphans_and_fails_lost_ones() {
    let Some(mut host) = BoxHost::start() else { return };
    let mut boxes = Vec::new();
    for i in 0..10 {
        let b = host.buy("test-box", 30).await;
        host.ok(&b, &format!("echo {i} > /root/mark")).await;
        boxes.push(b);
    }
    host.crash();
    // While vendbox is down: one box dies, and a box no lease knows appears.
    let backend = host.backend();
    let lost = BoxId::new(&boxes[9].id).unwrap();
    for pid in backend.pids(&lost) {
        std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    }
    let orphan = BoxId::new("orphan-1").unwrap();
    let spec = vendbox_box::BoxSpec {
        id: orphan.clone(),
        image: "host".into(),
        limits: vendbox_box::Limits { vcpu: 1, memory_mb: 128, disk_mb: 64, pids: 64 },
        egress: false,
        pod: None,
    };
    backend.create(&spec).await.unwrap();
    assert!(!backend.pids(&orphan).is_empty());

    host.restart();
    for (i, b) in boxes.iter().enumerate().take(9) {
        assert_eq!(host.ok(b, "cat /root/mark").await, format!("{i}\n"), "box {i} kept its files");
    }
    // Reconciliation runs while vendbox serves; the lost box's lease fails soon.
    let lost_box = format!("/v1/boxes/{}", boxes[9].id);
    let view = support::eventually(Duration::from_secs(20), "the lost box's lease to fail", async || {
        let (status, view) = host.get(&lost_box, &boxes[9].token).await;
        assert_eq!(status, 200, "{view}");
        if view["state"] == "failed" { Ok(view) } else { Err(view) }
    })
    .await;
    assert!(view["failure_reason"].as_str().unwrap().contains("lost"), "{view}");
    host.assert_gone_within("orphan-1", Duration::from_secs(5));
    host.assert_gone_within(&boxes[9].id, Duration::from_secs(5));

    // Nothing leaks when they end.
    for b in &boxes[..9] {
        assert_eq!(host.end(b).await.0, 200);
        host.assert_gone_within(&b.id, Duration::from_secs(5));
    }
    assert!(backend.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_official_python_client_pays_for_a_micro_session_that_runs_three_commands() {
    if !boxhost::boxes_supported() || !shop::python_client_installed() {
        return;
    }
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let payer = shop.payer().await;
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let paid = shop.run_client_on(
        "python3",
        "pay_x402.py",
        &payer,
        "/x402/sessions/micro",
        &["--method", "POST", "--json", r#"{"location":"auto"}"#],
    );
    assert_eq!(paid["status"], 200, "{paid}");
    assert_eq!(paid["payment_response"]["success"], true, "{paid}");
    let session = &paid["body"];
    assert_eq!(session["actions_remaining"], 3, "{session}");
    let micro = 190_000;
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS - micro);
    assert_eq!(shop.balance(shop.pay_to).await, micro);

    let id = session["session_id"].as_str().unwrap();
    let token = session["session_token"].as_str().unwrap();
    let http = reqwest::Client::new();
    let exec = shop.url(&format!("/x402/sessions/{id}/exec"));
    let run = |command: &'static str| {
        let request = http.post(&exec).bearer_auth(token).json(&json!({ "command": command }));
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    for command in ["uname -s", "id -u", "echo done"] {
        let (status, out) = run(command).await;
        assert_eq!((status, out["exit_code"].as_i64()), (200, Some(0)), "{command}: {out}");
    }
    let (status, out) = run("echo fourth").await;
    assert_eq!((status, out["error"]["code"].as_str()), (409, Some("actions_exhausted")), "{out}");
}

#[tokio::test]
async fn a_box_that_cannot_be_made_charges_nothing() {
    if !boxhost::boxes_supported() || !shop::python_client_installed() {
        return;
    }
    // A box whose PID 1 cannot start: the lease fails with its reason and the payment is voided.
    let Some(shop) = Shop::open(31337, &[("VENDBOX_BOXES__BOXD_COMMAND", "[\"/bin/false\"]")]).await else {
        return;
    };
    let payer = shop.payer().await;
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let args = ["--method", "POST"];
    let paid = shop.client_answer("python3", "pay_x402.py", &payer, "/x402/sessions/micro", &args, false);
    assert_eq!(paid["status"], 503, "{paid}");
    assert_eq!(paid["body"]["error"]["code"], "box_unavailable", "{paid}");
    assert!(paid["payment_response"].is_null(), "{paid}");
    assert_eq!(shop.balance(payer.address()).await, shop::FUNDS);
    assert!(boxhost::backend_for(&shop.dir.path().join("state")).list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_box_whose_payment_does_not_settle_is_destroyed() {
    if !boxhost::boxes_supported() {
        return;
    }
    let Some(shop) = Shop::open(31337, &[("VENDBOX_FAULTS", "pause-before-settle=3")]).await else { return };
    let payer = shop.payer().await;
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let url = shop.url("/x402/sessions/micro");
    let unpaid = reqwest::Client::new().post(&url).json(&json!({})).send().await.unwrap();
    assert_eq!(unpaid.status(), 402);
    let header = unpaid.headers().get(wire::PAYMENT_REQUIRED).unwrap().to_str().unwrap().to_owned();
    let challenge = Challenge::read(Some(&header), &unpaid.bytes().await.unwrap()).unwrap();
    let (name, value) = challenge.pay(&payer, shop::now()).unwrap();
    let pending =
        tokio::spawn(reqwest::Client::new().post(&url).header(name, value.clone()).json(&json!({})).send());
    // The box is made and answers; while vendbox waits to settle, the authorization is spent
    // elsewhere, so the settlement fails.
    let state = shop.dir.path().join("state");
    let backend = boxhost::backend_for(&state);
    support::eventually(Duration::from_secs(10), "the paid box to be made", async || {
        let made = backend.list().await.unwrap();
        if made.is_empty() { Err("no box") } else { Ok(made) }
    })
    .await;
    shop.spend_elsewhere(&challenge, &value).await;
    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), 402);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_exact_evm_nonce_already_used", "{body}");
    let id = backend.list().await.unwrap();
    assert!(id.is_empty(), "the unpaid box is destroyed before the answer: {id:?}");
}

/// Warm slots (a box's start made ahead) are no boxes and outlive no vendbox: those of a vendbox
/// killed with SIGKILL are removed by the next one when it starts its own, their uids given
/// back, while the boxes themselves stay; a vendbox stopped with SIGTERM leaves none.
#[tokio::test]
async fn warm_slots_do_not_outlive_the_vendbox_that_made_them() {
    let Some(mut host) = BoxHost::start() else { return };
    let looker = host.backend().with_warm(0);
    let first = host.buy("test-box", 30).await;
    support::eventually(Duration::from_secs(30), "a warm slot", async || {
        let names = looker.warm_leftovers();
        if names.is_empty() { Err("none".to_owned()) } else { Ok(names) }
    })
    .await;

    host.crash();
    // A crash leaves its slots until the next vendbox.
    let old = looker.warm_leftovers();
    assert!(!old.is_empty());
    host.restart();
    // The next vendbox's first purchase starts its pool, which removes the dead one's slots.
    let second = host.buy("test-box", 30).await;
    let new = support::eventually(Duration::from_secs(30), "the dead vendbox's slots to go", async || {
        let names = looker.warm_leftovers();
        if names.iter().any(|n| old.contains(n)) || names.is_empty() {
            Err(format!("{names:?}"))
        } else {
            Ok(names)
        }
    })
    .await;
    let claims: Vec<String> = std::fs::read_dir("/run/vendbox/uids")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    for name in &old {
        assert!(!claims.iter().any(|c| c.ends_with(&format!("/{name}"))), "{name}'s uid is still claimed");
    }
    for b in [&first, &second] {
        assert_eq!(host.ok(b, "echo up").await, "up\n");
    }

    // SIGTERM: vendbox stops, and takes its slots with it.
    let vendbox = host.vendbox.as_mut().unwrap();
    vendbox.signal("-TERM");
    let _ = vendbox.wait(Duration::from_secs(30));
    let left = looker.warm_leftovers();
    assert!(left.iter().all(|n| !new.contains(n)), "slots {left:?} outlived vendbox");
    host.vendbox = None;
}

#[tokio::test]
async fn a_cgroup_left_in_one_hierarchy_only_is_found_and_removed() {
    // A vendbox killed while it made or renamed a cgroup, one hierarchy after another, leaves
    // that cgroup in some hierarchies only. Whichever one holds it, removing everything of the
    // data directory must find it (and then its parent can go).
    let Some(mut host) = BoxHost::start() else { return };
    let b = host.buy("test-box", 30).await;
    host.crash();
    let parents: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|h| std::fs::read_dir(h.path().join("vendbox")).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|instance| instance.path())
        .filter(|instance| instance.join(&b.id).is_dir())
        .collect();
    assert!(parents.len() > 1, "the box's cgroups are in several hierarchies: {parents:?}");
    for parent in &parents {
        std::fs::create_dir_all(parent.join("_warm1-0")).unwrap();
        boxhost::remove_all(&host.data_dir());
        for parent in &parents {
            assert!(!parent.exists(), "{} is left", parent.display());
        }
    }
}
