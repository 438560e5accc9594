//! A trapped `bind` to a privileged port (SPEC §8): which socket and
//! address it names, and how the granted socket takes the program's
//! socket's place with the options the program already set on it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::listener::Notification;
use super::narrowing::Narrowing;
use super::target::Target;
use crate::address::Transport;

/// `sizeof(struct sockaddr_storage)`: the longest address `bind` takes.
const SOCKADDR_STORAGE: usize = 128;
/// The length of RFC 2133's `sockaddr_in6`, without `sin6_scope_id`.
const SIN6_LEN_RFC2133: usize = 24;

/// What a trapped `bind` asks for, before the socket itself is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindArgs {
    pub sockfd: RawFd,
    pub address: SocketAddr,
}

impl BindArgs {
    /// Decodes `bind(sockfd, addr, len)`; `None` unless it is an IPv4 or
    /// IPv6 address on a port in `1..unprivileged_start`, not IPv4-mapped
    /// and without an IPv6 scope (those need no broker or cannot be
    /// reproduced exactly by the server).
    pub fn decode(
        call: &Notification,
        target: &Target,
        unprivileged_start: u16,
    ) -> Option<BindArgs> {
        let sockfd = call.args[0] as RawFd;
        // The kernel takes the length as an int and refuses (EINVAL) one
        // below 0 or beyond a sockaddr_storage; the call then continues
        // so that the program gets that refusal.
        let len = usize::try_from(call.args[2] as u32 as i32).ok()?;
        let mut raw = [0u8; SOCKADDR_STORAGE];
        if !(2..=SOCKADDR_STORAGE).contains(&len)
            || target.read_memory(call.args[1], &mut raw[..len]) != len
        {
            return None;
        }
        let family = i32::from(u16::from_ne_bytes([raw[0], raw[1]]));
        let port = u16::from_be_bytes([raw[2], raw[3]]);
        if port == 0 || port >= unprivileged_start {
            return None;
        }
        let ip = match family {
            libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
                IpAddr::V4(Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]))
            }
            // RFC 2133's sockaddr_in6 has no sin6_scope_id; the kernel
            // accepts it and reads the scope only from a longer one.
            libc::AF_INET6 if len >= SIN6_LEN_RFC2133 => {
                let octets: [u8; 16] = raw[8..24].try_into().unwrap();
                let scope_id = if len >= size_of::<libc::sockaddr_in6>() {
                    u32::from_ne_bytes(raw[24..28].try_into().unwrap())
                } else {
                    0
                };
                let ip = Ipv6Addr::from(octets);
                if scope_id != 0 || ip.to_ipv4_mapped().is_some() {
                    return None;
                }
                IpAddr::V6(ip)
            }
            _ => return None,
        };
        Some(BindArgs {
            sockfd,
            address: SocketAddr::new(ip, port),
        })
    }
}

pub(super) fn get_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int-sized buffer for an int option.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut i32).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

pub(super) fn set_int(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: an int option from an int.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The program's socket, as far as the server's `bind` request goes.
#[derive(Debug)]
pub struct ProgramSocket {
    pub transport: Transport,
    pub reuseport: bool,
    pub v6only: bool,
    /// What the granted socket must get too, or not be used.
    pub narrowing: Narrowing,
}

impl ProgramSocket {
    /// A TCP or UDP socket of `address`'s family that is not bound yet
    /// and has nothing narrowing it that could not be copied; `None` for
    /// anything else.
    pub fn inspect(fd: BorrowedFd<'_>, address: &SocketAddr) -> Option<ProgramSocket> {
        let domain = get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).ok()?;
        let wanted_domain = if address.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let kind = get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()?;
        let protocol = get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).ok()?;
        let transport = match (kind, protocol) {
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) => Transport::Tcp,
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => Transport::Udp,
            _ => return None,
        };
        if domain != wanted_domain || bound_port(fd)? != 0 {
            return None;
        }
        let v6only =
            address.is_ipv6() && get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).ok()? != 0;
        Some(ProgramSocket {
            transport,
            reuseport: get_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT).ok()? != 0,
            v6only,
            narrowing: Narrowing::read(fd).ok()?,
        })
    }

    /// The server's address syntax: `tcp:1.2.3.4:80`, `udp:[::1]:53`.
    pub fn address(&self, address: &SocketAddr) -> String {
        let host = match address.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        format!("{}:{host}:{}", self.transport.as_str(), address.port())
    }
}

/// The port a socket is bound to (0 if none).
fn bound_port(fd: BorrowedFd<'_>) -> Option<u16> {
    // SAFETY: sockaddr_storage is large enough for any address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above.
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    // sin_port and sin6_port sit at the same offset.
    // SAFETY: the kernel filled at least the family and port.
    let sin = unsafe { &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
    Some(u16::from_be(sin.sin_port))
}

/// Copies what the program set on its socket onto the granted one:
/// `SO_REUSEADDR`, `SO_KEEPALIVE`, the buffer sizes, `TCP_NODELAY` and
/// `O_NONBLOCK`.
pub fn copy_options(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    transport: Transport,
) -> io::Result<()> {
    for name in [libc::SO_REUSEADDR, libc::SO_KEEPALIVE] {
        set_int(
            to,
            libc::SOL_SOCKET,
            name,
            get_int(from, libc::SOL_SOCKET, name)?,
        )?;
    }
    // The kernel doubles what is set and reports the doubled value.
    for name in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        let (have, want) = (
            get_int(to, libc::SOL_SOCKET, name)?,
            get_int(from, libc::SOL_SOCKET, name)?,
        );
        if have != want {
            set_int(to, libc::SOL_SOCKET, name, want / 2)?;
        }
    }
    if transport == Transport::Tcp {
        let nodelay = get_int(from, libc::IPPROTO_TCP, libc::TCP_NODELAY)?;
        set_int(to, libc::IPPROTO_TCP, libc::TCP_NODELAY, nodelay)?;
    }
    // SAFETY: fcntl on descriptors we hold.
    unsafe {
        let nonblocking = libc::fcntl(from.as_raw_fd(), libc::F_GETFL) & libc::O_NONBLOCK;
        let flags = libc::fcntl(to.as_raw_fd(), libc::F_GETFL);
        if flags < 0
            || libc::fcntl(
                to.as_raw_fd(),
                libc::F_SETFL,
                (flags & !libc::O_NONBLOCK) | nonblocking,
            ) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// `bind(3, addr, len)` trapped in this very process.
    fn decode(addr: &[u8], len: u64) -> Option<BindArgs> {
        let call = Notification {
            id: 0,
            tid: std::process::id() as i32,
            nr: libc::SYS_bind,
            args: [3, addr.as_ptr() as u64, len, 0, 0, 0],
        };
        let target = Target { tid: call.tid };
        BindArgs::decode(&call, &target, 1024)
    }

    #[test]
    fn address_lengths_are_the_kernels() {
        let mut v6 = [0u8; 128];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&80u16.to_be_bytes());
        v6[23] = 1; // ::1
        let loopback: SocketAddr = "[::1]:80".parse().unwrap();
        // RFC 2133's 24 bytes, the full 28, anything up to 128; the
        // kernel reads the length as an int, so the register's upper half
        // does not count.
        for len in [24, 28, 128, (1 << 32) | 28] {
            assert_eq!(decode(&v6, len).map(|b| b.address), Some(loopback), "{len}");
        }
        // The kernel refuses these with EINVAL: the call continues.
        for len in [23, 129, u64::from(u32::MAX)] {
            assert_eq!(decode(&v6, len), None, "{len}");
        }
        // A scope is read only from an address long enough to hold one.
        v6[24] = 2;
        assert_eq!(decode(&v6, 28), None, "scoped");
        assert_eq!(decode(&v6, 24).map(|b| b.address), Some(loopback));
        let mut v4 = [0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&80u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        assert!(decode(&v4, 16).is_some());
        assert_eq!(decode(&v4, 15), None);
    }

    #[test]
    fn sees_an_unbound_tcp_socket_and_its_options() {
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert!(
            ProgramSocket::inspect(s.as_fd(), &addr).is_none(),
            "already bound"
        );
        // SAFETY: a fresh socket.
        let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0) };
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).unwrap();
        let v6: SocketAddr = "[::1]:53".parse().unwrap();
        let seen = ProgramSocket::inspect(fd.as_fd(), &v6).unwrap();
        assert_eq!(seen.transport, Transport::Udp);
        assert!(seen.reuseport);
        assert_eq!(seen.address(&v6), "udp:[::1]:53");
        assert!(
            ProgramSocket::inspect(fd.as_fd(), &addr).is_none(),
            "family differs"
        );
    }
}
