//! Held and parked descriptors survive an in-place upgrade (`SIGUSR2`)
//! and a restart through the service manager's fd store (SPEC §3.4),
//! against the real server: each parked connection that sends data is
//! woken with its bytes intact, each held fd is the same open file
//! description, no connection attempt is refused during an upgrade, and
//! a broken new binary leaves the old server serving.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::fake_systemd::FdStore;
use common::upgrade::{Adopted, install, main_pid, start_from_copy, upgrade};
use common::{Launch, SERVER, TestServer, scratch};
use fdopen::{Client, WakeEvent};
use nix::sys::signal::Signal;

const POLICY: &str = r#"{"rules":[
  {"name":"parking","names":["web/**"],"ops":["park","wake","list","retrieve"]},
  {"name":"keeping","names":["keep/**"],"ops":["store","retrieve","list","drop"]}
]}"#;

const PARKED: usize = 1000;
const HELD: usize = 100;

/// Our soft fd limit up to the hard one: both ends of every parked
/// connection and held pipe live in this process.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

/// What a test keeps of everything it parked and stored: the far ends.
struct Fleet {
    /// The client side of each parked TCP connection, by index.
    peers: Vec<TcpStream>,
    /// The reading end of each held pipe, by index.
    pipes: Vec<OwnedFd>,
}

impl Fleet {
    /// Parks `PARKED` loopback connections as `web/cN` and stores the
    /// writing ends of `HELD` pipes as `keep/pN` (every tenth expiring).
    fn hold(server: &TestServer) -> Fleet {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = server.client();
        let mut peers = Vec::new();
        for i in 0..PARKED {
            let peer = TcpStream::connect(addr).unwrap();
            let (ours, _) = listener.accept().unwrap();
            client
                .park(&format!("web/c{i}"), ours.as_fd(), None)
                .unwrap();
            peers.push(peer);
        }
        let mut pipes = Vec::new();
        for i in 0..HELD {
            let (r, w) = nix::unistd::pipe().unwrap();
            let expires = (i % 10 == 0).then_some(Duration::from_secs(3600));
            client
                .store(&format!("keep/p{i}"), w.as_fd(), expires)
                .unwrap();
            pipes.push(r);
        }
        Fleet { peers, pipes }
    }

    /// Everything listed, name → (kind, expiry).
    fn listing(server: &TestServer) -> BTreeMap<String, (String, Option<String>)> {
        let mut client = server.client();
        let mut all = BTreeMap::new();
        for prefix in ["web/", "keep/"] {
            for l in client.list(Some(prefix), None).unwrap() {
                all.insert(l.name, (l.kind, l.expires));
            }
        }
        all
    }

    /// Every held pipe is the one we stored; every parked connection that
    /// sends is woken with its bytes, and answers through the same
    /// connection.
    fn verify(&mut self, server: &TestServer) {
        let mut client = server.client();
        for (i, r) in self.pipes.iter().enumerate() {
            let w = client.retrieve(&format!("keep/p{i}"), false, None).unwrap();
            let message = format!("held {i}");
            std::fs::File::from(w)
                .write_all(message.as_bytes())
                .unwrap();
            let mut got = vec![0u8; message.len()];
            std::fs::File::from(r.try_clone().unwrap())
                .read_exact(&mut got)
                .unwrap();
            assert_eq!(got, message.as_bytes(), "held pipe {i}");
        }
        let mut wakeups = Client::connect(&server.socket)
            .unwrap()
            .wake("web/", None)
            .unwrap();
        let mut woken = vec![false; PARKED];
        // In rounds, each well within what one subscriber may have queued.
        for round in (0..PARKED).collect::<Vec<_>>().chunks(100) {
            for &i in round {
                let peer = &mut self.peers[i];
                peer.write_all(format!("from c{i}\n").as_bytes()).unwrap();
            }
            for w in wakeups.by_ref().take(round.len()) {
                let w = w.unwrap();
                let i: usize = w.name.strip_prefix("web/c").unwrap().parse().unwrap();
                let WakeEvent::Readable(fd) = w.event else {
                    panic!("{} hung up", w.name);
                };
                assert!(
                    round.contains(&i),
                    "{} woke before it was written to",
                    w.name
                );
                assert!(!woken[i], "{} woken twice", w.name);
                woken[i] = true;
                let mut conn = TcpStream::from(fd);
                let expected = format!("from c{i}\n");
                let mut got = vec![0u8; expected.len()];
                conn.read_exact(&mut got).unwrap();
                assert_eq!(got, expected.as_bytes(), "bytes of {}", w.name);
                conn.write_all(format!("back {i}\n").as_bytes()).unwrap();
            }
        }
        for (i, peer) in self.peers.iter_mut().enumerate() {
            let expected = format!("back {i}\n");
            let mut got = vec![0u8; expected.len()];
            peer.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            peer.read_exact(&mut got).unwrap();
            assert_eq!(got, expected.as_bytes(), "answer through c{i}");
        }
    }
}

/// Connects every 10 ms until stopped; counts attempts and refusals.
struct ConnectLoop {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl ConnectLoop {
    fn start(socket: &Path) -> ConnectLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let socket = socket.to_owned();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut tries = 0;
            let mut failures = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                tries += 1;
                if let Err(e) = UnixStream::connect(&socket) {
                    failures.push(e.to_string());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (tries, failures)
        });
        ConnectLoop { stop, thread }
    }

    /// Stops it; no attempt may have been refused.
    fn refused_none(self) {
        self.stop.store(true, Ordering::SeqCst);
        let (tries, refused) = self.thread.join().unwrap();
        assert!(
            refused.is_empty(),
            "{} of {tries} refused: {refused:?}",
            refused.len()
        );
    }
}

/// Puts a script at `path` (see [`install`]).
fn install_script(path: &Path, text: &str) {
    let source = path.with_extension("src");
    std::fs::write(&source, text).unwrap();
    install(&source, path, "0755");
}

#[test]
fn an_upgrade_keeps_every_parked_connection_and_held_fd_and_refuses_no_one() {
    let Some((mut server, _)) = start_from_copy(POLICY, &["--workers", "2"]) else {
        return;
    };
    raise_fd_limit();
    let mut fleet = Fleet::hold(&server);
    // A subscriber from before the upgrade comes back by itself.
    let (extra, mut extra_peer) = UnixStream::pair().unwrap();
    server
        .client()
        .park("web/extra", extra.as_fd(), None)
        .unwrap();
    drop(extra);
    let mut early = Client::connect(&server.socket)
        .unwrap()
        .wake("web/extra", None)
        .unwrap();
    let before = Fleet::listing(&server);
    assert_eq!(before.len(), PARKED + HELD + 1);
    // So does a client that opted in, with no request in flight.
    let mut reconnecting = Client::connect(&server.socket).unwrap();
    reconnecting
        .set_reconnect(Some(fdopen::Reconnect::default()))
        .unwrap();
    assert_eq!(reconnecting.list(Some("keep/"), None).unwrap().len(), HELD);

    let connecting = ConnectLoop::start(&server.socket);
    let said = upgrade(&server);
    let new_pid = main_pid(&said);
    let successor = Adopted(new_pid);
    let old_exit = common::wait_timeout(server.child.as_mut().unwrap(), Duration::from_secs(30));
    assert!(old_exit.is_some_and(|s| s.success()), "{old_exit:?}");
    // Served by the new process now, whose listing is the same.
    assert_eq!(Fleet::listing(&server), before);
    connecting.refused_none();

    assert_ne!(new_pid as u32, server.pid());
    assert_eq!(reconnecting.list(Some("keep/"), None).unwrap().len(), HELD);
    extra_peer.write_all(b"meanwhile").unwrap();
    let woken = early.next().unwrap().unwrap();
    assert_eq!(woken.name, "web/extra");
    let WakeEvent::Readable(fd) = woken.event else {
        panic!("web/extra hung up");
    };
    let mut got = [0u8; 9];
    UnixStream::from(fd).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"meanwhile");
    fleet.verify(&server);
    successor.stop();
    assert!(
        server
            .stderr_text()
            .contains("took over 1101 held and parked descriptors"),
        "{}",
        server.stderr_text()
    );
}

/// Starts the server as systemd would with `store` (and its sockets):
/// a socket-activated one is given no `--socket`.
fn start_by(store: &FdStore, server: &mut TestServer, stderr: &str) {
    let socket = ["--socket", server.socket.to_str().unwrap()];
    let mut args = vec!["serve"];
    if store.sockets.is_empty() {
        args.extend(socket);
    }
    args.extend([
        "--policy",
        server.policy.to_str().unwrap(),
        "--audit-log",
        server.audit.to_str().unwrap(),
    ]);
    let args: Vec<String> = args.into_iter().map(String::from).collect();
    let command = store.command(SERVER, &args);
    let stderr = server.path(stderr);
    server.stderr = stderr.clone();
    server.child = Some(common::spawn_on(
        command,
        &server.notify,
        &stderr,
        Launch::default(),
    ));
}

/// Stops the server as systemd would, and takes in what it stored.
fn stop_into(store: &mut FdStore, server: &mut TestServer) {
    let status = server.stop_with(Signal::SIGTERM);
    assert!(status.success(), "{status:?}");
    store.take_messages(&server.notify);
    store.drop_hung_up();
    let stored: Vec<&str> = store.entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(stored, ["fdopen-held"], "{:?}", store.messages);
}

/// The restarted server took everything back and the store is empty.
fn taken_back(store: &mut FdStore, server: &TestServer) {
    store.take_messages(&server.notify);
    store.drop_hung_up();
    assert!(store.entries.is_empty(), "{:?}", store.messages);
    let log = server.stderr_text();
    assert!(log.contains("took over 1100"), "{log}");
}

#[test]
fn a_restart_through_the_fd_store_keeps_them() {
    raise_fd_limit();
    let dir = scratch();
    let mut server = TestServer::start_in(dir, POLICY, &["--workers", "2"]);
    let mut fleet = Fleet::hold(&server);
    let before = Fleet::listing(&server);
    let mut store = FdStore::new(16);

    stop_into(&mut store, &mut server);
    start_by(&store, &mut server, "restarted.stderr");
    assert_eq!(Fleet::listing(&server), before);
    fleet.verify(&server);
    taken_back(&mut store, &server);
}

#[test]
fn a_socket_activated_restart_keeps_them_and_refuses_no_one() {
    raise_fd_limit();
    let dir = scratch();
    // What fdopen.socket does: the socket is systemd's, across restarts.
    let socket = dir.path().join("fdopen.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let mut store = FdStore::new(16);
    store
        .sockets
        .push(("fdopen.socket".into(), listener.into()));
    let mut server = TestServer::unstarted(dir, POLICY);
    start_by(&store, &mut server, "first.stderr");
    let mut fleet = Fleet::hold(&server);
    let before = Fleet::listing(&server);

    let connecting = ConnectLoop::start(&server.socket);
    stop_into(&mut store, &mut server);
    start_by(&store, &mut server, "restarted.stderr");
    assert_eq!(Fleet::listing(&server), before);
    connecting.refused_none();
    fleet.verify(&server);
    taken_back(&mut store, &server);
}

/// Something done to the binary the server was started from.
type Breakage = dyn Fn(&Path);

#[test]
fn a_broken_new_binary_leaves_the_old_server_serving_everything() {
    let Some((server, copy)) = start_from_copy(POLICY, &[]) else {
        return;
    };
    let mut client = server.client();
    let (kept, mut far) = UnixStream::pair().unwrap();
    client.store("keep/x", kept.as_fd(), None).unwrap();
    let (parked, mut peer) = UnixStream::pair().unwrap();
    client.park("web/p", parked.as_fd(), None).unwrap();
    drop((kept, parked));
    let before = Fleet::listing(&server);

    let not_executable = |p: &Path| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    let crashes = |p: &Path| install_script(p, "#!/bin/sh\nexit 3\n");
    let hangs_up_at_once = |p: &Path| install_script(p, "#!/bin/sh\nexec sleep 0\n");
    let missing = |p: &Path| std::fs::remove_file(p).unwrap();
    let breakages: [(&str, &Breakage); 4] = [
        ("not executable", &not_executable),
        ("crashes", &crashes),
        ("exits at once", &hangs_up_at_once),
        ("missing", &missing),
    ];
    for (what, break_it) in breakages {
        break_it(&copy);
        let said = upgrade(&server);
        assert!(said.starts_with("STATUS=upgrade failed"), "{what}: {said}");
        // Same server, same holdings, still serving.
        assert_eq!(Fleet::listing(&server), before, "{what}");
        let mut c = server.client();
        assert!(c.hello().is_ok(), "{what}");
    }
    // Group-writable: refused before anything runs.
    install(Path::new(SERVER), &copy, "0775");
    let said = upgrade(&server);
    assert!(said.starts_with("STATUS=upgrade refused"), "{said}");
    assert!(said.contains("writable by its group"), "{said}");

    // Everything it had still works.
    let w = client.retrieve("keep/x", false, None).unwrap();
    std::fs::File::from(w).write_all(b"still").unwrap();
    let mut got = [0u8; 5];
    far.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still");
    peer.write_all(b"wake").unwrap();
    let woken = Client::connect(&server.socket)
        .unwrap()
        .wake("web/", None)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(woken.name, "web/p");
    let log = server.stderr_text();
    assert_eq!(log.matches("this server serves on").count(), 5, "{log}");
}

/// A fake server for the client's side: answers the first request of a
/// connection, closes it with the rest unanswered, and records what the
/// client sends on its next connection.
#[test]
fn a_reconnecting_client_sends_again_only_what_may_be_sent_twice() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;
    let dir = scratch();
    let socket = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let fake = std::thread::spawn(move || {
        let lines = |stream: &UnixStream, n: usize| -> Vec<String> {
            let reader = BufReader::new(stream.try_clone().unwrap());
            reader.lines().take(n).map(Result::unwrap).collect()
        };
        let (mut first, _) = listener.accept().unwrap();
        let got = lines(&first, 5);
        assert_eq!(got.len(), 5, "{got:?}");
        first.write_all(b"{\"id\":1,\"ok\":true}\n").unwrap();
        drop(first);
        let (mut second, _) = listener.accept().unwrap();
        let again = lines(&second, 2);
        second
            .write_all(b"{\"id\":3,\"ok\":true}\n{\"id\":5,\"ok\":true}\n")
            .unwrap();
        let mut rest = Vec::new();
        second.shutdown(std::net::Shutdown::Write).unwrap();
        second.read_to_end(&mut rest).unwrap();
        (again, rest)
    });
    let mut client = Client::connect(&socket).unwrap();
    client
        .set_reconnect(Some(fdopen::Reconnect::default()))
        .unwrap();
    let requests = [
        r#"{"op":"hello","id":1}"#,
        r#"{"op":"drop","name":"x","id":2}"#,
        r#"{"op":"list","id":3}"#,
        r#"{"op":"open","path":"/a","create":true,"id":4}"#,
        r#"{"op":"open","path":"/b","id":5}"#,
    ];
    for r in requests {
        client.send_raw(format!("{r}\n").as_bytes()).unwrap();
    }
    let mut outcomes = Vec::new();
    for _ in requests {
        outcomes.push(match client.receive() {
            Ok(r) => format!("answered {}", r.line.id.unwrap().get()),
            Err(fdopen::Error::Lost) => "lost".to_owned(),
            Err(e) => panic!("{e}"),
        });
    }
    assert_eq!(
        outcomes,
        ["answered 1", "lost", "answered 3", "lost", "answered 5"]
    );
    drop(client);
    let (again, rest) = fake.join().unwrap();
    assert_eq!(again, [requests[2], requests[4]]);
    assert!(rest.is_empty());
}
