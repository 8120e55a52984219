//! The SFTP subsystem (which `scp` uses too): SFTP version 3 over one channel, every operation
//! going to the box's boxd.
//!
//! Files stream both ways, and no file lives in this process's memory. Reads go to boxd range by
//! range as the client asks (ranged `GET /files`, [`READ_AHEAD`] bytes fetched at once and kept
//! per handle). Writes go to boxd as ranged writes (`PUT /files?offset`): `OPEN` with `TRUNCATE`,
//! or with `CREATE` of a missing file, makes the file empty in the box at once, and each handle
//! gathers contiguous `WRITE`s in a write-behind buffer of at most [`WRITE_BEHIND`] bytes, sent
//! when a write is not contiguous with it, when it is full, before a `READ`, `FSTAT` or `FSETSTAT`
//! of the handle, at `CLOSE`, and when the session ends. A failure to send it is the answer to the
//! request that sent it, and `CLOSE` answers it again: writes acknowledged before never reached
//! the file. A session so holds at most [`MAX_HANDLES`] × ([`WRITE_BEHIND`] + [`READ_AHEAD`])
//! bytes of files, whatever their sizes, and [`QUEUED_BYTES`] of requests read ahead.
//!
//! Changes boxd has no endpoint for (modes, times, sizes, symlinks) run `chmod`, `touch`,
//! `truncate` and `ln` in the box; an open file's new mode and times are set at its `CLOSE`,
//! after its last write.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status, StatusCode,
    Version,
};
use russh_sftp::server::StatusReply;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use vendbox_box::wire::{EntryInfo, EntryKind, ProcessSpec, RunRequest};
use vendbox_box::{BoxError, BoxdClient};

/// The longest request accepted, as OpenSSH's own server: 256 KiB.
const MAX_PACKET: u32 = 256 * 1024;

/// The most bytes one read answers with or one write may carry.
const MAX_DATA: u32 = MAX_PACKET - 1024;

/// Requests read ahead of the one being answered.
const QUEUED_REQUESTS: usize = 64;

/// The most bytes of requests read ahead of the one being answered (uploads' `WRITE`s are up
/// to [`MAX_PACKET`] each; at least one must fit).
const QUEUED_BYTES: usize = 4 << 20;

/// How much of a file is fetched from boxd at once for reads (and held per handle).
const READ_AHEAD: u32 = 1 << 20;

/// The most bytes of contiguous writes a handle holds before it sends them to boxd in one
/// ranged write.
const WRITE_BEHIND: usize = 1 << 20;

/// The furthest a write or a size may reach: file offsets are signed (`off_t`).
const MAX_FILE_END: u64 = i64::MAX.cast_unsigned();

/// The most handles one session may have open.
const MAX_HANDLES: usize = 64;

/// Directory entries answered per `READDIR`.
const DIR_BATCH: usize = 128;

/// The box's home: where relative paths start.
const HOME: &str = "/root";

/// The mode of a created file when the client sends none.
const DEFAULT_MODE: u32 = 0o644;

/// Applied to the modes clients ask for when creating, as a server's umask would.
const UMASK: u32 = 0o022;

/// How many symlinks `STAT` follows before giving up.
const MAX_SYMLINK_HOPS: usize = 8;

/// The bits of a mode that say what kind of entry it is (`S_IFMT`), and their values.
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// How much output a helper command (`chmod`, `touch`…) may leave for its error message.
const TOOL_OUTPUT_BYTES: u64 = 4096;

/// Serves SFTP on `stream` until the client ends the session (or breaks the protocol), then
/// gives the stream back (`None` if its reading half was lost to a panic): a caller that ends
/// the channel itself (exit status, EOF, close) does so before dropping it, since dropping a
/// russh channel stream closes the channel at once, and a close that overtakes the exit status
/// makes OpenSSH's client report `Exit status -1` (scp then fails with nothing on stderr).
pub(crate) async fn serve<S>(stream: S, boxd: BoxdClient) -> Option<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut server = Server { boxd, handles: HashMap::new(), next_handle: 0 };
    // Requests are read while answers are written: a client that pipelines requests and an
    // answer waiting for the client's window must not wait for each other. The queue between
    // the two is bounded in requests (a client has at most that many in flight anyway) and in
    // bytes (each request holds its share of `room` until it is answered).
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (queue, mut requests) = tokio::sync::mpsc::channel::<(Bytes, OwnedSemaphorePermit)>(QUEUED_REQUESTS);
    let room = Arc::new(Semaphore::new(QUEUED_BYTES));
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let reading = tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = read_packet(&mut reader, &room) => next,
                _ = &mut stopped => break,
            };
            match next {
                Ok(Some(request)) => {
                    if queue.send(request).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("sftp: ending the session: {e}");
                    break;
                }
            }
        }
        reader
    });
    while let Some((mut request, held)) = requests.recv().await {
        let id = request.get(1..5).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let reply = match Packet::try_from(&mut request) {
            Ok(packet) => server.answer(packet).await,
            Err(e) => status(id, StatusCode::BadMessage.with_message(e.to_string())),
        };
        let sent = match Bytes::try_from(reply) {
            Ok(bytes) => writer.write_all(&bytes).await.and(writer.flush().await),
            Err(e) => {
                tracing::warn!("sftp: an answer could not be encoded: {e}");
                break;
            }
        };
        if let Err(e) = sent {
            tracing::debug!("sftp: ending the session: {e}");
            break;
        }
        drop(held);
    }
    // The reader stops: a request it waits for is given up, one it waits to queue is refused.
    drop(requests);
    let _ = stop.send(());
    // Writes acknowledged on handles the client never closed still reach their files.
    for opened in server.handles.values_mut() {
        if let Opened::File(file) = opened {
            let _ = file.flush(&server.boxd).await;
        }
    }
    let reader = reading.await.ok()?;
    Some(reader.unsplit(writer))
}

/// The next request's bytes (after its length) and their share of `room`, taken before they are
/// read, or `None` when the client closed the stream.
async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    room: &Arc<Semaphore>,
) -> std::io::Result<Option<(Bytes, OwnedSemaphorePermit)>> {
    let length = match stream.read_u32().await {
        Ok(length) => length,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if length > MAX_PACKET {
        return Err(std::io::Error::other(format!(
            "a request of {length} bytes is over the {MAX_PACKET} limit"
        )));
    }
    let held = room.clone().acquire_many_owned(length).await.map_err(std::io::Error::other)?;
    let mut buf = vec![0; length as usize];
    stream.read_exact(&mut buf).await?;
    Ok(Some((Bytes::from(buf), held)))
}

/// One session's state: its boxd and its open handles.
struct Server {
    /// Where every operation goes.
    boxd: BoxdClient,
    /// Open files and directories by handle.
    handles: HashMap<String, Opened>,
    /// The next handle's number; handles are never reused within a session.
    next_handle: u64,
}

/// What a handle stands for.
enum Opened {
    /// A file.
    File(OpenFile),
    /// A directory's entries not yet answered by `READDIR`.
    Dir(VecDeque<File>),
}

/// A file opened with `OPEN`: read from boxd range by range, written to boxd in ranges gathered
/// by a write-behind buffer. Nothing else of it is held.
struct OpenFile {
    /// The absolute path, where reads and writes go.
    path: String,
    /// The file's size as this handle knows it: as it was at `OPEN` (0 once truncated), grown by
    /// the handle's writes and set by its `FSETSTAT`. Reads end there; `APPEND` writes start there.
    size: u64,
    /// The bytes last fetched from boxd and where they start: sequential reads are served from
    /// it, one boxd call per [`READ_AHEAD`] bytes. Emptied by every change through the handle.
    window: (u64, Bytes),
    /// Writes not yet sent to boxd and where they start: contiguous, [`WRITE_BEHIND`] at most.
    pending: (u64, Vec<u8>),
    /// Why writes this handle acknowledged did not reach the file, answered again at `CLOSE`.
    lost: Option<StatusReply>,
    /// Opened with `READ`, or with nothing that writes.
    readable: bool,
    /// Opened with `WRITE` or `APPEND`.
    writable: bool,
    /// Writes go to the end whatever their offset.
    append: bool,
    /// Permission bits: the file's own, or those it is created with.
    mode: u32,
    /// Permission bits `FSETSTAT` asked for, set at `CLOSE`.
    new_mode: Option<u32>,
    /// Last modification, milliseconds since the Unix epoch, as read.
    modified_ms: Option<i64>,
    /// Access and modification times `FSETSTAT` asked for, set at `CLOSE`.
    times: (Option<u32>, Option<u32>),
}

impl OpenFile {
    /// Sends the held writes to boxd. A failure is this call's error, and is kept for `CLOSE`:
    /// the writes were acknowledged and never reached the file.
    async fn flush(&mut self, boxd: &BoxdClient) -> Result<(), StatusReply> {
        if self.pending.1.is_empty() {
            return Ok(());
        }
        let (start, held) = std::mem::take(&mut self.pending);
        let length = held.len() as u64;
        let failed = match boxd.write_range(&self.path, start, Bytes::from(held)).await {
            Ok(written) if written == length => return Ok(()),
            Ok(written) => {
                failure(format!("boxd wrote {written} of {length} bytes at offset {start} of {}", self.path))
            }
            Err(e) => refusal(e),
        };
        self.lost.get_or_insert_with(|| failed.clone());
        Err(failed)
    }
}

/// What a request answers: its reply packet, or a status saying why not.
type Answer = Result<Packet, StatusReply>;

impl Server {
    async fn answer(&mut self, packet: Packet) -> Packet {
        let id = packet.get_request_id();
        let answer = match packet {
            Packet::Init(_) => return Packet::Version(version()),
            Packet::Open(p) => self.open(p.id, &p.filename, p.pflags, &p.attrs).await,
            Packet::Close(p) => self.close(p.id, &p.handle).await,
            Packet::Read(p) => self.read(p.id, &p.handle, p.offset, p.len).await,
            Packet::Write(p) => self.write(p.id, &p.handle, p.offset, &p.data).await,
            Packet::Fstat(p) => self.fstat(p.id, &p.handle).await,
            Packet::FSetStat(p) => self.fsetstat(p.id, &p.handle, &p.attrs).await,
            Packet::Lstat(p) => self.lstat(p.id, &p.path).await,
            Packet::Stat(p) => self.stat(p.id, &p.path).await,
            Packet::SetStat(p) => self.setstat(p.id, &p.path, &p.attrs).await,
            Packet::OpenDir(p) => self.opendir(p.id, &p.path).await,
            Packet::ReadDir(p) => self.readdir(p.id, &p.handle),
            Packet::Remove(p) => self.remove(p.id, &p.filename).await,
            Packet::MkDir(p) => self.mkdir(p.id, &p.path, &p.attrs).await,
            Packet::RmDir(p) => self.rmdir(p.id, &p.path).await,
            Packet::RealPath(p) => Ok(name(p.id, File::dummy(resolve(&p.path)))),
            Packet::Rename(p) => self.rename(p.id, &p.oldpath, &p.newpath).await,
            Packet::ReadLink(p) => self.readlink(p.id, &p.path).await,
            // OpenSSH sends the target first and the new link second, the reverse of the draft.
            Packet::Symlink(p) => self.symlink(p.id, &p.linkpath, &p.targetpath).await,
            Packet::Extended(p) if p.request == russh_sftp::extensions::LIMITS => Ok(limits(p.id)),
            Packet::Extended(_) => Err(StatusCode::OpUnsupported.into()),
            _ => Err(StatusCode::BadMessage.with_message("not a request")),
        };
        answer.unwrap_or_else(|reply| status(id, reply))
    }

    async fn open(&mut self, id: u32, filename: &str, flags: OpenFlags, attrs: &FileAttributes) -> Answer {
        if self.handles.len() >= MAX_HANDLES {
            return Err(failure(format!("a session may hold at most {MAX_HANDLES} open handles")));
        }
        let path = resolve(filename);
        let writable = flags.intersects(OpenFlags::WRITE | OpenFlags::APPEND);
        let existing = match self.stat_following(&path).await {
            Ok(info) => Some(info),
            Err(reply) if reply.status_code == StatusCode::NoSuchFile => None,
            Err(reply) => return Err(reply),
        };
        match &existing {
            Some(info) if info.kind == EntryKind::Dir => {
                return Err(failure(format!("{path} is a directory")));
            }
            Some(info) if info.kind != EntryKind::File => {
                return Err(failure(format!("{path} is not a regular file")));
            }
            Some(_) if flags.contains(OpenFlags::CREATE | OpenFlags::EXCLUDE) => {
                return Err(failure(format!("{path} already exists")));
            }
            None if !writable || !flags.contains(OpenFlags::CREATE) => {
                return Err(StatusCode::NoSuchFile.with_message(format!("{path}: no such file")));
            }
            None => self.require_dir(parent(&path)).await?,
            Some(_) => {}
        }
        let mode = existing.as_ref().map_or_else(
            || attrs.permissions.map_or(DEFAULT_MODE, |mode| mode & 0o7777 & !UMASK),
            |info| info.mode,
        );
        // Emptied in the box now (a whole-file write of nothing, with the mode), so that every
        // write after is a ranged one.
        let empty = writable && (existing.is_none() || flags.contains(OpenFlags::TRUNCATE));
        if empty {
            self.boxd.write_file(&path, Bytes::new(), mode).await.map_err(refusal)?;
        }
        let file = OpenFile {
            path,
            size: if empty { 0 } else { existing.as_ref().map_or(0, |info| info.size) },
            window: (0, Bytes::new()),
            pending: (0, Vec::new()),
            lost: None,
            readable: flags.contains(OpenFlags::READ) || !writable,
            writable,
            append: flags.contains(OpenFlags::APPEND),
            mode,
            new_mode: None,
            modified_ms: existing.and_then(|info| info.modified_ms),
            times: (None, None),
        };
        Ok(self.insert(id, Opened::File(file)))
    }

    /// Sends the file's held writes, then sets the mode and times its `FSETSTAT` asked for.
    async fn close(&mut self, id: u32, handle: &str) -> Answer {
        let Some(opened) = self.handles.remove(handle) else { return Err(no_handle(handle)) };
        let Opened::File(mut file) = opened else { return Ok(ok(id)) };
        if !file.writable {
            return Ok(ok(id));
        }
        let flushed = file.flush(&self.boxd).await;
        if let Some(lost) = file.lost {
            return Err(lost);
        }
        flushed?;
        if let Some(mode) = file.new_mode {
            self.tool("chmod", &[&format!("{mode:o}"), "--", &file.path]).await?;
        }
        self.set_times(&file.path, file.times).await?;
        Ok(ok(id))
    }

    async fn read(&mut self, id: u32, handle: &str, offset: u64, len: u32) -> Answer {
        let boxd = self.boxd.clone();
        let file = self.file_mut(handle)?;
        if !file.readable {
            return Err(StatusCode::PermissionDenied.with_message("the file was not opened for reading"));
        }
        file.flush(&boxd).await?;
        if offset >= file.size {
            return Err(StatusCode::Eof.into());
        }
        // The whole answer comes from one window: a short read in the middle of a file makes
        // OpenSSH's client re-request out of order, and then it keeps only what came in order.
        let wanted = u64::from(len.min(MAX_DATA)).min(file.size - offset);
        let (start, window) = &file.window;
        let covered = offset >= *start && offset + wanted <= start + window.len() as u64;
        if !covered {
            let (_, data) = boxd.read_range(&file.path, offset, READ_AHEAD).await.map_err(refusal)?;
            file.window = (offset, data);
        }
        let (start, window) = &file.window;
        let from = usize::try_from(offset - start).unwrap_or(usize::MAX).min(window.len());
        let to = from.saturating_add(len.min(MAX_DATA) as usize).min(window.len());
        if from == to {
            // The file shrank since the handle last knew its size.
            return Err(StatusCode::Eof.into());
        }
        Ok(Packet::Data(Data { id, data: window.slice(from..to).to_vec() }))
    }

    /// Adds a write to the handle's write-behind buffer, sending what it held first when the
    /// write does not continue it or would overflow it, and sending it when it is full.
    async fn write(&mut self, id: u32, handle: &str, offset: u64, data: &[u8]) -> Answer {
        let boxd = self.boxd.clone();
        let file = self.file_mut(handle)?;
        if !file.writable {
            return Err(StatusCode::PermissionDenied.with_message("the file was not opened for writing"));
        }
        if data.is_empty() {
            return Ok(ok(id));
        }
        let start = if file.append { file.size } else { offset };
        // The offset is the client's: checked, so a huge one is refused, never an overflow.
        let Some(end) = start.checked_add(data.len() as u64).filter(|end| *end <= MAX_FILE_END) else {
            return Err(failure(format!("a write may not reach past byte {MAX_FILE_END} of a file")));
        };
        let (held_start, held) = &file.pending;
        let continues = held.is_empty() || held_start + held.len() as u64 == start;
        if !continues || held.len() + data.len() > WRITE_BEHIND {
            file.flush(&boxd).await?;
        }
        if file.pending.1.is_empty() {
            file.pending.0 = start;
        }
        file.pending.1.extend_from_slice(data);
        file.size = file.size.max(end);
        file.window = (0, Bytes::new());
        if file.pending.1.len() >= WRITE_BEHIND {
            file.flush(&boxd).await?;
        }
        Ok(ok(id))
    }

    async fn fstat(&mut self, id: u32, handle: &str) -> Answer {
        let boxd = self.boxd.clone();
        let file = self.file_mut(handle)?;
        file.flush(&boxd).await?;
        let mtime = file.times.1.or_else(|| seconds(file.modified_ms));
        let attrs = FileAttributes {
            size: Some(file.size),
            permissions: Some(S_IFREG | file.new_mode.unwrap_or(file.mode)),
            atime: file.times.0.or(mtime),
            mtime,
            ..owner()
        };
        Ok(Packet::Attrs(Attrs { id, attrs }))
    }

    /// Changes an open file: its size now (`truncate` in the box), its mode and times at `CLOSE`.
    async fn fsetstat(&mut self, id: u32, handle: &str, attrs: &FileAttributes) -> Answer {
        let boxd = self.boxd.clone();
        let file = self.file_mut(handle)?;
        if !file.writable {
            return Err(StatusCode::PermissionDenied.with_message("the file was not opened for writing"));
        }
        file.flush(&boxd).await?;
        if let Some(size) = attrs.size {
            if size > MAX_FILE_END {
                return Err(failure(format!("a file may not be longer than {MAX_FILE_END} bytes")));
            }
            let path = file.path.clone();
            self.tool("truncate", &["-s", &size.to_string(), "--", &path]).await?;
            let file = self.file_mut(handle)?;
            file.size = size;
            file.window = (0, Bytes::new());
        }
        let file = self.file_mut(handle)?;
        if let Some(mode) = attrs.permissions {
            file.new_mode = Some(mode & 0o7777);
        }
        if attrs.atime.is_some() || attrs.mtime.is_some() {
            file.times = (attrs.atime, attrs.mtime);
        }
        Ok(ok(id))
    }

    async fn lstat(&self, id: u32, path: &str) -> Answer {
        let info = self.boxd.stat(&resolve(path)).await.map_err(refusal)?;
        Ok(Packet::Attrs(Attrs { id, attrs: attributes(&info) }))
    }

    async fn stat(&self, id: u32, path: &str) -> Answer {
        let info = self.stat_following(&resolve(path)).await?;
        Ok(Packet::Attrs(Attrs { id, attrs: attributes(&info) }))
    }

    /// Changes an entry's mode, size and times with `chmod`, `truncate` and `touch` in the box.
    async fn setstat(&self, id: u32, path: &str, attrs: &FileAttributes) -> Answer {
        let path = resolve(path);
        self.boxd.stat(&path).await.map_err(refusal)?;
        if let Some(mode) = attrs.permissions {
            self.tool("chmod", &[&format!("{:o}", mode & 0o7777), "--", &path]).await?;
        }
        if let Some(size) = attrs.size {
            self.tool("truncate", &["-s", &size.to_string(), "--", &path]).await?;
        }
        self.set_times(&path, (attrs.atime, attrs.mtime)).await?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: &str) -> Answer {
        if self.handles.len() >= MAX_HANDLES {
            return Err(failure(format!("a session may hold at most {MAX_HANDLES} open handles")));
        }
        let path = resolve(path);
        let info = self.stat_following(&path).await?;
        if info.kind != EntryKind::Dir {
            return Err(failure(format!("{path} is not a directory")));
        }
        let entries = self.boxd.list(&info.path, 1).await.map_err(refusal)?;
        let files = entries.iter().map(directory_entry).collect();
        Ok(self.insert(id, Opened::Dir(files)))
    }

    fn readdir(&mut self, id: u32, handle: &str) -> Answer {
        let Some(Opened::Dir(files)) = self.handles.get_mut(handle) else { return Err(no_handle(handle)) };
        if files.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        let batch = files.drain(..files.len().min(DIR_BATCH)).collect();
        Ok(Packet::Name(Name { id, files: batch }))
    }

    async fn remove(&self, id: u32, path: &str) -> Answer {
        let path = resolve(path);
        let info = self.boxd.stat(&path).await.map_err(refusal)?;
        if info.kind == EntryKind::Dir {
            return Err(failure(format!("{path} is a directory")));
        }
        self.boxd.remove(&path).await.map_err(refusal)?;
        Ok(ok(id))
    }

    async fn mkdir(&self, id: u32, path: &str, attrs: &FileAttributes) -> Answer {
        let path = resolve(path);
        match self.boxd.stat(&path).await {
            Ok(_) => return Err(failure(format!("{path} already exists"))),
            Err(e) => match refusal(e) {
                reply if reply.status_code == StatusCode::NoSuchFile => {}
                reply => return Err(reply),
            },
        }
        self.require_dir(parent(&path)).await?;
        let info = self.boxd.mkdir(&path).await.map_err(refusal)?;
        if let Some(mode) = attrs.permissions.map(|mode| mode & 0o7777 & !UMASK)
            && mode != info.mode
        {
            self.tool("chmod", &[&format!("{mode:o}"), "--", &path]).await?;
        }
        Ok(ok(id))
    }

    /// Removes an empty directory (boxd's `DELETE /fs` would remove a whole tree).
    async fn rmdir(&self, id: u32, path: &str) -> Answer {
        let path = resolve(path);
        let info = self.boxd.stat(&path).await.map_err(refusal)?;
        if info.kind != EntryKind::Dir {
            return Err(failure(format!("{path} is not a directory")));
        }
        if !self.boxd.list(&path, 1).await.map_err(refusal)?.is_empty() {
            return Err(failure(format!("{path} is not empty")));
        }
        self.boxd.remove(&path).await.map_err(refusal)?;
        Ok(ok(id))
    }

    async fn rename(&self, id: u32, from: &str, to: &str) -> Answer {
        let (from, to) = (resolve(from), resolve(to));
        self.require_dir(parent(&to)).await?;
        self.boxd.rename(&from, &to).await.map_err(refusal)?;
        Ok(ok(id))
    }

    async fn readlink(&self, id: u32, path: &str) -> Answer {
        let path = resolve(path);
        let info = self.boxd.stat(&path).await.map_err(refusal)?;
        let Some(target) = info.symlink_target else {
            return Err(failure(format!("{path} is not a symbolic link")));
        };
        Ok(name(id, File::dummy(target)))
    }

    async fn symlink(&self, id: u32, target: &str, link: &str) -> Answer {
        self.tool("ln", &["-s", "--", target, &resolve(link)]).await?;
        Ok(ok(id))
    }

    /// What `path` is, following symlinks.
    async fn stat_following(&self, path: &str) -> Result<EntryInfo, StatusReply> {
        let mut path = path.to_owned();
        for _ in 0..=MAX_SYMLINK_HOPS {
            let info = self.boxd.stat(&path).await.map_err(refusal)?;
            match &info.symlink_target {
                Some(target) if info.kind == EntryKind::Symlink => {
                    path = if target.starts_with('/') {
                        resolve(target)
                    } else {
                        resolve(&format!("{}/{target}", parent(&path)))
                    };
                }
                _ => return Ok(info),
            }
        }
        Err(failure(format!("{path}: too many levels of symbolic links")))
    }

    /// Fails unless `path` is a directory, as creating an entry in it needs.
    async fn require_dir(&self, path: &str) -> Result<(), StatusReply> {
        let info = self.stat_following(path).await?;
        if info.kind != EntryKind::Dir {
            return Err(failure(format!("{path} is not a directory")));
        }
        Ok(())
    }

    /// Sets `path`'s access and modification times (seconds since the Unix epoch) that are given.
    async fn set_times(
        &self,
        path: &str,
        (atime, mtime): (Option<u32>, Option<u32>),
    ) -> Result<(), StatusReply> {
        if let Some(mtime) = mtime {
            self.tool("touch", &["-m", "-d", &format!("@{mtime}"), "--", path]).await?;
        }
        if let Some(atime) = atime {
            self.tool("touch", &["-a", "-d", &format!("@{atime}"), "--", path]).await?;
        }
        Ok(())
    }

    /// Runs `cmd` in the box; its error output is the failure's message.
    async fn tool(&self, cmd: &str, args: &[&str]) -> Result<(), StatusReply> {
        let request = RunRequest {
            process: ProcessSpec {
                cmd: cmd.to_owned(),
                args: args.iter().map(|&arg| arg.to_owned()).collect(),
                ..ProcessSpec::default()
            },
            max_output_bytes: TOOL_OUTPUT_BYTES,
        };
        let result = self.boxd.run(&request).await.map_err(refusal)?;
        if result.exit_code == Some(0) {
            return Ok(());
        }
        let message = result.stderr.trim();
        Err(failure(if message.is_empty() { format!("{cmd} failed") } else { message.to_owned() }))
    }

    fn insert(&mut self, id: u32, opened: Opened) -> Packet {
        self.next_handle += 1;
        let handle = self.next_handle.to_string();
        self.handles.insert(handle.clone(), opened);
        Packet::Handle(Handle { id, handle })
    }

    fn file_mut(&mut self, handle: &str) -> Result<&mut OpenFile, StatusReply> {
        match self.handles.get_mut(handle) {
            Some(Opened::File(file)) => Ok(file),
            _ => Err(no_handle(handle)),
        }
    }
}

/// `path` made absolute (relative paths, `~` and `~/…` start at [`HOME`]), without `.` and `..`.
fn resolve(path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_owned()
    } else if let Some(rest) = path.strip_prefix('~').filter(|rest| rest.is_empty() || rest.starts_with('/'))
    {
        format!("{HOME}{rest}")
    } else {
        format!("{HOME}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The directory holding the absolute, resolved `path` (`/` for `/`).
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// An entry's SFTP attributes; the permissions carry the kind bits (`S_IFDIR`…) clients look at.
fn attributes(info: &EntryInfo) -> FileAttributes {
    let kind = match info.kind {
        EntryKind::File => S_IFREG,
        EntryKind::Dir => S_IFDIR,
        EntryKind::Symlink => S_IFLNK,
        EntryKind::Other => 0,
    };
    let mtime = seconds(info.modified_ms);
    FileAttributes {
        size: Some(info.size),
        permissions: Some(kind | info.mode),
        atime: mtime,
        mtime,
        ..owner()
    }
}

/// Every entry in a box belongs to root.
fn owner() -> FileAttributes {
    FileAttributes {
        uid: Some(0),
        gid: Some(0),
        user: Some("root".to_owned()),
        group: Some("root".to_owned()),
        ..FileAttributes::default()
    }
}

/// One `READDIR` entry, with an `ls -l` style long name.
fn directory_entry(info: &EntryInfo) -> File {
    let mut file = File::new(info.name.clone(), attributes(info));
    // russh-sftp's long name knows only directories and everything else.
    let kind = match info.kind {
        EntryKind::Symlink => Some("l"),
        EntryKind::Other => Some("?"),
        EntryKind::File | EntryKind::Dir => None,
    };
    if let Some(kind) = kind {
        file.longname.replace_range(..1, kind);
    }
    file
}

/// Milliseconds since the Unix epoch as SFTP version 3's seconds (which end in 2106).
fn seconds(ms: Option<i64>) -> Option<u32> {
    ms.and_then(|ms| u32::try_from(ms.div_euclid(1000)).ok())
}

/// The answer to `INIT`: version 3, and the limits we keep.
fn version() -> Version {
    let mut version = Version::new();
    version.extensions.insert(russh_sftp::extensions::LIMITS.to_owned(), "1".to_owned());
    version
}

/// The answer to `limits@openssh.com`: packet, read and write lengths and open handles, four
/// big-endian `uint64`s.
fn limits(id: u32) -> Packet {
    let data = [u64::from(MAX_PACKET), u64::from(MAX_DATA), u64::from(MAX_DATA), MAX_HANDLES as u64]
        .iter()
        .flat_map(|limit| limit.to_be_bytes())
        .collect();
    Packet::ExtendedReply(ExtendedReply { id, data })
}

fn name(id: u32, file: File) -> Packet {
    Packet::Name(Name { id, files: vec![file] })
}

fn ok(id: u32) -> Packet {
    status(id, StatusCode::Ok.into())
}

fn status(id: u32, reply: StatusReply) -> Packet {
    Packet::Status(Status {
        id,
        status_code: reply.status_code,
        error_message: reply.error_message.unwrap_or_else(|| reply.status_code.to_string()),
        language_tag: reply.language_tag.unwrap_or_else(|| "en-US".to_owned()),
    })
}

fn failure(message: String) -> StatusReply {
    StatusCode::Failure.with_message(message)
}

fn no_handle(handle: &str) -> StatusReply {
    failure(format!("no open handle `{handle}`"))
}

/// boxd's error as an SFTP status.
fn refusal(err: BoxError) -> StatusReply {
    match err {
        BoxError::Boxd { code, message, .. } if code == "not_found" => {
            StatusCode::NoSuchFile.with_message(message)
        }
        BoxError::Boxd { status: 403, message, .. } => StatusCode::PermissionDenied.with_message(message),
        BoxError::Boxd { message, .. } => failure(message),
        other => failure(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_home() {
        assert_eq!(resolve("."), "/root");
        assert_eq!(resolve(""), "/root");
        assert_eq!(resolve("~"), "/root");
        assert_eq!(resolve("~/a/./b"), "/root/a/b");
        assert_eq!(resolve("a/../../etc"), "/etc");
        assert_eq!(resolve("/../x/"), "/x");
        assert_eq!(resolve("~x"), "/root/~x");
        assert_eq!(parent("/root/a"), "/root");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/"), "/");
    }

    #[test]
    fn attributes_carry_the_kind() {
        let info = EntryInfo {
            name: "d".into(),
            path: "/d".into(),
            kind: EntryKind::Dir,
            size: 4096,
            mode: 0o755,
            modified_ms: Some(1_700_000_000_123),
            symlink_target: None,
        };
        let attrs = attributes(&info);
        assert!(attrs.is_dir());
        assert_eq!(attrs.permissions, Some(0o40_755));
        assert_eq!(attrs.mtime, Some(1_700_000_000));
        assert!(directory_entry(&info).longname.starts_with("drwxr-xr-x"));
    }
}
