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
use crate::audit::{AuditLog, Record};
use crate::decision::{self, Decision, Intent, Refusal, Scratch, Wants};
use crate::peer::PeerIdentity;
use crate::policy::Policy;
use crate::protocol::{
    ErrorCode, FileRequest, Op, PathMode, Request, RequestError, TreeOp, TreeRequest, encode,
    parse_request,
};
use crate::resources::protected::Protected;
use crate::resources::tree::{ChangeLog, Tree, TreeDone};
use crate::sockets::{self, BindError, BindRequest};

/// A request whose answer needs the filesystem.
#[derive(Debug)]
pub(super) struct FilesystemJob {
    pub op: Op,
    pub work: Work,
    pub id: Option<Box<RawValue>>,
    /// Record metadata requests (`--audit-metadata on`, SPEC §6).
    pub audit_metadata: bool,
}

/// What a filesystem job does.
#[derive(Debug)]
pub(super) enum Work {
    /// `open` or `check` of a file.
    File { intent: Intent, file: FileRequest },
    /// A tree operation (SPEC §3.6).
    Tree(TreeRequest),
}

/// What a filesystem job granted.
#[derive(Debug)]
pub(super) enum Done {
    File(Decision),
    Tree(TreeDone),
}

impl Done {
    /// A file this request created, to remove if its answer cannot go out.
    pub fn created(&self) -> Option<&crate::safe_open::CreatedFile> {
        match self {
            Done::File(decision) => decision.created.as_ref(),
            Done::Tree(_) => None,
        }
    }

    /// The descriptor it would send.
    pub fn into_file(self) -> Option<std::fs::File> {
        match self {
            Done::File(decision) => decision.file,
            Done::Tree(_) => None,
        }
    }
}

/// The outcome of a filesystem job.
pub(super) type Outcome = Result<Done, Refusal>;

/// The `O_PATH` handle a granted file was decided on, for the caller to
/// close with the round's other descriptors (in one batch).
pub(super) fn take_pinned(outcome: &mut Outcome) -> Option<OwnedFd> {
    match outcome {
        Ok(Done::File(decision)) => decision.pinned.take(),
        Ok(Done::Tree(_)) | Err(_) => None,
    }
}

/// What a filesystem job may need of the server besides the policy.
pub(super) struct JobEnv<'a> {
    pub audit: &'a AuditLog,
    pub protected: &'a Protected,
}

impl FilesystemJob {
    /// The part that may hang. `scratch` holds the first stage's rules,
    /// from the [`begin`] that made this job.
    pub fn run(
        &self,
        policy: &Policy,
        peer: &PeerIdentity,
        scratch: &mut Scratch,
        env: &JobEnv<'_>,
    ) -> Outcome {
        match &self.work {
            Work::File { intent, file } => {
                // Self-protection (SPEC §3.6): only read on the server's own files.
                let changes = file.mode != crate::protocol::Mode::Read
                    || file.create.is_requested()
                    || file.truncate;
                if changes && env.protected.covers(&file.path.path) {
                    return Err(Protected::refusal());
                }
                let decision =
                    decision::decide_on_filesystem(policy, file, peer, *intent, scratch)?;
                let real = decision.real_path.as_deref().unwrap_or(&file.path.path);
                if changes && env.protected.covers(real) {
                    if let Some(created) = &decision.created {
                        created.remove();
                    }
                    return Err(Protected::refusal());
                }
                Ok(Done::File(decision))
            }
            Work::Tree(request) => {
                let mut log = AuditedChange {
                    audit: env.audit,
                    peer,
                    request,
                    seq: None,
                };
                let mut tree = Tree {
                    policy,
                    client: peer,
                    protected: env.protected,
                    scratch,
                };
                tree.run(request, &mut log).map(Done::Tree)
            }
        }
    }
}

/// Writes a tree change's record straight to the log before the change
/// is made, and its failure record after (SPEC §6).
struct AuditedChange<'a> {
    audit: &'a AuditLog,
    peer: &'a PeerIdentity,
    request: &'a TreeRequest,
    /// The `seq` of the record written before the change.
    seq: Option<u64>,
}

impl AuditedChange<'_> {
    fn write(&mut self, record: &Record<'_>) -> Result<(), Refusal> {
        let mut line = Vec::with_capacity(256);
        record.append_to(&mut line);
        self.audit.write(&line).map_err(|e| {
            Refusal::new(
                ErrorCode::IoError,
                format!(
                    "the audit log cannot be written, so nothing was changed: {}",
                    e.source
                ),
            )
        })
    }
}

impl ChangeLog for AuditedChange<'_> {
    fn before(
        &mut self,
        real: &std::path::Path,
        to: Option<&std::path::Path>,
        rule: &str,
    ) -> Result<(), Refusal> {
        let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let mut record = tree_record(self.peer, &ts, self.request);
        if real != self.request.path.path {
            record.set_real_path(real);
        }
        if let Some(to) = to
            && Some(to) != self.request.to.as_ref().map(|t| t.path.as_path())
        {
            record.set_real_to(to);
        }
        record.ok = true;
        record.rule = Some(rule);
        let seq = record.seq;
        self.write(&record)?;
        self.seq = Some(seq);
        Ok(())
    }

    fn failed(&mut self, mut refusal: Refusal) -> Refusal {
        let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let mut record = tree_record(self.peer, &ts, self.request);
        record.seq = self.seq.unwrap_or(record.seq);
        record.code = Some(refusal.code.as_str());
        let errno = refusal.errno_name();
        record.errno = errno.as_deref();
        // The change was recorded as made; this says it was not. Should
        // even this fail, the client still hears of the failure.
        let _ = self.write(&record);
        refusal.recorded = true;
        refusal
    }
}

/// The record of a tree request: its op, path and `to`.
fn tree_record<'a>(peer: &'a PeerIdentity, ts: &'a str, request: &'a TreeRequest) -> Record<'a> {
    let mut record = Record::new(peer, ts);
    record.op = Some(request.op.op().as_str());
    record.set_path(&request.path.path);
    if let Some(to) = &request.to {
        record.set_to(&to.path);
    }
    record
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
    // Only the answers made here need it: a grant's line is made by finish.
    let line_buffer = || Vec::with_capacity(192);
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
        Ok(Request::Tree(tree)) => {
            return begin_tree(policy, shared, peer, tree, parsed.id, scratch, ts, audit);
        }
        Ok(Request::Hello(hello)) => {
            let (mnt_ns, root) = where_we_are();
            let mut bytes = line_buffer();
            encode::hello(&mut bytes, parsed.id, mnt_ns, root);
            let mut out = Outgoing::new(bytes, None, None);
            out.sets_fds_per_message = Some(hello.fds_per_message.unwrap_or(1));
            return Begun::Answered(out);
        }
        Err(e) => {
            let mut bytes = line_buffer();
            encode::error(&mut bytes, parsed.id, ErrorCode::BadRequest, &e.to_string());
            let end = record_bad_request(peer, ts, audit);
            return Begun::Answered(Outgoing::new(bytes, None, Some(end)));
        }
        Ok(Request::Scope) => {
            let mut bytes = line_buffer();
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
    // Refused on the requested path alone: the filesystem is never asked.
    let first = policy.candidates(&file.path.path, peer, Wants::of(&file), scratch.requested());
    let job = FilesystemJob {
        op,
        work: Work::File { intent, file },
        id: parsed.id.map(ToOwned::to_owned),
        audit_metadata: shared.config.audit_metadata,
    };
    match first {
        Ok(()) => Begun::NeedsFilesystem(job),
        Err(refusal) => Begun::Answered(finish(&job, Err(refusal), peer, ts, audit)),
    }
}

/// A tree request (SPEC §3.6): refused at once if the requested path is
/// not granted its op's mode, else handed to the filesystem.
#[allow(clippy::too_many_arguments)]
fn begin_tree(
    policy: &Policy,
    shared: &Shared,
    peer: &PeerIdentity,
    request: TreeRequest,
    id: Option<&RawValue>,
    scratch: &mut Scratch,
    ts: &str,
    audit: &mut Recorder<'_>,
) -> Begun {
    let mode = match request.op {
        TreeOp::Stat | TreeOp::Readlink | TreeOp::Xattr => PathMode::Stat,
        TreeOp::Readdir => PathMode::List,
        TreeOp::Mkdir => PathMode::Mkdir,
        TreeOp::Unlink | TreeOp::Rmdir | TreeOp::Rename => PathMode::Delete,
    };
    let first = policy.decide_tree_path(
        &request.path.path,
        peer,
        Wants::mode(mode),
        scratch.requested(),
    );
    let job = FilesystemJob {
        op: request.op.op(),
        work: Work::Tree(request),
        id: id.map(ToOwned::to_owned),
        audit_metadata: shared.config.audit_metadata,
    };
    match first {
        Ok(_) => Begun::NeedsFilesystem(job),
        Err(refusal) => Begun::Answered(finish(&job, Err(refusal), peer, ts, audit)),
    }
}

/// The job a request line made, made again from the parsed line (by a
/// thread taking over a lane whose request was in flight).
pub(super) fn rebuild_job(
    request: Request,
    id: Option<&RawValue>,
    audit_metadata: bool,
) -> Option<FilesystemJob> {
    let (op, work) = match request {
        Request::Open(file) => (
            Op::Open,
            Work::File {
                intent: Intent::Open,
                file,
            },
        ),
        Request::Check(file) => (
            Op::Check,
            Work::File {
                intent: Intent::Check,
                file,
            },
        ),
        Request::Tree(tree) => (tree.op.op(), Work::Tree(tree)),
        Request::Hello(_)
        | Request::Bind(_)
        | Request::Scope
        | Request::Held(_)
        | Request::Stats => {
            return None;
        }
    };
    Some(FilesystemJob {
        op,
        work,
        id: id.map(ToOwned::to_owned),
        audit_metadata,
    })
}

/// The response and audit record of a job's outcome.
pub(super) fn finish(
    job: &FilesystemJob,
    outcome: Outcome,
    peer: &PeerIdentity,
    ts: &str,
    audit: &mut Recorder<'_>,
) -> Outgoing {
    let file = match &job.work {
        Work::File { file, .. } => file,
        Work::Tree(request) => return finish_tree(job, request, outcome, peer, ts, audit),
    };
    let mut outcome = outcome.map(|done| match done {
        Done::File(decision) => decision,
        Done::Tree(_) => unreachable!("a file job decides a file"),
    });
    // Removed unless the grant stands, whatever happens from here on.
    let created = outcome.as_mut().ok().and_then(|d| d.created.take());
    let created = created.map(CreatedGuard::new);
    fault::point(job.op.as_str(), "decided");
    let mut bytes = Vec::with_capacity(192);
    let id = job.id.as_deref();
    let mut record = Record::new(peer, ts);
    record.op = Some(job.op.as_str());
    record.set_path(&file.path.path);
    record.mode = Some(file.mode.as_str());
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
        Err(refusal) => refuse(&mut bytes, id, refusal, &mut record),
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

/// A file or tree refusal's answer, with its errno where it has one (SPEC
/// §4), and the code and deciding rule of its audit record.
fn refuse<'r>(
    bytes: &mut Vec<u8>,
    id: Option<&RawValue>,
    refusal: &'r Refusal,
    record: &mut Record<'r>,
) {
    let errno = refusal.errno_name();
    encode::error_with_errno(bytes, id, refusal.code, errno.as_deref(), &refusal.message);
    record.code = Some(refusal.code.as_str());
    record.rule = refusal.rule.as_deref();
}

/// The response and audit record of a tree request (SPEC §3.6, §6): a
/// change was recorded before it was made, so only refusals before it
/// are recorded here; metadata requests as `--audit-metadata` says.
fn finish_tree(
    job: &FilesystemJob,
    request: &TreeRequest,
    outcome: Outcome,
    peer: &PeerIdentity,
    ts: &str,
    audit: &mut Recorder<'_>,
) -> Outgoing {
    let mut bytes = Vec::with_capacity(256);
    let id = job.id.as_deref();
    let mut record = tree_record(peer, ts, request);
    let recorded = match &outcome {
        Ok(Done::Tree(done)) => {
            crate::protocol::tree::encode_answer(
                &mut bytes,
                id,
                &done.path,
                &done.rule,
                &done.answer,
            );
            record.ok = true;
            record.rule = Some(&done.rule);
            if done.path != request.path.path {
                record.set_real_path(&done.path);
            }
            done.recorded
        }
        Ok(Done::File(_)) => unreachable!("a tree job does no open"),
        Err(refusal) => {
            refuse(&mut bytes, id, refusal, &mut record);
            refusal.recorded
        }
    };
    let quiet = !request.op.changes() && !job.audit_metadata;
    if recorded || quiet {
        audit.count(&record);
        return Outgoing::new(bytes, None, None);
    }
    let end = audit.append(&record);
    // Metadata granted but not recorded is not given (SPEC §6).
    Outgoing {
        grants: record.ok,
        ..Outgoing::new(bytes, None, Some(end))
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

/// The server's mount namespace inode and the `st_dev`/`st_ino` of its
/// `/` (SPEC §3.5), read once: `run` compares them with the program's.
fn where_we_are() -> (Option<u64>, Option<[u64; 2]>) {
    static ONCE: std::sync::OnceLock<(Option<u64>, Option<[u64; 2]>)> = std::sync::OnceLock::new();
    *ONCE.get_or_init(|| {
        let mnt_ns = nix::sys::stat::stat("/proc/self/ns/mnt")
            .ok()
            .map(|st| st.st_ino);
        let root = nix::sys::stat::stat("/")
            .ok()
            .map(|st| [st.st_dev, st.st_ino]);
        (mnt_ns, root)
    })
}
