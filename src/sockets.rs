//! Sockets on privileged ports (SPEC §3.3): the server creates the socket
//! with the client's filesystem uid and gid, so the kernel counts it as the
//! client's (no other uid can join its `SO_REUSEPORT` group, and a client
//! can never join another service's), binds it with the server's
//! privilege, and hands it over.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage, sockopt,
};

pub use crate::address::BindRequest;
use crate::address::{Host, Transport, format_bound};
use crate::peer::PeerIdentity;

/// Why a granted bind could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("the address is in use")]
    InUse,
    #[error("{what}: {}", errno.desc())]
    Io { what: &'static str, errno: Errno },
}

fn io(what: &'static str) -> impl Fn(Errno) -> BindError {
    move |errno| BindError::Io { what, errno }
}

/// Creates, binds and (for TCP) listens; returns the socket and its bound
/// address as responses write it.
pub fn bind(request: &BindRequest, client: &PeerIdentity) -> Result<(OwnedFd, String), BindError> {
    let address = request.address;
    let kind = match address.transport {
        Transport::Tcp => SockType::Stream,
        Transport::Udp => SockType::Datagram,
    };
    let (fd, target, v6only) = match address.host {
        Host::Ip(IpAddr::V4(ip)) => (
            socket_as(client, AddressFamily::Inet, kind)?,
            SocketAddr::V4(SocketAddrV4::new(ip, address.port)),
            None,
        ),
        Host::Ip(IpAddr::V6(ip)) => (
            socket_as(client, AddressFamily::Inet6, kind)?,
            SocketAddr::V6(SocketAddrV6::new(ip, address.port, 0, 0)),
            Some(request.v6only),
        ),
        // `*`: every IPv6 and IPv4 address, or IPv4 alone where the host
        // has no IPv6.
        Host::Wildcard => match socket_as(client, AddressFamily::Inet6, kind) {
            Ok(fd) => (
                fd,
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, address.port, 0, 0)),
                Some(false),
            ),
            Err(BindError::Io {
                errno: Errno::EAFNOSUPPORT,
                ..
            }) => (
                socket_as(client, AddressFamily::Inet, kind)?,
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, address.port)),
                None,
            ),
            Err(e) => return Err(e),
        },
    };
    if address.transport == Transport::Tcp {
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(io("SO_REUSEADDR"))?;
    }
    if request.reuseport {
        socket::setsockopt(&fd, sockopt::ReusePort, &true).map_err(io("SO_REUSEPORT"))?;
    }
    if let Some(only) = v6only {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &only).map_err(io("IPV6_V6ONLY"))?;
    }
    let bound = match target {
        SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(a)),
        SocketAddr::V6(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(a)),
    };
    match bound {
        Ok(()) => {}
        Err(Errno::EADDRINUSE) => return Err(BindError::InUse),
        Err(e) => return Err(io("bind")(e)),
    }
    if address.transport == Transport::Tcp && request.listen {
        // SAFETY: listen(2) on a socket we own.
        if unsafe { libc::listen(fd.as_raw_fd(), request.backlog) } != 0 {
            return Err(io("listen")(Errno::last()));
        }
    }
    let local: SockaddrStorage = socket::getsockname(fd.as_raw_fd()).map_err(io("getsockname"))?;
    let local = if let Some(v4) = local.as_sockaddr_in() {
        SocketAddr::V4(SocketAddrV4::from(*v4))
    } else if let Some(v6) = local.as_sockaddr_in6() {
        SocketAddr::V6(SocketAddrV6::from(*v6))
    } else {
        target
    };
    Ok((fd, format_bound(address.transport, local)))
}

/// `socket()` with this thread's filesystem uid and gid set to the
/// client's, so the socket belongs to the client; restored at once.
fn socket_as(
    client: &PeerIdentity,
    family: AddressFamily,
    kind: SockType,
) -> Result<OwnedFd, BindError> {
    // SAFETY: setfsgid/setfsuid change this thread's credentials only and
    // are restored before returning, whatever socket() did.
    let (old_gid, old_uid) = unsafe {
        let gid = libc::setfsgid(client.gid);
        let uid = libc::setfsuid(client.uid);
        (gid, uid)
    };
    let made = socket::socket(family, kind, SockFlag::SOCK_CLOEXEC, None);
    // SAFETY: as above.
    unsafe {
        libc::setfsuid(old_uid as libc::uid_t);
        libc::setfsgid(old_gid as libc::gid_t);
    }
    made.map_err(io("socket"))
}
