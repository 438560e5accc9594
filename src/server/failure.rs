//! A request whose handling fails (a Rust panic) is that request's
//! failure alone (SPEC §2): it is answered `io_error`, what it did is
//! undone as its guards drop ([`super::undo`]), and the thread that
//! served it goes on serving everyone else.

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::connection::Outgoing;
use super::stats::Recorder;
use crate::audit::Record;
use crate::decision::Refusal;
use crate::peer::PeerIdentity;
use crate::protocol::ErrorCode;

/// What the client is told.
const MESSAGE: &str = "internal error while serving this request; nothing was done";

/// Handling failed; the panic message went to standard error.
#[derive(Debug)]
pub(super) struct Panicked;

/// Runs `f`, turning a panic into [`Panicked`]. The state `f` touched is
/// left as the panic left it: callers only pass work whose effects are
/// guarded or harmless to leave half done (a lock is recovered, never
/// poisoned for good).
pub(super) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| Panicked)
}

/// The outcome of a filesystem job that panicked.
pub(super) fn refusal() -> Refusal {
    Refusal::new(ErrorCode::IoError, MESSAGE)
}

/// The answer to a request that panicked, with its audit record. The
/// caller first cuts the audit buffer back to where the request began,
/// so that no record it made (a grant) stays behind.
pub(super) fn answer(peer: &PeerIdentity, ts: &str, audit: &mut Recorder<'_>) -> Outgoing {
    let mut record = Record::new(peer, ts);
    record.code = Some(ErrorCode::IoError.as_str());
    let end = audit.append(&record);
    Outgoing::error(ErrorCode::IoError, MESSAGE, Some(end))
}
