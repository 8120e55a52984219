//! The SFTP subsystem against a real boxd: russh-sftp's client talks to `serve` over an
//! in-memory pipe, and every file operation lands on the real file system through boxd's socket.
//!
//! `serve` is private to the crate, so this test compiles `src/sftp.rs` into itself. It needs the
//! `boxd` binary: `BOXD_BIN`, or `boxd` next to this test's `deps/` folder (`cargo build -p boxd`
//! puts it there); without one the tests say so and pass. OpenSSH's `scp` and `sftp` (with `socat`
//! standing in for the SSH connection) run against it too where they are installed; vendbox's
//! end-to-end tests cover them through the real gateway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../src/sftp.rs"]
mod sftp;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::{RawSftpSession, SftpSession};
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};
use vendbox_box::BoxdClient;

/// A boxd on a socket in a temporary directory and an SFTP session to it; boxd is killed on drop.
struct Harness {
    boxd: Child,
    dir: tempfile::TempDir,
    sftp: SftpSession,
}

impl Harness {
    /// `None` (after saying why) when there is no boxd binary to run.
    async fn start() -> Option<Harness> {
        let Some(bin) = boxd_bin() else {
            requirement_missing("no boxd binary; run `cargo build -p boxd` or set BOXD_BIN");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("boxd.sock");
        let boxd = Command::new(bin).arg("--socket").arg(&socket).current_dir(dir.path()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::UnixStream::connect(&socket).await.is_err() {
            assert!(Instant::now() < deadline, "boxd did not start listening");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(sftp::serve(server, BoxdClient::new(socket.clone())));
        // Every connection to `sftp.sock` is an SFTP session too, for OpenSSH's clients.
        let listener = tokio::net::UnixListener::bind(dir.path().join("sftp.sock")).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(sftp::serve(stream, BoxdClient::new(socket.clone())));
            }
        });
        let sftp = SftpSession::new(client).await.unwrap();
        Some(Harness { boxd, dir, sftp })
    }

    /// The absolute path of `rel` in the scratch directory, as SFTP sends it.
    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_str().unwrap().to_owned()
    }

    fn local(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Another session, on which each request is sent and answered one by one.
    async fn raw(&self) -> RawSftpSession {
        let (client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(sftp::serve(server, BoxdClient::new(self.dir.path().join("boxd.sock"))));
        let raw = RawSftpSession::new(client);
        raw.init().await.unwrap();
        raw
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.boxd.kill();
        let _ = self.boxd.wait();
    }
}

fn boxd_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("BOXD_BIN") {
        return Some(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("boxd");
    bin.is_file().then_some(bin)
}

/// Bytes that differ with their offset, so a chunk in the wrong place shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| u8::try_from((i % 251) ^ ((i >> 12) & 0xff)).unwrap()).collect()
}

fn status_of(err: &SftpError) -> Option<StatusCode> {
    match err {
        SftpError::Status(status) => Some(status.status_code),
        _ => None,
    }
}

#[tokio::test]
async fn a_large_file_goes_up_and_comes_back_byte_for_byte() {
    let Some(h) = Harness::start().await else { return };
    let data = pattern(3 << 20);
    let path = h.path("up/big.bin");
    std::fs::create_dir(h.local("up")).unwrap();

    let mut file = h.sftp.create(&path).await.unwrap();
    file.write_all(&data).await.unwrap();
    file.shutdown().await.unwrap();
    assert!(std::fs::read(h.local("up/big.bin")).unwrap() == data, "the file on disk differs");
    assert!(h.sftp.read(&path).await.unwrap() == data, "the file read back differs");

    let meta = h.sftp.metadata(&path).await.unwrap();
    assert_eq!(meta.size, Some(3 << 20));
    assert!(meta.file_type().is_file());
    assert_eq!(meta.permissions.map(|p| p & 0o777), Some(0o644));
    assert!(h.sftp.metadata(h.path("up")).await.unwrap().file_type().is_dir());

    // Without TRUNCATE a write lands in the file's existing contents.
    let mut file = h.sftp.open_with_flags(&path, OpenFlags::WRITE).await.unwrap();
    file.seek(std::io::SeekFrom::Start(1 << 20)).await.unwrap();
    file.write_all(b"patched").await.unwrap();
    file.shutdown().await.unwrap();
    let mut expected = data;
    expected[1 << 20..(1 << 20) + 7].copy_from_slice(b"patched");
    assert!(std::fs::read(h.local("up/big.bin")).unwrap() == expected, "the patched file differs");
}

#[tokio::test]
async fn directories_list_make_move_and_remove() {
    let Some(h) = Harness::start().await else { return };
    std::fs::write(h.local("a.txt"), "alpha").unwrap();
    std::fs::create_dir(h.local("sub")).unwrap();

    let names: Vec<String> =
        h.sftp.read_dir(h.path("")).await.unwrap().map(|entry| entry.file_name()).collect();
    assert!(names.contains(&"a.txt".to_owned()) && names.contains(&"sub".to_owned()), "{names:?}");

    h.sftp.create_dir(h.path("new")).await.unwrap();
    assert!(h.local("new").is_dir());
    let again = h.sftp.create_dir(h.path("new")).await.unwrap_err();
    assert_eq!(status_of(&again), Some(StatusCode::Failure));

    h.sftp.rename(h.path("a.txt"), h.path("new/b.txt")).await.unwrap();
    assert_eq!(std::fs::read_to_string(h.local("new/b.txt")).unwrap(), "alpha");
    assert!(!h.local("a.txt").exists());

    // RMDIR removes only empty directories, though boxd's DELETE would take the tree.
    let full = h.sftp.remove_dir(h.path("new")).await.unwrap_err();
    assert_eq!(status_of(&full), Some(StatusCode::Failure));
    assert!(h.local("new/b.txt").exists());

    h.sftp.remove_file(h.path("new/b.txt")).await.unwrap();
    h.sftp.remove_dir(h.path("new")).await.unwrap();
    assert!(!h.local("new").exists());
}

#[tokio::test]
async fn missing_files_are_no_such_file() {
    let Some(h) = Harness::start().await else { return };
    let Err(err) = h.sftp.open(h.path("missing")).await else { panic!("a missing file opened") };
    assert_eq!(status_of(&err), Some(StatusCode::NoSuchFile));
    let err = h.sftp.metadata(h.path("missing")).await.unwrap_err();
    assert_eq!(status_of(&err), Some(StatusCode::NoSuchFile));
    let err = h.sftp.remove_file(h.path("missing")).await.unwrap_err();
    assert_eq!(status_of(&err), Some(StatusCode::NoSuchFile));
    assert!(!Path::new(&h.path("missing")).exists());
}

#[tokio::test]
async fn paths_resolve_against_the_box_home() {
    let Some(h) = Harness::start().await else { return };
    assert_eq!(h.sftp.canonicalize(".").await.unwrap(), "/root");
    assert_eq!(h.sftp.canonicalize("a/../b").await.unwrap(), "/root/b");
    assert_eq!(h.sftp.canonicalize("/tmp/../etc").await.unwrap(), "/etc");
}

/// The size of `path` on disk.
fn size_on_disk(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[tokio::test]
async fn writes_stream_to_the_box_before_close_and_land_where_they_were_sent() {
    let Some(h) = Harness::start().await else { return };
    let raw = h.raw().await;
    let flags = OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    // TRUNCATE empties an existing file in the box at once.
    std::fs::write(h.local("w.bin"), "old contents").unwrap();
    let handle = raw.open(h.path("w.bin"), flags, FileAttributes::empty()).await.unwrap().handle;
    assert_eq!(size_on_disk(&h.local("w.bin")), 0);

    // 3 MiB in order, in chunks of 200 000 bytes: whole mebibytes reach the box as they fill,
    // before any CLOSE, READ or FSTAT.
    let data = pattern(3 << 20);
    for (i, chunk) in data.chunks(200_000).enumerate() {
        raw.write(&handle, (i * 200_000) as u64, chunk.to_vec()).await.unwrap();
    }
    assert!(size_on_disk(&h.local("w.bin")) >= 2 << 20, "the writes are still held in memory");

    // Out of order: past the end (a hole of zeros), then back into the middle.
    raw.write(&handle, 5 << 20, b"far".to_vec()).await.unwrap();
    raw.write(&handle, 1000, b"middle".to_vec()).await.unwrap();
    raw.write(&handle, 1006, b"-and-on".to_vec()).await.unwrap();
    let mut expected = data;
    expected.resize((5 << 20) + 3, 0);
    expected[5 << 20..].copy_from_slice(b"far");
    expected[1000..1013].copy_from_slice(b"middle-and-on");

    // A READ and an FSTAT of the handle see every write.
    assert_eq!(raw.fstat(&handle).await.unwrap().attrs.size, Some((5 << 20) + 3));
    assert_eq!(raw.read(&handle, 995, 20).await.unwrap().data, &expected[995..1015]);
    assert_eq!(raw.read(&handle, (5 << 20) - 2, 100).await.unwrap().data, b"\0\0far");
    raw.close(&handle).await.unwrap();
    assert!(std::fs::read(h.local("w.bin")).unwrap() == expected, "the file on disk differs");
}

#[tokio::test]
async fn append_writes_go_to_the_end_whatever_their_offset() {
    let Some(h) = Harness::start().await else { return };
    let raw = h.raw().await;
    std::fs::write(h.local("a.log"), "start\n").unwrap();
    let handle = raw
        .open(h.path("a.log"), OpenFlags::WRITE | OpenFlags::APPEND, FileAttributes::empty())
        .await
        .unwrap()
        .handle;
    raw.write(&handle, 0, b"one\n".to_vec()).await.unwrap();
    raw.write(&handle, 0, b"two\n".to_vec()).await.unwrap();
    raw.close(&handle).await.unwrap();
    assert_eq!(std::fs::read_to_string(h.local("a.log")).unwrap(), "start\none\ntwo\n");
}

#[tokio::test]
async fn a_write_that_cannot_reach_the_box_fails_the_request_that_sends_it_and_close() {
    let Some(h) = Harness::start().await else { return };
    let raw = h.raw().await;
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let handle = raw.open(h.path("f.bin"), flags, FileAttributes::empty()).await.unwrap().handle;
    // Held, so acknowledged; then the file becomes a directory, where boxd cannot write it.
    raw.write(&handle, 0, b"held".to_vec()).await.unwrap();
    std::fs::remove_file(h.local("f.bin")).unwrap();
    std::fs::create_dir(h.local("f.bin")).unwrap();
    let err = raw.fstat(&handle).await.unwrap_err();
    assert_eq!(status_of(&err), Some(StatusCode::Failure), "{err}");
    assert!(err.to_string().contains("is a directory"), "{err}");
    // Later writes are held again, and CLOSE answers with the write that was lost.
    raw.write(&handle, 4, b"more".to_vec()).await.unwrap();
    let err = raw.close(&handle).await.unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[tokio::test]
async fn fsetstat_truncates_in_the_box_at_once_and_sets_mode_and_times_at_close() {
    let Some(h) = Harness::start().await else { return };
    let raw = h.raw().await;
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let handle = raw.open(h.path("s.bin"), flags, FileAttributes::empty()).await.unwrap().handle;
    raw.write(&handle, 0, pattern(100)).await.unwrap();
    let shorter = FileAttributes { size: Some(10), ..FileAttributes::empty() };
    raw.fsetstat(&handle, shorter).await.unwrap();
    assert!(std::fs::read(h.local("s.bin")).unwrap() == pattern(10), "the file was not cut to 10 bytes");
    let attrs = FileAttributes {
        permissions: Some(0o600),
        atime: Some(1_000),
        mtime: Some(2_000),
        ..FileAttributes::empty()
    };
    raw.fsetstat(&handle, attrs).await.unwrap();
    let seen = raw.fstat(&handle).await.unwrap().attrs;
    assert_eq!(
        (seen.size, seen.permissions.map(|p| p & 0o7777), seen.mtime),
        (Some(10), Some(0o600), Some(2_000))
    );
    raw.write(&handle, 10, b"tail".to_vec()).await.unwrap();
    raw.close(&handle).await.unwrap();
    let meta = std::fs::metadata(h.local("s.bin")).unwrap();
    assert_eq!(meta.len(), 14);
    assert_eq!(std::os::unix::fs::MetadataExt::mode(&meta) & 0o7777, 0o600);
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&meta), 2_000);
    assert_eq!(std::os::unix::fs::MetadataExt::atime(&meta), 1_000);
}

/// Runs `program` with `args`, failing the test with its output unless it succeeds; its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_scp_and_sftp_work() {
    if !["scp", "sftp", "socat"].into_iter().all(installed) {
        requirement_missing("OpenSSH's scp and sftp, and socat, are not installed");
        return;
    }
    let Some(h) = Harness::start().await else { return };
    let connect = format!("socat STDIO UNIX-CONNECT:{}", h.path("sftp.sock"));
    // scp runs its "ssh" with options and a host; this one ignores them and goes to the socket.
    let ssh = h.local("ssh.sh");
    std::fs::write(&ssh, format!("#!/bin/sh\nexec {connect}\n")).unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ssh = ssh.to_str().unwrap().to_owned();

    std::fs::create_dir_all(h.local("local/tree/deep")).unwrap();
    let data = pattern(5 << 20);
    std::fs::write(h.local("local/big.bin"), &data).unwrap();
    std::fs::write(h.local("local/tree/deep/small.txt"), "small\n").unwrap();
    std::fs::create_dir(h.local("box")).unwrap();
    let small = h.path("local/tree/deep/small.txt");
    std::fs::set_permissions(&small, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    run("touch", &["-d", "@1000000000", &small]);

    let scp = |args: &[&str]| {
        let mut all = vec!["-s", "-q", "-S", &ssh];
        all.extend_from_slice(args);
        run("scp", &all)
    };
    let remote = |rel: &str| format!("box:{}", h.path(rel));
    scp(&[&h.path("local/big.bin"), &remote("box/big.bin")]);
    assert!(std::fs::read(h.local("box/big.bin")).unwrap() == data, "scp's upload differs");
    scp(&[&remote("box/big.bin"), &h.path("local/back.bin")]);
    assert!(std::fs::read(h.local("local/back.bin")).unwrap() == data, "scp's download differs");
    scp(&["-r", "-p", &h.path("local/tree"), &remote("box/")]);
    assert_eq!(std::fs::read_to_string(h.local("box/tree/deep/small.txt")).unwrap(), "small\n");
    // `-p` keeps modes and times: FSETSTAT before the upload's CLOSE.
    let meta = std::fs::metadata(h.local("box/tree/deep/small.txt")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mode(&meta) & 0o7777, 0o750);
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&meta), 1_000_000_000);
    // Uploading into a directory names the file after the local one.
    scp(&[&small, &remote("box")]);
    assert_eq!(std::fs::read_to_string(h.local("box/small.txt")).unwrap(), "small\n");

    let batch = h.local("batch");
    std::fs::write(
        &batch,
        format!(
            "cd {box_dir}\nls -l\nmkdir made\nrename small.txt made/moved.txt\nget made/moved.txt {local}\n\
             rm made/moved.txt\nrmdir made\nput {big} again.bin\n",
            box_dir = h.path("box"),
            local = h.path("local/moved.txt"),
            big = h.path("local/big.bin"),
        ),
    )
    .unwrap();
    let listing = run("sftp", &["-q", "-D", &connect, "-b", batch.to_str().unwrap()]);
    assert!(listing.lines().any(|line| line.starts_with('d') && line.ends_with("tree")), "{listing}");
    assert!(
        listing.lines().any(|line| line.starts_with("-rw-r--r--") && line.ends_with("big.bin")),
        "{listing}"
    );
    assert_eq!(std::fs::read_to_string(h.local("local/moved.txt")).unwrap(), "small\n");
    assert!(!h.local("box/made").exists());
    assert!(std::fs::read(h.local("box/again.bin")).unwrap() == data, "sftp's put differs");
}

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
