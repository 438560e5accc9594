//! Several responses to one `sendmsg` (SPEC §2, v3): only when the
//! client's `hello` said `fds_per_message`, never more descriptors in one
//! message than it said, every descriptor in order; a client that did not
//! ask gets one per message, as in v2.

mod common;

use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;

use common::*;
use serde_json::{Value, json};

/// Files granted by the policy, each with its inode: which file a
/// descriptor is.
struct Files {
    server: TestServer,
    inodes: Vec<(String, u64)>,
}

fn files(count: usize) -> Files {
    let dir = scratch();
    fs::create_dir(dir.path().join("files")).unwrap();
    let mut inodes = Vec::new();
    for i in 0..count {
        let p = dir.path().join(format!("files/f{i}.txt"));
        fs::write(&p, format!("file {i}\n")).unwrap();
        inodes.push((
            p.to_str().unwrap().to_owned(),
            fs::metadata(&p).unwrap().ino(),
        ));
    }
    let d = glob(dir.path());
    let policy = json!({"rules": [{"name": "files", "paths": [format!("{d}/files/*")]}]});
    let server = TestServer::start_in(dir, &policy.to_string(), &[]);
    Files { server, inodes }
}

/// What one `recvmsg` with room for `room` descriptors got.
struct Message {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    truncated: bool,
}

/// One `recvmsg` whose control buffer holds exactly `room` descriptors,
/// as a client that asked for `room` (or, with 1, a v2 client) has.
fn recv_with_room(sock: &UnixStream, room: usize) -> Message {
    let mut bytes = vec![0u8; 64 * 1024];
    let got = fdopen::fdpass::recv_with_room(sock.as_fd(), &mut bytes, room).unwrap();
    assert!(got.bytes > 0, "the server closed the connection");
    bytes.truncate(got.bytes);
    Message {
        bytes,
        fds: got.fds,
        truncated: got.truncated,
    }
}

/// Reads `count` response lines through `recvmsg`s with room for `room`
/// descriptors; every `"fd":true` line takes the oldest descriptor, which
/// must be the file of `expected[i]` (`None`: an answer without one).
/// Returns the most descriptors one message carried.
fn read_in_order(
    sock: &UnixStream,
    room: usize,
    files: &Files,
    expected: &[Option<usize>],
) -> usize {
    let mut pending = Vec::new();
    let mut fifo = std::collections::VecDeque::new();
    let mut most = 0;
    let mut answered = 0;
    while answered < expected.len() {
        let message = recv_with_room(sock, room);
        assert!(
            !message.truncated,
            "the server sent more descriptors than the client has room for ({room})"
        );
        assert!(message.fds.len() <= room);
        most = most.max(message.fds.len());
        fifo.extend(message.fds);
        pending.extend_from_slice(&message.bytes);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let v: Value = serde_json::from_slice(&line).unwrap();
            let Some(file) = expected[answered] else {
                assert_ne!(v["fd"], true, "response {answered}: {v}");
                answered += 1;
                continue;
            };
            assert_eq!(v["ok"], true, "{v}");
            assert_eq!(v["fd"], true, "{v}");
            let (path, ino) = &files.inodes[file];
            assert_eq!(v["path"], path.as_str());
            let fd = fifo.pop_front().expect("a descriptor came before its line");
            let got = fs::File::from(fd).metadata().unwrap().ino();
            assert_eq!(got, *ino, "response {answered}: not the file it names");
            answered += 1;
        }
    }
    assert!(pending.is_empty() && fifo.is_empty(), "nothing more came");
    most
}

/// `count` pipelined opens, written at once so that the server reads
/// them in one go and answers them in one round; the files they name.
fn send_opens(sock: &mut UnixStream, files: &Files, count: usize) -> Vec<Option<usize>> {
    let expected: Vec<usize> = (0..count).map(|i| (i * 7) % files.inodes.len()).collect();
    let mut batch = Vec::new();
    for &i in &expected {
        let line = json!({"op": "open", "path": files.inodes[i].0});
        batch.extend_from_slice(format!("{line}\n").as_bytes());
    }
    sock.write_all(&batch).unwrap();
    expected.into_iter().map(Some).collect()
}

fn hello(sock: &mut UnixStream, line: &str) -> Value {
    sock.write_all(format!("{line}\n").as_bytes()).unwrap();
    let message = recv_with_room(sock, 1);
    assert!(message.fds.is_empty());
    serde_json::from_slice(&message.bytes).unwrap()
}

#[test]
fn fds_per_message_is_an_integer_from_2_to_253() {
    let f = files(1);
    let mut c = f.server.client();
    for good in ["2", "16", "253"] {
        let line = format!(r#"{{"op":"hello","id":1,"fds_per_message":{good}}}"#);
        let (v, _) = ask(&mut c, &line);
        assert_eq!(v["ok"], true, "{line}: {v}");
        assert_eq!(v["protocol"], 3);
    }
    for bad in ["1", "254", "0", "-1", "\"4\"", "null", "2.5", "256", "[2]"] {
        let line = format!(r#"{{"op":"hello","id":2,"fds_per_message":{bad}}}"#);
        let (v, fd) = ask(&mut c, &line);
        assert!(fd.is_none());
        assert_eq!(code(&v), "bad_request", "{line}: {v}");
        assert_eq!(v["id"], 2, "{line}: {v}");
    }
    // Only hello takes it.
    let line = json!({"op": "open", "path": f.inodes[0].0, "fds_per_message": 4});
    let (v, fd) = ask(&mut c, &line.to_string());
    assert!(fd.is_none());
    assert_eq!(code(&v), "bad_request", "{v}");
    // The connection is still served.
    let (v, fd) = ask(
        &mut c,
        &json!({"op": "open", "path": f.inodes[0].0}).to_string(),
    );
    assert_eq!(v["ok"], true, "{v}");
    assert!(fd.is_some());
}

#[test]
fn pipelined_opens_on_a_coalescing_connection_get_every_fd_in_order() {
    let f = files(20);
    let mut sock = f.server.connect();
    let v = hello(&mut sock, r#"{"op":"hello","fds_per_message":8}"#);
    assert_eq!(v["ok"], true, "{v}");
    let expected = send_opens(&mut sock, &f, 60);
    let most = read_in_order(&sock, 8, &f, &expected);
    // Answered in one round, they went out several to a message.
    assert!(most > 1, "responses were not coalesced");
}

#[test]
fn a_client_that_did_not_ask_gets_one_fd_per_message() {
    let f = files(20);
    let mut sock = f.server.connect();
    let v = hello(&mut sock, r#"{"op":"hello"}"#);
    assert_eq!(v["ok"], true, "{v}");
    let expected = send_opens(&mut sock, &f, 60);
    assert_eq!(read_in_order(&sock, 1, &f, &expected), 1);
    // Nor does one that never said hello.
    let mut sock = f.server.connect();
    let expected = send_opens(&mut sock, &f, 60);
    assert_eq!(read_in_order(&sock, 1, &f, &expected), 1);
}

#[test]
fn a_later_hello_without_it_goes_back_to_one_fd_per_message() {
    let f = files(20);
    let mut sock = f.server.connect();
    hello(&mut sock, r#"{"op":"hello","fds_per_message":8}"#);
    let v = hello(&mut sock, r#"{"op":"hello"}"#);
    assert_eq!(v["ok"], true, "{v}");
    let expected = send_opens(&mut sock, &f, 60);
    assert_eq!(read_in_order(&sock, 1, &f, &expected), 1);
}

#[test]
fn the_library_client_can_ask_and_still_gets_every_fd_in_order() {
    let f = files(20);
    let mut c = f.server.client();
    let info = c.hello_coalescing(253).unwrap();
    assert_eq!(info.protocol, 3);
    let paths: Vec<usize> = (0..60).map(|i| (i * 3) % f.inodes.len()).collect();
    for &i in &paths {
        c.send(
            fdopen::protocol::Op::Open,
            Some(f.inodes[i].0.as_ref()),
            None,
        )
        .unwrap();
    }
    for &i in &paths {
        let (grant, fd) = c.receive().unwrap().into_result().unwrap();
        assert_eq!(grant.path, f.inodes[i].0);
        let ino = fs::File::from(fd.unwrap()).metadata().unwrap().ino();
        assert_eq!(ino, f.inodes[i].1);
    }
    assert_eq!(c.unclaimed_fds(), 0);
}

#[test]
fn a_coalescing_client_that_reads_late_still_gets_every_fd_in_order() {
    let f = files(20);
    for room in [2usize, 253] {
        let mut sock = f.server.connect();
        let line = format!(r#"{{"op":"hello","fds_per_message":{room}}}"#);
        assert_eq!(hello(&mut sock, &line)["ok"], true);
        // About 300 KiB of answers, more than a socket's default send
        // buffer (208 KiB): unless this side reads faster than the server
        // answers, its sends run into a full socket and go on later from
        // the middle of a message. The 180 KiB of requests fit in this
        // side's buffer, so they all go out before anything is read.
        let expected = send_opens(&mut sock, &f, 3000);
        let most = read_in_order(&sock, room, &f, &expected);
        assert!(most <= room && most > 1, "{most} fds in one message");
    }
}

#[test]
fn a_client_that_did_not_ask_and_reads_late_still_gets_one_fd_per_message_in_order() {
    // As above, for the answers the server sends several at a time, each
    // a message of its own (`sendmmsg`): the socket fills up in the
    // middle of a batch, and the rest goes out later, still one
    // descriptor per message, in order.
    let f = files(20);
    let mut sock = f.server.connect();
    assert_eq!(hello(&mut sock, r#"{"op":"hello"}"#)["ok"], true);
    let expected = send_opens(&mut sock, &f, 3000);
    assert_eq!(read_in_order(&sock, 1, &f, &expected), 1);
}

#[test]
fn answers_without_a_descriptor_between_grants_leave_one_fd_per_message_in_order() {
    // A client that did not ask: answers without a descriptor (`check`,
    // refusals) may share a message, each grant still has one of its own.
    // 3000 of them, read late, so that sends also stop halfway.
    let f = files(20);
    let mut sock = f.server.connect();
    assert_eq!(hello(&mut sock, r#"{"op":"hello"}"#)["ok"], true);
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for i in 0..3000 {
        let file = (i * 7) % f.inodes.len();
        let (line, grant) = match i % 5 {
            0 | 3 => (json!({"op": "open", "path": f.inodes[file].0}), Some(file)),
            1 => (json!({"op": "check", "path": f.inodes[file].0}), None),
            2 => (json!({"op": "open", "path": "/nowhere/granted"}), None),
            _ => (
                json!({"op": "open", "path": f.inodes[file].0, "mode": "write"}),
                None,
            ),
        };
        batch.extend_from_slice(format!("{line}\n").as_bytes());
        expected.push(grant);
    }
    sock.write_all(&batch).unwrap();
    assert_eq!(read_in_order(&sock, 1, &f, &expected), 1);
}
