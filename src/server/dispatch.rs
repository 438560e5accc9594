//! From a request line to its response: parse, decide, audit, encode.
//!
//! A request is answered in two halves so that the event loop never waits
//! on a filesystem: [`begin`] does everything that needs only memory (and
//! answers most refusals outright); a request that must look at files
//! comes back as a [`FilesystemJob`], which the worker runs where a hung
//! filesystem can be abandoned, and [`finish`] turns its outcome into the
//! response and the audit record.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::Shared;
use super::connection::{AfterRecord, Attachment, Outgoing, Subscribing};
use super::fault;
use super::held_ops::{self, HeldAnswer};
use super::stats::Now;
use super::stats::Recorder;
use super::undo::CreatedGuard;
use crate::audit::Record;
use crate::decision::{self, Decision, Intent, Refusal, Scratch, Wants};
use crate::peer::PeerIdentity;
use crate::policy::Policy;
use crate::protocol::{ErrorCode, FileRequest, Op, Request, RequestError, encode, parse_request};
use crate::sockets::{self, BindError, BindRequest};

/// A request whose answer needs the filesystem.
#[derive(Debug)]
pub(super) struct FilesystemJob {
    pub op: Op,
    pub intent: Intent,
    pub file: FileRequest,
    pub id: Option<Box<RawValue>>,
}

impl FilesystemJob {
    /// The part that may hang. `scratch` holds the first stage's rules,
    /// from the [`begin`] that made this job.
    pub fn run(
        &self,
        policy: &Policy,
        peer: &PeerIdentity,
        scratch: &mut Scratch,
    ) -> Result<Decision, Refusal> {
        decision::decide_on_filesystem(policy, &self.file, peer, self.intent, scratch)
    }
}

/// How far [`begin`] got.
pub(super) enum Begun {
    Answered(Outgoing),
    NeedsFilesystem(FilesystemJob),
    /// An accepted `wake`: the connection turns into a subscription.
    Subscribe(Subscribing),
}

/// Answers `line` as far as memory allows, appending any audit record.
/// Descriptors that came with it and are not kept go to `closing`.
#[allow(clippy::too_many_arguments)]
pub(super) fn begin(
    policy: &Policy,
    shared: &Shared,
    peer: &Arc<PeerIdentity>,
    line: &[u8],
    attachment: Attachment,
    scratch: &mut Scratch,
    ts: &str,
    audit: &mut Recorder<'_>,
    closing: &mut Vec<OwnedFd>,
) -> Begun {
    let parsed = parse_request(line);
    let op = parsed.request.as_ref().ok().map(Request::op);
    shared.stats.request(op);
    fault::point(op.map_or("", Op::as_str), "begin");
    let mut bytes = Vec::with_capacity(192);
    let (request, fds) = match (parsed.request, attachment) {
        (Ok(Request::Held(held)), Attachment::Fds(fds)) => (Ok(Request::Held(held)), fds),
        (Ok(Request::Held(held)), Attachment::None) => (Ok(Request::Held(held)), Vec::new()),
        (Ok(_), Attachment::Fds(fds)) => {
            closing.extend(fds);
            (Err(not_accepted()), Vec::new())
        }
        (Ok(_), Attachment::Tainted) => (Err(not_accepted()), Vec::new()),
        (other, Attachment::Fds(fds)) => {
            closing.extend(fds);
            (other, Vec::new())
        }
        (other, _) => (other, Vec::new()),
    };
    let (op, file, intent) = match request {
        // Not a decision: nothing to audit.
        Ok(Request::Hello) => {
            encode::hello(&mut bytes, parsed.id);
            return Begun::Answered(Outgoing::new(bytes, None, None));
        }
        Err(e) => {
            encode::error(&mut bytes, parsed.id, ErrorCode::BadRequest, &e.to_string());
            let end = record_bad_request(peer, ts, audit);
            return Begun::Answered(Outgoing::new(bytes, None, Some(end)));
        }
        Ok(Request::Scope) => {
            encode::scope(&mut bytes, parsed.id, &policy.scope(peer));
            return Begun::Answered(Outgoing::new(bytes, None, None));
        }
        Ok(Request::Bind(bind)) => {
            return Begun::Answered(answer_bind(policy, peer, &bind, parsed.id, ts, audit));
        }
        Ok(Request::Stats) => {
            return Begun::Answered(answer_stats(policy, shared, peer, parsed.id, ts, audit));
        }
        Ok(Request::Held(held)) => {
            let holder = &shared.holder;
            let answer = held_ops::answer(
                policy, holder, peer, held, fds, parsed.id, ts, audit, closing,
            );
            return match answer {
                HeldAnswer::Answered(out) => Begun::Answered(out),
                HeldAnswer::Subscribe(sub) => Begun::Subscribe(sub),
            };
        }
        Ok(Request::Open(file)) => (Op::Open, file, Intent::Open),
        Ok(Request::Check(file)) => (Op::Check, file, Intent::Check),
    };
    let job = FilesystemJob {
        op,
        intent,
        file,
        id: parsed.id.map(ToOwned::to_owned),
    };
    // Refused on the requested path alone: the filesystem is never asked.
    match policy.candidates(
        &job.file.path.path,
        peer,
        Wants::of(&job.file),
        scratch.requested(),
    ) {
        Ok(()) => Begun::NeedsFilesystem(job),
        Err(refusal) => Begun::Answered(finish(&job, Err(refusal), peer, ts, audit)),
    }
}

/// The job a request line made, made again from the parsed line (by a
/// thread taking over a lane whose request was in flight).
pub(super) fn rebuild_job(request: Request, id: Option<&RawValue>) -> Option<FilesystemJob> {
    let (op, intent, file) = match request {
        Request::Open(file) => (Op::Open, Intent::Open, file),
        Request::Check(file) => (Op::Check, Intent::Check, file),
        Request::Hello | Request::Bind(_) | Request::Scope | Request::Held(_) | Request::Stats => {
            return None;
        }
    };
    Some(FilesystemJob {
        op,
        intent,
        file,
        id: id.map(ToOwned::to_owned),
    })
}

/// The response and audit record of a job's outcome.
pub(super) fn finish(
    job: &FilesystemJob,
    mut outcome: Result<Decision, Refusal>,
    peer: &PeerIdentity,
    ts: &str,
    audit: &mut Recorder<'_>,
) -> Outgoing {
    // Removed unless the grant stands, whatever happens from here on.
    let created = outcome.as_mut().ok().and_then(|d| d.created.take());
    let created = created.map(CreatedGuard::new);
    fault::point(job.op.as_str(), "decided");
    let mut bytes = Vec::with_capacity(192);
    let id = job.id.as_deref();
    let mut record = Record::new(peer, ts);
    record.op = Some(job.op.as_str());
    record.set_path(&job.file.path.path);
    record.mode = Some(job.file.mode.as_str());
    match &outcome {
        Ok(granted) => {
            encode::grant(&mut bytes, id, &granted.grant, job.op == Op::Open);
            record.ok = true;
            record.rule = Some(&granted.grant.rule);
            if job.op == Op::Check {
                record.would_create = granted.grant.created;
            } else {
                record.created = granted.grant.created;
            }
            if let Some(real) = &granted.real_path {
                record.set_real_path(real);
            }
        }
        Err(refusal) => {
            encode::error(&mut bytes, id, refusal.code, &refusal.message);
            record.code = Some(refusal.code.as_str());
            record.rule = refusal.rule.as_deref();
        }
    }
    let end = audit.append(&record);
    let Ok(granted) = outcome else {
        return Outgoing::new(bytes, None, Some(end));
    };
    // `check` decides the same but opens nothing.
    Outgoing {
        grants: true,
        after_record: AfterRecord {
            truncate: granted.truncate,
            created,
            held: None,
        },
        ..Outgoing::new(bytes, granted.file, Some(end))
    }
}

/// Decides and makes a bind (SPEC §3.3), with its audit record.
fn answer_bind(
    policy: &Policy,
    peer: &PeerIdentity,
    request: &BindRequest,
    id: Option<&RawValue>,
    ts: &str,
    audit: &mut Recorder<'_>,
) -> Outgoing {
    let mut bytes = Vec::with_capacity(128);
    let asked = request.address.to_string();
    let mut record = Record::new(peer, ts);
    record.op = Some(Op::Bind.as_str());
    record.address = Some(&asked);
    // The socket would be made in our namespace, outside the client's
    // (`PrivateNetwork=`): no rule can grant that (SPEC §3.3).
    let decided = if peer.foreign_net {
        let why = "the client is in another network namespace than the server";
        Err(Refusal::new(ErrorCode::Denied, why))
    } else {
        policy.decide_bind(&request.address, request.reuseport, peer)
    };
    let outcome = decided.and_then(|rule| {
        sockets::bind(request, peer)
            .map(|(fd, bound)| (fd, bound, rule))
            .map_err(|e| match e {
                BindError::InUse => Refusal::new(ErrorCode::InUse, e.to_string()),
                BindError::Io { .. } => Refusal::new(ErrorCode::IoError, e.to_string()),
            })
    });
    match outcome {
        Ok((fd, bound, rule)) => {
            encode::bound(&mut bytes, id, &bound, &rule.name);
            record.ok = true;
            record.rule = Some(&rule.name);
            audit.append(&record);
            Outgoing {
                grants: true,
                ..Outgoing::new(bytes, Some(std::fs::File::from(fd)), Some(audit.buf.len()))
            }
        }
        Err(refusal) => {
            encode::error(&mut bytes, id, refusal.code, &refusal.message);
            record.code = Some(refusal.code.as_str());
            record.rule = refusal.rule.as_deref();
            audit.append(&record);
            Outgoing::new(bytes, None, Some(audit.buf.len()))
        }
    }
}

/// Whether `line` is a `store` or `park` (which take a descriptor): a
/// look at its `op` alone, for lines that came with descriptors.
pub(super) fn takes_fd(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct OpOnly {
        op: Op,
    }
    serde_json::from_slice::<OpOnly>(line)
        .ok()
        .and_then(|l| l.op.held())
        .is_some_and(crate::protocol::HeldOp::takes_fd)
}

fn not_accepted() -> RequestError {
    RequestError::Malformed("file descriptors are accepted only with store and park".into())
}

/// `stats` (SPEC §3.5): for root, the server's own uid and members of
/// `--stats-group`.
fn answer_stats(
    policy: &Policy,
    shared: &Shared,
    peer: &PeerIdentity,
    id: Option<&RawValue>,
    ts: &str,
    audit: &mut Recorder<'_>,
) -> Outgoing {
    let mut bytes = Vec::with_capacity(512);
    let mut record = Record::new(peer, ts);
    record.op = Some(Op::Stats.as_str());
    let allowed = peer.uid == 0
        || peer.uid == nix::unistd::geteuid().as_raw()
        || shared.config.stats_group.is_some_and(|g| peer.in_group(g));
    if !allowed {
        let message = "stats are for root, the server's user and --stats-group";
        encode::error(&mut bytes, id, ErrorCode::Denied, message);
        record.code = Some(ErrorCode::Denied.as_str());
        let end = audit.append(&record);
        return Outgoing::new(bytes, None, Some(end));
    }
    let (held, parked) = shared.holder.counts();
    let snapshot = shared.stats.snapshot(Now {
        clients: shared.clients.load(std::sync::atomic::Ordering::Relaxed),
        held,
        parked,
        policy_rules: policy.rules.len(),
        audit_write_errors: shared.audit.failures(),
    });
    #[derive(serde::Serialize)]
    struct StatsLine<'a, T> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        #[serde(flatten)]
        snapshot: T,
    }
    serde_json::to_writer(&mut bytes, &StatsLine { id, snapshot }).expect("stats serialise");
    bytes.push(b'\n');
    record.ok = true;
    let end = audit.append(&record);
    Outgoing::new(bytes, None, Some(end))
}

/// Records a malformed request; returns where its record ends.
pub(super) fn record_bad_request(peer: &PeerIdentity, ts: &str, audit: &mut Recorder<'_>) -> usize {
    let mut record = Record::new(peer, ts);
    record.code = Some(ErrorCode::BadRequest.as_str());
    audit.append(&record)
}
