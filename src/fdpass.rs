//! Sending and receiving bytes with descriptors attached (`SCM_RIGHTS`).
//!
//! Both directions use libc rather than nix: nix refuses to parse the
//! control buffer when the kernel set `MSG_CTRUNC` (and the descriptors that
//! did arrive must still be found and closed, never leaked), and its
//! `sendmsg` allocates a control buffer on every call, which on the hot
//! path of every grant is a cost worth avoiding.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The kernel passes at most this many descriptors in one message
/// (`SCM_MAX_FD`); a buffer this big is never truncated by one sender.
const MAX_FDS_PER_MESSAGE: usize = 253;
/// Room for one `SCM_RIGHTS` header and `MAX_FDS_PER_MESSAGE` descriptors,
/// with slack for another control message, in 8-byte words.
const CONTROL_WORDS: usize = (MAX_FDS_PER_MESSAGE * size_of::<RawFd>()).div_ceil(8) + 16;

/// Most descriptors one [`send_vectored`] attaches: a coalesced batch of
/// responses (SPEC §2) never holds more than this many.
pub const MAX_FDS_PER_SEND: usize = 64;

/// Sends `bytes` in one `sendmsg`, with `fd` attached if given. Returns the
/// number of bytes sent: on a non-blocking socket it may be fewer, and the
/// descriptor then travels with the part that was sent.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<usize> {
    send_vectored(sock, &[io::IoSlice::new(bytes)], fd)
}

/// Sends the slices of `iov` in one `sendmsg`, with `fds` (at most
/// [`MAX_FDS_PER_SEND`]; more is a bug and panics) attached in order.
/// Returns the number of bytes sent; if any were, every descriptor went
/// with the first of them (the kernel attaches them to its first buffer).
/// It allocates nothing and takes no lock, so `run`'s child calls it
/// between `fork` and `exec`.
pub fn send_vectored<'a>(
    sock: BorrowedFd<'_>,
    iov: &[io::IoSlice<'_>],
    fds: impl IntoIterator<Item = BorrowedFd<'a>>,
) -> io::Result<usize> {
    // Room for one SCM_RIGHTS header and MAX_FDS_PER_SEND descriptors,
    // aligned for `cmsghdr`.
    let mut control = [0u64; (MAX_FDS_PER_SEND * size_of::<RawFd>()).div_ceil(8) + 4];
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec`; sendmsg only reads them.
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    let mut fds = fds.into_iter().peekable();
    if fds.peek().is_some() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control) as _;
        // SAFETY: CMSG_* only compute sizes and walk the buffer set above,
        // which holds one header and MAX_FDS_PER_SEND descriptors; the
        // count is checked before each write.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            let data = libc::CMSG_DATA(cmsg) as *mut RawFd;
            let mut count = 0;
            for fd in fds {
                assert!(
                    count < MAX_FDS_PER_SEND,
                    "too many descriptors for one sendmsg"
                );
                data.add(count).write_unaligned(fd.as_raw_fd());
                count += 1;
            }
            let len = (count * size_of::<RawFd>()) as u32;
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(len) as _;
            msg.msg_controllen = libc::CMSG_SPACE(len) as _;
        }
    }
    loop {
        // SAFETY: msg points at live buffers of the lengths it states.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// What one [`recv`] got.
#[derive(Debug, Default)]
pub struct Received {
    /// Bytes read into the buffer; 0 means end of stream.
    pub bytes: usize,
    /// Descriptors that came with them, already owned (closed on drop).
    pub fds: Vec<OwnedFd>,
    /// The kernel dropped descriptors that did not fit (`MSG_CTRUNC`).
    pub truncated: bool,
}

/// One `recvmsg` into `buf`, collecting any descriptors sent along.
/// Descriptors arrive close-on-exec.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    recv_flags(sock, buf, 0)
}

/// [`recv`] that returns `WouldBlock` at once when nothing is there.
pub fn recv_now(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    recv_flags(sock, buf, libc::MSG_DONTWAIT)
}

/// [`recv`] with room for only `room` descriptors, as a client that asked
/// for `room` per message has (SPEC §2; 1 for a v2 client): the kernel
/// closes any beyond that and `truncated` says so. For tests and tools
/// that check what a server sends.
pub fn recv_with_room(sock: BorrowedFd<'_>, buf: &mut [u8], room: usize) -> io::Result<Received> {
    let room = room.min(MAX_FDS_PER_MESSAGE);
    // CMSG_LEN, not CMSG_SPACE: the kernel fits as many descriptors as
    // the length holds, and CMSG_SPACE's padding holds one more.
    // SAFETY: CMSG_LEN only computes a size.
    let len = unsafe { libc::CMSG_LEN((room * size_of::<RawFd>()) as u32) } as usize;
    recv_into(sock, buf, 0, len)
}

fn recv_flags(sock: BorrowedFd<'_>, buf: &mut [u8], flags: libc::c_int) -> io::Result<Received> {
    recv_into(sock, buf, flags, CONTROL_WORDS * 8)
}

/// One `recvmsg` with `control_len` bytes (at most room for
/// `MAX_FDS_PER_MESSAGE`) for ancillary data.
fn recv_into(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: libc::c_int,
    control_len: usize,
) -> io::Result<Received> {
    // u64 elements keep the buffer aligned for `cmsghdr`; sized for
    // `MAX_FDS_PER_MESSAGE` plus headers, on the stack.
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control_len.min(control.len() * 8) as _;
    let n = loop {
        // SAFETY: msg points at live buffers of the lengths it states.
        let n =
            unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | flags) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control up to msg_controllen; the CMSG
    // macros walk it within those bounds.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                let count =
                    ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        bytes: n,
        fds,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}
