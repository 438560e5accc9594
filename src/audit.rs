//! The audit log of SPEC §6: one JSON line per decision, to stderr or a
//! file, written before any descriptor is sent.
//!
//! Workers gather the records of a batch of requests and write them with
//! one `write` under a lock, so lines never interleave and the log costs
//! one system call per batch rather than per request.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::peer::PeerIdentity;
use crate::protocol::json_path;

/// Where audit records go.
#[derive(Debug)]
pub struct AuditLog {
    path: Option<PathBuf>,
    sink: Mutex<Option<File>>,
}

impl AuditLog {
    /// Records go to the server's standard error.
    pub fn stderr() -> AuditLog {
        AuditLog {
            path: None,
            sink: Mutex::new(None),
        }
    }

    /// Records are appended to `path`, created `0640` if missing.
    pub fn open(path: &Path) -> io::Result<AuditLog> {
        let file = open_append(path)?;
        Ok(AuditLog {
            path: Some(path.to_owned()),
            sink: Mutex::new(Some(file)),
        })
    }

    /// Reopens the file (after logrotate moved it); a no-op for stderr.
    pub fn reopen(&self) -> io::Result<()> {
        if let Some(path) = &self.path {
            let file = open_append(path)?;
            *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
        }
        Ok(())
    }

    /// Writes whole lines in one go.
    pub fn write(&self, lines: &[u8]) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        match &*sink {
            Some(file) => (&*file).write_all(lines),
            None => io::stderr().lock().write_all(lines),
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
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

/// One decision, as logged.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub ts: &'a str,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'a str>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
}

impl<'a> Record<'a> {
    /// A record for `client` stamped `ts`; the caller fills in the rest.
    pub fn new(client: &PeerIdentity, ts: &'a str) -> Record<'a> {
        Record {
            ts,
            pid: client.pid,
            uid: client.uid,
            gid: client.gid,
            op: None,
            path: None,
            path_b64: None,
            real_path: None,
            real_path_b64: None,
            mode: None,
            ok: false,
            rule: None,
            code: None,
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

    /// Appends the record as one line to `out`.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, self).expect("record serialises");
        out.push(b'\n');
    }
}
