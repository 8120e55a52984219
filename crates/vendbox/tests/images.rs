//! Boxes from a built image (`debian-12`) with the real binary: a writable overlay root that no
//! box can carry to the image or to another box, a disk that is not memory and stops at its
//! size, and a disk that outlives vendbox and the box's processes (a simulated reboot).
//!
//! The image is built once per machine and recipe (`vendbox image build debian-12` under a lock,
//! in `/var/cache/vendbox-test`), and every test's data directory links to it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod boxhost;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use boxhost::{Bought, BoxHost};
use serde_json::json;
use vendbox_box::BoxId;

/// Debian boxes for tests: one with the issue's sizes (512 MiB of memory, a 4 GiB disk) and one
/// small. No egress: these tests need no network.
const DEBIAN_CATALOG: &str = r#"
[[offers]]
id = "test-debian"
kind = "sandbox"
title = "A Debian box"
resources = { vcpu = 1, memory_mb = 512, disk_gb = 4 }
duration = { rule = "range", min_minutes = 1, max_minutes = 60 }
actions = { rule = "unlimited" }
images = ["debian-12"]
default_image = "debian-12"
price = {}

[[offers]]
id = "test-debian-small"
kind = "sandbox"
title = "A small Debian box"
resources = { vcpu = 1, memory_mb = 256, disk_gb = 1 }
duration = { rule = "range", min_minutes = 1, max_minutes = 60 }
actions = { rule = "unlimited" }
images = ["debian-12"]
default_image = "debian-12"
price = {}
"#;

/// Where the shared image lives: a data directory of its own, keyed by the recipe.
fn image_cache() -> PathBuf {
    let recipe = vendbox_box::image::Recipe::named("debian-12").unwrap();
    let root = std::env::var_os("VENDBOX_TEST_IMAGE_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/vendbox-test"), PathBuf::from);
    root.join(format!("debian-12-{}", recipe.key()))
}

/// The `debian-12` image, built once (under `flock`, so that the test processes nextest runs
/// at once wait for one build); the images directory that holds it.
fn shared_images() -> Option<PathBuf> {
    if !boxhost::boxes_supported() {
        return None;
    }
    for tool in ["mmdebstrap", "flock", "dpkg-deb", "mkfs.ext4", "losetup"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            support::requirement_missing(&format!("image tests need `{tool}`"));
            return None;
        }
    }
    let cache = image_cache();
    std::fs::create_dir_all(&cache).unwrap();
    let images = cache.join("images");
    if !images.join("debian-12").join("image.json").is_file() {
        let script = format!(
            "test -f '{images}/debian-12/image.json' || '{bin}' image build debian-12 --data-dir '{cache}'",
            images = images.display(),
            bin = support::BIN,
            cache = cache.display()
        );
        let out =
            Command::new("flock").arg(cache.join("build.lock")).args(["sh", "-c", &script]).output().unwrap();
        assert!(
            out.status.success(),
            "building debian-12 failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(images)
}

/// A vendbox selling Debian boxes, its data directory linked to the shared image.
fn debian_host() -> Option<BoxHost> {
    let images = shared_images()?;
    BoxHost::start_prepared(DEBIAN_CATALOG, &[], |state| {
        std::os::unix::fs::symlink(&images, state.join("images")).unwrap();
    })
}

async fn buy(host: &BoxHost, offer: &str) -> Bought {
    host.buy_with(&json!({ "offer": offer, "minutes": 30 })).await
}

/// A Debian package with one program, made with `dpkg-deb` in `dir`.
fn build_deb(dir: &Path) -> Vec<u8> {
    let root = dir.join("pkg");
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        "Package: vendbox-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: vendbox tests <tests@invalid>\nDescription: says hello\n",
    )
    .unwrap();
    let program = root.join("usr/bin/vendbox-hello");
    std::fs::write(&program, "#!/bin/sh\necho hello from a package\n").unwrap();
    Command::new("chmod").arg("755").arg(&program).status().unwrap();
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(dir.join("hello.deb"))
        .output()
        .unwrap();
    assert!(out.status.success(), "dpkg-deb: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(dir.join("hello.deb")).unwrap()
}

/// A pure-Python wheel (a zip with the dist-info pip reads), made with the host's Python.
fn build_wheel(dir: &Path) -> Vec<u8> {
    let wheel = dir.join("vendbox_wheel-1.0-py3-none-any.whl");
    let script = r#"
import base64, hashlib, sys, zipfile
files = {
    "vendbox_wheel/__init__.py": "GREETING = 'hello from a wheel'\n",
    "vendbox_wheel-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: vendbox-wheel\nVersion: 1.0\n",
    "vendbox_wheel-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: vendbox-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for name, text in files.items():
        z.writestr(name, text)
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append("vendbox_wheel-1.0.dist-info/RECORD,,")
    z.writestr("vendbox_wheel-1.0.dist-info/RECORD", "\n".join(record) + "\n")
"#;
    let out = Command::new("python3").args(["-c", script]).arg(&wheel).output().unwrap();
    assert!(out.status.success(), "making the wheel: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(&wheel).unwrap()
}

async fn upload(host: &BoxHost, b: &Bought, path: &str, bytes: Vec<u8>) {
    let url = host.url(&format!("/v1/boxes/{}/files?path={path}", b.id));
    let put = host.http.put(&url).bearer_auth(&b.token).body(bytes).send().await.unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
}

#[tokio::test]
async fn a_debian_box_installs_packages_and_wheels_and_writes_its_root_which_no_other_box_sees() {
    let Some(host) = debian_host() else { return };
    let a = buy(&host, "test-debian-small").await;
    let b = buy(&host, "test-debian-small").await;

    // It is Debian 12 with the tools agents expect, and root owns its root.
    let out = host.ok(&a, ". /etc/os-release; echo $VERSION_CODENAME; id -u; stat -c %u /usr/bin /etc").await;
    assert_eq!(out, "bookworm\n0\n0\n0\n");
    host.ok(&a, "command -v bash curl git python3 pip3 ps ip less nano && python3 -m venv /tmp/venv").await;

    // apt and dpkg install a package the test built; pip installs a local wheel; /usr/local,
    // /etc and /opt take files.
    let dir = tempfile::tempdir().unwrap();
    upload(&host, &a, "/root/hello.deb", build_deb(dir.path())).await;
    upload(&host, &a, "/root/vendbox_wheel-1.0-py3-none-any.whl", build_wheel(dir.path())).await;
    let (status, out) = host.sh(&a, "apt-get install -y /root/hello.deb 2>&1", 300).await;
    assert_eq!((status, out["exit_code"].as_i64()), (200, Some(0)), "{out}");
    assert_eq!(
        host.ok(&a, "vendbox-hello; dpkg -s vendbox-hello | grep Status").await,
        "hello from a package\nStatus: install ok installed\n"
    );
    host.ok(&a, "dpkg -r vendbox-hello && dpkg -i /root/hello.deb && vendbox-hello").await;
    let (status, out) =
        host.sh(&a, "pip install --no-index /root/vendbox_wheel-1.0-py3-none-any.whl 2>&1", 300).await;
    assert_eq!((status, out["exit_code"].as_i64()), (200, Some(0)), "{out}");
    assert_eq!(
        host.ok(&a, "python3 -c 'import vendbox_wheel; print(vendbox_wheel.GREETING)'").await,
        "hello from a wheel\n"
    );
    host.ok(
        &a,
        "echo local > /usr/local/bin/mine && echo etc > /etc/mine && mkdir -p /opt/mine && echo opt > /opt/mine/file \
         && echo changed >> /etc/passwd && rm /usr/bin/less && echo replaced > /usr/bin/curl",
    )
    .await;

    // The other box from the same image sees none of it, and has what `a` removed or replaced.
    let out = host
        .ok(&b, "ls /usr/local/bin/mine /etc/mine /opt/mine /usr/bin/vendbox-hello 2>&1 | wc -l; command -v less; grep -c changed /etc/passwd || true; curl --version | head -c 4")
        .await;
    assert_eq!(out, "4\n/usr/bin/less\n0\ncurl", "box b sees box a's writes");
    let (_, out) =
        host.sh(&b, "python3 -c 'import vendbox_wheel' 2>&1; dpkg -s vendbox-hello 2>&1", 30).await;
    assert!(out["stdout"].as_str().unwrap().contains("No module named 'vendbox_wheel'"), "{out}");
    assert!(out["stdout"].as_str().unwrap().contains("is not installed"), "{out}");

    // The image itself is untouched.
    let rootfs = image_cache().join("images/debian-12/rootfs");
    assert!(!rootfs.join("usr/local/bin/mine").exists());
    assert!(!rootfs.join("etc/mine").exists());
    assert!(rootfs.join("usr/bin/less").exists());
    assert!(!std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap().contains("changed"));
    assert!(std::fs::read(rootfs.join("usr/bin/curl")).unwrap().len() > 1000);
}

#[tokio::test]
async fn a_box_cannot_reach_the_image_below_it_or_another_box_disk() {
    let Some(host) = debian_host() else { return };
    let a = buy(&host, "test-debian-small").await;
    let b = buy(&host, "test-debian-small").await;
    host.ok(&b, "echo secret-of-b > /root/secret").await;
    let backend = host.backend();
    let traces = backend.leaves_traces(&BoxId::new(&b.id).unwrap());
    let b_disk =
        traces.iter().find_map(|t| t.strip_prefix("a disk at ")).expect("box b has a disk").to_owned();
    let b_layer =
        traces.iter().find_map(|t| t.strip_prefix("a mount at ")).expect("box b has a layer").to_owned();

    // From box a: the host's paths of box b's layer and disk, the image, and the mount table.
    let probe = format!(
        "for p in '{b_layer}/root/root/secret' '{b_layer}/disk/upper/root/secret' '{b_disk}' '{b_layer}/lower/etc/passwd' \
           /run/vendbox '{images}'; do test -e \"$p\" && echo \"reached $p\"; done; \
         grep -c -e '{b_id}' /proc/self/mountinfo; \
         unshare --mount --map-root-user true 2>&1 && echo mounted; \
         python3 -c \"import ctypes, os; os._exit(ctypes.CDLL(None).mount(b'none', b'/mnt', b'tmpfs', 0, None))\" && echo mounted; \
         mknod /root/disk b 7 0 2>&1 && echo made a device; \
         cat /proc/1/root/root/secret 2>/dev/null; true",
        images = image_cache().join("images").display(),
        b_id = b.id
    );
    let out = host.ok(&a, &probe).await;
    assert!(!out.contains("reached"), "box a reached: {out}");
    assert!(!out.contains("secret-of-b"), "{out}");
    assert!(!out.contains("mounted") && !out.contains("made a device"), "{out}");
    assert!(out.lines().any(|l| l == "0"), "box a's mount table names box b: {out}");

    // Box a's root is not the host's root: it owns its files, and they are owned by a's uid on
    // the host, which cannot read b's /root.
    let a_uid = host.ok(&a, "cat /proc/self/uid_map").await;
    let b_uid = host.ok(&b, "cat /proc/self/uid_map").await;
    assert_ne!(a_uid.split_whitespace().nth(1), b_uid.split_whitespace().nth(1));
    let b_root = std::fs::metadata(format!("{b_layer}/disk/upper/root")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&b_root.permissions()) & 0o077,
        0,
        "b's /root is open"
    );
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&b_root).to_string(),
        b_uid.split_whitespace().nth(1).unwrap()
    );
}

#[tokio::test]
async fn a_disk_is_not_memory_keeps_what_was_written_and_stops_at_its_size() {
    let Some(host) = debian_host() else { return };
    let b = buy(&host, "test-debian").await;
    // 512 MiB of memory, a 4 GiB disk.
    let out = host
        .ok(&b, "df -B1M --output=size / | tail -1; cat /sys/fs/cgroup/memory.max 2>/dev/null || true")
        .await;
    let size_mb: u64 = out.lines().next().unwrap().trim().parse().unwrap();
    assert!((3800..=4096).contains(&size_mb), "the root is {size_mb} MiB");

    // 2 GiB written and read back, equal, in a box with a quarter of that in memory.
    let (status, out) = host
        .sh(
            &b,
            "head -c 2G /dev/urandom | tee /root/big | sha256sum | cut -d' ' -f1; sync; stat -c %s /root/big",
            900,
        )
        .await;
    assert_eq!((status, out["exit_code"].as_i64()), (200, Some(0)), "{out}");
    let written = out["stdout"].as_str().unwrap().to_owned();
    let mut lines = written.lines();
    let sum = lines.next().unwrap().to_owned();
    assert_eq!(lines.next(), Some("2147483648"), "{out}");
    let (_, out) = host.sh(&b, "sha256sum /root/big | cut -d' ' -f1", 900).await;
    assert_eq!(out["stdout"].as_str(), Some(format!("{sum}\n").as_str()), "{out}");

    // Past the disk's size a write fails with ENOSPC, and the box goes on.
    let (_, out) =
        host.sh(&b, "dd if=/dev/zero of=/root/fill bs=1M count=4096 2>&1; echo exit=$?", 900).await;
    let text = out["stdout"].as_str().unwrap();
    assert!(text.contains("No space left on device"), "{out}");
    assert!(!text.contains("exit=0"), "{out}");
    let out = host.ok(&b, "rm /root/fill; echo still here").await;
    assert_eq!(out, "still here\n");
    // The box's memory was never the disk: its cgroup held at most its limit and no process
    // was killed for memory.
    let memory = glob_cgroups(&b.id)
        .into_iter()
        .find(|dir| dir.join("memory.oom_control").is_file() || dir.join("memory.events").is_file())
        .expect("the box has a memory cgroup");
    let events = std::fs::read_to_string(memory.join("memory.oom_control"))
        .or_else(|_| std::fs::read_to_string(memory.join("memory.events")))
        .unwrap();
    assert!(events.lines().any(|l| l == "oom_kill 0"), "{events}");
    let peak = std::fs::read_to_string(memory.join("memory.max_usage_in_bytes"))
        .or_else(|_| std::fs::read_to_string(memory.join("memory.peak")))
        .unwrap();
    let peak: u64 = peak.trim().parse().unwrap();
    assert!(peak <= 512 * 1024 * 1024, "the box held {peak} bytes of memory");
}

#[tokio::test]
async fn a_disk_outlives_vendbox_and_the_box_processes_and_mounts() {
    let Some(mut host) = debian_host() else { return };
    let b = buy(&host, "test-debian-small").await;
    host.ok(&b, "echo kept > /root/kept; echo tool > /usr/local/bin/kept; sync; (sleep 1000 &) ; true").await;
    // The box leaves its disk full: it must still come back, with a root it can write again.
    let (_, out) =
        host.sh(&b, "dd if=/dev/zero of=/root/fill bs=1M 2>&1; sync; df -k / | tail -1", 300).await;
    assert!(out["stdout"].as_str().unwrap().contains("No space left"), "{out}");
    let id = BoxId::new(&b.id).unwrap();
    let backend = host.backend();

    // vendbox is killed, then everything of the box but its disk goes, as a reboot would take it.
    host.crash();
    simulate_reboot(&backend, &id);
    let traces = backend.leaves_traces(&id);
    assert!(traces.iter().all(|t| t.starts_with("a disk at ")), "the reboot left {traces:?}");

    host.restart();
    let out = support::eventually(Duration::from_mins(1), "the box to come back from its disk", async || {
        let (status, out) =
            host.sh(&b, "cat /root/kept /usr/local/bin/kept; pgrep -c sleep || true", 30).await;
        if status == 200 && out["exit_code"] == 0 {
            Ok(out["stdout"].as_str().unwrap().to_owned())
        } else {
            Err(out)
        }
    })
    .await;
    // The files are there; the processes are not.
    assert_eq!(out, "kept\ntool\n0\n");
    assert_eq!(host.ok(&b, "rm /root/fill && echo more > /root/more && cat /root/more").await, "more\n");

    // Ended, the box leaves nothing, its disk included.
    let (status, _) = host.end(&b).await;
    assert_eq!(status, 200);
    host.assert_gone_within(&b.id, Duration::from_secs(10));
}

/// What a host reboot takes from a box: every process (killed by pid), every mount under its
/// layer, its layer and cgroups, and its uid claim.
fn simulate_reboot(backend: &vendbox_box::local::LocalBackend, id: &BoxId) {
    for pid in backend.pids(id) {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !backend.pids(id).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the box's processes did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its layer's mounts (the overlay, the disk, the image's idmapped view, the tmpfs), children
    // first.
    for trace in backend.leaves_traces(id) {
        if let Some(layer) = trace.strip_prefix("a mount at ") {
            let out = Command::new("umount").arg("--recursive").arg(layer).output().unwrap();
            assert!(out.status.success(), "umount {layer}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(id.as_str()), "mounts of the box remain: {mountinfo}");
    for trace in backend.leaves_traces(id) {
        if let Some(dir) = trace.strip_prefix("the directory ") {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
    for cgroup in glob_cgroups(id.as_str()) {
        let _ = std::fs::remove_dir(cgroup);
    }
    for entry in std::fs::read_dir("/run/vendbox/uids").unwrap().filter_map(Result::ok) {
        if std::fs::read_to_string(entry.path()).is_ok_and(|owner| owner.ends_with(&format!("/{id}"))) {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
}

/// The box's cgroup directories, in every hierarchy.
fn glob_cgroups(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.filter_map(Result::ok) {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            let text = path.to_string_lossy();
            if text.ends_with(&format!("/{id}")) && text.contains("/vendbox/") {
                found.push(path);
            } else if text.matches('/').count() < 7 {
                pending.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn an_offer_whose_image_the_host_lacks_is_listed_unavailable_and_refused_before_payment() {
    // No image built in this data directory; the offers are priced, so that a purchase that got
    // past the refusal would ask for a payment (402).
    let catalog = r#"
[[offers]]
id = "paid-debian"
kind = "machine"
title = "A Debian machine"
resources = { vcpu = 1, memory_mb = 256, disk_gb = 1 }
duration = { rule = "range", min_minutes = 1, max_minutes = 60 }
images = ["debian-12"]
default_image = "debian-12"
price = { base = "1" }

[[offers]]
id = "paid-choice"
kind = "machine"
title = "A machine of either image"
resources = { vcpu = 1, memory_mb = 256, disk_gb = 1 }
duration = { rule = "range", min_minutes = 1, max_minutes = 60 }
images = ["host", "debian-12"]
default_image = "host"
price = { base = "1" }
"#;
    let Some(host) = BoxHost::start_with_catalog(catalog) else { return };
    let offers: serde_json::Value =
        host.http.get(host.url("/v1/offers")).send().await.unwrap().json().await.unwrap();
    let offer =
        |id: &str| offers["offers"].as_array().unwrap().iter().find(|o| o["id"] == id).unwrap().clone();
    let debian = offer("paid-debian");
    assert_eq!(debian["available"], false, "{debian}");
    assert!(
        debian["unavailable_reason"].as_str().unwrap().contains("vendbox image build debian-12"),
        "{debian}"
    );
    let choice = offer("paid-choice");
    assert_eq!(
        (choice["available"].clone(), choice["images"].clone()),
        (json!(true), json!(["host"])),
        "{choice}"
    );

    let (status, body) = host.post("/v1/boxes", None, &json!({ "offer": "paid-debian", "minutes": 5 })).await;
    assert_ne!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "offer_unavailable", "{body}");
    let (status, body) = host
        .post("/v1/boxes", None, &json!({ "offer": "paid-choice", "minutes": 5, "image": "debian-12" }))
        .await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("unsupported_value")), "{body}");
    // The image it still has is for sale: the purchase gets as far as the payment (which this
    // vendbox, without a payee, cannot take).
    let (status, body) = host.post("/v1/boxes", None, &json!({ "offer": "paid-choice", "minutes": 5 })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("payments_unconfigured")), "{body}");
}

#[tokio::test]
async fn a_box_sees_its_own_memory_limit_and_cpus() {
    // Mounted is not enough: the mount of an lxcfs that died answers nothing.
    if let Err(e) = std::fs::read_to_string("/var/lib/lxcfs/proc/meminfo") {
        support::requirement_missing(&format!(
            "lxcfs must run at /var/lib/lxcfs (scripts/setup.sh starts it; its log is /run/lxcfs.log): {e}"
        ));
        return;
    }
    let Some(host) = debian_host() else { return };
    let b = buy(&host, "test-debian").await;
    // 512 MiB of memory: `free` and /proc/meminfo say so, not the host's.
    let out = host.ok(&b, "free -m | awk '/^Mem:/ {print $2}'; grep MemTotal /proc/meminfo").await;
    let total_mb: u64 = out.lines().next().unwrap().trim().parse().unwrap();
    if !(500..=512).contains(&total_mb) {
        // Say why, for a failure on a machine one cannot log in to.
        let inside = host
            .ok(&b, "cat /proc/self/cgroup; grep -E ' /proc/(meminfo|cpuinfo) ' /proc/self/mountinfo; true")
            .await;
        let lxcfs = std::fs::read_to_string("/var/lib/lxcfs/proc/meminfo")
            .map(|m| m.lines().next().map(str::to_owned));
        let log = std::fs::read_to_string("/run/lxcfs.log").unwrap_or_default();
        panic!("free says {out}\nin the box: {inside}\nlxcfs on the host: {lxcfs:?}\nlxcfs log: {log}");
    }
    // One vcpu: `nproc` (its CPU affinity, from the box's cpuset) says 1.
    assert_eq!(host.ok(&b, "nproc").await, "1\n");
    // A box of the host image too.
    let h = host.buy("test-box", 10).await;
    let out = host.ok(&h, "grep MemTotal /proc/meminfo; nproc").await;
    assert_eq!(out.split_whitespace().nth(1), Some("262144"), "{out}");
    assert!(out.ends_with("\n1\n"), "{out}");
}

/// An OCI image layout at `dir/oci` (tag `t`) of two layers: a tiny userland (the host's C
/// library, loader and shell, enough for boxd and `sh`) with `/etc/kept` and `/etc/doomed`,
/// then a layer that deletes `/etc/doomed` (a whiteout) and adds `/etc/added`.
fn build_oci_layout(dir: &Path) -> PathBuf {
    let layout = support::oci_layout_of(dir, "oci", |rootfs| {
        support::tiny_userland(rootfs);
        std::fs::write(rootfs.join("etc/kept"), "kept\n").unwrap();
        std::fs::write(rootfs.join("etc/doomed"), "doomed\n").unwrap();
    });
    // The second layer: a whiteout and a new file.
    let bundle = dir.join("oci-bundle");
    std::fs::remove_file(bundle.join("rootfs/etc/doomed")).unwrap();
    std::fs::write(bundle.join("rootfs/etc/added"), "added\n").unwrap();
    support::must(
        "umoci",
        &["repack", "--image", &format!("{}:t", layout.display()), bundle.to_str().unwrap()],
    );
    layout
}

#[tokio::test]
async fn oci_layouts_and_docker_archives_are_imported_with_their_whiteouts() {
    if !boxhost::boxes_supported() {
        return;
    }
    for tool in ["umoci", "skopeo"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            support::requirement_missing(&format!("image imports need `{tool}`"));
            return;
        }
    }
    let work = tempfile::tempdir().unwrap();
    let layout = build_oci_layout(work.path());
    let docker = work.path().join("docker.tar");
    support::must(
        "skopeo",
        &[
            "copy",
            &format!("oci:{}:t", layout.display()),
            &format!("docker-archive:{}:imported:t", docker.display()),
        ],
    );
    let catalog = ["oci-test", "docker-test"]
        .map(|image| {
            format!(
                "[[images]]\nid = \"{image}\"\nname = \"{image}\"\n\n[[offers]]\nid = \"{image}-box\"\nkind = \"sandbox\"\n\
                 title = \"A box of {image}\"\nresources = {{ vcpu = 1, memory_mb = 128, disk_gb = 1 }}\n\
                 duration = {{ rule = \"range\", min_minutes = 1, max_minutes = 60 }}\nactions = {{ rule = \"unlimited\" }}\n\
                 images = [\"{image}\"]\ndefault_image = \"{image}\"\nprice = {{}}\n"
            )
        })
        .join("\n");
    let Some(host) = BoxHost::start_prepared(&catalog, &[], |state| {
        for (source, name) in [(&layout, "oci-test"), (&docker, "docker-test")] {
            let out = Command::new(support::BIN)
                .args(["image", "import"])
                .arg(source)
                .args(["--name", name, "--data-dir"])
                .arg(state)
                .output()
                .unwrap();
            assert!(out.status.success(), "importing {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let out =
            Command::new(support::BIN).args(["image", "list", "--data-dir"]).arg(state).output().unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(list.contains("oci-test") && list.contains("docker-test"), "{list}");
    }) else {
        return;
    };
    let rm = |image: &str| {
        Command::new(support::BIN)
            .args(["image", "rm", image, "--data-dir"])
            .arg(host.data_dir())
            .output()
            .unwrap()
    };
    for image in ["oci-test", "docker-test"] {
        let b = buy(&host, &format!("{image}-box")).await;
        let out = host.ok(&b, "cat /etc/kept /etc/added; ls /etc/doomed 2>/dev/null || echo gone").await;
        assert_eq!(out, "kept\nadded\ngone\n", "{image}");
        // An image a box stands on is not removed; once the box is gone it is.
        let out = rm(image);
        assert!(!out.status.success(), "{image} was removed from under box {}", b.id);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&b.id),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(host.end(&b).await.0, 200);
        let out = rm(image);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!host.data_dir().join("images").join(image).exists());
    }
}

#[tokio::test]
async fn an_image_imported_while_vendbox_runs_is_sold_without_a_restart_and_one_removed_is_not() {
    if !boxhost::boxes_supported() {
        return;
    }
    if Command::new("sh").args(["-c", "command -v umoci"]).output().map_or(true, |o| !o.status.success()) {
        support::requirement_missing("image imports need `umoci`");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = support::oci_layout_of(work.path(), "live", |rootfs| {
        support::tiny_userland(rootfs);
        std::fs::write(rootfs.join("etc/live"), "from the live image\n").unwrap();
    });
    let catalog = r#"
[[images]]
id = "live-test"
name = "An image made while vendbox runs"

[[offers]]
id = "live-box"
kind = "sandbox"
title = "A box of an image made later"
resources = { vcpu = 1, memory_mb = 128, disk_gb = 1 }
duration = { rule = "range", min_minutes = 1, max_minutes = 60 }
actions = { rule = "unlimited" }
images = ["live-test"]
default_image = "live-test"
price = {}
"#;
    let Some(host) = BoxHost::start_with_catalog(catalog) else { return };
    let offer = || async {
        let offers: serde_json::Value =
            host.http.get(host.url("/v1/offers")).send().await.unwrap().json().await.unwrap();
        offers["offers"].as_array().unwrap().iter().find(|o| o["id"] == "live-box").unwrap().clone()
    };
    let sandboxes = || async {
        let index: serde_json::Value =
            host.http.get(host.url("/")).send().await.unwrap().json().await.unwrap();
        index["sells"]["sandbox"]["offers"].as_u64().unwrap()
    };
    // Until the image comes, the offer says why it is not for sale, and is refused.
    let wait_for = |available: bool| {
        let offer = &offer;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let now = offer().await;
                if now["available"] == available {
                    return now;
                }
                assert!(std::time::Instant::now() < deadline, "within 10 s the offer is still {now}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let missing = offer().await;
    assert_eq!(missing["available"], false, "{missing}");
    assert!(
        missing["unavailable_reason"]
            .as_str()
            .unwrap()
            .contains("vendbox image import FILE --name live-test"),
        "{missing}"
    );
    let without = sandboxes().await;
    let (status, body) = host.post("/v1/boxes", None, &json!({ "offer": "live-box", "minutes": 5 })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("offer_unavailable")), "{body}");

    // The operator imports it with vendbox running: the offer is for sale without a restart.
    let pid = host.vendbox.as_ref().unwrap().child.id();
    let out = Command::new(support::BIN)
        .args(["image", "import"])
        .arg(&layout)
        .args(["--name", "live-test", "--data-dir"])
        .arg(host.data_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "importing: {}", String::from_utf8_lossy(&out.stderr));
    let sold = wait_for(true).await;
    assert!(sold.get("unavailable_reason").is_none(), "{sold}");
    assert_eq!(sandboxes().await, without + 1);
    let b = buy(&host, "live-box").await;
    assert_eq!(host.ok(&b, "cat /etc/live").await, "from the live image\n");

    // An image a box stands on is not removed, and stays for sale.
    let rm = || {
        Command::new(support::BIN)
            .args(["image", "rm", "live-test", "--data-dir"])
            .arg(host.data_dir())
            .output()
            .unwrap()
    };
    let out = rm();
    assert!(!out.status.success(), "the image was removed from under box {}", b.id);
    assert_eq!(offer().await["available"], true);
    assert_eq!(host.ok(&b, "cat /etc/live").await, "from the live image\n");
    // Once the box is gone, it is removed, and the offer is no longer for sale.
    assert_eq!(host.end(&b).await.0, 200);
    let out = rm();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gone = wait_for(false).await;
    assert!(gone["unavailable_reason"].as_str().unwrap().contains("no image `live-test`"), "{gone}");
    assert_eq!(sandboxes().await, without);
    let (status, body) = host.post("/v1/boxes", None, &json!({ "offer": "live-box", "minutes": 5 })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("offer_unavailable")), "{body}");
    // The same vendbox all along.
    assert_eq!(host.vendbox.as_ref().unwrap().child.id(), pid);
}

#[test]
fn an_imported_image_cannot_make_vendbox_write_outside_it() {
    if Command::new("sh").args(["-c", "command -v umoci"]).output().map_or(true, |o| !o.status.success()) {
        support::requirement_missing("image imports need `umoci`");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let victim = work.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let state = work.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let import = |layout: &Path, name: &str| {
        Command::new(support::BIN)
            .args(["image", "import"])
            .arg(layout)
            .args(["--name", name, "--data-dir"])
            .arg(&state)
            .output()
            .unwrap()
    };

    // An image whose /etc is a link to a host directory: refused, and the directory untouched.
    let etc_link = support::oci_layout_of(work.path(), "etc-link", |rootfs| {
        std::os::unix::fs::symlink(&victim, rootfs.join("etc")).unwrap();
    });
    let out = import(&etc_link, "etc-link");
    assert!(!out.status.success(), "an image whose /etc is a link was imported");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("link"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0, "vendbox wrote through the image's /etc");
    assert!(!state.join("images/etc-link").exists());

    // Files vendbox writes that are links to the host: replaced, never followed.
    let file_links = support::oci_layout_of(work.path(), "file-links", |rootfs| {
        std::fs::create_dir_all(rootfs.join("etc/apt")).unwrap();
        for name in ["hostname", "hosts", "resolv.conf", "pip.conf"] {
            std::os::unix::fs::symlink(victim.join(name), rootfs.join("etc").join(name)).unwrap();
        }
        std::os::unix::fs::symlink(&victim, rootfs.join("etc/apt/apt.conf.d")).unwrap();
    });
    let out = import(&file_links, "file-links");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0, "vendbox wrote through a link of the image");
    // The apt directory that is a link makes the import fail; the rest were replaced in place.
    assert!(!out.status.success());
    let hostname = support::oci_layout_of(work.path(), "hostname-link", |rootfs| {
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::os::unix::fs::symlink(victim.join("hostname"), rootfs.join("etc/hostname")).unwrap();
    });
    let out = import(&hostname, "hostname-link");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    let written = state.join("images/hostname-link/rootfs/etc/hostname");
    assert!(!std::fs::symlink_metadata(&written).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(written).unwrap(), "box\n");
}

#[tokio::test]
async fn a_disk_is_kept_for_the_operator_grace_after_its_lease_ends_then_deleted() {
    let Some(images) = shared_images() else { return };
    let Some(host) =
        BoxHost::start_prepared(DEBIAN_CATALOG, &[("VENDBOX_BOXES__DISK_GRACE_SECS", "3")], |state| {
            std::os::unix::fs::symlink(&images, state.join("images")).unwrap();
        })
    else {
        return;
    };
    let b = buy(&host, "test-debian-small").await;
    host.ok(&b, "echo precious > /root/work").await;
    let (status, _) = host.end(&b).await;
    assert_eq!(status, 200);
    host.assert_gone_within(&b.id, Duration::from_secs(10));
    // Its disk waits out of sight, then goes (the sweep, every 10 s, deletes it).
    let ended = host.data_dir().join("boxes/.ended");
    let kept = || std::fs::read_dir(&ended).map_or(0, |entries| entries.flatten().count());
    assert_eq!(kept(), 1, "the disk was not kept after the lease ended");
    support::eventually(Duration::from_secs(30), "the disk to go after its grace", async || {
        if kept() == 0 { Ok(()) } else { Err(format!("{} disk(s) kept", kept())) }
    })
    .await;
}

/// The warm slots' disks (see `vendbox_box::local`'s `warm`), made ahead with the size of the
/// last image box's: a box of that size starts on a fresh one of its own (the slot's disk
/// becomes the box's, empty of what any other box wrote, its root idmapped to the box), and a
/// box of another size gets a disk of its own size, not the slot's.
#[tokio::test]
async fn a_box_from_a_warm_slot_gets_a_fresh_disk_of_its_own_size() {
    let Some(host) = debian_host() else { return };
    let boxes_dir = host.data_dir().join("boxes");
    let slot_disks = || -> Vec<(String, u64)> {
        std::fs::read_dir(&boxes_dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("_warm"))
            .filter_map(|name| {
                let len = std::fs::metadata(boxes_dir.join(&name).join("disk.img")).ok()?.len();
                Some((name, len))
            })
            .collect()
    };
    let a = buy(&host, "test-debian-small").await;
    host.ok(&a, "echo from-a > /root/a && echo from-a > /usr/local/bin/a").await;
    let ready = support::eventually(Duration::from_secs(30), "a warm slot with a disk", async || {
        let disks = slot_disks();
        if disks.is_empty() { Err("none".to_owned()) } else { Ok(disks) }
    })
    .await;
    assert!(ready.iter().all(|(_, len)| *len == 1024 * 1024 * 1024), "{ready:?}");

    let b = buy(&host, "test-debian-small").await;
    let now: Vec<String> = slot_disks().into_iter().map(|(name, _)| name).collect();
    assert!(
        ready.iter().any(|(name, _)| !now.contains(name)),
        "no slot's disk was handed to the box: before {ready:?}, now {now:?}"
    );
    let b_disk = boxes_dir.join(&b.id).join("disk.img");
    assert_eq!(std::fs::metadata(&b_disk).unwrap().len(), 1024 * 1024 * 1024);
    let out = host
        .ok(
            &b,
            "ls /root/a /usr/local/bin/a 2>&1 | wc -l; stat -c %u /root /usr; echo b > /root/b; cat /root/b",
        )
        .await;
    assert_eq!(out, "2\n0\n0\nb\n", "box b's disk is not fresh, or not its own");

    // Another size: a disk of its own size, not the slot's.
    let c = buy(&host, "test-debian").await;
    let c_disk = boxes_dir.join(&c.id).join("disk.img");
    assert_eq!(std::fs::metadata(&c_disk).unwrap().len(), 4 * 1024 * 1024 * 1024);
    let size: u64 = host.ok(&c, "df -B1M --output=size /root | tail -1").await.trim().parse().unwrap();
    assert!((3500..=4096).contains(&size), "box c's disk holds {size} MiB");
    assert_eq!(host.ok(&c, "ls /root").await, "");
    for b in [&a, &b, &c] {
        assert_eq!(host.end(b).await.0, 200);
        host.assert_gone_within(&b.id, Duration::from_secs(10));
    }
}
