//! Coming back after the server restarts or upgrades (SPEC §3.4): the
//! server closes client connections after answering what it read, so a
//! client that opted in connects again and sends again what was not
//! answered, where sending it twice is harmless; anything else comes
//! back to the caller as [`Error::Lost`](super::Error::Lost), since the
//! server may have carried it out.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a [`Client`](super::Client) reconnects.
///
/// ```no_run
/// let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
/// client.set_reconnect(Some(fdopen::Reconnect::default()))?;
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconnect {
    /// Give up when the server has not taken a connection for this long
    /// (a restart leaves no socket for a moment; an upgrade never does).
    pub give_up_after: Duration,
    /// Pause between two connection attempts.
    pub retry_every: Duration,
}

impl Default for Reconnect {
    fn default() -> Reconnect {
        Reconnect {
            give_up_after: Duration::from_secs(30),
            retry_every: Duration::from_millis(20),
        }
    }
}

impl Reconnect {
    /// A fresh connection to `socket`, tried until the policy gives up.
    pub(super) fn connect(&self, socket: &Path) -> io::Result<UnixStream> {
        let until = Instant::now() + self.give_up_after;
        loop {
            match UnixStream::connect(socket) {
                Ok(stream) => return Ok(stream),
                Err(e) if Instant::now() >= until => return Err(e),
                Err(_) => std::thread::sleep(self.retry_every),
            }
        }
    }
}

/// The requests a client sent and has not had answered, for sending
/// again on a new connection.
#[derive(Debug)]
pub(super) struct Unanswered {
    pub policy: Reconnect,
    pub socket: PathBuf,
    sent: VecDeque<Sent>,
    /// Bytes of a line whose end has not been sent yet.
    partial: Vec<u8>,
}

#[derive(Debug)]
struct Sent {
    line: Vec<u8>,
    /// Lost with its connection, and not sent again.
    lost: bool,
}

impl Unanswered {
    pub fn new(policy: Reconnect, socket: PathBuf) -> Unanswered {
        Unanswered {
            policy,
            socket,
            sent: VecDeque::new(),
            partial: Vec::new(),
        }
    }

    /// `bytes` are on their way to the server.
    pub fn sending(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.sent.push_back(Sent { line, lost: false });
        }
    }

    /// The oldest unanswered request got its answer.
    pub fn answered(&mut self) {
        self.sent.pop_front();
    }

    /// The oldest unanswered request was lost with a connection: true
    /// (and forgotten) if so, for the caller to report it.
    pub fn take_lost(&mut self) -> bool {
        if self.sent.front().is_some_and(|s| s.lost) {
            self.sent.pop_front();
            return true;
        }
        false
    }

    /// The connection broke, with the answers of the first `answered`
    /// requests already received: what to send on the new one, in order.
    /// The rest is marked lost, and so is a line cut off mid-way.
    pub fn resend(&mut self, answered: usize) -> Vec<u8> {
        self.partial.clear();
        let mut again = Vec::new();
        for sent in self.sent.iter_mut().skip(answered) {
            if !sent.lost && harmless_twice(&sent.line) {
                again.extend_from_slice(&sent.line);
            } else {
                sent.lost = true;
            }
        }
        again
    }
}

/// The connection is gone (as opposed to a timeout, which is not).
pub(super) fn broken(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}

/// Of what a broken connection left in `inbuf`, keeps the whole answers
/// and the fds they carry, drops a cut-off one; returns how many whole
/// answers there are.
pub(super) fn keep_whole_lines(inbuf: &mut Vec<u8>, fds: &mut VecDeque<OwnedFd>) -> usize {
    let whole = inbuf.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    inbuf.truncate(whole);
    #[derive(serde::Deserialize)]
    struct Carries {
        #[serde(default)]
        fd: bool,
    }
    let lines = inbuf.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let carried = lines
        .clone()
        .filter(|l| serde_json::from_slice::<Carries>(l).is_ok_and(|c| c.fd))
        .count();
    fds.truncate(carried);
    lines.count()
}

/// Sending `line` twice does no harm (SPEC §3.4's list): it only reads.
/// `open` only without `create` or `truncate`; nothing that carries an fd.
pub(super) fn harmless_twice(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Request {
        op: String,
        #[serde(default)]
        create: serde_json::Value,
        #[serde(default)]
        truncate: serde_json::Value,
    }
    let Ok(request) = serde_json::from_slice::<Request>(line) else {
        return false;
    };
    let off = |v: &serde_json::Value| v.is_null() || *v == serde_json::Value::Bool(false);
    match request.op.as_str() {
        "hello" | "check" | "stat" | "readlink" | "xattr" | "readdir" | "scope" | "list" => true,
        "open" => off(&request.create) && off(&request.truncate),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_reads_is_sent_twice() {
        for line in [
            r#"{"op":"hello"}"#,
            r#"{"op":"list","prefix":"web/"}"#,
            r#"{"op":"open","path":"/a"}"#,
            r#"{"op":"open","path":"/a","create":false,"truncate":false}"#,
            r#"{"op":"stat","path":"/a"}"#,
            r#"{"op":"check","path":"/a","create":true}"#,
        ] {
            assert!(harmless_twice(line.as_bytes()), "{line}");
        }
        for line in [
            r#"{"op":"open","path":"/a","create":true}"#,
            r#"{"op":"open","path":"/a","create":"exclusive"}"#,
            r#"{"op":"open","path":"/a","truncate":true}"#,
            r#"{"op":"retrieve","name":"x","remove":true}"#,
            r#"{"op":"retrieve","name":"x"}"#,
            r#"{"op":"store","name":"x"}"#,
            r#"{"op":"wake","prefix":""}"#,
            r#"{"op":"bind","address":"tcp:*:80"}"#,
            r#"{"op":"mkdir","path":"/a"}"#,
            r#"{"op":"stats"}"#,
            "not json",
        ] {
            assert!(!harmless_twice(line.as_bytes()), "{line}");
        }
    }

    #[test]
    fn a_broken_connection_keeps_order_and_marks_the_rest_lost() {
        let mut u = Unanswered::new(Reconnect::default(), "/x".into());
        u.sending(b"{\"op\":\"hello\"}\n{\"op\":\"store\",\"name\":\"a\"}\n{\"op\":\"li");
        u.sending(b"st\"}\n{\"op\":\"hello\"");
        let again = u.resend(0);
        assert_eq!(again, b"{\"op\":\"hello\"}\n{\"op\":\"list\"}\n");
        assert!(!u.take_lost());
        u.answered();
        assert!(u.take_lost());
        assert!(!u.take_lost());
        u.answered();
        assert!(!u.take_lost());
    }
}
