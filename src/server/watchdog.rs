//! Filesystems that stop answering (SPEC §5, `--fs-timeout`).
//!
//! A worker makes a request's filesystem calls itself: handing every
//! request to another thread would cost a wake-up and a context switch
//! each, and almost no call ever hangs. Instead each call is watched. A
//! call still running after a short stall is *abandoned*: the thread stays
//! where the kernel holds it, a fresh thread takes over the worker's
//! connections (the lane, see `worker.rs`), and the request's answer slot
//! waits for the stuck call to come back, or for `--fs-timeout`, whichever
//! is first (then `io_error`). A call stuck in the kernel cannot be
//! cancelled; abandoned calls are counted and capped per uid and in all,
//! and beyond the caps new filesystem requests are answered `busy`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::close_batch;
use super::dispatch::Outcome;
use super::lock;

/// Abandoned calls one uid may have at once; beyond, its filesystem
/// requests are `busy`.
pub(super) const MAX_STUCK_PER_UID: usize = 4;
/// Abandoned calls in all; beyond, everyone's filesystem requests are `busy`.
pub(super) const MAX_STUCK: usize = 16;
/// A call running longer than this is abandoned (at most half the
/// `--fs-timeout`): the longest pause a hang costs the lane's other clients.
const MAX_STALL: Duration = Duration::from_millis(40);

const IDLE: u64 = 0;
const IN_CALL: u64 = 1;
const ABANDONED: u64 = 2;

/// The filesystem call a lane's thread is making, if any.
#[derive(Debug, Default)]
pub(super) struct CallWatch {
    /// `sequence << 2 | IDLE/IN_CALL/ABANDONED`: the sequence number keeps
    /// the watchdog from abandoning a later call than the one it timed.
    state: AtomicU64,
    /// Start of the call in progress, in microseconds since server start.
    started: AtomicU64,
    uid: AtomicU32,
    /// The thread making it, whose state tells a hang from a wait for a CPU.
    tid: AtomicI32,
    /// Where each abandoned call, by sequence number, leaves its outcome:
    /// a lane's later calls can be abandoned before an earlier one returns.
    deliveries: Mutex<Vec<(u64, Arc<Delivery>)>>,
}

thread_local! {
    /// This thread's id, read once: a call's watch records it each time.
    static THREAD_ID: libc::pid_t = own_thread_id();
}

fn own_thread_id() -> libc::pid_t {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Whether thread `tid` of this process is running or waiting for a CPU
/// (`R` in `/proc/self/task/TID/stat`), rather than asleep in the kernel.
/// Unknown counts as asleep: the watchdog then does what it did before.
fn runnable(tid: libc::pid_t) -> bool {
    let Ok(stat) = std::fs::read(format!("/proc/self/task/{tid}/stat")) else {
        return false;
    };
    // "TID (COMM) STATE ...": COMM may hold anything, ")" included.
    let Some(end) = stat.iter().rposition(|&b| b == b')') else {
        return false;
    };
    stat.get(end + 2) == Some(&b'R')
}

/// Closes are charged to no client.
const CLOSER_UID: u32 = u32::MAX;

/// What became of a watched call.
pub(super) enum Watched<T> {
    Finished(T),
    /// The lane went on without this thread; the outcome is the caller's
    /// to deliver, and the thread's to end.
    Abandoned(T, Arc<Delivery>),
}

impl CallWatch {
    /// Runs `call` on behalf of `uid`, watched.
    pub fn run<T>(&self, watchdog: &Watchdog, uid: u32, call: impl FnOnce() -> T) -> Watched<T> {
        let sequence = (self.state.load(Ordering::Relaxed) >> 2) + 1;
        self.started.store(watchdog.micros(), Ordering::Relaxed);
        self.uid.store(uid, Ordering::Relaxed);
        self.tid
            .store(THREAD_ID.with(|tid| *tid), Ordering::Relaxed);
        let in_call = sequence << 2 | IN_CALL;
        self.state.store(in_call, Ordering::SeqCst);
        watchdog.nudge();
        let outcome = call();
        match self.state.compare_exchange(
            in_call,
            sequence << 2 | IDLE,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Watched::Finished(outcome),
            Err(_) => {
                let mut deliveries = lock(&self.deliveries);
                let mine = deliveries
                    .iter()
                    .position(|(s, _)| *s == sequence)
                    .expect("the watchdog leaves a delivery before it abandons a call");
                Watched::Abandoned(outcome, deliveries.swap_remove(mine).1)
            }
        }
    }
}

impl CallWatch {
    /// Closes `fds`, watched: a close can block (a FUSE file's flush, a
    /// socket with `SO_LINGER`). False when the thread was abandoned in
    /// it: the thread must then end, another serves in its place.
    pub fn close(&self, watchdog: &Watchdog, fds: Vec<OwnedFd>) -> bool {
        match self.run(watchdog, CLOSER_UID, || close_batch::close_all(fds)) {
            Watched::Finished(()) => true,
            Watched::Abandoned((), delivery) => {
                watchdog.stuck.remove(delivery.uid);
                false
            }
        }
    }
}

/// The outcome of a request whose thread was abandoned, on its way to the
/// lane that now serves the client.
#[derive(Debug)]
pub(super) struct Delivery {
    /// When the client is told `io_error` if nothing came.
    pub deadline: Instant,
    pub uid: u32,
    outcome: Mutex<DeliveryState>,
}

#[derive(Debug)]
enum DeliveryState {
    Waiting,
    Arrived(Outcome),
    /// Past the deadline and answered; a late outcome is dropped.
    Expired,
    Taken,
}

impl Delivery {
    /// Hands over the outcome; gives it back when it came too late.
    pub fn deliver(&self, outcome: Outcome) -> Option<Outcome> {
        let mut state = lock(&self.outcome);
        if matches!(*state, DeliveryState::Waiting) {
            *state = DeliveryState::Arrived(outcome);
            None
        } else {
            Some(outcome)
        }
    }

    /// Where the outcome stands at `now`. Past the deadline it is
    /// `TimedOut` once, and any outcome that comes later is dropped.
    pub fn poll(&self, now: Instant) -> Polled {
        let mut state = lock(&self.outcome);
        match std::mem::replace(&mut *state, DeliveryState::Taken) {
            DeliveryState::Arrived(outcome) => Polled::Arrived(outcome),
            DeliveryState::Waiting if now >= self.deadline => {
                *state = DeliveryState::Expired;
                Polled::TimedOut
            }
            other => {
                *state = other;
                Polled::Waiting
            }
        }
    }
}

/// What [`Delivery::poll`] found.
pub(super) enum Polled {
    Arrived(Outcome),
    TimedOut,
    Waiting,
}

/// Abandoned calls still stuck, per uid and in all.
#[derive(Debug, Default)]
pub(super) struct StuckCalls {
    total: AtomicUsize,
    per_uid: Mutex<HashMap<u32, usize>>,
}

impl StuckCalls {
    /// May `uid` start another filesystem call? Free while nothing is stuck.
    pub fn admits(&self, uid: u32) -> bool {
        let total = self.total.load(Ordering::Relaxed);
        if total == 0 {
            return true;
        }
        total < MAX_STUCK && lock(&self.per_uid).get(&uid).copied().unwrap_or(0) < MAX_STUCK_PER_UID
    }

    pub fn now(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn add(&self, uid: u32) {
        *lock(&self.per_uid).entry(uid).or_default() += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// A stuck call came back.
    pub fn remove(&self, uid: u32) {
        let mut per_uid = lock(&self.per_uid);
        if let Some(count) = per_uid.get_mut(&uid) {
            *count -= 1;
            if *count == 0 {
                per_uid.remove(&uid);
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The thread that watches every lane's calls.
#[derive(Debug)]
pub(super) struct Watchdog {
    epoch: Instant,
    fs_timeout: Duration,
    stall: Duration,
    thread: OnceLock<Thread>,
    /// Parked until a call starts: an idle server does not wake for it.
    asleep: AtomicBool,
    pub stuck: StuckCalls,
}

impl Watchdog {
    pub fn new(fs_timeout: Duration) -> Watchdog {
        Watchdog {
            epoch: Instant::now(),
            fs_timeout,
            stall: (fs_timeout / 2).min(MAX_STALL),
            thread: OnceLock::new(),
            asleep: AtomicBool::new(false),
            stuck: StuckCalls::default(),
        }
    }

    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Wakes the watchdog if it sleeps (after a call was marked started).
    fn nudge(&self) {
        if self.asleep.load(Ordering::SeqCst)
            && self.asleep.swap(false, Ordering::SeqCst)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
    }

    /// Watches `calls` for the life of the process; `take_over(lane,
    /// delivery)` is called for each call abandoned on lane `lane`.
    pub fn run(&self, calls: &[&CallWatch], mut take_over: impl FnMut(usize, Arc<Delivery>)) {
        let _ = self.thread.set(std::thread::current());
        let period = (self.stall / 2).max(Duration::from_millis(1));
        loop {
            let mut busy = false;
            for (lane, call) in calls.iter().enumerate() {
                let state = call.state.load(Ordering::SeqCst);
                if state & 3 != IN_CALL {
                    continue;
                }
                busy = true;
                let started = call.started.load(Ordering::Relaxed);
                let running = self.micros().saturating_sub(started);
                if running < self.stall.as_micros() as u64 {
                    continue;
                }
                // A runnable thread is not held by a filesystem: it waits
                // for a CPU on a busy machine, or is still computing. It
                // gets up to half the --fs-timeout before its lane goes on
                // without it; only a sleeping one is taken to hang.
                if running < (self.fs_timeout / 2).as_micros() as u64
                    && runnable(call.tid.load(Ordering::Relaxed))
                {
                    continue;
                }
                if let Some(delivery) = self.abandon(call, state, started) {
                    take_over(lane, delivery);
                }
            }
            if busy {
                std::thread::sleep(period);
                continue;
            }
            // Nothing in flight: sleep until a call starts. Announce it,
            // then look once more, so a call that started in between is
            // not missed (its thread reads `asleep` after marking itself).
            self.asleep.store(true, Ordering::SeqCst);
            if calls
                .iter()
                .any(|c| c.state.load(Ordering::SeqCst) & 3 == IN_CALL)
            {
                self.asleep.store(false, Ordering::SeqCst);
                continue;
            }
            std::thread::park_timeout(Duration::from_secs(1));
            self.asleep.store(false, Ordering::SeqCst);
        }
    }

    /// Marks the call `state` abandoned, unless it just finished.
    fn abandon(&self, call: &CallWatch, state: u64, started: u64) -> Option<Arc<Delivery>> {
        let uid = call.uid.load(Ordering::Relaxed);
        let started_at = self.epoch + Duration::from_micros(started);
        // An --fs-timeout too long for the clock means "never".
        let far = started_at + Duration::from_secs(100 * 365 * 86400);
        let delivery = Arc::new(Delivery {
            deadline: started_at.checked_add(self.fs_timeout).unwrap_or(far),
            uid,
            outcome: Mutex::new(DeliveryState::Waiting),
        });
        let sequence = state >> 2;
        lock(&call.deliveries).push((sequence, delivery.clone()));
        let abandoned = state & !3 | ABANDONED;
        match call
            .state
            .compare_exchange(state, abandoned, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                self.stuck.add(uid);
                Some(delivery)
            }
            Err(_) => {
                lock(&call.deliveries).retain(|(s, _)| *s != sequence);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A watchdog over one lane's calls, for the life of the test process.
    fn watched() -> (&'static Watchdog, &'static CallWatch) {
        let watchdog: &'static Watchdog =
            Box::leak(Box::new(Watchdog::new(Duration::from_secs(10))));
        let call: &'static CallWatch = Box::leak(Box::default());
        std::thread::spawn(move || watchdog.run(&[call], |_, _| {}));
        (watchdog, call)
    }

    #[test]
    fn a_thread_is_runnable_while_it_runs_and_not_while_it_sleeps() {
        assert!(runnable(own_thread_id()));
        let (tid_tx, tid) = mpsc::channel();
        let (_wake, asleep) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            tid_tx.send(own_thread_id()).unwrap();
            let _ = asleep.recv();
        });
        let tid = tid.recv().unwrap();
        // It blocks in recv a moment after it has sent its id.
        let deadline = Instant::now() + Duration::from_secs(5);
        while runnable(tid) {
            assert!(Instant::now() < deadline, "never slept");
            std::thread::yield_now();
        }
    }

    /// A call that computes (or waits for a CPU) past the stall is not a
    /// hang: its lane does not go on without it.
    #[test]
    fn a_runnable_call_past_the_stall_is_not_abandoned() {
        let (watchdog, call) = watched();
        let spin = || {
            let until = Instant::now() + 4 * MAX_STALL;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        };
        assert!(matches!(call.run(watchdog, 7, spin), Watched::Finished(())));
    }

    /// A call asleep in the kernel past the stall is abandoned, as a hung
    /// filesystem's would be.
    #[test]
    fn a_sleeping_call_past_the_stall_is_abandoned() {
        let (watchdog, call) = watched();
        let nap = || std::thread::sleep(4 * MAX_STALL);
        match call.run(watchdog, 7, nap) {
            Watched::Abandoned((), delivery) => watchdog.stuck.remove(delivery.uid),
            Watched::Finished(()) => panic!("a sleeping call was not abandoned"),
        }
    }
}
