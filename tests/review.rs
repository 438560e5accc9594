//! An adversarial review of issues 19 and 22 against SPEC v3, against the
//! real server: edge values and races an outside suite tries, each a hole
//! found in what had landed.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::upgrade::{Adopted, adopt_orphans, install, main_pid, start_from_copy, upgrade};
use common::{TestServer, code};
use nix::sys::signal::Signal;
use serde_json::Value;

const HELD_POLICY: &str = r#"{"rules":[
  {"name":"own","names":["**"],"ops":["store","retrieve","list","drop","park","wake"]}
]}"#;

/// The names the server holds for us.
fn listed_names(server: &TestServer) -> Vec<String> {
    let listed = server.client().list(None, None).unwrap();
    listed.into_iter().map(|l| l.name).collect()
}

/// `--fs-timeout` too long for the clock (SPEC §2: no duration may panic
/// the clock arithmetic) also reaches the upgrade's wait for the lanes:
/// `SIGUSR2` must fail or succeed, never take the server down with it.
#[test]
fn an_upgrade_with_an_fs_timeout_too_long_for_the_clock_keeps_serving() {
    let flags = ["--fs-timeout", "300000000000y"];
    let Some((server, copy)) = start_from_copy(HELD_POLICY, &flags) else {
        return;
    };
    let mut client = server.client();
    let (kept, _far) = UnixStream::pair().unwrap();
    client.store("kept", kept.as_fd(), None).unwrap();
    // The new binary is missing: the upgrade fails and the old server
    // serves on, with what it held.
    std::fs::remove_file(&copy).unwrap();
    let said = upgrade(&server);
    assert!(said.starts_with("STATUS=upgrade failed"), "{said}");
    assert_eq!(listed_names(&server), ["kept"]);
    let log = server.stderr_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// A client that does not read its answers has read lines the old server
/// could not answer before the upgrade (its queue full). Once the holder
/// is handed over, the old server may answer none of them: a `store` it
/// answered then went into a holder nobody serves any more, and the fd
/// was lost with an `ok` (SPEC §3.4: clients are closed after their
/// answered requests; anything unanswered is theirs to resend).
#[test]
fn an_upgraded_server_answers_nothing_more_that_the_successor_would_not_have() {
    let Some((mut server, _)) = start_from_copy(HELD_POLICY, &["--workers", "1"]) else {
        return;
    };
    let stream = server.connect();
    let (kept, _far) = UnixStream::pair().unwrap();
    // Stopped, so that one read takes both messages: many lines whose
    // answers fill the socket and the queue, then a `store` with its fd.
    server.signal(Signal::SIGSTOP);
    let hellos = "{\"op\":\"hello\"}\n".repeat(3000);
    let sent = fdopen::fdpass::send(stream.as_fd(), hellos.as_bytes(), None).unwrap();
    assert_eq!(sent, hellos.len());
    let store = "{\"op\":\"store\",\"name\":\"late\"}\n";
    fdopen::fdpass::send(stream.as_fd(), store.as_bytes(), Some(kept.as_fd())).unwrap();
    drop(kept);
    server.signal(Signal::SIGCONT);
    // The first answer comes once the server has read everything.
    let mut answers = BufReader::new(stream.try_clone().unwrap());
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut first = String::new();
    answers.read_line(&mut first).unwrap();

    let said = upgrade(&server);
    let new_pid = main_pid(&said);
    let mut store_answer = None;
    for line in answers.lines() {
        let Ok(line) = line else { break };
        let v: Value = serde_json::from_str(&line).unwrap();
        if v.get("server").is_none() {
            store_answer = Some(v);
        }
    }
    let successor = Adopted(new_pid);
    let old_exit = common::wait_timeout(server.child.as_mut().unwrap(), Duration::from_secs(30));
    assert!(old_exit.is_some_and(|s| s.success()), "{old_exit:?}");
    let listed = server.client().list(None, None).unwrap();
    drop(successor);
    if let Some(answer) = store_answer {
        assert!(
            answer["ok"] != true || listed.iter().any(|l| l.name == "late"),
            "the old server said {answer} but the successor holds {listed:?}"
        );
    }
}

/// Sends `bytes` in one `sendmsg`, with `fd` attached.
fn send_part(stream: &UnixStream, bytes: &str, fd: Option<BorrowedFd<'_>>) {
    let sent = fdopen::fdpass::send(stream.as_fd(), bytes.as_bytes(), fd).unwrap();
    assert_eq!(sent, bytes.len());
}

/// Whether the server closed its end of the socket pair `ours` was
/// sent from: our end reads end of file.
fn closed_by_server(ours: &mut UnixStream) -> bool {
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    matches!(ours.read(&mut [0u8; 1]), Ok(0))
}

/// SPEC §2: each fd belongs to the line whose `sendmsg` carried it, and
/// a `store` takes exactly one, on its first byte. A line sent in two
/// parts with an fd on each came with two: `bad_request`, both closed
/// (the second used to be closed unseen and the first stored). An fd
/// on the second part of a `list` came with a `list`: `bad_request` too.
#[test]
fn fds_sent_with_the_rest_of_a_split_line_are_that_lines() {
    let s = TestServer::start(HELD_POLICY, &[]);
    let stream = s.connect();
    let mut answers = fdopen::Client::from_stream(stream.try_clone().unwrap());
    let (one, mut one_far) = UnixStream::pair().unwrap();
    let (two, mut two_far) = UnixStream::pair().unwrap();
    send_part(&stream, r#"{"op":"store","na"#, Some(one.as_fd()));
    send_part(&stream, "me\":\"split\"}\n", Some(two.as_fd()));
    drop((one, two));
    let answer = common::receive(&mut answers).0;
    assert_eq!(code(&answer), "bad_request", "{answer}");
    assert!(closed_by_server(&mut one_far) && closed_by_server(&mut two_far));

    let (three, mut three_far) = UnixStream::pair().unwrap();
    send_part(&stream, r#"{"op":"li"#, None);
    send_part(&stream, "st\"}\n", Some(three.as_fd()));
    drop(three);
    let answer = common::receive(&mut answers).0;
    assert_eq!(code(&answer), "bad_request", "{answer}");
    assert!(closed_by_server(&mut three_far));

    // One fd, on the first part: stored, and the connection serves on.
    let (four, _four_far) = UnixStream::pair().unwrap();
    send_part(&stream, r#"{"op":"store","na"#, Some(four.as_fd()));
    send_part(&stream, "me\":\"whole\"}\n{\"op\":\"list\"}\n", None);
    assert_eq!(common::receive(&mut answers).0["ok"], true);
    let listed = common::receive(&mut answers).0;
    let names: Vec<&str> = listed["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["whole"], "{listed}");
}

/// Everything listed under `prefix`: name → its `expires`.
fn expiries(s: &TestServer, prefix: &str) -> BTreeMap<String, Option<String>> {
    let mut client = s.client();
    let listed = client.list(Some(prefix), None).unwrap();
    listed.into_iter().map(|l| (l.name, l.expires)).collect()
}

/// Polls `list` until `done` holds of it (each look is a round trip to
/// the holder, which acts on its own thread).
fn await_listing(
    s: &TestServer,
    prefix: &str,
    mut done: impl FnMut(&BTreeMap<String, Option<String>>) -> bool,
) -> BTreeMap<String, Option<String>> {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = expiries(s, prefix);
        if done(&now) {
            return now;
        }
        assert!(
            std::time::Instant::now() < until,
            "never came: {}",
            now.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SPEC §3.4: a parked fd expires when its `expires` says. One woken for
/// a subscriber that does not read waits in its queue; when the
/// subscriber leaves it is parked again (and an upgrade hands it over as
/// parked): with the expiry it had, not with the time it had left when
/// it was woken counted again from then.
#[test]
fn a_wakeup_parked_again_keeps_its_expiry() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const PARKED: usize = 800;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard < 4 * PARKED as u64 {
        eprintln!("skipped: needs {} descriptors", 4 * PARKED);
        return;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let s = TestServer::start(HELD_POLICY, &[]);
    let mut client = s.client();
    let mut peers = Vec::new();
    for i in 0..PARKED {
        let (ours, peer) = UnixStream::pair().unwrap();
        let expires = Some(Duration::from_secs(3600));
        client
            .park(&format!("w/{i}"), ours.as_fd(), expires)
            .unwrap();
        peers.push(peer);
    }
    let before = expiries(&s, "w/");
    assert_eq!(before.len(), PARKED);
    // A subscriber that never reads: its socket fills, then its queue.
    let subscriber = s.connect();
    send_part(&subscriber, "{\"op\":\"wake\",\"prefix\":\"w/\"}\n", None);
    for peer in &mut peers {
        peer.write_all(b"x").unwrap();
    }
    // Woken fds leave the listing; those that do not fit stay parked.
    let mut last = PARKED;
    let stuck = await_listing(&s, "w/", |now| {
        let settled = now.len() == last && now.len() < PARKED - 256;
        last = now.len();
        settled
    });
    // Time passes: an expiry counted again from now would show it.
    std::thread::sleep(Duration::from_millis(2100));
    drop(subscriber);
    let after = await_listing(&s, "w/", |now| now.len() > stuck.len());
    for (name, expires) in &after {
        assert_eq!(Some(expires), before.get(name), "{name}");
    }
}

/// A filesystem with one file, `f`, whose attributes can be made to hang:
/// a client's fd on a hung FUSE mount (any user may mount one).
mod hanging {
    use std::ffi::OsStr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use fuser::{
        Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, ReplyAttr,
        ReplyEntry, Request,
    };

    #[derive(Default)]
    pub struct Gate {
        pub hung: AtomicBool,
        pub blocked: AtomicUsize,
    }

    pub struct Fs(pub Arc<Gate>);

    fn attr(ino: u64, kind: FileType) -> FileAttr {
        crate::common::fuse::attr(ino, kind, 0, 0o755)
    }

    impl Filesystem for Fs {
        fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
            if parent == INodeNo::ROOT && name == "f" {
                let attr = attr(2, FileType::RegularFile);
                reply.entry(&Duration::ZERO, &attr, Generation(0));
            } else {
                reply.error(Errno::ENOENT);
            }
        }

        /// While hung, never answers (until the mount is aborted): every
        /// `fstat` of the file waits.
        fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
            if u64::from(ino) == 2 && self.0.hung.load(Ordering::SeqCst) {
                self.0.blocked.fetch_add(1, Ordering::SeqCst);
                std::mem::forget(reply);
                return;
            }
            let kind = if u64::from(ino) == 1 {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            reply.attr(&Duration::ZERO, &attr(u64::from(ino), kind));
        }
    }
}

/// SPEC §2, §3.4: nothing a client sends may stall the thread that
/// serves others. `park` checks that its fd is a socket; with `fstat` it
/// asked the fd's filesystem, and an fd on a hung FUSE mount held the
/// worker, and every client on it, for as long as the mount hung.
#[test]
fn parking_an_fd_on_a_hung_filesystem_stalls_no_one() {
    if let Err(why) = common::fuse::available() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = common::scratch();
    let gate = std::sync::Arc::new(hanging::Gate::default());
    let mount = common::fuse::Mounted::new(&dir.path().join("mnt"), hanging::Fs(gate.clone()))
        .expect("mount");
    let file = std::fs::File::open(mount.point.join("f")).unwrap();
    gate.hung.store(true, std::sync::atomic::Ordering::SeqCst);

    let s = TestServer::start(HELD_POLICY, &["--workers", "1"]);
    let parking = s.connect();
    parking
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut parked = fdopen::Client::from_stream(parking.try_clone().unwrap());
    send_part(
        &parking,
        "{\"op\":\"park\",\"name\":\"p\"}\n",
        Some(file.as_fd()),
    );
    let other = s.connect();
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    send_part(&other, "{\"op\":\"hello\"}\n", None);
    let mut hello = String::new();
    let answered = BufReader::new(&other)
        .read_line(&mut hello)
        .is_ok_and(|n| n > 0);
    let park = parked.receive();
    mount.abort();
    assert!(
        answered,
        "hello went unanswered while a park looked at the hung file"
    );
    let park = serde_json::to_value(park.expect("park answered").line).unwrap();
    assert_eq!(code(&park), "not_regular", "{park}");
}

/// SPEC §3.4: an upgrade runs the binary "from the path it was started
/// from". Started through a symlink that a release flips (`current` →
/// `v1`, then → `v2`), it must run what that path names now, not the
/// file the symlink led to at start: that re-ran the old release, or
/// failed once the old release was removed.
#[test]
fn an_upgrade_runs_the_path_the_server_was_started_from() {
    if !common::is_root() {
        eprintln!("skipped: the upgrade checks the binary is root's, so this needs root");
        return;
    }
    adopt_orphans();
    let dir = common::scratch();
    let bin = dir.path().join("bin");
    for release in ["v1", "v2"] {
        let at = bin.join(release);
        std::fs::create_dir_all(&at).unwrap();
        std::fs::set_permissions(&at, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        install(
            std::path::Path::new(common::SERVER),
            &at.join("fdopen-server"),
            "0755",
        );
    }
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let current = bin.join("current");
    std::os::unix::fs::symlink("v1", &current).unwrap();
    let started = current.join("fdopen-server");
    let mut server = TestServer::start_program(dir, &started, HELD_POLICY, &[]);
    let (kept, _far) = UnixStream::pair().unwrap();
    server.client().store("kept", kept.as_fd(), None).unwrap();

    // The new release goes in, the old one away.
    let flipped = bin.join("current.new");
    std::os::unix::fs::symlink("v2", &flipped).unwrap();
    std::fs::rename(&flipped, &current).unwrap();
    std::fs::remove_dir_all(bin.join("v1")).unwrap();

    let said = upgrade(&server);
    assert!(
        said.starts_with("MAINPID="),
        "{said}\n{}",
        server.stderr_text()
    );
    let new_pid = main_pid(&said);
    let successor = Adopted(new_pid);
    let old_exit = common::wait_timeout(server.child.as_mut().unwrap(), Duration::from_secs(30));
    assert!(old_exit.is_some_and(|s| s.success()), "{old_exit:?}");
    let exe = std::fs::read_link(format!("/proc/{new_pid}/exe")).unwrap();
    let names = listed_names(&server);
    drop(successor);
    assert_eq!(exe, bin.join("v2/fdopen-server"));
    assert_eq!(names, ["kept"]);
}

/// A `retrieve` with `remove` whose client is gone before the answer
/// can be sent has failed: SPEC §3.4 leaves the held fd as it was. The
/// server took the fd out, wrote its `ok` record, then found nobody to
/// send it to, and closed it.
#[test]
fn a_removed_fd_whose_answer_cannot_be_sent_is_held_again() {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: fault injection exists in debug builds only");
        return;
    }
    let dir = common::scratch();
    let fifo = dir.path().join("gate");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fault = format!("retrieve:taken:gate={}", fifo.display());
    let env = [("FDOPEN_TEST_FAULT", fault.as_str())];
    let server = TestServer::start_with_env(dir, HELD_POLICY, &["--workers", "1"], &env);
    let (ours, theirs) = UnixStream::pair().unwrap();
    server.client().store("x", theirs.as_fd(), None).unwrap();
    drop(theirs);
    let leaving = server.connect();
    let line = b"{\"op\":\"retrieve\",\"name\":\"x\",\"remove\":true}\n";
    fdopen::fdpass::send(leaving.as_fd(), line, None).unwrap();
    // Opening the gate returns once the server has taken the fd out.
    let gate = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    drop(leaving);
    drop(gate);
    // One worker: this is served after the answer above failed to go.
    let back = server.client().retrieve("x", false, None).unwrap();
    let mut back = std::fs::File::from(back);
    back.write_all(b"still").unwrap();
    let mut got = [0u8; 5];
    (&ours).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still");
}

/// A storer in more supplementary groups than one hand-over message
/// holds (here 20,000; Linux allows 65,536) failed the whole upgrade:
/// nobody's fds went to the successor. Its entry now goes without the
/// groups, which decide nothing about a held fd.
#[test]
fn a_storer_in_thousands_of_groups_does_not_fail_the_upgrade() {
    let Some((mut server, _)) = start_from_copy(HELD_POLICY, &[]) else {
        return;
    };
    let (plain, _plain_far) = UnixStream::pair().unwrap();
    server.client().store("plain", plain.as_fd(), None).unwrap();
    let (many, _many_far) = UnixStream::pair().unwrap();
    let many_fd = many.as_fd().try_clone_to_owned().unwrap();
    let socket = server.socket.clone();
    let stored = std::thread::scope(|s| {
        s.spawn(|| {
            // The raw system call changes this thread's groups alone,
            // and the connection carries them (SO_PEERGROUPS).
            let groups: Vec<libc::gid_t> = (1..=20_000).collect();
            // SAFETY: the kernel reads `groups.len()` gids from a live buffer.
            let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            let stream = UnixStream::connect(&socket).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            fdopen::client::Client::from_stream(stream).store("many", many_fd.as_fd(), None)
        })
        .join()
        .unwrap()
    });
    stored.unwrap();
    let said = upgrade(&server);
    assert!(
        said.starts_with("MAINPID="),
        "{said}\n{}",
        server.stderr_text()
    );
    let successor = Adopted(main_pid(&said));
    let old_exit = common::wait_timeout(server.child.as_mut().unwrap(), Duration::from_secs(30));
    let names = listed_names(&server);
    drop(successor);
    assert!(old_exit.is_some(), "the old server did not leave");
    assert_eq!(names, ["many", "plain"]);
}
