//! The audit log of SPEC §6: one JSON line per decision, to stderr or a
//! file, written before any descriptor is sent.
//!
//! Workers gather the records of a batch of requests and write them with
//! one `write` under a lock, so lines never interleave and the log costs
//! one system call per batch rather than per request.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;

use crate::peer::PeerIdentity;
use crate::protocol::json_path;

/// Where audit records go.
#[derive(Debug)]
pub struct AuditLog {
    path: Option<PathBuf>,
    /// The group a new log file gets (`--socket-group`).
    group: Option<u32>,
    sink: Mutex<Sink>,
    /// Batches that could not be written whole, since start.
    failures: AtomicU64,
}

#[derive(Debug)]
struct Sink {
    /// `None`: the server's standard error.
    file: Option<File>,
    /// A failed write left part of a record that could not be cut back
    /// yet: the file must shrink to this size before anything else goes in.
    torn_at: Option<u64>,
}

/// A batch that was not written whole (SPEC §6): its first `kept` bytes
/// are in the log as whole lines, the rest is not there at all.
#[derive(Debug, thiserror::Error)]
#[error("audit log write failed after {kept} bytes: {source}")]
pub struct AuditWriteError {
    pub kept: usize,
    #[source]
    pub source: io::Error,
}

impl AuditLog {
    /// Records go to the server's standard error.
    pub fn stderr() -> AuditLog {
        AuditLog::with_file(None, None, None)
    }

    /// Records are appended to `path`; a new file is made `0640` whatever
    /// the umask, in `group` when given (SPEC §6). An existing file keeps
    /// the owner and mode the admin gave it.
    pub fn open(path: &Path, group: Option<u32>) -> io::Result<AuditLog> {
        let file = open_append(path, group)?;
        Ok(AuditLog::with_file(
            Some(path.to_owned()),
            group,
            Some(file),
        ))
    }

    fn with_file(path: Option<PathBuf>, group: Option<u32>, file: Option<File>) -> AuditLog {
        AuditLog {
            path,
            group,
            sink: Mutex::new(Sink {
                file,
                torn_at: None,
            }),
            failures: AtomicU64::new(0),
        }
    }

    /// Reopens the file (after logrotate moved it); a no-op for stderr.
    pub fn reopen(&self) -> io::Result<()> {
        if let Some(path) = &self.path {
            let file = open_append(path, self.group)?;
            let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
            sink.file = Some(file);
            sink.torn_at = None;
        }
        Ok(())
    }

    /// The log file, when records go to one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Batches that failed to be written whole since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Appends whole lines. If the write fails part-way (disk full, I/O
    /// error), the log is cut back to the last whole line before the call
    /// returns (or, should even that fail, before the next write), and the
    /// error says how many bytes of `lines` stayed.
    pub fn write(&self, lines: &[u8]) -> Result<(), AuditWriteError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let result = sink.append(lines);
        if result.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl Sink {
    fn append(&mut self, lines: &[u8]) -> Result<(), AuditWriteError> {
        let stderr;
        let file: &File = match &self.file {
            Some(file) => file,
            None => {
                stderr = io::stderr();
                // SAFETY: fd 2 stays open for the life of the process; the
                // borrowed handle is dropped before this function returns.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stderr.as_raw_fd()) };
                return write_torn_free(&fd, lines, &mut self.torn_at);
            }
        };
        write_torn_free(&file.as_fd(), lines, &mut self.torn_at)
    }
}

/// The write loop of [`AuditLog::write`] on any descriptor.
fn write_torn_free(
    fd: &std::os::fd::BorrowedFd<'_>,
    lines: &[u8],
    torn_at: &mut Option<u64>,
) -> Result<(), AuditWriteError> {
    let fail = |source| AuditWriteError { kept: 0, source };
    if let Some(size) = *torn_at {
        nix::unistd::ftruncate(fd, size as libc::off_t).map_err(|e| fail(e.into()))?;
        *torn_at = None;
    }
    let mut written = 0;
    while written < lines.len() {
        match nix::unistd::write(fd, &lines[written..]) {
            Ok(0) => {
                return Err(cut_back(
                    fd,
                    lines,
                    written,
                    torn_at,
                    io::ErrorKind::WriteZero.into(),
                ));
            }
            Ok(n) => written += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(cut_back(fd, lines, written, torn_at, e.into())),
        }
    }
    Ok(())
}

/// After `written` bytes of `lines` went in and the next write failed:
/// shrink the file so it ends with the last whole line.
fn cut_back(
    fd: &std::os::fd::BorrowedFd<'_>,
    lines: &[u8],
    written: usize,
    torn_at: &mut Option<u64>,
    source: io::Error,
) -> AuditWriteError {
    let kept = lines[..written]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let torn = (written - kept) as u64;
    if torn > 0 {
        // Only this process appends, under the sink's lock: the file ends
        // with the torn bytes just written.
        match nix::sys::stat::fstat(fd) {
            Ok(stat) if stat.st_mode & libc::S_IFMT == libc::S_IFREG => {
                let size = (stat.st_size as u64).saturating_sub(torn);
                if nix::unistd::ftruncate(fd, size as libc::off_t).is_err() {
                    *torn_at = Some(size);
                }
            }
            // A pipe or terminal cannot be cut back; a newline at least
            // ends the broken record before the next one starts.
            _ => {
                let _ = nix::unistd::write(fd, b"\n");
            }
        }
    }
    AuditWriteError { kept, source }
}

fn open_append(path: &Path, group: Option<u32>) -> io::Result<File> {
    let options = |create_new: bool| {
        let mut o = OpenOptions::new();
        // The fallback still creates: a name that is a symlink makes
        // O_EXCL fail even when its target does not exist yet.
        o.append(true)
            .create(true)
            .create_new(create_new)
            .mode(0o640)
            .custom_flags(libc::O_CLOEXEC);
        o
    };
    match options(true).open(path) {
        Ok(file) => {
            // Made by us just now: the umask may have narrowed 0640, and
            // the group is the one the admin named.
            if let Some(gid) = group {
                nix::unistd::fchown(&file, None, Some(nix::unistd::Gid::from_raw(gid)))?;
            }
            nix::sys::stat::fchmod(&file, nix::sys::stat::Mode::from_bits_truncate(0o640))?;
            Ok(file)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => options(false).open(path),
        Err(e) => Err(e),
    }
}

/// RFC 3339 timestamps with milliseconds, formatted once per millisecond
/// rather than once per record.
#[derive(Debug, Default)]
pub struct Clock {
    millis: u128,
    text: String,
}

impl Clock {
    pub fn now(&mut self) -> &str {
        let now = SystemTime::now();
        let millis = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if millis != self.millis || self.text.is_empty() {
            self.millis = millis;
            self.text = humantime::format_rfc3339_millis(now).to_string();
        }
        &self.text
    }
}

/// The next `seq`: a number unique to its request within the server's
/// run (SPEC §6).
pub fn next_seq() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// One decision, as logged.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub ts: &'a str,
    pub seq: u64,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// The client's systemd unit and cgroup, when known (SPEC §6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Cow<'a, str>>,
    /// The exact bytes of a `path` that is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    /// Where a symlink led, when it differs from `path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_path: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_path_b64: Option<String>,
    /// A `rename`'s destination, as requested and, where it differs, real.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_to: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_to_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'a str>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
    /// The kernel's error that decided a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<&'a str>,
    /// The address a `bind` asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<&'a str>,
    /// The request created the file.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
    /// A `check` that says yes would create the file; it created nothing,
    /// so its record never says `created` (SPEC §6).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub would_create: bool,
    /// Held descriptors (SPEC §3.4): the name, whose it is, and for
    /// wake-ups, hang-ups and expiries what happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storer: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
}

impl<'a> Record<'a> {
    /// A record for `client` stamped `ts`; the caller fills in the rest.
    pub fn new(client: &'a PeerIdentity, ts: &'a str) -> Record<'a> {
        Record {
            ts,
            seq: next_seq(),
            pid: client.pid,
            uid: client.uid,
            gid: client.gid,
            unit: client.unit(),
            cgroup: client.cgroup.as_deref(),
            op: None,
            path: None,
            path_b64: None,
            real_path: None,
            real_path_b64: None,
            to: None,
            to_b64: None,
            real_to: None,
            real_to_b64: None,
            mode: None,
            ok: false,
            rule: None,
            code: None,
            errno: None,
            address: None,
            created: false,
            would_create: false,
            name: None,
            storer: None,
            event: None,
        }
    }

    /// Sets `path` (and `path_b64` when it is not UTF-8).
    pub fn set_path(&mut self, path: &'a Path) {
        let (text, b64) = json_path(path);
        self.path = Some(text);
        self.path_b64 = b64;
    }

    /// Sets `real_path` (and `real_path_b64` when it is not UTF-8).
    pub fn set_real_path(&mut self, path: &'a Path) {
        let (text, b64) = json_path(path);
        self.real_path = Some(text);
        self.real_path_b64 = b64;
    }

    /// Sets `to` (and `to_b64` when it is not UTF-8).
    pub fn set_to(&mut self, path: &'a Path) {
        let (text, b64) = json_path(path);
        self.to = Some(text);
        self.to_b64 = b64;
    }

    /// Sets `real_to` (and `real_to_b64` when it is not UTF-8).
    pub fn set_real_to(&mut self, path: &'a Path) {
        let (text, b64) = json_path(path);
        self.real_to = Some(text);
        self.real_to_b64 = b64;
    }

    /// Appends the record as one line to `out`.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, self).expect("record serialises");
        out.push(b'\n');
    }
}
