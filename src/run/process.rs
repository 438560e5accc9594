//! The processes `run` supervises, as process behaviour (SPEC §8) needs
//! them: the exit code for a command that could not start, and signals
//! sent to every supervised process through pidfds, so that a pid that
//! was recycled between the look-up and the signal is never signalled.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// How a child ended. Not nix's `WaitStatus`: it has no variant for a
/// real-time signal, and its `waitpid` fails on one, the status reaped
/// and lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    /// Killed by this signal, whatever its number.
    Signaled(i32),
}

/// `waitpid` for `pid` (-1: any child), exits and deaths only; `Ok(None)`
/// where `nohang` found none ended yet.
pub fn wait(pid: i32, nohang: bool) -> io::Result<Option<(i32, Ended)>> {
    let flags = if nohang { libc::WNOHANG } else { 0 };
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes only the status we own.
        let reaped = unsafe { libc::waitpid(pid, &mut status, flags) };
        if reaped < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if reaped == 0 {
            return Ok(None);
        }
        // Without WUNTRACED or WCONTINUED a wait reports only these two.
        let ended = if libc::WIFSIGNALED(status) {
            Ended::Signaled(libc::WTERMSIG(status))
        } else {
            Ended::Exited(libc::WEXITSTATUS(status))
        };
        return Ok(Some((reaped, ended)));
    }
}

/// Exit code, as shells give it, of a command that could not be started:
/// 127 if it was not found, 126 if it was found but cannot be executed.
/// A bare name searched in `PATH` fails with `EACCES` when some directory
/// there cannot be searched, though no such file exists: not found.
pub fn spawn_exit_code(program: &str, err: &io::Error) -> i32 {
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => 127,
        _ if !program.contains('/') && !on_path(program) => 127,
        _ => 126,
    }
}

/// Whether some place the exec looked for `name` in has an entry we can
/// see: each `PATH` directory, or glibc's default (`/bin:/usr/bin`) where
/// there is no `PATH`, as the exec itself searched.
fn on_path(name: &str) -> bool {
    crate::exec::search(name.as_ref())
        .iter()
        .any(|file| fs::symlink_metadata(file).is_ok())
}

/// The signals that reach every supervised process, not only the command:
/// the ones that ask a whole job to stop.
pub fn reaches_every_process(signal: i32) -> bool {
    matches!(
        signal,
        libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGQUIT
    )
}

/// A process held by a pidfd: signals sent through it reach that very
/// process or nobody.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    pub fn open(pid: i32) -> io::Result<Pidfd> {
        // SAFETY: pidfd_open with integer arguments; the result is ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// Sends `signal`; `ESRCH` once the process has ended.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal on a descriptor we hold, no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A process as `/proc/PID/stat` shows it: its parent, and its start time,
/// which with the pid names one process for the life of the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ProcessId {
    pid: i32,
    ppid: i32,
    start: u64,
}

impl ProcessId {
    fn read(pid: i32) -> Option<ProcessId> {
        parse_stat(pid, &fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }
}

/// Fields 4 (ppid) and 22 (starttime) of a `stat` line; the command name
/// (field 2) may hold spaces and parentheses, so fields count from the
/// last `)`.
fn parse_stat(pid: i32, line: &str) -> Option<ProcessId> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    Some(ProcessId {
        pid,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Every process below `root` now: its children (the command and the
/// orphans we adopted as subreaper) and theirs.
fn descendants(root: i32) -> Vec<ProcessId> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children: HashMap<i32, Vec<ProcessId>> = HashMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(process) = ProcessId::read(pid) {
            children.entry(process.ppid).or_default().push(process);
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(parent) = queue.pop() {
        for child in children.remove(&parent).unwrap_or_default() {
            queue.push(child.pid);
            found.push(child);
        }
    }
    found
}

/// Rounds of looking for processes forked while we were signalling.
const ROUNDS: usize = 8;

/// Sends `signal` to every process below `root`, each once, through a
/// pidfd opened and then confirmed to be the process the scan found (same
/// start time). Processes forked meanwhile are caught by a new scan, until
/// one finds nobody new.
pub fn signal_descendants(root: i32, signal: i32) {
    let mut signalled = HashSet::new();
    for _ in 0..ROUNDS {
        let mut fresh = false;
        for process in descendants(root) {
            if !signalled.insert((process.pid, process.start)) {
                continue;
            }
            fresh = true;
            let Ok(pidfd) = Pidfd::open(process.pid) else {
                continue;
            };
            if ProcessId::read(process.pid).is_some_and(|now| now.start == process.start) {
                let _ = pidfd.signal(signal);
            }
        }
        if !fresh {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_127_and_not_executable_is_126() {
        let code = |program, errno| spawn_exit_code(program, &io::Error::from_raw_os_error(errno));
        assert_eq!(code("/x/y", libc::ENOENT), 127);
        assert_eq!(code("/etc/passwd", libc::EACCES), 126);
        assert_eq!(code("/etc/passwd", libc::ENOEXEC), 126);
        assert_eq!(code("sh", libc::EACCES), 126);
        assert_eq!(code("no-such-program-anywhere", libc::EACCES), 127);
    }

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let line = "42 (a) b) (c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 0 0";
        assert_eq!(
            parse_stat(42, line),
            Some(ProcessId {
                pid: 42,
                ppid: 7,
                start: 123456
            })
        );
        assert_eq!(parse_stat(42, "42 (x"), None);
    }

    #[test]
    fn signals_reach_a_grandchild() {
        use std::io::BufRead;
        // The shell says its child's pid once it has forked it, then
        // waits for it: it ends with the status the sleeper died of.
        let mut shell = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 300 & echo $!; wait $!"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        io::BufReader::new(shell.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let sleeper: i32 = line.trim().parse().unwrap();
        let below = descendants(shell.id() as i32);
        assert_eq!(below.iter().map(|p| p.pid).collect::<Vec<_>>(), [sleeper]);
        signal_descendants(shell.id() as i32, libc::SIGKILL);
        assert_eq!(shell.wait().unwrap().code(), Some(128 + libc::SIGKILL));
    }
}
