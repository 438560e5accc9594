//! Contract v3 hardening (issue 19), the server's side, against the real
//! server: no request takes a worker down, closing never stalls others,
//! fds go to the line that carried them, no client pins the server's
//! descriptors, a failed `retrieve` keeps its fd, and the smaller points.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{TestServer, code, glob, scratch};
use fdopen::Client;
use serde_json::{Value, json};

const HELD_POLICY: &str = r#"{"rules":[
  {"name":"own","names":["**"],"ops":["store","retrieve","list","drop","park","wake"]}
]}"#;

/// Whether the server honours `FDOPEN_TEST_FAULT` (debug builds); says
/// why a test skips if not.
fn fault_injection() -> bool {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: fault injection exists in debug builds only");
    }
    cfg!(debug_assertions)
}

fn uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Sends `line` (a newline is added) in one `sendmsg`, with `fd` attached.
fn send(stream: &UnixStream, line: &str, fd: Option<BorrowedFd<'_>>) {
    let bytes = format!("{line}\n");
    let sent = fdopen::fdpass::send(stream.as_fd(), bytes.as_bytes(), fd).unwrap();
    assert_eq!(sent, bytes.len());
}

/// A client that reads the answers of `stream`, with their fds.
fn reader(stream: &UnixStream) -> Client {
    Client::from_stream(stream.try_clone().unwrap())
}

fn answer(client: &mut Client) -> Value {
    common::receive(client).0
}

/// A server with one worker that lets `*.txt` in its directory be
/// written and created.
fn creating_server(env: &[(&str, &str)]) -> TestServer {
    let dir = scratch();
    let d = glob(dir.path());
    let policy = json!({"rules": [{"name": "up", "paths": [format!("{d}/*.txt")],
        "modes": ["write"], "create": true}]})
    .to_string();
    TestServer::start_with_env(dir, &policy, &["--workers", "1"], env)
}

/// `op` (`store` or `park`) a socket under `name`, then asks for it back
/// (with `remove` or not), which fails `io_error` (the caller sees to
/// that). Returns what the same connection's `list` says next, and the
/// held socket's peer.
fn a_failed_retrieve(s: &TestServer, op: &str, name: &str, remove: bool) -> (Value, UnixStream) {
    let (mine, other) = UnixStream::pair().unwrap();
    let stream = s.connect();
    let mut answers = reader(&stream);
    let hold = json!({"op": op, "name": name}).to_string();
    send(&stream, &hold, Some(mine.as_fd()));
    assert_eq!(answer(&mut answers)["ok"], true);
    let retrieve = json!({"op":"retrieve","name":name,"remove":remove}).to_string();
    send(&stream, &retrieve, None);
    let (failed, fd) = common::receive(&mut answers);
    assert_eq!(code(&failed), "io_error", "{failed}");
    assert!(fd.is_none());
    send(&stream, r#"{"op":"list"}"#, None);
    (answer(&mut answers), other)
}

fn names(listed: &Value) -> Vec<&str> {
    listed["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect()
}

// Point 3: no input takes a worker down.

#[test]
fn expires_is_at_most_ten_years_and_list_keeps_working() {
    let s = TestServer::start(HELD_POLICY, &["--workers", "1"]);
    let (mine, _other) = UnixStream::pair().unwrap();
    let stream = s.connect();
    let mut answers = reader(&stream);
    for expires in ["20000y", "300000000000y", "10y 1d"] {
        let line = json!({"op":"store","name":"far","expires":expires}).to_string();
        send(&stream, &line, Some(mine.as_fd()));
        let refused = answer(&mut answers);
        assert_eq!(code(&refused), "bad_request", "{expires}: {refused}");
    }
    send(
        &stream,
        r#"{"op":"store","name":"near","expires":"10y"}"#,
        Some(mine.as_fd()),
    );
    assert_eq!(answer(&mut answers)["ok"], true);
    send(&stream, r#"{"op":"list"}"#, None);
    let listed = answer(&mut answers);
    assert_eq!(names(&listed), ["near"], "{listed}");
    // Every new client is still served.
    for _ in 0..4 {
        assert_eq!(s.ask(r#"{"op":"hello"}"#).0["ok"], true);
    }
}

#[test]
fn durations_too_long_for_the_clock_on_the_command_line_break_nothing() {
    let huge = "300000000000y";
    let flags = ["--workers", "1", "--busy-poll", huge, "--fs-timeout", huge];
    let s = TestServer::start(HELD_POLICY, &flags);
    for _ in 0..3 {
        assert_eq!(s.ask(r#"{"op":"hello"}"#).0["ok"], true);
    }
    assert!(!s.stderr_text().contains("panicked"), "{}", s.stderr_text());
}

#[test]
fn a_request_that_panics_is_answered_io_error_and_its_taken_fd_goes_back() {
    if !fault_injection() {
        return;
    }
    let mut s = TestServer::start_with_env(
        scratch(),
        HELD_POLICY,
        &["--workers", "1"],
        &[("FDOPEN_TEST_FAULT", "retrieve:taken:panic")],
    );
    let (listed, mut other) = a_failed_retrieve(&s, "store", "jobs/a", true);
    assert_eq!(names(&listed), ["jobs/a"], "{listed}");
    // The thread that served it goes on serving.
    for _ in 0..4 {
        assert_eq!(s.ask(r#"{"op":"hello"}"#).0["ok"], true);
    }
    // Still the very descriptor stored: its peer is not closed.
    other.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let read = other.read(&mut buf);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{read:?}"
    );
    // No record says it was retrieved.
    let audit = s.audit_lines();
    assert!(
        !audit
            .iter()
            .any(|r| r["op"] == "retrieve" && r["ok"] == true),
        "{audit:?}"
    );
    let start = Instant::now();
    s.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "SIGTERM is prompt"
    );
}

#[test]
fn an_open_that_panics_removes_the_file_it_created() {
    if !fault_injection() {
        return;
    }
    let s = creating_server(&[("FDOPEN_TEST_FAULT", "open:decided:panic")]);
    let new = s.path("new.txt");
    let line = json!({"op":"open","path":new,"mode":"write","create":"exclusive"}).to_string();
    let (failed, fd) = s.ask(&line);
    assert_eq!(code(&failed), "io_error", "{failed}");
    assert!(fd.is_none());
    assert!(!new.exists(), "the file it created is removed");
    assert!(
        !s.audit_lines().iter().any(|r| r["ok"] == true),
        "no grant recorded"
    );
    // `check` does not reach the fault and the server serves on.
    let check = json!({"op":"check","path":new,"mode":"write","create":true}).to_string();
    assert_eq!(s.ask(&check).0["ok"], true);
}

// Point 4: closing never stalls others.

/// A loopback TCP socket whose close blocks for 20 s: `SO_LINGER` on,
/// and its send buffer full of data its peer (returned too, to be kept
/// open) never reads.
fn lingering_socket() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let lingering = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (silent, _) = listener.accept().unwrap();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 20,
    };
    // SAFETY: setsockopt reads one `linger` from a live local.
    let set = unsafe {
        libc::setsockopt(
            lingering.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0);
    lingering.set_nonblocking(true).unwrap();
    let chunk = vec![0u8; 65536];
    while (&lingering).write(&chunk).is_ok() {}
    (lingering, silent)
}

/// Stores a [`lingering_socket`] with the `store` line given; the server
/// then holds its only descriptor. Returns the connection, its answers,
/// and the socket's peer.
fn store_lingering(s: &TestServer, store: &str) -> (UnixStream, Client, TcpStream) {
    let (lingering, peer) = lingering_socket();
    let stream = s.connect();
    let mut answers = reader(&stream);
    send(&stream, store, Some(lingering.as_fd()));
    assert_eq!(answer(&mut answers)["ok"], true);
    (stream, answers, peer)
}

/// Asks `line` on a new connection, which must be answered within 2 s.
fn answered_promptly(s: &TestServer, line: &str) {
    let stream = s.connect();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut client = Client::from_stream(stream);
    let started = Instant::now();
    client.send_raw(format!("{line}\n").as_bytes()).unwrap();
    let answered = client.receive();
    assert!(
        answered.is_ok() && started.elapsed() < Duration::from_secs(2),
        "{line} waited {:?}: {answered:?}",
        started.elapsed()
    );
}

#[test]
fn closing_a_lingering_socket_at_expiry_stalls_no_one() {
    let s = TestServer::start(HELD_POLICY, &["--workers", "2"]);
    let (stream, mut answers, _peer) =
        store_lingering(&s, r#"{"op":"store","name":"slow","expires":"1s"}"#);

    // Await the expiry's record, then watch others being served while the
    // close lingers (20 s if it blocked them).
    let audit = s.audit.clone();
    common::await_file(&audit, |text| text.contains(r#""event":"expired""#));
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        for line in [r#"{"op":"list"}"#, r#"{"op":"hello"}"#] {
            answered_promptly(&s, line);
        }
        // Pacing the observation window, not synchronising anything.
        std::thread::sleep(Duration::from_millis(50));
    }
    send(&stream, r#"{"op":"list"}"#, None);
    assert!(names(&answer(&mut answers)).is_empty());
}

// Point 5: fds go to the line whose sendmsg carried them.

/// A server with one worker that waits at a FIFO gate while it answers a
/// `stats` (test-only fault injection; debug builds).
fn gated_server() -> TestServer {
    let dir = scratch();
    let fifo = dir.path().join("gate");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fault = format!("stats:begin:gate={}", fifo.display());
    let env = [("FDOPEN_TEST_FAULT", fault.as_str())];
    TestServer::start_with_env(dir, HELD_POLICY, &["--workers", "1"], &env)
}

/// Holds the only worker of a [`gated_server`] busy until the returned
/// FIFO end is dropped: another client's `stats` takes it to the gate,
/// and opening the FIFO returns once the server waits on its other end.
fn hold_the_worker(s: &TestServer) -> (std::fs::File, UnixStream) {
    let busy = s.connect();
    send(&busy, r#"{"op":"stats"}"#, None);
    let gate = std::fs::OpenOptions::new()
        .write(true)
        .open(s.path("gate"))
        .unwrap();
    (gate, busy)
}

#[test]
fn fds_go_to_their_lines_when_a_busy_server_reads_several_sendmsgs_at_once() {
    if !fault_injection() {
        return;
    }
    let s = gated_server();
    let stream = s.connect();
    let mut answers = reader(&stream);
    send(&stream, r#"{"op":"hello"}"#, None);
    assert_eq!(answer(&mut answers)["ok"], true, "connected and served");

    let gate = hold_the_worker(&s);
    let (one, mut one_peer) = UnixStream::pair().unwrap();
    let (two, mut two_peer) = UnixStream::pair().unwrap();
    send(&stream, r#"{"op":"hello","id":1}"#, None);
    send(
        &stream,
        r#"{"op":"store","name":"one","id":2}"#,
        Some(one.as_fd()),
    );
    send(&stream, r#"{"op":"list","id":3}"#, None);
    send(
        &stream,
        r#"{"op":"store","name":"two","id":4}"#,
        Some(two.as_fd()),
    );
    drop((one, two));
    drop(gate);

    let got: Vec<Value> = (0..4).map(|_| answer(&mut answers)).collect();
    assert!(got.iter().all(|a| a["ok"] == true), "{got:?}");
    assert_eq!(got[0]["server"], "fdopen");
    assert_eq!(names(&got[2]), ["one"]);
    // Each name holds the very descriptor its line carried.
    for (name, peer) in [("one", &mut one_peer), ("two", &mut two_peer)] {
        let line = json!({"op":"retrieve","name":name}).to_string();
        send(&stream, &line, None);
        let (retrieved, fd) = common::receive(&mut answers);
        assert_eq!(retrieved["ok"], true, "{retrieved}");
        UnixStream::from(fd.unwrap())
            .write_all(name.as_bytes())
            .unwrap();
        let mut buf = [0u8; 8];
        let n = peer.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], name.as_bytes());
    }
}

// Point 6: no client pins the server's descriptors.

/// Sends `bytes` with `count` descriptors (of /dev/null) attached.
fn send_many_fds(stream: &UnixStream, bytes: &[u8], count: usize) -> nix::Result<usize> {
    let null = std::fs::File::open("/dev/null").unwrap();
    let fds: Vec<_> = (0..count).map(|_| null.try_clone().unwrap()).collect();
    let raw: Vec<_> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    nix::sys::socket::sendmsg::<()>(
        stream.as_raw_fd(),
        &[std::io::IoSlice::new(bytes)],
        &[nix::sys::socket::ControlMessage::ScmRights(&raw)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
}

/// Whether the server closed `stream` (end of stream or reset) within 20 s.
fn disconnected(stream: &UnixStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 256];
    loop {
        match (&*stream).read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_connection_with_more_than_253_fds_waiting_is_disconnected() {
    let s = TestServer::start(HELD_POLICY, &["--workers", "1"]);
    let baseline = common::fd_count(s.pid());
    let pinning = s.connect();
    // A line never finished: its descriptors wait.
    send_many_fds(&pinning, br#"{"op":"sto"#, 253).unwrap();
    send_many_fds(&pinning, b"re", 253).unwrap();
    assert!(disconnected(&pinning), "disconnected");
    // One round later (one worker) its descriptors are closed.
    assert_eq!(s.ask(r#"{"op":"hello"}"#).0["ok"], true);
    let now = common::fd_count(s.pid());
    assert!(now < baseline + 10, "{baseline} fds before, {now} after");
}

#[test]
fn descriptors_left_unread_on_a_disconnected_client_are_closed_without_stalling() {
    if !fault_injection() {
        return;
    }
    let s = gated_server();
    let (lingering, _peer) = lingering_socket();
    let pinning = s.connect();
    assert_eq!(s.ask(r#"{"op":"hello"}"#).0["ok"], true);
    // All three are queued before the worker reads the first: it reads
    // two, disconnects, and the third goes with the socket, unread.
    let gate = hold_the_worker(&s);
    send_many_fds(&pinning, br#"{"op":"sto"#, 253).unwrap();
    send_many_fds(&pinning, b"re", 253).unwrap();
    fdopen::fdpass::send(pinning.as_fd(), b"\"", Some(lingering.as_fd())).unwrap();
    drop(lingering);
    drop(gate);
    assert!(disconnected(&pinning), "disconnected");
    answered_promptly(&s, r#"{"op":"hello"}"#);
}

#[test]
fn one_uid_may_have_at_most_1024_fds_waiting() {
    let s = TestServer::start(HELD_POLICY, &["--workers", "1"]);
    let within: Vec<UnixStream> = (0..4)
        .map(|_| {
            let c = s.connect();
            send_many_fds(&c, br#"{"op":"hello""#, 250).unwrap();
            c
        })
        .collect();
    // The one worker has read those by the time it answers a client that
    // connected after them (its epoll reports every ready connection).
    assert_eq!(s.ask(r#"{"op":"hello"}"#).0["ok"], true);
    // 4 x 250 wait; 250 more are too many.
    let over = s.connect();
    send_many_fds(&over, br#"{"op":"hello""#, 250).unwrap();
    assert!(disconnected(&over), "over the uid's limit: disconnected");
    // The others are served: their line, which came with fds, is refused.
    for c in &within {
        (&*c).write_all(b"}\n").unwrap();
        let mut answers = reader(c);
        let refused = answer(&mut answers);
        assert_eq!(code(&refused), "bad_request", "{refused}");
    }
}

#[test]
fn dropping_a_lingering_socket_stalls_no_one() {
    let s = TestServer::start(HELD_POLICY, &["--workers", "1"]);
    let (stream, mut answers, _peer) = store_lingering(&s, r#"{"op":"store","name":"slow"}"#);
    send(&stream, r#"{"op":"drop","name":"slow"}"#, None);
    assert_eq!(answer(&mut answers)["ok"], true);
    // The one worker closed it (or goes on while another thread does).
    answered_promptly(&s, r#"{"op":"list"}"#);
    answered_promptly(&s, r#"{"op":"hello"}"#);
}

#[test]
fn the_fds_of_a_client_that_hangs_up_are_closed_without_stalling_others() {
    let s = TestServer::start(HELD_POLICY, &["--workers", "1"]);
    let (lingering, _peer) = lingering_socket();
    let leaving = s.connect();
    // Half a line: its descriptor waits for the rest, which never comes.
    fdopen::fdpass::send(leaving.as_fd(), br#"{"op":"sto"#, Some(lingering.as_fd())).unwrap();
    drop((lingering, leaving));
    // The one worker drops it before it reads a later client's line.
    answered_promptly(&s, r#"{"op":"hello"}"#);
}

// Point 7: a failed retrieve keeps the fd as it was.

#[test]
fn a_retrieve_refused_for_the_audit_log_leaves_the_fd_as_it_was() {
    let dir = scratch();
    // Every write of the audit log fails.
    std::os::unix::fs::symlink("/dev/full", dir.path().join("audit.log")).unwrap();
    let s = TestServer::start_in(dir, HELD_POLICY, &["--workers", "1"]);
    let (listed, _peer) = a_failed_retrieve(&s, "store", "jobs/a", true);
    assert_eq!(names(&listed), ["jobs/a"], "{listed}");
    // A parked fd that a refused retrieve would unpark stays parked.
    let (listed, _peer) = a_failed_retrieve(&s, "park", "web/p", false);
    let parked = &listed["names"][1];
    assert_eq!(
        (&parked["name"], &parked["kind"]),
        (&json!("web/p"), &json!("parked")),
        "{listed}"
    );
}

// Point 8, the server's part: no socket for another network namespace.

#[test]
fn a_bind_from_another_network_namespace_is_denied() {
    if !common::is_root() {
        eprintln!("skipped: a new network namespace needs root");
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let policy = json!({"rules": [{"name": "web", "binds": [format!("tcp:127.0.0.1:{port}")]}]});
    let s = TestServer::start(&policy.to_string(), &[]);
    let line =
        json!({"op":"bind","address":format!("tcp:127.0.0.1:{port}"),"listen":false}).to_string();
    // A thread of our own in a new network namespace makes the socket
    // it connects with (the namespace is per thread until it ends).
    let socket = s.socket.clone();
    let asked = line.clone();
    let elsewhere = std::thread::spawn(move || {
        // SAFETY: unshare takes flags only; it affects this thread alone.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let stream = UnixStream::connect(&socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut client = Client::from_stream(stream);
        Ok::<_, String>(common::ask(&mut client, &asked))
    })
    .join()
    .unwrap();
    let (refused, fd) = match elsewhere {
        Ok(answered) => answered,
        Err(e) => {
            eprintln!("skipped: cannot make a network namespace: {e}");
            return;
        }
    };
    assert_eq!(code(&refused), "denied", "{refused}");
    assert!(fd.is_none());
    // The same request from the server's namespace is granted.
    let (granted, fd) = s.ask(&line);
    assert_eq!(granted["ok"], true, "{granted}");
    assert!(fd.is_some());
}

// Point 9: the smaller ones.

#[test]
fn wake_is_answered_after_the_subscriber_shut_its_write_side() {
    let s = TestServer::start(HELD_POLICY, &[]);
    let stream = s.connect();
    send(&stream, r#"{"op":"wake","prefix":"web/","id":1}"#, None);
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answers = reader(&stream);
    let subscribed = answer(&mut answers);
    assert_eq!(subscribed["subscribed"], "web/", "{subscribed}");

    // And it is woken.
    let (parked, mut peer) = UnixStream::pair().unwrap();
    let mut c = s.client();
    c.park("web/c1", parked.as_fd(), None).unwrap();
    peer.write_all(b"x").unwrap();
    let (woken, fd) = common::receive(&mut answers);
    assert_eq!(woken["event"], "readable", "{woken}");
    assert!(fd.is_some());
}

#[test]
fn list_entries_carry_their_storer() {
    let s = TestServer::start(HELD_POLICY, &[]);
    let (mine, _other) = UnixStream::pair().unwrap();
    let stream = s.connect();
    let mut answers = reader(&stream);
    send(&stream, r#"{"op":"store","name":"a"}"#, Some(mine.as_fd()));
    assert_eq!(answer(&mut answers)["ok"], true);
    send(&stream, r#"{"op":"list"}"#, None);
    let listed = answer(&mut answers);
    assert_eq!(listed["names"][0]["storer"], uid(), "{listed}");
}

#[test]
fn a_check_that_would_create_says_so_in_its_record_only() {
    let s = creating_server(&[]);
    let new = s.path("new.txt");
    let check = json!({"op":"check","path":new,"mode":"write","create":true}).to_string();
    let answered = s.ask(&check).0;
    assert_eq!(answered["created"], true, "{answered}");
    assert!(!new.exists());
    let audit = s.audit_lines();
    let record = audit.iter().find(|r| r["op"] == "check").unwrap();
    assert_eq!(record["would_create"], true, "{record}");
    assert!(record.get("created").is_none(), "{record}");
}

#[test]
fn perm_is_three_or_four_octal_digits() {
    let s = creating_server(&[]);
    let new = s.path("new.txt");
    for perm in ["0o644", "+644", "64", "00644", " 644"] {
        let line = json!({"op":"check","path":new,"mode":"write","create":true,"perm":perm});
        let refused = s.ask(&line.to_string()).0;
        assert_eq!(code(&refused), "bad_request", "{perm}: {refused}");
    }
    for perm in ["644", "0644"] {
        let line = json!({"op":"check","path":new,"mode":"write","create":true,"perm":perm});
        assert_eq!(s.ask(&line.to_string()).0["ok"], true, "{perm}");
    }
}
