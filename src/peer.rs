//! Who is on the other end of a Unix socket, as the kernel says
//! (`SO_PEERCRED`, `SO_PEERGROUPS`). Read once at accept: nothing the client
//! writes afterwards can change it.

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
        })
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
        }
    }

    /// True when `gid` is the primary or a supplementary group.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
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
