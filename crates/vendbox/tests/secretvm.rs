//! SecretVM's agent API end to end, on the real binary and a local chain (id 84532), driven by
//! the seed's own Python example (`tests/clients/secretvm_agent.py`: its `build_headers`,
//! `create_vm` and `topup_x402` unchanged, the payment made by the official `x402` client).
//!
//! - `agents_top_up_and_every_forgery_is_refused`: no boxes needed. A top-up paid with x402 v2
//!   (the seed's retry re-sends the same signed headers: the hash answered 402 is not burnt) and
//!   one with v1 `x-payment`; the balance in minor units, the same credits `/v1/account` shows;
//!   a replay, a timestamp out of the window, another wallet's signature, a body that is not the
//!   one signed and a compose file whose hash is not the one signed are each refused with a code.
//! - `a_compose_vm_runs_from_the_registry_and_stops_when_its_balance_runs_out`: boxes, and a
//!   real OCI registry (Debian's `docker-registry`, started and stopped by pid) that the test
//!   pushes `library/nginx:alpine` to with `skopeo` (a busybox `httpd` image it builds with
//!   `umoci`). The seed's flow: create → 402 "Insufficient balance" → top up → create; the VM's
//!   status reaches `running` and its `vmDomain` serves the page through the port proxy; another
//!   wallet's status request is 404; the balance runs out, the VM stops within a minute with the
//!   reason in its status, and the balance is exactly zero, never below.
//! - `a_vm_of_two_images_shares_its_network_and_a_volume_with_nothing_else`: a VM is a pod, one
//!   box per service from its own image (both pulled from the registry): `web` fetches `api`'s
//!   page by service name from `api`'s loopback and reads a file `api` wrote into a named volume
//!   mounted in both, and the VM's domain serves what only `api` could have made; a box of
//!   another VM reaches neither `api`'s port nor its name; a VM one of whose images cannot be
//!   had fails naming that service; and a vendbox killed and started again finds every box of
//!   the pod (billing rounds keep it running, its page is still served).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod boxhost;
mod shop;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shop::Shop;
use vendbox_pay::Wallet;

/// The VM type: a small machine at 0.03 USDC a minute, so a 0.01 top-up lasts 20 seconds of
/// 2-second billing periods.
const CATALOG: &str = r#"
[[offers]]
id = "secretvm-small"
kind = "machine"
title = "A SecretVM VM"
resources = { vcpu = 1, memory_mb = 256, disk_gb = 1 }
duration = { rule = "range", min_minutes = 1, max_minutes = 60 }
actions = { rule = "unlimited" }
images = ["host"]
default_image = "host"
price = { per_minute = "0.03" }
"#;

/// The domain VM domains are under.
const DOMAIN: &str = "vms.test";

/// The page the test image serves.
const PAGE: &str = "hello from the registry's image\n";

fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import eth_account, requests, x402"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        support::requirement_missing("the eth_account, requests and x402 Python packages are not installed");
    }
    ok
}

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        support::requirement_missing(&format!("`{tool}` is not installed (scripts/setup.sh installs it)"));
    }
    found
}

/// Runs the seed's client with `args` as `wallet`; its one JSON line.
fn agent(shop: &Shop, wallet: &Wallet, args: &[&str], env: &[(&str, &str)]) -> Value {
    let output = Command::new("python3")
        .arg(shop::repo_root().join("tests/clients/secretvm_agent.py"))
        .args(args)
        .env("AGENT_PRIVATE_KEY", wallet.secret_hex())
        .env("AGENT_BASE_URL", shop.url(""))
        .env("AGENT_VM_TYPE_ID", "secretvm-small")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| {
        panic!(
            "secretvm_agent.py {args:?} printed no JSON: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    serde_json::from_str(line).unwrap()
}

/// Sends `method path body` with `headers` (a JSON object of them).
async fn send(shop: &Shop, method: &str, path: &str, body: &str, headers: &Value) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method.parse().unwrap(), shop.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers.as_object().unwrap() {
        request = request.header(name, value.as_str().unwrap());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The status and code of an answer (`/api/…` errors are `{"error": message, "code"}`, the
/// Storefront's dialect, which SecretVM's Express-style errors share).
fn code(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["code"].as_str().unwrap_or("-"))
}

/// A vendbox on a fresh chain selling the VM type, with `env`.
async fn open_shop(env: &[(&str, &str)]) -> Option<Shop> {
    let mut shop = Shop::open(84532, env).await?;
    std::fs::write(shop.dir.path().join("vendbox.toml"), CATALOG).unwrap();
    shop.vendbox = shop.serve(env);
    Some(shop)
}

#[tokio::test]
async fn agents_top_up_and_every_forgery_is_refused() {
    if !python_ready() || !shop::python_client_installed() {
        return;
    }
    let Some(shop) = open_shop(&[]).await else { return };
    let (payer, other) = (shop.payer().await, Wallet::random());
    let before = shop.balance(payer.address()).await;

    // x402 v2: the seed's topup_x402, its retry carrying the same signed headers.
    let topped = agent(&shop, &payer, &["topup", "0.01"], &[]);
    assert_eq!(topped["status"], 200, "{topped}");
    assert_eq!(topped["payment_header"], "payment-signature", "{topped}");
    assert_eq!(topped["body"], serde_json::json!({ "balance": "10000", "payment_method": "x402" }));
    // x402 v1: `x-payment`.
    let topped = agent(&shop, &payer, &["topup", "0.02"], &[("X402_VERSION", "1")]);
    assert_eq!(topped["status"], 200, "{topped}");
    assert_eq!(topped["payment_header"], "x-payment", "{topped}");
    assert_eq!(topped["body"]["balance"], "30000", "{topped}");
    assert_eq!(shop.balance(payer.address()).await, before - 30_000);

    // The balance, in minor units; the same credits /v1/account shows.
    let balance = agent(&shop, &payer, &["get", "/api/agent/balance"], &[]);
    assert_eq!((balance["status"].as_u64(), balance["body"]["balance"].as_str()), (Some(200), Some("30000")));
    let account = send(
        &shop,
        "GET",
        "/v1/account",
        "",
        &Value::Object(
            shop::sign_auth(&payer, "GET", "/v1/account", "")
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ),
    )
    .await;
    assert_eq!(account.1["balance"], "0.03", "{account:?}");

    // A replay of a signed request.
    let headers = agent(&shop, &payer, &["headers", "GET", "/api/agent/balance", ""], &[]);
    assert_eq!(send(&shop, "GET", "/api/agent/balance", "", &headers).await.0, 200);
    let replayed = send(&shop, "GET", "/api/agent/balance", "", &headers).await;
    assert_eq!(code(&replayed), (401, "request_replayed"), "{replayed:?}");

    // A timestamp ten minutes old, and one ten minutes ahead.
    let now_ms = chrono::Utc::now().timestamp_millis();
    for off in [-600_000, 600_000] {
        let stamp = (now_ms + off).to_string();
        let headers = agent(&shop, &payer, &["headers", "GET", "/api/agent/balance", "", &stamp], &[]);
        assert_eq!(
            code(&send(&shop, "GET", "/api/agent/balance", "", &headers).await),
            (401, "timestamp_out_of_window")
        );
    }

    // Another wallet's signature over the payer's address.
    let mut forged = agent(&shop, &other, &["headers", "GET", "/api/agent/balance", ""], &[]);
    forged["x-agent-address"] = Value::String(payer.address().to_string());
    assert_eq!(
        code(&send(&shop, "GET", "/api/agent/balance", "", &forged).await),
        (401, "signature_mismatch")
    );

    // A body other than the one signed.
    let signed = r#"{"amount_usdc":"0.01"}"#;
    let headers = agent(&shop, &payer, &["headers", "POST", "/api/agent/add-funds", signed], &[]);
    let sent = send(&shop, "POST", "/api/agent/add-funds", r#"{"amount_usdc":"0.02"}"#, &headers).await;
    assert_eq!(code(&sent), (401, "signature_mismatch"), "{sent:?}");

    // A compose file other than the one whose hash was signed.
    let tampered = agent(&shop, &payer, &["create-tampered"], &[]);
    assert_eq!(
        (tampered["status"].as_u64(), tampered["body"]["code"].as_str()),
        (Some(401), Some("signature_mismatch")),
        "{tampered}"
    );

    // No headers at all.
    assert_eq!(
        code(&send(&shop, "GET", "/api/agent/balance", "", &serde_json::json!({})).await),
        (401, "bad_agent_header")
    );
    // Nothing moved on the chain for any refusal.
    assert_eq!(shop.balance(payer.address()).await, before - 30_000);
}

/// Debian's `docker-registry` on a loopback port, stopped by its pid when dropped.
struct Registry {
    child: Child,
    address: String,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = format!("127.0.0.1:{port}");
        let storage = dir.join("registry");
        std::fs::create_dir_all(&storage).unwrap();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let registry = Registry { child, address };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&registry.address).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen on {}", registry.address);
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// Runs a host tool that must succeed.
fn must(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// An OCI layout at `dir/web` (tag `alpine`): the host's C library and loader (for boxd), a
/// static busybox as `/bin/sh` and its tools, and a page; its config runs busybox's `httpd` on
/// port 80 and exposes it, as nginx's image does.
fn web_image(dir: &Path) -> PathBuf {
    busybox_image(
        dir,
        "web",
        "alpine",
        &[("www/index.html", PAGE)],
        &["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"],
    )
}

/// An OCI layout at `dir/name` (tag `tag`): the host's C library and loader (for boxd), a
/// static busybox as `/bin/sh` and its tools, and `files`; its config runs `cmd` and exposes
/// port 80.
fn busybox_image(dir: &Path, name: &str, tag: &str, files: &[(&str, &str)], cmd: &[&str]) -> PathBuf {
    let layout = dir.join(name);
    let bundle = dir.join(format!("{name}-bundle"));
    let image = format!("{}:{tag}", layout.display());
    must("umoci", &["init", "--layout", layout.to_str().unwrap()]);
    must("umoci", &["new", "--image", &image]);
    must("umoci", &["unpack", "--image", &image, bundle.to_str().unwrap()]);
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "lib/x86_64-linux-gnu", "lib64", "etc", "root", "tmp", "proc", "dev", "www", "var/log"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    for lib in ["libc.so.6", "libm.so.6", "libgcc_s.so.1"] {
        must(
            "cp",
            &[
                "-L",
                &format!("/lib/x86_64-linux-gnu/{lib}"),
                rootfs.join("lib/x86_64-linux-gnu").to_str().unwrap(),
            ],
        );
    }
    must("cp", &["-L", "/lib64/ld-linux-x86-64.so.2", rootfs.join("lib64").to_str().unwrap()]);
    must("cp", &["-L", "/bin/busybox", rootfs.join("bin/busybox").to_str().unwrap()]);
    for applet in ["sh", "mkdir", "sleep", "httpd", "cat", "wget"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    for (path, text) in files {
        let path = rootfs.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    must("umoci", &["repack", "--image", &image, bundle.to_str().unwrap()]);
    let mut config = vec![
        "config",
        "--image",
        image.as_str(),
        "--config.exposedports",
        "80/tcp",
        "--config.env",
        "PATH=/bin",
    ];
    for word in cmd {
        config.extend(["--config.cmd", *word]);
    }
    must("umoci", &config);
    layout
}

/// Polls `id`'s status as `wallet` until `done` says so, for at most `limit`; the last answer.
fn poll(shop: &Shop, wallet: &Wallet, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let got = agent(shop, wallet, &["get", &format!("/api/agent/vm/{id}")], &[]);
        if done(&got) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// GET / of the VM at `domain`, by host name through vendbox's port proxy.
async fn page(shop: &Shop, domain: &str) -> (u16, String) {
    let response = reqwest::Client::new().get(shop.url("/")).header("host", domain).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_compose_vm_runs_from_the_registry_and_stops_when_its_balance_runs_out() {
    if !(python_ready()
        && shop::python_client_installed()
        && boxhost::boxes_supported()
        && ["umoci", "skopeo", "docker-registry", "busybox"].iter().all(|t| have(t)))
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start(work.path());
    let layout = web_image(work.path());
    must(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:alpine", layout.display()),
            &format!("docker://{}/library/nginx:alpine", registry.address),
        ],
    );
    let env = [
        ("VENDBOX_SECRETVM__REGISTRY", registry.address.as_str()),
        ("VENDBOX_SECRETVM__REGISTRY_INSECURE", "true"),
        ("VENDBOX_SECRETVM__BILLING_PERIOD_SECS", "2"),
        ("VENDBOX_SERVER__PORTS_DOMAIN", DOMAIN),
    ];
    let Some(shop) = open_shop(&env).await else { return };
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let (payer, other) = (shop.payer().await, Wallet::random());

    // The seed's example: create, 402 Insufficient balance, top up with x402, create.
    let flow = agent(&shop, &payer, &["flow"], &[("AGENT_VM_NAME", "web"), ("AMOUNT_USDC", "0.01")]);
    assert_eq!(flow["first_create"]["status"], 402, "{flow}");
    assert!(flow["first_create"]["body"].to_string().contains("Insufficient balance"), "{flow}");
    assert_eq!(flow["topup"]["status"], 200, "{flow}");
    assert_eq!(flow["topup"]["body"]["balance"], "10000", "{flow}");
    let created = &flow["create"];
    assert_eq!(created["status"], 200, "{flow}");
    let id = created["body"]["id"].as_str().unwrap().to_owned();
    let domain = format!("80-{id}.{DOMAIN}");
    assert_eq!(created["body"]["vmDomain"], domain.as_str(), "{flow}");
    assert_eq!(created["body"]["name"], "web");
    assert_eq!(created["body"]["skip_launch"], false);

    // Running, and its domain serves the page of the image pulled from the registry.
    let running = poll(&shop, &payer, &id, Duration::from_mins(3), |v| v["body"]["status"] != "creating");
    assert_eq!(running["body"]["status"], "running", "{running}");
    for key in ["id", "name", "vmDomain", "vmId", "vmUid", "created_at", "updated_at"] {
        assert!(running["body"][key].is_string(), "{key}: {running}");
    }
    assert!(running["body"]["attestation"].as_str().unwrap().starts_with("none"), "{running}");
    assert!(shop.dir.path().join("state/images/nginx-alpine/rootfs").is_dir(), "pulled into the image store");
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        let served = page(&shop, &domain).await;
        if served.0 == 200 || Instant::now() > deadline {
            break served;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(served, (200, PAGE.to_owned()));

    // Another agent's VM id is not found.
    let theirs = agent(&shop, &other, &["get", &format!("/api/agent/vm/{id}")], &[]);
    assert_eq!(
        (theirs["status"].as_u64(), theirs["body"]["code"].as_str()),
        (Some(404), Some("vm_not_found")),
        "{theirs}"
    );

    // The balance runs out: stopped within a minute of reaching zero, never below it.
    let zero_by = Instant::now() + Duration::from_secs(30);
    let stopped = poll(&shop, &payer, &id, Duration::from_secs(90), |v| v["body"]["status"] == "stopped");
    assert!(Instant::now() < zero_by + Duration::from_mins(1), "stopped within a minute of zero");
    assert_eq!(stopped["body"]["status"], "stopped", "{stopped}");
    assert!(stopped["body"]["status_reason"].as_str().unwrap().contains("balance ran out"), "{stopped}");
    let balance = agent(&shop, &payer, &["get", "/api/agent/balance"], &[]);
    assert_eq!(balance["body"]["balance"], "0", "{balance}");
    assert_ne!(page(&shop, &domain).await.0, 200, "a stopped VM serves nothing");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let balance = agent(&shop, &payer, &["get", "/api/agent/balance"], &[]);
    assert_eq!(balance["body"]["balance"], "0", "nothing charged after the stop: {balance}");
    drop(registry);
}

/// Pushes OCI layout `layout`'s `tag` to `registry` as `reference` (`library/web:1`).
fn push(registry: &Registry, layout: &Path, tag: &str, reference: &str) {
    must(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{}/{reference}", registry.address),
        ],
    );
}

/// The page at `domain` once it answers 200, or the last answer after 30 s.
async fn page_when_up(shop: &Shop, domain: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let served = page(shop, domain).await;
        if served.0 == 200 || Instant::now() > deadline {
            return served;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates a VM named `name` from compose file `compose` as `wallet` (topping up `amount` first
/// if the balance is short) and waits until it is no longer `creating`; its id and last status.
fn create_and_wait(
    shop: &Shop,
    wallet: &Wallet,
    name: &str,
    compose: &Path,
    amount: &str,
) -> (String, Value) {
    let flow = agent(
        shop,
        wallet,
        &["flow"],
        &[
            ("AGENT_VM_NAME", name),
            ("AMOUNT_USDC", amount),
            ("AGENT_COMPOSE_FILE", compose.to_str().unwrap()),
        ],
    );
    assert_eq!(flow["create"]["status"], 200, "{flow}");
    let id = flow["create"]["body"]["id"].as_str().unwrap().to_owned();
    let status = poll(shop, wallet, &id, Duration::from_mins(3), |v| v["body"]["status"] != "creating");
    (id, status)
}

#[tokio::test]
async fn a_vm_of_two_images_shares_its_network_and_a_volume_with_nothing_else() {
    if !(python_ready()
        && shop::python_client_installed()
        && boxhost::boxes_supported()
        && ["umoci", "skopeo", "docker-registry", "busybox"].iter().all(|t| have(t)))
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start(work.path());
    // Two images: the web image (busybox's httpd on port 80), and an "api" image with a marker
    // file of its own, whose httpd serves /api on 127.0.0.1:8080.
    let web = web_image(work.path());
    push(&registry, &web, "alpine", "library/nginx:alpine");
    let marker = "the api image's own marker";
    let api = busybox_image(
        work.path(),
        "api",
        "1",
        &[("api/marker", marker)],
        &["/bin/busybox", "httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/api"],
    );
    push(&registry, &api, "1", "library/api:1");
    let env = [
        ("VENDBOX_SECRETVM__REGISTRY", registry.address.as_str()),
        ("VENDBOX_SECRETVM__REGISTRY_INSECURE", "true"),
        ("VENDBOX_SERVER__PORTS_DOMAIN", DOMAIN),
        // Billing rounds every 2 s check that every box of a running VM is still there.
        ("VENDBOX_SECRETVM__BILLING_PERIOD_SECS", "2"),
    ];
    let Some(mut shop) = open_shop(&env).await else { return };
    let _cleanup = boxhost::Cleanup::after(shop.vendbox.child.id(), shop.dir.path().join("state"));
    let payer = shop.payer().await;

    // `api` (started first: `web` depends on it) serves a page made of its image's marker and
    // its environment on its loopback only, and writes a file into the volume; `web` fetches
    // the page by the service's name and reads the file (mounted elsewhere in it), and serves
    // both on port 80, the VM's domain.
    let token = format!(
        "w{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let api_command = "echo \"network: $(cat /api/marker) $API_WORD\" > /api/net.txt; \
                       echo \"volume: $API_WORD\" > /data/vol.txt; \
                       exec httpd -f -p 127.0.0.1:8080 -h /api";
    let web_command = "until wget -q -O /tmp/net.txt http://api:8080/net.txt; do sleep 0.2; done; \
                       until [ -s /shared/vol.txt ]; do sleep 0.2; done; \
                       cat /tmp/net.txt /shared/vol.txt > /www/index.html; \
                       exec httpd -f -p 80 -h /www";
    let q = |text: &str| serde_json::to_string(text).unwrap();
    let compose = format!(
        "services:\n  web:\n    image: nginx:alpine\n    depends_on: [api]\n    ports: [\"80:80\"]\n    \
         volumes: [\"shared:/shared\"]\n    command: [\"/bin/sh\", \"-c\", {}]\n  api:\n    image: api:1\n    \
         environment:\n      API_WORD: {token}\n    volumes: [\"shared:/data\"]\n    \
         command: [\"/bin/sh\", \"-c\", {}]\nvolumes:\n  shared: {{}}\n",
        q(web_command),
        q(api_command)
    );
    let pod_file = work.path().join("pod.yml");
    std::fs::write(&pod_file, compose).unwrap();
    let (id, status) = create_and_wait(&shop, &payer, "pod", &pod_file, "0.2");
    assert_eq!(status["body"]["status"], "running", "{status}");
    for image in ["nginx-alpine", "api-1"] {
        assert!(shop.dir.path().join("state/images").join(image).join("rootfs").is_dir(), "{image} pulled");
    }
    // One box per service, each on its own image.
    let mut images: Vec<String> = std::fs::read_dir(shop.dir.path().join("state/boxes"))
        .unwrap()
        .filter_map(|e| std::fs::read(e.unwrap().path().join("box.json")).ok())
        .map(|record| serde_json::from_slice::<Value>(&record).unwrap()["image"].as_str().unwrap().to_owned())
        .collect();
    images.sort();
    assert_eq!(images, ["api-1", "nginx-alpine"]);
    let expected = (200, format!("network: {marker} {token}\nvolume: {token}\n"));
    assert_eq!(page_when_up(&shop, &format!("80-{id}.{DOMAIN}")).await, expected);

    // Another VM's box reaches nothing of it: not api's port on its own loopback, not `api`.
    let probe_command = "for url in http://127.0.0.1:8080/net.txt http://api:8080/net.txt; do \
                         if wget -q -T 2 -O /tmp/got \"$url\"; then echo reached; else echo isolated; fi; \
                         done > /www/index.html; exec httpd -f -p 80 -h /www";
    let probe = format!(
        "services:\n  probe:\n    image: nginx:alpine\n    command: [\"/bin/sh\", \"-c\", {}]\n",
        q(probe_command)
    );
    let probe_file = work.path().join("probe.yml");
    std::fs::write(&probe_file, probe).unwrap();
    let (other, status) = create_and_wait(&shop, &payer, "probe", &probe_file, "0.2");
    assert_eq!(status["body"]["status"], "running", "{status}");
    assert_eq!(
        page_when_up(&shop, &format!("80-{other}.{DOMAIN}")).await,
        (200, "isolated\nisolated\n".to_owned())
    );

    // A service that cannot be had fails its VM with a reason naming it.
    let ghost_file = work.path().join("ghost.yml");
    std::fs::write(
        &ghost_file,
        "services:\n  web:\n    image: nginx:alpine\n    depends_on: [ghost]\n  ghost:\n    image: ghost:1\n",
    )
    .unwrap();
    let (_, status) = create_and_wait(&shop, &payer, "ghost", &ghost_file, "0.2");
    assert_eq!(status["body"]["status"], "failed", "{status}");
    assert!(status["body"]["status_reason"].as_str().unwrap().contains("service `ghost`"), "{status}");

    // vendbox killed and started again finds every box of the pod: billing rounds (every 2 s)
    // still see them all, and the page still comes from web's box through api's network.
    shop.vendbox.crash();
    shop.vendbox = shop.serve(&env);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = agent(&shop, &payer, &["get", &format!("/api/agent/vm/{id}")], &[]);
    assert_eq!(status["body"]["status"], "running", "{status}");
    assert_eq!(page_when_up(&shop, &format!("80-{id}.{DOMAIN}")).await, expected);
    drop(registry);
}
