//! A vendbox selling free boxes from a test catalog, with the helpers box tests share; on drop
//! it stops vendbox and removes every box, cgroup and directory its data directory had.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vendbox_box::local::{LocalBackend, LocalConfig};

use crate::support::{BIN, Vendbox};

/// Free offers for tests: the H3RETIK packages at price 0, and small boxes of chosen sizes.
pub const FREE_CATALOG: &str = r#"
[[offers]]
id = "h3retik-micro"
price = { base = "0" }

[[offers]]
id = "h3retik-custom"
price = { per_minute = "0", per_action = "0" }

[[offers]]
id = "test-box"
kind = "sandbox"
title = "A small box for tests"
resources = { vcpu = 1, memory_mb = 256, disk_gb = 1 }
duration = { rule = "range", min_minutes = 1, max_minutes = 60 }
actions = { rule = "unlimited" }
images = ["host"]
default_image = "host"
price = {}

[[offers]]
id = "test-roomy"
kind = "sandbox"
title = "A box with more memory than disk"
resources = { vcpu = 1, memory_mb = 2048, disk_gb = 1 }
duration = { rule = "range", min_minutes = 1, max_minutes = 60 }
actions = { rule = "unlimited" }
images = ["host"]
default_image = "host"
price = {}
"#;

/// Whether this machine can run boxes (root and bubblewrap); CI must.
pub fn boxes_supported() -> bool {
    let root =
        std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let bwrap =
        std::process::Command::new("bwrap").arg("--version").output().is_ok_and(|o| o.status.success());
    if !(root && bwrap) {
        crate::support::requirement_missing("boxes need root and bubblewrap");
    }
    root && bwrap
}

/// A vendbox serving [`FREE_CATALOG`].
pub struct BoxHost {
    pub vendbox: Option<Vendbox>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

/// A box bought through the native API.
#[derive(Debug, Clone)]
pub struct Bought {
    pub id: String,
    pub token: String,
}

impl BoxHost {
    pub fn start() -> Option<BoxHost> {
        Self::start_with_catalog("")
    }

    /// A host serving [`FREE_CATALOG`] and then `more` (offers merge by `id`).
    pub fn start_with_catalog(more: &str) -> Option<BoxHost> {
        Self::start_with(more, &[])
    }

    /// A host serving [`FREE_CATALOG`] and `more`, with `env` (configuration overrides).
    pub fn start_with(more: &str, env: &[(&str, &str)]) -> Option<BoxHost> {
        Self::start_prepared(more, env, |_| {})
    }

    /// A host serving [`FREE_CATALOG`] and `more`, with `env`, whose data directory `prepare`
    /// fills before vendbox starts (with the images a test shares, for one).
    pub fn start_prepared(more: &str, env: &[(&str, &str)], prepare: impl FnOnce(&Path)) -> Option<BoxHost> {
        if !boxes_supported() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vendbox.toml"), format!("{FREE_CATALOG}\n{more}")).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        prepare(&dir.path().join("state"));
        let vendbox = Vendbox::start_with(dir.path(), &["--data-dir", "state"], env);
        Some(BoxHost { vendbox: Some(vendbox), dir, http: reqwest::Client::new() })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.vendbox.as_ref().unwrap().url)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// vendbox's local backend for the same data directory (to look at boxes from the host).
    pub fn backend(&self) -> LocalBackend {
        backend_for(&self.data_dir())
    }

    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Stops vendbox and starts it again with `env` (configuration overrides).
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.vendbox = None;
        self.vendbox = Some(Vendbox::start_with(self.dir.path(), &["--data-dir", "state"], env));
    }

    pub fn crash(&mut self) {
        self.vendbox.as_mut().unwrap().crash();
        self.vendbox = None;
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Ends a box (`DELETE /v1/boxes/{id}`); the status and the answer.
    pub async fn end(&self, b: &Bought) -> (u16, Value) {
        let response = self
            .http
            .delete(self.url(&format!("/v1/boxes/{}", b.id)))
            .bearer_auth(&b.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Buys a box of `offer` for `minutes`.
    pub async fn buy(&self, offer: &str, minutes: u32) -> Bought {
        self.buy_with(&json!({ "offer": offer, "minutes": minutes })).await
    }

    /// Buys a box with the `POST /v1/boxes` body `request`.
    pub async fn buy_with(&self, request: &Value) -> Bought {
        let (status, body) = self.post("/v1/boxes", None, request).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["state"], "active", "{body}");
        Bought {
            id: body["id"].as_str().unwrap().to_owned(),
            token: body["token"].as_str().unwrap().to_owned(),
        }
    }

    /// Runs a shell line in the box; the status and the answer.
    pub async fn sh(&self, b: &Bought, line: &str, timeout_seconds: u64) -> (u16, Value) {
        let body = json!({ "command": line, "timeout_seconds": timeout_seconds });
        self.post(&format!("/v1/boxes/{}/exec", b.id), Some(&b.token), &body).await
    }

    /// Runs a shell line that must succeed; its stdout.
    pub async fn ok(&self, b: &Bought, line: &str) -> String {
        let (status, out) = self.sh(b, line, 30).await;
        assert_eq!(status, 200, "{line}: {out}");
        assert_eq!(out["exit_code"], 0, "{line}: {out}");
        out["stdout"].as_str().unwrap().to_owned()
    }

    /// Waits until nothing of box `id` remains on the host.
    pub fn assert_gone_within(&self, id: &str, limit: Duration) {
        let backend = self.backend();
        let id = vendbox_box::BoxId::new(id).unwrap();
        let started = Instant::now();
        loop {
            let traces = backend.leaves_traces(&id);
            if traces.is_empty() {
                return;
            }
            assert!(started.elapsed() < limit, "box {id} still has {traces:?} after {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BoxHost {
    fn drop(&mut self) {
        self.vendbox = None;
        remove_all(&self.data_dir());
    }
}

pub fn backend_for(data_dir: &Path) -> LocalBackend {
    LocalBackend::new(LocalConfig {
        data_dir: data_dir.to_path_buf(),
        boxd: vec![BIN.to_owned(), "boxd".to_owned()],
        run_root: PathBuf::from("/run/vendbox"),
    })
    .unwrap()
}

/// Destroys every box of `data_dir`'s instance (from a thread of its own, so it also works from
/// `Drop` inside an async test).
pub fn remove_all(data_dir: &Path) {
    let data_dir = data_dir.to_path_buf();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async { backend_for(&data_dir).remove_all().await.unwrap() });
    })
    .join()
    .unwrap();
}

/// Removes every box of a data directory when dropped, also when the test fails before its end.
pub struct Cleanup {
    data_dir: PathBuf,
    /// The vendbox serving that data directory, killed first: a live one may be making a warm
    /// slot meanwhile, which the removal would miss.
    vendbox: Option<u32>,
}

impl Cleanup {
    /// Removes every box of `data_dir`, which no vendbox serves by then.
    pub fn new(data_dir: PathBuf) -> Cleanup {
        Cleanup { data_dir, vendbox: None }
    }

    /// Kills the vendbox of pid `vendbox` (the test's own child) and waits until it is dead, then
    /// removes every box of its `data_dir`.
    pub fn after(vendbox: u32, data_dir: PathBuf) -> Cleanup {
        Cleanup { data_dir, vendbox: Some(vendbox) }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Only while that pid is still a vendbox working in this data directory's parent (as a
        // shop's runs): a pid the test let go of may name another process by now.
        let ours = |pid: u32| {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
            cwd.is_some_and(|cwd| Some(cwd.as_path()) == self.data_dir.parent())
        };
        if let Some(pid) = self.vendbox.filter(|pid| ours(*pid)) {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            // Dead once it is a zombie (its parent, the test, reaps it later) or gone.
            let stat = format!("/proc/{pid}/stat");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match std::fs::read_to_string(&stat) {
                    Ok(line) if line.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')) => {
                        break;
                    }
                    Ok(_) => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => break,
                }
            }
        }
        remove_all(&self.data_dir);
    }
}
