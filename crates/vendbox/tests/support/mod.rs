//! Test support shared by the end-to-end tests: the real `vendbox` binary, stopped by its pid.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_vendbox");

/// Called when a test's requirement is missing: the test fails, naming it, unless
/// `VENDBOX_TEST_SKIP` is set outside CI (an explicit opt-out); then it says so on stderr and
/// the caller skips. Under `CI` a skip is never allowed.
pub fn requirement_missing(what: &str) {
    let opted_out = std::env::var_os("VENDBOX_TEST_SKIP").is_some() && std::env::var_os("CI").is_none();
    assert!(
        opted_out,
        "{what}: scripts/setup.sh installs what the tests need (VENDBOX_TEST_SKIP=1 skips such tests outside CI)"
    );
    eprintln!("skipped (VENDBOX_TEST_SKIP): {what}");
}

/// A fresh ed25519 key pair made by `ssh-keygen` in `dir`: the private key's path and the
/// public line.
pub fn ssh_keypair(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_owned())
}

/// A running `vendbox serve`, stopped (by its pid) when dropped.
pub struct Vendbox {
    pub child: Child,
    pub url: String,
    /// The SSH gateway's address, when it runs.
    pub ssh: Option<String>,
}

impl Vendbox {
    pub fn start(cwd: &Path, args: &[&str]) -> Vendbox {
        Self::start_with(cwd, args, &[])
    }

    /// `vendbox serve` with `env` set (configuration overrides, secrets, faults).
    pub fn start_with(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Vendbox {
        let mut child = Command::new(BIN)
            .current_dir(cwd)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("VENDBOX_DATABASE_URL")
            .env_remove("VENDBOX_FAULTS")
            .env("VENDBOX_LOG", "warn")
            .env("VENDBOX_SSH__LISTEN", "127.0.0.1:0")
            // No box of a test reaches a network unless the test built that network itself
            // (tests/egress.rs): this machine's own network is out of bounds.
            .env("VENDBOX_EGRESS__ENABLED", "false")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("vendbox listening on ") {
                    let _ = tx.send((false, url.to_owned()));
                }
                if let Some(addr) = line.strip_prefix("vendbox ssh gateway on ") {
                    let _ = tx.send((true, addr.to_owned()));
                }
            }
        });
        // The gateway's line, when it runs, comes before the `listening` line.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ssh = None;
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left).expect("vendbox printed its address") {
                (true, addr) => ssh = Some(addr),
                (false, url) => break url,
            }
        };
        Vendbox { child, url, ssh }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < limit, "vendbox did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it with SIGKILL, as a crash would, and reaps it.
    pub fn crash(&mut self) {
        self.signal("-KILL");
        let _ = self.wait(Duration::from_secs(10));
    }

    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }
}

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(50);

/// Waits for an effect that is observable but not announced: runs `probe` until it gives `Ok`,
/// for at most `within`, and returns what it gave. Past the deadline it panics naming `what` (the
/// effect waited for, as in "waiting for …") and the last thing `probe` saw (its `Err`).
pub async fn eventually<T, E: std::fmt::Display>(
    within: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let seen = match probe().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; last seen: {seen}"
        );
        tokio::time::sleep(POLL).await;
    }
}

impl Drop for Vendbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a host tool that must succeed.
pub fn must(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The host's C library, loader and shell in `rootfs`: enough for boxd and `sh`.
pub fn tiny_userland(rootfs: &Path) {
    for dir in ["bin", "lib/x86_64-linux-gnu", "lib64", "etc", "root", "tmp", "proc", "dev"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    for lib in ["libc.so.6", "libm.so.6", "libgcc_s.so.1"] {
        let target = rootfs.join("lib/x86_64-linux-gnu");
        must("cp", &["-L", &format!("/lib/x86_64-linux-gnu/{lib}"), target.to_str().unwrap()]);
    }
    must("cp", &["-L", "/lib64/ld-linux-x86-64.so.2", rootfs.join("lib64").to_str().unwrap()]);
    for program in ["sh", "cat", "ls"] {
        must("cp", &["-L", &format!("/bin/{program}"), rootfs.join("bin").to_str().unwrap()]);
    }
}

/// An OCI layout at `dir/<name>` (tag `t`) of one layer whose root `fill` makes.
pub fn oci_layout_of(dir: &Path, name: &str, fill: impl FnOnce(&Path)) -> PathBuf {
    let layout = dir.join(name);
    let bundle = dir.join(format!("{name}-bundle"));
    let image = format!("{}:t", layout.display());
    must("umoci", &["init", "--layout", layout.to_str().unwrap()]);
    must("umoci", &["new", "--image", &image]);
    must("umoci", &["unpack", "--image", &image, bundle.to_str().unwrap()]);
    fill(&bundle.join("rootfs"));
    must("umoci", &["repack", "--image", &image, bundle.to_str().unwrap()]);
    layout
}
