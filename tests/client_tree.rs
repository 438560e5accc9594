//! The library's tree operations (SPEC v3 §3.6): what goes on the wire
//! (against a scripted peer), and each call against the real server.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::JoinHandle;

use common::*;
use fdopen::{Client, Error, ErrorCode, FileType, Mode, OpenOptions, Within};
use serde_json::{Value, json};

/// A peer that answers each request line with the next canned answer and
/// hands back the lines it was sent.
fn scripted(answers: Vec<Value>) -> (Client, JoinHandle<Vec<Value>>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let peer = std::thread::spawn(move || {
        let mut seen = Vec::new();
        answer_lines(theirs, &mut answers.into(), &mut seen);
        seen
    });
    (Client::from_stream(ours), peer)
}

fn entry(name: &str, kind: &str, ino: u64) -> Value {
    json!({"name": name, "type": kind, "ino": ino})
}

#[test]
fn read_dir_follows_the_cursor_and_leaves_out_dot_entries() {
    let (mut client, peer) = scripted(vec![
        json!({"ok":true,"path":"/real/d","rule":"r","cursor":"p2",
               "entries":[entry(".","dir",1), entry("..","dir",2), entry("a","file",3)]}),
        json!({"ok":true,"path":"/real/d","rule":"r","cursor":"p3","entries":[]}),
        json!({"ok":true,"path":"/real/d","rule":"r","entries":[entry("b","symlink",4)]}),
    ]);
    let entries: Vec<_> = client
        .read_dir("/d")
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let names: Vec<_> = entries.iter().map(|e| e.name.clone()).collect();
    assert_eq!(names, [OsString::from("a"), OsString::from("b")]);
    assert_eq!(entries[1].file_type, FileType::Symlink);
    // Later pages ask by the same path, with the cursor exactly as given.
    assert_eq!(
        peer.join().unwrap(),
        [
            json!({"op":"readdir","path":"/d"}),
            json!({"op":"readdir","path":"/d","cursor":"p2"}),
            json!({"op":"readdir","path":"/d","cursor":"p3"}),
        ]
    );
}

#[test]
fn a_failing_later_page_ends_the_listing_with_its_error() {
    let (mut client, peer) = scripted(vec![
        json!({"ok":true,"path":"/d","rule":"r","cursor":"p2","entries":[entry("a","file",3)]}),
        json!({"ok":false,"error":{"code":"io_error","message":"gone","errno":"EIO"}}),
    ]);
    let items: Vec<_> = client.read_dir("/d").unwrap().collect();
    assert_eq!(items.len(), 2);
    assert!(items[0].is_ok());
    match &items[1] {
        Err(Error::Refused(e)) => assert_eq!(e.raw_os_error(), Some(libc::EIO)),
        other => panic!("{other:?}"),
    }
    drop(peer.join().unwrap());
}

#[test]
fn nofollow_and_within_travel_on_opens_and_stats() {
    let stat = json!({"dev":1,"ino":2,"mode":0o120777,"nlink":1,"uid":0,"gid":0,"rdev":0,
        "size":3,"blksize":4096,"blocks":0,"atime":[0,0],"mtime":[0,0],"ctime":[0,0]});
    let (mut client, peer) = scripted(vec![
        json!({"ok":false,"error":{"code":"not_regular","errno":"ELOOP","message":"a symlink"}}),
        json!({"ok":true,"path":"/d/l","rule":"r","stat":stat}),
        json!({"ok":true,"path":"/d/l","rule":"r","stat":stat}),
    ]);
    let within = Within {
        path: "/d".into(),
        dev: 7,
        ino: 9,
    };
    let options = OpenOptions::new(Mode::Read)
        .nofollow(true)
        .within(within.clone());
    match client.check_with("/d/l", &options) {
        Err(Error::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::NotRegular);
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        }
        other => panic!("{other:?}"),
    }
    assert!(client.symlink_metadata("/d/l").unwrap().is_symlink());
    client.stat("/d/l").unwrap();
    assert_eq!(
        peer.join().unwrap(),
        [
            json!({"op":"check","path":"/d/l","mode":"read","nofollow":true,
                   "within":{"path":"/d","id":[7,9]}}),
            json!({"op":"stat","path":"/d/l","nofollow":true}),
            json!({"op":"stat","path":"/d/l"}),
        ]
    );
}

#[test]
fn an_answer_with_a_descriptor_is_refused_and_the_fifo_stays_in_step() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut client = Client::from_stream(ours);
    let peer = std::thread::spawn(move || {
        let mut reader = BufReader::new(theirs.try_clone().unwrap());
        let null = fs::File::open("/dev/null").unwrap();
        let answers = [
            &b"{\"ok\":true,\"fd\":true,\"path\":\"/d\",\"rule\":\"r\"}\n"[..],
            b"{\"ok\":false,\"fd\":true,\"error\":{\"code\":\"denied\",\"message\":\"m\"}}\n",
        ];
        for answer in answers {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            fdopen::fdpass::send(theirs.as_fd(), answer, Some(null.as_fd())).unwrap();
        }
    });
    assert!(matches!(client.remove_file("/d"), Err(Error::Protocol(_))));
    assert_eq!(client.unclaimed_fds(), 0);
    assert!(matches!(client.stat("/d"), Err(Error::Protocol(_))));
    assert_eq!(client.unclaimed_fds(), 0);
    peer.join().unwrap();
}

// Against the real server.

/// A server whose policy grants `tree/**` everything, directories made
/// at most 0750, and a scratch tree.
fn tree_server() -> TestServer {
    let (server, _) = common::tree::serve_tree(
        "tree",
        0o755,
        |d| {
            let [mut tree, top] = common::tree::grant_below(d);
            tree["dir_perm"] = "0750".into();
            json!([tree, top])
        },
        &[],
    );
    server
}

#[test]
fn stat_reports_what_the_kernel_says() {
    let server = tree_server();
    let tree = server.path("tree");
    fs::write(tree.join("f"), "hello").unwrap();
    std::os::unix::fs::symlink("f", tree.join("l")).unwrap();
    let mut client = server.client();
    let meta = client.stat(tree.join("l")).unwrap();
    let real = fs::metadata(tree.join("f")).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        (meta.dev, meta.ino, meta.size, meta.mode, meta.nlink),
        (
            real.dev(),
            real.ino(),
            real.size(),
            real.mode(),
            real.nlink()
        )
    );
    assert_eq!(
        (meta.mtime.sec, meta.mtime.nsec as i64),
        (real.mtime(), real.mtime_nsec())
    );
    let link = client.symlink_metadata(tree.join("l")).unwrap();
    assert!(link.is_symlink());
    assert_eq!(client.read_link(tree.join("l")).unwrap(), Path::new("f"));
}

#[test]
fn read_dir_lists_thousands_of_entries_like_std() {
    let server = tree_server();
    let big = server.path("tree").join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..2500 {
        fs::write(big.join(format!("e{i}")), "").unwrap();
    }
    let mut client = server.client();
    let ours: BTreeSet<OsString> = client
        .read_dir(&big)
        .unwrap()
        .map(|e| e.unwrap().name)
        .collect();
    let std: BTreeSet<OsString> = fs::read_dir(&big)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(ours.len(), 2500);
    assert_eq!(ours, std);
}

#[test]
fn changes_make_remove_and_move() {
    let server = tree_server();
    let tree = server.path("tree");
    let mut client = server.client();
    let spool = tree.join("spool");
    client.create_dir(&spool, 0o777).unwrap();
    // dir_perm 0750 masks the 0777 asked for.
    assert_eq!(
        fs::metadata(&spool).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    fs::write(spool.join("job.tmp"), "job").unwrap();
    client
        .rename(spool.join("job.tmp"), spool.join("job"))
        .unwrap();
    assert_eq!(fs::read_to_string(spool.join("job")).unwrap(), "job");
    assert!(!spool.join("job.tmp").exists());
    match client.remove_dir(&spool) {
        Err(Error::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::IoError);
            assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
        }
        other => panic!("{other:?}"),
    }
    client.remove_file(spool.join("job")).unwrap();
    client.remove_dir(&spool).unwrap();
    assert!(!spool.exists());
    match client.stat(&spool) {
        Err(Error::Refused(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn within_a_swapped_directory_is_denied() {
    let server = tree_server();
    let tree = server.path("tree");
    let dir = tree.join("d");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("f"), "x").unwrap();
    let held = fs::File::open(&dir).unwrap();
    let within = Within::of_file(&dir, &held).unwrap();
    let mut client = server.client();
    let request = fdopen::TreeRequest::stat(dir.join("f")).within(within.clone());
    assert!(client.tree(&request).is_ok());
    fs::rename(&dir, tree.join("old")).unwrap();
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("f"), "y").unwrap();
    match client.tree(&request) {
        Err(Error::Refused(e)) => assert_eq!(e.code, ErrorCode::Denied),
        other => panic!("{other:?}"),
    }
}
