//! The admin socket on disk: created mode 0660, group `[auth] socket_group`, the way Docker's
//! and Podman's are; the kernel then lets only root and that group connect, and every request
//! is authorised again from the peer's credentials (`auth::peer`).

use anyhow::{bail, Context as _};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use tokio::net::UnixListener;
use tracing::{info, warn};

/// Binds `path`. A stale socket (nobody answering) is replaced; a live one means another
/// daemon uses it, which is an error, as a taken port is.
pub fn bind(path: &Path, group: &str, gid: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("another process listens on {} already", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket; remove it", path.display()),
        Err(_) => {}
    }
    // Until the mode is set below the socket has the umask's mode: writable by its owner
    // (root) only, and connecting needs write permission. So there is no window for others.
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    let mut mode = 0o600;
    match gid {
        Some(gid) => match std::os::unix::fs::chown(path, None, Some(gid)) {
            Ok(()) => mode = 0o660,
            Err(e) => warn!(
                component = "http",
                socket = %path.display(),
                group,
                error = %e,
                "cannot give the admin socket to its group (the unit needs SupplementaryGroups= of it); only root can use the socket"
            ),
        },
        None => warn!(
            component = "http",
            socket = %path.display(),
            group,
            "the socket group does not exist (the packages create it; or `groupadd --system {group}`); only root can use the socket"
        ),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    info!(component = "http", socket = %path.display(), group, mode = format!("{mode:o}"), "listening on the admin socket");
    Ok(listener)
}
