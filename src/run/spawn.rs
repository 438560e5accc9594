//! Starting the command: fork, install the filter in the child, and exec
//! only once the supervisor says go.
//!
//! The fork happens on `run`'s only thread, before any broker thread
//! exists, and the parent goes on at once (unlike `Command::spawn`, which
//! waits for the exec): while the child installs its filter, the parent
//! reads the server's answers, so the server's round trip, the fork and
//! the filter's compilation overlap. The command still never starts
//! unless the server answered: the child waits for our [`GO`] on a
//! `SOCK_SEQPACKET` pair, whose end of stream (our end closed, by us or
//! by our death) stops it too.
//!
//! What the child says on the pair, one message each: [`LISTENER`] with
//! the seccomp listener attached, or [`FAILED`] with the stage and the
//! `errno` of what went wrong; after go, nothing at all (the pair is
//! close-on-exec, so the exec shows as end of stream) or [`FAILED`].

use std::ffi::OsString;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::Pid;

use super::filter;
use super::{RunError, setup};
use crate::exec::{ExecPlan, last_errno};

/// The byte that lets the child exec; anything else, or none, stops it.
const GO: u8 = b'g';
/// The child's first message: its listener comes attached.
const LISTENER: u8 = b'l';
/// The child gave up: a stage byte and the `errno` follow.
const FAILED: u8 = b'f';
/// Stages a child reports failing at.
const AT_FILTER: u8 = b'F';
const AT_EXEC: u8 = b'X';

/// A child that has forked and is installing its filter, or waits for go.
pub struct Pending {
    pid: Pid,
    channel: OwnedFd,
    program: String,
    /// Exec'd or reaped: nothing left for `drop` to do.
    settled: bool,
}

/// Forks the child that will run `command` under the filter; returns at
/// once, while the child sets itself up.
pub fn fork_trapped(command: &[OsString]) -> Result<Pending, RunError> {
    // Everything the child needs is made here: after the fork it only
    // makes system calls on this memory.
    let program = filter::program();
    let name = command[0].to_string_lossy().into_owned();
    let mut plan = ExecPlan::new(command).ok_or_else(|| RunError::Spawn {
        program: name.clone(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "an argument holds a NUL byte"),
    })?;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| setup("creating a socketpair")(e.into()))?;
    let supervisor = std::process::id() as libc::pid_t;
    // SAFETY: `run` has no other thread yet (the broker threads start
    // after this), and the child only makes system calls before it execs
    // or exits.
    match unsafe { libc::fork() } {
        -1 => Err(RunError::Spawn {
            program: name,
            source: io::Error::last_os_error(),
        }),
        0 => {
            drop(ours);
            // SAFETY: in the child, on memory prepared before the fork.
            unsafe { child(theirs.as_raw_fd(), supervisor, &program, &mut plan) }
        }
        pid => Ok(Pending {
            pid: Pid::from_raw(pid),
            channel: ours,
            program: name,
            settled: false,
        }),
    }
}

impl Pending {
    /// The child's seccomp listener, once it has installed the filter.
    pub fn listener(&mut self) -> Result<OwnedFd, RunError> {
        let mut message = [0u8; 6];
        let received = crate::fdpass::recv(self.channel.as_fd(), &mut message)
            .map_err(setup("receiving the seccomp listener"))?;
        match (message[0], received.fds.into_iter().next()) {
            (LISTENER, Some(listener)) if received.bytes == 1 => Ok(listener),
            _ => Err(self.failure(&message[..received.bytes])),
        }
    }

    /// Lets the child exec once it has installed its filter; it may be
    /// still at it.
    pub fn go(&mut self) -> Result<(), RunError> {
        let go = [GO];
        // SAFETY: a one-byte send from a local on a socket we own.
        let sent = unsafe {
            libc::send(
                self.channel.as_raw_fd(),
                go.as_ptr().cast(),
                1,
                libc::MSG_NOSIGNAL,
            )
        };
        if sent != 1 {
            // The child gave up before it heard us: say why, if it said.
            let mut message = [0u8; 6];
            let said = crate::fdpass::recv_now(self.channel.as_fd(), &mut message)
                .map_or(0, |received| received.bytes);
            return Err(self.failure(&message[..said]));
        }
        Ok(())
    }

    /// The child's pid once it has exec'd the command (after [`Pending::go`]
    /// and [`Pending::listener`]); the exec's error if it failed.
    pub fn exec_confirmed(mut self) -> Result<Pid, RunError> {
        let mut message = [0u8; 6];
        let received = crate::fdpass::recv(self.channel.as_fd(), &mut message)
            .map_err(setup("waiting for the command's exec"))?;
        if received.bytes == 0 {
            self.settled = true;
            return Ok(self.pid);
        }
        Err(self.failure(&message[..received.bytes]))
    }

    /// Reaps the child, which has given up or is told to by our closing
    /// the pair, and names what it said.
    fn failure(&mut self, message: &[u8]) -> RunError {
        self.stop();
        let errno = |bytes: &[u8]| {
            let raw = i32::from_ne_bytes(bytes[2..6].try_into().expect("four bytes"));
            io::Error::from_raw_os_error(raw)
        };
        match message {
            [FAILED, AT_EXEC, ..] if message.len() == 6 => RunError::Spawn {
                program: self.program.clone(),
                source: errno(message),
            },
            [FAILED, AT_FILTER, ..] if message.len() == 6 => {
                setup("installing the seccomp filter")(errno(message))
            }
            _ => setup("starting the command")(io::Error::other("it ended early")),
        }
    }

    /// Kills and reaps the child: it has not exec'd, so it has done
    /// nothing yet but set itself up.
    fn stop(&mut self) {
        if !std::mem::replace(&mut self.settled, true) {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = super::process::wait(self.pid.as_raw(), false);
        }
    }
}

impl Drop for Pending {
    /// A child that was never told to go (the server could not be asked)
    /// does not outlive this.
    fn drop(&mut self) {
        self.stop();
    }
}

/// The child between fork and exec: filter, listener to the supervisor,
/// wait for go, exec. Only system calls, on memory made before the fork.
unsafe fn child(
    channel: RawFd,
    supervisor: libc::pid_t,
    program: &[libc::sock_filter],
    plan: &mut ExecPlan,
) -> ! {
    let report = |stage: u8, errno: i32| -> ! {
        let mut message = [FAILED, stage, 0, 0, 0, 0];
        message[2..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: a send from a stack buffer, then the end.
        unsafe {
            libc::send(channel, message.as_ptr().cast(), 6, libc::MSG_NOSIGNAL);
            libc::_exit(127)
        }
    };
    // SAFETY: plain system calls on our own process.
    unsafe {
        // Without its supervisor the program's trapped calls would fail
        // with ENOSYS: it goes when the supervisor goes.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            report(AT_FILTER, last_errno());
        }
        if libc::getppid() != supervisor {
            libc::_exit(127);
        }
    }
    let listener = match filter::install(program) {
        Ok(listener) => listener,
        Err(e) => report(AT_FILTER, e.raw_os_error().unwrap_or(libc::EIO)),
    };
    // SAFETY: both descriptors are open for the duration of the call.
    let (to, sent) = unsafe {
        (
            BorrowedFd::borrow_raw(channel),
            BorrowedFd::borrow_raw(listener),
        )
    };
    if let Err(e) = crate::fdpass::send_vectored(to, &[IoSlice::new(&[LISTENER])], [sent]) {
        report(AT_FILTER, e.raw_os_error().unwrap_or(libc::EIO));
    }
    // SAFETY: plain system calls, and the exec in the child, as `plan`
    // requires.
    unsafe {
        libc::close(listener);
        let mut go = 0u8;
        loop {
            let n = libc::recv(channel, (&raw mut go).cast(), 1, 0);
            if n == 1 && go == GO {
                break;
            }
            if n < 0 && last_errno() == libc::EINTR {
                continue;
            }
            libc::_exit(127);
        }
        // The program starts with no signal blocked (ours are blocked
        // for the signalfd) and `SIGPIPE` back to its default, as
        // `Command` would leave them.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        let errno = plan.exec();
        report(AT_EXEC, errno)
    }
}
