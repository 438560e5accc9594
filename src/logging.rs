//! Operational messages (start, listen address, reloads, errors): plain
//! lines on stderr, apart from the JSON audit records.
//!
//! Under systemd (`JOURNAL_STREAM` set) each line starts with its syslog
//! priority, `<3>` for errors and so on, which journald turns into the
//! entry's priority; elsewhere it reads `fdopen-server: warning: ...`.
//! Both binaries, and every subcommand, say errors this one way:
//! `PROGRAM: error: what went wrong`.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

/// How much to say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    fn syslog_priority(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug => 7,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info | Level::Debug => "",
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static PROGRAM: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Names the program in every line (`fdopen-server`, `fdopen-client`).
pub fn set_program(name: &'static str) {
    let _ = PROGRAM.set(name);
}

/// Sets the most verbose level that is printed.
pub fn set_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Prints one message as one line (multi-line messages become several
/// lines, each with the prefix, so journald keeps their priority).
pub fn log(level: Level, message: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let text = message.to_string();
    let mut out = String::new();
    for line in text.lines() {
        if journal {
            out.push_str(&format!(
                "<{}>{}{line}\n",
                level.syslog_priority(),
                level.label()
            ));
        } else {
            let program = PROGRAM.get().copied().unwrap_or("fdopen");
            out.push_str(&format!("{program}: {}{line}\n", level.label()));
        }
    }
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

pub fn error(message: fmt::Arguments<'_>) {
    log(Level::Error, message)
}

pub fn warn(message: fmt::Arguments<'_>) {
    log(Level::Warn, message)
}

pub fn info(message: fmt::Arguments<'_>) {
    log(Level::Info, message)
}

pub fn debug(message: fmt::Arguments<'_>) {
    log(Level::Debug, message)
}

/// A message worth saying once in a while, not once per event: at most
/// every ten seconds.
#[derive(Debug, Default)]
pub struct RateLimited {
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl RateLimited {
    /// Logs `message` as an error unless one went out in the last ten seconds.
    pub fn log(&self, message: fmt::Arguments<'_>) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10)) {
            *last = Some(std::time::Instant::now());
            error(message);
        }
    }
}
