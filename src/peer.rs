//! Who is on the other end of a Unix socket, as the kernel says
//! (`SO_PEERCRED`, `SO_PEERGROUPS`, and the cgroup of the process
//! `SO_PEERPIDFD` pins). Read once at accept: nothing the client writes or
//! does afterwards (not even moving to another cgroup) changes it.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// A client's identity, taken from the kernel when it connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The cgroup v2 path of the connecting process, when the kernel could
    /// pin it (`SO_PEERPIDFD`, Linux 6.5+) and it was still alive after the
    /// read; `None` otherwise, and then `cgroups`/`units` allow rules never
    /// match (SPEC §1).
    pub cgroup: Option<String>,
    /// It connected from another network namespace than the server's: a
    /// socket the server made would escape it (SPEC §3.3).
    pub foreign_net: bool,
    /// A number unique to this connection within the server's run (0
    /// outside a server): what ties a `readdir` cursor to the connection
    /// that was given it (SPEC §3.6).
    pub connection: u64,
}

impl PeerIdentity {
    /// Reads the identity of the process connected to `socket`.
    pub fn of(socket: impl AsFd) -> io::Result<PeerIdentity> {
        let creds = getsockopt(&socket, PeerCredentials).map_err(io::Error::from)?;
        Ok(PeerIdentity {
            pid: creds.pid(),
            uid: creds.uid(),
            gid: creds.gid(),
            groups: peer_groups(socket.as_fd().as_raw_fd())?,
            cgroup: pinned_cgroup(socket.as_fd().as_raw_fd(), creds.pid()),
            foreign_net: net_ns::foreign(socket.as_fd(), creds.pid()),
            connection: {
                static CONNECTIONS: std::sync::atomic::AtomicU64 =
                    std::sync::atomic::AtomicU64::new(1);
                CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        })
    }

    /// The client's systemd unit, computed from its cgroup as systemd does.
    pub fn unit(&self) -> Option<&str> {
        self.cgroup.as_deref().and_then(unit_of)
    }

    /// The identity of this very process, for `explain` and tests.
    pub fn current() -> PeerIdentity {
        PeerIdentity {
            pid: std::process::id() as i32,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            groups: nix::unistd::getgroups()
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default(),
            cgroup: None,
            foreign_net: false,
            connection: 0,
        }
    }

    /// True when `gid` is the primary or a supplementary group.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// Which network namespace a client connected from.
mod net_ns {
    use std::os::fd::{AsRawFd, BorrowedFd};
    use std::sync::OnceLock;

    /// `SO_NETNS_COOKIE` (Linux 5.14+; asm-generic value).
    const SO_NETNS_COOKIE: libc::c_int = 71;

    /// Whether the client at the other end of `socket` (an accepted
    /// connection) is in another network namespace than ours. The kernel
    /// makes an accepted Unix socket in the namespace of the socket that
    /// connected, so its cookie is the client's, and no later `setns` of
    /// the client changes it. Without the cookie, the namespace of the
    /// client's pid is compared instead.
    pub fn foreign(socket: BorrowedFd<'_>, pid: i32) -> bool {
        match (cookie(socket.as_raw_fd()), ours()) {
            (Some(theirs), Some(ours)) => theirs != ours,
            _ => ns_of(&format!("/proc/{pid}/ns/net")) != ns_of("/proc/self/ns/net"),
        }
    }

    /// The cookie of the namespace the server makes its sockets in.
    fn ours() -> Option<u64> {
        static OURS: OnceLock<Option<u64>> = OnceLock::new();
        *OURS.get_or_init(|| {
            let probe = std::os::unix::net::UnixDatagram::unbound().ok()?;
            cookie(probe.as_raw_fd())
        })
    }

    fn cookie(fd: i32) -> Option<u64> {
        let mut cookie: u64 = 0;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `cookie`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(cookie)
    }

    /// The namespace file's identity; `None` (never equal to ours when
    /// ours is known) when it cannot be read.
    fn ns_of(path: &str) -> Option<(u64, u64)> {
        let st = nix::sys::stat::stat(path).ok()?;
        Some((st.st_dev, st.st_ino))
    }
}

/// `SO_PEERGROUPS`, which nix does not wrap: grows the buffer on `ERANGE`.
fn peer_groups(fd: i32) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is valid for `len` bytes and the kernel writes at most that.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(err);
    }
}

/// `SO_PEERPIDFD` (Linux 6.5+; asm-generic value).
const SO_PEERPIDFD: libc::c_int = 77;

/// Whether this kernel pins peers by pidfd: without it, the cgroup of a
/// client is never known (the server warns once at start).
pub fn pidfd_supported() -> bool {
    let Ok((a, _b)) = std::os::unix::net::UnixStream::pair() else {
        return false;
    };
    peer_pidfd(a.as_raw_fd()).is_some()
}

fn peer_pidfd(fd: i32) -> Option<std::os::fd::OwnedFd> {
    let mut pidfd: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the buffer is one c_int and len says so.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel gave us a new descriptor to own.
    (rc == 0 && pidfd >= 0).then(|| unsafe { std::os::fd::FromRawFd::from_raw_fd(pidfd) })
}

/// The cgroup v2 path of the process connected to `fd`: the process is
/// pinned by a pidfd first, its `/proc/PID/cgroup` read, and the pidfd then
/// asked whether that very process still lives. If it does, the pid read
/// was its own (a live process's pid is not reused); if not, the pid may
/// name a newcomer already, and the cgroup stays unknown.
fn pinned_cgroup(fd: i32, pid: i32) -> Option<String> {
    let pidfd = peer_pidfd(fd)?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    // SAFETY: pidfd_send_signal with signal 0 only checks for the process.
    let alive = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    } == 0;
    if !alive {
        return None;
    }
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The unit of a cgroup, as systemd computes it: the first component after
/// the leading `*.slice` ones, if it is a `.service` or `.scope`; never a
/// deeper one, which a unit with delegation names as it likes (SPEC §1).
pub fn unit_of(cgroup: &str) -> Option<&str> {
    let first = cgroup
        .split('/')
        .filter(|c| !c.is_empty())
        .find(|c| !c.ends_with(".slice"))?;
    (first.ends_with(".service") || first.ends_with(".scope")).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_the_first_component_below_the_slices() {
        assert_eq!(
            unit_of("/system.slice/nginx.service"),
            Some("nginx.service")
        );
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/user@1000.service/app.slice/x.service"),
            Some("user@1000.service")
        );
        assert_eq!(
            unit_of("/system.slice/docker-1.scope/inner.service"),
            Some("docker-1.scope")
        );
        assert_eq!(unit_of("/system.slice"), None);
        assert_eq!(unit_of("/init.scope"), Some("init.scope"));
        assert_eq!(unit_of("/machine/qemu"), None);
        assert_eq!(unit_of("/"), None);
    }
}
