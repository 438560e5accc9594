//! `fdopen-client run` (SPEC §8): start a program that never heard of
//! fdopen so that its opens and privileged binds go through the server.
//!
//! The child installs a seccomp filter that turns `open`, `openat`,
//! `openat2`, `creat`, `bind` and the tree calls (`stat`, `readlink`,
//! `mkdir`, `getdents64`, ...) into user notifications, hands the
//! listener to us, and execs the program. We answer each trapped call:
//! calls the server grants get the server's descriptor, everything else
//! continues with the program's own rights. seccomp is a convenience here,
//! not a sandbox: the server's policy is the only boundary, and a program
//! that sidesteps the filter (io_uring, say) only loses the brokering.
//!
//! Layout: `spawn` forks the child and lets it exec, `filter` builds and
//! installs the filter, `listener` speaks
//! the notification ioctls, `target` reads the trapped task,
//! `open_call` and `bind_call` decode the two kinds of call,
//! `narrowing` carries what confines the program's socket to the granted one,
//! `within` proves the directory a relative call starts from,
//! `scope` decides which are worth asking, `broker` answers one.
//! The tree calls: `tree_call` decodes them and lays out their answers,
//! `tree_broker` answers them, `dir_stream` keeps the placeholders that
//! stand for directories and `dir_broker` answers calls on them, `memory` writes answers into the program.
//! `process` signals every supervised process and names exit codes,
//! `same_tree` tells whether the server sees the program's tree.

mod bind_call;
mod broker;
mod dir_broker;
mod dir_stream;
mod filter;
mod listener;
mod memory;
mod narrowing;
mod open_call;
mod process;
mod same_tree;
mod scope;
mod spawn;
mod target;
mod tree_broker;
mod tree_call;
mod turns;
mod within;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use globset::GlobSet;

use crate::client::Client;
use crate::protocol::Scope;
use broker::Broker;
use listener::Listener;
use process::Ended;
use scope::BrokerScope;
use target::Identity;

/// Threads answering trapped calls: enough that one slow file does not
/// hold up a multi-threaded program's other opens. One starts with the
/// program, the other the first time a call goes to the server.
const BROKER_THREADS: usize = 2;

/// Signals passed on to the program when someone sends them to `run`.
const FORWARDED: [Signal; 9] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

/// `si_code` of a signal the kernel sent, as the terminal does to the whole
/// foreground process group: the program got its own copy.
const SI_KERNEL: i32 = 0x80;

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `--broker` globs narrowing the scope.
    pub brokers: Vec<String>,
    /// `--no-bind`: leave every `bind` alone.
    pub no_bind: bool,
    pub command: Vec<OsString>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Client(#[from] crate::client::Error),
    #[error("bad --broker glob: {0}")]
    BrokerGlob(#[from] globset::Error),
    #[error("cannot set up the supervisor: {what}: {source}")]
    Setup {
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: io::Error },
}

impl RunError {
    /// `run`'s exit code for this error: 127 or 126 for a command that
    /// could not be started, as shells say it (SPEC §8); `None` otherwise.
    pub fn command_exit_code(&self) -> Option<i32> {
        match self {
            RunError::Spawn { program, source } => Some(process::spawn_exit_code(program, source)),
            _ => None,
        }
    }
}

fn setup(what: &'static str) -> impl FnOnce(io::Error) -> RunError {
    move |source| RunError::Setup { what, source }
}

/// Runs the command under supervision; returns its exit code. A program
/// killed by a signal makes `run` die of the same signal.
///
/// A server that cannot be reached, or does not answer `hello` and
/// `scope`, means the command never starts. To start it soon anyway, the
/// child forks first and installs its filter while the server answers the
/// two questions, and the broker thread starts while the child execs
/// (BENCHMARKS.md has the timeline). A signal that ends a job, sent
/// while the server has not answered, ends `run` and the command never
/// starts.
pub fn run(socket: &Path, options: &RunOptions) -> Result<i32, RunError> {
    // Blocked before any thread exists, so every thread inherits the mask
    // and the signals wait in the signalfd (the child unblocks them).
    let mut watched = SigSet::empty();
    for signal in FORWARDED {
        watched.add(signal);
    }
    watched.add(Signal::SIGCHLD);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&watched), None)
        .map_err(|e| setup("blocking signals")(e.into()))?;
    let signals = SignalFd::with_flags(&watched, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| setup("creating a signalfd")(e.into()))?;
    // Only the signals that end a job, for the wait on the server: the
    // others stay queued in `signals` for the command.
    let mut ending = SigSet::empty();
    for signal in FORWARDED {
        if process::reaches_every_process(signal as i32) {
            ending.add(signal);
        }
    }
    let job_ends = SignalFd::with_flags(&ending, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| setup("creating a signalfd")(e.into()))?;
    // Orphaned descendants come to us, so they keep being served and we
    // can reap them (a zombie still holds the filter).
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(setup("becoming a subreaper")(io::Error::last_os_error()));
    }

    let narrowed_to = BrokerScope::narrowing(&options.brokers)?;
    let ours = same_tree::Place::own().map_err(setup("reading our mount namespace"))?;
    // The child installs its filter while the server answers; it execs
    // only once the server has. The questions go out after the fork, and
    // we wait right after them: the kernel wakes the server's thread on
    // our core, as we send, expecting us to sleep (a sync wake-up), so
    // until we do, the server waits for us.
    let mut child = spawn::fork_trapped(&options.command)?;
    let mut client = Client::connect(socket)?;
    ask(&mut client)?;
    if let Some(signal) = await_server(&mut client, &job_ends)? {
        // The command never started: its child goes, and we die as told.
        drop(child);
        return Ok(exit_code(Ended::Signaled(signal as i32)));
    }
    drop(job_ends);
    let scope = answers(client, ours)?;
    // Taken before go, so that no failure after it leaves a started
    // program unserved; by now the child has usually sent it.
    let listener = child.listener()?;
    let watched = listener
        .try_clone()
        .map_err(setup("duplicating the seccomp listener"))?;
    child.go()?;
    // Only the broker needs it: read while the child execs.
    let own = Identity::own().map_err(setup("reading our identity"))?;
    // The broker thread compiles the scope while the child execs.
    let start = Start {
        scope,
        narrowed_to,
        own,
        socket: socket.to_owned(),
        no_bind: options.no_bind,
    };
    std::thread::Builder::new()
        .name("fdopen-run".into())
        .spawn(move || start.serve(listener))
        .map_err(setup("starting a broker thread"))?;
    let child = child.exec_confirmed()?;
    let status = supervise(child, watched.as_fd(), &signals)?;
    Ok(exit_code(status))
}

/// `hello` and `scope`, in one write: the server reads and answers both
/// in one go, where two writes can cost it two wake-ups.
const HELLO_AND_SCOPE: &[u8] = b"{\"op\":\"hello\"}\n{\"op\":\"scope\"}\n";

/// Asks the server `hello` and `scope` at once; [`answers`] reads them.
/// A server that refuses us (`busy`) says why and closes, maybe before
/// we have asked: its reason, still in the socket, beats our `EPIPE`.
fn ask(client: &mut Client) -> Result<(), RunError> {
    if let Err(broken) = client.send_raw(HELLO_AND_SCOPE) {
        return Err(match same_tree::Place::server_answer(client) {
            Err(refused @ crate::client::Error::Refused(_)) => refused,
            _ => broken,
        }
        .into());
    }
    Ok(())
}

/// Waits until the server has answered both questions (or closed), or
/// returns the signal that ends a job (SIGTERM, SIGINT, SIGHUP, SIGQUIT)
/// if one comes first: a server that never answers, or stops halfway,
/// must not leave `run` deaf to them.
fn await_server(client: &mut Client, job_ends: &SignalFd) -> Result<Option<Signal>, RunError> {
    const ANSWERS: usize = 2;
    while client.buffered_lines() < ANSWERS {
        let mut fds = [
            PollFd::new(client.stream().as_fd(), PollFlags::POLLIN),
            PollFd::new(job_ends.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(setup("polling")(e.into())),
        }
        if let Ok(Some(info)) = job_ends.read_signal()
            && let Ok(signal) = Signal::try_from(info.ssi_signo as i32)
        {
            return Ok(Some(signal));
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            match client.read_available() {
                Ok(true) => {}
                // Closed, or reset (a server at its limit says `busy` and
                // closes on our unread questions): what it said before
                // is for `answers` to report.
                Ok(false) => break,
                Err(_) if client.buffered_lines() > 0 => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(None)
}

/// The scope to broker: the server's, or `None` (nothing, not even a
/// bind) when the server sees another tree than ours.
fn answers(mut client: Client, ours: same_tree::Place) -> Result<Option<Scope>, RunError> {
    let shared = same_tree::Place::server_answer(&mut client)?.is_none_or(|theirs| theirs == ours);
    let scope = client.scope_answer();
    if shared {
        return Ok(Some(scope?));
    }
    crate::logging::warn(format_args!(
        "the server is in another mount namespace or root: its answers would be \
         about another tree, so nothing is brokered"
    ));
    Ok(None)
}

/// What the broker thread starts from: it compiles the scope itself,
/// while the child installs its filter and execs.
struct Start {
    scope: Option<Scope>,
    narrowed_to: Option<GlobSet>,
    own: Identity,
    socket: PathBuf,
    no_bind: bool,
}

impl Start {
    /// Serves the child's seccomp `listener`.
    fn serve(self, listener: OwnedFd) {
        let shared = self.scope.is_some();
        let scope = BrokerScope::new(&self.scope.unwrap_or_default(), self.narrowed_to);
        let privileged_below = (shared && !self.no_bind).then(unprivileged_port_start);
        let broker = Arc::new_cyclic(|me| Broker {
            listener: Listener::new(listener),
            scope,
            own: self.own,
            socket: self.socket,
            privileged_below,
            dir_streams: Default::default(),
            turns: turns::Turns::new(1, BROKER_THREADS),
            me: me.clone(),
        });
        broker.serve();
    }
}

fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// Passes signals on and reaps children until no task that could trap is
/// left; returns how the command itself ended.
fn supervise(child: Pid, listener: BorrowedFd<'_>, signals: &SignalFd) -> Result<Ended, RunError> {
    // Opened before the command can be reaped, so it is the command's.
    let command = process::Pidfd::open(child.as_raw()).ok();
    let mut status = None;
    loop {
        // Events 0 on the listener: only POLLHUP (no task left that holds
        // the filter) concerns us; the broker threads take POLLIN.
        let mut fds = [
            PollFd::new(listener, PollFlags::empty()),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(setup("polling")(e.into())),
        }
        let hung_up = fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
        if fds[1]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            while let Ok(Some(info)) = signals.read_signal() {
                let signal = info.ssi_signo as i32;
                if signal == libc::SIGCHLD {
                    reap(child, &mut status);
                } else if info.ssi_code != SI_KERNEL {
                    forward(&command, signal);
                }
            }
        }
        if hung_up {
            break;
        }
    }
    reap(child, &mut status);
    match status {
        Some(status) => Ok(status),
        None => match process::wait(child.as_raw(), false) {
            Ok(Some((_, ended))) => Ok(ended),
            Ok(None) => Err(setup("waiting for the command")(
                io::ErrorKind::Other.into(),
            )),
            Err(e) => Err(setup("waiting for the command")(e)),
        },
    }
}

/// Passes on a signal sent to `run`: those that stop a job go to every
/// supervised process, the others to the command alone.
fn forward(command: &Option<process::Pidfd>, signal: i32) {
    if process::reaches_every_process(signal) {
        process::signal_descendants(std::process::id() as i32, signal);
    } else if let Some(command) = command {
        let _ = command.signal(signal);
    }
}

/// Reaps every child that has ended, noting the command's status.
fn reap(child: Pid, status: &mut Option<Ended>) {
    while let Ok(Some((pid, ended))) = process::wait(-1, true) {
        if pid == child.as_raw() {
            *status = Some(ended);
        }
    }
}

/// The command's exit code; for a command killed by a signal, `run` dies
/// of the same signal (without a core file of its own), or returns
/// 128 + the signal's number if it cannot.
fn exit_code(status: Ended) -> i32 {
    match status {
        Ended::Exited(code) => code,
        Ended::Signaled(signal) => {
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: plain syscalls on a set we own; the default action
            // of `signal` is what we want to happen to this process.
            unsafe {
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                libc::signal(signal, libc::SIG_DFL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, signal);
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::raise(signal);
            }
            128 + signal
        }
    }
}
