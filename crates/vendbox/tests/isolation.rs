//! The isolation suite: each test runs hostile code in a box and checks that it fails inside the
//! box, that the host is unharmed, and that a neighbouring box keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod boxhost;
mod support;

use std::time::Duration;

use boxhost::{Bought, BoxHost};
use serde_json::Value;
use vendbox_box::Backend as _;

/// A host with a hostile box and a neighbour.
struct Scene {
    host: BoxHost,
    hostile: Bought,
    neighbour: Bought,
}

async fn scene(offer: &str) -> Option<Scene> {
    let host = BoxHost::start()?;
    let hostile = host.buy(offer, 10).await;
    let neighbour = host.buy("test-box", 10).await;
    host.ok(&neighbour, "echo neighbour > /root/mine").await;
    Some(Scene { host, hostile, neighbour })
}

impl Scene {
    /// Runs `line` in the hostile box; its answer.
    async fn attack(&self, line: &str, timeout: u64) -> Value {
        let (status, out) = self.host.sh(&self.hostile, line, timeout).await;
        assert_eq!(status, 200, "{line}: {out}");
        out
    }

    /// The neighbour and the host still work.
    async fn assert_unharmed(&self) {
        assert_eq!(self.host.ok(&self.neighbour, "cat /root/mine").await, "neighbour\n");
        assert!(std::process::Command::new("true").status().unwrap().success());
        let health = reqwest::get(self.host.url("/healthz")).await.unwrap();
        assert_eq!(health.status(), 200);
    }
}

fn stdout(out: &Value) -> &str {
    out["stdout"].as_str().unwrap()
}

#[tokio::test]
async fn the_hosts_shadow_file_cannot_be_read() {
    let Some(s) = scene("test-box").await else { return };
    assert!(std::path::Path::new("/etc/shadow").exists());
    let out = s.attack("cat /etc/shadow; echo rc=$?; ls /etc", 10).await;
    assert!(stdout(&out).contains("rc=1"), "{out}");
    assert!(!stdout(&out).contains("shadow"), "{out}");
    assert!(!stdout(&out).contains("root:$"), "{out}");
    s.assert_unharmed().await;
}

#[tokio::test]
async fn the_vendbox_data_directory_cannot_be_read() {
    let Some(s) = scene("test-box").await else { return };
    let data = s.host.data_dir();
    assert!(data.join("vendbox.db").exists());
    let line = format!(
        "ls {0}; cat {0}/vendbox.db | head -c 16; find / -xdev -name 'vendbox.db*' 2>/dev/null; echo end",
        data.display()
    );
    let out = s.attack(&line, 20).await;
    assert_eq!(stdout(&out), "end\n", "{out}");
    s.assert_unharmed().await;
}

#[tokio::test]
async fn another_boxs_files_cannot_be_read() {
    let Some(s) = scene("test-box").await else { return };
    // The neighbour's file on the host, seen from the host, and searched for from the box.
    let layers: Vec<_> = std::fs::read_dir("/run/vendbox").unwrap().filter_map(Result::ok).collect();
    assert!(!layers.is_empty());
    let line = format!(
        "for d in /run/vendbox/*/{0} /proc/*/root/root; do cat $d/rw/root/mine $d/mine 2>/dev/null; done; \
         grep -rs neighbour /root /tmp /home /run /var/tmp; echo end",
        s.neighbour.id
    );
    let out = s.attack(&line, 20).await;
    assert_eq!(stdout(&out), "end\n", "{out}");
    s.assert_unharmed().await;
}

#[tokio::test]
async fn host_and_neighbour_processes_are_invisible_and_cannot_be_killed() {
    let Some(s) = scene("test-box").await else { return };
    let mut victim = std::process::Command::new("sleep").arg("300").spawn().unwrap();
    let vendbox_pid = s.host.vendbox.as_ref().unwrap().child.id();
    let line = format!(
        "ps -e -o pid=,comm= | grep -v ' ps$'; kill -9 {0} {1}; echo rc=$?; ls /proc | grep -c '^[0-9]'",
        victim.id(),
        vendbox_pid
    );
    let out = s.attack(&line, 10).await;
    let text = stdout(&out);
    assert!(!text.contains("vendbox") && !text.contains("sleep"), "{out}");
    assert!(text.contains("rc=1"), "{out}");
    let visible: u32 = text.lines().last().unwrap().trim().parse().unwrap();
    assert!(visible <= 4, "the box sees {visible} processes: {out}");
    assert!(victim.try_wait().unwrap().is_none(), "the host's process was killed");
    victim.kill().unwrap();
    victim.wait().unwrap();
    s.assert_unharmed().await;
}

#[tokio::test]
async fn no_address_can_be_reached_without_egress() {
    let Some(s) = scene("test-box").await else { return };
    let port = s.host.vendbox.as_ref().unwrap().addr().rsplit(':').next().unwrap().to_owned();
    // Connection attempts fail inside the box's own network namespace: it has only a loopback,
    // so nothing leaves it.
    let line = format!(
        "for a in 127.0.0.1/{port} 10.0.0.1/80 192.168.1.1/80 172.17.0.1/80 1.1.1.1/53; do \
           if bash -c \"echo > /dev/tcp/$a\" 2>/dev/null; then echo reached $a; else echo refused $a; fi; done; \
         ip -o link 2>/dev/null | cut -d: -f2"
    );
    let out = s.attack(&line, 20).await;
    let text = stdout(&out);
    assert!(!text.contains("reached"), "{out}");
    assert_eq!(text.matches("refused").count(), 5, "{out}");
    s.assert_unharmed().await;
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit() {
    let Some(s) = scene("test-box").await else { return };
    let backend = s.host.backend();
    let id = vendbox_box::BoxId::new(&s.hostile.id).unwrap();
    let (limit, before) = backend.pids_limit(&id).expect("the box's pids controller");
    assert_eq!(limit, 64, "the box's process limit");
    assert_eq!(before, 0, "no fork was refused yet");
    // The bomb goes off in a subshell and the command's shell then becomes `sleep` (`exec`, no
    // fork), so the command outlives its time limit even once the bomb holds every process slot:
    // `sh` exits at a fork it cannot make, and a forked `sleep` would fail at once.
    let out = s.attack("(bomb() { bomb | bomb & }; bomb); exec sleep 4", 3).await;
    assert_eq!(out["timed_out"], true, "{out}");
    // The kernel refused forks at the limit while the bomb ran (counted by the cgroup itself,
    // not by looking after the bomb was killed).
    let (_, refused) = backend.pids_limit(&id).unwrap();
    assert!(refused > 0, "the bomb never reached the limit of {limit}");
    // The box itself recovers once its group is killed.
    support::eventually(Duration::from_secs(10), "the box to recover from the bomb", async || {
        let (status, out) = s.host.sh(&s.hostile, "echo alive", 5).await;
        if status == 200 && out["stdout"] == "alive\n" { Ok(()) } else { Err(format!("{status} {out}")) }
    })
    .await;
    s.assert_unharmed().await;
}

#[tokio::test]
async fn a_memory_bomb_is_killed_inside_its_cgroup() {
    let Some(s) = scene("test-box").await else { return };
    let out = s.attack("perl -e '$x = \"x\" x (1024 * 1024 * 1024); print length $x'; echo rc=$?", 60).await;
    assert!(stdout(&out).contains("rc=137"), "the bomb was killed by the OOM killer: {out}");
    assert_eq!(s.host.ok(&s.hostile, "echo alive").await, "alive\n");
    s.assert_unharmed().await;
}

#[tokio::test]
async fn filling_the_disk_stops_at_the_bound() {
    let Some(s) = scene("test-roomy").await else { return };
    let out = s
        .attack("dd if=/dev/zero of=/root/fill bs=1M count=1500 2>&1; echo rc=$?; stat -c %s /root/fill", 60)
        .await;
    let text = stdout(&out);
    assert!(text.contains("No space left on device"), "{out}");
    let size: u64 = text.lines().last().unwrap().trim().parse().unwrap();
    assert!(size <= 1024 * 1024 * 1024, "{size}");
    assert!(size > 900 * 1024 * 1024, "{size}");
    assert_eq!(s.host.ok(&s.hostile, "rm /root/fill && echo freed").await, "freed\n");
    s.assert_unharmed().await;
}

#[tokio::test]
async fn kernel_modules_keyrings_bpf_and_kexec_are_refused() {
    let Some(s) = scene("test-box").await else { return };
    // finit_module(313) and init_module(175), straight to the kernel.
    let line = "perl -e 'open(my $f, \"<\", \"/dev/null\"); my $none = \"\"; \
                syscall(313, fileno($f), $none, 0); print \"finit:$!\\n\"; \
                syscall(175, 0, 0, $none); print \"init:$!\\n\"; \
                syscall(250, 0, 0, 0, 0, 0); print \"keyctl:$!\\n\"; \
                syscall(321, 0, 0, 0); print \"bpf:$!\\n\"; \
                syscall(246, 0, 0, 0, 0); print \"kexec:$!\\n\"'";
    let out = s.attack(line, 10).await;
    assert!(stdout(&out).contains("finit:Operation not permitted"), "{out}");
    for call in ["init", "keyctl", "bpf", "kexec"] {
        assert!(stdout(&out).contains(&format!("{call}:Operation not permitted")), "{call}: {out}");
    }
    s.assert_unharmed().await;
}

#[tokio::test]
async fn proc_self_exe_and_mount_tricks_do_not_escape() {
    let Some(s) = scene("test-box").await else { return };
    let before = std::fs::read(support::BIN).unwrap();
    let line = "echo x >> /proc/1/exe; echo exe=$?; cp /bin/true /proc/1/exe 2>/dev/null; echo cp=$?; \
                mount -t tmpfs none /tmp 2>/dev/null; echo mount=$?; mount --bind / /root 2>/dev/null; echo bind=$?; \
                unshare -m true 2>/dev/null; echo unshare=$?; unshare -U true 2>/dev/null; echo userns=$?; \
                perl -e 'my ($none, $tmp, $fs, $root) = (\"none\", \"/tmp\", \"tmpfs\", \"/\"); \
                         syscall(165, $none, $tmp, $fs, 0, 0); print \"mount:$!\\n\"; \
                         syscall(272, 0x10000000); print \"unshare:$!\\n\"; \
                         syscall(155, $root, $tmp); print \"pivot:$!\\n\"'";
    let out = s.attack(line, 10).await;
    let text = stdout(&out);
    for (what, ok) in [
        ("exe=0", false),
        ("cp=0", false),
        ("mount=0", false),
        ("bind=0", false),
        ("unshare=0", false),
        ("userns=0", false),
    ] {
        assert_eq!(text.contains(what), ok, "{what}: {out}");
    }
    for call in ["mount", "unshare", "pivot"] {
        assert!(text.contains(&format!("{call}:Operation not permitted")), "{call}: {out}");
    }
    assert!(std::fs::read(support::BIN).unwrap() == before, "the host's binary changed");
    s.assert_unharmed().await;
}

#[tokio::test]
async fn another_boxs_boxd_cannot_be_reached() {
    let Some(s) = scene("test-box").await else { return };
    let backend = s.host.backend();
    let neighbour_socket =
        backend.boxd(&vendbox_box::BoxId::new(&s.neighbour.id).unwrap()).socket().unwrap().to_owned();
    assert!(neighbour_socket.exists());
    let line = format!(
        "ls -A /run; perl -MIO::Socket::UNIX -e '$s = IO::Socket::UNIX->new(Peer => \"{}\"); print $s ? \"connected\\n\" : \"refused\\n\"'",
        neighbour_socket.display()
    );
    let out = s.attack(&line, 20).await;
    // The box's own boxd socket is not in the box either: the host holds it.
    assert_eq!(stdout(&out), "refused\n", "{out}");
    s.assert_unharmed().await;
}
