//! Attacks on the host through a box and on vendbox through its API, one test per attack: a
//! redirected boxd socket (to a neighbour and to a host socket), device, FIFO and oversized
//! file downloads, commands past five seconds on every HTTP exec path, a Storefront read token
//! on every mutating route, unauthenticated uploads, and the system calls the seccomp filter
//! refuses. Each test fails on a vendbox without the defence it names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod boxhost;
mod support;

use std::time::{Duration, Instant};

use boxhost::{Bought, BoxHost};
use serde_json::{Value, json};
use vendbox_box::Backend as _;

/// A host with an attacker's box and a neighbour's, each with a file of its own.
struct Scene {
    host: BoxHost,
    attacker: Bought,
    neighbour: Bought,
}

async fn scene() -> Option<Scene> {
    let host = BoxHost::start()?;
    let attacker = host.buy("test-box", 10).await;
    let neighbour = host.buy("test-box", 10).await;
    host.ok(&attacker, "echo attacker > /root/mine").await;
    host.ok(&neighbour, "echo neighbour > /root/mine").await;
    Some(Scene { host, attacker, neighbour })
}

impl Scene {
    /// The attacker's own file, read through the attacker's own token: must be the attacker's.
    async fn assert_calls_reach_the_attackers_own_box(&self) {
        assert_eq!(self.host.ok(&self.attacker, "cat /root/mine").await, "attacker\n");
        let (status, bytes) = self.download(&self.attacker, "/root/mine").await;
        assert_eq!((status, bytes.as_slice()), (200, b"attacker\n".as_slice()));
        assert_eq!(self.host.ok(&self.neighbour, "cat /root/mine").await, "neighbour\n");
    }

    async fn download(&self, b: &Bought, path: &str) -> (u16, Vec<u8>) {
        let url = self.host.url(&format!("/v1/boxes/{}/files?path={path}", b.id));
        let response = self.host.http.get(url).bearer_auth(&b.token).send().await.unwrap();
        (response.status().as_u16(), response.bytes().await.unwrap().to_vec())
    }
}

/// vendbox's peak resident memory so far, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// The symlinks a box can plant to redirect a host that follows paths in its layer: boxd's old
/// socket path, and links named like the socket in every directory the box can write.
fn plant(target: &str) -> String {
    format!(
        "mkdir -p /run/boxd && rm -rf /run/boxd/boxd.sock && ln -s {target} /run/boxd/boxd.sock; \
         for d in /root /tmp /var/tmp /home; do ln -sf {target} $d/boxd.sock; mkdir -p $d/run; \
         ln -sf {target} $d/run/boxd.sock; done; echo planted"
    )
}

#[tokio::test]
async fn a_symlinked_socket_does_not_send_the_owners_calls_into_a_neighbour() {
    let Some(s) = scene().await else { return };
    // As the layer put them before the fix: `<layer>/run` was the box's /run/boxd, and the
    // neighbour's socket was two directories up.
    let relative = format!("../../{}/run/boxd.sock", s.neighbour.id);
    assert_eq!(s.host.ok(&s.attacker, &plant(&relative)).await, "planted\n");
    s.assert_calls_reach_the_attackers_own_box().await;
    let absolute = s
        .host
        .backend()
        .boxd(&vendbox_box::BoxId::new(&s.neighbour.id).unwrap())
        .socket()
        .unwrap()
        .to_owned();
    assert_eq!(s.host.ok(&s.attacker, &plant(&absolute.to_string_lossy())).await, "planted\n");
    s.assert_calls_reach_the_attackers_own_box().await;
}

#[tokio::test]
async fn a_symlink_to_a_host_socket_is_never_connected_to() {
    let Some(s) = scene().await else { return };
    // A host service's socket (as PostgreSQL's or Docker's would be), in a directory of its own.
    let dir = tempfile::tempdir_in("/run").unwrap();
    let path = dir.path().join("service.sock");
    let service = tokio::net::UnixListener::bind(&path).unwrap();
    let depth = "../".repeat(8);
    let relative = format!("{depth}{}", path.to_string_lossy().trim_start_matches('/'));
    assert_eq!(s.host.ok(&s.attacker, &plant(&relative)).await, "planted\n");
    s.assert_calls_reach_the_attackers_own_box().await;
    assert_eq!(s.host.ok(&s.attacker, &plant(&path.to_string_lossy())).await, "planted\n");
    s.assert_calls_reach_the_attackers_own_box().await;
    // Every call above is done; any connection vendbox made would be queued by now.
    let accepted = tokio::time::timeout(Duration::from_millis(200), service.accept()).await;
    assert!(accepted.is_err(), "vendbox connected to a host socket the box pointed at");
}

#[tokio::test]
async fn devices_and_fifos_are_refused_and_do_not_hang() {
    let Some(s) = scene().await else { return };
    s.host.ok(&s.attacker, "mkfifo /root/pipe").await;
    for path in ["/dev/zero", "/dev/urandom", "/root/pipe"] {
        let started = Instant::now();
        let url = s.host.url(&format!("/v1/boxes/{}/files?path={path}", s.attacker.id));
        let response = s.host.http.get(url).bearer_auth(&s.attacker.token).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_a_file", "{path}: {body}");
        assert!(started.elapsed() < Duration::from_secs(5), "{path} took {:?}", started.elapsed());
    }
    s.assert_calls_reach_the_attackers_own_box().await;
}

#[tokio::test]
async fn a_file_at_the_download_cap_streams_and_one_byte_more_is_refused() {
    let Some(s) = scene().await else { return };
    let cap = 1_u64 << 30;
    let pid = s.host.vendbox.as_ref().unwrap().child.id();
    let before = peak_rss(pid);
    s.host
        .ok(&s.attacker, &format!("truncate -s {cap} /root/at-cap; truncate -s {} /root/over", cap + 1))
        .await;

    let url = s.host.url(&format!("/v1/boxes/{}/files?path=/root/over", s.attacker.id));
    let response = s.host.http.get(url).bearer_auth(&s.attacker.token).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "file_too_large", "{body}");

    let url = s.host.url(&format!("/v1/boxes/{}/files?path=/root/at-cap", s.attacker.id));
    let mut response = s.host.http.get(url).bearer_auth(&s.attacker.token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(cap));
    let mut received = 0_u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        assert!(chunk.iter().all(|b| *b == 0));
        received += chunk.len() as u64;
    }
    assert_eq!(received, cap);
    // A gibibyte went through vendbox without being held.
    let grew = peak_rss(pid).saturating_sub(before);
    assert!(grew < 128 << 20, "vendbox's peak memory grew by {} MiB", grew >> 20);
}

#[tokio::test]
async fn a_command_runs_past_five_seconds_on_every_http_exec_path() {
    let Some(s) = scene().await else { return };
    let line = "sleep 7; echo done > /root/out; echo done";
    // Native exec.
    let (status, out) = s.host.sh(&s.attacker, line, 20).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["stdout"], "done\n", "{out}");
    assert!(out["duration_ms"].as_u64().unwrap() >= 7000, "{out}");

    // The event stream.
    let url = s.host.url(&format!("/v1/boxes/{}/exec/stream", s.attacker.id));
    let response = s
        .host
        .http
        .post(url)
        .bearer_auth(&s.attacker.token)
        .json(&json!({ "command": line, "timeout_seconds": 20 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("event: exit"), "{text}");
    assert!(text.contains("\"exit_code\":0"), "{text}");
    assert!(!text.contains("event: error"), "{text}");

    // An H3RETIK session, whose actions are counted: the long command spends exactly one.
    let (status, session) = s.host.post("/x402/sessions/micro", None, &json!({})).await;
    assert_eq!(status, 200, "{session}");
    let token = session["session_token"].as_str().unwrap();
    let before = session["actions_remaining"].as_u64().unwrap();
    let exec_url = session["exec_url"].as_str().unwrap();
    let (status, out) =
        s.host.post(exec_url, Some(token), &json!({ "command": line, "timeout_seconds": 20 })).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["stdout"], "done\n", "{out}");
    assert_eq!(out["actions_remaining"].as_u64().unwrap(), before - 1, "{out}");
}

#[tokio::test]
async fn a_command_past_its_own_limit_is_cut_and_its_action_stays_spent() {
    let Some(s) = scene().await else { return };
    let (status, session) = s.host.post("/x402/sessions/micro", None, &json!({})).await;
    assert_eq!(status, 200, "{session}");
    let token = session["session_token"].as_str().unwrap();
    let before = session["actions_remaining"].as_u64().unwrap();
    let exec_url = session["exec_url"].as_str().unwrap();
    // Just under its limit, the command finishes; just over, boxd cuts it.
    let (status, out) = s
        .host
        .post(exec_url, Some(token), &json!({ "command": "sleep 1.5; echo ok", "timeout_seconds": 2 }))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!((out["timed_out"].as_bool(), out["stdout"].as_str()), (Some(false), Some("ok\n")), "{out}");
    let (status, out) = s
        .host
        .post(exec_url, Some(token), &json!({ "command": "sleep 3; echo late", "timeout_seconds": 2 }))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!((out["timed_out"].as_bool(), out["stdout"].as_str()), (Some(true), Some("")), "{out}");
    assert_eq!(out["actions_remaining"].as_u64().unwrap(), before - 2, "{out}");
}

/// Storefront machines sold for free, with small resources, for the token matrix.
const FREE_STOREFRONT: &str = r#"
[[offers]]
id = "bare-linux-machine"
resources = { vcpu = 1, memory_mb = 256, disk_gb = 1 }
price = { base = "0", per_minute = "0" }
"#;

#[tokio::test]
async fn a_storefront_read_token_reads_and_nothing_more_on_every_route() {
    let Some(host) = BoxHost::start_with_catalog(FREE_STOREFRONT) else { return };
    let ssh_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";
    let order = json!({
        "request_id": "0a1b2c3d-0000-4000-8000-000000000001",
        "product_id": "bare-linux-machine",
        "duration_minutes": 15,
        "ssh_public_key": ssh_key,
    });
    let (status, machine) = host.post("/api/machines", None, &order).await;
    assert_eq!(status, 202, "{machine}");
    // The machine's SSH command logs in as its lease, which the native routes name.
    let command = machine["ssh_command"].as_str().unwrap();
    let lease = command.rsplit(' ').next().unwrap().split('@').next().unwrap().to_owned();
    assert!(
        machine["machine_id"].as_str().unwrap()["machine_".len()..].starts_with(&lease[..8]),
        "{machine}"
    );
    let token = |name: &str| machine["management"][name].as_str().unwrap().to_owned();
    let (read, extend, terminate) = (token("read_token"), token("extend_token"), token("terminate_token"));

    // Reading the box's state is allowed to the read token.
    let (status, view) = host.get(&format!("/v1/boxes/{lease}"), &read).await;
    assert_eq!(status, 200, "{view}");

    let exec = json!({ "command": "echo pwned > /root/pwned", "timeout_seconds": 5 });
    for token in [&read, &extend, &terminate] {
        let refused = |status: u16, body: &Value, what: &str| {
            assert_eq!(status, 401, "{what}: {body}");
            assert_eq!(body["error"]["code"], "bad_token", "{what}: {body}");
        };
        let (status, body) = host.post(&format!("/v1/boxes/{lease}/exec"), Some(token), &exec).await;
        refused(status, &body, "exec");
        let (status, body) = host.post(&format!("/v1/boxes/{lease}/exec/stream"), Some(token), &exec).await;
        refused(status, &body, "exec/stream");
        let (status, body) = host.post(&format!("/x402/sessions/{lease}/exec"), Some(token), &exec).await;
        refused(status, &body, "session exec");
        let files = host.url(&format!("/v1/boxes/{lease}/files?path=/root/x"));
        let response = host.http.put(&files).bearer_auth(token).body("x").send().await.unwrap();
        let status = response.status().as_u16();
        refused(status, &response.json().await.unwrap(), "file write");
        let response = host.http.get(&files).bearer_auth(token).send().await.unwrap();
        let status = response.status().as_u16();
        refused(status, &response.json().await.unwrap(), "file read");
    }
    for token in [&read, &extend] {
        let url = host.url(&format!("/v1/boxes/{lease}"));
        let response = host.http.delete(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), 401, "DELETE");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_token", "{body}");
    }
    // Nothing ran: the box has no such file, and it is still active.
    let backend = host.backend();
    let client = backend.boxd(&vendbox_box::BoxId::new(&lease).unwrap());
    assert!(client.stat("/root/pwned").await.is_err(), "a refused token ran a command");
    // The terminate token ends it through the native route too.
    let url = host.url(&format!("/v1/boxes/{lease}"));
    let response = host.http.delete(url).bearer_auth(&terminate).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn unauthenticated_uploads_are_refused_before_their_bodies_are_read() {
    let Some(s) = scene().await else { return };
    let pid = s.host.vendbox.as_ref().unwrap().child.id();
    let before = peak_rss(pid);
    let body = bytes::Bytes::from(vec![b'x'; 64 << 20]);
    let url = s.host.url(&format!("/v1/boxes/{}/files?path=/root/upload", s.attacker.id));
    let mut refused = 0;
    for round in 0..10 {
        let mut uploads = Vec::new();
        for i in 0..20 {
            let request = s.host.http.put(&url).body(body.clone());
            // Half without a token, half with the neighbour's.
            let request = if i % 2 == 0 { request } else { request.bearer_auth(&s.neighbour.token) };
            uploads.push(tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) }));
        }
        for upload in uploads {
            // A server that answers before reading may reset the connection under the upload.
            match upload.await.unwrap() {
                Ok(status) => {
                    assert_eq!(status, 401, "round {round}");
                    refused += 1;
                }
                Err(e) => assert!(!e.is_timeout(), "round {round}: {e}"),
            }
        }
    }
    assert!(refused > 0, "no upload got an answer");
    let grew = peak_rss(pid).saturating_sub(before);
    assert!(grew < 256 << 20, "vendbox's peak memory grew by {} MiB under 200 uploads", grew >> 20);
    assert_eq!(s.host.ok(&s.attacker, "test -e /root/upload || echo none").await, "none\n");
}

/// Runs a Perl system call in the attacker's box and returns what `$!` said.
async fn syscall_error(s: &Scene, call: &str) -> String {
    let line = format!("perl -e '{call}; print \"$!\"'");
    s.host.ok(&s.attacker, &line).await
}

#[tokio::test]
async fn io_uring_is_refused() {
    let Some(s) = scene().await else { return };
    // io_uring_setup(8, params): the params buffer is 120 bytes.
    let out = syscall_error(&s, "my $p = \"\\0\" x 120; syscall(425, 8, $p)").await;
    assert_eq!(out, "Operation not permitted");
}

#[tokio::test]
async fn packet_sockets_are_refused() {
    let Some(s) = scene().await else { return };
    // socket(AF_PACKET, SOCK_RAW, ETH_P_ALL).
    let out = syscall_error(&s, "syscall(41, 17, 3, 768)").await;
    assert_eq!(out, "Operation not permitted");
    // An ordinary socket still works.
    let out = syscall_error(&s, "$! = 0; syscall(41, 2, 1, 0) >= 0 or die").await;
    assert_eq!(out, "");
}

#[tokio::test]
async fn vsock_sockets_are_refused() {
    let Some(s) = scene().await else { return };
    // socket(AF_VSOCK, SOCK_STREAM, 0).
    let out = syscall_error(&s, "syscall(41, 40, 1, 0)").await;
    assert_eq!(out, "Operation not permitted");
}

#[tokio::test]
async fn a_persona_without_address_randomisation_is_refused() {
    let Some(s) = scene().await else { return };
    // personality(ADDR_NO_RANDOMIZE); `setarch -R` asks the same.
    let out = syscall_error(&s, "syscall(135, 0x0040000)").await;
    assert_eq!(out, "Operation not permitted");
    let out = s.host.ok(&s.attacker, "setarch -R true 2>&1; echo rc=$?").await;
    assert!(out.ends_with("rc=1\n"), "{out}");
    // Asking for the current persona is fine.
    let out = syscall_error(&s, "$! = 0; syscall(135, 0xffffffff)").await;
    assert_eq!(out, "");
}

#[tokio::test]
async fn boxd_cannot_be_traced_or_read() {
    let Some(s) = scene().await else { return };
    // ptrace(PTRACE_ATTACH, 1) and process_vm_readv(1, …).
    let out = syscall_error(&s, "syscall(101, 16, 1, 0, 0)").await;
    assert_eq!(out, "Operation not permitted");
    let out = syscall_error(&s, "my $b = \"\\0\" x 16; syscall(310, 1, 0, 0, 0, 0, 0)").await;
    assert_eq!(out, "Operation not permitted");
    // A process of the box may still trace its own children.
    let out = s
        .host
        .ok(&s.attacker, "perl -e 'my $p = fork; if (!$p) { sleep 5; exit } syscall(101, 16, $p, 0, 0) == 0 and print \"traced\"; kill 9, $p'")
        .await;
    assert_eq!(out, "traced");
}

#[tokio::test]
async fn pidfd_getfd_is_refused() {
    let Some(s) = scene().await else { return };
    // pidfd_getfd(any, 0, 0): refused before the kernel looks at its arguments.
    let out = syscall_error(&s, "syscall(438, 0, 0, 0)").await;
    assert_eq!(out, "Operation not permitted");
}

#[tokio::test]
async fn stalled_boxds_do_not_hold_up_a_restart() {
    let Some(mut host) = BoxHost::start() else { return };
    let healthy = host.buy("test-box", 10).await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(host.buy("test-box", 10).await);
    }
    host.crash();
    // While vendbox is down, three boxes stop answering: their boxd takes connections (the
    // kernel queues them) and never replies.
    let backend = host.backend();
    for b in &stalled {
        for pid in backend.pids(&vendbox_box::BoxId::new(&b.id).unwrap()) {
            std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap();
        }
    }
    let started = Instant::now();
    host.restart();
    assert_eq!(host.ok(&healthy, "echo fine").await, "fine\n");
    let serving = started.elapsed();
    assert!(serving < Duration::from_secs(10), "vendbox served after {serving:?}");
    // Reconciliation, in the background, gives up on the stalled boxes within its bound.
    for b in &stalled {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            let (status, view) = host.get(&format!("/v1/boxes/{}", b.id), &b.token).await;
            assert_eq!(status, 200, "{view}");
            if view["state"] == "failed" {
                break;
            }
            assert!(Instant::now() < deadline, "a stalled box's lease is still {view}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        host.assert_gone_within(&b.id, Duration::from_secs(10));
    }
}

#[tokio::test]
async fn a_recorded_pid_that_now_names_a_host_process_is_not_killed() {
    let Some(mut host) = BoxHost::start() else { return };
    let lost = host.buy("test-box", 10).await;
    host.crash();
    // The box dies while vendbox is down, and its monitor's pid is taken by a host process
    // (here written into the record, as pid reuse after a crash or reboot would have it).
    let backend = host.backend();
    let id = vendbox_box::BoxId::new(&lost.id).unwrap();
    for pid in backend.pids(&id) {
        std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    }
    let mut bystander = std::process::Command::new("sleep").arg("300").spawn().unwrap();
    let record = std::fs::read_dir("/run/vendbox")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join(&lost.id).join("box.json"))
        .find(|p| p.exists())
        .expect("the box's record");
    let mut fields: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    fields["pid"] = json!(bystander.id());
    std::fs::write(&record, serde_json::to_vec(&fields).unwrap()).unwrap();

    host.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !backend.leaves_traces(&id).is_empty() {
        assert!(Instant::now() < deadline, "the lost box was not cleaned up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bystander.try_wait().unwrap().is_none(), "vendbox killed a host process by a stale pid");
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share_of_requests() {
    let env = [("VENDBOX_SERVER__MAX_REQUESTS_PER_PEER", "8")];
    let Some(host) = BoxHost::start_with("", &env) else { return };
    let b = host.buy("test-box", 10).await;
    // Forty slow commands at once from one address: eight run, the rest are told to wait.
    let url = host.url(&format!("/v1/boxes/{}/exec", b.id));
    let mut calls = Vec::new();
    for _ in 0..40 {
        let request = host
            .http
            .post(&url)
            .bearer_auth(&b.token)
            .json(&json!({ "command": "sleep 2", "timeout_seconds": 10 }));
        calls.push(tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile another address is served at once.
    let other =
        reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let started = Instant::now();
    let response = other.get(host.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    let (mut ran, mut refused) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            (200, _) => ran += 1,
            (429, body) => {
                assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
                refused += 1;
            }
            (status, body) => panic!("{status} {body}"),
        }
    }
    assert_eq!((ran, refused), (8, 32));
    // Places are given back: the address is served again.
    assert_eq!(host.ok(&b, "echo again").await, "again\n");
}

#[tokio::test]
async fn a_box_the_host_cannot_hold_is_refused_before_any_payment_is_asked() {
    // Room for two 256 MiB boxes; H3RETIK's micro session is for sale (paid) as well.
    let env = [
        ("VENDBOX_BOXES__MEMORY_MB", "600"),
        ("VENDBOX_PAYMENTS__PAY_TO", "0x2222222222222222222222222222222222222222"),
    ];
    let more =
        "[[offers]]\nid = \"h3retik-micro\"\nprice = { base = \"0.19\" }\nresources = { memory_mb = 256 }\n";
    let Some(host) = BoxHost::start_with(more, &env) else { return };
    // With room, the paid offer asks for payment.
    let (status, body) = host.post("/x402/sessions/micro", None, &json!({})).await;
    assert_eq!(status, 402, "{body}");
    let first = host.buy("test-box", 10).await;
    let _second = host.buy("test-box", 10).await;
    // Full: a free box and a paid one are refused alike, and no payment is asked for.
    let (status, body) = host.post("/v1/boxes", None, &json!({ "offer": "test-box", "minutes": 10 })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("sold_out")), "{body}");
    let response = host.http.post(host.url("/x402/sessions/micro")).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("payment-required").is_none(), "a payment was asked for");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "sold_out", "{body}");
    // Room again once a box ends.
    assert_eq!(host.end(&first).await.0, 200);
    let _third = host.buy("test-box", 10).await;
}
