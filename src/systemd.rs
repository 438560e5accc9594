//! The two systemd protocols a daemon needs, without libsystemd: socket
//! activation (`LISTEN_PID`/`LISTEN_FDS`, first fd 3) and readiness
//! notification (`READY=1` to `NOTIFY_SOCKET`).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// The listening socket systemd handed over, if this process was
/// socket-activated. Clears the variables so children do not inherit them.
pub fn take_listener() -> Option<UnixListener> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let count: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || count < 1 {
        return None;
    }
    // SAFETY: edited before any other thread exists (called first in main).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let _ = nix::fcntl::fcntl(
        unsafe { std::os::fd::BorrowedFd::borrow_raw(LISTEN_FDS_START) },
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    // SAFETY: systemd passes an open socket at fd 3 and nothing else owns it.
    Some(UnixListener::from(unsafe {
        OwnedFd::from_raw_fd(LISTEN_FDS_START)
    }))
}

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one.
pub fn notify(state: &str) -> io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(&path)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}
