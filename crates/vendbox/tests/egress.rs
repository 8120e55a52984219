//! Egress: a box with egress reaches the public internet by address and by name, and nothing
//! the policy refuses (the host, private and metadata addresses, other boxes); its bandwidth
//! and connections are capped; an offer without egress has no network; nothing of a box's
//! network outlives it, and a restart removes what a crash left.
//!
//! This machine has no internet and its own network is out of bounds, so the test builds its
//! own: a namespace standing in for the public internet (an HTTP server on 203.0.113.10 and a
//! DNS server on 203.0.113.53 answering for `vendbox.test`) and one for a private network and
//! cloud metadata (a server on 10.77.0.1 and 169.254.169.254, and on the unique local IPv6
//! address fd77:7700::1), with host routes for exactly those prefixes into them. Before the first packet it checks that every address it will try
//! routes into its own namespaces, so that a policy bug can only reach the test's servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod boxhost;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use boxhost::{Bought, BoxHost};

/// The stand-in for the public internet.
const PUBLIC_WEB: &str = "203.0.113.10";
const PUBLIC_DNS: &str = "203.0.113.53";
/// The stand-ins for a private network and for cloud metadata.
const PRIVATE: &str = "10.77.0.1";
const METADATA: &str = "169.254.169.254";
/// A unique local IPv6 address (fc00::/7) in the private namespace, and the host's end of that
/// link: boxes have no IPv6, so it must stay out of their reach.
const PRIVATE_V6: &str = "fd77:7700::1";
const PRIVATE_V6_HOST: &str = "fd77:7700::2";
/// The name the test's DNS server answers with `PUBLIC_WEB`.
const NAME: &str = "web.vendbox.test";
/// Each box's bandwidth in the test, Mbit/s.
const MBIT: u64 = 8;
/// Each box's connection cap in the test.
const CONNECTIONS: usize = 6;

/// A box offer without egress, next to the test catalog's sandboxes (which include it).
const OFFLINE: &str = r#"
[[offers]]
id = "test-offline"
kind = "sandbox"
title = "A box without network"
resources = { vcpu = 1, memory_mb = 256, disk_gb = 1 }
duration = { rule = "range", min_minutes = 1, max_minutes = 60 }
actions = { rule = "unlimited" }
images = ["host"]
default_image = "host"
egress = false
price = {}
"#;

fn sh(line: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(line).output().unwrap()
}

fn must(line: &str) {
    let out = sh(line);
    assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The test's own networks, removed (by the names it gave them, and its servers by pid) when
/// dropped, also when the test fails.
struct World {
    /// Namespaces it made.
    netns: Vec<String>,
    /// Host ends of its links (their routes go with them).
    links: Vec<String>,
    /// Its servers.
    servers: Vec<Child>,
    /// Where servers serve from and log to.
    dir: tempfile::TempDir,
    inet_if: String,
    private_if: String,
    /// IPv4 forwarding as the test found it (vendbox turns it on), put back when dropped.
    forwarding: String,
    /// Held while the world exists: the tests' worlds route the same prefixes, so they take
    /// turns (nextest runs each test in a process of its own). Dropped last.
    _turn: std::fs::File,
}

impl Drop for World {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        for link in &self.links {
            let _ = sh(&format!("ip link del {link} 2>/dev/null"));
        }
        for ns in &self.netns {
            let _ = sh(&format!("ip netns del {ns} 2>/dev/null"));
        }
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.forwarding);
    }
}

impl World {
    fn build() -> World {
        let tag = std::process::id() % 100_000;
        let turn = std::fs::File::create("/run/vendbox-egress-tests.lock").unwrap();
        turn.lock().unwrap();
        let mut world = World {
            netns: Vec::new(),
            links: Vec::new(),
            servers: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            inet_if: format!("vti{tag}"),
            private_if: format!("vtp{tag}"),
            forwarding: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
            _turn: turn,
        };
        let inet = format!("vendbox-test-{tag}-inet");
        let private = format!("vendbox-test-{tag}-private");
        for (ns, host_if, addrs, routes) in [
            (&inet, world.inet_if.clone(), vec![PUBLIC_WEB, PUBLIC_DNS], vec!["203.0.113.0/24"]),
            (
                &private,
                world.private_if.clone(),
                vec![PRIVATE, METADATA],
                vec!["10.77.0.0/24", "169.254.169.254/32"],
            ),
        ] {
            let inside = format!("{host_if}n");
            world.netns.push(ns.clone());
            must(&format!("ip netns add {ns}"));
            world.links.push(host_if.clone());
            must(&format!("ip link add {host_if} type veth peer name {inside} netns {ns}"));
            must(&format!("ip link set {host_if} up"));
            for addr in addrs {
                must(&format!("ip -n {ns} addr add {addr}/24 dev {inside}"));
            }
            must(&format!("ip -n {ns} link set {inside} up && ip -n {ns} link set lo up"));
            must(&format!("ip -n {ns} route add default dev {inside}"));
            for route in routes {
                must(&format!("ip route add {route} dev {host_if}"));
            }
            if *ns == private {
                // Its IPv6 network is the link's own (fd77:7700::/64, a route of the link).
                must(&format!("ip -n {ns} -6 addr add {PRIVATE_V6}/64 dev {inside} nodad"));
                must(&format!("ip -6 addr add {PRIVATE_V6_HOST}/64 dev {host_if} nodad"));
            }
        }
        // Before any packet: every address the test tries routes into its own namespaces.
        for (addr, dev) in [
            (PUBLIC_WEB, &world.inet_if),
            (PUBLIC_DNS, &world.inet_if),
            (PRIVATE, &world.private_if),
            (METADATA, &world.private_if),
        ] {
            let out = sh(&format!("ip route get {addr}"));
            let route = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                route.contains(&format!("dev {dev} ")),
                "{addr} does not route into the test's namespace: {route}"
            );
        }
        let route = String::from_utf8_lossy(&sh(&format!("ip -6 route get {PRIVATE_V6}")).stdout).to_string();
        assert!(
            route.contains(&format!("dev {} ", world.private_if)) && !route.contains(" via "),
            "{PRIVATE_V6} does not route into the test's namespace: {route}"
        );
        world.serve(&inet, &private);
        world
    }

    /// Starts the test's servers: HTTP in both namespaces, DNS in the public one.
    fn serve(&mut self, inet: &str, private: &str) {
        let root = self.dir.path();
        std::fs::create_dir_all(root.join("public")).unwrap();
        std::fs::write(root.join("public/hello.txt"), "hello from the public internet\n").unwrap();
        std::fs::write(root.join("public/big.bin"), vec![7u8; 4 * 1024 * 1024]).unwrap();
        std::fs::create_dir_all(root.join("private")).unwrap();
        std::fs::write(root.join("private/secret.txt"), "private\n").unwrap();
        let serve = |ns: &str, dir: &Path, log: &str| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "/usr/bin/python3",
                    "-m",
                    "http.server",
                    "80",
                    "--bind",
                    // Both families (IPv4-mapped too): the private server answers on IPv6 too.
                    "::",
                ])
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .unwrap()
        };
        let public_log = root.join("public.log");
        let private_log = root.join("private.log");
        self.servers.push(serve(inet, &root.join("public"), public_log.to_str().unwrap()));
        self.servers.push(serve(private, &root.join("private"), private_log.to_str().unwrap()));
        self.servers.push(
            Command::new("ip")
                .args(["netns", "exec", inet, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts"])
                .args(["--conf-file=/dev/null", "--user=root", "--group=root", "--bind-interfaces"])
                .arg(format!("--listen-address={PUBLIC_DNS}"))
                .arg(format!("--address=/{NAME}/{PUBLIC_WEB}"))
                .arg("--pid-file")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // The servers answer inside their namespaces before the boxes are asked to reach them.
        for (ns, addr) in [(inet, PUBLIC_WEB), (private, PRIVATE)] {
            let ready = (0..100).any(|_| {
                std::thread::sleep(Duration::from_millis(50));
                sh(&format!("ip netns exec {ns} curl -s -o /dev/null -m 1 http://{addr}/")).status.success()
            });
            assert!(ready, "the test's server on {addr} did not start");
        }
        // The private server answers on IPv6 from the host (a link of the test's own), so a box
        // that cannot reach it is refused, not pointed at nothing.
        let ready = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            sh(&format!("curl -sg -o /dev/null -m 1 http://[{PRIVATE_V6}]/")).status.success()
        });
        assert!(ready, "the test's server on {PRIVATE_V6} does not answer the host");
    }

    fn private_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("private.log")).unwrap_or_default()
    }
}

/// Whether this host can run the test (root, bubblewrap, nftables, dnsmasq).
fn supported() -> bool {
    let have = |tool: &str| sh(&format!("command -v {tool}")).status.success();
    if !["nft", "dnsmasq", "ip", "curl"].iter().all(|t| have(t)) {
        support::requirement_missing("egress tests need nftables, dnsmasq, iproute2 and curl");
        return false;
    }
    boxhost::boxes_supported()
}

/// vendbox's settings in these tests: egress on, the test's resolver, the test's caps.
fn settings() -> Vec<(&'static str, String)> {
    vec![
        ("VENDBOX_EGRESS__ENABLED", "true".to_owned()),
        ("VENDBOX_EGRESS__RESOLVERS", format!("[\"{PUBLIC_DNS}\"]")),
        ("VENDBOX_EGRESS__BANDWIDTH_MBIT", MBIT.to_string()),
        ("VENDBOX_EGRESS__MAX_CONNECTIONS", CONNECTIONS.to_string()),
    ]
}

/// A vendbox selling boxes with egress into `_world` (which must outlive it).
fn host(_world: &World) -> Option<BoxHost> {
    let settings = settings();
    let env: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    BoxHost::start_with(OFFLINE, &env)
}

/// Runs `line` in box `b`; its stdout (the line must exit 0).
async fn run(host: &BoxHost, b: &Bought, line: &str) -> String {
    let (status, out) = host.sh(b, line, 60).await;
    assert_eq!(status, 200, "{line}: {out}");
    assert_eq!(out["exit_code"], 0, "{line}: {out}");
    out["stdout"].as_str().unwrap().to_owned()
}

/// Whether a `curl` from box `b` to `url` got an HTTP answer.
async fn reaches(host: &BoxHost, b: &Bought, url: &str) -> bool {
    let line = format!("curl -s -o /dev/null -w '%{{http_code}}' -m 3 {url}; echo \" rc=$?\"");
    let text = run(host, b, &line).await;
    !text.starts_with("000")
}

/// The box's own IPv4 address and its gateway (the host's end of its link).
async fn addresses(host: &BoxHost, b: &Bought) -> (String, String) {
    let text = run(host, b, "ip -4 -o addr show dev eth0; ip -4 route show default").await;
    let address =
        text.split_whitespace().skip_while(|w| *w != "inet").nth(1).unwrap().split('/').next().unwrap();
    let gateway = text.split_whitespace().skip_while(|w| *w != "via").nth(1).unwrap();
    (address.to_owned(), gateway.to_owned())
}

#[tokio::test]
async fn a_box_reaches_the_public_internet_and_nothing_the_policy_refuses() {
    if !supported() {
        return;
    }
    let world = World::build();
    let Some(host) = host(&world) else { return };
    let a = host.buy("test-box", 10).await;
    let b = host.buy("test-box", 10).await;

    // By address and by name, through the configured resolver.
    let text = run(&host, &a, &format!("curl -sS -m 5 http://{PUBLIC_WEB}/hello.txt")).await;
    assert_eq!(text, "hello from the public internet\n");
    assert_eq!(run(&host, &a, "cat /etc/resolv.conf").await, format!("nameserver {PUBLIC_DNS}\n"));
    let text = run(&host, &a, &format!("curl -sS -m 5 http://{NAME}/hello.txt")).await;
    assert_eq!(text, "hello from the public internet\n");

    // The host: its end of the link (any service on any host address), vendbox's own port.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let (a_addr, a_gateway) = addresses(&host, &a).await;
    let (b_addr, _) = addresses(&host, &b).await;
    assert_ne!(a_addr, b_addr);
    // The other box's address routes to its own link on this host, nowhere else.
    let route = String::from_utf8_lossy(&sh(&format!("ip route get {b_addr}")).stdout).to_string();
    assert!(route.contains(" dev v"), "{b_addr} routes elsewhere: {route}");
    // The gateway is the host itself: a packet to it never leaves the host.
    let route = String::from_utf8_lossy(&sh(&format!("ip route get {a_gateway}")).stdout).to_string();
    assert!(route.starts_with("local "), "{a_gateway} is not the host's own: {route}");
    run(&host, &b, "cd /tmp && (nohup python3 -m http.server 8080 >/dev/null 2>&1 &) ; sleep 1").await;
    assert!(reaches(&host, &b, "http://127.0.0.1:8080/").await, "box b's own server does not answer it");
    // Ports in work for a box with egress as without (through boxd, not the box's link).
    let response = host.http.get(host.url(&format!("/v1/boxes/{}/ports/8080/", b.id))).bearer_auth(&b.token);
    assert_eq!(response.send().await.unwrap().status(), 200);
    let vendbox_port = host.vendbox.as_ref().unwrap().addr().rsplit(':').next().unwrap().to_owned();
    for url in [
        format!("http://{PRIVATE}/secret.txt"),
        format!("http://{METADATA}/latest/meta-data/"),
        format!("http://{a_gateway}:{host_port}/"),
        format!("http://{a_gateway}:{vendbox_port}/healthz"),
        format!("http://127.0.0.1:{vendbox_port}/healthz"),
        format!("http://{b_addr}:8080/"),
    ] {
        assert!(!reaches(&host, &a, &url).await, "box a reached {url}");
    }
    assert!(listener.accept().is_err(), "a box connected to a host service");
    // (The test's own readiness probe asked for `/`; the box asked for these.)
    let log = world.private_log();
    assert!(
        !log.contains("secret.txt") && !log.contains("meta-data"),
        "the private server was reached: {log}"
    );
    // Refused at once by the policy, not left to time out.
    let text = run(&host, &a, &format!("curl -sS -m 3 http://{PRIVATE}/ 2>&1; echo rc=$?")).await;
    assert!(!text.contains("rc=28"), "the refusal timed out instead: {text}");

    // IPv6 is off, and the box cannot change its own network.
    let text =
        run(&host, &a, "ip -6 addr show dev eth0; ip addr add 10.200.99.9/32 dev eth0 2>&1; echo rc=$?")
            .await;
    assert!(!text.contains("inet6") && !text.contains("rc=0"), "{text}");
    // No IPv6 route leaves the box: neither the host's ::1 (the box's ::1 is its own loopback)
    // nor a unique local address that the host routes (into the test's private namespace).
    let text = run(&host, &a, "ip -6 route show table all 2>&1").await;
    assert!(!text.contains("default") && !text.contains("eth0"), "the box has an IPv6 route: {text}");
    let listener6 = std::net::TcpListener::bind("[::1]:0").unwrap();
    let port6 = listener6.local_addr().unwrap().port();
    listener6.set_nonblocking(true).unwrap();
    for url in [format!("http://[::1]:{port6}/"), format!("http://[{PRIVATE_V6}]/secret6.txt")] {
        let text = run(&host, &a, &format!("curl -sSg -m 3 {url} 2>&1; echo rc=$?")).await;
        assert!(text.contains("rc=7"), "box a did not fail to connect to {url} at once: {text}");
    }
    assert!(listener6.accept().is_err(), "a box connected to the host's ::1");
    assert!(!world.private_log().contains("secret6"), "the private server was reached over IPv6");

    // Fail closed: with the host's table flushed (a firewall reload), the box's own policy,
    // which it cannot change, still refuses.
    let instance = instance_of(&host.data_dir());
    must(&format!("nft delete table inet vendbox_{instance}"));
    for url in [
        format!("http://{PRIVATE}/secret.txt"),
        format!("http://{METADATA}/latest/meta-data/"),
        format!("http://{a_gateway}:{host_port}/"),
    ] {
        assert!(!reaches(&host, &a, &url).await, "box a reached {url} without the host's table");
    }
    assert!(listener.accept().is_err(), "a box connected to a host service");
    let log = world.private_log();
    assert!(
        !log.contains("secret.txt") && !log.contains("meta-data"),
        "the private server was reached: {log}"
    );
}

#[tokio::test]
async fn bandwidth_and_connections_are_capped_per_box() {
    if !supported() {
        return;
    }
    let world = World::build();
    let Some(host) = host(&world) else { return };
    let a = host.buy("test-box", 10).await;

    // Connections: the cap holds; the rest are refused.
    let script = format!(
        "import socket\nheld = []\nfor _ in range({}):\n    s = socket.socket()\n    s.settimeout(3)\n    try:\n        s.connect(('{PUBLIC_WEB}', 80))\n        held.append(s)\n    except OSError:\n        pass\nprint(len(held))\n",
        CONNECTIONS + 4
    );
    run(&host, &a, &format!("cat > /tmp/conns.py <<'EOF'\n{script}EOF")).await;
    let held: usize = run(&host, &a, "python3 /tmp/conns.py").await.trim().parse().unwrap();
    assert_eq!(held, CONNECTIONS, "connections held at once");

    // Bandwidth: a 4 MiB download at the cap.
    let text = run(
        &host,
        &a,
        &format!("curl -sS -o /dev/null -m 30 -w '%{{speed_download}}' http://{PUBLIC_WEB}/big.bin"),
    )
    .await;
    let bytes_per_second: f64 = text.trim().parse().unwrap();
    #[allow(clippy::cast_precision_loss)]
    let cap = (MBIT * 1_000_000 / 8) as f64;
    let ratio = bytes_per_second / cap;
    eprintln!("download at {bytes_per_second:.0} B/s, {ratio:.2} of the {MBIT} Mbit/s cap");
    assert!((0.8..=1.2).contains(&ratio), "download at {bytes_per_second} B/s against a cap of {cap}");
}

#[tokio::test]
async fn an_offer_without_egress_has_no_network_and_an_ended_box_leaves_no_link() {
    if !supported() {
        return;
    }
    let world = World::build();
    let Some(mut host) = host(&world) else { return };
    let offline = host.buy("test-offline", 10).await;
    assert!(!reaches(&host, &offline, &format!("http://{PUBLIC_WEB}/hello.txt")).await);
    let text = run(&host, &offline, "ip -o link | cut -d: -f2").await;
    assert_eq!(text.split_whitespace().collect::<Vec<_>>(), ["lo"], "{text}");

    let online = host.buy("test-box", 10).await;
    assert!(reaches(&host, &online, &format!("http://{PUBLIC_WEB}/hello.txt")).await);
    let id = vendbox_box::BoxId::new(&online.id).unwrap();
    let backend = host.backend();
    assert!(backend.leaves_traces(&id).iter().any(|t| t.contains("network namespace")));
    let (status, body) = host.end(&online).await;
    assert_eq!(status, 200, "{body}");
    host.assert_gone_within(&online.id, Duration::from_secs(10));

    // A crash leaves a box's network behind; the next start removes what no box owns.
    let stray = host.buy("test-box", 10).await;
    host.crash();
    let stray_id = vendbox_box::BoxId::new(&stray.id).unwrap();
    assert!(!backend.leaves_traces(&stray_id).is_empty());
    let instance = instance_of(&host.data_dir());
    let leftover = format!("vendbox-{instance}-leftover-box");
    must(&format!("ip netns add {leftover}"));
    let _cleanup = NetnsGuard(leftover.clone());
    let settings = settings();
    let env: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    host.restart_with(&env);
    support::eventually(Duration::from_secs(20), "the leftover namespace to go", async || {
        if Path::new("/run/netns").join(&leftover).exists() { Err("still there".to_owned()) } else { Ok(()) }
    })
    .await;
    // The crashed box was paid and is kept, with its network.
    assert!(reaches(&host, &stray, &format!("http://{PUBLIC_WEB}/hello.txt")).await);
}

#[tokio::test]
async fn the_operators_allow_and_deny_lists_apply() {
    if !supported() {
        return;
    }
    let world = World::build();
    let mut settings = settings();
    settings.push(("VENDBOX_EGRESS__ALLOW", format!("[\"{METADATA}/32\"]")));
    settings.push(("VENDBOX_EGRESS__DENY", format!("[\"{PUBLIC_DNS}/32\"]")));
    let env: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let Some(host) = BoxHost::start_with("", &env) else { return };
    let a = host.buy("test-box", 10).await;
    // Allowed: the metadata stand-in (the test's own server), and only it of the refused ranges.
    assert!(reaches(&host, &a, &format!("http://{METADATA}/secret.txt")).await);
    assert!(!reaches(&host, &a, &format!("http://{PRIVATE}/secret.txt")).await);
    // Denied: the resolver's address (its web server too), though it still answers DNS.
    assert!(!reaches(&host, &a, &format!("http://{PUBLIC_DNS}/hello.txt")).await);
    let text = run(&host, &a, &format!("curl -sS -m 5 http://{NAME}/hello.txt")).await;
    assert_eq!(text, "hello from the public internet\n");
    drop(host);
    drop(world);
}

/// Runs `line` in box `id` of `backend`; its stdout (the line must exit 0).
async fn run_in(backend: &vendbox_box::local::LocalBackend, id: &vendbox_box::BoxId, line: &str) -> String {
    use vendbox_box::Backend as _;
    let request = vendbox_box::wire::RunRequest {
        process: vendbox_box::wire::ProcessSpec {
            cmd: line.to_owned(),
            shell: true,
            timeout_ms: Some(30_000),
            ..Default::default()
        },
        max_output_bytes: 64 * 1024,
    };
    let out = backend.boxd(id).run(&request).await.unwrap();
    assert_eq!(out.exit_code, Some(0), "{line} in {id}: {out:?}");
    out.stdout
}

/// Whether a `curl` from box `id` to `url` got an HTTP answer.
async fn reaches_from(
    backend: &vendbox_box::local::LocalBackend,
    id: &vendbox_box::BoxId,
    url: &str,
) -> bool {
    let line = format!("curl -s -o /dev/null -w '%{{http_code}}' -m 3 {url}; echo \" rc=$?\"");
    !run_in(backend, id, &line).await.starts_with("000")
}

/// A pod with egress, made through the local backend's pod API (as `Vms` makes a SecretVM VM's
/// boxes, one spec per service, the first box naming itself): every box of the pod shares the
/// first box's egress namespace, reaches the public internet (by address and by name) and the
/// others on 127.0.0.1; private and metadata addresses, the host and a box outside the pod stay
/// refused, from the second box as from the first, and the pod's boxes cannot change its network.
#[tokio::test]
async fn a_pod_with_egress_reaches_the_internet_from_each_box_and_nothing_the_policy_refuses() {
    use vendbox_box::{Backend as _, BoxId, BoxSpec, Limits, Pod};
    if !supported() {
        return;
    }
    let world = World::build();
    let data = tempfile::tempdir().unwrap();
    // Destroys the boxes and removes the instance's links, namespaces and table, also on failure.
    let _cleanup = boxhost::Cleanup::new(data.path().to_path_buf());
    let mut backend = boxhost::backend_for(data.path());
    let egress = vendbox_box::local::EgressConfig {
        resolvers: vec![PUBLIC_DNS.parse().unwrap()],
        ..vendbox_box::local::EgressConfig::default()
    };
    backend.enable_egress(egress).await.unwrap();
    let (first, second, outside) =
        (BoxId::new("pod-web").unwrap(), BoxId::new("pod-api").unwrap(), BoxId::new("lone").unwrap());
    let spec = |id: &BoxId, pod: Option<&BoxId>| BoxSpec {
        id: id.clone(),
        image: "host".into(),
        limits: Limits { vcpu: 1, memory_mb: 256, disk_mb: 64, pids: 128 },
        egress: true,
        pod: pod.map(|first| Pod { first: first.clone(), volumes: Vec::new() }),
    };
    backend.create(&spec(&first, Some(&first))).await.unwrap();
    backend.create(&spec(&second, Some(&first))).await.unwrap();
    backend.create(&spec(&outside, None)).await.unwrap();

    // Each box of the pod reaches the public internet, by address and through the resolver.
    for id in [&second, &first] {
        let text = run_in(&backend, id, &format!("curl -sS -m 5 http://{PUBLIC_WEB}/hello.txt")).await;
        assert_eq!(text, "hello from the public internet\n", "{id}");
        assert_eq!(run_in(&backend, id, "cat /etc/resolv.conf").await, format!("nameserver {PUBLIC_DNS}\n"));
        let text = run_in(&backend, id, &format!("curl -sS -m 5 http://{NAME}/hello.txt")).await;
        assert_eq!(text, "hello from the public internet\n", "{id}");
    }
    // One network: the same address, and each reaches the other's server on loopback.
    let address = |id: BoxId| {
        let backend = &backend;
        async move {
            let text = run_in(backend, &id, "ip -4 -o addr show dev eth0; ip -4 route show default").await;
            let address = text.split_whitespace().skip_while(|w| *w != "inet").nth(1).unwrap();
            let gateway = text.split_whitespace().skip_while(|w| *w != "via").nth(1).unwrap();
            (address.split('/').next().unwrap().to_owned(), gateway.to_owned())
        }
    };
    let (pod_addr, gateway) = address(first.clone()).await;
    assert_eq!(address(second.clone()).await.0, pod_addr);
    let (outside_addr, _) = address(outside.clone()).await;
    for (id, port) in [(&first, 8080), (&second, 8081), (&outside, 8082)] {
        run_in(
            &backend,
            id,
            &format!("cd /tmp && (nohup python3 -m http.server {port} >/dev/null 2>&1 &); sleep 1"),
        )
        .await;
    }
    assert!(reaches_from(&backend, &second, "http://127.0.0.1:8080/").await, "api does not reach web");
    assert!(reaches_from(&backend, &first, "http://127.0.0.1:8081/").await, "web does not reach api");
    assert!(reaches_from(&backend, &outside, "http://127.0.0.1:8082/").await);

    // Refused from either box of the pod: private and metadata addresses, the host (its end of
    // the link, vendbox's kind of port), the box outside the pod; and that box cannot reach the
    // pod, nor the pod's loopback.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    for id in [&second, &first] {
        for url in [
            format!("http://{PRIVATE}/secret.txt"),
            format!("http://{METADATA}/latest/meta-data/"),
            format!("http://{gateway}:{host_port}/"),
            format!("http://{outside_addr}:8082/"),
        ] {
            assert!(!reaches_from(&backend, id, &url).await, "{id} reached {url}");
        }
    }
    for url in [
        format!("http://{pod_addr}:8080/"),
        format!("http://{pod_addr}:8081/"),
        "http://127.0.0.1:8080/".into(),
    ] {
        assert!(!reaches_from(&backend, &outside, &url).await, "the box outside the pod reached {url}");
    }
    assert!(listener.accept().is_err(), "a box connected to a host service");
    let log = world.private_log();
    assert!(
        !log.contains("secret.txt") && !log.contains("meta-data"),
        "the private server was reached: {log}"
    );
    // No box of the pod owns its network: the second box can change it no more than the first.
    for id in [&second, &first] {
        let text = run_in(&backend, id, "ip addr add 10.200.99.9/32 dev eth0 2>&1; echo rc=$?").await;
        assert!(!text.contains("rc=0"), "{id}: {text}");
    }

    // The pod's other box goes first and leaves the network to the first; then the first takes
    // it with it.
    backend.destroy(&second).await.unwrap();
    let text = run_in(&backend, &first, &format!("curl -sS -m 5 http://{PUBLIC_WEB}/hello.txt")).await;
    assert_eq!(text, "hello from the public internet\n");
    for id in [&first, &outside] {
        backend.destroy(id).await.unwrap();
    }
    for id in [&first, &second, &outside] {
        assert!(backend.leaves_traces(id).is_empty(), "{id}: {:?}", backend.leaves_traces(id));
    }
}

/// The network namespace box `id`'s processes run in (`net:[inode]`), seen from the host.
fn netns_of(backend: &vendbox_box::local::LocalBackend, id: &vendbox_box::BoxId) -> String {
    let spaces: std::collections::BTreeSet<String> = backend
        .pids(id)
        .iter()
        .filter_map(|pid| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok())
        .map(|link| link.to_string_lossy().into_owned())
        .collect();
    assert_eq!(spaces.len(), 1, "box {id}'s processes are in {spaces:?}");
    spaces.into_iter().next().unwrap()
}

/// A pod's first box with egress whose processes die (its boxd killed; after a host reboot all
/// would be gone) is started again from its disk into the pod's network, which its other boxes
/// are still in: the pod stays one network with its link to the internet.
#[tokio::test]
async fn a_pods_first_box_started_again_keeps_the_pods_network_with_egress() {
    use vendbox_box::{Backend as _, BoxId, BoxSpec, BoxStatus, Limits, Pod};
    if !supported() {
        return;
    }
    if !sh("command -v umoci").status.success() {
        support::requirement_missing("a box started again from its disk needs an image, made with `umoci`");
        return;
    }
    let world = World::build();
    let data = tempfile::tempdir().unwrap();
    let _cleanup = boxhost::Cleanup::new(data.path().to_path_buf());
    // The first box needs a disk to be started again from: an image box (a tiny one).
    let layout = support::oci_layout_of(data.path(), "tiny-layout", support::tiny_userland);
    let out = Command::new(support::BIN)
        .args(["image", "import"])
        .arg(&layout)
        .args(["--name", "tiny", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "importing: {}", String::from_utf8_lossy(&out.stderr));
    let mut backend = boxhost::backend_for(data.path());
    let egress = vendbox_box::local::EgressConfig {
        resolvers: vec![PUBLIC_DNS.parse().unwrap()],
        ..vendbox_box::local::EgressConfig::default()
    };
    backend.enable_egress(egress).await.unwrap();
    let (first, second) = (BoxId::new("pod-first").unwrap(), BoxId::new("pod-second").unwrap());
    let spec = |id: &BoxId, image: &str| BoxSpec {
        id: id.clone(),
        image: image.into(),
        limits: Limits { vcpu: 1, memory_mb: 256, disk_mb: 64, pids: 128 },
        egress: true,
        pod: Some(Pod { first: first.clone(), volumes: Vec::new() }),
    };
    backend.create(&spec(&first, "tiny")).await.unwrap();
    backend.create(&spec(&second, "host")).await.unwrap();
    let pod_netns = netns_of(&backend, &second);
    assert_eq!(netns_of(&backend, &first), pod_netns);
    let hello = format!("curl -sS -m 5 http://{PUBLIC_WEB}/hello.txt");
    assert_eq!(run_in(&backend, &second, &hello).await, "hello from the public internet\n");

    for pid in backend.pids(&first) {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !backend.pids(&first).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the first box's processes outlived SIGKILL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(backend.status(&first).await.unwrap(), BoxStatus::Running);
    assert_eq!(netns_of(&backend, &first), pod_netns, "the first box came back in another network");
    assert_eq!(run_in(&backend, &second, &hello).await, "hello from the public internet\n");
    assert!(!reaches_from(&backend, &second, &format!("http://{PRIVATE}/secret.txt")).await);
    drop(world);
}

/// Removes a namespace the test made, when dropped.
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {} 2>/dev/null", self.0));
    }
}

/// The instance name the local backend gives a data directory.
fn instance_of(data_dir: &Path) -> String {
    use sha2::Digest as _;
    let dir: PathBuf = std::fs::canonicalize(data_dir).unwrap();
    hex::encode(&sha2::Sha256::digest(dir.to_string_lossy().as_bytes())[..6])
}

/// Waits up to 30 s for `backend` to hold `count` warm slots; their names and pids.
async fn warm_slots(backend: &vendbox_box::local::LocalBackend, count: usize) -> Vec<(String, u32)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let slots = backend.warm_slots();
        if slots.len() >= count {
            return slots;
        }
        assert!(std::time::Instant::now() < deadline, "{} warm slots after 30 s: {slots:?}", slots.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether anything named after warm slot `name` is on the host: a mount, a network namespace,
/// a cgroup, a uid claim.
fn slot_traces(name: &str) -> Vec<String> {
    let mut traces = Vec::new();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    traces.extend(mountinfo.lines().filter(|l| l.contains(name)).map(|l| format!("mount {l}")));
    for dir in ["/run/netns", "/run/vendbox/uids"] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok) {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.contains(name) || text.ends_with(&format!("/{name}")) {
                traces.push(format!("{dir}/{file}"));
            }
        }
    }
    for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().filter_map(Result::ok) {
        for instance in std::fs::read_dir(controller.path().join("vendbox")).into_iter().flatten().flatten() {
            if instance.path().join(name).exists() {
                traces.push(instance.path().join(name).display().to_string());
            }
        }
    }
    traces
}

/// Warm slots (the slow half of a box's start, made ahead): a box bought while a slot of its
/// kind is ready starts from it, keeping the slot's held bubblewrap as its outermost process,
/// and is then the box it would have been cold: its own limits (not the slot's), its disk
/// bound, its cgroups, namespace and link named after it, egress reaching the internet and
/// nothing the policy refuses; a box without egress has no network. Ended, it leaves nothing;
/// and a closed pool leaves nothing of its slots on the host.
#[tokio::test]
async fn a_box_started_from_a_warm_slot_is_the_box_it_would_have_been_cold() {
    use vendbox_box::{Backend as _, BoxId, BoxSpec, Limits};
    if !supported() {
        return;
    }
    let world = World::build();
    let data = tempfile::tempdir().unwrap();
    let _cleanup = boxhost::Cleanup::new(data.path().to_path_buf());
    let mut backend = boxhost::backend_for(data.path()).with_warm(1);
    let egress = vendbox_box::local::EgressConfig {
        resolvers: vec![PUBLIC_DNS.parse().unwrap()],
        ..vendbox_box::local::EgressConfig::default()
    };
    backend.enable_egress(egress).await.unwrap();
    let spec = |id: &str, egress: bool, limits: Limits| BoxSpec {
        id: BoxId::new(id).unwrap(),
        image: "host".into(),
        limits,
        egress,
        pod: None,
    };
    let first = Limits { vcpu: 1, memory_mb: 256, disk_mb: 64, pids: 128 };
    let other = Limits { vcpu: 1, memory_mb: 384, disk_mb: 48, pids: 96 };

    // The first box of each kind starts cold; a slot of its kind is made after it.
    let cold = spec("cold-out", true, first);
    backend.create(&cold).await.unwrap();
    let slots = warm_slots(&backend, 1).await;
    assert_eq!(slots.len(), 1, "{slots:?}");
    let (slot, slot_pid) = slots[0].clone();

    let warm = spec("warm-out", true, other);
    backend.create(&warm).await.unwrap();
    assert!(
        backend.pids(&warm.id).contains(&i32::try_from(slot_pid).unwrap()),
        "box {} did not start from slot {slot} (pid {slot_pid}): its pids are {:?}",
        warm.id,
        backend.pids(&warm.id)
    );
    // Its own limits, written over the slot's.
    assert_eq!(backend.pids_limit(&warm.id).map(|(max, _)| max), Some(96));
    assert_eq!(run_in(&backend, &warm.id, "df -B1M --output=size /root | tail -1").await.trim(), "48");
    // Its network is named after it, and its policy is the box's.
    let traces = backend.leaves_traces(&warm.id);
    assert!(traces.iter().any(|t| t.starts_with("the network namespace")), "{traces:?}");
    assert!(traces.iter().any(|t| t.starts_with("the interface")), "{traces:?}");
    let text = run_in(&backend, &warm.id, &format!("curl -sS -m 5 http://{NAME}/hello.txt")).await;
    assert_eq!(text, "hello from the public internet\n");
    for url in [format!("http://{PRIVATE}/secret.txt"), format!("http://{METADATA}/latest/meta-data/")] {
        assert!(!reaches_from(&backend, &warm.id, &url).await, "the warm box reached {url}");
    }
    assert!(!world.private_log().contains("secret.txt"), "the private server was reached");
    // Nothing is left under the slot's name.
    assert!(slot_traces(&slot).is_empty(), "slot {slot}: {:?}", slot_traces(&slot));

    // Without egress: a slot of that kind, and a box from it with no network but loopback.
    let offline = spec("cold-off", false, first);
    backend.create(&offline).await.unwrap();
    let slots = warm_slots(&backend, 2).await;
    let warm_offline = spec("warm-off", false, other);
    backend.create(&warm_offline).await.unwrap();
    let pids = backend.pids(&warm_offline.id);
    let started_warm = slots.iter().any(|(_, pid)| pids.contains(&i32::try_from(*pid).unwrap()));
    assert!(started_warm, "the box without egress did not start warm: {pids:?}, slots {slots:?}");
    let links = run_in(&backend, &warm_offline.id, "tail -n +3 /proc/net/dev | cut -d: -f1").await;
    assert_eq!(links.split_whitespace().collect::<Vec<_>>(), ["lo"]);

    for b in [&cold, &warm, &offline, &warm_offline] {
        backend.destroy(&b.id).await.unwrap();
        assert!(backend.leaves_traces(&b.id).is_empty(), "{}: {:?}", b.id, backend.leaves_traces(&b.id));
    }
    // Closed (as when vendbox stops), the pool leaves nothing of its slots.
    let slots = warm_slots(&backend, 2).await;
    backend.close().await;
    assert!(backend.warm_slots().is_empty());
    for (name, pid) in slots {
        assert!(slot_traces(&name).is_empty(), "slot {name}: {:?}", slot_traces(&name));
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "slot {name}'s bubblewrap {pid} still runs");
    }
    assert!(backend.warm_leftovers().is_empty(), "{:?}", backend.warm_leftovers());
}
