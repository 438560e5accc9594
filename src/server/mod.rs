//! The server: a few lanes, each an epoll loop over its own connections
//! (`worker`), none of which can stall another; a watchdog that keeps a
//! hung filesystem from stalling any of them (`watchdog`).
//!
//! Every socket is non-blocking. A lane reads what its clients sent,
//! answers the complete lines (`dispatch`; bounded per client, so one
//! client cannot hoard the lane or the server's descriptors), writes the
//! audit records of the batch in one go, and only then sends the
//! responses (`connection`). A client that stops reading simply stops
//! being read from; it costs the others nothing.

mod close_batch;
mod connection;
mod dispatch;
mod failure;
mod fault;
pub mod handover;
mod held;
mod held_ops;
mod holder;
mod quota;
mod stats;
mod undo;
pub mod upgrade;
mod watchdog;
mod worker;

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::audit::AuditLog;
use crate::logging::{self, RateLimited};
use crate::policy::{Policy, PolicyErrors};
pub use held::HeldLimits;
use holder::Holder;
use watchdog::Watchdog;
use worker::{Lane, SHUTDOWN_GRACE, spawn_lane};

/// Limits and knobs of a running server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Longest request line, newline included.
    pub max_request: usize,
    /// Clients silent (or stuck mid-line) this long are disconnected.
    pub idle_timeout: Duration,
    /// Connections beyond this are answered `busy` and closed.
    pub max_clients: usize,
    /// Worker threads; each runs its own event loop.
    pub workers: usize,
    /// How long a worker polls for more work before it sleeps.
    pub busy_poll: Duration,
    /// Niceness of the worker threads (`--worker-nice`).
    pub worker_nice: i32,
    /// A request whose filesystem calls take longer is answered `io_error`.
    pub fs_timeout: Duration,
    /// Load a policy that others could have written, with a warning
    /// (tests and development only).
    pub insecure_policy_permissions: bool,
    /// `--max-held`, `--max-held-per-uid` (SPEC §3.4).
    pub held: HeldLimits,
    /// Members may ask for `stats` (SPEC §3.5), besides root and our uid.
    pub stats_group: Option<u32>,
    /// Record `stat`, `readlink`, `xattr` and `readdir` (`--audit-metadata`, SPEC §6).
    pub audit_metadata: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_request: 65536,
            idle_timeout: Duration::from_secs(60),
            max_clients: 4096,
            busy_poll: Duration::from_micros(50),
            worker_nice: -5,
            workers: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(1, 16),
            fs_timeout: Duration::from_secs(10),
            insecure_policy_permissions: false,
            held: HeldLimits::default(),
            stats_group: None,
            audit_metadata: true,
        }
    }
}

/// State shared by all lanes.
struct Shared {
    policy: ArcSwap<Policy>,
    policy_path: PathBuf,
    audit: AuditLog,
    config: ServerConfig,
    listener: UnixListener,
    clients: AtomicUsize,
    stopping: AtomicBool,
    lanes: Vec<Lane>,
    /// Kept open so that, out of descriptors, a client can still be
    /// accepted and told `busy`; its lock also serialises accepts.
    spare_fd: Mutex<Option<OwnedFd>>,
    watchdog: Watchdog,
    /// Lanes still running; shutdown waits for none.
    running: Mutex<usize>,
    lane_done: Condvar,
    audit_failures_log: RateLimited,
    fd_exhaustion_log: RateLimited,
    /// Held and parked descriptors, and `wake` subscribers (SPEC §3.4).
    holder: Arc<Holder>,
    /// Received descriptors waiting per uid (SPEC §2).
    fd_quota: quota::FdQuota,
    stats: stats::Stats,
    /// The server's own files, which no policy can change (SPEC §3.6).
    protected: crate::resources::protected::Protected,
    /// Lanes stopped from reading for an upgrade.
    pause: upgrade::Pause,
    /// Lanes busy-polling right now (see `worker::Poller`).
    polling: AtomicUsize,
}

impl Shared {
    /// A `wake` subscriber, counted in when it connected, is gone.
    fn subscriber_left(&self) {
        self.clients.fetch_sub(1, Ordering::Relaxed);
    }

    /// A client counted in by a lane's `admit` is gone.
    fn forget_client(&self, lane: usize) {
        self.clients.fetch_sub(1, Ordering::Relaxed);
        self.lanes[lane].load.fetch_sub(1, Ordering::Relaxed);
    }

    fn lane_exited(&self) {
        *lock(&self.running) -= 1;
        self.lane_done.notify_all();
    }
}

/// A running server: reload its policy, or stop it.
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// Starts serving `listener` with `policy` (loaded from `policy_path`,
    /// which reloads read again).
    pub fn start(
        listener: UnixListener,
        policy: Policy,
        policy_path: PathBuf,
        audit: AuditLog,
        config: ServerConfig,
    ) -> io::Result<Server> {
        let nothing = handover::Received::default();
        Self::start_holding(listener, policy, policy_path, audit, config, nothing).map(|(s, _)| s)
    }

    /// [`Server::start`], holding what a previous server handed over
    /// (SPEC §3.4) before the first client is served. Returns the server
    /// and what could not be held again.
    pub fn start_holding(
        listener: UnixListener,
        policy: Policy,
        policy_path: PathBuf,
        audit: AuditLog,
        config: ServerConfig,
        handed: handover::Received,
    ) -> io::Result<(Server, Vec<handover::Unheld>)> {
        listener.set_nonblocking(true)?;
        crate::safe_open::prepare();
        let config_limits = config.held;
        let protected = crate::resources::protected::Protected::new(
            &policy_path,
            audit
                .path()
                .map(ToOwned::to_owned)
                .into_iter()
                .chain(
                    listener
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_pathname().map(ToOwned::to_owned)),
                )
                .chain(std::fs::read_link("/proc/self/exe").ok())
                // What an upgrade runs again, symlinks and all.
                .chain(upgrade::Binary::current().ok().map(|b| b.path)),
        );
        let lanes = (0..config.workers.max(1))
            .map(|index| Lane::new(index, &listener))
            .collect::<io::Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            policy: ArcSwap::from_pointee(policy),
            policy_path,
            audit,
            watchdog: Watchdog::new(config.fs_timeout),
            config,
            listener,
            clients: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            running: Mutex::new(lanes.len()),
            lanes,
            spare_fd: Mutex::new(std::fs::File::open("/dev/null").ok().map(OwnedFd::from)),
            lane_done: Condvar::new(),
            audit_failures_log: RateLimited::default(),
            fd_exhaustion_log: RateLimited::default(),
            holder: Arc::new(Holder::new(config_limits)?),
            fd_quota: quota::FdQuota::default(),
            stats: stats::Stats::new(),
            protected,
            pause: upgrade::Pause::default(),
            polling: AtomicUsize::new(0),
        });
        let refused = shared.holder.import(handed.entries);
        holder::spawn(shared.clone())?;
        for index in 0..shared.lanes.len() {
            spawn_lane(shared.clone(), index, None)?;
        }
        let watched = shared.clone();
        std::thread::Builder::new()
            .name("fdopen-watchdog".into())
            .stack_size(128 * 1024)
            .spawn(move || run_watchdog(&watched))?;
        Ok((Server { shared }, refused))
    }

    /// Re-reads the policy. On success new requests use it; requests in
    /// flight finish under the one they started with. On failure the
    /// running policy stays.
    pub fn reload(&self) -> Result<usize, PolicyErrors> {
        let loaded = Policy::load_trusted(
            &self.shared.policy_path,
            nix::unistd::geteuid().as_raw(),
            self.shared.config.insecure_policy_permissions,
        );
        let counter = match &loaded {
            Ok(_) => &self.shared.stats.reloads_ok,
            Err(_) => &self.shared.stats.reloads_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let (policy, exposures) = loaded?;
        for exposure in exposures {
            logging::warn(format_args!("{exposure}"));
        }
        let rules = policy.rules.len();
        self.shared.policy.store(Arc::new(policy));
        Ok(rules)
    }

    /// Reopens the audit log file (for logrotate).
    pub fn reopen_audit_log(&self) -> io::Result<()> {
        self.shared.audit.reopen()
    }

    /// Clients connected right now.
    pub fn clients(&self) -> usize {
        self.shared.clients.load(Ordering::Relaxed)
    }

    /// Stops accepting, lets clients take the responses already due, and
    /// waits for the lanes to finish (not for calls stuck in the kernel:
    /// those threads end with the process).
    pub fn shutdown(&self) {
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        for lane in &shared.lanes {
            lane.wake();
        }
        let mut running = lock(&shared.running);
        let give_up = std::time::Instant::now() + SHUTDOWN_GRACE + Duration::from_secs(5);
        while *running > 0 {
            let left = give_up.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                logging::warn(format_args!(
                    "{} lanes did not finish in time; stopping anyway",
                    *running
                ));
                break;
            }
            running = shared
                .lane_done
                .wait_timeout(running, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Server {
    /// Stopping under a service manager (SPEC §3.4): writes every held and
    /// parked fd into a fresh socket pair and returns its reading end, for
    /// the fd store; `None` when nothing is held. Call after
    /// [`Server::shutdown`]: the holder stays stopped from here on.
    pub fn hand_over_to_store(&self) -> Result<Option<(OwnedFd, usize)>, handover::HandoverError> {
        let frozen = self.shared.holder.freeze();
        let outgoing = frozen.outgoing();
        if outgoing.is_empty() {
            return Ok(None);
        }
        let (writer, reader) = handover::pair()?;
        let count = handover::write(writer, &outgoing, None)?;
        drop(outgoing);
        frozen.hand_off();
        Ok(Some((reader, count)))
    }

    /// Held and parked descriptors now.
    pub fn held_counts(&self) -> (usize, usize) {
        self.shared.holder.counts()
    }
}

/// The watchdog thread: a lane whose thread was abandoned in a hung call
/// gets a new thread, and so does the holder, stuck in a close. It runs
/// for the life of the process, so a lane stuck during shutdown is still
/// taken over and can finish.
fn run_watchdog(shared: &Arc<Shared>) {
    let mut calls: Vec<_> = shared.lanes.iter().map(|lane| &lane.call).collect();
    // Last: the holder's closes.
    calls.push(&shared.holder.call);
    shared.watchdog.run(&calls, |lane, delivery| {
        if lane == shared.lanes.len() {
            logging::warn(format_args!(
                "the holder is stuck closing a descriptor; it goes on in a new thread"
            ));
            if let Err(e) = holder::spawn(shared.clone()) {
                logging::error(format_args!("cannot start a holder thread: {e}"));
            }
            return;
        }
        logging::warn(format_args!(
            "a filesystem call of uid {} is stuck; worker {lane} goes on in a new thread ({} calls stuck)",
            delivery.uid,
            shared.watchdog.stuck.now()
        ));
        if let Err(e) = spawn_lane(shared.clone(), lane, Some(delivery)) {
            logging::error(format_args!("cannot start a thread for worker {lane}: {e}"));
        }
    });
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
