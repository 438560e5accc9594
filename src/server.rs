//! The server loop: a few worker threads, each an epoll loop over its own
//! connections, none of which can stall another.
//!
//! Every socket is non-blocking. A worker reads what a client sent, answers
//! the complete lines (bounded per client, so one client cannot hoard the
//! worker or the server's descriptors), writes the audit records of the
//! batch in one go, and only then sends the responses. A client that stops
//! reading simply stops being read from; it costs the others nothing.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use slab::Slab;

use crate::audit::{AuditLog, Clock, Record};
use crate::decision::{self, Intent, Scratch};
use crate::fdpass;
use crate::logging;
use crate::peer::PeerIdentity;
use crate::policy::{Policy, PolicyErrors};
use crate::protocol::{ErrorCode, Op, Request, RequestError, encode, parse_request};

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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_request: 65536,
            idle_timeout: Duration::from_secs(60),
            max_clients: 4096,
            busy_poll: Duration::from_micros(50),
            workers: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(1, 16),
        }
    }
}

/// Responses queued for one client before it stops being read: bounds
/// memory and the descriptors held on its behalf.
const MAX_QUEUED_RESPONSES: usize = 64;
/// Bytes read from a client in one go.
const READ_CHUNK: usize = 64 * 1024;
/// How long shutdown waits for clients to take their last responses.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const LISTENER: u64 = u64::MAX;
const WAKER: u64 = u64::MAX - 1;

/// State shared by all workers.
struct Shared {
    policy: ArcSwap<Policy>,
    policy_path: PathBuf,
    audit: AuditLog,
    config: ServerConfig,
    clients: AtomicUsize,
    stopping: AtomicBool,
    /// Per worker: its wake-up, its connection count, and connections
    /// handed to it by the worker that accepted them.
    lanes: Vec<Lane>,
}

/// What other threads need of one worker.
struct Lane {
    waker: EventFd,
    load: AtomicUsize,
    inbox: Mutex<Vec<UnixStream>>,
}

/// A running server: reload its policy, or stop it.
pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
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
        listener.set_nonblocking(true)?;
        crate::safe_open::prepare();
        let listener = Arc::new(listener);
        let lanes = (0..config.workers.max(1))
            .map(|_| {
                Ok(Lane {
                    waker: EventFd::from_value_and_flags(
                        0,
                        EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
                    )?,
                    load: AtomicUsize::new(0),
                    inbox: Mutex::new(Vec::new()),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            policy: ArcSwap::from_pointee(policy),
            policy_path,
            audit,
            clients: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            config,
            lanes,
        });
        let mut threads = Vec::new();
        for index in 0..shared.lanes.len() {
            let worker = Worker::new(index, listener.clone(), shared.clone())?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("fdopen-worker-{index}"))
                    .stack_size(256 * 1024)
                    .spawn(move || worker.run())?,
            );
        }
        Ok(Server { shared, threads })
    }

    /// Re-reads the policy. On success new requests use it; requests in
    /// flight finish under the one they started with. On failure the
    /// running policy stays.
    pub fn reload(&self) -> Result<usize, PolicyErrors> {
        let policy = Policy::load(&self.shared.policy_path)?;
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
    /// waits for the workers to finish.
    pub fn shutdown(self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for lane in &self.shared.lanes {
            let _ = lane.waker.write(1);
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// A response waiting to be sent.
struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    /// The granted file; sent with the first byte of the line.
    fd: Option<File>,
    /// Not yet covered by a successful audit write: must not leave yet.
    unaudited: bool,
}

impl Outgoing {
    /// A response line; `audited` when its decision was just recorded in
    /// the audit buffer, so it waits for that buffer to be written.
    fn new(bytes: Vec<u8>, fd: Option<File>, audited: bool) -> Outgoing {
        Outgoing {
            bytes,
            sent: 0,
            fd,
            unaudited: audited,
        }
    }

    /// An error line that carries no descriptor.
    fn error(code: ErrorCode, message: &str, audited: bool) -> Outgoing {
        let mut bytes = Vec::new();
        encode::error(&mut bytes, None, code, message);
        Outgoing::new(bytes, None, audited)
    }
}

/// One client.
struct Connection {
    stream: UnixStream,
    peer: PeerIdentity,
    /// Bytes received and not yet answered; at most one partial line beyond
    /// the complete ones.
    inbuf: Vec<u8>,
    /// Byte range of `inbuf` that arrived with descriptors attached: the
    /// requests it touches are refused.
    tainted: Option<(usize, usize)>,
    outq: VecDeque<Outgoing>,
    /// Last time the client completed a request or took a response.
    last_active: Instant,
    /// No more input: end of stream, or framing was lost.
    read_done: bool,
    /// Current epoll interest, to skip needless `epoll_ctl` calls.
    interest: EpollFlags,
}

impl Connection {
    fn wants_input(&self) -> bool {
        !self.read_done && self.outq.len() < MAX_QUEUED_RESPONSES
    }

    fn has_complete_line(&self) -> bool {
        self.inbuf.contains(&b'\n')
    }

    /// Lines are waiting and there is room to queue their answers.
    fn can_answer(&self) -> bool {
        self.outq.len() < MAX_QUEUED_RESPONSES && self.has_complete_line()
    }

    fn desired_interest(&self) -> EpollFlags {
        let mut flags = EpollFlags::empty();
        if self.wants_input() && !self.has_complete_line() {
            flags |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        }
        if !self.outq.is_empty() {
            flags |= EpollFlags::EPOLLOUT;
        }
        flags
    }

    /// A line longer than the limit: framing is lost, so the client gets a
    /// `bad_request` and nothing more is read from it.
    fn refuse_oversized_line(&mut self, max_request: usize, ts: &str, audit: &mut Vec<u8>) {
        let message =
            format!("request line longer than {max_request} bytes; closing the connection");
        record_bad_request(&self.peer, ts, audit);
        self.outq
            .push_back(Outgoing::error(ErrorCode::BadRequest, &message, true));
        self.read_done = true;
        self.inbuf.clear();
        self.tainted = None;
    }

    fn finished(&self) -> bool {
        self.read_done && self.outq.is_empty() && !self.has_complete_line()
    }
}

struct Worker {
    /// This worker's lane in `shared.lanes`.
    index: usize,
    epoll: Epoll,
    listener: Arc<UnixListener>,
    shared: Arc<Shared>,
    conns: Slab<Connection>,
    read_buf: Vec<u8>,
    scratch: Scratch,
    audit_buf: Vec<u8>,
    clock: Clock,
    /// Connections touched in this round, to answer and flush.
    active: Vec<usize>,
    /// Connections with answerable lines left over from the last round.
    pending: Vec<usize>,
    /// Kept open so that, out of descriptors, a client can still be
    /// accepted and told `busy` instead of spinning on the backlog.
    spare_fd: Option<OwnedFd>,
    listening: bool,
    last_sweep: Instant,
    /// Running out of descriptors is logged at most every few seconds.
    last_fd_warning: Option<Instant>,
}

impl Worker {
    fn new(index: usize, listener: Arc<UnixListener>, shared: Arc<Shared>) -> io::Result<Worker> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let waker = &shared.lanes[index].waker;
        // EPOLLEXCLUSIVE: one worker wakes per new connection, not all.
        epoll.add(
            listener.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, LISTENER),
        )?;
        epoll.add(waker.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKER))?;
        Ok(Worker {
            index,
            epoll,
            listener,
            shared,
            conns: Slab::new(),
            read_buf: vec![0; READ_CHUNK],
            scratch: Scratch::default(),
            clock: Clock::default(),
            audit_buf: Vec::with_capacity(16 * 1024),
            active: Vec::new(),
            pending: Vec::new(),
            spare_fd: open_spare(),
            listening: true,
            last_sweep: Instant::now(),
            last_fd_warning: None,
        })
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 512];
        let mut stop_deadline = None;
        loop {
            let timeout = if self.pending.is_empty() {
                self.sweep_interval()
            } else {
                Duration::ZERO
            };
            let ready = self.wait(&mut events, timeout);
            std::mem::swap(&mut self.active, &mut self.pending);
            for event in &events[..ready] {
                match event.data() {
                    LISTENER => self.accept_ready(),
                    WAKER => {
                        let _ = self.lane().waker.read();
                        let handed = std::mem::take(&mut *lock(&self.lane().inbox));
                        for stream in handed {
                            self.register(stream);
                        }
                    }
                    key => self.on_ready(key as usize, event.events()),
                }
            }
            self.answer_and_flush();

            if self.shared.stopping.load(Ordering::SeqCst) {
                let deadline = *stop_deadline.get_or_insert_with(|| {
                    self.stop_listening();
                    Instant::now() + SHUTDOWN_GRACE
                });
                self.close_finished_for_shutdown();
                if self.conns.is_empty() || Instant::now() >= deadline {
                    return;
                }
            }
            if self.last_sweep.elapsed() >= self.sweep_interval() {
                self.sweep_idle();
            }
        }
    }

    /// Waits for events. Before sleeping, polls for a short while: a client
    /// answered a moment ago usually asks again within microseconds, and
    /// catching that without a sleep and wake-up (costly, above all on
    /// virtual machines) is worth more than the few microseconds polled.
    fn wait(&self, events: &mut [EpollEvent], timeout: Duration) -> usize {
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
        let spin = self.shared.config.busy_poll;
        if !timeout.is_zero() && !spin.is_zero() {
            let until = Instant::now() + spin;
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

    fn sweep_interval(&self) -> Duration {
        (self.shared.config.idle_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    fn stop_listening(&mut self) {
        if self.listening {
            let _ = self.epoll.delete(self.listener.as_fd());
            self.listening = false;
        }
        for (_, conn) in self.conns.iter_mut() {
            conn.read_done = true;
        }
    }

    fn accept_ready(&mut self) {
        // Bounded so a connection storm cannot starve existing clients.
        for _ in 0..64 {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    self.refuse_for_lack_of_fds();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return, // ECONNABORTED and the like: that client is gone
            }
        }
    }

    /// Out of descriptors: free the spare, accept, say `busy`, close.
    fn refuse_for_lack_of_fds(&mut self) {
        if self
            .last_fd_warning
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            logging::warn(format_args!(
                "out of file descriptors: new clients are told busy"
            ));
            self.last_fd_warning = Some(Instant::now());
        }
        self.spare_fd = None;
        if let Ok((stream, _)) = self.listener.accept() {
            say_busy(&stream, "server is out of file descriptors");
        }
        self.spare_fd = open_spare();
    }

    fn lane(&self) -> &Lane {
        &self.shared.lanes[self.index]
    }

    /// Counts a new client in, then serves it here or, if another worker
    /// has fewer clients, hands it over: whichever worker the kernel woke
    /// to accept, connections spread evenly.
    fn admit(&mut self, stream: UnixStream) {
        let clients = self.shared.clients.fetch_add(1, Ordering::Relaxed);
        if clients >= self.shared.config.max_clients {
            self.shared.clients.fetch_sub(1, Ordering::Relaxed);
            say_busy(&stream, "too many clients");
            return;
        }
        let lanes = &self.shared.lanes;
        let target = (0..lanes.len())
            .min_by_key(|&i| (lanes[i].load.load(Ordering::Relaxed), i != self.index))
            .unwrap_or(self.index);
        lanes[target].load.fetch_add(1, Ordering::Relaxed);
        if target == self.index {
            self.register(stream);
        } else {
            lock(&lanes[target].inbox).push(stream);
            let _ = lanes[target].waker.write(1);
        }
    }

    /// A client counted in by [`Worker::admit`] is gone.
    fn forget_client(&self) {
        self.shared.clients.fetch_sub(1, Ordering::Relaxed);
        self.lane().load.fetch_sub(1, Ordering::Relaxed);
    }

    /// Starts serving a counted-in client on this worker.
    fn register(&mut self, stream: UnixStream) {
        let setup = stream
            .set_nonblocking(true)
            .and_then(|()| PeerIdentity::of(&stream));
        let peer = match setup {
            Ok(peer) => peer,
            Err(_) => {
                self.forget_client();
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
            self.forget_client();
            return;
        }
        entry.insert(Connection {
            stream,
            peer,
            inbuf: Vec::new(),
            tainted: None,
            outq: VecDeque::new(),
            last_active: Instant::now(),
            read_done: false,
            interest,
        });
    }

    fn on_ready(&mut self, key: usize, events: EpollFlags) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // closed earlier in this round
        };
        if events.intersects(
            EpollFlags::EPOLLIN
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLHUP
                | EpollFlags::EPOLLERR,
        ) && conn.wants_input()
            && !conn.has_complete_line()
        {
            read_from(conn, &mut self.read_buf);
        }
        if events.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            // Nobody is left to read the answers.
            conn.read_done = true;
            conn.outq.clear();
            conn.inbuf.clear();
        }
        self.active.push(key);
    }

    /// Answers the lines of every active connection, writes the audit
    /// records, then sends.
    fn answer_and_flush(&mut self) {
        self.active.sort_unstable();
        self.active.dedup();
        let active = std::mem::take(&mut self.active);
        for &key in &active {
            self.answer_lines(key);
        }
        let audited = self.shared.audit.write(&self.audit_buf);
        self.audit_buf.clear();
        if let Err(e) = &audited {
            logging::error(format_args!(
                "audit log write failed, refusing the grants of this batch: {e}"
            ));
        }
        for &key in &active {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            for out in conn.outq.iter_mut().filter(|o| o.unaudited) {
                out.unaudited = false;
                if audited.is_err() && out.fd.is_some() {
                    *out = Outgoing::error(ErrorCode::IoError, "audit log unavailable", false);
                }
            }
            flush(conn);
            if conn.finished() {
                self.close(key);
                continue;
            }
            if conn.can_answer() {
                self.pending.push(key);
            }
            let want = conn.desired_interest();
            if want != conn.interest {
                let mut event = EpollEvent::new(want, key as u64);
                if self.epoll.modify(conn.stream.as_fd(), &mut event).is_ok() {
                    conn.interest = want;
                }
            }
        }
        self.active = active;
        self.active.clear();
    }

    fn answer_lines(&mut self, key: usize) {
        let policy = self.shared.policy.load();
        let max_request = self.shared.config.max_request;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut start = 0;
        while conn.outq.len() < MAX_QUEUED_RESPONSES {
            let Some(newline) = memchr(b'\n', &conn.inbuf[start..]) else {
                break;
            };
            let end = start + newline;
            if end + 1 - start > max_request {
                conn.refuse_oversized_line(max_request, self.clock.now(), &mut self.audit_buf);
                start = 0;
                break;
            }
            let tainted = conn
                .tainted
                .is_some_and(|(from, to)| from <= end && to > start);
            let line = &conn.inbuf[start..end];
            conn.outq.push_back(answer(
                &policy,
                &conn.peer,
                line,
                tainted,
                &mut self.scratch,
                self.clock.now(),
                &mut self.audit_buf,
            ));
            start = end + 1;
        }
        if start > 0 {
            conn.last_active = Instant::now();
            conn.inbuf.drain(..start);
            conn.tainted = conn.tainted.and_then(|(from, to)| {
                (to > start).then(|| (from.saturating_sub(start), to - start))
            });
        }
        if !conn.read_done && !conn.has_complete_line() && conn.inbuf.len() >= max_request {
            conn.refuse_oversized_line(max_request, self.clock.now(), &mut self.audit_buf);
        }
        if conn.read_done && !conn.has_complete_line() {
            // A partial line at the end of the stream is no request.
            conn.inbuf = Vec::new();
        } else if conn.inbuf.is_empty() && conn.inbuf.capacity() > 4096 {
            // An idle client holds no buffer.
            conn.inbuf = Vec::new();
        }
    }

    fn close(&mut self, key: usize) {
        let conn = self.conns.remove(key);
        let _ = self.epoll.delete(conn.stream.as_fd());
        self.forget_client();
    }

    fn close_finished_for_shutdown(&mut self) {
        let done: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.outq.is_empty() && !c.can_answer())
            .map(|(k, _)| k)
            .collect();
        for key in done {
            self.close(key);
        }
    }

    /// Disconnects clients idle or stuck mid-line for longer than the timeout.
    fn sweep_idle(&mut self) {
        let now = Instant::now();
        self.last_sweep = now;
        let timeout = self.shared.config.idle_timeout;
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| now.duration_since(c.last_active) > timeout)
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            self.close(key);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

fn open_spare() -> Option<OwnedFd> {
    File::open("/dev/null").ok().map(OwnedFd::from)
}

/// Best effort: a client we cannot serve is told why before it is closed.
fn say_busy(stream: &UnixStream, why: &str) {
    let _ = stream.set_nonblocking(true);
    let mut line = Vec::new();
    encode::error(&mut line, None, ErrorCode::Busy, why);
    let _ = fdpass::send(stream.as_fd(), &line, None);
}

/// One `recvmsg`; descriptors the client sent are closed at once and the
/// bytes they came with are marked so their request is refused.
fn read_from(conn: &mut Connection, buf: &mut [u8]) {
    match fdpass::recv(conn.stream.as_fd(), buf) {
        Ok(received) if received.bytes == 0 => {
            conn.read_done = true;
        }
        Ok(received) => {
            let from = conn.inbuf.len();
            conn.inbuf.extend_from_slice(&buf[..received.bytes]);
            if !received.fds.is_empty() || received.truncated {
                let to = conn.inbuf.len();
                conn.tainted = Some(conn.tainted.map_or((from, to), |(f, _)| (f, to)));
            }
            // `received.fds` is dropped here: every descriptor is closed.
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(_) => {
            conn.read_done = true;
            conn.inbuf.clear();
            conn.outq.clear();
        }
    }
}

/// Sends queued responses until done or the socket is full.
fn flush(conn: &mut Connection) {
    while let Some(out) = conn.outq.front_mut() {
        debug_assert!(!out.unaudited);
        let fd = out.fd.as_ref().map(|f| f.as_fd());
        match fdpass::send(conn.stream.as_fd(), &out.bytes[out.sent..], fd) {
            Ok(n) => {
                out.sent += n;
                out.fd = None; // delivered with the first byte
                conn.last_active = Instant::now();
                if out.sent == out.bytes.len() {
                    conn.outq.pop_front();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                // The client is gone; drop everything it asked for.
                conn.outq.clear();
                conn.inbuf.clear();
                conn.read_done = true;
                return;
            }
        }
    }
}

/// Records a malformed request in the audit buffer.
fn record_bad_request(peer: &PeerIdentity, ts: &str, audit: &mut Vec<u8>) {
    let mut record = Record::new(peer, ts);
    record.code = Some(ErrorCode::BadRequest.as_str());
    record.append_to(audit);
}

/// Answers one request line, appending its audit record.
fn answer(
    policy: &Policy,
    peer: &PeerIdentity,
    line: &[u8],
    carried_fds: bool,
    scratch: &mut Scratch,
    ts: &str,
    audit: &mut Vec<u8>,
) -> Outgoing {
    let parsed = parse_request(line);
    let mut bytes = Vec::with_capacity(192);
    let request = match parsed.request {
        Ok(_) if carried_fds => Err(RequestError::Malformed(
            "file descriptors are not accepted".into(),
        )),
        other => other,
    };
    let (op, file, intent) = match &request {
        // Not a decision: nothing to audit.
        Ok(Request::Hello) => {
            encode::hello(&mut bytes, parsed.id);
            return Outgoing::new(bytes, None, false);
        }
        Err(e) => {
            encode::error(&mut bytes, parsed.id, ErrorCode::BadRequest, &e.to_string());
            record_bad_request(peer, ts, audit);
            return Outgoing::new(bytes, None, true);
        }
        Ok(Request::Open(file)) => (Op::Open, file, Intent::Open),
        Ok(Request::Check(file)) => (Op::Check, file, Intent::Check),
    };
    let decision = decision::decide(policy, file, peer, intent, scratch);
    let mut record = Record::new(peer, ts);
    record.op = Some(op.as_str());
    record.set_path(&file.path.path);
    record.mode = Some(file.mode.as_str());
    match &decision {
        Ok(granted) => {
            encode::grant(&mut bytes, parsed.id, &granted.grant, op == Op::Open);
            record.ok = true;
            record.rule = Some(&granted.grant.rule);
            if let Some(real) = &granted.real_path {
                record.set_real_path(real);
            }
        }
        Err(refusal) => {
            encode::error(&mut bytes, parsed.id, refusal.code, &refusal.message);
            record.code = Some(refusal.code.as_str());
            record.rule = refusal.rule.as_deref();
        }
    }
    record.append_to(audit);
    // `check` decides the same but opens nothing.
    let fd = decision.ok().and_then(|granted| granted.file);
    Outgoing::new(bytes, fd, true)
}
