//! Pods of local boxes: boxes that share their first box's network namespace and mount named
//! volumes kept on its disk.
//!
//! The namespace is the host's (`net::loopback_namespace`, or the first box's egress namespace),
//! so no box of the pod has `CAP_NET_ADMIN` in it and none owns it; each box's bubblewrap is born
//! in it (`net::spawn_in`) without a network namespace of its own. Only boxes whose spec names
//! the first box join it: the pod's boxes reach each other on 127.0.0.1, and nothing else shares
//! their network.
//!
//! A volume is a directory `<first box's layer>/disk/volumes/<name>` on the first box's disk: the
//! disk's top directory and `volumes` are the host's (no box sees them), so the host resolves
//! these paths without entering a directory a box can write. Each box of the pod that names the
//! volume gets it as an idmapped bind in its own layer (`<layer>/volumes/<name>`, the layer's top
//! being the host's too), the first box's uid shown as its own, so that every box's root owns the
//! volume and what one writes the others read and change; bubblewrap binds it at the volume's
//! path. Why the first box's disk: it is bounded like every disk, lives as long as the pod (the
//! first box is made first and ended last), survives restarts with it, and needs no disk or
//! record of its own.

use std::fs;
use std::os::fd::AsFd as _;
use std::os::unix::fs::{PermissionsExt as _, chown};
use std::path::Path;

use crate::Volume;
use crate::error::BoxError;

/// The directory of volumes, at the top of the first box's disk and in each box's layer.
const VOLUMES: &str = "volumes";

/// Mounts `volumes` for the box whose layer is `layer` and whose root is host `uid`: each made
/// on the first box's disk (in `first_layer`, its files owned by `first_uid`) if new, and bound
/// idmapped into `layer/volumes/<name>`.
pub(crate) fn mount_volumes(
    first_layer: &Path,
    first_uid: u32,
    layer: &Path,
    uid: u32,
    volumes: &[Volume],
) -> Result<(), BoxError> {
    if volumes.is_empty() {
        return Ok(());
    }
    let disk = first_layer.join("disk");
    if !super::layer::is_mount_point(&disk) {
        return Err(BoxError::Start(
            "the disk of the pod's first box is not mounted: it does not run".into(),
        ));
    }
    let on_disk = disk.join(VOLUMES);
    directory(&on_disk, 0o711, 0)?;
    let mounts = layer.join(VOLUMES);
    directory(&mounts, 0o711, 0)?;
    let namespace = super::idmap::namespace_mapping(first_uid, uid)?;
    for volume in volumes {
        volume.check().map_err(BoxError::Unsupported)?;
        let source = on_disk.join(&volume.name);
        directory(&source, 0o755, first_uid)?;
        let target = mounts.join(&volume.name);
        directory(&target, 0o755, 0)?;
        if !super::layer::is_mount_point(&target) {
            super::idmap::bind(&source, &target, namespace.as_fd(), false)?;
        }
    }
    Ok(())
}

/// bubblewrap's arguments binding each volume (mounted by [`mount_volumes`]) at its path.
pub(crate) fn bwrap_args(layer: &Path, volumes: &[Volume], args: &mut Vec<String>) {
    for volume in volumes {
        args.extend([
            "--bind".into(),
            layer.join(VOLUMES).join(&volume.name).to_string_lossy().into_owned(),
            volume.path.clone(),
        ]);
    }
}

/// Makes directory `dir` (mode `mode`, owned by `owner`) unless it exists; an existing one must
/// be a directory, not a link (its parent is the host's, so nothing in a box can have put one).
fn directory(dir: &Path, mode: u32, owner: u32) -> Result<(), BoxError> {
    match fs::create_dir(dir) {
        Ok(()) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                .map_err(BoxError::io(format!("setting the mode of {}", dir.display())))?;
            chown(dir, Some(owner), Some(owner))
                .map_err(BoxError::io(format!("handing over {}", dir.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(()),
            _ => Err(BoxError::Start(format!("{} is not a directory", dir.display()))),
        },
        Err(e) => Err(BoxError::Io { context: format!("creating {}", dir.display()), source: e }),
    }
}
