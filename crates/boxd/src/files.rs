//! The file endpoints: read files (whole or a range), write them (whole, or in place at an
//! offset), and stat, list, create, remove and move entries. Paths are absolute, or relative to
//! `/root`; symlinks are never followed except as the last component of a file being read or
//! written at an offset (a whole-file write replaces a symlink with the file).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::error::ApiError;
use crate::extract::{JsonBody, Params};
use crate::spawn::resolve;
use crate::wire::{
    Ack, EntryInfo, EntryKind, EntryList, FILE_SIZE_HEADER, ListQuery, MoveRequest, PathQuery, ReadQuery,
    WriteQuery, WriteResult,
};

/// Bytes read from a file per chunk of a download.
const READ_CHUNK: usize = 64 * 1024;

/// The deepest `GET /fs/list` goes.
const MAX_DEPTH: u32 = 10;

/// Mode of a file written without `mode`.
const DEFAULT_MODE: u32 = 0o644;

/// The path a request names, made absolute.
fn request_path(path: &str) -> Result<PathBuf, ApiError> {
    if path.is_empty() {
        return Err(ApiError::bad_request("`path` must not be empty"));
    }
    if path.contains('\0') {
        return Err(ApiError::bad_request("`path` must not contain NUL"));
    }
    Ok(resolve(path))
}

/// Runs file-system work on the blocking pool, off the one runtime thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::internal(&e))?
}

/// `GET /files?path=P[&offset=O&length=L]`: the file's bytes (or that range of them), streamed,
/// with the whole file's size in `x-file-size`.
pub(crate) async fn read(Params(query): Params<ReadQuery>) -> Result<Response, ApiError> {
    let path = request_path(&query.path)?;
    // Non-blocking, so that opening a FIFO nobody writes to does not wait; it changes nothing
    // for a regular file, the only kind served.
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits().cast_signed())
        .open(&path)
        .await
        .map_err(|e| ApiError::io(&path, &e))?;
    let meta = file.metadata().await.map_err(|e| ApiError::io(&path, &e))?;
    if meta.is_dir() {
        return Err(ApiError::io(&path, &io::Error::from(io::ErrorKind::IsADirectory)));
    }
    if !meta.is_file() {
        return Err(not_a_file(&path));
    }
    let size = meta.len();
    let mut file = file;
    let offset = query.offset.unwrap_or(0);
    if offset > 0 {
        file.seek(std::io::SeekFrom::Start(offset)).await.map_err(|e| ApiError::io(&path, &e))?;
    }
    let file = file.take(query.length.unwrap_or(u64::MAX));
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0_u8; READ_CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE.as_str(), "application/octet-stream".to_owned()),
            (FILE_SIZE_HEADER, size.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// 400 `not_a_file`: `path` is a device, FIFO or socket, which boxd neither reads nor writes.
fn not_a_file(path: &Path) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "not_a_file",
        format!(
            "{} is not a regular file (a device, FIFO or socket); only regular files are read and written",
            path.display()
        ),
    )
}

/// `PUT /files?path=P&mode=0644[&offset=O]`: without `offset` the body replaces the whole file
/// ([`replace`]); with it, the body is written into the file at `O` ([`write_at`]).
pub(crate) async fn write(
    Params(query): Params<WriteQuery>,
    body: Body,
) -> Result<Json<WriteResult>, ApiError> {
    let path = request_path(&query.path)?;
    let mode = parse_mode(query.mode.as_deref())?;
    let size = match query.offset {
        None => replace(&path, mode, body).await?,
        Some(offset) => write_at(&path, offset, mode, body).await?,
    };
    Ok(Json(WriteResult { path: path.to_string_lossy().into_owned(), size }))
}

/// Distinguishes the temporary files of concurrent writes.
static WRITES: AtomicU64 = AtomicU64::new(0);

/// Streams `body` to a temporary file beside `path`, then renames it over `path`, so readers
/// see the old file or the new one, never a half-written one; the bytes written.
async fn replace(path: &Path, mode: u32, body: Body) -> Result<u64, ApiError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(ApiError::io(path, &io::Error::from(io::ErrorKind::IsADirectory)));
    };
    if tokio::fs::symlink_metadata(path).await.is_ok_and(|m| m.is_dir()) {
        return Err(ApiError::io(path, &io::Error::from(io::ErrorKind::IsADirectory)));
    }
    tokio::fs::create_dir_all(dir).await.map_err(|e| ApiError::io(dir, &e))?;
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(".{}.boxd-{}-{n}.tmp", name.to_string_lossy(), std::process::id()));
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .await
        .map_err(|e| ApiError::io(dir, &e))?;
    let written = fill(file, body, mode).await;
    let renamed = match written {
        Ok(size) => tokio::fs::rename(&temp, path).await.map(|()| size).map_err(|e| ApiError::io(path, &e)),
        Err(e) => Err(e),
    };
    if renamed.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    renamed
}

/// The furthest a write may reach: file offsets are signed (`off_t`).
const MAX_WRITE_END: u64 = i64::MAX.cast_unsigned();

/// Writes `body` into the file at `path` from `offset`, in place, as `pwrite` does: never
/// truncated, the bytes around the range kept, a range past the end extending the file with
/// zeros. A missing file is created with `mode` (and its missing parents); an existing one keeps
/// its own. Only a regular file is written: it is opened without blocking (a FIFO nobody reads
/// must not hang boxd) and checked before any byte goes in. The bytes written.
async fn write_at(path: &Path, offset: u64, mode: u32, body: Body) -> Result<u64, ApiError> {
    if offset > MAX_WRITE_END {
        return Err(ApiError::bad_request(format!("`offset` must be at most {MAX_WRITE_END}")));
    }
    let mut file = open_for_writing(path, mode).await?;
    let meta = file.metadata().await.map_err(|e| ApiError::io(path, &e))?;
    if !meta.is_file() {
        return Err(not_a_file(path));
    }
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(|e| ApiError::io(path, &e))?;
    let mut size = 0_u64;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("the upload broke off: {e}")))?;
        file.write_all(&chunk).await.map_err(|e| ApiError::io(path, &e))?;
        size += chunk.len() as u64;
    }
    file.flush().await.map_err(|e| ApiError::io(path, &e))?;
    Ok(size)
}

/// Opens `path` to write in place without blocking, or creates it (and its missing parents)
/// with exactly `mode` when it is missing. Opening a FIFO that nobody reads, or a socket, fails
/// at once (`ENXIO`): `not_a_file`.
async fn open_for_writing(path: &Path, mode: u32) -> Result<tokio::fs::File, ApiError> {
    let flags = (rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits().cast_signed();
    let error = |e: &io::Error| {
        if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) {
            not_a_file(path)
        } else {
            ApiError::io(path, e)
        }
    };
    // Twice at most: a file created by someone else between the two opens is opened as it is.
    for _ in 0..2 {
        match tokio::fs::OpenOptions::new().write(true).custom_flags(flags).open(path).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            opened => return opened.map_err(|e| error(&e)),
        }
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| ApiError::io(dir, &e))?;
        }
        let created = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(flags)
            .open(path)
            .await;
        match created {
            Ok(file) => {
                // Exactly `mode`, whatever boxd's umask.
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .await
                    .map_err(|e| ApiError::io(path, &e))?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(error(&e)),
        }
    }
    Err(ApiError::io(path, &io::Error::from(io::ErrorKind::NotFound)))
}

/// Copies `body` into `file` and gives it `mode`; the number of bytes written.
async fn fill(mut file: tokio::fs::File, body: Body, mode: u32) -> Result<u64, ApiError> {
    let io_error = |e: io::Error| ApiError::internal(&e);
    let mut size = 0_u64;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("the upload broke off: {e}")))?;
        file.write_all(&chunk).await.map_err(io_error)?;
        size += chunk.len() as u64;
    }
    file.flush().await.map_err(io_error)?;
    file.set_permissions(fs::Permissions::from_mode(mode)).await.map_err(io_error)?;
    Ok(size)
}

/// Parses octal permission bits such as `0644`, `644` or `0o755`.
fn parse_mode(mode: Option<&str>) -> Result<u32, ApiError> {
    let Some(mode) = mode else { return Ok(DEFAULT_MODE) };
    let digits = mode.strip_prefix("0o").unwrap_or(mode);
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777).ok_or_else(|| {
        ApiError::bad_request(format!("`mode` must be octal permission bits like 0644, not `{mode}`"))
    })
}

/// `GET /fs/stat?path=P`: the entry itself, not what a symlink points to.
pub(crate) async fn stat(Params(query): Params<PathQuery>) -> Result<Json<EntryInfo>, ApiError> {
    let path = request_path(&query.path)?;
    blocking(move || entry_info(&path).map_err(|e| ApiError::io(&path, &e))).await.map(Json)
}

/// `GET /fs/list?path=P&depth=N`: the entries under a directory, `N` levels deep, by path.
pub(crate) async fn list(Params(query): Params<ListQuery>) -> Result<Json<EntryList>, ApiError> {
    let path = request_path(&query.path)?;
    let depth = match query.depth {
        Some(0) => return Err(ApiError::bad_request("`depth` must be at least 1")),
        depth => depth.unwrap_or(1).min(MAX_DEPTH),
    };
    blocking(move || {
        let meta = fs::metadata(&path).map_err(|e| ApiError::io(&path, &e))?;
        if !meta.is_dir() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "not_directory",
                format!("{} is not a directory", path.display()),
            ));
        }
        let mut entries = Vec::new();
        walk(&path, depth, &mut entries).map_err(|e| ApiError::io(&path, &e))?;
        entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok(Json(EntryList { entries }))
    })
    .await
}

/// Appends the entries of `dir`, and of its subdirectories down to `depth` levels.
fn walk(dir: &Path, depth: u32, out: &mut Vec<EntryInfo>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        // An entry removed since `read_dir` saw it is simply not listed.
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        out.push(info(&path, &meta));
        if depth > 1 && meta.is_dir() {
            // A subdirectory boxd may not read is listed without its contents.
            let _ = walk(&path, depth - 1, out);
        }
    }
    Ok(())
}

/// `POST /fs/mkdir?path=P`: creates the directory and its parents; 409 `exists` if `P` is a file.
pub(crate) async fn mkdir(
    Params(query): Params<PathQuery>,
) -> Result<(StatusCode, Json<EntryInfo>), ApiError> {
    let path = request_path(&query.path)?;
    blocking(move || {
        fs::create_dir_all(&path).map_err(|e| ApiError::io(&path, &e))?;
        entry_info(&path).map_err(|e| ApiError::io(&path, &e))
    })
    .await
    .map(|info| (StatusCode::CREATED, Json(info)))
}

/// `DELETE /fs?path=P`: removes a file, a symlink, or a directory and everything in it.
pub(crate) async fn remove(Params(query): Params<PathQuery>) -> Result<Json<Ack>, ApiError> {
    let path = request_path(&query.path)?;
    if path.parent().is_none() {
        return Err(ApiError::bad_request("refusing to remove `/`"));
    }
    blocking(move || {
        let meta = fs::symlink_metadata(&path).map_err(|e| ApiError::io(&path, &e))?;
        let removed = if meta.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        removed.map_err(|e| ApiError::io(&path, &e))?;
        Ok(Json(Ack { ok: true }))
    })
    .await
}

/// `POST /fs/move`: renames `from` to `to` (which must not exist), creating `to`'s parents and
/// copying across file systems when a rename cannot.
pub(crate) async fn rename(JsonBody(req): JsonBody<MoveRequest>) -> Result<Json<EntryInfo>, ApiError> {
    let from = request_path(&req.from)?;
    let to = request_path(&req.to)?;
    blocking(move || {
        fs::symlink_metadata(&from).map_err(|e| ApiError::io(&from, &e))?;
        if fs::symlink_metadata(&to).is_ok() {
            return Err(ApiError::io(&to, &io::Error::from(io::ErrorKind::AlreadyExists)));
        }
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(|e| ApiError::io(parent, &e))?;
        }
        match fs::rename(&from, &to) {
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                copy_tree(&from, &to).map_err(|e| ApiError::io(&to, &e))?;
                let meta = fs::symlink_metadata(&from).map_err(|e| ApiError::io(&from, &e))?;
                let removed = if meta.is_dir() { fs::remove_dir_all(&from) } else { fs::remove_file(&from) };
                removed.map_err(|e| ApiError::io(&from, &e))?;
            }
            renamed => renamed.map_err(|e| ApiError::io(&from, &e))?,
        }
        entry_info(&to).map(Json).map_err(|e| ApiError::io(&to, &e))
    })
    .await
}

/// Copies `from` to `to`, recursively, keeping symlinks as symlinks and permission bits.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)
    } else if meta.is_dir() {
        fs::create_dir(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        fs::set_permissions(to, meta.permissions())
    } else {
        fs::copy(from, to).map(|_| ())
    }
}

/// `lstat` of `path` as an [`EntryInfo`].
fn entry_info(path: &Path) -> io::Result<EntryInfo> {
    fs::symlink_metadata(path).map(|meta| info(path, &meta))
}

fn info(path: &Path, meta: &fs::Metadata) -> EntryInfo {
    let file_type = meta.file_type();
    let kind = if file_type.is_symlink() {
        EntryKind::Symlink
    } else if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    };
    let symlink_target = (kind == EntryKind::Symlink)
        .then(|| fs::read_link(path).ok())
        .flatten()
        .map(|target| target.to_string_lossy().into_owned());
    EntryInfo {
        name: path.file_name().unwrap_or(path.as_os_str()).to_string_lossy().into_owned(),
        path: path.to_string_lossy().into_owned(),
        kind,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        modified_ms: Some(meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000),
        symlink_target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_permission_bits() {
        assert_eq!(parse_mode(None), Ok(0o644));
        assert_eq!(parse_mode(Some("0755")), Ok(0o755));
        assert_eq!(parse_mode(Some("600")), Ok(0o600));
        assert_eq!(parse_mode(Some("0o4755")), Ok(0o4755));
        assert!(parse_mode(Some("0999")).is_err());
        assert!(parse_mode(Some("77777")).is_err());
        assert!(parse_mode(Some("")).is_err());
    }
}
