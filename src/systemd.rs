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
    // SAFETY: fd 3 is only borrowed for these checks.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(LISTEN_FDS_START) };
    let is_socket =
        nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK);
    if !is_socket {
        crate::logging::error(format_args!(
            "LISTEN_FDS is set but fd 3 is not a socket; ignoring it"
        ));
        return None;
    }
    let _ = nix::fcntl::fcntl(
        fd,
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

/// `RELOADING=1` with the monotonic timestamp systemd wants alongside it.
pub fn reloading_message() -> String {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0);
    format!("RELOADING=1\nMONOTONIC_USEC={now}")
}
