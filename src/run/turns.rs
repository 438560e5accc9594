//! Taking turns at the listener: one supervisor thread at a time waits
//! in `SECCOMP_IOCTL_NOTIF_RECV`.
//!
//! The kernel wakes every thread waiting there for each trapped call (on
//! the trapping task's CPU, with synchronous wake-ups), so a second idle
//! receiver costs every call a wake-up for nothing and makes the threads
//! take calls in alternation, each with its own server connection gone
//! cold; handing the turn over on every brokered call costs as much. On a
//! 2-core VM one receiver instead of two took ~2.5 µs off an untouched
//! call and ~20 µs off a brokered one.
//!
//! So one thread (the owner) receives and answers calls, and says when a
//! call may wait (on the server or a filesystem). A spare thread, started
//! the first time that happens, takes the turn over only once such a call
//! has waited [`PATIENCE`]: one slow file still does not hold up the
//! other calls of the program (and of every process it forks, which share
//! the listener) for longer than that.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// How long the owner's call may wait before the spare receives instead.
pub const PATIENCE: Duration = Duration::from_millis(1);

/// Who receives next.
pub struct Turns {
    state: Mutex<State>,
    changed: Condvar,
    max_threads: usize,
}

struct State {
    /// The thread that receives, or answers what it received.
    owner: Option<ThreadId>,
    /// Since when the owner's call has been waiting, if it is.
    waiting_since: Option<Instant>,
    /// Threads asleep with no deadline: woken when a call starts waiting.
    idle: usize,
    threads: usize,
}

fn me() -> ThreadId {
    std::thread::current().id()
}

impl Turns {
    /// Turns for `first_threads` threads started by the caller, growing
    /// on demand to `max_threads`.
    pub fn new(first_threads: usize, max_threads: usize) -> Turns {
        Turns {
            state: Mutex::new(State {
                owner: None,
                waiting_since: None,
                idle: 0,
                threads: first_threads,
            }),
            changed: Condvar::new(),
            max_threads,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once this thread may receive: the turn is free, already
    /// this thread's, or its owner's call has waited [`PATIENCE`].
    pub fn take(&self) {
        let me = me();
        let mut state = self.lock();
        loop {
            let waited = state.waiting_since.map(|since| since.elapsed());
            match (state.owner, waited) {
                (None, _) => break,
                (Some(owner), _) if owner == me => return,
                (Some(_), Some(waited)) if waited >= PATIENCE => break,
                (Some(_), Some(waited)) => {
                    let (next, _) = self
                        .changed
                        .wait_timeout(state, PATIENCE - waited)
                        .unwrap_or_else(|e| e.into_inner());
                    state = next;
                }
                (Some(_), None) => {
                    state.idle += 1;
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                    state.idle -= 1;
                }
            }
        }
        state.owner = Some(me);
        state.waiting_since = None;
    }

    /// The owner's call may wait from now on. Returns true when a spare
    /// thread should be started (the caller starts it, and calls
    /// [`Turns::not_started`] if it cannot).
    pub fn may_wait(&self) -> bool {
        let mut state = self.lock();
        if state.owner != Some(me()) || state.waiting_since.is_some() {
            return false;
        }
        state.waiting_since = Some(Instant::now());
        if state.idle > 0 {
            drop(state);
            self.changed.notify_one();
            return false;
        }
        let start = state.threads < self.max_threads;
        if start {
            state.threads += 1;
        }
        start
    }

    /// The owner's call is answered: it keeps the turn.
    pub fn answered(&self) {
        let mut state = self.lock();
        if state.owner == Some(me()) {
            state.waiting_since = None;
        }
    }

    /// This thread stops receiving for good.
    pub fn leave(&self) {
        let mut state = self.lock();
        if state.owner == Some(me()) {
            state.owner = None;
            state.waiting_since = None;
        }
        drop(state);
        self.changed.notify_all();
    }

    /// A thread [`Turns::may_wait`] asked for could not be started.
    pub fn not_started(&self) {
        self.lock().threads -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_owner_keeps_the_turn_and_a_spare_starts_once() {
        let turns = Turns::new(1, 2);
        turns.take();
        turns.take();
        assert!(turns.may_wait(), "nobody else: a spare may start");
        turns.answered();
        assert!(!turns.may_wait(), "two threads already");
        turns.answered();
    }

    #[test]
    fn a_spare_receives_only_once_the_owners_call_has_waited() {
        let turns = Arc::new(Turns::new(1, 2));
        turns.take();
        let spare = {
            let turns = Arc::clone(&turns);
            std::thread::spawn(move || {
                turns.take();
                Instant::now()
            })
        };
        // A quick call, answered: the spare stays asleep.
        while turns.lock().idle == 0 {
            std::thread::yield_now();
        }
        turns.may_wait();
        turns.answered();
        // A slow one: the spare takes over PATIENCE after it began.
        turns.may_wait();
        let began = turns.lock().waiting_since.unwrap();
        let took = spare.join().unwrap();
        assert!(took.duration_since(began) >= PATIENCE);
        // The former owner's answer does not take the turn back.
        turns.answered();
        assert_ne!(turns.lock().owner, Some(me()));
    }
}
