//! Where the socket lives and how it is claimed (SPEC §1): the default
//! path, replacing a stale socket file but never stealing a live one, and
//! the file's mode and group.

use std::io;
use std::path::{Path, PathBuf};

#[cfg(feature = "server")]
pub use claim::bind;

/// Why the server could not claim its socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "no socket path: pass --socket (or set FDOPEN_SOCKET); there is no default when not root and XDG_RUNTIME_DIR is unset"
    )]
    NoDefault,
    #[error("another server is already listening on {0}")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot lock {path} (taken while a server claims the socket): {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("cannot set mode or group of {path}: {source}")]
    Permissions { path: PathBuf, source: io::Error },
    #[error(
        "the socket's directory {0} does not exist; create it first (only /run/fdopen is created for you)"
    )]
    NoDirectory(PathBuf),
    /// A client found no server where it looked (SPEC §1: exit 3).
    #[error("no server answers: {}; {START_HINT}", tried_list(.0))]
    NoServer(Vec<Tried>),
}

/// One place a client looked for a server, and what it found there.
#[derive(Debug)]
pub struct Tried {
    pub path: PathBuf,
    pub error: io::Error,
}

/// How a user gets a server to answer: the packaged units, a server of
/// their own, or the path of one that runs.
pub const START_HINT: &str = "start one with `systemctl start fdopen.socket` or \
`fdopen-server serve --socket PATH --policy POLICY`, or name one that runs with --socket or \
FDOPEN_SOCKET";

fn tried_list(tried: &[Tried]) -> String {
    let each: Vec<String> = tried
        .iter()
        .map(|t| format!("{}: {}", t.path.display(), t.error))
        .collect();
    each.join(", ")
}

/// The default socket path: `/run/fdopen/fdopen.sock` for root, else
/// `$XDG_RUNTIME_DIR/fdopen.sock`.
pub fn default_path() -> Result<PathBuf, SocketError> {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/run/fdopen/fdopen.sock"));
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Ok(Path::new(&dir).join("fdopen.sock")),
        _ => Err(SocketError::NoDefault),
    }
}

/// `--socket`, else `FDOPEN_SOCKET` (folded in by clap), else the default.
pub fn resolve(explicit: Option<PathBuf>) -> Result<PathBuf, SocketError> {
    explicit.map_or_else(default_path, Ok)
}

/// The system server's socket, which clients prefer when it exists.
pub const SYSTEM_SOCKET: &str = "/run/fdopen/fdopen.sock";

/// Where a client connects (SPEC §1): `FDOPEN_SOCKET`, else the system
/// server's socket if it exists (unprivileged clients are its main users),
/// else `$XDG_RUNTIME_DIR/fdopen.sock`; with none of them, no server can
/// answer, which is [`SocketError::NoServer`], not a usage error.
pub fn client_default() -> Result<PathBuf, SocketError> {
    if let Some(path) = std::env::var_os("FDOPEN_SOCKET").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    if Path::new(SYSTEM_SOCKET).exists() {
        return Ok(PathBuf::from(SYSTEM_SOCKET));
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Ok(Path::new(&dir).join("fdopen.sock")),
        _ => Err(SocketError::NoServer(vec![system_socket_absent()])),
    }
}

/// The system socket, which [`client_default`] found missing.
fn system_socket_absent() -> Tried {
    Tried {
        path: PathBuf::from(SYSTEM_SOCKET),
        error: io::Error::from_raw_os_error(libc::ENOENT),
    }
}

/// A client's connection to `path` failed with `error`: every place it
/// looked, the system socket first when `path` was its default fallback.
pub fn no_server(path: PathBuf, error: io::Error, defaulted: bool) -> SocketError {
    let mut tried = Vec::new();
    if defaulted && path != Path::new(SYSTEM_SOCKET) {
        tried.push(system_socket_absent());
    }
    tried.push(Tried { path, error });
    SocketError::NoServer(tried)
}

/// The client's `--socket`, else [`client_default`].
pub fn resolve_for_client(explicit: Option<PathBuf>) -> Result<PathBuf, SocketError> {
    explicit.map_or_else(client_default, Ok)
}

/// Claiming the socket: the server side only.
#[cfg(feature = "server")]
mod claim {
    use std::io;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::{Path, PathBuf};

    use nix::sys::stat::{Mode, umask};
    use nix::unistd::Gid;

    use super::SocketError;

    /// The default's directory, the one the server creates itself.
    const DEFAULT_DIR: &str = "/run/fdopen";

    /// Binds a listening socket at `path` with `mode` and, optionally, `group`.
    ///
    /// The socket is created under a restrictive umask so it is never, even
    /// for an instant, more open than asked. Two servers starting on the same
    /// path at once are serialised by a lock on `PATH.lock`, held from the
    /// check for a live server to the `listen`: without it, both could find
    /// the same stale file, and the second to unlink it would remove the
    /// first one's live socket.
    pub fn bind(path: &Path, mode: u32, group: Option<Gid>) -> Result<UnixListener, SocketError> {
        // A typo in --socket must not leave a new directory tree behind.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            if dir != Path::new(DEFAULT_DIR) {
                return Err(SocketError::NoDirectory(dir.to_owned()));
            }
            std::fs::create_dir(dir).map_err(|source| SocketError::Bind {
                path: path.to_owned(),
                source,
            })?;
        }
        let _lock = StartLock::acquire(path)?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(SocketError::NotASocket(path.to_owned()));
            }
            Ok(_) => match UnixStream::connect(path) {
                Ok(_) => return Err(SocketError::InUse(path.to_owned())),
                // Nobody answers: a leftover of a server that died.
                Err(_) => {
                    widen_claim_window_for_tests();
                    let _ = std::fs::remove_file(path);
                }
            },
            Err(_) => {}
        }
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        umask(old);
        let listener = bound.map_err(|source| match source.kind() {
            io::ErrorKind::AddrInUse => SocketError::InUse(path.to_owned()),
            _ => SocketError::Bind {
                path: path.to_owned(),
                source,
            },
        })?;
        let permissions = |source| SocketError::Permissions {
            path: path.to_owned(),
            source,
        };
        if let Some(gid) = group {
            nix::unistd::chown(path, None, Some(gid)).map_err(|e| permissions(e.into()))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(permissions)?;
        Ok(listener)
    }

    /// An exclusive `flock` on `SOCKET.lock`, released when dropped. The file
    /// itself stays: unlinking a lock file reopens the very race it closes.
    struct StartLock(#[allow(dead_code)] std::fs::File);

    impl StartLock {
        fn acquire(socket: &Path) -> Result<StartLock, SocketError> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut name = socket.as_os_str().to_owned();
            name.push(".lock");
            let path = PathBuf::from(name);
            let error = |source| SocketError::Lock {
                path: path.clone(),
                source,
            };
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&path)
                .map_err(error)?;
            loop {
                // SAFETY: flock on a descriptor we own; no memory is involved.
                if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) }
                    == 0
                {
                    return Ok(StartLock(file));
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(error(e));
                }
            }
        }
    }

    /// Debug builds only: `FDOPEN_TEST_CLAIM_DELAY_MS` sleeps between finding
    /// a stale socket and replacing it, so a test can make two servers meet in
    /// that window every time instead of once in a thousand starts.
    fn widen_claim_window_for_tests() {
        #[cfg(debug_assertions)]
        if let Some(ms) = std::env::var("FDOPEN_TEST_CLAIM_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}
