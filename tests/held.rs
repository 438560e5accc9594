//! Held descriptors and parked connections (SPEC §3.4), against the real
//! server: store, retrieve, list, drop, expiry, limits, park and wake.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{TestServer, code};
use fdopen::protocol::Storer;
use fdopen::{Client, Error, ErrorCode, WakeEvent};

const POLICY: &str = r#"{"rules":[
  {"name":"own","names":["**"],"ops":["store","retrieve","list","drop"]},
  {"name":"parking","names":["web/**"],"ops":["park","wake","list","retrieve"]},
  {"name":"db-park","names":["db/**"],"ops":["park","list"]}
]}"#;

fn refused(result: Result<impl std::fmt::Debug, Error>) -> ErrorCode {
    match result {
        Err(Error::Refused(e)) => e.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Raises our soft fd limit to the hard one: the park tests hold
/// thousands of sockets, and the server inherits it.
fn raise_fd_limit() {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

#[test]
fn store_retrieve_list_and_drop() {
    let s = TestServer::start(POLICY, &[]);
    let mut c = s.client();
    let (mine, other) = UnixStream::pair().unwrap();
    c.store("jobs/a", mine.as_fd(), None).unwrap();
    drop(mine);
    assert_eq!(
        refused(c.store("jobs/a", other.as_fd(), None)),
        ErrorCode::Exists
    );
    c.store("jobs/b", other.as_fd(), Some(Duration::from_secs(3600)))
        .unwrap();

    let listed = c.list(Some("jobs/"), None).unwrap();
    let names: Vec<_> = listed
        .iter()
        .map(|l| (l.name.as_str(), l.kind.as_str()))
        .collect();
    assert_eq!(names, [("jobs/a", "held"), ("jobs/b", "held")]);
    assert!(listed[0].expires.is_none());
    assert!(listed[1].expires.as_deref().unwrap().ends_with('Z'));

    // A duplicate each time; the server keeps holding it.
    let copy = c.retrieve("jobs/a", false, None).unwrap();
    UnixStream::from(copy).write_all(b"through a copy").unwrap();
    let mut buf = [0u8; 64];
    let n = (&other).read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"through a copy");
    let taken = c.retrieve("jobs/a", true, None).unwrap();
    assert_eq!(
        refused(c.retrieve("jobs/a", false, None)),
        ErrorCode::NotFound
    );
    drop(taken);

    c.drop_name("jobs/b", None).unwrap();
    assert_eq!(refused(c.drop_name("jobs/b", None)), ErrorCode::NotFound);
    assert!(c.list(None, None).unwrap().is_empty());

    let audit = s.audit_lines();
    let stores: Vec<_> = audit.iter().filter(|r| r["op"] == "store").collect();
    assert_eq!(stores[0]["name"], "jobs/a");
    assert_eq!(stores[0]["storer"], nix::unistd::geteuid().as_raw());
}

#[test]
fn an_expired_fd_is_closed_and_audited() {
    let s = TestServer::start(POLICY, &[]);
    let mut c = s.client();
    let (held, mut peer) = UnixStream::pair().unwrap();
    c.store("short", held.as_fd(), Some(Duration::from_millis(200)))
        .unwrap();
    drop(held);
    // The only other copy is the server's: EOF means it closed it.
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(peer.read(&mut buf).unwrap(), 0, "EOF after expiry");
    let expired: Vec<_> = s
        .audit_lines()
        .into_iter()
        .filter(|r| r["event"] == "expired")
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["name"], "short");
    assert!(c.list(None, None).unwrap().is_empty());
}

#[test]
fn names_are_checked_and_descriptors_must_come_with_store() {
    let s = TestServer::start(POLICY, &[]);
    for line in [
        r#"{"op":"store","name":"a/../b"}"#,
        r#"{"op":"store","name":"with space"}"#,
        r#"{"op":"store","name":"no-fd"}"#,
        r#"{"op":"retrieve"}"#,
        r#"{"op":"wake"}"#,
        r#"{"op":"list","name":"x"}"#,
        r#"{"op":"store","name":"x","expires":"soon"}"#,
        r#"{"op":"open","path":"/x","name":"x"}"#,
    ] {
        let (v, fd) = s.ask(line);
        assert_eq!(code(&v), "bad_request", "{line}: {v}");
        assert!(fd.is_none());
    }
    // Two descriptors on one store: refused, both closed.
    let mut stream = s.connect();
    let (a, mut a_peer) = UnixStream::pair().unwrap();
    let (b, _b_peer) = UnixStream::pair().unwrap();
    let line = b"{\"op\":\"store\",\"name\":\"two\"}\n";
    use std::os::fd::AsRawFd;
    let fds = [a.as_raw_fd(), b.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(line)];
    nix::sys::socket::sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .unwrap();
    drop((a, b));
    let mut c = Client::from_stream(stream.try_clone().unwrap());
    let v = c.receive().unwrap().line;
    assert_eq!(v.error.unwrap().code, ErrorCode::BadRequest);
    a_peer
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(a_peer.read(&mut buf).unwrap(), 0, "the server closed it");
    stream.write_all(b"{\"op\":\"hello\"}\n").unwrap();
    assert!(c.receive().unwrap().line.ok, "the connection stays usable");
}

#[test]
fn limits_answer_busy() {
    let s = TestServer::start(POLICY, &["--max-held", "3", "--max-held-per-uid", "2"]);
    let mut c = s.client();
    let (a, _b) = UnixStream::pair().unwrap();
    c.store("one", a.as_fd(), None).unwrap();
    c.store("two", a.as_fd(), None).unwrap();
    assert_eq!(refused(c.store("three", a.as_fd(), None)), ErrorCode::Busy);
    c.drop_name("one", None).unwrap();
    c.store("three", a.as_fd(), None).unwrap();
}

#[test]
fn a_regular_file_cannot_be_parked_and_policy_decides_park() {
    let s = TestServer::start(POLICY, &[]);
    let mut c = s.client();
    let file = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(
        refused(c.park("web/f", file.as_fd(), None)),
        ErrorCode::NotRegular
    );
    let (a, _b) = UnixStream::pair().unwrap();
    assert_eq!(
        refused(c.park("other/x", a.as_fd(), None)),
        ErrorCode::Denied
    );
    // No rule gives this client wake at all: refused outright.
    let strict = TestServer::start(
        r#"{"rules":[{"name":"p","names":["**"],"ops":["park"]}]}"#,
        &[],
    );
    assert_eq!(
        refused(strict.client().wake("", None).map(drop)),
        ErrorCode::Denied
    );
}

/// Connected loopback TCP pairs: (remote end we keep, local end to park).
fn tcp_pairs(count: usize) -> Vec<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (0..count)
        .map(|_| {
            let remote = TcpStream::connect(addr).unwrap();
            let (local, _) = listener.accept().unwrap();
            (remote, local)
        })
        .collect()
}

#[test]
fn parked_connections_wake_in_the_order_they_became_readable() {
    raise_fd_limit();
    let s = TestServer::start(POLICY, &[]);
    let mut c = s.client();
    let mut remotes = Vec::new();
    for (i, (remote, local)) in tcp_pairs(1000).into_iter().enumerate() {
        c.park(&format!("web/c{i}"), local.as_fd(), None).unwrap();
        remotes.push(remote);
    }
    let mut wakeups = s.client().wake("web/", None).unwrap();
    let chosen = [907, 3, 512, 77, 640, 1, 999, 250, 333, 10];
    for (n, &i) in chosen.iter().enumerate() {
        remotes[i]
            .write_all(format!("request {n} for c{i}").as_bytes())
            .unwrap();
        // The next write only once this one is seen as readable, so the
        // order is the order of becoming readable.
        let woken = wakeups.next().unwrap().unwrap();
        assert_eq!(woken.name, format!("web/c{i}"));
        let WakeEvent::Readable(fd) = woken.event else {
            panic!("{} woke as a hang-up", woken.name);
        };
        let mut conn = TcpStream::from(fd);
        let mut buf = [0u8; 64];
        let got = conn.read(&mut buf).unwrap();
        assert_eq!(&buf[..got], format!("request {n} for c{i}").as_bytes());
        // It is the very connection: an answer reaches the remote end.
        conn.write_all(b"answer").unwrap();
        let got = remotes[i].read(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"answer");
    }
    let parked = c.list(Some("web/"), None).unwrap();
    assert_eq!(parked.len(), 990);
    assert!(parked.iter().all(|l| l.kind == "parked"));
}

#[test]
fn many_readable_at_once_all_arrive_once() {
    raise_fd_limit();
    let s = TestServer::start(POLICY, &[]);
    let mut c = s.client();
    let mut remotes = Vec::new();
    for (i, (remote, local)) in tcp_pairs(200).into_iter().enumerate() {
        c.park(&format!("web/c{i}"), local.as_fd(), None).unwrap();
        remotes.push(remote);
    }
    let mut wakeups = s.client().wake("web/", None).unwrap();
    for i in (0..200).step_by(20) {
        remotes[i].write_all(b"x").unwrap();
    }
    let mut names: Vec<String> = (0..10)
        .map(|_| wakeups.next().unwrap().unwrap().name)
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..200).step_by(20).map(|i| format!("web/c{i}")).collect();
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn a_hangup_is_reported_and_the_fd_closed() {
    let s = TestServer::start(POLICY, &[]);
    let mut c = s.client();
    let mut pairs = tcp_pairs(2);
    let (remote, local) = pairs.remove(0);
    c.park("web/h", local.as_fd(), None).unwrap();
    drop(local);
    let mut wakeups = s.client().wake("web/", None).unwrap();
    drop(remote);
    let woken = wakeups.next().unwrap().unwrap();
    assert_eq!(woken.name, "web/h");
    assert!(matches!(woken.event, WakeEvent::Hangup));
    assert!(c.list(None, None).unwrap().is_empty(), "closed, not held");
}

#[test]
fn a_parked_fd_waits_for_a_subscriber() {
    let s = TestServer::start(POLICY, &[]);
    let mut c = s.client();
    let (mut remote, local) = tcp_pairs(1).pop().unwrap();
    c.park("web/early", local.as_fd(), None).unwrap();
    drop(local);
    remote.write_all(b"before anyone listened").unwrap();
    // Readable with nobody to take it: still parked, still listed.
    let listed = c.list(Some("web/"), None).unwrap();
    assert_eq!(listed.len(), 1);
    let mut wakeups = s.client().wake("web/", None).unwrap();
    let woken = wakeups.next().unwrap().unwrap();
    assert_eq!(woken.name, "web/early");
    let WakeEvent::Readable(fd) = woken.event else {
        panic!("hang-up")
    };
    let mut buf = [0u8; 64];
    let got = TcpStream::from(fd).read(&mut buf).unwrap();
    assert_eq!(&buf[..got], b"before anyone listened");
}

#[test]
fn a_subscriber_gets_only_names_it_may_wake() {
    let s = TestServer::start(POLICY, &[]);
    let mut c = s.client();
    let mut pairs = tcp_pairs(2);
    let (mut db_remote, db_local) = pairs.pop().unwrap();
    let (mut web_remote, web_local) = pairs.pop().unwrap();
    c.park("db/x", db_local.as_fd(), None).unwrap();
    c.park("web/y", web_local.as_fd(), None).unwrap();
    // Prefix "" covers both; only web/** may be woken.
    let mut wakeups = s.client().wake("", None).unwrap();
    db_remote.write_all(b"db first").unwrap();
    web_remote.write_all(b"web second").unwrap();
    let woken = wakeups.next().unwrap().unwrap();
    assert_eq!(woken.name, "web/y");
    let listed = c.list(None, None).unwrap();
    let names: Vec<_> = listed.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["db/x"], "still parked for someone allowed");
}

#[test]
fn a_wake_connection_carries_nothing_else() {
    let s = TestServer::start(POLICY, &[]);
    let mut stream = s.connect();
    stream
        .write_all(b"{\"op\":\"wake\",\"prefix\":\"web/\",\"id\":1}\n")
        .unwrap();
    let mut c = Client::from_stream(stream.try_clone().unwrap());
    let ack = c.receive().unwrap().line;
    assert!(ack.ok);
    assert_eq!(ack.subscribed.as_deref(), Some("web/"));
    stream.write_all(b"{\"op\":\"hello\"}\n").unwrap();
    let v = c.receive().unwrap().line;
    assert_eq!(v.error.unwrap().code, ErrorCode::BadRequest);
    assert!(c.receive().is_err(), "and it is closed");
}

#[test]
fn retrieving_a_parked_fd_unparks_it() {
    let s = TestServer::start(POLICY, &[]);
    let mut c = s.client();
    let (_remote, local) = tcp_pairs(1).pop().unwrap();
    c.park("web/r", local.as_fd(), None).unwrap();
    let _copy = c.retrieve("web/r", false, None).unwrap();
    let listed = c.list(None, None).unwrap();
    assert_eq!(listed[0].kind, "held");
    let foreign = c.retrieve("web/r", false, Some(Storer::Uid(12345)));
    assert_eq!(refused(foreign), ErrorCode::Denied);
}

#[test]
fn the_command_line_stores_lists_retrieves_and_drops() {
    let s = TestServer::start(POLICY, &[]);
    let run = |args: &[&str], stdin: &[u8]| common::run_client(&s.socket, args, stdin);
    let stored = run(
        &["store", "notes/today", "--expires", "1h"],
        b"kept by the server\n",
    );
    assert!(stored.status.success(), "{stored:?}");
    let listed = run(&["list", "notes/"], b"");
    let text = String::from_utf8(listed.stdout).unwrap();
    assert!(text.starts_with("notes/today\theld\t20"), "{text}");
    let got = run(&["retrieve", "notes/today", "--remove"], b"");
    assert_eq!(got.stdout, b"kept by the server\n");
    let again = run(&["retrieve", "notes/today"], b"");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not held"));
    assert_eq!(run(&["drop", "notes/today"], b"").status.code(), Some(1));
}

#[test]
fn another_users_fds_need_a_stored_by_rule() {
    if !common::is_root() {
        eprintln!("skipped: needs root to act as two users");
        return;
    }
    let policy = r#"{"rules":[
      {"name":"own","names":["**"]},
      {"name":"ops","names":["jobs/**"],"ops":["retrieve","list"],"stored_by":["nobody"],"users":[0]}]}"#;
    let s = TestServer::start(policy, &["--socket-mode", "0666"]);
    // nobody stores; the name is nobody's alone.
    let mut store = std::process::Command::new(common::client_under_test());
    store
        .arg("--socket")
        .arg(&s.socket)
        .args(["store", "jobs/one"])
        .stdin(std::process::Stdio::piped());
    let mut child = common::as_ids(&mut store, 65534, 65534, &[])
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"nobody's").unwrap();
    assert!(child.wait().unwrap().success());

    let mut root = s.client();
    assert_eq!(
        refused(root.retrieve("jobs/one", false, None)),
        ErrorCode::NotFound,
        "not root's"
    );
    let fd = root
        .retrieve("jobs/one", false, Some(Storer::Name("nobody".into())))
        .unwrap();
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text).unwrap();
    assert_eq!(text, "nobody's");
    let listed = root.list(None, Some(Storer::Uid(65534))).unwrap();
    assert_eq!(listed.len(), 1);
    // stored_by allows retrieve and list only: no drop.
    let dropped = root.drop_name("jobs/one", Some(Storer::Uid(65534)));
    assert_eq!(refused(dropped), ErrorCode::Denied);
    let records = s.audit_lines();
    let retrieved = records
        .iter()
        .find(|r| r["op"] == "retrieve" && r["ok"] == true)
        .unwrap();
    assert_eq!(
        (retrieved["uid"].as_u64(), retrieved["storer"].as_u64()),
        (Some(0), Some(65534))
    );
}
