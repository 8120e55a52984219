//! envd's `filesystem.Filesystem` over boxd's files: `Stat`, `ListDir`, `MakeDir`, `Move`,
//! `Remove`, and directory watches (`WatchDir`, a server stream, and the polled watchers
//! `CreateWatcher`, `GetWatcherEvents`, `RemoveWatcher`).
//!
//! boxd has no file-change notifications, so a watch compares listings of the directory taken
//! every [`WATCH_EVERY`]: an entry that appears is `CREATE`, one whose size or modification
//! time changed is `WRITE`, one that is gone is `REMOVE` (a rename shows as a remove and a
//! create). Changes between two listings that undo each other are not seen.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use envd_proto::filesystem::{
    CreateWatcherRequest, CreateWatcherResponse, EntryInfo, EventType, FileType, FilesystemEvent,
    GetWatcherEventsRequest, GetWatcherEventsResponse, ListDirRequest, ListDirResponse, MakeDirRequest,
    MakeDirResponse, MoveRequest, MoveResponse, RemoveRequest, RemoveResponse, RemoveWatcherRequest,
    RemoveWatcherResponse, StatRequest, StatResponse, WatchDirRequest, WatchDirResponse, watch_dir_response,
};
use envd_proto::pbjson_types::Timestamp;
use vendbox_box::BoxdClient;
use vendbox_box::wire::{self, EntryKind};
use vendbox_core::LeaseId;

use super::connect::{self, Code, RpcError};
use super::envd::{self, SandboxTarget};
use crate::app::AppState;

/// How often a watch lists its directory.
pub const WATCH_EVERY: Duration = Duration::from_millis(200);

/// How deep a recursive watch looks.
const RECURSIVE_DEPTH: u32 = 10;

/// Watchers a sandbox may hold at once.
const MAX_WATCHERS: usize = 64;

/// Events a polled watcher keeps before the oldest are dropped.
const MAX_PENDING: usize = 10_000;

/// Serves one `filesystem.Filesystem` call.
pub async fn call(
    state: &AppState,
    target: &SandboxTarget,
    method: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let opened = match envd::open(state, headers, target).await {
        Ok(opened) => opened,
        Err(e) if method == "WatchDir" => return connect::stream_error(&e),
        Err(e) => return e.into_response(),
    };
    let boxd = opened.boxd;
    let lease = opened.lease.id;
    if method == "WatchDir" {
        return match watch(boxd, body).await {
            Ok(response) => response,
            Err(e) => connect::stream_error(&e),
        };
    }
    unary(&boxd, lease, method, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn unary(boxd: &BoxdClient, lease: LeaseId, method: &str, body: &Bytes) -> Result<Response, RpcError> {
    Ok(match method {
        "Stat" => {
            let request: StatRequest = connect::unary(body)?;
            connect::reply(&StatResponse { entry: Some(entry(boxd.stat(&request.path).await?)) })
        }
        "ListDir" => {
            let request: ListDirRequest = connect::unary(body)?;
            let depth = request.depth.clamp(1, RECURSIVE_DEPTH);
            let entries = boxd.list(&request.path, depth).await?.into_iter().map(entry).collect();
            connect::reply(&ListDirResponse { entries })
        }
        "MakeDir" => {
            let request: MakeDirRequest = connect::unary(body)?;
            if boxd.stat(&request.path).await.is_ok() {
                return Err(RpcError::new(Code::AlreadyExists, format!("`{}` exists already", request.path)));
            }
            connect::reply(&MakeDirResponse { entry: Some(entry(boxd.mkdir(&request.path).await?)) })
        }
        "Move" => {
            let request: MoveRequest = connect::unary(body)?;
            let moved = boxd.rename(&request.source, &request.destination).await?;
            connect::reply(&MoveResponse { entry: Some(entry(moved)) })
        }
        "Remove" => {
            let request: RemoveRequest = connect::unary(body)?;
            boxd.remove(&request.path).await?;
            connect::reply(&RemoveResponse {})
        }
        "CreateWatcher" => {
            let request: CreateWatcherRequest = connect::unary(body)?;
            let depth = if request.recursive { RECURSIVE_DEPTH } else { 1 };
            let seen = listing(boxd, &request.path, depth).await?;
            let id = uuid::Uuid::new_v4().to_string();
            let mut watchers = watchers().lock().unwrap_or_else(PoisonError::into_inner);
            if watchers.values().filter(|w| w.lease == lease).count() >= MAX_WATCHERS {
                return Err(RpcError::new(Code::ResourceExhausted, "too many watchers; remove some first"));
            }
            let watcher = Watcher { lease, path: request.path, depth, seen, pending: Vec::new() };
            watchers.insert(id.clone(), watcher);
            connect::reply(&CreateWatcherResponse { watcher_id: id })
        }
        "GetWatcherEvents" => {
            let request: GetWatcherEventsRequest = connect::unary(body)?;
            let (path, depth, seen) = {
                let watchers = watchers().lock().unwrap_or_else(PoisonError::into_inner);
                let w =
                    watchers.get(&request.watcher_id).filter(|w| w.lease == lease).ok_or_else(no_watcher)?;
                (w.path.clone(), w.depth, w.seen.clone())
            };
            let now = listing(boxd, &path, depth).await?;
            let mut events = changes(&path, &seen, &now);
            let mut watchers = watchers().lock().unwrap_or_else(PoisonError::into_inner);
            let w = watchers.get_mut(&request.watcher_id).ok_or_else(no_watcher)?;
            w.seen = now;
            let mut all = std::mem::take(&mut w.pending);
            all.append(&mut events);
            connect::reply(&GetWatcherEventsResponse { events: all })
        }
        "RemoveWatcher" => {
            let request: RemoveWatcherRequest = connect::unary(body)?;
            let mut watchers = watchers().lock().unwrap_or_else(PoisonError::into_inner);
            watchers.get(&request.watcher_id).filter(|w| w.lease == lease).ok_or_else(no_watcher)?;
            watchers.remove(&request.watcher_id);
            connect::reply(&RemoveWatcherResponse {})
        }
        _ => {
            return Err(RpcError::new(
                Code::Unimplemented,
                format!("filesystem.Filesystem has no method `{method}`"),
            ));
        }
    })
}

fn no_watcher() -> RpcError {
    RpcError::new(Code::NotFound, "no such watcher")
}

/// A polled watcher.
#[derive(Debug)]
struct Watcher {
    lease: LeaseId,
    path: String,
    depth: u32,
    seen: Listing,
    pending: Vec<FilesystemEvent>,
}

fn watchers() -> &'static Mutex<HashMap<String, Watcher>> {
    static WATCHERS: OnceLock<Mutex<HashMap<String, Watcher>>> = OnceLock::new();
    WATCHERS.get_or_init(Mutex::default)
}

/// What a listing shows of each entry: its kind, size and modification time.
type Listing = BTreeMap<String, (EntryKind, u64, Option<i64>)>;

async fn listing(boxd: &BoxdClient, path: &str, depth: u32) -> Result<Listing, RpcError> {
    let root = boxd.stat(path).await?;
    if root.kind != EntryKind::Dir {
        return Err(RpcError::new(Code::InvalidArgument, format!("`{path}` is not a directory")));
    }
    Ok(boxd.list(path, depth).await?.into_iter().map(|e| (e.path, (e.kind, e.size, e.modified_ms))).collect())
}

/// The events between two listings of `root`, named relative to it.
fn changes(root: &str, before: &Listing, after: &Listing) -> Vec<FilesystemEvent> {
    let root = root.trim_end_matches('/');
    let name = |path: &str| path.strip_prefix(root).unwrap_or(path).trim_start_matches('/').to_owned();
    let event =
        |path: &str, kind: EventType| FilesystemEvent { name: name(path), r#type: kind as i32, entry: None };
    let mut events = Vec::new();
    for (path, now) in after {
        match before.get(path) {
            None => events.push(event(path, EventType::Create)),
            Some(was) if was != now => events.push(event(path, EventType::Write)),
            Some(_) => {}
        }
    }
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        events.push(event(path, EventType::Remove));
    }
    events.truncate(MAX_PENDING);
    events
}

/// `WatchDir`: a start event, then the directory's changes until the client goes away or the
/// directory cannot be listed any more.
async fn watch(boxd: BoxdClient, body: &Bytes) -> Result<Response, RpcError> {
    let request: WatchDirRequest = connect::first_message(body)?;
    let depth = if request.recursive { RECURSIVE_DEPTH } else { 1 };
    let seen = listing(&boxd, &request.path, depth).await?;
    let start =
        WatchDirResponse { event: Some(watch_dir_response::Event::Start(watch_dir_response::StartEvent {})) };
    let first = connect::message_frame(&start);
    let state = (boxd, request.path, depth, seen, Some(first), false);
    let frames = futures_util::stream::unfold(state, |(boxd, path, depth, seen, first, done)| async move {
        if done {
            return None;
        }
        if let Some(first) = first {
            return Some((first, (boxd, path, depth, seen, None, false)));
        }
        let mut quiet = Duration::ZERO;
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let now = match listing(&boxd, &path, depth).await {
                Ok(now) => now,
                Err(e) => return Some((connect::end_frame(Some(&e)), (boxd, path, depth, seen, None, true))),
            };
            let events = changes(&path, &seen, &now);
            if !events.is_empty() {
                let mut frames = Vec::new();
                for event in events {
                    let message =
                        WatchDirResponse { event: Some(watch_dir_response::Event::Filesystem(event)) };
                    frames.extend_from_slice(&connect::message_frame(&message));
                }
                return Some((Bytes::from(frames), (boxd, path, depth, now, None, false)));
            }
            quiet += WATCH_EVERY;
            if quiet >= Duration::from_secs(30) {
                let alive = WatchDirResponse {
                    event: Some(watch_dir_response::Event::Keepalive(watch_dir_response::KeepAlive {})),
                };
                return Some((connect::message_frame(&alive), (boxd, path, depth, now, None, false)));
            }
        }
    });
    Ok(connect::streaming(frames))
}

/// envd's entry for boxd's.
pub fn entry(e: wire::EntryInfo) -> EntryInfo {
    let kind = match e.kind {
        EntryKind::File => FileType::File,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Other => FileType::Unspecified,
    };
    EntryInfo {
        name: e.name,
        r#type: kind as i32,
        path: e.path,
        size: i64::try_from(e.size).unwrap_or(i64::MAX),
        mode: e.mode,
        permissions: permissions(e.kind, e.mode),
        owner: "root".into(),
        group: "root".into(),
        modified_time: e.modified_ms.map(|ms| Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
        }),
        symlink_target: e.symlink_target,
        metadata: HashMap::new(),
    }
}

/// `ls -l`'s permission string (`drwxr-xr-x`).
fn permissions(kind: EntryKind, mode: u32) -> String {
    let mut text = String::with_capacity(10);
    text.push(match kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::File | EntryKind::Other => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_differ_by_creates_writes_and_removes() {
        let mut before = Listing::new();
        before.insert("/w/a".into(), (EntryKind::File, 1, Some(1)));
        before.insert("/w/b".into(), (EntryKind::File, 1, Some(1)));
        let mut after = before.clone();
        after.insert("/w/a".into(), (EntryKind::File, 2, Some(2)));
        after.remove("/w/b");
        after.insert("/w/c".into(), (EntryKind::Dir, 0, Some(3)));
        let seen: Vec<(String, i32)> =
            changes("/w/", &before, &after).into_iter().map(|e| (e.name, e.r#type)).collect();
        assert_eq!(
            seen,
            [
                ("a".into(), EventType::Write as i32),
                ("c".into(), EventType::Create as i32),
                ("b".into(), EventType::Remove as i32)
            ]
        );
        assert_eq!(permissions(EntryKind::Dir, 0o755), "drwxr-xr-x");
    }
}
