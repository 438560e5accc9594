//! One client's connection: the bytes it sent and has not had answered,
//! the responses waiting to go out, and the framing rules of SPEC §2.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::epoll::EpollFlags;

use super::dispatch::FilesystemJob;
use super::undo::{CreatedGuard, HeldGuard};
use super::watchdog::Delivery;
use crate::fdpass;
use crate::peer::PeerIdentity;
use crate::protocol::{ErrorCode, encode};

/// Responses queued for one client before it stops being read: bounds
/// memory and the descriptors held on its behalf.
pub(super) const MAX_QUEUED_RESPONSES: usize = 64;

/// A response waiting to be sent.
pub(super) struct Outgoing {
    pub bytes: Vec<u8>,
    pub sent: usize,
    /// The granted file; sent with the first byte of the line.
    pub fd: Option<File>,
    /// Where this response's audit record ends in the batch being written:
    /// it may not leave before the log holds that record.
    pub audit_end: Option<usize>,
    /// It grants something (an `open`, or a `check` that says yes): if its
    /// record does not make it into the log, it must become `io_error`.
    pub grants: bool,
    /// What happens to the file once the record is (or is not) written.
    pub after_record: AfterRecord,
    /// What a `retrieve` did to a held fd, kept once the answer's first
    /// byte (and with `remove`, the taken fd itself) is sent; undone if the
    /// connection dies first. Boxed: few answers have one.
    pub held: Option<Box<HeldGuard>>,
    /// Still being decided by a thread stuck on the filesystem: the line is
    /// written when the answer comes or `--fs-timeout` passes.
    pub waiting: Option<(Arc<Delivery>, Box<FilesystemJob>)>,
    /// The answer to a `hello`: once it is sent, the connection's responses
    /// may carry this many descriptors per message (SPEC §2; 1 when the
    /// `hello` did not ask).
    pub sets_fds_per_message: Option<u8>,
}

impl Outgoing {
    pub fn new(bytes: Vec<u8>, fd: Option<File>, audit_end: Option<usize>) -> Outgoing {
        Outgoing {
            bytes,
            sent: 0,
            fd,
            audit_end,
            grants: false,
            after_record: AfterRecord::default(),
            held: None,
            waiting: None,
            sets_fds_per_message: None,
        }
    }

    /// An error line that carries no descriptor.
    pub fn error(code: ErrorCode, message: &str, audit_end: Option<usize>) -> Outgoing {
        let mut bytes = Vec::new();
        encode::error(&mut bytes, None, code, message);
        Outgoing::new(bytes, None, audit_end)
    }

    /// A slot held, in request order, for an answer still on its way.
    pub fn waiting_for(delivery: Arc<Delivery>, job: FilesystemJob) -> Outgoing {
        Outgoing {
            waiting: Some((delivery, Box::new(job))),
            ..Outgoing::new(Vec::new(), None, None)
        }
    }

    fn ready(&self) -> bool {
        self.audit_end.is_none() && self.waiting.is_none()
    }

    /// The descriptor this answer passes: its granted file, or the held fd
    /// a `retrieve` took (kept by its guard until the answer goes out).
    fn fd_to_send(&self) -> Option<BorrowedFd<'_>> {
        let taken = self.held.as_deref().and_then(HeldGuard::taken_fd);
        self.fd.as_ref().map(|f| f.as_fd()).or(taken)
    }
}

/// Descriptors that came with one `recvmsg`, and which bytes of `inbuf`.
pub(super) struct Received {
    pub from: usize,
    pub to: usize,
    pub fds: Vec<OwnedFd>,
    /// The kernel dropped some (`MSG_CTRUNC`).
    pub truncated: bool,
    /// A line took them, or was refused for them.
    pub claimed: bool,
}

/// What came attached to one request line.
pub(super) enum Attachment {
    None,
    /// The descriptors of a `store` or `park` (any number: it checks).
    Fds(Vec<OwnedFd>),
    /// Descriptors came where none belong: the request is refused.
    Tainted,
}

/// A `wake` accepted on a lane, waiting for the responses before it.
pub(super) struct Subscribing {
    pub prefix: String,
    pub storer: u32,
    pub id: Option<Box<serde_json::value::RawValue>>,
}

/// Effects of a grant that wait for its audit record (SPEC §3.2, §3.4).
/// Dropped unkept (no record, a panic), it undoes what the request did.
#[derive(Debug, Default)]
pub(super) struct AfterRecord {
    /// Truncate the granted file once the record is written.
    pub truncate: bool,
    /// The file the request created.
    pub created: Option<CreatedGuard>,
    /// What a `retrieve` did to the held fd; with `remove`, it has the fd
    /// to send.
    pub held: Option<HeldGuard>,
}

impl AfterRecord {
    /// The record is written: what the request did stands. Returns what
    /// a `retrieve` did, which stands once its answer is sent.
    pub fn keep(self) -> Option<Box<HeldGuard>> {
        let AfterRecord { created, held, .. } = self;
        if let Some(created) = created {
            created.keep();
        }
        held.map(Box::new)
    }
}

/// One client.
pub(super) struct Connection {
    pub stream: UnixStream,
    pub peer: Arc<PeerIdentity>,
    /// Bytes received; lines before `answered` have been taken care of.
    pub inbuf: Vec<u8>,
    pub answered: usize,
    /// Descriptors received, with the bytes of `inbuf` they came with.
    pub attachments: VecDeque<Received>,
    /// A `wake` was accepted: once the responses before it are sent, the
    /// connection goes to the holder (SPEC §3.4).
    pub subscription: Option<Subscribing>,
    pub outq: VecDeque<Outgoing>,
    /// Last time the client completed a request or took a response.
    pub last_active: Instant,
    /// No more input: end of stream, or framing was lost.
    pub read_done: bool,
    /// Current epoll interest, to skip needless `epoll_ctl` calls.
    pub interest: EpollFlags,
    /// Received descriptors waiting, as last counted against the quota.
    pub fds_counted: usize,
    /// How many descriptors one `sendmsg` may carry: 1 (each response on
    /// its own) unless the client's `hello` asked for more.
    pub fds_per_message: u8,
}

impl Connection {
    pub fn new(stream: UnixStream, peer: Arc<PeerIdentity>, interest: EpollFlags) -> Connection {
        Connection {
            stream,
            peer,
            inbuf: Vec::new(),
            answered: 0,
            attachments: VecDeque::new(),
            subscription: None,
            outq: VecDeque::new(),
            last_active: Instant::now(),
            read_done: false,
            interest,
            fds_counted: 0,
            fds_per_message: 1,
        }
    }

    /// Received descriptors no line has taken yet.
    pub fn waiting_fds(&self) -> usize {
        self.attachments.iter().map(|a| a.fds.len()).sum()
    }

    /// Every received descriptor still waiting goes to `closing`.
    pub fn release_fds(&mut self, closing: &mut Vec<OwnedFd>) {
        for received in self.attachments.drain(..) {
            closing.extend(received.fds);
        }
    }

    pub fn wants_input(&self) -> bool {
        !self.read_done && self.subscription.is_none() && self.outq.len() < MAX_QUEUED_RESPONSES
    }

    pub fn has_complete_line(&self) -> bool {
        self.inbuf[self.answered..].contains(&b'\n')
    }

    /// Lines are waiting and there is room to queue their answers.
    pub fn can_answer(&self) -> bool {
        self.subscription.is_none()
            && self.outq.len() < MAX_QUEUED_RESPONSES
            && self.has_complete_line()
    }

    /// The next complete line not yet answered, as `(start, end)` offsets
    /// of `inbuf` (the newline at `end` excluded).
    pub fn next_line(&self) -> Option<(usize, usize)> {
        let start = self.answered;
        let end = start + memchr(b'\n', &self.inbuf[start..])?;
        Some((start, end))
    }

    /// The descriptors that belong to the line at `start..end` (SPEC §2).
    ///
    /// One `recvmsg` ends with the message that carried descriptors: the
    /// kernel's stream read goes on past messages without any and stops
    /// after the first with some (`unix_stream_read_generic`). So the
    /// read may begin with earlier lines, and the descriptors belong to a
    /// line that starts in it, not to its first: to the first `store` or
    /// `park` (`takes_fd`) that starts there, which takes them; failing
    /// that, they came with some other line, and the read's last line is
    /// refused and they are closed.
    pub fn attachment_for(
        &mut self,
        (start, end): (usize, usize),
        takes_fd: impl FnOnce(&[u8]) -> bool,
        closing: &mut Vec<OwnedFd>,
    ) -> Attachment {
        let within = self.fds_within_line((start, end), closing);
        let Some(at) = self
            .attachments
            .iter()
            .position(|a| a.from <= start && start < a.to)
        else {
            return if within {
                Attachment::Tainted
            } else {
                Attachment::None
            };
        };
        if within {
            // Those are this line's too: whatever it began with, it came
            // with descriptors beyond its first byte (SPEC §2).
            let received = &mut self.attachments[at];
            if !received.claimed && (takes_fd(&self.inbuf[start..end]) || end + 1 >= received.to) {
                received.claimed = true;
                closing.append(&mut received.fds);
            }
            return Attachment::Tainted;
        }
        // Looked at only for lines that came with descriptors.
        let takes_fd = takes_fd(&self.inbuf[start..end]);
        let received = &mut self.attachments[at];
        if received.claimed {
            return if takes_fd {
                Attachment::Fds(Vec::new())
            } else {
                Attachment::None
            };
        }
        if takes_fd {
            received.claimed = true;
            if received.truncated {
                closing.append(&mut received.fds);
                return Attachment::Tainted;
            }
            return Attachment::Fds(std::mem::take(&mut received.fds));
        }
        // No later line starts in this read: this one is the last.
        if end + 1 >= received.to {
            received.claimed = true;
            closing.append(&mut received.fds);
            return Attachment::Tainted;
        }
        Attachment::None
    }

    /// Closes the descriptors of reads that began after the first byte of
    /// the line at `start..end` and end within it: their `sendmsg`s
    /// carried nothing but the rest of this line. True if there were any.
    fn fds_within_line(
        &mut self,
        (start, end): (usize, usize),
        closing: &mut Vec<OwnedFd>,
    ) -> bool {
        let mut within = false;
        for received in &mut self.attachments {
            if start < received.from && received.to <= end + 1 {
                within = true;
                received.claimed = true;
                closing.append(&mut received.fds);
            }
        }
        within
    }

    /// Forgets the lines answered so far.
    pub fn drop_answered_lines(&mut self, closing: &mut Vec<OwnedFd>) {
        let done = std::mem::take(&mut self.answered);
        if done > 0 {
            self.last_active = Instant::now();
            self.inbuf.drain(..done);
            // Descriptors whose bytes are all answered and that no line
            // took are closed.
            while self.attachments.front().is_some_and(|a| a.to <= done) {
                let received = self.attachments.pop_front().expect("checked");
                closing.extend(received.fds);
            }
            for received in &mut self.attachments {
                received.from = received.from.saturating_sub(done);
                received.to -= done;
            }
        }
        if self.read_done && !self.has_complete_line() {
            // A partial line at the end of the stream is no request.
            self.inbuf = Vec::new();
        } else if self.inbuf.is_empty() && self.inbuf.capacity() > 4096 {
            // An idle client holds no buffer.
            self.inbuf = Vec::new();
        }
    }

    /// A partial line already longer than the limit: framing is lost.
    pub fn overlong_partial_line(&self, max_request: usize) -> bool {
        !self.read_done
            && !self.has_complete_line()
            && self.inbuf.len() - self.answered >= max_request
    }

    /// After a line longer than the limit, framing is lost: the client gets
    /// its `bad_request` and nothing more is read from it.
    pub fn stop_reading(&mut self, closing: &mut Vec<OwnedFd>) {
        self.read_done = true;
        self.inbuf.clear();
        self.answered = 0;
        self.release_fds(closing);
    }

    pub fn desired_interest(&self) -> EpollFlags {
        let mut flags = EpollFlags::empty();
        if self.wants_input() && !self.has_complete_line() {
            flags |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        }
        if self.outq.front().is_some_and(Outgoing::ready) {
            flags |= EpollFlags::EPOLLOUT;
        }
        flags
    }

    pub fn finished(&self) -> bool {
        self.read_done && self.outq.is_empty() && !self.has_complete_line()
    }

    /// Nobody is left to read the answers: drop what is queued. A slot
    /// still waiting for a stuck call stays, so its answer finds it.
    pub fn abandon_output(&mut self, closing: &mut Vec<OwnedFd>) {
        self.read_done = true;
        for out in std::mem::take(&mut self.outq) {
            if out.waiting.is_some() {
                self.outq.push_back(out);
            } else {
                closing.extend(out.fd.map(OwnedFd::from));
            }
        }
        self.inbuf.clear();
        self.answered = 0;
        self.release_fds(closing);
    }

    /// One `recvmsg`; descriptors the client sent are kept with the bytes
    /// they came with, for the line they belong to ([`Self::attachment_for`]).
    pub fn read(&mut self, buf: &mut [u8], closing: &mut Vec<OwnedFd>) {
        match fdpass::recv(self.stream.as_fd(), buf) {
            Ok(received) if received.bytes == 0 => {
                self.read_done = true;
            }
            Ok(received) => {
                let from = self.inbuf.len();
                self.inbuf.extend_from_slice(&buf[..received.bytes]);
                if !received.fds.is_empty() || received.truncated {
                    self.attachments.push_back(Received {
                        from,
                        to: self.inbuf.len(),
                        fds: received.fds,
                        truncated: received.truncated,
                        claimed: false,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.abandon_output(closing),
        }
    }

    /// Sends queued responses until done, the socket is full, or the next
    /// one is not ready. Sent descriptors go to `closing`.
    pub fn flush(&mut self, closing: &mut Vec<OwnedFd>) {
        let mut took = false;
        while self.outq.front().is_some_and(Outgoing::ready) {
            let sent = if self.fds_per_message > 1 {
                self.send_coalesced()
            } else {
                self.send_separately()
            };
            match sent {
                Ok((n, lines)) => {
                    took = true;
                    self.consume(n, lines, closing);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // The client is gone; drop everything it asked for.
                    self.abandon_output(closing);
                    return;
                }
            }
        }
        if took {
            // Once per flush: the clock is read for nothing else here.
            self.last_active = Instant::now();
        }
    }

    /// The ready responses at the head of the queue, as SPEC §2 has it for
    /// a client that did not ask for `fds_per_message`: each one with a
    /// descriptor in a message of its own, those without one together
    /// (on a stream socket a reader cannot tell where their sends began).
    /// One message goes out with `sendmsg`, several with one `sendmmsg`:
    /// to the client the same messages, but one call and one wake-up.
    /// Returns the bytes sent and how many lines they began.
    fn send_separately(&self) -> io::Result<(usize, usize)> {
        let mut parts = [io::IoSlice::new(&[]); MAX_QUEUED_RESPONSES];
        let mut fds = [None; MAX_QUEUED_RESPONSES];
        let mut lines = 0;
        for out in self.outq.iter().take(parts.len()) {
            if !out.ready() {
                break;
            }
            parts[lines] = io::IoSlice::new(&out.bytes[out.sent..]);
            fds[lines] = out.fd_to_send();
            lines += 1;
        }
        let mut messages = [fdpass::Message {
            parts: &[],
            fd: None,
        }; fdpass::MAX_MESSAGES_PER_SEND];
        let (mut count, mut line) = (0, 0);
        while line < lines && count < messages.len() {
            let first = line;
            line += 1;
            if fds[first].is_none() {
                while line < lines && fds[line].is_none() {
                    line += 1;
                }
            }
            messages[count] = fdpass::Message {
                parts: &parts[first..line],
                fd: fds[first],
            };
            count += 1;
        }
        let sent = if count == 1 {
            let only = messages[0];
            fdpass::send_vectored(self.stream.as_fd(), only.parts, only.fd)?
        } else {
            fdpass::send_each(self.stream.as_fd(), &messages[..count])?.bytes
        };
        // Messages go out in order, and a batch stops after one that went
        // out in part: the lines begun are those that start before `sent`.
        let mut start = 0;
        let begun = parts[..line]
            .iter()
            .take_while(|part| {
                let begins = start < sent;
                start += part.len();
                begins
            })
            .count();
        Ok((sent, begun))
    }

    /// The ready responses at the head of the queue in one `sendmsg`, with
    /// the descriptors of those that carry one, in order, at most
    /// `fds_per_message` (SPEC §2, v3). A `hello` answer ends the batch:
    /// what follows it goes out under what it set. Returns the bytes sent
    /// and how many lines the message began.
    fn send_coalesced(&self) -> io::Result<(usize, usize)> {
        let room = usize::from(self.fds_per_message).min(fdpass::MAX_FDS_PER_SEND);
        let mut iov = [io::IoSlice::new(&[]); MAX_QUEUED_RESPONSES];
        let (mut lines, mut fds) = (0, 0);
        for out in self.outq.iter() {
            let carries = out.fd_to_send().is_some();
            if !out.ready() || lines == iov.len() || (carries && fds == room) {
                break;
            }
            iov[lines] = io::IoSlice::new(&out.bytes[out.sent..]);
            lines += 1;
            fds += usize::from(carries);
            if out.sets_fds_per_message.is_some() {
                break;
            }
        }
        let fds = self
            .outq
            .iter()
            .take(lines)
            .filter_map(Outgoing::fd_to_send);
        let n = fdpass::send_vectored(self.stream.as_fd(), &iov[..lines], fds)?;
        Ok((n, lines))
    }

    /// `n` bytes of a message that began the first `lines` queued lines
    /// went out: the descriptors of those lines went with its first byte,
    /// and the lines wholly sent leave the queue.
    fn consume(&mut self, mut n: usize, lines: usize, closing: &mut Vec<OwnedFd>) {
        for out in self.outq.iter_mut().take(lines) {
            // Delivered with the first byte: a taken held fd stays taken.
            closing.extend(out.fd.take().map(OwnedFd::from));
            closing.extend(out.held.take().and_then(|held| held.keep()));
        }
        while n > 0
            && let Some(out) = self.outq.front_mut()
        {
            let left = out.bytes.len() - out.sent;
            if n < left {
                out.sent += n;
                return;
            }
            n -= left;
            if let Some(fds) = out.sets_fds_per_message {
                self.fds_per_message = fds;
            }
            self.outq.pop_front();
        }
    }
}

pub(super) fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// Best effort: a client we cannot serve is told why before it is closed.
pub(super) fn say_busy(stream: &UnixStream, why: &str) {
    let _ = stream.set_nonblocking(true);
    let mut line = Vec::new();
    encode::error(&mut line, None, ErrorCode::Busy, why);
    let _ = fdpass::send(stream.as_fd(), &line, None);
}
