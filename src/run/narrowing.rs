//! Options that narrow where a socket listens or what it accepts (SPEC
//! §8): `SO_BINDTODEVICE` and an attached classic socket filter. A
//! brokered socket is never more exposed than the one the program made,
//! so the granted socket gets them too, and a socket with one that cannot
//! be copied (an eBPF filter, which the kernel does not hand back) is not
//! brokered at all. The network namespace is compared for the same
//! reason: a socket made in another one listens somewhere else.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::bind_call::{get_int, set_int};

/// `SO_BINDTOIFINDEX`, `SO_LOCK_FILTER`, `SO_NETNS_COOKIE` (the generic
/// values, which x86_64 and aarch64 use).
const SO_BINDTOIFINDEX: i32 = 62;
const SO_LOCK_FILTER: i32 = 44;
const SO_NETNS_COOKIE: i32 = 71;
/// A classic BPF program has at most `BPF_MAXINSNS` instructions.
const BPF_MAXINSNS: usize = 4096;

/// What narrows the program's socket, read before the server is asked.
pub struct Narrowing {
    /// `SO_BINDTODEVICE` as an interface index; 0 for none.
    ifindex: i32,
    /// The classic BPF filter attached with `SO_ATTACH_FILTER`.
    filter: Vec<libc::sock_filter>,
    /// `SO_LOCK_FILTER`: the program can no longer change the filter.
    locked: bool,
    /// The socket's network namespace; `None` where the kernel cannot
    /// tell (before 5.14).
    netns: Option<u64>,
}

impl std::fmt::Debug for Narrowing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Narrowing")
            .field("ifindex", &self.ifindex)
            .field("filter_len", &self.filter.len())
            .field("locked", &self.locked)
            .field("netns", &self.netns)
            .finish()
    }
}

/// Why a socket's narrowing cannot be carried over.
#[derive(Debug, thiserror::Error)]
pub enum NotCopied {
    #[error("the socket's filter cannot be read back (eBPF): {0}")]
    UnreadableFilter(io::Error),
    #[error("the granted socket is in another network namespace")]
    OtherNamespace,
    #[error("cannot set {what} on the granted socket: {source}")]
    Refused {
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot read the socket's options: {0}")]
    Unreadable(io::Error),
}

impl Narrowing {
    /// What narrows `fd`; an error if something does that cannot be read
    /// back, so could not be copied.
    pub fn read(fd: BorrowedFd<'_>) -> Result<Narrowing, NotCopied> {
        let ifindex =
            get_int(fd, libc::SOL_SOCKET, SO_BINDTOIFINDEX).map_err(NotCopied::Unreadable)?;
        let filter = read_filter(fd)?;
        let locked =
            get_int(fd, libc::SOL_SOCKET, SO_LOCK_FILTER).map_err(NotCopied::Unreadable)? != 0;
        Ok(Narrowing {
            ifindex,
            filter,
            locked,
            netns: netns_cookie(fd),
        })
    }

    /// Gives `to` the same narrowing; an error if any part cannot be set
    /// or `to` lives in another network namespace.
    pub fn apply(&self, to: BorrowedFd<'_>) -> Result<(), NotCopied> {
        if self.netns.is_some() && netns_cookie(to) != self.netns {
            return Err(NotCopied::OtherNamespace);
        }
        let refused = |what| move |source| NotCopied::Refused { what, source };
        if self.ifindex != 0 {
            set_int(to, libc::SOL_SOCKET, SO_BINDTOIFINDEX, self.ifindex)
                .map_err(refused("SO_BINDTODEVICE"))?;
        }
        if !self.filter.is_empty() {
            attach_filter(to, &self.filter).map_err(refused("SO_ATTACH_FILTER"))?;
        }
        if self.locked {
            set_int(to, libc::SOL_SOCKET, SO_LOCK_FILTER, 1).map_err(refused("SO_LOCK_FILTER"))?;
        }
        Ok(())
    }
}

/// The classic filter on `fd` (empty if none). `SO_GET_FILTER` counts in
/// instructions, not bytes: asked with length 0 it says how many there
/// are; it refuses (`EACCES`) a filter attached as eBPF.
fn read_filter(fd: BorrowedFd<'_>) -> Result<Vec<libc::sock_filter>, NotCopied> {
    let get = |buf: *mut libc::sock_filter, len: usize| -> io::Result<usize> {
        let mut len = len as libc::socklen_t;
        // SAFETY: `buf` holds `len` instructions (none for a count).
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                buf.cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(len as usize)
    };
    let count = get(std::ptr::null_mut(), 0).map_err(NotCopied::UnreadableFilter)?;
    if count == 0 {
        return Ok(Vec::new());
    }
    let empty = libc::sock_filter {
        code: 0,
        jt: 0,
        jf: 0,
        k: 0,
    };
    // Room for the largest program: the filter may be replaced between
    // the two calls.
    let mut filter = vec![empty; BPF_MAXINSNS];
    let got = get(filter.as_mut_ptr(), filter.len()).map_err(NotCopied::UnreadableFilter)?;
    filter.truncate(got);
    Ok(filter)
}

/// `SO_ATTACH_FILTER`: the classic program `filter` on `fd`.
fn attach_filter(fd: BorrowedFd<'_>, filter: &[libc::sock_filter]) -> io::Result<()> {
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: the kernel copies `len` instructions from `filter`, which
    // outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&program as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_NETNS_COOKIE`: which network namespace the socket was made in.
fn netns_cookie(fd: BorrowedFd<'_>) -> Option<u64> {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: a u64-sized buffer for a u64 option.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    fn tcp_socket() -> OwnedFd {
        // SAFETY: a fresh socket we own.
        unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)) }
    }

    /// Attaches "accept everything" as a classic filter; false where this
    /// kernel refuses (unprivileged, on some kernels).
    fn attach_classic(fd: BorrowedFd<'_>) -> bool {
        let accept_all = libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: u32::MAX,
        };
        attach_filter(fd, &[accept_all]).is_ok()
    }

    #[test]
    fn a_plain_socket_has_nothing_to_copy() {
        let (from, to) = (tcp_socket(), tcp_socket());
        let n = Narrowing::read(from.as_fd()).unwrap();
        assert_eq!((n.ifindex, n.filter.len(), n.locked), (0, 0, false));
        n.apply(to.as_fd()).unwrap();
        assert_eq!(
            get_int(to.as_fd(), libc::SOL_SOCKET, SO_BINDTOIFINDEX).unwrap(),
            0
        );
    }

    #[test]
    fn device_filter_and_lock_are_copied() {
        let (from, to) = (tcp_socket(), tcp_socket());
        if !attach_classic(from.as_fd()) {
            eprintln!("skipped: SO_ATTACH_FILTER refused here");
            return;
        }
        set_int(from.as_fd(), libc::SOL_SOCKET, SO_LOCK_FILTER, 1).unwrap();
        let lo = 1; // the loopback interface's index
        set_int(from.as_fd(), libc::SOL_SOCKET, SO_BINDTOIFINDEX, lo).unwrap();
        Narrowing::read(from.as_fd())
            .unwrap()
            .apply(to.as_fd())
            .unwrap();
        let copied = Narrowing::read(to.as_fd()).unwrap();
        assert_eq!(
            (copied.ifindex, copied.filter.len(), copied.locked),
            (lo, 1, true)
        );
        assert_eq!(copied.filter[0].k, u32::MAX);
    }

    #[test]
    fn an_ebpf_filter_cannot_be_copied() {
        // BPF_PROG_LOAD of a socket filter "r0 = 0; exit".
        let insns: [u64; 2] = [0xb7, 0x95];
        let license = c"GPL";
        let mut attr = [0u64; 16];
        attr[0] = 1 | (2 << 32); // BPF_PROG_TYPE_SOCKET_FILTER, 2 insns
        attr[1] = insns.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        // SAFETY: bpf(BPF_PROG_LOAD) reads the attr and the program.
        let prog = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                5,
                attr.as_mut_ptr(),
                size_of_val(&attr) as u32,
            )
        };
        if prog < 0 {
            eprintln!(
                "skipped: cannot load eBPF here: {}",
                io::Error::last_os_error()
            );
            return;
        }
        // SAFETY: a fresh descriptor we own.
        let prog = unsafe { OwnedFd::from_raw_fd(prog as i32) };
        let socket = tcp_socket();
        const SO_ATTACH_BPF: i32 = 50;
        set_int(
            socket.as_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_BPF,
            prog.as_raw_fd(),
        )
        .unwrap();
        assert!(matches!(
            Narrowing::read(socket.as_fd()),
            Err(NotCopied::UnreadableFilter(_))
        ));
    }

    #[test]
    fn a_socket_of_another_network_namespace_is_refused() {
        let ours = tcp_socket();
        let theirs = std::thread::spawn(|| {
            // SAFETY: unshare affects this thread only.
            (unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0).then(tcp_socket)
        })
        .join()
        .unwrap();
        let Some(theirs) = theirs else {
            eprintln!("skipped: cannot make a network namespace");
            return;
        };
        let narrowing = Narrowing::read(theirs.as_fd()).unwrap();
        if narrowing.netns.is_none() {
            eprintln!("skipped: no SO_NETNS_COOKIE on this kernel");
            return;
        }
        assert!(matches!(
            narrowing.apply(ours.as_fd()),
            Err(NotCopied::OtherNamespace)
        ));
    }
}
