//! A "heavy" server that keeps a lot of state per connection and parks
//! the idle ones with fdopen (SPEC §3.4): after IDLE without input a
//! connection is parked, its state dropped; when the client writes again,
//! fdopen hands the connection back and it gets fresh state.
//!
//!     heavy_server SOCKET PORT IDLE      (IDLE in humantime, e.g. 5s)
//!
//! The protocol it serves is a line echo: each line gets "N: line" back,
//! N counting lines since the connection's state was (re)made. The line
//! "stats" is answered "active=N", the connections holding state now.
//! It prints "listening on PORT", and "parked NAME" / "woke NAME" as they
//! happen, to standard output.
//!
//! fdopen may be upgraded (`SIGUSR2`) or restarted under systemd while
//! this runs: parked connections stay parked, the wake subscription
//! comes back by itself, and the parking client reconnects (SPEC §3.4).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use fdopen::{Client, ErrorCode, Reconnect, WakeEvent, Wakeups};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// What the heavy server keeps for an active connection.
struct Session {
    stream: TcpStream,
    /// Stands for the expensive part: buffers, caches, a parsed request.
    _heavy: Vec<u8>,
    pending: Vec<u8>,
    lines: u64,
    last_input: Instant,
}

impl Session {
    fn new(stream: TcpStream) -> io::Result<Session> {
        stream.set_nonblocking(true)?;
        Ok(Session {
            stream,
            _heavy: vec![0; 256 * 1024],
            pending: Vec::new(),
            lines: 0,
            last_input: Instant::now(),
        })
    }

    /// Reads what is there and answers each whole line; false once the
    /// client is gone.
    fn serve(&mut self, active: usize) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        self.last_input = Instant::now();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]).into_owned();
            self.lines += 1;
            let answer = if text == "stats" {
                format!("active={active}\n")
            } else {
                format!("{}: {text}\n", self.lines)
            };
            // Small answers to a client that reads: no partial writes here.
            self.stream.set_nonblocking(false).ok();
            let ok = self.stream.write_all(answer.as_bytes()).is_ok();
            self.stream.set_nonblocking(true).ok();
            if !ok {
                return false;
            }
        }
        true
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, port, idle] = &args[..] else {
        return Err("usage: heavy_server SOCKET PORT IDLE".into());
    };
    let idle = humantime::parse_duration(idle)?;
    let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>()?))?;
    listener.set_nonblocking(true)?;
    let mut parker = Client::connect(socket)?;
    // Across an upgrade or restart of fdopen, it connects again by itself.
    parker.set_reconnect(Some(Reconnect::default()))?;
    // A subscription made from a socket path subscribes again by itself.
    let mut wakeups: Wakeups = Client::connect(socket)?.wake("heavy/", None)?;
    let mut out = io::stdout();
    writeln!(out, "listening on {}", listener.local_addr()?.port())?;

    let mut sessions: HashMap<u64, Session> = HashMap::new();
    let mut next_id = 0u64;
    loop {
        // Wake-ups already read come first: the fd may not turn readable.
        while wakeups.has_buffered() {
            adopt(wakeups.next(), &mut sessions, &mut out)?;
        }
        let ids: Vec<u64> = sessions.keys().copied().collect();
        let timeout = sessions
            .values()
            .map(|s| (s.last_input + idle).saturating_duration_since(Instant::now()))
            .min()
            .map_or(PollTimeout::NONE, |d| {
                PollTimeout::try_from(d + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX)
            });
        let (listener_ready, wake_ready, ready) = {
            let mut fds = vec![
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(wakeups.as_fd(), PollFlags::POLLIN),
            ];
            fds.extend(
                ids.iter()
                    .map(|id| PollFd::new(sessions[id].stream.as_fd(), PollFlags::POLLIN)),
            );
            poll(&mut fds, timeout)?;
            let readable = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            let ready: Vec<u64> = ids
                .iter()
                .zip(&fds[2..])
                .filter(|(_, f)| readable(f))
                .map(|(id, _)| *id)
                .collect();
            (readable(&fds[0]), readable(&fds[1]), ready)
        };
        if wake_ready {
            adopt(wakeups.next(), &mut sessions, &mut out)?;
        }
        for id in ready {
            let active = sessions.len();
            let alive = sessions.get_mut(&id).is_some_and(|s| s.serve(active));
            if !alive {
                sessions.remove(&id);
            }
        }
        if listener_ready {
            while let Ok((stream, _)) = listener.accept() {
                next_id += 1;
                sessions.insert(next_id, Session::new(stream)?);
            }
        }
        // Idle ones go to fdopen; their state goes away.
        let now = Instant::now();
        let idle_ids: Vec<u64> = sessions
            .iter()
            .filter(|(_, s)| s.pending.is_empty() && now.duration_since(s.last_input) >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in idle_ids {
            let session = sessions.remove(&id).expect("listed");
            let name = format!("heavy/{id}");
            park(&mut parker, &name, &session.stream)?;
            writeln!(out, "parked {name}")?;
        }
        out.flush()?;
    }
}

/// Parks `stream`. A `park` lost with its connection (fdopen was being
/// upgraded) may or may not have been carried out; asking again tells.
fn park(parker: &mut Client, name: &str, stream: &TcpStream) -> Result<(), fdopen::Error> {
    match parker.park(name, stream.as_fd(), None) {
        Err(fdopen::Error::Lost) => match parker.park(name, stream.as_fd(), None) {
            Err(fdopen::Error::Refused(e)) if e.code == ErrorCode::Exists => Ok(()),
            other => other,
        },
        other => other,
    }
}

/// Takes a woken connection back with fresh state.
fn adopt(
    woken: Option<Result<fdopen::Woken, fdopen::Error>>,
    sessions: &mut HashMap<u64, Session>,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let woken = woken.ok_or("the fdopen server closed the wake subscription")??;
    let id: u64 = woken
        .name
        .strip_prefix("heavy/")
        .and_then(|n| n.parse().ok())
        .ok_or("a woken name that is not ours")?;
    match woken.event {
        WakeEvent::Readable(fd) => {
            writeln!(out, "woke {}", woken.name)?;
            let mut session = Session::new(TcpStream::from(fd))?;
            let active = sessions.len() + 1;
            if session.serve(active) {
                sessions.insert(id, session);
            }
        }
        WakeEvent::Hangup => writeln!(out, "gone {}", woken.name)?,
    }
    Ok(())
}
