//! The library's own promises: the default socket, timeouts, and paths
//! that never leave the client.

mod common;

use std::os::unix::net::UnixListener;
use std::time::Duration;

use common::TestServer;
use fdopen::{Client, Error, Mode};

#[test]
fn a_relative_path_is_refused_before_anything_is_sent() {
    let s = TestServer::start(r#"{"rules":[{"name":"a","paths":["/**"]}]}"#, &[]);
    let mut c = s.client();
    match c.open("relative/file.txt", Mode::Read) {
        Err(Error::RelativePath(p)) => assert_eq!(p.to_str(), Some("relative/file.txt")),
        other => panic!("{other:?}"),
    }
    // The connection is fine and the server saw nothing.
    c.hello().unwrap();
    assert!(s.audit_lines().is_empty());
}

#[test]
fn a_timeout_gives_up_and_leaves_the_connection_out_of_step() {
    let dir = common::scratch();
    let path = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut c = Client::connect(&path).unwrap();
    let _accepted = listener.accept().unwrap(); // and never answers
    c.set_timeout(Some(Duration::from_millis(100))).unwrap();
    match c.hello() {
        Err(Error::Io(e)) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.hello(), Err(Error::OutOfStep)));
}

#[test]
fn connect_default_honours_fdopen_socket() {
    let s = TestServer::start(r#"{"rules":[]}"#, &[]);
    // SAFETY: the only test of this binary that reads or writes the
    // environment.
    unsafe { std::env::set_var("FDOPEN_SOCKET", &s.socket) };
    let mut c = Client::connect_default().unwrap();
    assert_eq!(c.hello().unwrap().server, "fdopen");
}
