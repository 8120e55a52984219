//! `GET /v1/boxes/{id}/dir?path=`: what a directory of a box holds, with the box's root token.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use vendbox_box::wire::{EntryInfo, EntryKind};
use vendbox_core::Capability;

use super::boxes::{file_error, service};
use crate::app::AppState;
use crate::auth::optional_bearer;
use crate::error::ApiError;

/// The deepest listing one request may ask for.
const MAX_DEPTH: u32 = 4;

/// `?path=&depth=` of a listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DirQuery {
    /// The directory: absolute, or relative to `/root`.
    pub path: String,
    /// Levels to descend (1 to 4, 1 by default: the directory's own entries).
    #[param(minimum = 1, maximum = 4)]
    pub depth: Option<u32>,
}

/// One entry of a directory.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DirEntry {
    /// The last path component.
    pub name: String,
    /// The absolute path.
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits, in octal (`"644"`).
    pub mode: String,
    /// Last modification, milliseconds since the Unix epoch.
    pub modified_ms: Option<i64>,
    /// Where a symlink points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

impl From<EntryInfo> for DirEntry {
    fn from(e: EntryInfo) -> Self {
        DirEntry {
            name: e.name,
            path: e.path,
            kind: match e.kind {
                EntryKind::File => "file",
                EntryKind::Dir => "dir",
                EntryKind::Symlink => "symlink",
                EntryKind::Other => "other",
            },
            size: e.size,
            mode: format!("{:o}", e.mode),
            modified_ms: e.modified_ms,
            symlink_target: e.symlink_target,
        }
    }
}

/// A directory's entries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DirListing {
    /// The directory listed.
    pub path: String,
    /// Its entries (and theirs, down to `depth`), sorted by path.
    pub entries: Vec<DirEntry>,
}

/// Lists a directory of the box (no action is spent).
#[utoipa::path(get, path = "/v1/boxes/{id}/dir", operation_id = "listBoxDirectory", tag = "boxes",
    security(("lease_token" = [])), params(("id" = String, Path, description = "Box id"), DirQuery),
    responses((status = 200, body = DirListing), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 404, description = "No such box or directory", body = crate::error::ErrorBody),
        (status = 410, description = "box_expired, box_terminated or box_failed", body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<DirQuery>,
) -> Result<Json<DirListing>, ApiError> {
    let depth = query.depth.unwrap_or(1);
    if !(1..=MAX_DEPTH).contains(&depth) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "out_of_range",
            format!("`depth` must be between 1 and {MAX_DEPTH}"),
        )
        .with_field("depth"));
    }
    let boxes = service(&state)?;
    let lease = boxes.open(&id, optional_bearer(&headers).as_ref(), Capability::Root).await?;
    let entries = boxes.boxd(&lease)?.list(&query.path, depth).await.map_err(file_error)?;
    Ok(Json(DirListing { path: query.path, entries: entries.into_iter().map(DirEntry::from).collect() }))
}
