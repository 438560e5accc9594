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
    attach_rights(&mut msg, &mut control, fds);
    retry_interrupted(|| {
        // SAFETY: msg points at live buffers of the lengths it states.
        unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) }
    })
}

/// Most messages one [`send_each`] sends.
pub const MAX_MESSAGES_PER_SEND: usize = 64;

/// One message for [`send_each`]: its bytes, gathered from `parts` in
/// order, and the descriptor they carry.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    pub parts: &'a [io::IoSlice<'a>],
    pub fd: Option<BorrowedFd<'a>>,
}

/// What [`send_each`] got out: `messages` were begun, all whole but
/// perhaps the last, and `bytes` went out in all.
#[derive(Debug, PartialEq, Eq)]
pub struct SentEach {
    pub messages: usize,
    pub bytes: usize,
}

/// Room for one `SCM_RIGHTS` header and one descriptor, aligned for
/// `cmsghdr`.
type OneFdControl = [u64; 3];

/// Sends each of `messages` (at most [`MAX_MESSAGES_PER_SEND`]; more is a
/// bug and panics) as a message of its own, its descriptor attached to it
/// alone, in one `sendmmsg`. The receiver sees exactly what a `sendmsg`
/// per message would have given it: a stream read never runs past bytes
/// that carry descriptors. But we enter the kernel once, not once per
/// message (the reader is still signalled per message; only the first
/// signal finds it asleep). Like the kernel, stops after a message
/// the socket took only in part; a message after the first that fails
/// ends the batch without an error (the next call meets it).
pub fn send_each(sock: BorrowedFd<'_>, messages: &[Message<'_>]) -> io::Result<SentEach> {
    assert!(
        messages.len() <= MAX_MESSAGES_PER_SEND,
        "too many messages for one sendmmsg"
    );
    if messages.is_empty() {
        return Ok(SentEach {
            messages: 0,
            bytes: 0,
        });
    }
    let mut controls = [OneFdControl::default(); MAX_MESSAGES_PER_SEND];
    // SAFETY: all-zero is a valid mmsghdr.
    let mut headers: [libc::mmsghdr; MAX_MESSAGES_PER_SEND] = unsafe { std::mem::zeroed() };
    for (i, message) in messages.iter().enumerate() {
        let msg = &mut headers[i].msg_hdr;
        // `IoSlice` is ABI-compatible with `iovec`; sendmmsg only reads them.
        msg.msg_iov = message.parts.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = message.parts.len() as _;
        attach_rights(msg, &mut controls[i], message.fd);
    }
    let sent = retry_interrupted(|| {
        // SAFETY: each header points at its message's live iovecs and its
        // own control buffer, of the lengths it states; the kernel writes
        // only msg_len.
        unsafe { sendmmsg(sock, &mut headers[..messages.len()]) }
    })?;
    Ok(SentEach {
        messages: sent,
        bytes: headers[..sent].iter().map(|h| h.msg_len as usize).sum(),
    })
}

/// `sendmmsg(2)` of `headers`, with `MSG_NOSIGNAL`.
///
/// # Safety
/// Each header must point at live buffers of the lengths it states.
#[cfg(not(target_env = "musl"))]
unsafe fn sendmmsg(sock: BorrowedFd<'_>, headers: &mut [libc::mmsghdr]) -> isize {
    // SAFETY: as the caller promises.
    unsafe {
        libc::sendmmsg(
            sock.as_raw_fd(),
            headers.as_mut_ptr(),
            headers.len() as _,
            libc::MSG_NOSIGNAL as _,
        ) as isize
    }
}

/// `sendmmsg(2)` as the kernel does it, on musl: musl's own is, on 64-bit
/// targets, a loop of `sendmsg` that goes on past a message the socket
/// took only in part, so a reader that made room meanwhile got the next
/// message in the middle of that one. This loop stops there, as the
/// kernel's does, and like it returns an error only for the first message.
///
/// # Safety
/// Each header must point at live buffers of the lengths it states.
#[cfg(target_env = "musl")]
unsafe fn sendmmsg(sock: BorrowedFd<'_>, headers: &mut [libc::mmsghdr]) -> isize {
    for (i, header) in headers.iter_mut().enumerate() {
        // SAFETY: as the caller promises.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &header.msg_hdr, libc::MSG_NOSIGNAL) };
        if n < 0 {
            return if i == 0 { -1 } else { i as isize };
        }
        header.msg_len = n as _;
        // SAFETY: the iovecs are live, as the caller promises.
        let parts = unsafe {
            std::slice::from_raw_parts(header.msg_hdr.msg_iov, header.msg_hdr.msg_iovlen as usize)
        };
        let len: usize = parts.iter().map(|part| part.iov_len).sum();
        if (n as usize) < len {
            return i as isize + 1;
        }
    }
    headers.len() as isize
}

/// Points `msg` at `control` and writes one `SCM_RIGHTS` message with
/// `fds` into it, in order; with no descriptors, `msg` gets no control
/// data. Panics if `control` has no room for them all.
fn attach_rights<'a>(
    msg: &mut libc::msghdr,
    control: &mut [u64],
    fds: impl IntoIterator<Item = BorrowedFd<'a>>,
) {
    let mut fds = fds.into_iter().peekable();
    if fds.peek().is_none() {
        return;
    }
    // SAFETY: CMSG_SPACE only computes a size.
    let header_space = unsafe { libc::CMSG_SPACE(0) } as usize;
    let room = (size_of_val(control) - header_space) / size_of::<RawFd>();
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(control) as _;
    // SAFETY: CMSG_* only compute sizes and walk the buffer set above,
    // which holds one header and `room` descriptors; the count is checked
    // before each write.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(msg);
        let data = libc::CMSG_DATA(cmsg) as *mut RawFd;
        let mut count = 0;
        for fd in fds {
            assert!(count < room, "too many descriptors for one sendmsg");
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

/// Runs a system call until it is not interrupted by a signal; a
/// negative return is the error in `errno`.
fn retry_interrupted(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
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
    let n = retry_interrupted(|| {
        // SAFETY: msg points at live buffers of the lengths it states.
        unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | flags) }
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixStream;

    fn inode(fd: impl AsFd) -> u64 {
        std::fs::File::from(fd.as_fd().try_clone_to_owned().unwrap())
            .metadata()
            .unwrap()
            .ino()
    }

    #[test]
    fn send_each_keeps_every_message_and_its_descriptor_apart() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let files: Vec<_> = ["/", "/proc", "/dev/null"]
            .iter()
            .map(|p| std::fs::File::open(p).unwrap())
            .collect();
        let messages = [
            Message {
                parts: &[io::IoSlice::new(b"one\n")],
                fd: Some(files[0].as_fd()),
            },
            Message {
                parts: &[io::IoSlice::new(b"two\n")],
                fd: None,
            },
            Message {
                parts: &[io::IoSlice::new(b"three\n")],
                fd: Some(files[1].as_fd()),
            },
            Message {
                parts: &[io::IoSlice::new(b"four\n")],
                fd: Some(files[2].as_fd()),
            },
        ];
        let sent = send_each(ours.as_fd(), &messages).unwrap();
        assert_eq!(
            sent,
            SentEach {
                messages: 4,
                bytes: 19
            }
        );
        // A reader with room for one descriptor gets each with the bytes
        // of its own message: a read may take in "two" (no descriptor)
        // before "three", but never goes past a message that brings one.
        let mut buf = [0u8; 64];
        let first = recv_with_room(theirs.as_fd(), &mut buf, 1).unwrap();
        assert!(!first.truncated);
        assert_eq!(first.fds.len(), 1);
        assert_eq!(inode(&first.fds[0]), inode(&files[0]));
        assert_eq!(&buf[..first.bytes], b"one\n");
        let mut text = buf[..first.bytes].to_vec();
        let mut fds = first.fds;
        while text.len() < 19 {
            let got = recv_with_room(theirs.as_fd(), &mut buf, 1).unwrap();
            assert!(!got.truncated && got.fds.len() <= 1);
            text.extend_from_slice(&buf[..got.bytes]);
            if let Some(fd) = got.fds.into_iter().next() {
                // A read ends with the message that brought a descriptor.
                assert!(text.ends_with(b"three\n") || text.ends_with(b"four\n"));
                fds.push(fd);
            }
        }
        assert_eq!(text, b"one\ntwo\nthree\nfour\n");
        let inodes: Vec<_> = fds.iter().map(inode).collect();
        let wanted: Vec<_> = [&files[0], &files[1], &files[2]].map(inode).to_vec();
        assert_eq!(inodes, wanted);
    }

    #[test]
    fn send_each_stops_where_the_socket_is_full() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let big = vec![b'x'; 100 * 1024];
        let big_parts = [
            io::IoSlice::new(&big[..40 * 1024]),
            io::IoSlice::new(&big[40 * 1024..]),
        ];
        let messages = [Message {
            parts: &big_parts,
            fd: None,
        }; 8];
        let sent = send_each(ours.as_fd(), &messages).unwrap();
        // Some went out, not all: the last counted one may be in part.
        assert!(sent.messages >= 1 && sent.messages < 8, "{sent:?}");
        assert!(sent.bytes > (sent.messages - 1) * big.len());
        assert!(sent.bytes <= sent.messages * big.len());
        // Full: the next call says so instead of sending nothing.
        let err = loop {
            match send_each(ours.as_fd(), &messages[..2]) {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(theirs);
    }

    /// Sends `messages` as the server does, each call taking up to eight
    /// from where the last stopped (the rest of a message begun first),
    /// waiting with poll for room: what the reader gets must be every
    /// message whole and in order. A short message must end a call:
    /// musl's `sendmmsg` on 64-bit is a loop of `sendmsg` that went on past
    /// one, so a reader draining meanwhile got the next message inside it.
    #[test]
    fn send_each_never_sends_past_a_message_sent_in_part() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        // A small buffer: most messages go out in parts.
        let size: libc::c_int = 4096;
        // SAFETY: the option's value is one live c_int.
        let set = unsafe {
            libc::setsockopt(
                ours.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as _,
            )
        };
        assert_eq!(set, 0);
        // Message i: a run of one letter, ended by a newline; the slices
        // share 26 buffers.
        const COUNT: usize = 20_000;
        const LONGEST: usize = 8_000;
        let pools: Vec<Vec<u8>> = (b'a'..=b'z')
            .map(|letter| {
                let mut pool = vec![letter; LONGEST];
                pool[LONGEST - 1] = b'\n';
                pool
            })
            .collect();
        let body = |i: usize| &pools[i % 26][LONGEST - 1 - (i * 7919) % (LONGEST - 1)..];
        let bodies: Vec<&[u8]> = (0..COUNT).map(body).collect();
        let lens: Vec<usize> = bodies.iter().map(|b| b.len()).collect();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            for (i, len) in lens.into_iter().enumerate() {
                let mut at = 0;
                while at < len {
                    let n = recv(theirs.as_fd(), &mut buf[..len - at]).unwrap().bytes;
                    assert!(n > 0, "the stream ended early");
                    let wanted = |j| {
                        if at + j + 1 == len {
                            b'\n'
                        } else {
                            b'a' + (i % 26) as u8
                        }
                    };
                    for (j, &byte) in buf[..n].iter().enumerate() {
                        assert_eq!(byte, wanted(j), "message {i}, byte {}", at + j);
                    }
                    at += n;
                }
            }
        });
        let (mut next, mut sent_of_next) = (0, 0);
        while next < bodies.len() {
            // Each message in two slices, as a server gathers answers.
            let parts: Vec<[io::IoSlice<'_>; 2]> = bodies[next..bodies.len().min(next + 8)]
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    let body = &body[if i == 0 { sent_of_next } else { 0 }..];
                    let (head, tail) = body.split_at(body.len() / 2);
                    [io::IoSlice::new(head), io::IoSlice::new(tail)]
                })
                .collect();
            let messages: Vec<_> = parts
                .iter()
                .map(|parts| Message { parts, fd: None })
                .collect();
            match send_each(ours.as_fd(), &messages) {
                Ok(sent) => {
                    // All whole but perhaps the last begun: this is what
                    // Connection::consume counts on.
                    let mut bytes = sent.bytes;
                    for message in &messages[..sent.messages] {
                        let len: usize = message.parts.iter().map(|p| p.len()).sum();
                        if bytes < len {
                            sent_of_next += bytes;
                            bytes = 0;
                            break;
                        }
                        bytes -= len;
                        next += 1;
                        sent_of_next = 0;
                    }
                    assert_eq!(bytes, 0);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut pollfd = libc::pollfd {
                        fd: ours.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one live pollfd.
                    unsafe { libc::poll(&mut pollfd, 1, -1) };
                }
                // The reader stopped: it says why.
                Err(_) => break,
            }
        }
        drop(ours);
        reader
            .join()
            .expect("the reader got every message whole, in order");
    }
}
