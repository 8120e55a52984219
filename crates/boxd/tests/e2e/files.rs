//! The file endpoints, on a temporary directory.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::common::{Boxd, enc};

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn put_and_get_round_trip_three_mebibytes() {
    let boxd = Boxd::start().await;
    let data: Vec<u8> = (0..3 * 1024 * 1024_u32).map(|i| (i % 251) as u8).collect();
    let path = boxd.path("a/b/blob.bin");
    let p = enc(path.to_str().unwrap());

    let (status, body) = boxd.call("PUT", &format!("/files?path={p}&mode=0600"), data.clone()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let written: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(written, json!({"path": path.to_str().unwrap(), "size": data.len()}));
    assert_eq!(std::fs::read(&path).unwrap(), data);

    let (status, body) = boxd.call("GET", &format!("/files?path={p}"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == data, "downloaded {} bytes differ", body.len());

    let (status, info) = boxd.json("GET", &format!("/fs/stat?path={p}"), Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((info["name"].as_str(), info["kind"].as_str()), (Some("blob.bin"), Some("file")));
    assert_eq!((info["size"].as_u64(), info["mode"].as_u64()), (Some(data.len() as u64), Some(0o600)));
    assert!(info["modified_ms"].as_i64().unwrap() > 1_600_000_000_000);

    // Overwriting replaces the file and leaves no temporary files behind.
    let (status, _) = boxd.call("PUT", &format!("/files?path={p}"), "small").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(std::fs::read(&path).unwrap(), b"small");
    let names: Vec<_> =
        std::fs::read_dir(boxd.path("a/b")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["blob.bin"]);
}

#[tokio::test]
async fn missing_files_and_directories_get_their_codes() {
    let boxd = Boxd::start().await;
    let dir = enc(boxd.dir.path().to_str().unwrap());
    let (status, body) = boxd.call("GET", &format!("/files?path={dir}/nope"), "").await;
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, code(&err)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = boxd.call("GET", &format!("/files?path={dir}"), "").await;
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "is_directory"));
    let (status, body) = boxd.call("PUT", &format!("/files?path={dir}"), "x").await;
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "is_directory"));
    let (status, err) = boxd.json("GET", &format!("/fs/stat?path={dir}/nope"), Value::Null).await;
    assert_eq!((status, code(&err)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, err) = boxd.json("DELETE", &format!("/fs?path={dir}/nope"), Value::Null).await;
    assert_eq!((status, code(&err)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, err) = boxd.json("GET", "/fs/stat", Value::Null).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "bad_request"));
    let (status, body) = boxd.call("PUT", &format!("/files?path={dir}/f&mode=999"), "x").await;
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "bad_request"));
}

#[tokio::test]
async fn list_recurses_to_depth_and_sorts_by_path() {
    let boxd = Boxd::start().await;
    let root = boxd.path("tree");
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("b.txt"), "bb").unwrap();
    std::fs::write(root.join("sub/a.txt"), "a").unwrap();
    std::fs::write(root.join("sub/deeper/z.txt"), "z").unwrap();
    std::os::unix::fs::symlink(root.join("sub"), root.join("link")).unwrap();
    let p = enc(root.to_str().unwrap());
    let rel = |v: &Value| -> Vec<String> {
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap().strip_prefix(root.to_str().unwrap()).unwrap().to_owned())
            .collect()
    };

    let (status, one) = boxd.json("GET", &format!("/fs/list?path={p}"), Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rel(&one), ["/b.txt", "/link", "/sub"]);
    let link = &one["entries"][1];
    assert_eq!(
        (link["kind"].as_str(), link["symlink_target"].as_str()),
        (Some("symlink"), root.join("sub").to_str())
    );
    assert_eq!(
        (one["entries"][2]["kind"].as_str(), one["entries"][0]["size"].as_u64()),
        (Some("dir"), Some(2))
    );

    let (_, two) = boxd.json("GET", &format!("/fs/list?path={p}&depth=2"), Value::Null).await;
    assert_eq!(rel(&two), ["/b.txt", "/link", "/sub", "/sub/a.txt", "/sub/deeper"]);
    let (_, all) = boxd.json("GET", &format!("/fs/list?path={p}&depth=50"), Value::Null).await;
    assert_eq!(rel(&all), ["/b.txt", "/link", "/sub", "/sub/a.txt", "/sub/deeper", "/sub/deeper/z.txt"]);

    let (status, err) = boxd.json("GET", &format!("/fs/list?path={p}/b.txt"), Value::Null).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "not_directory"));
    let (status, err) = boxd.json("GET", &format!("/fs/list?path={p}&depth=0"), Value::Null).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "bad_request"));
}

#[tokio::test]
async fn mkdir_move_and_delete() {
    let boxd = Boxd::start().await;
    let dir = boxd.path("made/x/y");
    let p = enc(dir.to_str().unwrap());
    let (status, info) = boxd.json("POST", &format!("/fs/mkdir?path={p}"), Value::Null).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!((info["kind"].as_str(), info["name"].as_str()), (Some("dir"), Some("y")));
    assert!(dir.is_dir());
    let (status, _) = boxd.json("POST", &format!("/fs/mkdir?path={p}"), Value::Null).await;
    assert_eq!(status, StatusCode::CREATED, "mkdir of an existing directory is fine");

    let file = boxd.path("made/file");
    std::fs::write(&file, "content").unwrap();
    let f = enc(file.to_str().unwrap());
    let (status, err) = boxd.json("POST", &format!("/fs/mkdir?path={f}"), Value::Null).await;
    assert_eq!((status, code(&err)), (StatusCode::CONFLICT, "exists"));

    let to = boxd.path("elsewhere/renamed");
    let (status, info) = boxd
        .json("POST", "/fs/move", json!({"from": file.to_str().unwrap(), "to": to.to_str().unwrap()}))
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!((info["path"].as_str(), info["size"].as_u64()), (to.to_str(), Some(7)));
    assert!(!file.exists());
    assert_eq!(std::fs::read_to_string(&to).unwrap(), "content");
    let (status, err) = boxd
        .json("POST", "/fs/move", json!({"from": dir.to_str().unwrap(), "to": to.to_str().unwrap()}))
        .await;
    assert_eq!((status, code(&err)), (StatusCode::CONFLICT, "exists"));
    let (status, err) = boxd
        .json(
            "POST",
            "/fs/move",
            json!({"from": file.to_str().unwrap(), "to": boxd.path("z").to_str().unwrap()}),
        )
        .await;
    assert_eq!((status, code(&err)), (StatusCode::NOT_FOUND, "not_found"));

    let made = enc(boxd.path("made").to_str().unwrap());
    let (status, ack) = boxd.json("DELETE", &format!("/fs?path={made}"), Value::Null).await;
    assert_eq!((status, ack), (StatusCode::OK, json!({"ok": true})));
    assert!(!boxd.path("made").exists());
    let (status, _) =
        boxd.json("DELETE", &format!("/fs?path={}", enc(to.to_str().unwrap())), Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!to.exists());
}

/// `PUT /files` at `offset` into `path`, with `mode` when given, answered within five seconds.
async fn write_at(
    boxd: &Boxd,
    path: &Path,
    offset: u64,
    mode: Option<&str>,
    body: &'static str,
) -> (StatusCode, Value) {
    let mode = mode.map(|m| format!("&mode={m}")).unwrap_or_default();
    let uri = format!("/files?path={}&offset={offset}{mode}", enc(path.to_str().unwrap()));
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), boxd.call("PUT", &uri, body))
        .await
        .unwrap_or_else(|_| panic!("PUT {uri} did not answer within 5 s"));
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, value)
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn a_write_at_an_offset_keeps_the_bytes_around_it() {
    let boxd = Boxd::start().await;
    let path = boxd.path("d/f.txt");
    std::fs::create_dir(boxd.path("d")).unwrap();
    std::fs::write(&path, "0123456789").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();

    // An existing file keeps its mode, whatever the request asks.
    let (status, written) = write_at(&boxd, &path, 3, Some("0755"), "abc").await;
    assert_eq!(status, StatusCode::OK, "{written}");
    assert_eq!(written, json!({"path": path.to_str().unwrap(), "size": 3}));
    assert_eq!(std::fs::read(&path).unwrap(), b"012abc6789");
    assert_eq!(mode_of(&path), 0o600);
    // In place: no temporary file, and the same inode.
    let names: Vec<_> = std::fs::read_dir(boxd.path("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["f.txt"]);
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);

    // An empty body changes nothing; a write through a symlink lands in its target.
    let (status, written) = write_at(&boxd, &path, 1, None, "").await;
    assert_eq!((status, &written["size"]), (StatusCode::OK, &json!(0)), "{written}");
    assert_eq!(std::fs::read(&path).unwrap(), b"012abc6789");
    std::os::unix::fs::symlink(&path, boxd.path("d/link")).unwrap();
    let (status, _) = write_at(&boxd, &boxd.path("d/link"), 9, None, "Z").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(std::fs::read(&path).unwrap(), b"012abc678Z");
    assert!(std::fs::symlink_metadata(boxd.path("d/link")).unwrap().file_type().is_symlink());

    // Directories and offsets past what a file can hold are refused.
    let (status, err) = write_at(&boxd, &boxd.path("d"), 0, None, "x").await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "is_directory"));
    let (status, err) = write_at(&boxd, &path, 1 << 63, None, "x").await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "bad_request"));
    let uri = format!("/files?path={}&offset=-1", enc(path.to_str().unwrap()));
    let (status, _) = boxd.call("PUT", &uri, "x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(std::fs::read(&path).unwrap(), b"012abc678Z");
}

#[tokio::test]
async fn a_write_past_the_end_extends_the_file_with_zeros() {
    let boxd = Boxd::start().await;
    let path = boxd.path("f.bin");
    std::fs::write(&path, "ab").unwrap();
    let (status, written) = write_at(&boxd, &path, 5, None, "cd").await;
    assert_eq!((status, &written["size"]), (StatusCode::OK, &json!(2)), "{written}");
    assert_eq!(std::fs::read(&path).unwrap(), b"ab\0\0\0cd");
    // Far past the end: a sparse file of that size.
    let (status, _) = write_at(&boxd, &path, 1 << 30, None, "e").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), (1 << 30) + 1);
}

#[tokio::test]
async fn a_write_at_an_offset_creates_a_missing_file_with_the_mode() {
    let boxd = Boxd::start().await;
    // Exactly the mode asked for (boxd's umask does not apply), parents made as a whole write does.
    let path = boxd.path("new/dir/f.bin");
    let (status, written) = write_at(&boxd, &path, 4, Some("0666"), "xy").await;
    assert_eq!(status, StatusCode::OK, "{written}");
    assert_eq!(written, json!({"path": path.to_str().unwrap(), "size": 2}));
    assert_eq!(std::fs::read(&path).unwrap(), b"\0\0\0\0xy");
    assert_eq!(mode_of(&path), 0o666);
    // Without a mode, 0644.
    let (status, _) = write_at(&boxd, &boxd.path("plain"), 0, None, "p").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (std::fs::read(boxd.path("plain")).unwrap(), mode_of(&boxd.path("plain"))),
        (b"p".to_vec(), 0o644)
    );
    // A dangling symlink is not followed to create its target.
    std::os::unix::fs::symlink(boxd.path("nowhere"), boxd.path("dangling")).unwrap();
    let (status, err) = write_at(&boxd, &boxd.path("dangling"), 0, None, "x").await;
    assert_eq!((status, code(&err)), (StatusCode::NOT_FOUND, "not_found"));
    assert!(!boxd.path("nowhere").exists());
}

#[tokio::test]
async fn a_write_at_an_offset_refuses_fifos_and_devices_without_hanging() {
    let boxd = Boxd::start().await;
    let fifo = boxd.path("pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // Nobody reads it: opening it to write would wait forever without O_NONBLOCK.
    let (status, err) = write_at(&boxd, &fifo, 0, None, "x").await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "not_a_file"), "{err}");
    // Someone reads it: it opens, and is refused before any byte goes in.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits().cast_signed())
        .open(&fifo)
        .unwrap();
    let (status, err) = write_at(&boxd, &fifo, 0, None, "x").await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "not_a_file"), "{err}");
    let mut buf = [0_u8; 8];
    assert!(matches!(std::io::Read::read(&mut reader, &mut buf), Ok(0) | Err(_)), "a byte reached the FIFO");
    // A device.
    let (status, err) = write_at(&boxd, Path::new("/dev/null"), 0, None, "x").await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "not_a_file"), "{err}");
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
}
