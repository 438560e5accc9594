//! The supervisor's side of a seccomp user-notification listener
//! (seccomp_unotify(2)): receive a trapped syscall, then answer it exactly
//! once: let it continue, return a value, or install a descriptor.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// A trapped syscall, as the kernel reported it.
#[derive(Clone, Copy, Debug)]
pub struct Notification {
    pub id: u64,
    /// The trapping thread, in the supervisor's pid namespace.
    pub tid: i32,
    pub nr: i64,
    pub args: [u64; 6],
}

/// How `addfd` puts a descriptor into the target.
#[derive(Clone, Copy, Debug)]
pub enum Install {
    /// At the lowest free number, answering the syscall with it
    /// (`SECCOMP_ADDFD_FLAG_SEND`).
    AsResult { cloexec: bool },
    /// At the lowest free number, which `install` returns; the syscall
    /// stays pending, so the supervisor can finish what the call asked
    /// (a truncation) before the program can use the fd.
    Pending { cloexec: bool },
    /// At exactly `fd`, replacing what is there; the syscall stays pending.
    At { fd: RawFd, cloexec: bool },
}

#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `ENOENT` from an ioctl: the task is gone, or its syscall was
/// interrupted; nothing is left to answer.
pub fn target_gone(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOENT)
}

impl Listener {
    /// Wraps the listener, asking for synchronous wake-ups where the
    /// kernel has them (6.6+): the trapping task and the thread that takes
    /// its notification hand the CPU to each other directly, instead of
    /// each waiting to be scheduled, which roughly halves the cost of a
    /// trapped call. Without it everything works, only slower.
    pub fn new(fd: OwnedFd) -> Listener {
        const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;
        // SAFETY: this ioctl takes its flags as the argument itself.
        unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
            )
        };
        Listener { fd }
    }

    fn ioctl<T>(&self, request: libc::Ioctl, arg: *mut T) -> io::Result<i32> {
        loop {
            // SAFETY: every caller passes the struct its request expects.
            let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), request, arg) };
            if rc >= 0 {
                return Ok(rc);
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(err);
            }
        }
    }

    /// Blocks until a syscall traps. `ENOENT` means the task died before
    /// we took its notification, or that no task is left at all; the
    /// first is skipped, the second ends with that error.
    pub fn receive(&self) -> io::Result<Notification> {
        loop {
            // The kernel insists on a zeroed buffer.
            // SAFETY: seccomp_notif is plain old data.
            let mut raw: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            match self.ioctl(libc::SECCOMP_IOCTL_NOTIF_RECV, &mut raw) {
                Ok(_) => {
                    return Ok(Notification {
                        id: raw.id,
                        tid: raw.pid as i32,
                        nr: i64::from(raw.data.nr),
                        args: raw.data.args,
                    });
                }
                Err(e) if target_gone(&e) && !self.hung_up() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// True once no task holds the filter any more.
    pub fn hung_up(&self) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: 0,
            revents: 0,
        }];
        // SAFETY: one pollfd, no waiting.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        n > 0 && fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0
    }

    /// True while the notification's task is still waiting on it: what
    /// was read from its memory or /proc was read from the right task.
    pub fn still_valid(&self, id: u64) -> bool {
        let mut id = id;
        self.ioctl(libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id)
            .is_ok()
    }

    fn send(&self, id: u64, val: i64, error: i32, flags: u32) {
        let mut resp = libc::seccomp_notif_resp {
            id,
            val,
            error,
            flags,
        };
        // An error here means the task is gone; nothing to do about it.
        let _ = self.ioctl(libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp);
    }

    /// Lets the syscall run as if never trapped, with the task's own rights.
    pub fn proceed(&self, id: u64) {
        self.send(id, 0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32);
    }

    /// Answers the syscall with `val` (success).
    pub fn answer(&self, id: u64, val: i64) {
        self.send(id, val, 0, 0);
    }

    /// Fails the syscall with `errno`.
    pub fn fail(&self, id: u64, errno: i32) {
        self.send(id, 0, -errno, 0);
    }

    /// Installs a duplicate of `fd` in the target; returns its number there.
    pub fn install(&self, id: u64, fd: RawFd, how: Install) -> io::Result<RawFd> {
        let cloexec_flag = |on: bool| if on { libc::O_CLOEXEC as u32 } else { 0 };
        let (flags, newfd, newfd_flags) = match how {
            Install::AsResult { cloexec } => (
                libc::SECCOMP_ADDFD_FLAG_SEND as u32,
                0,
                cloexec_flag(cloexec),
            ),
            Install::Pending { cloexec } => (0, 0, cloexec_flag(cloexec)),
            Install::At { fd, cloexec } => (
                libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
                fd as u32,
                cloexec_flag(cloexec),
            ),
        };
        let mut addfd = libc::seccomp_notif_addfd {
            id,
            flags,
            srcfd: fd as u32,
            newfd,
            newfd_flags,
        };
        self.ioctl(libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut addfd)
    }
}
