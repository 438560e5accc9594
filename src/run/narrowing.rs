//! Options that narrow where a socket listens or what it accepts (SPEC
//! §8): `SO_BINDTODEVICE`, an attached classic socket filter, and the
//! least TTL or hop count a packet must arrive with (`IP_MINTTL`,
//! `IPV6_MINHOPCOUNT`, as BGP speakers set them). A
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
/// `IP_MINTTL` and `IPV6_MINHOPCOUNT`.
const IP_MINTTL: i32 = 21;
const IPV6_MINHOPCOUNT: i32 = 73;
/// Integer options that drop packets below a floor; 0 is no floor.
const FLOORS: [(i32, i32, &str); 2] = [
    (libc::IPPROTO_IP, IP_MINTTL, "IP_MINTTL"),
    (libc::IPPROTO_IPV6, IPV6_MINHOPCOUNT, "IPV6_MINHOPCOUNT"),
];
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
    /// The value of each of `FLOORS` (0 where the family lacks it).
    floors: [i32; FLOORS.len()],
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
            .field("floors", &self.floors)
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
        let ifindex = bound_device(fd)?;
        let filter = read_filter(fd)?;
        let locked =
            get_int(fd, libc::SOL_SOCKET, SO_LOCK_FILTER).map_err(NotCopied::Unreadable)? != 0;
        let ipv6 = get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(NotCopied::Unreadable)?
            == libc::AF_INET6;
        let mut floors = [0; FLOORS.len()];
        for (floor, (level, name, _)) in floors.iter_mut().zip(FLOORS) {
            // An IPv4 socket has no IPv6 options (an IPv6 one has both).
            if level == libc::IPPROTO_IP || ipv6 {
                *floor = get_int(fd, level, name).map_err(NotCopied::Unreadable)?;
            }
        }
        Ok(Narrowing {
            ifindex,
            filter,
            locked,
            floors,
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
        for (&floor, (level, name, what)) in self.floors.iter().zip(FLOORS) {
            if floor != 0 {
                set_int(to, level, name, floor).map_err(refused(what))?;
            }
        }
        Ok(())
    }
}

/// The index of the device `fd` is bound to, 0 for none. Kernels before
/// 5.0 lack `SO_BINDTOIFINDEX`; there an unbound socket (an empty
/// `SO_BINDTODEVICE` name) is still told apart, and a bound one is not
/// brokered.
fn bound_device(fd: BorrowedFd<'_>) -> Result<i32, NotCopied> {
    let error = match get_int(fd, libc::SOL_SOCKET, SO_BINDTOIFINDEX) {
        Ok(index) => return Ok(index),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => e,
        Err(e) => return Err(NotCopied::Unreadable(e)),
    };
    let mut name = [0u8; libc::IFNAMSIZ];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: a buffer of IFNAMSIZ bytes for an interface name.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc == 0 && (len == 0 || name[0] == 0) {
        Ok(0)
    } else {
        Err(NotCopied::Unreadable(error))
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
    fn a_ttl_floor_is_copied() {
        for domain in [libc::AF_INET, libc::AF_INET6] {
            // SAFETY: fresh sockets we own.
            let [from, to] = [(); 2].map(|_| unsafe {
                OwnedFd::from_raw_fd(libc::socket(domain, libc::SOCK_STREAM, 0))
            });
            set_int(from.as_fd(), libc::IPPROTO_IP, IP_MINTTL, 255).unwrap();
            if domain == libc::AF_INET6 {
                set_int(from.as_fd(), libc::IPPROTO_IPV6, IPV6_MINHOPCOUNT, 200).unwrap();
            }
            Narrowing::read(from.as_fd())
                .unwrap()
                .apply(to.as_fd())
                .unwrap();
            let copied = Narrowing::read(to.as_fd()).unwrap();
            let hops = if domain == libc::AF_INET6 { 200 } else { 0 };
            assert_eq!(copied.floors, [255, hops], "{domain}");
        }
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
