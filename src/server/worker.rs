//! The event loop: a few lanes, each an epoll instance with its own
//! connections, served by one thread at a time.
//!
//! A lane's state (its [`Core`]) sits behind a mutex that its thread holds
//! except while it makes a request's filesystem calls. If such a call
//! hangs, the watchdog abandons that thread where it is and starts a new
//! one on the same lane, which finds the core exactly as the old thread
//! left it: the request in flight gets a slot in its connection's queue
//! that waits for the stuck call's outcome or for `--fs-timeout`, and
//! every other client on the lane is served on as before.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use slab::Slab;

use super::connection::{Connection, MAX_QUEUED_RESPONSES, Outgoing, say_busy};
use super::dispatch::{self, Begun, FilesystemJob};
use super::holder::Subscription;
use super::stats::Recorder;
use super::watchdog::{CallWatch, Delivery, Polled, Watched};
use super::{Shared, failure, lock};
use crate::audit::Clock;
use crate::decision::{Refusal, Scratch};
use crate::logging;
use crate::peer::PeerIdentity;
use crate::policy::Policy;
use crate::protocol::{ErrorCode, parse_request};

/// Bytes read from a client in one go.
const READ_CHUNK: usize = 64 * 1024;
/// How long shutdown waits for clients to take their last responses.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Out of descriptors with no spare to answer `busy` with: how long the
/// listener rests before the next try, instead of waking us in a spin.
const LISTENER_REST: Duration = Duration::from_millis(5);

const LISTENER: u64 = u64::MAX;
const WAKER: u64 = u64::MAX - 1;

/// What other threads need of one lane.
pub(super) struct Lane {
    pub waker: EventFd,
    /// Connections served here, for balancing.
    pub load: AtomicUsize,
    /// Connections handed over by the lane that accepted them.
    pub inbox: std::sync::Mutex<Vec<UnixStream>>,
    pub core: std::sync::Mutex<Core>,
    pub call: CallWatch,
}

impl Lane {
    pub fn new(index: usize, shared_listener: &impl AsFd) -> io::Result<Lane> {
        let waker =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        // EPOLLEXCLUSIVE: one lane wakes per new connection, not all.
        epoll.add(shared_listener.as_fd(), listener_event())?;
        epoll.add(waker.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKER))?;
        Ok(Lane {
            waker,
            load: AtomicUsize::new(0),
            inbox: std::sync::Mutex::new(Vec::new()),
            core: std::sync::Mutex::new(Core::new(index, epoll)),
            call: CallWatch::default(),
        })
    }

    pub fn wake(&self) {
        let _ = self.waker.write(1);
    }
}

fn listener_event() -> EpollEvent {
    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, LISTENER)
}

/// The request whose filesystem call runs while the core is unlocked:
/// its connection and line, for a thread that takes the lane over.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    key: usize,
    start: usize,
    end: usize,
}

/// A lane's event loop state.
pub(super) struct Core {
    /// This lane's place in `Shared::lanes`.
    index: usize,
    epoll: Epoll,
    conns: Slab<Connection>,
    read_buf: Vec<u8>,
    audit_buf: Vec<u8>,
    clock: Clock,
    /// Connections to answer and flush in this round, and how far the
    /// answering got (a thread taking over resumes there).
    active: Vec<usize>,
    cursor: usize,
    /// Connections with answerable lines left over from the last round.
    pending: Vec<usize>,
    in_flight: Option<InFlight>,
    /// Connections with a slot waiting for an abandoned call.
    waiting: Vec<usize>,
    /// Descriptors to close, outside the lock and watched.
    closing: Vec<OwnedFd>,
    listening: bool,
    listener_rest_until: Option<Instant>,
    last_sweep: Instant,
    stop_deadline: Option<Instant>,
    /// Stopped from reading and accepting for an upgrade, and the pause
    /// this lane last said it was quiet in.
    paused: bool,
    quiet_in: u64,
}

impl Core {
    fn new(index: usize, epoll: Epoll) -> Core {
        Core {
            index,
            epoll,
            conns: Slab::new(),
            read_buf: vec![0; READ_CHUNK],
            audit_buf: Vec::with_capacity(16 * 1024),
            clock: Clock::default(),
            active: Vec::new(),
            cursor: 0,
            pending: Vec::new(),
            in_flight: None,
            waiting: Vec::new(),
            closing: Vec::new(),
            listening: true,
            listener_rest_until: None,
            last_sweep: Instant::now(),
            stop_deadline: None,
            paused: false,
            quiet_in: 0,
        }
    }
}

/// Starts a thread serving lane `index`; `taking_over` when the previous
/// thread was abandoned in a filesystem call.
pub(super) fn spawn_lane(
    shared: Arc<Shared>,
    index: usize,
    taking_over: Option<Arc<Delivery>>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("fdopen-worker-{index}"))
        .stack_size(256 * 1024)
        .spawn(move || {
            set_nice(shared.config.worker_nice);
            let mut taking_over = taking_over;
            // Requests catch their own failures; this is for the rest of
            // the loop: the lane is served on, never left with clients.
            while failure::catch(|| serve_lane(&shared, index, taking_over.take())).is_err() {
                logging::error(format_args!("worker {index} failed; it starts over"));
            }
        })
        .map(drop)
}

/// A lane's turn at busy-polling. A polling lane holds a CPU, which the
/// clients it waits for need as well: at 4 clients of one request each on
/// 2 CPUs, two polling lanes cost a quarter of the rate and doubled p99,
/// where one polling lane keeps what polling wins for one client alone.
/// So at most [`Poller::most`] lanes poll at once; the others sleep.
struct Poller<'a>(&'a AtomicUsize);

impl<'a> Poller<'a> {
    /// Lanes that may poll at once: half of them, at least one.
    fn most(lanes: usize) -> usize {
        (lanes / 2).max(1)
    }

    /// A turn, if fewer than `most` lanes counted in `polling` have one.
    /// The count goes up only with a turn given, so a lane turned away
    /// never makes another one look refused.
    fn enter(polling: &'a AtomicUsize, most: usize) -> Option<Poller<'a>> {
        polling
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < most).then_some(n + 1)
            })
            .ok()
            .map(|_| Poller(polling))
    }
}

impl Drop for Poller<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The niceness of the server's threads other than workers.
static SERVER_NICE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Gives a thread that a worker started the niceness of the server's
/// other threads: it inherited the worker's, which is for workers alone.
pub(super) fn unset_nice() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let nice = SERVER_NICE.load(Ordering::Relaxed);
    // SAFETY: setpriority reads nothing of ours. Should it be refused, the
    // thread keeps the worker's niceness, which set_nice has warned of.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
}

/// Gives this thread the niceness `nice`. Without the right to raise its
/// priority (a server not run as root, nor with `CAP_SYS_NICE`), the
/// thread stays as it is, and says so once.
pub(super) fn set_nice(nice: i32) {
    static REFUSED: std::sync::Once = std::sync::Once::new();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // What it had from the thread that started it, the server's own: for
    // threads a worker starts (see `unset_nice`).
    // SAFETY: getpriority reads nothing of ours.
    let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    SERVER_NICE.store(before, Ordering::Relaxed);
    // SAFETY: setpriority reads nothing of ours; the niceness of one
    // thread (PRIO_PROCESS with a thread id) is a Linux guarantee.
    let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if set != 0 {
        let error = io::Error::last_os_error();
        REFUSED.call_once(|| {
            logging::warn(format_args!(
                "workers keep their niceness: --worker-nice {nice} refused: {error}"
            ));
        });
    }
}

/// A lane thread's life: rounds of wait, answer, flush, until shutdown or
/// until it is abandoned in a filesystem call.
fn serve_lane(shared: &Arc<Shared>, index: usize, taking_over: Option<Arc<Delivery>>) {
    let lane = &shared.lanes[index];
    let mut scratch = Scratch::default();
    let mut events = vec![EpollEvent::empty(); 512];
    let mut core = lock(&lane.core);
    if let Some(delivery) = taking_over {
        core.take_over(delivery, shared.config.audit_metadata);
    }
    loop {
        // Answer, running each filesystem call with the core unlocked.
        // The round's requests are decided under the policy it began with.
        let policy = shared.policy.load_full();
        while let Some((key, job, peer)) =
            core.answer_until_filesystem(shared, &policy, &mut scratch)
        {
            drop(core);
            let env = dispatch::JobEnv {
                audit: &shared.audit,
                protected: &shared.protected,
            };
            let run = || {
                failure::catch(|| job.run(&policy, &peer, &mut scratch, &env))
                    .unwrap_or_else(|failure::Panicked| Err(failure::refusal()))
            };
            match lane.call.run(&shared.watchdog, peer.uid, run) {
                Watched::Finished(outcome) => {
                    core = lock(&lane.core);
                    core.in_flight = None;
                    core.finish(shared, key, &job, outcome);
                }
                Watched::Abandoned(outcome, delivery) => {
                    // Too late: the client was told io_error, so nothing
                    // it created stays; dropping the file closes it here.
                    if let Some(Ok(late)) = delivery.deliver(outcome)
                        && let Some(created) = late.created()
                    {
                        created.remove();
                    }
                    lane.wake();
                    shared.watchdog.stuck.remove(delivery.uid);
                    return;
                }
            }
        }
        core.end_round(shared);
        core.follow_pause(shared);
        // Decided before the closes, so that those of the connections it
        // ends are made too.
        let stopped = shared.stopping.load(Ordering::SeqCst) && core.ready_to_stop(shared);
        if !core.closing.is_empty() {
            let closing = std::mem::take(&mut core.closing);
            drop(core);
            if !lane.call.close(&shared.watchdog, closing) {
                // The thread taking over ends the lane, if it is stopped.
                return;
            }
            core = lock(&lane.core);
        }
        if stopped {
            shared.lane_exited();
            return;
        }
        if core.last_sweep.elapsed() >= core.sweep_interval(shared) {
            core.sweep_idle(shared);
        }
        let ready = core.wait(shared, &mut events);
        core.begin_round(shared, &events[..ready]);
    }
}

impl Core {
    /// A new thread found the lane as an abandoned one left it: the
    /// request in flight gets a slot that waits for its outcome.
    fn take_over(&mut self, delivery: Arc<Delivery>, audit_metadata: bool) {
        // None: the abandoned call was closing descriptors.
        let Some(InFlight { key, start, end }) = self.in_flight.take() else {
            return;
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let parsed = parse_request(&conn.inbuf[start..end]);
        let job = match parsed.request {
            Ok(request) => dispatch::rebuild_job(request, parsed.id, audit_metadata),
            Err(_) => None,
        };
        match job {
            Some(job) => {
                conn.outq.push_back(Outgoing::waiting_for(delivery, job));
                self.waiting.push(key);
            }
            // Cannot happen: the line parsed into this very job before.
            None => conn.outq.push_back(Outgoing::error(
                ErrorCode::IoError,
                "request lost while the filesystem hung",
                None,
            )),
        }
    }

    /// Answers the lines of the active connections from where the round
    /// got to, until one needs the filesystem: that job is returned, with
    /// its connection and client, and marked in flight.
    fn answer_until_filesystem(
        &mut self,
        shared: &Shared,
        policy: &Policy,
        scratch: &mut Scratch,
    ) -> Option<(usize, FilesystemJob, Arc<PeerIdentity>)> {
        let max_request = shared.config.max_request;
        let handing_over = self.handing_over(shared);
        while let Some(&key) = self.active.get(self.cursor) {
            if let Some(conn) = self.conns.get_mut(key) {
                while conn.outq.len() < MAX_QUEUED_RESPONSES && !handing_over {
                    if conn.subscription.is_some() {
                        break;
                    }
                    let Some((start, end)) = conn.next_line() else {
                        break;
                    };
                    if end + 1 - start > max_request {
                        refuse_oversized_line(
                            conn,
                            max_request,
                            self.clock.now(),
                            &mut Recorder::new(&mut self.audit_buf, &shared.stats),
                            &mut self.closing,
                        );
                        break;
                    }
                    conn.answered = end + 1;
                    let ts = self.clock.now();
                    let attachment =
                        conn.attachment_for((start, end), dispatch::takes_fd, &mut self.closing);
                    let line = &conn.inbuf[start..end];
                    let audit_mark = self.audit_buf.len();
                    let begun = failure::catch(|| {
                        dispatch::begin(
                            policy,
                            shared,
                            &conn.peer,
                            line,
                            attachment,
                            scratch,
                            ts,
                            &mut Recorder::new(&mut self.audit_buf, &shared.stats),
                            &mut self.closing,
                        )
                    })
                    .unwrap_or_else(|failure::Panicked| {
                        self.audit_buf.truncate(audit_mark);
                        let mut audit = Recorder::new(&mut self.audit_buf, &shared.stats);
                        Begun::Answered(failure::answer(&conn.peer, ts, &mut audit))
                    });
                    match begun {
                        Begun::Answered(out) => conn.outq.push_back(out),
                        Begun::Subscribe(sub) => {
                            conn.subscription = Some(sub);
                            break;
                        }
                        Begun::NeedsFilesystem(job)
                            if !shared.watchdog.stuck.admits(conn.peer.uid) =>
                        {
                            let busy =
                                Refusal::busy("too many filesystem calls are stuck; try later");
                            let out = dispatch::finish(
                                &job,
                                Err(busy),
                                &conn.peer,
                                ts,
                                &mut Recorder::new(&mut self.audit_buf, &shared.stats),
                            );
                            conn.outq.push_back(out);
                        }
                        Begun::NeedsFilesystem(job) => {
                            self.in_flight = Some(InFlight { key, start, end });
                            return Some((key, job, conn.peer.clone()));
                        }
                    }
                }
                if conn.overlong_partial_line(max_request) {
                    let mut audit = Recorder::new(&mut self.audit_buf, &shared.stats);
                    let ts = self.clock.now();
                    refuse_oversized_line(conn, max_request, ts, &mut audit, &mut self.closing);
                }
            }
            self.cursor += 1;
        }
        None
    }

    /// Queues the response of a job that ran on this thread.
    fn finish(
        &mut self,
        shared: &Shared,
        key: usize,
        job: &FilesystemJob,
        mut outcome: dispatch::Outcome,
    ) {
        self.closing.extend(dispatch::take_pinned(&mut outcome));
        let ts = self.clock.now();
        match self.conns.get_mut(key) {
            Some(conn) => {
                let out = finish_caught(&mut self.audit_buf, shared, job, outcome, &conn.peer, ts);
                conn.outq.push_back(out);
            }
            None => {
                // The client left meanwhile (only a sweep can do that, and
                // sweeps wait for the lock): close what it was granted.
                if let Ok(granted) = outcome {
                    self.closing.extend(granted.into_file().map(OwnedFd::from));
                }
            }
        }
    }

    /// Fills the slots whose abandoned call came back or timed out.
    fn resolve_waiting(&mut self, shared: &Shared) {
        if self.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        let keys = std::mem::take(&mut self.waiting);
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let mut still_waiting = false;
            for out in conn.outq.iter_mut() {
                let Some((delivery, job)) = &out.waiting else {
                    continue;
                };
                let outcome = match delivery.poll(now) {
                    Polled::Waiting => {
                        still_waiting = true;
                        continue;
                    }
                    Polled::Arrived(mut outcome) => {
                        // Closed watched, like the handle of a job that
                        // ran here: this one's filesystem hung once.
                        self.closing.extend(dispatch::take_pinned(&mut outcome));
                        outcome
                    }
                    Polled::TimedOut => {
                        shared.stats.fs_timeouts.fetch_add(1, Ordering::Relaxed);
                        Err(Refusal::new(
                            ErrorCode::IoError,
                            "the filesystem did not answer within --fs-timeout",
                        ))
                    }
                };
                let ts = self.clock.now();
                *out = finish_caught(&mut self.audit_buf, shared, job, outcome, &conn.peer, ts);
            }
            if still_waiting {
                self.waiting.push(key);
            }
            self.active.push(key);
        }
    }

    /// Writes the round's audit records, then sends what they cover.
    fn end_round(&mut self, shared: &Shared) {
        let kept = match shared.audit.write(&self.audit_buf) {
            Ok(()) => usize::MAX,
            Err(e) => {
                shared.audit_failures_log.log(format_args!(
                    "audit log write failed; grants whose records it lacks are refused io_error ({} failures so far): {}",
                    shared.audit.failures(),
                    e.source
                ));
                e.kept
            }
        };
        self.audit_buf.clear();
        let handing_over = self.handing_over(shared);
        let active = std::mem::take(&mut self.active);
        for &key in &active {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            for out in conn.outq.iter_mut() {
                let Some(end) = out.audit_end.take() else {
                    continue;
                };
                let after = std::mem::take(&mut out.after_record);
                if end > kept && out.grants {
                    // No grant leaves without its record in the log: what
                    // it created goes, what it took goes back.
                    drop(after);
                    let refused = Outgoing::error(
                        ErrorCode::IoError,
                        "the audit log cannot be written; nothing is granted until it can",
                        None,
                    );
                    let granted = std::mem::replace(out, refused);
                    self.closing.extend(granted.fd.map(OwnedFd::from));
                    continue;
                }
                let truncate = after.truncate;
                out.held = after.keep();
                if truncate
                    && let Some(file) = &out.fd
                    && let Err(e) = file.set_len(0)
                {
                    logging::error(format_args!("truncating a granted file failed: {e}"));
                    let refused =
                        Outgoing::error(ErrorCode::IoError, &format!("cannot truncate: {e}"), None);
                    let granted = std::mem::replace(out, refused);
                    self.closing.extend(granted.fd.map(OwnedFd::from));
                }
            }
            conn.flush(&mut self.closing);
            let trailing = conn.answered < conn.inbuf.len();
            conn.drop_answered_lines(&mut self.closing);
            let waiting = conn.waiting_fds();
            shared
                .fd_quota
                .update(conn.peer.uid, &mut conn.fds_counted, waiting);
            if conn.subscription.is_some() && conn.outq.is_empty() {
                self.hand_to_holder(shared, key, trailing);
                continue;
            }
            if conn.finished() {
                self.close(shared, key);
                continue;
            }
            if conn.can_answer() && !handing_over {
                self.pending.push(key);
            }
            set_interest(&self.epoll, key, conn, self.paused);
        }
        self.active = active;
        self.active.clear();
        self.cursor = 0;
    }

    /// Takes in the ready events: the connections they concern (and those
    /// left over) become this round's active set.
    fn begin_round(&mut self, shared: &Shared, events: &[EpollEvent]) {
        let index = self.index;
        std::mem::swap(&mut self.active, &mut self.pending);
        for event in events {
            match event.data() {
                LISTENER if !self.paused => self.accept_ready(shared),
                LISTENER => {}
                WAKER => {
                    let lane = &shared.lanes[index];
                    let _ = lane.waker.read();
                    let handed = std::mem::take(&mut *lock(&lane.inbox));
                    for stream in handed {
                        self.register(shared, stream);
                    }
                }
                key => self.on_ready(shared, key as usize, event.events(), self.paused),
            }
        }
        self.resolve_waiting(shared);
        if self
            .listener_rest_until
            .is_some_and(|until| Instant::now() >= until)
        {
            self.listener_rest_until = None;
            if !shared.stopping.load(Ordering::SeqCst)
                && !self.paused
                && self
                    .epoll
                    .add(shared.listener.as_fd(), listener_event())
                    .is_ok()
            {
                self.listening = true;
            }
        }
        self.active.sort_unstable();
        self.active.dedup();
        self.cursor = 0;
    }

    /// Waits for events. Before sleeping, polls for a short while: a client
    /// answered a moment ago usually asks again within microseconds, and
    /// catching that without a sleep and wake-up (costly, above all on
    /// virtual machines) is worth more than the few microseconds polled.
    fn wait(&self, shared: &Shared, events: &mut [EpollEvent]) -> usize {
        let timeout = if self.pending.is_empty() {
            self.next_deadline(shared)
        } else {
            Duration::ZERO
        };
        let poll = |events: &mut [EpollEvent], timeout: EpollTimeout| match self
            .epoll
            .wait(events, timeout)
        {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => {
                logging::error(format_args!("epoll_wait failed: {e}"));
                std::thread::sleep(Duration::from_millis(10));
                0
            }
        };
        let spin = shared.config.busy_poll;
        // A --busy-poll too long for the clock polls not at all.
        if !timeout.is_zero()
            && !spin.is_zero()
            && let Some(until) = Instant::now().checked_add(spin)
            && let Some(_turn) = Poller::enter(&shared.polling, Poller::most(shared.lanes.len()))
        {
            while Instant::now() < until {
                let ready = poll(events, EpollTimeout::ZERO);
                if ready > 0 {
                    return ready;
                }
                // Let a thread that is ready on this CPU (often the very client
                // about to ask) run rather than spinning past it.
                std::thread::yield_now();
            }
        }
        poll(
            events,
            EpollTimeout::try_from(timeout).unwrap_or(EpollTimeout::NONE),
        )
    }

    /// The longest this lane may sleep: until the next idle sweep, the
    /// next waiting slot's deadline, or the end of a listener rest.
    fn next_deadline(&self, shared: &Shared) -> Duration {
        let now = Instant::now();
        let mut timeout = self.sweep_interval(shared);
        if shared.stopping.load(Ordering::SeqCst) {
            timeout = timeout.min(Duration::from_millis(50));
        }
        if let Some(until) = self.listener_rest_until {
            timeout = timeout.min(until.saturating_duration_since(now));
        }
        for &key in &self.waiting {
            let deadlines = self.conns.get(key).into_iter().flat_map(|c| {
                c.outq
                    .iter()
                    .filter_map(|o| o.waiting.as_ref().map(|(d, _)| d.deadline))
            });
            for deadline in deadlines {
                timeout = timeout.min(deadline.saturating_duration_since(now));
            }
        }
        timeout
    }

    fn sweep_interval(&self, shared: &Shared) -> Duration {
        (shared.config.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// Shutting down: stop listening, then let clients take the answers
    /// already due. True once the lane is done.
    fn ready_to_stop(&mut self, shared: &Shared) -> bool {
        let deadline = match self.stop_deadline {
            Some(deadline) => deadline,
            None => {
                if self.listening {
                    let _ = self.epoll.delete(shared.listener.as_fd());
                    self.listening = false;
                }
                for (_, conn) in self.conns.iter_mut() {
                    conn.read_done = true;
                }
                *self.stop_deadline.insert(Instant::now() + SHUTDOWN_GRACE)
            }
        };
        let handing_over = self.handing_over(shared);
        let done: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.outq.is_empty() && (handing_over || !c.can_answer()))
            .map(|(k, _)| k)
            .collect();
        for key in done {
            self.close(shared, key);
        }
        self.conns.is_empty() || Instant::now() >= deadline
    }

    fn accept_ready(&mut self, shared: &Shared) {
        let mut admitted = Vec::new();
        {
            // Accepts are serialised with the spare descriptor, so no other
            // lane's accept can take the slot the spare frees.
            let mut spare = lock(&shared.spare_fd);
            // The spare comes first: if a request's open took the slot it
            // freed, the next free slot restores it before any client gets
            // it, or every later client would meet EMFILE with nothing to
            // answer `busy` with.
            if spare.is_none() {
                *spare = open_spare();
                if spare.is_none() {
                    self.rest_listener(shared);
                    return;
                }
            }
            // Bounded so a connection storm cannot starve existing clients.
            for _ in 0..64 {
                match shared.listener.accept() {
                    Ok((stream, _)) => admitted.push(stream),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                        shared.fd_exhaustion_log.log(format_args!(
                            "out of file descriptors: new clients are told busy"
                        ));
                        if spare.take().is_some()
                            && let Ok((stream, _)) = shared.listener.accept()
                        {
                            say_busy(&stream, "server is out of file descriptors");
                        }
                        *spare = open_spare();
                        if spare.is_none() {
                            // Nothing to answer with: rest the listener
                            // rather than spin on it.
                            self.rest_listener(shared);
                        }
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break, // ECONNABORTED and the like: that client is gone
                }
            }
        }
        for stream in admitted {
            self.admit(shared, stream);
        }
    }

    fn rest_listener(&mut self, shared: &Shared) {
        if self.listening && self.epoll.delete(shared.listener.as_fd()).is_ok() {
            self.listening = false;
            self.listener_rest_until = Some(Instant::now() + LISTENER_REST);
        }
    }

    /// Counts a new client in, then serves it here or, if another lane
    /// has fewer clients, hands it over: whichever lane the kernel woke
    /// to accept, connections spread evenly.
    fn admit(&mut self, shared: &Shared, stream: UnixStream) {
        let index = self.index;
        let clients = shared.clients.fetch_add(1, Ordering::Relaxed);
        if clients >= shared.config.max_clients {
            shared.clients.fetch_sub(1, Ordering::Relaxed);
            say_busy(&stream, "too many clients");
            // Descriptors it sent may be queued on it: closed watched.
            self.closing.push(stream.into());
            return;
        }
        let lanes = &shared.lanes;
        let target = (0..lanes.len())
            .min_by_key(|&i| (lanes[i].load.load(Ordering::Relaxed), i != index))
            .unwrap_or(index);
        lanes[target].load.fetch_add(1, Ordering::Relaxed);
        if target == index {
            self.register(shared, stream);
        } else {
            lock(&lanes[target].inbox).push(stream);
            lanes[target].wake();
        }
    }

    /// Starts serving a counted-in client on this lane.
    fn register(&mut self, shared: &Shared, stream: UnixStream) {
        let index = self.index;
        let setup = stream
            .set_nonblocking(true)
            .and_then(|()| PeerIdentity::of(&stream));
        // A client we cannot serve may have sent descriptors already:
        // its socket is closed watched, like any connection's.
        let peer = match setup {
            Ok(peer) => Arc::new(peer),
            Err(_) => {
                shared.forget_client(index);
                self.closing.push(stream.into());
                return;
            }
        };
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if self
            .epoll
            .add(stream.as_fd(), EpollEvent::new(interest, key as u64))
            .is_err()
        {
            shared.forget_client(index);
            self.closing.push(stream.into());
            return;
        }
        entry.insert(Connection::new(stream, peer, interest));
    }

    fn on_ready(&mut self, shared: &Shared, key: usize, events: EpollFlags, paused: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // closed earlier in this round
        };
        if events.intersects(
            EpollFlags::EPOLLIN
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLHUP
                | EpollFlags::EPOLLERR,
        ) && conn.wants_input()
            && !paused
            && !conn.has_complete_line()
        {
            conn.read(&mut self.read_buf, &mut self.closing);
            let waiting = conn.waiting_fds();
            if !shared
                .fd_quota
                .update(conn.peer.uid, &mut conn.fds_counted, waiting)
            {
                // More descriptors waiting than allowed: disconnected, and
                // they are closed (watched) with the round's others.
                conn.abandon_output(&mut self.closing);
                shared
                    .fd_quota
                    .update(conn.peer.uid, &mut conn.fds_counted, 0);
            }
        }
        if events.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            // Nobody is left to read the answers.
            conn.abandon_output(&mut self.closing);
        }
        self.active.push(key);
    }

    /// A connection whose `wake` was accepted, with every earlier response
    /// sent, leaves the lane for the holder; it stays counted as a client.
    fn hand_to_holder(&mut self, shared: &Shared, key: usize, trailing: bool) {
        let mut conn = self.conns.remove(key);
        let _ = self.epoll.delete(conn.stream.as_fd());
        conn.release_fds(&mut self.closing);
        shared
            .fd_quota
            .update(conn.peer.uid, &mut conn.fds_counted, 0);
        shared.lanes[self.index]
            .load
            .fetch_sub(1, Ordering::Relaxed);
        let sub = conn.subscription.expect("checked by the caller");
        shared.holder.subscribe(Subscription {
            stream: conn.stream,
            peer: conn.peer,
            prefix: sub.prefix,
            storer: sub.storer,
            id: sub.id,
            trailing: trailing || !conn.inbuf.is_empty(),
        });
    }

    fn close(&mut self, shared: &Shared, key: usize) {
        let mut conn = self.conns.remove(key);
        let _ = self.epoll.delete(conn.stream.as_fd());
        conn.abandon_output(&mut self.closing);
        // Abandoned slots hold nothing to close until they are answered.
        shared
            .fd_quota
            .update(conn.peer.uid, &mut conn.fds_counted, 0);
        // Closing the socket closes the descriptors still queued on it,
        // unread: watched too.
        self.closing.push(conn.stream.into());
        shared.forget_client(self.index);
    }

    /// Disconnects clients idle or stuck mid-line for longer than the timeout.
    fn sweep_idle(&mut self, shared: &Shared) {
        let now = Instant::now();
        self.last_sweep = now;
        let timeout = shared.config.idle_timeout;
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| now.duration_since(c.last_active) > timeout)
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            self.close(shared, key);
        }
    }
}

/// [`dispatch::finish`], whose panic fails its request alone (SPEC §2).
fn finish_caught(
    audit_buf: &mut Vec<u8>,
    shared: &Shared,
    job: &FilesystemJob,
    outcome: dispatch::Outcome,
    peer: &PeerIdentity,
    ts: &str,
) -> Outgoing {
    let audit_mark = audit_buf.len();
    failure::catch(|| {
        let mut audit = Recorder::new(audit_buf, &shared.stats);
        dispatch::finish(job, outcome, peer, ts, &mut audit)
    })
    .unwrap_or_else(|failure::Panicked| {
        audit_buf.truncate(audit_mark);
        failure::answer(peer, ts, &mut Recorder::new(audit_buf, &shared.stats))
    })
}

impl Core {
    /// Follows an upgrade's pause (SPEC §3.4): stop accepting and
    /// reading, answer what was read, say so once done; or take up
    /// serving again.
    fn follow_pause(&mut self, shared: &Shared) {
        let on = shared.pause.is_on();
        if on != self.paused {
            self.paused = on;
            let stopping = shared.stopping.load(Ordering::SeqCst);
            if on && self.listening {
                let _ = self.epoll.delete(shared.listener.as_fd());
                self.listening = false;
                self.listener_rest_until = None;
            } else if !on && !stopping && !self.listening {
                self.listening = self
                    .epoll
                    .add(shared.listener.as_fd(), listener_event())
                    .is_ok();
            }
            for (key, conn) in self.conns.iter_mut() {
                set_interest(&self.epoll, key, conn, on);
                if !on && conn.can_answer() {
                    self.pending.push(key);
                }
            }
        }
        let generation = shared.pause.generation();
        let quiet = self.in_flight.is_none()
            && self.waiting.is_empty()
            && self.pending.is_empty()
            && !self.conns.iter().any(|(_, c)| c.can_answer());
        if on && quiet && self.quiet_in != generation {
            self.quiet_in = generation;
            shared.pause.lane_quiet(generation);
        }
    }
}

impl Core {
    /// This lane said it had answered what it could in the current pause:
    /// the holder may be on its way to a successor, so it answers nothing
    /// more (what it would store or take there would be lost) until the
    /// pause ends. Lines left unanswered go with their connections.
    fn handing_over(&self, shared: &Shared) -> bool {
        self.paused && self.quiet_in == shared.pause.generation()
    }
}

/// Watches `conn` for what it needs; while paused, for nothing but
/// taking the answers already due.
fn set_interest(epoll: &Epoll, key: usize, conn: &mut Connection, paused: bool) {
    let mut want = conn.desired_interest();
    if paused {
        want &= EpollFlags::EPOLLOUT;
    }
    if want != conn.interest {
        let mut event = EpollEvent::new(want, key as u64);
        if epoll.modify(conn.stream.as_fd(), &mut event).is_ok() {
            conn.interest = want;
        }
    }
}

/// A line longer than the limit: framing is lost, so the client gets a
/// `bad_request` and nothing more is read from it.
fn refuse_oversized_line(
    conn: &mut Connection,
    max_request: usize,
    ts: &str,
    audit: &mut Recorder<'_>,
    closing: &mut Vec<OwnedFd>,
) {
    let message = format!("request line longer than {max_request} bytes; closing the connection");
    let end = dispatch::record_bad_request(&conn.peer, ts, audit);
    conn.outq
        .push_back(Outgoing::error(ErrorCode::BadRequest, &message, Some(end)));
    conn.stop_reading(closing);
}

fn open_spare() -> Option<OwnedFd> {
    File::open("/dev/null").ok().map(OwnedFd::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_lanes_poll_at_once_and_always_one() {
        let most: Vec<_> = [1, 2, 3, 4, 16].map(Poller::most).to_vec();
        assert_eq!(most, vec![1, 1, 1, 2, 8]);
    }

    #[test]
    fn a_turn_to_poll_is_given_back_when_it_ends_or_is_refused() {
        let polling = AtomicUsize::new(0);
        let first = Poller::enter(&polling, 1).expect("nobody polls yet");
        assert!(
            Poller::enter(&polling, 1).is_none(),
            "one lane polls already"
        );
        assert_eq!(polling.load(Ordering::Relaxed), 1);
        drop(first);
        assert_eq!(polling.load(Ordering::Relaxed), 0);
        let (a, b) = (Poller::enter(&polling, 2), Poller::enter(&polling, 2));
        assert!(a.is_some() && b.is_some());
        assert!(Poller::enter(&polling, 2).is_none());
        drop((a, b));
        assert_eq!(polling.load(Ordering::Relaxed), 0);
    }
}
