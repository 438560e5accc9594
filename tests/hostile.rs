//! Clients that lie, stall, flood or send garbage, and a filesystem that
//! changes underneath: the server keeps serving and leaks nothing. Every
//! loop here is bounded in count and time.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, symlink};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// A server with one worker, so a stall anywhere would stall everyone.
fn one_worker(extra: &[&str]) -> TestServer {
    let dir = scratch();
    fs::write(dir.path().join("a.txt"), "a").unwrap();
    let d = glob(dir.path());
    let policy = json!({"rules": [{"name": "all", "paths": [format!("{d}/**")]}]}).to_string();
    let mut args = vec!["--workers", "1"];
    args.extend_from_slice(extra);
    TestServer::start_in(dir, &policy, &args)
}

/// `count` hellos on a fresh connection must all be answered within `limit`.
fn prompt_answers(s: &TestServer, count: usize, limit: Duration) {
    let start = Instant::now();
    let mut c = s.client();
    c.stream().set_read_timeout(Some(limit)).unwrap();
    for i in 0..count {
        let (v, _) = ask(&mut c, &json!({"op": "hello", "id": i}).to_string());
        assert_eq!(v["id"], i);
    }
    assert!(start.elapsed() < limit, "took {:?}", start.elapsed());
}

#[test]
fn clients_that_never_read_half_send_or_trickle_stall_nobody() {
    let s = one_worker(&[]);
    let path = s.path("a.txt");
    let stop = Arc::new(AtomicBool::new(false));

    // Floods open requests and never reads a response.
    let mut flooder = s.connect();
    flooder
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let line = format!("{}\n", open_line(&path, None));
    let flood = line.repeat(1000);
    for _ in 0..50 {
        if flooder.write_all(flood.as_bytes()).is_err() {
            break; // its socket is full: the server stopped reading it
        }
    }
    // Sends half a line and goes silent.
    let mut half = s.connect();
    half.write_all(b"{\"op\":\"open\",\"pa").unwrap();
    // Trickles one byte at a time.
    let trickler = {
        let mut t = s.connect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            for byte in b"{\"op\":\"hello\"".iter().cycle().take(2000) {
                if stop.load(Ordering::Relaxed) || t.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    prompt_answers(&s, 200, Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    trickler.join().unwrap();
    drop((flooder, half));
    prompt_answers(&s, 10, Duration::from_secs(10));
}

#[test]
fn idle_and_slow_clients_are_disconnected_after_the_timeout() {
    let s = one_worker(&["--idle-timeout", "1s"]);
    let start = Instant::now();
    let mut idle = s.connect();
    let mut slow = s.connect();
    slow.write_all(b"{\"op\":").unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(idle.read_to_end(&mut buf).unwrap(), 0, "idle client closed");
    assert_eq!(slow.read_to_end(&mut buf).unwrap(), 0, "slow client closed");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "closed too late: {waited:?}"
    );
    // An active client is not cut off while it keeps asking.
    let mut c = s.client();
    for _ in 0..6 {
        assert_eq!(ask(&mut c, r#"{"op":"hello"}"#).0["ok"], true);
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn out_of_descriptors_is_busy_then_recovers() {
    let dir = scratch();
    fs::write(dir.path().join("a.txt"), "a").unwrap();
    let d = glob(dir.path());
    let policy = json!({"rules": [{"name": "all", "paths": [format!("{d}/**")]}]}).to_string();
    let s = TestServer::start_with_fd_limit(dir, &policy, &["--workers", "1"], Some((32, 32)));
    let path = s.path("a.txt");
    // Served while descriptors last.
    let mut first = s.client();
    assert_eq!(ask(&mut first, &open_line(&path, None)).0["ok"], true);
    // Many more clients than descriptors: the excess are told busy, and so
    // are opens that find no descriptor left; nobody gets a broken answer.
    let mut streams = Vec::new();
    for _ in 0..60 {
        streams.push(s.connect());
    }
    for stream in &mut streams {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.write_all(format!("{}\n", open_line(&path, None)).as_bytes());
    }
    let mut answers = Vec::new();
    for stream in streams.drain(..) {
        let mut c = fdopen::Client::from_stream(stream);
        answers.push(
            c.receive()
                .map(|r| (r.line.ok, r.line.error.map(|e| e.code))),
        );
    }
    let busy = answers
        .iter()
        .filter(|a| matches!(a, Ok((false, Some(fdopen::ErrorCode::Busy)))))
        .count();
    let granted = answers
        .iter()
        .filter(|a| matches!(a, Ok((true, _))))
        .count();
    assert!(busy > 0, "{answers:?}");
    assert_eq!(
        busy + granted,
        answers.len(),
        "only grants and busy: {answers:?}"
    );
    drop(first);
    // All gone: the server serves again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = s.client();
        if ask(&mut c, &open_line(&path, None)).0["ok"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "server did not recover");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        s.stderr_text().lines().count() < 50,
        "no log flood: {}",
        s.stderr_text()
    );
}

/// Sets another process's descriptor limit (`prlimit(2)`).
fn set_fd_limit(pid: u32, limit: u64) {
    let new = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: plain syscall with a valid struct; the old limit is not read.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn squeezed_for_descriptors_every_client_gets_an_answer_every_time() {
    let dir = scratch();
    fs::write(dir.path().join("a.txt"), "a").unwrap();
    let d = glob(dir.path());
    let policy = json!({"rules": [{"name": "all", "paths": [format!("{d}/**")]}]}).to_string();
    // Two lanes race for the last descriptors.
    let s = TestServer::start_in(dir, &policy, &["--workers", "2"]);
    let path = s.path("a.txt");
    let pid = s.pid();
    assert_eq!(s.ask(r#"{"op":"hello"}"#).0["ok"], true);
    let at_rest = settled_fd_count(&s);
    set_fd_limit(pid, at_rest as u64 + 3);
    let line = format!("{}\n", open_line(&path, None));
    let busy_seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for round in 0..50 {
        // Four threads connect and ask at once, so both lanes race for
        // the last descriptors; every client holds on until all answered.
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (socket, line, barrier) = (s.socket.clone(), line.clone(), barrier.clone());
                let busy_seen = busy_seen.clone();
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..4 {
                        let mut c = UnixStream::connect(&socket).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        // A client already told busy and closed may see EPIPE.
                        let _ = c.write_all(line.as_bytes());
                        let mut client = fdopen::Client::from_stream(c);
                        let answer = client.receive().unwrap_or_else(|e| {
                            panic!("round {round}, thread {t}, client {i}: no answer: {e}")
                        });
                        let ok = answer.line.ok && answer.fd.is_some();
                        let busy = answer.line.error.as_ref().map(|e| e.code)
                            == Some(fdopen::ErrorCode::Busy);
                        assert!(ok || busy, "round {round}: {:?}", answer.line);
                        held.push(client);
                        busy_seen.fetch_add(busy as usize, Ordering::Relaxed);
                    }
                    barrier.wait();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
    // The squeeze was real: sixteen clients never all fit in three slots.
    assert!(busy_seen.load(Ordering::Relaxed) >= 50, "{busy_seen:?}");
    // All gone: a lone client fits in the squeeze and is served.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.ask(&open_line(&path, None)).0["ok"] != true {
        assert!(Instant::now() < deadline, "server did not recover");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let s = TestServer::start_with_fd_limit(scratch(), r#"{"rules":[]}"#, &[], Some((64, 4096)));
    let limits = fs::read_to_string(format!("/proc/{}/limits", s.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{line}");
}

/// Exchanges two directory entries atomically, `rounds` times or until `stop`.
fn swapper(
    a: std::path::PathBuf,
    b: std::path::PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut swaps = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            renameat2(AT_FDCWD, &a, AT_FDCWD, &b, RenameFlags::RENAME_EXCHANGE).unwrap();
            swaps += 1;
        }
        swaps
    })
}

/// Opens `target` `count` times (pipelined) and checks every fd received.
fn hammer(
    s: &TestServer,
    target: &std::path::Path,
    count: usize,
    allowed_ino: u64,
) -> (usize, usize) {
    let mut c = s.client();
    let line = format!("{}\n", open_line(target, None));
    let (mut granted, mut refused) = (0, 0);
    for _ in 0..count / 50 {
        c.send_raw(line.repeat(50).as_bytes()).unwrap();
        for _ in 0..50 {
            let (v, fd) = receive(&mut c);
            match fd {
                Some(fd) => {
                    let ino = fs::File::from(fd).metadata().unwrap().ino();
                    assert_eq!(ino, allowed_ino, "handed out a forbidden file: {v}");
                    granted += 1;
                }
                None => refused += 1,
            }
        }
    }
    (granted, refused)
}

fn race_server() -> TestServer {
    let dir = scratch();
    fs::create_dir_all(dir.path().join("allowed/dir")).unwrap();
    fs::create_dir(dir.path().join("forbidden")).unwrap();
    fs::write(dir.path().join("allowed/real.txt"), "allowed").unwrap();
    fs::write(dir.path().join("allowed/dir/file.txt"), "allowed too").unwrap();
    fs::write(dir.path().join("forbidden/secret.txt"), "secret").unwrap();
    fs::write(dir.path().join("forbidden/file.txt"), "secret too").unwrap();
    let d = glob(dir.path());
    let policy =
        json!({"rules": [{"name": "allowed", "paths": [format!("{d}/allowed/**")]}]}).to_string();
    TestServer::start_in(dir, &policy, &[])
}

#[test]
fn swapping_a_file_for_a_symlink_never_leaks_the_target() {
    let s = race_server();
    let target = s.path("allowed/target");
    let alt = s.path("allowed/target.alt");
    fs::hard_link(s.path("allowed/real.txt"), &target).unwrap();
    symlink(s.path("forbidden/secret.txt"), &alt).unwrap();
    let allowed_ino = fs::metadata(s.path("allowed/real.txt")).unwrap().ino();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = swapper(target.clone(), alt, stop.clone());
    let (granted, refused) = hammer(&s, &target, 5000, allowed_ino);
    stop.store(true, Ordering::Relaxed);
    let swaps = swaps.join().unwrap();
    eprintln!("{swaps} swaps, {granted} granted, {refused} refused");
    assert!(swaps > 1000, "the race must actually be run: {swaps} swaps");
    assert_eq!(granted + refused, 5000);
}

#[test]
fn swapping_a_directory_for_a_symlink_never_leaks_the_target() {
    let s = race_server();
    let dir = s.path("allowed/dir");
    let alt = s.path("allowed/dir.alt");
    symlink(s.path("forbidden"), &alt).unwrap();
    let allowed_ino = fs::metadata(s.path("allowed/dir/file.txt")).unwrap().ino();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = swapper(dir.clone(), alt, stop.clone());
    let (granted, refused) = hammer(&s, &dir.join("file.txt"), 5000, allowed_ino);
    stop.store(true, Ordering::Relaxed);
    let swaps = swaps.join().unwrap();
    eprintln!("{swaps} swaps, {granted} granted, {refused} refused");
    assert!(swaps > 1000, "the race must actually be run: {swaps} swaps");
    assert_eq!(granted + refused, 5000);
}

/// The server's descriptor count once start-up is over: a full round trip
/// first, so the readiness notification's socket is surely closed.
fn settled_fd_count(s: &TestServer) -> usize {
    let mut c = s.client();
    assert_eq!(ask(&mut c, r#"{"op":"hello"}"#).0["ok"], true);
    // Minus the descriptor the server holds for `c` right now.
    fd_count(s.pid()) - 1
}

/// Polls the server's descriptor count until it is back to `baseline`.
fn assert_fds_return_to(pid: u32, baseline: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = fd_count(pid);
        if now <= baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors leaked: {now} open, {baseline} at start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn no_descriptor_leaks_after_tens_of_thousands_of_requests() {
    let s = race_server();
    let fifo = s.path("allowed/fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let baseline = settled_fd_count(&s);
    let lines: Vec<String> = vec![
        open_line(&s.path("allowed/real.txt"), None),
        open_line(&s.path("allowed/real.txt"), None).replace("open", "check"),
        open_line(&s.path("forbidden/secret.txt"), None),
        open_line(&fifo, None),
        open_line(&s.path("allowed/missing"), None),
        open_line(&s.path("allowed/dir"), None),
        "{\"op\":\"open\",\"path\":\"relative\"}".into(),
        "garbage".into(),
    ];
    let batch: String = lines
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .repeat(25);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let socket = s.socket.clone();
            let batch = batch.clone();
            std::thread::spawn(move || {
                let mut c = fdopen::Client::connect(&socket).unwrap();
                for round in 0..25 {
                    c.send_raw(batch.as_bytes()).unwrap();
                    // Some rounds hang up without reading: the server must
                    // drop the descriptors it queued.
                    if (round + t) % 7 == 6 {
                        c = fdopen::Client::connect(&socket).unwrap();
                        continue;
                    }
                    for _ in 0..200 {
                        c.receive().unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Clients sending descriptors, many at once.
    for _ in 0..20 {
        let stream = s.connect();
        let files: Vec<fs::File> = (0..200)
            .map(|_| fs::File::open("/dev/null").unwrap())
            .collect();
        let raw: Vec<i32> = files.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
        let iov = [std::io::IoSlice::new(b"{\"op\":\"hello\"}\n")];
        nix::sys::socket::sendmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            &iov,
            &cmsg,
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut c = fdopen::Client::from_stream(stream);
        assert_eq!(
            c.receive().unwrap().line.error.unwrap().code,
            fdopen::ErrorCode::BadRequest
        );
    }
    assert!(s.audit_lines().len() >= 15_000);
    assert_fds_return_to(s.pid(), baseline);
}

/// A tiny deterministic generator, so failures reproduce.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn garbage_gets_bad_request_and_the_server_stays_correct() {
    let s = one_worker(&[]);
    let baseline = settled_fd_count(&s);
    let mut rng = XorShift(0x9e3779b97f4a7c15);
    let mut lines: Vec<Vec<u8>> = (0..500)
        .map(|_| {
            let len = (rng.next() % 300) as usize;
            (0..len)
                .map(|_| (rng.next() % 256) as u8)
                .map(|b| if b == b'\n' { b' ' } else { b })
                .collect()
        })
        .collect();
    lines.push(
        format!(
            "{{\"op\":\"open\",\"path\":{}{}}}",
            "[".repeat(20_000),
            "]".repeat(20_000)
        )
        .into_bytes(),
    );
    lines.push(b"{\"op\":\"open\",\"path\":\"/x\",\"mode\":1e400}".to_vec());
    lines.push(b"{\"op\":\"open\",\"path\":\"\\ud800\"}".to_vec());
    lines.push(b"".to_vec());
    lines.push(b"\xc0\xaf\xed\xa0\x80".to_vec());
    let mut c = s.client();
    for line in &lines {
        let mut framed = line.clone();
        framed.push(b'\n');
        c.send_raw(&framed).unwrap();
        let (v, fd) = receive(&mut c);
        assert!(fd.is_none());
        assert_eq!(code(&v), "bad_request", "{}", String::from_utf8_lossy(line));
    }
    // A number too big for any float is still valid JSON: echoed exactly.
    let huge = "9".repeat(5000);
    c.send_raw(format!("{{\"op\":\"hello\",\"id\":{huge}}}\n").as_bytes())
        .unwrap();
    let response = c.receive().unwrap();
    assert!(response.line.ok);
    assert_eq!(response.line.id.unwrap().get(), huge);
    // Thousands of connections opened and dropped, some mid-line.
    for i in 0..3000 {
        let mut stream = UnixStream::connect(&s.socket).unwrap();
        if i % 3 == 0 {
            let _ = stream.write_all(b"{\"op\":\"ope");
        }
    }
    prompt_answers(&s, 10, Duration::from_secs(10));
    drop(c);
    assert_fds_return_to(s.pid(), baseline);
}

#[test]
fn sigterm_finishes_responses_in_flight_and_flushes_the_audit_log() {
    let mut s = race_server();
    let path = s.path("allowed/real.txt");
    let mut c = s.client();
    let batch: String = (0..100)
        .map(|i| format!("{}\n", json!({"op":"open","path":path,"id":i})))
        .collect();
    c.send_raw(batch.as_bytes()).unwrap();
    // The first answer shows the batch has reached the server.
    let (first, _) = receive(&mut c);
    assert_eq!(first["id"], 0);
    s.signal(Signal::SIGTERM);
    for i in 1..100 {
        let (v, fd) = receive(&mut c);
        assert_eq!(v["id"], i);
        assert!(fd.is_some());
    }
    let mut rest = Vec::new();
    assert_eq!(c.stream().read_to_end(&mut rest).unwrap(), 0);
    let status = s.stop_with(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0));
    assert_eq!(s.audit_lines().len(), 100);
    assert!(!s.socket.exists());
}

#[test]
fn sigint_stops_cleanly_too() {
    let mut s = one_worker(&[]);
    assert_eq!(s.ask(r#"{"op":"hello"}"#).0["ok"], true);
    assert_eq!(s.stop_with(Signal::SIGINT).code(), Some(0));
    assert!(!s.socket.exists());
}

#[test]
fn descriptors_sent_with_a_request_are_closed_even_in_bulk() {
    let s = one_worker(&[]);
    let baseline = settled_fd_count(&s);
    let stream = s.connect();
    let files: Vec<fs::File> = (0..253)
        .map(|_| fs::File::open("/dev/null").unwrap())
        .collect();
    for f in &files[..3] {
        fdopen::fdpass::send(stream.as_fd(), b"{\"op\":\"hello\"}\n", Some(f.as_fd())).unwrap();
    }
    let mut c = fdopen::Client::from_stream(stream);
    for _ in 0..3 {
        let v: Value = serde_json::to_value(c.receive().unwrap().line).unwrap();
        assert_eq!(code(&v), "bad_request");
    }
    drop(c);
    assert_fds_return_to(s.pid(), baseline);
}
