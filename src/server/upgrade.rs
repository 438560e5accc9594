//! In-place upgrade (SPEC §3.4, `SIGUSR2`): the lanes answer what they
//! have read and stop reading, the holder stops, and the binary the
//! server was started from runs again with the same arguments, given the
//! listening socket, a hand-over ([`super::handover`]) and a readiness
//! pipe. Once it says it is ready it serves, and this process lets go of
//! everything and stops; if it never says so, this process takes up
//! serving again with everything it had.
//!
//! The listening socket is never closed, so a client connecting
//! meanwhile waits in its backlog and is never refused.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::handover::{self, HandoverError, Received};
use super::{Server, lock};
use crate::hygiene::Exposure;

/// Tells the new process where its inheritance is:
/// `listener=FD,held=FD,ready=FD,socket=owned|passed`.
const ENV: &str = "FDOPEN_UPGRADE";
/// How long the new process may take to read the hand-over and say it
/// is ready; after that it is killed and this one serves on.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the lanes may take to answer what they have read, beyond
/// `--fs-timeout` (a call stuck on the filesystem is answered by then).
const QUIET_TIMEOUT: Duration = Duration::from_secs(5);
/// Longer than any wait worth the name, and short enough for the clock.
const NEVER: Duration = Duration::from_secs(100 * 365 * 86400);

/// The binary and arguments this server was started with, recorded at
/// start: what an upgrade runs again.
#[derive(Clone, Debug)]
pub struct Binary {
    pub path: PathBuf,
    pub args: Vec<OsString>,
}

impl Binary {
    /// This process's binary, by the path it was started from, and its
    /// arguments. Call at start, before any change of directory.
    pub fn current() -> io::Result<Binary> {
        let exe = std::env::current_exe()?;
        let path = started_from()
            .and_then(|path| std::path::absolute(path).ok())
            .filter(|path| names_file(path, &exe))
            .unwrap_or(exe);
        Ok(Binary {
            path,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// The path `execve` was given for this process (`AT_EXECFN`), symlinks
/// and all: a release that flips a symlink upgrades to what it names now
/// (SPEC §3.4), where `/proc/self/exe` names the file it led to at start.
fn started_from() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: getauxval only reads the auxiliary vector.
    let at = unsafe { libc::getauxval(libc::AT_EXECFN) };
    if at == 0 {
        return None;
    }
    // SAFETY: the kernel put a NUL-terminated string there, on the
    // initial stack, which lives as long as the process.
    let name = unsafe { std::ffi::CStr::from_ptr(at as *const libc::c_char) };
    let name = std::ffi::OsStr::from_bytes(name.to_bytes());
    (!name.is_empty()).then(|| PathBuf::from(name))
}

/// `path` leads to the running binary `exe` now, and not by way of a
/// descriptor (`/dev/fd/N`, `/proc/self/fd/N` after `fexecve`), which
/// would name something else by the time of an upgrade.
fn names_file(path: &std::path::Path, exe: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let by_descriptor = path.starts_with("/proc") || path.starts_with("/dev/fd");
    let same =
        |a: &std::fs::Metadata, b: &std::fs::Metadata| (a.dev(), a.ino()) == (b.dev(), b.ino());
    !by_descriptor
        && matches!(
            (std::fs::metadata(path), std::fs::metadata(exe)),
            (Ok(a), Ok(b)) if same(&a, &b)
        )
}

/// Why an upgrade did not happen; the running server serves on either way.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The binary or a directory above it could be changed by someone
    /// other than root or the server's user (SPEC §5's checks).
    #[error("upgrade refused: {path} would run as this server, but {}", describe(.exposures))]
    Refused {
        path: PathBuf,
        exposures: Vec<Exposure>,
    },
    #[error("upgrade failed: cannot start {path}: {source}")]
    Spawn { path: PathBuf, source: io::Error },
    #[error("upgrade failed: {0}")]
    Handover(#[from] HandoverError),
    #[error("upgrade failed: the new server {pid} {what}")]
    NotReady { pid: u32, what: String },
    #[error("upgrade failed: {0}")]
    Io(#[from] io::Error),
}

fn describe(exposures: &[Exposure]) -> String {
    let found: Vec<String> = exposures
        .iter()
        .map(|e| {
            let what = match e.problem {
                crate::hygiene::Problem::Owner => "belongs to another user",
                crate::hygiene::Problem::Writable => "is writable by its group or others",
            };
            format!(
                "{} {what} (owner uid {}, mode {:04o})",
                e.path.display(),
                e.owner,
                e.mode & 0o7777
            )
        })
        .collect();
    found.join("; ")
}

/// Lanes stopped from reading, for an upgrade; each says when it has
/// answered everything it had read.
#[derive(Default)]
pub(super) struct Pause {
    on: AtomicBool,
    /// Which pause lanes report for, so a late report never counts twice.
    generation: AtomicU64,
    /// Lanes quiet in the current generation.
    quiet: Mutex<(u64, usize)>,
    changed: Condvar,
}

impl Pause {
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn begin(&self) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *lock(&self.quiet) = (generation, 0);
        self.on.store(true, Ordering::SeqCst);
    }

    fn end(&self) {
        self.on.store(false, Ordering::SeqCst);
    }

    /// A lane has answered all it read in pause `generation`.
    pub fn lane_quiet(&self, generation: u64) {
        let mut quiet = lock(&self.quiet);
        if quiet.0 == generation {
            quiet.1 += 1;
            self.changed.notify_all();
        }
    }

    /// Waits until `lanes` lanes are quiet; false if `until` came first.
    fn wait_quiet(&self, lanes: usize, until: Instant) -> bool {
        let mut quiet = lock(&self.quiet);
        while quiet.1 < lanes {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            quiet = self
                .changed
                .wait_timeout(quiet, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// The process that took over.
#[derive(Debug)]
pub struct Successor {
    pub pid: u32,
    /// Descriptors it was handed.
    pub handed: usize,
}

impl Server {
    /// Upgrades in place (see the module doc). On success this server
    /// holds nothing any more and should [`Server::shutdown`] without
    /// removing the socket file, which the successor serves.
    pub fn upgrade(&self, binary: &Binary, owns_socket: bool) -> Result<Successor, UpgradeError> {
        let exposures = crate::hygiene::check(&binary.path, nix::unistd::geteuid().as_raw());
        if !exposures.is_empty() {
            return Err(UpgradeError::Refused {
                path: binary.path.clone(),
                exposures,
            });
        }
        let shared = &self.shared;
        shared.pause.begin();
        for lane in &shared.lanes {
            lane.wake();
        }
        // An `--fs-timeout` too long for the clock means "never", as for
        // the watchdog: capped, so that it cannot panic (SPEC §2).
        let wait = QUIET_TIMEOUT.saturating_add(shared.config.fs_timeout);
        let until = Instant::now() + wait.min(NEVER);
        if !shared.pause.wait_quiet(shared.lanes.len(), until) {
            crate::logging::warn(format_args!(
                "upgrade: some requests are still unanswered; they are answered by this process"
            ));
        }
        let frozen = shared.holder.freeze();
        let outcome = self.hand_over(binary, owns_socket, &frozen.outgoing());
        match outcome {
            Ok(successor) => {
                frozen.hand_off();
                Ok(successor)
            }
            Err(e) => {
                drop(frozen);
                shared.pause.end();
                for lane in &shared.lanes {
                    lane.wake();
                }
                Err(e)
            }
        }
    }

    /// Starts the successor, writes it the hand-over and waits for it to
    /// say it is ready.
    fn hand_over(
        &self,
        binary: &Binary,
        owns_socket: bool,
        outgoing: &[handover::Outgoing<'_>],
    ) -> Result<Successor, UpgradeError> {
        let (writer, reader) = handover::pair()?;
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| UpgradeError::Io(e.into()))?;
        let listener = self.shared.listener.as_raw_fd();
        let inherited = [listener, reader.as_raw_fd(), ready_w.as_raw_fd()];
        let socket = if owns_socket { "owned" } else { "passed" };
        let mut command = Command::new(&binary.path);
        command.args(&binary.args).env(
            ENV,
            format!(
                "listener={listener},held={},ready={},socket={socket}",
                inherited[1], inherited[2]
            ),
        );
        // SAFETY: between fork and exec only fcntl, which is
        // async-signal-safe, on descriptors that are open in the child.
        unsafe {
            command.pre_exec(move || {
                for fd in inherited {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| UpgradeError::Spawn {
            path: binary.path.clone(),
            source,
        })?;
        // Only the child keeps these: its exit then reads as end of file.
        drop(reader);
        drop(ready_w);
        let pid = child.id();
        let failed = |child: &mut Child, what: String| {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            UpgradeError::NotReady {
                pid,
                what: format!("{what} ({status})"),
            }
        };
        let handed = match handover::write(writer, outgoing, Some(READY_TIMEOUT)) {
            Ok(n) => n,
            Err(e) => return Err(failed(&mut child, e.to_string())),
        };
        match await_ready(ready_r, READY_TIMEOUT) {
            Ok(true) => Ok(Successor { pid, handed }),
            Ok(false) => Err(failed(&mut child, "stopped before it was ready".into())),
            Err(e) => Err(failed(&mut child, format!("never said it was ready: {e}"))),
        }
    }
}

/// Reads the successor's one-byte "ready"; false at end of file.
fn await_ready(ready: OwnedFd, timeout: Duration) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let until = Instant::now() + timeout;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let mut byte = [0u8; 1];
    let n = std::fs::File::from(ready).read(&mut byte)?;
    Ok(n == 1)
}

/// What a server started by an upgrade inherits from its predecessor.
pub struct Inherited {
    pub listener: UnixListener,
    /// The predecessor bound the socket file: this process removes it
    /// when it stops for good.
    pub owns_socket: bool,
    pub handover: Handover,
}

/// The hand-over to read, and whom to tell once serving.
pub struct Handover {
    held: OwnedFd,
    ready: OwnedFd,
}

impl Inherited {
    /// The inheritance named by the environment, if this process was
    /// started by an upgrade. Clears the variable so children do not see
    /// it. Call first in `main`, before other threads exist.
    pub fn take() -> Result<Option<Inherited>, String> {
        let Some(value) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        // SAFETY: called before any other thread exists.
        unsafe { std::env::remove_var(ENV) };
        let value = value.to_string_lossy().into_owned();
        let mut fds = [None; 3];
        let mut owns_socket = None;
        for part in value.split(',') {
            let (key, val) = part.split_once('=').unwrap_or((part, ""));
            let slot = match key {
                "listener" => 0,
                "held" => 1,
                "ready" => 2,
                "socket" => {
                    owns_socket = Some(val == "owned");
                    continue;
                }
                _ => return Err(format!("{ENV}: unknown part {key:?}")),
            };
            let fd: RawFd = val
                .parse()
                .ok()
                .filter(|fd| *fd > 2)
                .ok_or_else(|| format!("{ENV}: bad descriptor {val:?}"))?;
            fds[slot] = Some(fd);
        }
        let [Some(listener), Some(held), Some(ready)] = fds else {
            return Err(format!("{ENV}={value:?} lacks a descriptor"));
        };
        if !is_open(listener) || !is_open(held) || !is_open(ready) {
            return Err(format!(
                "{ENV}={value:?} names a descriptor that is not open"
            ));
        }
        for fd in [listener, held, ready] {
            // SAFETY: only flags of a descriptor checked open above.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        // SAFETY: the predecessor passed these open and nothing else here
        // owns them.
        let (listener, held, ready) = unsafe {
            (
                UnixListener::from(OwnedFd::from_raw_fd(listener)),
                OwnedFd::from_raw_fd(held),
                OwnedFd::from_raw_fd(ready),
            )
        };
        Ok(Some(Inherited {
            listener,
            owns_socket: owns_socket.unwrap_or(false),
            handover: Handover { held, ready },
        }))
    }
}

impl Handover {
    /// Reads the hand-over the predecessor is writing.
    pub fn receive(&self) -> Result<Received, HandoverError> {
        handover::read(&self.held, Some(READY_TIMEOUT))
    }

    /// Tells the predecessor this process serves now.
    pub fn ready(self) -> io::Result<()> {
        let mut ready = std::fs::File::from(self.ready);
        io::Write::write_all(&mut ready, b"R")
    }
}

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_path_counts_only_if_it_leads_to_the_binary_and_not_by_a_descriptor() {
        let exe = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("current");
        std::os::unix::fs::symlink(&exe, &link).unwrap();
        assert!(names_file(&link, &exe));
        let other = dir.path().join("other");
        std::fs::write(&other, b"").unwrap();
        assert!(!names_file(&other, &exe));
        let file = std::fs::File::open(&exe).unwrap();
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        assert!(!names_file(&by_fd, &exe));
        assert!(!names_file(std::path::Path::new("/dev/fd/0"), &exe));
    }
}
