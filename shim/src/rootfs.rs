//! A function container's rootfs: the image content containerd lists in
//! Create, mounted at the bundle's `rootfs/` so the shim can find the
//! component in it, and unmounted (detached) at Delete.

use crate::error::TaskError;
use containerd_shim::api::CreateTaskRequest;
use log::warn;
use std::path::Path;

/// Mounts what `request` lists at `rootfs`.
pub async fn mount(request: &CreateTaskRequest, rootfs: &Path) -> Result<(), TaskError> {
    let mounts = request.rootfs.clone();
    let target = rootfs.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), TaskError> {
        std::fs::create_dir_all(&target).map_err(|e| {
            TaskError::Internal(format!("cannot create rootfs {}: {e}", target.display()))
        })?;
        for mount in &mounts {
            let kind = Some(mount.type_.as_str()).filter(|kind| !kind.is_empty());
            let source = Some(mount.source.as_str()).filter(|source| !source.is_empty());
            containerd_shim::mount::mount_rootfs(kind, source, &mount.options, &target).map_err(
                |e| {
                    TaskError::Internal(format!(
                        "cannot mount the rootfs {}: {e}",
                        target.display()
                    ))
                },
            )?;
        }
        Ok(())
    })
    .await
    .map_err(|e| TaskError::Internal(e.to_string()))?
}

/// Unmounts `rootfs` (detached: even while something holds a file open).
pub async fn unmount(rootfs: &Path) {
    let target = rootfs.to_string_lossy().into_owned();
    let unmounted = tokio::task::spawn_blocking(move || {
        containerd_shim::mount::umount_recursive(Some(&target), libc_mnt_detach())
    })
    .await;
    match unmounted {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!("cannot unmount {}: {error}", rootfs.display()),
        Err(error) => warn!("cannot unmount {}: {error}", rootfs.display()),
    }
}

/// `MNT_DETACH`: unmount even while something holds a file open.
fn libc_mnt_detach() -> i32 {
    nix::mount::MntFlags::MNT_DETACH.bits()
}
