//! `store`, `retrieve`, `list`, `drop`, `park` and `wake` (SPEC §3.4):
//! decide against the policy, act on the holder, audit, answer.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::value::RawValue;

use super::connection::{AfterRecord, Outgoing, Subscribing};
use super::fault;
use super::held::{Key, Kind};
use super::holder::Holder;
use super::stats::Recorder;
use super::undo::HeldGuard;
use crate::audit::Record;
use crate::decision::Refusal;
use crate::peer::PeerIdentity;
use crate::policy::Policy;
use crate::protocol::held::HeldLine;
use crate::protocol::{ErrorCode, HeldOp, HeldRequest, Storer, encode};

/// What a held-fd request came to.
pub(super) enum HeldAnswer {
    Answered(Outgoing),
    /// A `wake` the policy accepts: the connection becomes a subscription.
    Subscribe(Subscribing),
}

/// The uid a request's `storer` names (the client itself by default).
fn storer_uid(storer: Option<&Storer>, client: &PeerIdentity) -> Result<u32, Refusal> {
    match storer {
        None => Ok(client.uid),
        Some(Storer::Uid(uid)) => Ok(*uid),
        Some(Storer::Name(name)) => user_uid(name, |name| {
            nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw())
        }),
    }
}

/// Longest a worker waits for a user-name lookup: a pause its lane's
/// other clients can bear, yet ample for a local lookup on a loaded
/// machine. Once `MAX_LOOKUPS` hang, names cost no wait at all.
const LOOKUP_WAIT: Duration = Duration::from_millis(200);
/// Lookups still running at once (stuck in a remote NSS, say); beyond,
/// names are answered `busy` without asking.
const MAX_LOOKUPS: usize = 4;
static LOOKUPS: AtomicUsize = AtomicUsize::new(0);

/// The uid of user `name`, looked up by `resolve` on a thread of its own:
/// `getpwnam` may ask a remote NSS that never answers, and the worker
/// must not hang with it. A lookup that takes too long is `busy` (a uid
/// always works); its thread ends whenever NSS answers.
fn user_uid(
    name: &str,
    resolve: impl FnOnce(&str) -> Option<u32> + Send + 'static,
) -> Result<u32, Refusal> {
    let busy = || {
        Refusal::busy(format!(
            "looking up user {name:?} takes too long; name a uid"
        ))
    };
    if LOOKUPS.fetch_add(1, Ordering::AcqRel) >= MAX_LOOKUPS {
        LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        return Err(busy());
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let owned = name.to_owned();
    let spawned = std::thread::Builder::new()
        .name("fdopen-getpwnam".into())
        .spawn(move || {
            super::worker::unset_nice();
            let _ = tx.send(resolve(&owned));
            LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        return Err(busy());
    }
    match rx.recv_timeout(LOOKUP_WAIT) {
        Ok(Some(uid)) => Ok(uid),
        Ok(None) => Err(Refusal::new(
            ErrorCode::BadRequest,
            format!("unknown user {name:?}"),
        )),
        Err(_) => Err(busy()),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn answer(
    policy: &Policy,
    holder: &Arc<Holder>,
    peer: &Arc<PeerIdentity>,
    request: HeldRequest,
    mut fds: Vec<OwnedFd>,
    id: Option<&RawValue>,
    ts: &str,
    audit: &mut Recorder<'_>,
    closing: &mut Vec<OwnedFd>,
) -> HeldAnswer {
    let op = request.op;
    let mut record = Record::new(peer, ts);
    record.op = Some(op.as_str());
    record.name = request.name.as_deref().or(request.prefix.as_deref());
    let outcome = storer_uid(request.storer.as_ref(), peer).and_then(|storer| {
        record.storer = Some(storer);
        act(policy, holder, peer, &request, storer, &mut fds, id)
    });
    closing.append(&mut fds);
    let mut bytes = Vec::with_capacity(128);
    let (out_fd, rule, held) = match outcome {
        Ok(Acted::Subscribe(sub)) => {
            record.ok = true;
            audit.append(&record);
            return HeldAnswer::Subscribe(sub);
        }
        Ok(Acted::Line(line, fd, rule)) => {
            bytes = line;
            (fd, rule, None)
        }
        Ok(Acted::Retrieved(line, fd, held, rule)) => {
            bytes = line;
            (fd, Some(rule), held)
        }
        Err(refusal) => {
            encode::error(&mut bytes, id, refusal.code, &refusal.message);
            record.code = Some(refusal.code.as_str());
            record.rule = refusal.rule.as_deref();
            audit.append(&record);
            return HeldAnswer::Answered(Outgoing::new(bytes, None, Some(audit.buf.len())));
        }
    };
    record.ok = true;
    record.rule = rule.as_deref();
    audit.append(&record);
    HeldAnswer::Answered(Outgoing {
        grants: out_fd.is_some() || held.is_some(),
        // What the retrieve did stands once its record is written.
        after_record: AfterRecord {
            held,
            ..AfterRecord::default()
        },
        ..Outgoing::new(
            bytes,
            out_fd.map(std::fs::File::from),
            Some(audit.buf.len()),
        )
    })
}

enum Acted {
    /// The response line, the fd it carries, the rule that allowed it.
    Line(Vec<u8>, Option<OwnedFd>, Option<String>),
    /// A `retrieve`: the line, the copy to send, and what it did to the
    /// held fd, undone if the record is not written (SPEC §3.4): with
    /// `remove` the fd itself (then the only one to send), or a parked fd
    /// unparked.
    Retrieved(Vec<u8>, Option<OwnedFd>, Option<HeldGuard>, String),
    Subscribe(Subscribing),
}

fn act(
    policy: &Policy,
    holder: &Arc<Holder>,
    peer: &Arc<PeerIdentity>,
    request: &HeldRequest,
    storer: u32,
    fds: &mut Vec<OwnedFd>,
    id: Option<&RawValue>,
) -> Result<Acted, Refusal> {
    let op = request.op;
    if op.takes_fd() && fds.len() != 1 {
        let why = format!(
            "{} takes exactly one descriptor, attached to its line",
            op.as_str()
        );
        return Err(Refusal::new(ErrorCode::BadRequest, why));
    }
    let line = |name: Option<&str>, fd: bool, kind: Option<&str>| {
        let mut bytes = Vec::new();
        HeldLine {
            id,
            ok: true,
            fd,
            name,
            kind,
            storer: Some(storer),
            ..HeldLine::default()
        }
        .write(&mut bytes);
        bytes
    };
    match op {
        HeldOp::Store | HeldOp::Park => {
            let name = request.name.as_deref().expect("validated");
            let rule = policy.decide_held(op, name, storer, peer)?.name.clone();
            let kind = if op == HeldOp::Park {
                Kind::Parked
            } else {
                Kind::Held
            };
            let fd = fds.pop().expect("checked above");
            holder
                .hold(peer.clone(), name, fd, kind, request.expires)
                .map_err(|(refusal, fd)| {
                    fds.extend(fd);
                    refusal
                })?;
            Ok(Acted::Line(
                line(Some(name), false, Some(kind.as_str())),
                None,
                Some(rule),
            ))
        }
        HeldOp::Retrieve => {
            let name = request.name.as_deref().expect("validated");
            let rule = policy.decide_held(op, name, storer, peer)?.name.clone();
            if request.remove {
                let taken = holder.take(storer, name)?;
                let was = taken.kind();
                let taken = HeldGuard::taken(holder.clone(), taken);
                fault::point("retrieve", "taken");
                let line = line(Some(name), true, Some(was.as_str()));
                return Ok(Acted::Retrieved(line, None, Some(taken), rule));
            }
            let (fd, was, token) = holder.retrieve(storer, name)?;
            let unparked = (was == Kind::Parked).then(|| {
                let key = Key {
                    storer,
                    name: name.to_owned(),
                };
                HeldGuard::unparked(holder.clone(), key, token)
            });
            let line = line(Some(name), true, Some(was.as_str()));
            Ok(Acted::Retrieved(line, Some(fd), unparked, rule))
        }
        HeldOp::Drop => {
            let name = request.name.as_deref().expect("validated");
            let rule = policy.decide_held(op, name, storer, peer)?.name.clone();
            fds.push(holder.drop_name(storer, name)?);
            Ok(Acted::Line(line(Some(name), false, None), None, Some(rule)))
        }
        HeldOp::List => {
            if !policy.allows_held_op(op, storer, peer) {
                let why = format!(
                    "no rule lets uid {} list fds stored by uid {storer}",
                    peer.uid
                );
                return Err(Refusal::new(ErrorCode::Denied, why));
            }
            let prefix = request.prefix.as_deref().unwrap_or("");
            let names = holder.list(storer, prefix, |name| {
                policy.decide_held(op, name, storer, peer).is_ok()
            });
            let mut bytes = Vec::new();
            HeldLine {
                id,
                ok: true,
                storer: Some(storer),
                names: Some(&names),
                ..HeldLine::default()
            }
            .write(&mut bytes);
            Ok(Acted::Line(bytes, None, None))
        }
        HeldOp::Wake => {
            if !policy.allows_held_op(op, storer, peer) {
                let why = format!(
                    "no rule lets uid {} wake on fds stored by uid {storer}",
                    peer.uid
                );
                return Err(Refusal::new(ErrorCode::Denied, why));
            }
            let prefix = request.prefix.clone().expect("validated");
            let sub = Subscribing {
                prefix,
                storer,
                id: id.map(ToOwned::to_owned),
            };
            Ok(Acted::Subscribe(sub))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A name service that never answers costs a worker at most
    /// `LOOKUP_WAIT` per request, and at most `MAX_LOOKUPS` threads.
    #[test]
    fn a_hung_user_lookup_answers_busy_and_stalls_no_one() {
        let (release, hung) = std::sync::mpsc::channel::<()>();
        let hung = Arc::new(std::sync::Mutex::new(hung));
        let started = Instant::now();
        for _ in 0..MAX_LOOKUPS + 2 {
            let hung = hung.clone();
            let refusal = user_uid("remote", move |_| {
                let _ = hung.lock().unwrap().recv();
                Some(1)
            })
            .unwrap_err();
            assert_eq!(refusal.code, ErrorCode::Busy);
        }
        assert!(started.elapsed() < LOOKUP_WAIT * (MAX_LOOKUPS as u32 + 20));
        assert!(LOOKUPS.load(Ordering::Acquire) <= MAX_LOOKUPS);
        drop(release);
        while LOOKUPS.load(Ordering::Acquire) > 0 {
            std::thread::yield_now();
        }
        assert_eq!(user_uid("root", |_| Some(0)).unwrap(), 0);
        let unknown = user_uid("nobody-here", |_| None).unwrap_err();
        assert_eq!(unknown.code, ErrorCode::BadRequest);
    }

    /// The niceness of the calling thread, plus 100 (a uid is unsigned).
    fn niceness() -> u32 {
        // SAFETY: gettid and getpriority read nothing of ours.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        (nice + 100) as u32
    }

    /// A thread inherits the niceness of the one that starts it: the
    /// lookup thread must not keep its worker's (`--worker-nice`).
    #[test]
    fn a_user_lookup_runs_at_the_servers_niceness_not_its_workers() {
        std::thread::spawn(|| {
            let server = niceness();
            // A worker that weighs less: that needs no privilege.
            super::super::worker::set_nice(server as i32 - 100 + 3);
            assert_eq!(niceness(), server + 3);
            let looked_up = loop {
                match user_uid("anyone", |_| Some(niceness())) {
                    // a_hung_user_lookup_... may fill every lookup slot.
                    Err(refusal) if refusal.code == ErrorCode::Busy => std::thread::yield_now(),
                    other => break other.unwrap(),
                }
            };
            assert_eq!(looked_up, server);
        })
        .join()
        .unwrap();
    }
}
