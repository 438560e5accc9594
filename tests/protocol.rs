//! The wire protocol against the real server: framing, ids, pipelining,
//! every response code, limits.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use common::*;
use fdopen::protocol::Op;
use serde_json::{Value, json};

fn policy_for(dir: &std::path::Path) -> String {
    let d = glob(dir);
    json!({"rules": [
        {"name": "files", "paths": [format!("{d}/files/*")], "modes": ["read", "write", "readwrite", "append"]},
        {"name": "sized", "paths": [format!("{d}/sized/*")], "min_size": 2, "max_size": "1KiB"},
        {"name": "aged", "paths": [format!("{d}/aged/*")], "min_age": "1h", "max_age": "2d"},
        {"name": "dev", "paths": ["/dev/null", format!("{d}/special/*")]},
        {"name": "no-secret", "effect": "deny", "paths": [format!("{d}/files/*.secret")]}
    ]})
    .to_string()
}

fn server() -> TestServer {
    let dir = scratch();
    for sub in ["files", "sized", "aged", "special"] {
        fs::create_dir(dir.path().join(sub)).unwrap();
    }
    fs::write(dir.path().join("files/a.txt"), "alpha\n").unwrap();
    fs::write(dir.path().join("files/b.secret"), "beta\n").unwrap();
    fs::write(dir.path().join("outside.txt"), "outside\n").unwrap();
    let policy = policy_for(dir.path());
    TestServer::start_in(dir, &policy, &["--max-clients", "64"])
}

fn set_age(path: &std::path::Path, secs: u64) {
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn hello_announces_server_version_and_protocol() {
    let s = server();
    let (v, fd) = s.ask(r#"{"op":"hello","id":"h"}"#);
    assert!(fd.is_none());
    assert_eq!(v["id"], "h");
    assert_eq!(v["ok"], true);
    assert_eq!(v["server"], "fdopen");
    assert_eq!(v["protocol"], 3);
    assert!(v["mnt_ns"].as_u64().is_some(), "{v}");
    assert_eq!(v["root"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn grant_carries_fd_real_path_size_mtime_and_rule() {
    let s = server();
    let path = s.path("files/a.txt");
    let (v, fd) = s.ask(&format!(
        r#"{{"op":"open","path":"{}","id":7}}"#,
        path.display()
    ));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["id"], 7);
    assert_eq!(v["fd"], true);
    assert_eq!(v["path"], path.to_str().unwrap());
    assert_eq!(v["size"], 6);
    assert_eq!(v["rule"], "files");
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(v["mtime"], meta.mtime());
    let mut file = fs::File::from(fd.expect("an fd"));
    assert_eq!(file.metadata().unwrap().ino(), meta.ino());
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    assert_eq!(text, "alpha\n");
}

#[test]
fn check_decides_the_same_but_passes_no_fd() {
    let s = server();
    let path = s.path("files/a.txt");
    let (v, fd) = s.ask(&open_line(&path, None).replace("\"open\"", "\"check\""));
    assert_eq!(v["ok"], true);
    assert_eq!(v["fd"], false);
    assert!(fd.is_none());
    let mut c = s.client();
    assert_eq!(
        c.check(s.path("files/b.secret"), fdopen::Mode::Read)
            .unwrap_err()
            .to_string(),
        "denied: denied by rule no-secret"
    );
}

#[test]
fn every_refusal_code() {
    let s = server();
    fs::write(s.path("sized/empty"), "").unwrap();
    fs::write(s.path("sized/big"), vec![b'x'; 2000]).unwrap();
    fs::write(s.path("aged/new"), "n").unwrap();
    fs::write(s.path("aged/old"), "o").unwrap();
    set_age(&s.path("aged/old"), 3 * 86400);
    std::os::unix::fs::symlink("loop", s.path("files/loop")).unwrap();
    let cases = [
        (open_line(&s.path("outside.txt"), None), "denied"),
        (open_line(&s.path("files/b.secret"), None), "denied"),
        (open_line(&s.path("files/missing"), None), "not_found"),
        (
            open_line(&s.path("files"), None).replace("/files\"", "/files/\""),
            "denied",
        ),
        (
            open_line(std::path::Path::new("/dev/null"), None),
            "not_regular",
        ),
        (
            open_line(&s.path("special"), None).replace("special\"", "special/.\""),
            "denied",
        ),
        (open_line(&s.path("sized/big"), None), "too_large"),
        (open_line(&s.path("sized/empty"), None), "too_small"),
        (open_line(&s.path("aged/old"), None), "too_old"),
        (open_line(&s.path("aged/new"), None), "too_new"),
        (open_line(&s.path("files/loop"), None), "io_error"),
        (
            r#"{"op":"open","path":"relative/x"}"#.to_string(),
            "bad_request",
        ),
        (r#"{"op":"open","path":""}"#.to_string(), "bad_request"),
        (
            r#"{"op":"open","path":"/a/../etc/passwd"}"#.to_string(),
            "bad_request",
        ),
        (
            r#"{"op":"open","path":"/a\u0000b"}"#.to_string(),
            "bad_request",
        ),
        (r#"{"op":"open"}"#.to_string(), "bad_request"),
        (r#"{"op":"chmod","path":"/x"}"#.to_string(), "bad_request"),
        (
            r#"{"op":"open","path":"/x","flags":1}"#.to_string(),
            "bad_request",
        ),
        (
            r#"{"op":"open","path":"/x","mode":"exec"}"#.to_string(),
            "bad_request",
        ),
        ("[]".to_string(), "bad_request"),
        ("garbage".to_string(), "bad_request"),
    ];
    let mut c = s.client();
    for (line, expected) in cases {
        let (v, fd) = ask(&mut c, &line);
        assert_eq!(code(&v), expected, "{line} -> {v}");
        assert!(fd.is_none());
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    // The size message names the rule, its limit and the file's size.
    let (v, _) = ask(&mut c, &open_line(&s.path("sized/big"), None));
    assert_eq!(
        v["error"]["message"],
        "rule sized allows at most 1 KiB; file is 2 KiB"
    );
}

#[test]
fn fifo_and_directory_are_not_regular_and_never_block() {
    let s = server();
    let fifo = s.path("special/fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    fs::create_dir(s.path("special/dir")).unwrap();
    let (v, _) = s.ask(&open_line(&fifo, None));
    assert_eq!(code(&v), "not_regular", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("FIFO"));
    let (v, _) = s.ask(&open_line(&s.path("special/dir"), None));
    assert_eq!(code(&v), "not_regular");
}

#[test]
fn busy_when_too_many_clients() {
    let s = TestServer::start(r#"{"rules":[]}"#, &["--max-clients", "2"]);
    let mut first = s.client();
    let mut second = s.client();
    // Both are admitted: they get answers.
    assert_eq!(ask(&mut first, r#"{"op":"hello"}"#).0["ok"], true);
    assert_eq!(ask(&mut second, r#"{"op":"hello"}"#).0["ok"], true);
    let mut third = s.client();
    let (v, _) = receive(&mut third);
    assert_eq!(code(&v), "busy");
    drop(first);
    // A slot frees up once the server has seen the close.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut again = s.client();
        let _ = again.send_raw(b"{\"op\":\"hello\"}\n");
        if again.receive().unwrap().line.ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the slot never freed");
    }
}

#[test]
fn ids_are_echoed_verbatim_and_only_when_given() {
    let s = server();
    let mut c = s.client();
    for id in [
        json!(1),
        json!("x"),
        json!(null),
        json!({"a": [1, 2.5, "z"]}),
        json!(-3),
    ] {
        let (v, _) = ask(&mut c, &json!({"op": "hello", "id": id}).to_string());
        assert_eq!(v["id"], id);
    }
    let (v, _) = ask(&mut c, r#"{"op":"hello"}"#);
    assert!(v.get("id").is_none(), "{v}");
    let (v, _) = ask(&mut c, r#"{"op":"bogus","id":42}"#);
    assert_eq!(v["id"], 42);
    assert_eq!(code(&v), "bad_request");
}

#[test]
fn bad_lines_keep_the_connection_usable() {
    let s = server();
    let mut c = s.client();
    for garbage in [
        "{",
        "\u{1}\u{2}",
        "{\"op\":\"hello\",\"x\":1}",
        "null",
        "\"str\"",
        "1e999999",
    ] {
        let (v, _) = ask(&mut c, garbage);
        assert_eq!(code(&v), "bad_request", "{garbage}");
    }
    c.send_raw(b"\xff\xfe\n").unwrap();
    assert_eq!(code(&receive(&mut c).0), "bad_request");
    assert_eq!(ask(&mut c, r#"{"op":"hello"}"#).0["ok"], true);
}

#[test]
fn null_fields_and_over_long_paths_are_bad_requests_before_any_lookup() {
    let s = server();
    let mut c = s.client();
    let file = s.path("files/a.txt");
    let dir = s.path("files");
    let long_name = format!("{}/{}", dir.display(), "n".repeat(256));
    let long_path = format!("{}/{}", dir.display(), "d/".repeat(2100));
    for line in [
        json!({"op": "open", "path": file, "mode": null}),
        json!({"op": "check", "path": file, "mode": null}),
        json!({"op": "open", "path": null}),
        json!({"op": "open", "path": file, "path_b64": "L2E="}),
        json!({"op": "open", "path": long_name}),
        json!({"op": "open", "path": long_path}),
        json!({"op": "open", "path": format!("{}/../files/a.txt", dir.display())}),
        json!({"op": "open", "path": "relative/path"}),
        json!({"op": "open", "path": ""}),
    ] {
        let (v, fd) = ask(&mut c, &line.to_string());
        assert_eq!(code(&v), "bad_request", "{line}: {v}");
        assert!(fd.is_none());
    }
    // The same file, asked properly, is granted: the refusals were the form.
    let (v, _) = ask(&mut c, &open_line(&file, Some("read")));
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn over_long_line_is_answered_then_closed() {
    let s = TestServer::start(r#"{"rules":[]}"#, &["--max-request", "1024"]);
    // Exactly at the limit (newline included) is fine.
    let mut c = s.client();
    let pad = 1024 - r#"{"op":"hello","id":""}"#.len() - 1;
    let line = format!(r#"{{"op":"hello","id":"{}"}}"#, "x".repeat(pad));
    assert_eq!(ask(&mut c, &line).0["ok"], true);
    // One byte more is not.
    let line = format!(r#"{{"op":"hello","id":"{}"}}"#, "x".repeat(pad + 1));
    let (v, _) = ask(&mut c, &line);
    assert_eq!(code(&v), "bad_request");
    assert!(v["error"]["message"].as_str().unwrap().contains("1024"));
    let mut rest = Vec::new();
    c.stream()
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        c.stream().read_to_end(&mut rest).unwrap(),
        0,
        "closed after the answer"
    );
    // A line that never ends is cut off too.
    let mut c = s.connect();
    c.write_all(&vec![b'a'; 5000]).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("bad_request"), "{reply}");
}

#[test]
fn pipelined_mixed_requests_come_back_in_order_with_the_right_fds() {
    let s = server();
    let mut inodes = Vec::new();
    for i in 0..10 {
        let p = s.path(&format!("files/f{i}.txt"));
        fs::write(&p, format!("file {i}\n")).unwrap();
        inodes.push((p.clone(), fs::metadata(&p).unwrap().ino()));
    }
    let mut c = s.client();
    let mut expected = Vec::new();
    let mut batch = Vec::new();
    for n in 0..600usize {
        let (line, want) = match n % 5 {
            0 | 1 => {
                let (p, ino) = &inodes[n % 10];
                (json!({"op":"open","path":p,"id":n}), Some(*ino))
            }
            2 => (json!({"op":"check","path":inodes[n % 10].0,"id":n}), None),
            3 => (
                json!({"op":"open","path":s.path("outside.txt"),"id":n}),
                None,
            ),
            _ => (json!({"op":"hello","id":n}), None),
        };
        batch.extend_from_slice(format!("{line}\n").as_bytes());
        expected.push((n, want));
    }
    c.send_raw(&batch).unwrap();
    for (n, want) in expected {
        let (v, fd) = receive(&mut c);
        assert_eq!(v["id"], n);
        match want {
            Some(ino) => {
                let f = fs::File::from(fd.expect("grant carries an fd"));
                assert_eq!(f.metadata().unwrap().ino(), ino, "response {n}");
            }
            None => assert!(fd.is_none(), "response {n}: {v}"),
        }
    }
    assert_eq!(c.unclaimed_fds(), 0);
}

#[test]
fn library_pipelining_with_send_and_receive() {
    let s = server();
    let path = s.path("files/a.txt");
    let mut c = s.client();
    for _ in 0..50 {
        c.send(Op::Open, Some(&path), None).unwrap();
    }
    for _ in 0..50 {
        let (grant, fd) = c.receive().unwrap().into_result().unwrap();
        assert_eq!(grant.rule, "files");
        assert!(fd.is_some());
    }
}

#[test]
fn fds_sent_by_the_client_are_refused_and_closed() {
    let s = server();
    let stream = s.connect();
    let devnull = fs::File::open("/dev/null").unwrap();
    fdopen::fdpass::send(
        stream.as_fd(),
        b"{\"op\":\"hello\",\"id\":1}\n",
        Some(devnull.as_fd()),
    )
    .unwrap();
    let mut c = fdopen::Client::from_stream(stream);
    let (v, _) = receive(&mut c);
    assert_eq!(code(&v), "bad_request", "{v}");
    assert_eq!(v["id"], 1);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("descriptor")
    );
    // The connection goes on.
    assert_eq!(ask(&mut c, r#"{"op":"hello"}"#).0["ok"], true);
}

#[test]
fn every_mode_opens_with_the_right_access() {
    let s = server();
    let path = s.path("files/m.txt");
    fs::write(&path, "0123456789").unwrap();
    let mut c = s.client();
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    for (mode, access, append) in [
        ("read", OFlag::O_RDONLY, false),
        ("write", OFlag::O_WRONLY, false),
        ("readwrite", OFlag::O_RDWR, false),
        ("append", OFlag::O_WRONLY, true),
    ] {
        let (v, fd) = ask(&mut c, &open_line(&path, Some(mode)));
        assert_eq!(v["ok"], true, "{mode}: {v}");
        let fd = fd.unwrap();
        let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL).unwrap());
        assert_eq!(flags & OFlag::O_ACCMODE, access, "{mode}");
        assert_eq!(flags.contains(OFlag::O_APPEND), append, "{mode}");
    }
    // Never truncated or created.
    assert_eq!(fs::read_to_string(&path).unwrap(), "0123456789");
    let (v, _) = ask(&mut c, &open_line(&s.path("files/new.txt"), Some("write")));
    assert_eq!(code(&v), "not_found");
    assert!(!s.path("files/new.txt").exists());
    // Append really appends.
    let (_, fd) = ask(&mut c, &open_line(&path, Some("append")));
    fs::File::from(fd.unwrap()).write_all(b"X").unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "0123456789X");
}

#[test]
fn audit_log_records_each_decision() {
    let s = server();
    let mut c = s.client();
    ask(&mut c, &open_line(&s.path("files/a.txt"), None));
    ask(&mut c, &open_line(&s.path("files/b.secret"), None));
    ask(&mut c, &open_line(&s.path("outside.txt"), Some("write")));
    ask(&mut c, r#"{"op":"hello"}"#);
    let lines = s.audit_lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let me = std::process::id() as i64;
    assert_eq!(lines[0]["ok"], true);
    assert_eq!(lines[0]["rule"], "files");
    assert_eq!(lines[0]["op"], "open");
    assert_eq!(lines[0]["mode"], "read");
    assert_eq!(lines[0]["pid"], me);
    assert_eq!(lines[0]["uid"], nix::unistd::getuid().as_raw());
    assert!(lines[0]["ts"].as_str().unwrap().ends_with('Z'));
    assert!(lines[0].get("code").is_none());
    assert_eq!(lines[1]["ok"], false);
    assert_eq!(lines[1]["code"], "denied");
    assert_eq!(lines[1]["rule"], "no-secret");
    assert_eq!(lines[2]["code"], "denied");
    assert_eq!(lines[2]["mode"], "write");
    assert!(lines[2].get("rule").is_none());
}

#[test]
fn half_closed_client_still_gets_its_answers() {
    let s = server();
    let mut stream = s.connect();
    stream
        .write_all(b"{\"op\":\"hello\",\"id\":1}\n{\"op\":\"hello\",\"id\":2}\n")
        .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let ids: Vec<Value> = reply
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(1), json!(2)]);
}
