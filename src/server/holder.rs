//! The holder (SPEC §3.4): keeps held and parked descriptors, watches the
//! parked ones in an epoll of its own thread, and hands each one back to
//! the oldest subscriber the policy lets have it, the moment it becomes
//! readable. Lanes call in to store, retrieve, list, drop and park; a
//! `wake` connection is handed over whole and lives here from then on.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use serde_json::value::RawValue;
use slab::Slab;

use super::handover::{Incoming, Outgoing, Unheld};
use super::held::{Entry, HeldLimits, Key, Kind, Registry, deadline, deadline_at, listed_name};
use super::watchdog::CallWatch;
use super::{Shared, failure, lock};
use crate::audit::{Clock, Record};
use crate::decision::Refusal;
use crate::fdpass;
use crate::logging;
use crate::peer::PeerIdentity;
use crate::protocol::held::HeldLine;
use crate::protocol::{ErrorCode, HeldOp, ListedName, encode};

const WAKER: u64 = u64::MAX;
/// Epoll keys at and above this are subscribers (slab key + base).
const SUBSCRIBER_BASE: u64 = 1 << 62;
/// Wake-ups queued for one subscriber that is not reading: beyond this it
/// is passed over until it catches up.
const MAX_QUEUED_WAKEUPS: usize = 256;
/// After the audit log refused a batch, how soon delivery is tried again.
const AUDIT_RETRY: Duration = Duration::from_secs(1);

/// A `wake` connection.
struct Subscriber {
    stream: UnixStream,
    peer: Arc<PeerIdentity>,
    prefix: String,
    storer: u32,
    id: Option<Box<RawValue>>,
    /// Order of arrival: the oldest eligible subscriber gets each fd.
    seq: u64,
    outq: VecDeque<Queued>,
    /// Sent something it must not: answered, closed once flushed.
    closing: bool,
    /// Hung up: removed at the next flush, its wake-ups put back.
    gone: bool,
    /// Shut its write side: it sends nothing more, but is still there to
    /// be answered and woken (SPEC §3.4).
    read_closed: bool,
}

/// When a held fd expires, and the wall-clock time `list` shows for it.
type Deadline = (Instant, SystemTime);

/// A line waiting to go to a subscriber.
struct Queued {
    bytes: Vec<u8>,
    sent: usize,
    /// Kept until the whole line is sent: a client discards a line cut
    /// off by a closed connection, and the fd that came with it, so a
    /// wake-up not wholly sent is parked again (or handed over) with it.
    fd: Option<OwnedFd>,
    /// For a woken fd: where it was parked and its expiry, to park it
    /// again as it was if the subscriber leaves before it is sent.
    parked: Option<(Key, Arc<PeerIdentity>, Option<Deadline>)>,
}

impl Queued {
    fn line(bytes: Vec<u8>) -> Queued {
        Queued {
            bytes,
            sent: 0,
            fd: None,
            parked: None,
        }
    }
}

struct State {
    registry: Registry,
    subscribers: Slab<Subscriber>,
    next_seq: u64,
    /// Parked fds that fired with nobody to take them: re-armed when a
    /// subscriber comes.
    unclaimed: Vec<u64>,
    retry_at: Option<Instant>,
    /// Descriptors given up by a lane's call (a taken fd that could not
    /// be put back): the holder thread closes them, watched.
    closing: Vec<OwnedFd>,
    /// Everything went to a successor (an upgrade, the fd store): what is
    /// held here now would die with this process.
    handed_off: bool,
}

pub(super) struct Holder {
    state: Mutex<State>,
    epoll: Epoll,
    waker: EventFd,
    limits: HeldLimits,
    /// The holder thread's closes, watched like filesystem calls: a close
    /// can block (`SO_LINGER`, a FUSE flush), and then the watchdog
    /// starts a new holder thread (SPEC §3.4).
    pub call: CallWatch,
}

/// A held fd a request took out of the holder, with what it needs to be
/// held again as it was ([`Holder::put_back`]).
pub(super) struct Taken {
    key: Key,
    entry: Entry,
}

impl Taken {
    pub fn kind(&self) -> Kind {
        self.entry.kind
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.entry.fd.as_fd()
    }

    pub fn into_fd(self) -> OwnedFd {
        self.entry.fd
    }
}

/// A subscription on its way from a lane to the holder.
pub(super) struct Subscription {
    pub stream: UnixStream,
    pub peer: Arc<PeerIdentity>,
    pub prefix: String,
    pub storer: u32,
    pub id: Option<Box<RawValue>>,
    /// Bytes the client sent after its `wake`: a protocol error.
    pub trailing: bool,
}

fn parked_interest(token: u64) -> EpollEvent {
    EpollEvent::new(
        EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT,
        token,
    )
}

impl Holder {
    pub fn new(limits: HeldLimits) -> io::Result<Holder> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let waker =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        epoll.add(waker.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKER))?;
        Ok(Holder {
            state: Mutex::new(State {
                registry: Registry::default(),
                subscribers: Slab::new(),
                next_seq: 0,
                unclaimed: Vec::new(),
                retry_at: None,
                closing: Vec::new(),
                handed_off: false,
            }),
            epoll,
            waker,
            limits,
            call: CallWatch::default(),
        })
    }

    fn wake(&self) {
        let _ = self.waker.write(1);
    }

    /// `store` or `park`: holds `fd` under `name` for `storer`. A parked
    /// fd must be a socket, and is watched from now on.
    pub fn hold(
        &self,
        storer: Arc<PeerIdentity>,
        name: &str,
        fd: OwnedFd,
        kind: Kind,
        expires: Option<Duration>,
    ) -> Result<(), (Refusal, Option<OwnedFd>)> {
        if kind == Kind::Parked && !is_socket(&fd) {
            let refusal = Refusal::new(ErrorCode::NotRegular, "only a socket can be parked");
            return Err((refusal, Some(fd)));
        }
        let mut state = lock(&self.state);
        self.insert(&mut state, storer, name, fd, kind, expires.map(deadline))?;
        drop(state);
        if expires.is_some() {
            // The holder thread may sleep past this expiry otherwise.
            self.wake();
        }
        Ok(())
    }

    /// Enters an fd in the registry and, if parked, in the epoll.
    fn insert(
        &self,
        state: &mut State,
        storer: Arc<PeerIdentity>,
        name: &str,
        fd: OwnedFd,
        kind: Kind,
        expires: Option<(Instant, SystemTime)>,
    ) -> Result<(), (Refusal, Option<OwnedFd>)> {
        if state.handed_off {
            return Err((handed_off(), Some(fd)));
        }
        let uid = storer.uid;
        let token = state
            .registry
            .insert_until(self.limits, storer, name, fd, kind, expires)
            .map_err(|(refusal, fd)| (refusal, Some(fd)))?;
        if kind == Kind::Parked {
            let entry = state.registry.get(uid, name).expect("inserted");
            if let Err(e) = self.epoll.add(entry.fd.as_fd(), parked_interest(token)) {
                let entry = state.registry.remove(uid, name).expect("inserted");
                let refusal = Refusal::new(ErrorCode::IoError, format!("cannot watch it: {e}"));
                return Err((refusal, Some(entry.fd)));
            }
        }
        Ok(())
    }

    /// `retrieve` without `remove`: a duplicate of the held fd, whether
    /// it was parked, and its token. A parked fd is unparked: it stays
    /// held, but no longer watched.
    pub fn retrieve(&self, storer: u32, name: &str) -> Result<(OwnedFd, Kind, u64), Refusal> {
        let mut state = lock(&self.state);
        let handed_off = state.handed_off;
        let entry = state
            .registry
            .get_mut(storer, name)
            .ok_or_else(|| not_held(handed_off, name))?;
        let was = entry.kind;
        if was == Kind::Parked {
            let _ = self.epoll.delete(entry.fd.as_fd());
            entry.kind = Kind::Held;
        }
        let copy = entry
            .fd
            .try_clone()
            .map_err(|e| Refusal::new(ErrorCode::Busy, format!("cannot duplicate it: {e}")))?;
        Ok((copy, was, entry.token))
    }

    /// Parks again an fd a failed `retrieve` unparked, if it is still the
    /// same entry (`token`) and still held.
    pub fn repark(&self, key: &Key, token: u64) {
        let mut state = lock(&self.state);
        let Some(entry) = state.registry.get_mut(key.storer, &key.name) else {
            return;
        };
        if entry.token == token
            && entry.kind == Kind::Held
            && self
                .epoll
                .add(entry.fd.as_fd(), parked_interest(token))
                .is_ok()
        {
            entry.kind = Kind::Parked;
        }
    }

    /// `drop`: the fd, no longer held, for the caller to close.
    pub fn drop_name(&self, storer: u32, name: &str) -> Result<OwnedFd, Refusal> {
        self.take(storer, name).map(Taken::into_fd)
    }

    /// Stops holding (and watching) `name`; its fd goes to the caller,
    /// who may [`put it back`](Self::put_back).
    pub fn take(&self, storer: u32, name: &str) -> Result<Taken, Refusal> {
        let mut state = lock(&self.state);
        let handed_off = state.handed_off;
        let entry = state
            .registry
            .remove(storer, name)
            .ok_or_else(|| not_held(handed_off, name))?;
        self.unwatch(&entry);
        let key = Key {
            storer,
            name: name.to_owned(),
        };
        Ok(Taken { key, entry })
    }

    /// Holds a taken fd again as it was (a request that took it failed,
    /// SPEC §3.4). Should its name have been taken meanwhile, the fd is
    /// closed by the holder thread.
    pub fn put_back(&self, taken: Taken) {
        let Taken { key, entry } = taken;
        let mut state = lock(&self.state);
        let (parked, token, storer) = (entry.kind == Kind::Parked, entry.token, key.storer);
        let name = key.name.clone();
        match state.registry.reinsert(key, entry) {
            Ok(()) if parked => {
                let entry = state.registry.get(storer, &name);
                if let Some(entry) = entry
                    && self
                        .epoll
                        .add(entry.fd.as_fd(), parked_interest(token))
                        .is_err()
                {
                    logging::error(format_args!("cannot watch {name:?} again"));
                }
            }
            Ok(()) => {}
            Err(entry) => {
                state.closing.push(entry.fd);
                drop(state);
                self.wake();
            }
        }
    }

    /// `list`: `storer`'s names under `prefix` that `visible` lets through.
    pub fn list(
        &self,
        storer: u32,
        prefix: &str,
        visible: impl Fn(&str) -> bool,
    ) -> Vec<ListedName> {
        let state = lock(&self.state);
        state
            .registry
            .listed(storer, prefix)
            .filter(|(name, _)| visible(name))
            .map(|(name, entry)| listed_name(name, entry))
            .collect()
    }

    /// Descriptors held and parked right now.
    pub fn counts(&self) -> (usize, usize) {
        lock(&self.state).registry.counts()
    }

    /// Takes a `wake` connection over: answers it, then sends it every
    /// woken name it may have.
    pub fn subscribe(&self, sub: Subscription) {
        let mut state = lock(&self.state);
        state.next_seq += 1;
        let seq = state.next_seq;
        let mut ack = Vec::new();
        HeldLine {
            id: sub.id.as_deref(),
            ok: true,
            subscribed: Some(&sub.prefix),
            storer: Some(sub.storer),
            ..HeldLine::default()
        }
        .write(&mut ack);
        let mut subscriber = Subscriber {
            stream: sub.stream,
            peer: sub.peer,
            prefix: sub.prefix,
            storer: sub.storer,
            id: sub.id,
            seq,
            outq: VecDeque::from([Queued::line(ack)]),
            closing: false,
            gone: false,
            read_closed: false,
        };
        if sub.trailing {
            refuse_more(&mut subscriber);
        }
        let entry = state.subscribers.vacant_entry();
        let key = entry.key() as u64 + SUBSCRIBER_BASE;
        // Edge-triggered: EPOLLOUT would otherwise fire for as long as the
        // socket has room.
        let interest = EpollFlags::EPOLLIN
            | EpollFlags::EPOLLRDHUP
            | EpollFlags::EPOLLOUT
            | EpollFlags::EPOLLET;
        if self
            .epoll
            .add(subscriber.stream.as_fd(), EpollEvent::new(interest, key))
            .is_ok()
        {
            entry.insert(subscriber);
        }
        // Fds that fired while nobody could take them get another look.
        let unclaimed = std::mem::take(&mut state.unclaimed);
        for token in unclaimed {
            self.rearm(&state, token);
        }
        drop(state);
        self.wake();
    }

    /// Takes a parked fd out of the epoll before it is closed: the client
    /// may still hold the same open file description, and epoll watches
    /// descriptions, not descriptors, so closing ours alone would leave
    /// the watch in place.
    fn unwatch(&self, entry: &Entry) {
        if entry.kind == Kind::Parked {
            let _ = self.epoll.delete(entry.fd.as_fd());
        }
    }

    fn rearm(&self, state: &State, token: u64) {
        if let Some(Key { storer, name }) = state.registry.key_of(token)
            && let Some(entry) = state.registry.get(*storer, name)
            && entry.kind == Kind::Parked
        {
            let mut event = parked_interest(token);
            let _ = self.epoll.modify(entry.fd.as_fd(), &mut event);
        }
    }
}

/// The holder stopped for a hand-over (SPEC §3.4): nothing is stored,
/// taken, woken or expired while this lives.
pub(super) struct Frozen<'a> {
    holder: &'a Holder,
    state: MutexGuard<'a, State>,
}

impl Holder {
    /// Stops the holder where it is, for [`Frozen::outgoing`].
    pub fn freeze(&self) -> Frozen<'_> {
        Frozen {
            holder: self,
            state: lock(&self.state),
        }
    }

    /// Holds what a previous server handed over, under the limits of
    /// this one; returns what could not be held, with why (its fd is
    /// closed by the holder thread, as every close there).
    pub fn import(&self, entries: Vec<Incoming>) -> Vec<Unheld> {
        let mut state = lock(&self.state);
        let mut refused = Vec::new();
        for entry in entries {
            let uid = entry.storer.uid;
            let storer = Arc::new(entry.storer);
            let expires = entry.expires.map(deadline_at);
            if let Err((refusal, fd)) = self.insert(
                &mut state,
                storer,
                &entry.name,
                entry.fd,
                entry.kind,
                expires,
            ) {
                // Closed by the holder thread, watched, outside the lock.
                state.closing.extend(fd);
                refused.push(Unheld {
                    name: entry.name,
                    storer: uid,
                    why: refusal,
                });
            }
        }
        drop(state);
        self.wake();
        refused
    }
}

impl Frozen<'_> {
    /// Everything held and parked, with what it needs to be held again:
    /// wake-ups queued for a subscriber and not wholly sent count as parked.
    pub fn outgoing(&self) -> Vec<Outgoing<'_>> {
        let state = &*self.state;
        let held = state.registry.entries().map(|(name, entry)| Outgoing {
            name,
            kind: entry.kind,
            storer: &entry.storer,
            expires: entry.expires.map(|(_, at)| at),
            fd: entry.fd.as_fd(),
        });
        let queued = state
            .subscribers
            .iter()
            .flat_map(|(_, sub)| sub.outq.iter())
            .filter_map(move |queued| {
                let (key, storer, expires) = queued.parked.as_ref()?;
                Some(Outgoing {
                    name: &key.name,
                    kind: Kind::Parked,
                    storer,
                    expires: expires.map(|(_, at)| at),
                    fd: queued.fd.as_ref()?.as_fd(),
                })
            });
        held.chain(queued).collect()
    }

    /// The successor holds everything now: this holder lets go of it all
    /// without closing (the descriptions live on there; ours close with
    /// the process) and closes its subscribers, who come back to the
    /// successor.
    pub fn hand_off(mut self) {
        let state = &mut *self.state;
        state.handed_off = true;
        std::mem::forget(std::mem::take(&mut state.registry));
        state.unclaimed.clear();
        for sub in state.subscribers.drain() {
            let _ = self.holder.epoll.delete(sub.stream.as_fd());
            for queued in sub.outq {
                std::mem::forget(queued.fd);
            }
        }
    }
}

/// Why `name` is not here: not held, or (after the hand-over) held by
/// the successor, whom the client should ask.
fn not_held(gone: bool, name: &str) -> Refusal {
    if gone {
        return handed_off();
    }
    Refusal::new(ErrorCode::NotFound, format!("{name:?} is not held"))
}

fn handed_off() -> Refusal {
    Refusal::busy("this server has handed over to its successor; ask again")
}

/// Asked of the socket layer, which answers `ENOTSOCK` for anything else
/// without asking its filesystem: `fstat` of an fd on a hung FUSE mount
/// would hold the worker that asks (SPEC §2).
fn is_socket(fd: &OwnedFd) -> bool {
    // A generic option every socket answers, whatever its type or family.
    nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::AcceptConn).is_ok()
}

/// Bytes waiting to be read on `fd`.
fn unread_bytes(fd: &OwnedFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return 0;
    }
    n
}

/// A subscriber sent a request: SPEC §3.4 answers `bad_request` and closes.
fn refuse_more(sub: &mut Subscriber) {
    if sub.closing {
        return;
    }
    let mut line = Vec::new();
    encode::error(
        &mut line,
        None,
        ErrorCode::BadRequest,
        "a wake connection carries nothing else",
    );
    sub.outq.push_back(Queued::line(line));
    sub.closing = true;
}

/// What happened to a parked fd.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Event {
    Readable,
    Hangup,
}

impl Event {
    fn as_str(self) -> &'static str {
        match self {
            Event::Readable => "readable",
            Event::Hangup => "hangup",
        }
    }
}

/// One round of the holder thread: the wake-ups it claimed and their
/// audit records, written together before any fd is sent.
#[derive(Default)]
struct Batch {
    pending: Vec<Pending>,
    clock: Clock,
    audit: Vec<u8>,
}

/// A wake-up whose record is in the batch: sent once the batch is written.
struct Pending {
    token: u64,
    subscriber: usize,
    event: Event,
}

/// Starts the holder thread: anew after a panic, and by the watchdog
/// when the previous one is stuck closing a descriptor.
pub(super) fn spawn(shared: Arc<Shared>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("fdopen-holder".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            while failure::catch(|| run(&shared)).is_err() {
                logging::error(format_args!("the holder failed; it starts over"));
            }
        })
        .map(drop)
}

/// The holder thread, until the watchdog abandons it in a close.
fn run(shared: &Arc<Shared>) {
    let holder = &shared.holder;
    let mut events = vec![EpollEvent::empty(); 1024];
    let mut batch = Batch::default();
    loop {
        let timeout = {
            let state = lock(&holder.state);
            let now = Instant::now();
            let mut timeout = state.registry.next_expiry(now);
            if let Some(at) = state.retry_at {
                let retry = at.saturating_duration_since(now);
                timeout = Some(timeout.map_or(retry, |t| t.min(retry)));
            }
            timeout
        };
        let timeout = timeout.map_or(EpollTimeout::NONE, |t| {
            // Round up, so an expiry is never a busy loop of zero waits.
            EpollTimeout::try_from(t + Duration::from_millis(1)).unwrap_or(EpollTimeout::NONE)
        });
        let ready = match holder.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => {
                logging::error(format_args!("holder: epoll_wait failed: {e}"));
                std::thread::sleep(Duration::from_millis(10));
                0
            }
        };
        let policy = shared.policy.load_full();
        let mut locked = lock(&holder.state);
        let state = &mut *locked;
        let mut closing: Vec<OwnedFd> = Vec::new();
        for event in &events[..ready] {
            match event.data() {
                WAKER => {
                    let _ = holder.waker.read();
                }
                key if key >= SUBSCRIBER_BASE => {
                    let key = (key - SUBSCRIBER_BASE) as usize;
                    subscriber_ready(state, key, event.events(), &mut closing);
                }
                token => {
                    let Some(key) = state.registry.key_of(token).cloned() else {
                        continue;
                    };
                    let Some(entry) = state.registry.get(key.storer, &key.name) else {
                        continue;
                    };
                    let hung_up = event.events().intersects(
                        EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR,
                    ) && unread_bytes(&entry.fd) == 0;
                    let kind = if hung_up {
                        Event::Hangup
                    } else {
                        Event::Readable
                    };
                    let fired = (token, &key, kind);
                    claim(holder, state, &policy, fired, &mut batch, &mut closing);
                }
            }
        }
        if state.retry_at.is_some_and(|at| Instant::now() >= at) {
            state.retry_at = None;
            for token in std::mem::take(&mut state.unclaimed) {
                holder.rearm(state, token);
            }
        }
        for (key, entry) in state.registry.expire(Instant::now()) {
            let ts = batch.clock.now().to_owned();
            let mut record = Record::new(&entry.storer, &ts);
            record.op = Some(if entry.kind == Kind::Parked {
                "park"
            } else {
                "store"
            });
            record.name = Some(&key.name);
            record.storer = Some(key.storer);
            record.event = Some("expired");
            record.ok = true;
            record.append_to(&mut batch.audit);
            holder.unwatch(&entry);
            closing.push(entry.fd);
        }
        // Records first: a wake-up whose record is not in the log is not
        // sent, and waits for the next try.
        let written = match shared.audit.write(&batch.audit) {
            Ok(()) => true,
            Err(e) => {
                shared.audit_failures_log.log(format_args!(
                    "audit log write failed; parked fds wait until it can be written: {}",
                    e.source
                ));
                false
            }
        };
        batch.audit.clear();
        for p in std::mem::take(&mut batch.pending) {
            if written {
                deliver(holder, state, p, &mut closing);
            } else {
                state.unclaimed.push(p.token);
                state.retry_at = Some(Instant::now() + AUDIT_RETRY);
            }
        }
        let full = full_subscribers(state);
        flush_all(holder, state, shared, &mut closing);
        if full > full_subscribers(state) {
            // A subscriber that was passed over has room again: what fired
            // meanwhile gets another look (after an upgrade, a subscriber
            // that comes back may find more than its queue holds ready).
            for token in std::mem::take(&mut state.unclaimed) {
                holder.rearm(state, token);
            }
        }
        closing.append(&mut state.closing);
        // Never under the lock, and watched: a close that blocks (a
        // socket with SO_LINGER) stalls no one (SPEC §3.4).
        drop(locked);
        if !closing.is_empty() && !holder.call.close(&shared.watchdog, closing) {
            return;
        }
    }
}

/// Subscribers passed over for now, their queues full.
fn full_subscribers(state: &State) -> usize {
    state
        .subscribers
        .iter()
        .filter(|(_, s)| s.outq.len() >= MAX_QUEUED_WAKEUPS)
        .count()
}

/// Chooses who gets a fired parked fd and writes the record of it; a
/// hang-up nobody can be told of is closed here.
fn claim(
    holder: &Holder,
    state: &mut State,
    policy: &crate::policy::Policy,
    (token, key, event): (u64, &Key, Event),
    batch: &mut Batch,
    closing: &mut Vec<OwnedFd>,
) {
    let Batch {
        pending,
        clock,
        audit,
    } = batch;
    let taken: Vec<usize> = pending.iter().map(|p| p.subscriber).collect();
    let chosen = state
        .subscribers
        .iter()
        .filter(|(k, s)| {
            !s.closing
                && s.storer == key.storer
                && key.name.starts_with(&s.prefix)
                && s.outq.len() + taken.iter().filter(|t| *t == k).count() < MAX_QUEUED_WAKEUPS
        })
        .filter_map(|(k, s)| {
            policy
                .decide_held(HeldOp::Wake, &key.name, key.storer, &s.peer)
                .ok()
                .map(|rule| (k, s.seq, rule.name.clone()))
        })
        .min_by_key(|(_, seq, _)| *seq);
    let ts = clock.now().to_owned();
    match chosen {
        Some((subscriber, _, rule)) => {
            let sub = &state.subscribers[subscriber];
            let mut record = Record::new(&sub.peer, &ts);
            record.op = Some("wake");
            record.name = Some(&key.name);
            record.storer = Some(key.storer);
            record.event = Some(event.as_str());
            record.ok = true;
            record.rule = Some(&rule);
            record.append_to(audit);
            pending.push(Pending {
                token,
                subscriber,
                event,
            });
        }
        None if event == Event::Hangup => {
            if let Some(entry) = state.registry.remove(key.storer, &key.name) {
                let mut record = Record::new(&entry.storer, &ts);
                record.op = Some("park");
                record.name = Some(&key.name);
                record.storer = Some(key.storer);
                record.event = Some("hangup");
                record.ok = true;
                record.append_to(audit);
                holder.unwatch(&entry);
                closing.push(entry.fd);
            }
        }
        None => state.unclaimed.push(token),
    }
}

/// Sends a claimed wake-up: the fd leaves the registry for the
/// subscriber's queue. A subscriber gone meanwhile puts it back to wait.
fn deliver(holder: &Holder, state: &mut State, p: Pending, closing: &mut Vec<OwnedFd>) {
    let Some(key) = state.registry.key_of(p.token).cloned() else {
        return;
    };
    if !state.subscribers.contains(p.subscriber) || state.subscribers[p.subscriber].closing {
        state.unclaimed.push(p.token);
        holder.rearm(state, p.token);
        return;
    }
    let Some(entry) = state.registry.remove(key.storer, &key.name) else {
        return;
    };
    let Entry {
        fd,
        expires,
        storer,
        ..
    } = entry;
    let _ = holder.epoll.delete(fd.as_fd());
    let sub = &mut state.subscribers[p.subscriber];
    let mut line = Vec::new();
    HeldLine {
        id: sub.id.as_deref(),
        ok: true,
        fd: p.event == Event::Readable,
        name: Some(&key.name),
        event: Some(p.event.as_str()),
        storer: Some(key.storer),
        ..HeldLine::default()
    }
    .write(&mut line);
    match p.event {
        Event::Readable => sub.outq.push_back(Queued {
            bytes: line,
            sent: 0,
            fd: Some(fd),
            parked: Some((key, storer, expires)),
        }),
        Event::Hangup => {
            sub.outq.push_back(Queued::line(line));
            closing.push(fd);
        }
    }
}

fn subscriber_ready(state: &mut State, key: usize, events: EpollFlags, closing: &mut Vec<OwnedFd>) {
    let Some(sub) = state.subscribers.get_mut(key) else {
        return;
    };
    if events.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
        sub.gone = true;
        return;
    }
    // A subscriber that shut its write side only (EPOLLRDHUP, then end
    // of stream) still reads its wake-ups.
    if events.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP) && !sub.read_closed {
        let mut buf = [0u8; 512];
        match fdpass::recv(sub.stream.as_fd(), &mut buf) {
            Ok(r) if r.bytes == 0 => sub.read_closed = true,
            Ok(r) => {
                closing.extend(r.fds);
                refuse_more(sub);
            }
            Err(_) => {}
        }
    }
}

/// Removes a subscriber. What it had queued and not yet received is
/// parked again, to wait for the next subscriber (SPEC §3.4).
fn drop_subscriber(holder: &Holder, state: &mut State, key: usize, closing: &mut Vec<OwnedFd>) {
    let sub = state.subscribers.remove(key);
    let _ = holder.epoll.delete(sub.stream.as_fd());
    for queued in sub.outq {
        match (queued.fd, queued.parked) {
            (Some(fd), Some((key, storer, expires))) => {
                if let Err((_, fd)) =
                    holder.insert(state, storer, &key.name, fd, Kind::Parked, expires)
                {
                    closing.extend(fd);
                }
            }
            (fd, _) => closing.extend(fd),
        }
    }
    closing.push(sub.stream.into());
}

/// Writes what each subscriber has queued, as far as its socket takes it,
/// and removes the subscribers that are done or gone.
fn flush_all(holder: &Holder, state: &mut State, shared: &Shared, closing: &mut Vec<OwnedFd>) {
    let mut done = Vec::new();
    for (key, sub) in state.subscribers.iter_mut() {
        while !sub.gone
            && let Some(queued) = sub.outq.front_mut()
        {
            // The fd goes with the line's first byte; ours is kept until
            // the line is whole at the client (see [`Queued::fd`]).
            let fd = queued.fd.as_ref().filter(|_| queued.sent == 0);
            match fdpass::send(
                sub.stream.as_fd(),
                &queued.bytes[queued.sent..],
                fd.map(|f| f.as_fd()),
            ) {
                Ok(n) => {
                    queued.sent += n;
                    if queued.sent == queued.bytes.len() {
                        let sent = sub.outq.pop_front().expect("the front one");
                        closing.extend(sent.fd);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => sub.gone = true,
            }
        }
        if sub.gone || (sub.closing && sub.outq.is_empty()) {
            done.push(key);
        }
    }
    for key in done {
        drop_subscriber(holder, state, key, closing);
        shared.subscriber_left();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that reaches the holder after the hand-over (a lane still
    /// answering when the upgrade stopped waiting for it) is refused, not
    /// held where it would die with this process (SPEC §3.4).
    #[test]
    fn nothing_is_held_after_the_hand_over() {
        let holder = Holder::new(HeldLimits::default()).unwrap();
        let me = Arc::new(PeerIdentity::current());
        let fd = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        holder
            .hold(me.clone(), "before", fd(), Kind::Held, None)
            .ok()
            .unwrap();
        let frozen = holder.freeze();
        assert_eq!(frozen.outgoing().len(), 1);
        frozen.hand_off();
        let (refusal, back) = holder
            .hold(me.clone(), "after", fd(), Kind::Held, None)
            .err()
            .unwrap();
        assert_eq!(refusal.code, ErrorCode::Busy);
        assert!(back.is_some(), "the fd goes back to be closed");
        let busy = |r: Result<Taken, Refusal>| r.err().map(|r| r.code);
        assert_eq!(busy(holder.take(me.uid, "before")), Some(ErrorCode::Busy));
        assert_eq!(holder.counts(), (0, 0));
    }

    /// A handed-over fd this server refuses is not closed by the thread
    /// that imports, under the holder lock: a close can block (a socket
    /// with `SO_LINGER`), so it goes to the holder thread's watched close.
    #[test]
    fn a_refused_hand_over_entry_is_closed_by_the_holder_thread() {
        let limits = HeldLimits {
            total: 1,
            per_uid: 1,
        };
        let holder = Holder::new(limits).unwrap();
        let me = PeerIdentity::current();
        let (r, w) = nix::unistd::pipe().unwrap();
        let entry = |name: &str, fd: OwnedFd| Incoming {
            name: name.to_owned(),
            kind: Kind::Held,
            storer: me.clone(),
            expires: None,
            fd,
        };
        let refused = holder.import(vec![
            entry(
                "kept",
                OwnedFd::from(std::fs::File::open("/dev/null").unwrap()),
            ),
            entry("refused", w),
        ]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].name, "refused");
        // Still open: the pipe's only writer has not been closed yet.
        let mut poll = [nix::poll::PollFd::new(
            r.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut poll, nix::poll::PollTimeout::ZERO).unwrap();
        assert!(poll[0].revents().unwrap().is_empty(), "closed at import");
        assert_eq!(lock(&holder.state).closing.len(), 1);
    }
}
