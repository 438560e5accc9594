//! What an upgrade or the service manager's fd store passes on (SPEC
//! §3.4): every held and parked fd, each in the same `SOCK_SEQPACKET`
//! message as its metadata, so no fd can ever be paired with the wrong
//! name; and taking it back.
//!
//! One message per fd: a JSON object (name, kind, storer's identity,
//! expiry as absolute wall-clock milliseconds since the epoch, so time
//! spent stopped counts) with the fd as `SCM_RIGHTS`. The last message
//! is `{"end":N}`, N the count, so a reader tells a complete hand-over
//! from a cut one.
//!
//! That last message also carries the writing end itself. A socket whose
//! peer is closed polls `EPOLLHUP`, and systemd drops a stored fd the
//! moment it sees that (`on_fd_store_io`), so closing the writing end
//! would lose everything stored. Sent into its own pair, the writing end
//! stays open, owned by the queue of the one socket PID 1 keeps, and the
//! reader closes it once it has read the rest.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use serde::{Deserialize, Serialize};

use super::held::Kind;
use crate::fdpass;
use crate::peer::PeerIdentity;

/// The name a hand-over socket has in the fd store and `LISTEN_FDNAMES`.
pub const FDNAME: &str = "fdopen-held";
/// Room for one message: a name of at most 255 bytes, an identity with
/// its groups, and slack. A longer message is a broken hand-over.
const MESSAGE_ROOM: usize = 64 * 1024;
/// Bytes one message costs in the writer's send buffer, with the kernel's
/// own overhead, for sizing it so the whole hand-over fits unread.
const MESSAGE_COST: usize = 4096;

/// One held or parked fd on its way out.
pub(super) struct Outgoing<'a> {
    pub name: &'a str,
    pub kind: Kind,
    pub storer: &'a PeerIdentity,
    pub expires: Option<SystemTime>,
    pub fd: BorrowedFd<'a>,
}

/// One held or parked fd taken back.
pub(super) struct Incoming {
    pub name: String,
    pub kind: Kind,
    pub storer: PeerIdentity,
    pub expires: Option<SystemTime>,
    pub fd: OwnedFd,
}

/// What the hand-over carried, and what it could not.
pub struct Received {
    pub(super) entries: Vec<Incoming>,
    /// Messages that were unreadable (their fds are closed).
    pub damaged: usize,
    /// The writer said it was done (`{"end":N}`) and N matched.
    pub complete: bool,
}

impl Default for Received {
    /// Nothing, and nothing missing.
    fn default() -> Received {
        Received {
            entries: Vec::new(),
            damaged: 0,
            complete: true,
        }
    }
}

impl Received {
    /// Descriptors received.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds what another hand-over socket carried.
    pub fn merge(&mut self, other: Received) {
        self.entries.extend(other.entries);
        self.damaged += other.damaged;
        self.complete &= other.complete;
    }
}

/// A handed-over fd this server could not hold again (its limits, a
/// name taken meanwhile); the fd is closed.
#[derive(Debug)]
pub struct Unheld {
    pub name: String,
    pub storer: u32,
    pub why: crate::decision::Refusal,
}

/// Why a hand-over could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot make the hand-over socket pair: {0}")]
    Pair(io::Error),
    #[error("cannot write the hand-over (after {sent} descriptors): {source}")]
    Write { sent: usize, source: io::Error },
    #[error("cannot read the hand-over: {0}")]
    Read(io::Error),
}

#[derive(Serialize, Deserialize)]
struct Identity {
    uid: u32,
    gid: u32,
    pid: i32,
    #[serde(default)]
    groups: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cgroup: Option<String>,
}

/// One message's JSON: an entry, or the end.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    storer: Option<Identity>,
    /// Milliseconds since the epoch, wall-clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<usize>,
}

/// A fresh `(writing, reading)` pair, close-on-exec both.
pub(super) fn pair() -> Result<(OwnedFd, OwnedFd), HandoverError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| HandoverError::Pair(e.into()))
}

/// Writes `entries` and the end into `writer`, then sends `writer` itself
/// along with the end (see the module doc) and closes our copy. With
/// `timeout`, a reader that stops reading fails the write after that long;
/// without, the send buffer is made large enough for everything unread.
pub(super) fn write(
    writer: OwnedFd,
    entries: &[Outgoing<'_>],
    timeout: Option<Duration>,
) -> Result<usize, HandoverError> {
    let fail = |sent, source| HandoverError::Write { sent, source };
    let room = (entries.len() + 16).saturating_mul(MESSAGE_COST);
    grow_send_buffer(&writer, room).map_err(|e| fail(0, e))?;
    if let Some(timeout) = timeout {
        let tv = nix::sys::time::TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _);
        nix::sys::socket::setsockopt(&writer, nix::sys::socket::sockopt::SendTimeout, &tv)
            .map_err(|e| fail(0, e.into()))?;
    }
    for (sent, entry) in entries.iter().enumerate() {
        let message = Message {
            name: Some(entry.name.to_owned()),
            kind: Some(entry.kind.as_str().to_owned()),
            storer: Some(Identity {
                uid: entry.storer.uid,
                gid: entry.storer.gid,
                pid: entry.storer.pid,
                groups: entry.storer.groups.clone(),
                cgroup: entry.storer.cgroup.clone(),
            }),
            expires_ms: entry.expires.map(epoch_ms),
            end: None,
        };
        send(&writer, &message, entry.fd).map_err(|e| fail(sent, e))?;
    }
    let end = Message {
        name: None,
        kind: None,
        storer: None,
        expires_ms: None,
        end: Some(entries.len()),
    };
    send(&writer, &end, writer.as_fd()).map_err(|e| fail(entries.len(), e))?;
    Ok(entries.len())
}

fn send(writer: &OwnedFd, message: &Message, fd: BorrowedFd<'_>) -> io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
    if bytes.len() >= MESSAGE_ROOM {
        return Err(io::Error::other("metadata too large for one message"));
    }
    // A SOCK_SEQPACKET send is whole or fails: no partial message.
    fdpass::send(writer.as_fd(), &bytes, Some(fd)).map(drop)
}

/// Root raises the buffer past `wmem_max`; others get what it allows.
fn grow_send_buffer(fd: &OwnedFd, bytes: usize) -> io::Result<()> {
    let bytes = bytes.min(i32::MAX as usize / 2) as libc::c_int;
    for option in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: setsockopt reads one int from a live variable.
        let done = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&bytes as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if done {
            return Ok(());
        }
    }
    Err(io::Error::last_os_error())
}

/// Reads a hand-over from `reader` until its end. With `timeout`, waits
/// that long for each message (a writer still at work); without, reads
/// what is queued and stops where the queue ends.
pub fn read(reader: &OwnedFd, timeout: Option<Duration>) -> Result<Received, HandoverError> {
    let mut received = Received {
        complete: false,
        ..Received::default()
    };
    let mut buf = vec![0u8; MESSAGE_ROOM];
    let base = PeerIdentity::current();
    loop {
        if let Some(timeout) = timeout
            && !readable(reader, timeout).map_err(HandoverError::Read)?
        {
            return Err(HandoverError::Read(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no message for {} after {} descriptors",
                    humantime::format_duration(timeout),
                    received.len()
                ),
            )));
        }
        let got = match recv_message(reader, &mut buf) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(received),
            Err(e) => return Err(HandoverError::Read(e)),
        };
        let Some((bytes, mut fds)) = got else {
            return Ok(received); // the writer closed without an end
        };
        let message: Option<Message> = serde_json::from_slice(&buf[..bytes]).ok();
        match message {
            Some(Message { end: Some(n), .. }) => {
                // The writing end came along; dropping it closes it.
                drop(fds);
                received.complete = n == received.len() + received.damaged;
                return Ok(received);
            }
            Some(message) if fds.len() == 1 => match incoming(message, fds.remove(0), &base) {
                Some(entry) => received.entries.push(entry),
                None => received.damaged += 1,
            },
            _ => received.damaged += 1,
        }
    }
}

/// One whole message, or `None` at end of stream. A message cut short
/// (`MSG_TRUNC`, `MSG_CTRUNC`) comes back with no fds: it is damaged.
fn recv_message(reader: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let got = fdpass::recv_now(reader.as_fd(), buf)?;
    if got.bytes == 0 && got.fds.is_empty() {
        return Ok(None);
    }
    if got.truncated || got.bytes == buf.len() {
        return Ok(Some((0, Vec::new())));
    }
    Ok(Some((got.bytes, got.fds)))
}

fn readable(fd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    loop {
        match poll(&mut fds, timeout) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The entry a message describes. What an identity has beyond what the
/// hand-over carries is `base`'s: nothing that decides about a held fd.
fn incoming(message: Message, fd: OwnedFd, base: &PeerIdentity) -> Option<Incoming> {
    let name = message.name?;
    crate::protocol::held::check_name(&name, false).ok()?;
    let kind = match message.kind?.as_str() {
        "held" => Kind::Held,
        "parked" => Kind::Parked,
        _ => return None,
    };
    let who = message.storer?;
    let mut storer = base.clone();
    storer.pid = who.pid;
    storer.uid = who.uid;
    storer.gid = who.gid;
    storer.groups = who.groups;
    storer.cgroup = who.cgroup;
    Some(Incoming {
        name,
        kind,
        storer,
        expires: message
            .expires_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        fd,
    })
}

fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn peer() -> PeerIdentity {
        let mut peer = PeerIdentity::current();
        peer.pid = 7;
        peer.uid = 1000;
        peer.gid = 100;
        peer.groups = vec![4, 27];
        peer.cgroup = Some("/system.slice/web.service".into());
        peer
    }

    #[test]
    fn every_fd_comes_back_with_its_own_name_after_the_writer_is_gone() {
        let who = peer();
        let pipes: Vec<_> = (0..300).map(|_| nix::unistd::pipe().unwrap()).collect();
        let at = UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
        let names: Vec<String> = (0..pipes.len()).map(|i| format!("web/c{i}")).collect();
        let entries: Vec<Outgoing<'_>> = pipes
            .iter()
            .zip(&names)
            .map(|((_, w), name)| Outgoing {
                name,
                kind: Kind::Parked,
                storer: &who,
                expires: Some(at),
                fd: w.as_fd(),
            })
            .collect();
        let (writer, reader) = pair().unwrap();
        // Nobody reads while it writes: all of it must fit, and the
        // reading end must not see a hang-up afterwards.
        write(writer, &entries, None).unwrap();
        drop(entries);
        let mut poll = [nix::poll::PollFd::new(
            reader.as_fd(),
            nix::poll::PollFlags::empty(),
        )];
        nix::poll::poll(&mut poll, nix::poll::PollTimeout::ZERO).unwrap();
        assert!(
            poll[0].revents().unwrap().is_empty(),
            "{:?}",
            poll[0].revents()
        );
        let received = read(&reader, None).unwrap();
        assert!(received.complete);
        assert_eq!(received.len(), 300);
        for (i, entry) in received.entries.into_iter().enumerate() {
            assert_eq!(entry.name, format!("web/c{i}"));
            assert_eq!(entry.kind, Kind::Parked);
            assert_eq!(entry.storer, who);
            assert_eq!(entry.expires, Some(at));
            // The same pipe: what goes in through it comes out of ours.
            let mut w = std::fs::File::from(entry.fd);
            w.write_all(format!("{i}").as_bytes()).unwrap();
            drop(w);
            let (r, _) = &pipes[i];
            let mut got = [0u8; 8];
            let n = nix::unistd::read(r, &mut got).unwrap();
            assert_eq!(&got[..n], format!("{i}").as_bytes());
        }
    }

    #[test]
    fn a_cut_hand_over_is_not_complete_and_junk_is_counted() {
        let (writer, reader) = pair().unwrap();
        let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
        fdpass::send(
            writer.as_fd(),
            b"{\"name\":\"../x\",\"kind\":\"held\",\"storer\":{\"uid\":1,\"gid\":1,\"pid\":1}}",
            Some(r.as_fd()),
        )
        .unwrap();
        fdpass::send(writer.as_fd(), b"not json", Some(r.as_fd())).unwrap();
        drop(writer);
        let received = read(&reader, None).unwrap();
        assert!(!received.complete);
        assert_eq!((received.len(), received.damaged), (0, 2));
    }
}
