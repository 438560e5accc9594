//! Counters since start, for the `stats` op (SPEC §3.5). Atomics, bumped
//! where requests are parsed and decisions recorded; read only by `stats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::protocol::{ErrorCode, Op};

pub(super) struct Stats {
    started: Instant,
    requests: [AtomicU64; Op::ALL.len()],
    /// Lines that did not parse far enough to have an op.
    malformed: AtomicU64,
    grants: AtomicU64,
    refusals: [AtomicU64; ErrorCode::ALL.len()],
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub fs_timeouts: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            started: Instant::now(),
            requests: Default::default(),
            malformed: AtomicU64::new(0),
            grants: AtomicU64::new(0),
            refusals: Default::default(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            fs_timeouts: AtomicU64::new(0),
        }
    }

    pub fn request(&self, op: Option<Op>) {
        match op.and_then(|op| Op::ALL.iter().position(|o| *o == op)) {
            Some(i) => bump(&self.requests[i]),
            None => bump(&self.malformed),
        }
    }

    pub fn grant(&self) {
        bump(&self.grants);
    }

    pub fn refusal(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            bump(&self.refusals[i]);
        }
    }

    pub fn snapshot(&self, now: Now) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            ok: true,
            uptime_s: self.started.elapsed().as_secs(),
            clients: now.clients,
            requests: Op::ALL
                .iter()
                .zip(&self.requests)
                .map(|(op, c)| (op.as_str(), load(c)))
                .chain([("malformed", load(&self.malformed))])
                .collect(),
            grants: load(&self.grants),
            refusals: ErrorCode::ALL
                .iter()
                .zip(&self.refusals)
                .map(|(code, c)| (code.as_str(), load(c)))
                .collect(),
            held: now.held,
            parked: now.parked,
            policy_rules: now.policy_rules,
            reloads: Reloads {
                ok: load(&self.reloads_ok),
                failed: load(&self.reloads_failed),
            },
            audit_write_errors: now.audit_write_errors,
            fs_timeouts: load(&self.fs_timeouts),
        }
    }
}

/// What the counters do not hold: read from the server when asked.
pub(super) struct Now {
    pub clients: usize,
    pub held: usize,
    pub parked: usize,
    pub policy_rules: usize,
    pub audit_write_errors: u64,
}

#[derive(Serialize)]
pub(super) struct Reloads {
    ok: u64,
    failed: u64,
}

/// The `stats` response line.
#[derive(Serialize)]
pub(super) struct Snapshot {
    ok: bool,
    uptime_s: u64,
    clients: usize,
    requests: std::collections::BTreeMap<&'static str, u64>,
    grants: u64,
    refusals: std::collections::BTreeMap<&'static str, u64>,
    held: usize,
    parked: usize,
    policy_rules: usize,
    reloads: Reloads,
    audit_write_errors: u64,
    fs_timeouts: u64,
}

/// Where a lane's decisions go: the batch of audit records it is about to
/// write, and the counters.
pub(super) struct Recorder<'a> {
    pub buf: &'a mut Vec<u8>,
    stats: &'a Stats,
}

impl<'a> Recorder<'a> {
    pub fn new(buf: &'a mut Vec<u8>, stats: &'a Stats) -> Recorder<'a> {
        Recorder { buf, stats }
    }

    /// Appends `record` and counts its outcome; returns where it ends.
    pub fn append(&mut self, record: &crate::audit::Record<'_>) -> usize {
        record.append_to(self.buf);
        self.count(record);
        self.buf.len()
    }

    /// Counts the outcome of a record written elsewhere (a tree change,
    /// recorded before it was made) or not at all (`--audit-metadata off`).
    pub fn count(&self, record: &crate::audit::Record<'_>) {
        if record.ok {
            self.stats.grant();
        } else if let Some(code) = record.code
            && let Some(code) = ErrorCode::ALL.iter().find(|c| c.as_str() == code)
        {
            self.stats.refusal(*code);
        }
    }
}
