//! The systemd protocols a daemon needs, without libsystemd: socket
//! activation and the fd store coming back (`LISTEN_PID`/`LISTEN_FDS`/
//! `LISTEN_FDNAMES`, first fd 3), and notifications to `NOTIFY_SOCKET`
//! (`READY=1`, and `FDSTORE=1` with an fd attached).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;
/// Most descriptors taken from `LISTEN_FDS`: more is a broken variable.
const LISTEN_FDS_MAX: u32 = 4096;

/// What the service manager passed at start.
#[derive(Debug, Default)]
pub struct Passed {
    /// The listening socket of socket activation.
    pub listener: Option<UnixListener>,
    /// Descriptors named `name` in `LISTEN_FDNAMES` (see [`take`]).
    pub named: Vec<OwnedFd>,
}

/// Takes what systemd passed, if it was meant for this process: the fds
/// named `name` (the fd store's, SPEC §3.4), and the first other socket
/// as the listener; any other fd is closed. Clears the variables so
/// children do not inherit them. Call first in `main`, before other
/// threads exist.
pub fn take(name: &str) -> Passed {
    let pid: Option<u32> = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    let count: Option<u32> = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|c| c.parse().ok());
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let (Some(pid), Some(count)) = (pid, count) else {
        return Passed::default();
    };
    if pid != std::process::id() || count < 1 {
        return Passed::default();
    }
    // SAFETY: edited before any other thread exists (called first in main).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let mut names = names.split(':');
    let mut passed = Passed::default();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count.min(LISTEN_FDS_MAX) as i32 {
        let this_name = names.next().unwrap_or("unknown");
        // SAFETY: fd is only borrowed for these checks.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let Ok(st) = nix::sys::stat::fstat(borrowed) else {
            continue; // not open: nothing to own
        };
        let _ = nix::fcntl::fcntl(
            borrowed,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        // SAFETY: systemd passes these open, and nothing else owns them.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let is_socket = st.st_mode & libc::S_IFMT == libc::S_IFSOCK;
        if this_name == name && is_socket {
            passed.named.push(owned);
        } else if is_socket && passed.listener.is_none() {
            passed.listener = Some(UnixListener::from(owned));
        } else {
            crate::logging::warn(format_args!(
                "systemd passed fd {fd} ({this_name}) that is no use here; closing it"
            ));
        }
    }
    passed
}

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one.
pub fn notify(state: &str) -> io::Result<()> {
    notify_with_fd(state, None).map(drop)
}

/// Sends `state` with `fd` attached (`FDSTORE=1`); false when there is
/// no service manager to send it to.
pub fn notify_with_fd(state: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(&path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.connect_addr(&addr)?;
    crate::fdpass::send(socket.as_fd(), state.as_bytes(), fd)?;
    Ok(true)
}

/// `RELOADING=1` with the monotonic timestamp systemd wants alongside it.
pub fn reloading_message() -> String {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0);
    format!("RELOADING=1\nMONOTONIC_USEC={now}")
}
