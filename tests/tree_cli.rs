//! `fdopen-client stat | readlink | ls | mkdir | rm | rmdir | mv` (SPEC v3
//! §3.6, §7): the real client binary against a scripted peer (what it
//! sends, how it prints, its exit codes), then against the real server.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread::JoinHandle;

use common::*;
use serde_json::{Value, json};
use tempfile::TempDir;

/// A socket where a peer answers the request lines of one connection
/// after another with the canned answers, in order, and hands back what
/// it was sent.
struct Scripted {
    _dir: TempDir,
    socket: PathBuf,
    peer: JoinHandle<Vec<Value>>,
}

fn scripted(answers: Vec<Value>) -> Scripted {
    let dir = scratch();
    let socket = dir.path().join("scripted.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let peer = std::thread::spawn(move || {
        let mut answers = std::collections::VecDeque::from(answers);
        let mut seen = Vec::new();
        while !answers.is_empty() {
            let (stream, _) = listener.accept().unwrap();
            answer_lines(stream, &mut answers, &mut seen);
        }
        seen
    });
    Scripted {
        _dir: dir,
        socket,
        peer,
    }
}

impl Scripted {
    fn run(&self, args: &[&str]) -> Output {
        client(&self.socket, args)
    }

    fn sent(self) -> Vec<Value> {
        self.peer.join().unwrap()
    }
}

/// The client binary in the C locale, so `ls` sorts by bytes whatever
/// locale the tests run in.
fn client(socket: &Path, args: &[&str]) -> Output {
    std::process::Command::new(client_under_test())
        .env("LC_ALL", "C")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stat_json(mode: u32, size: u64) -> Value {
    json!({"dev":2049,"ino":12,"mode":mode,"nlink":1,"uid":0,"gid":0,"rdev":0,"size":size,
           "blksize":4096,"blocks":8,"atime":[1732400000,5],"mtime":[1732400000,0],
           "ctime":[1732400000,0]})
}

fn denied() -> Value {
    json!({"ok":false,"error":{"code":"denied","message":"no rule grants stat on /srv/x"}})
}

#[test]
fn stat_prints_stat1_fields_and_json() {
    let peer = scripted(vec![
        json!({"ok":true,"path":"/srv/x","rule":"r","stat":stat_json(0o100644, 5)}),
        json!({"ok":true,"path":"/srv/x","rule":"r","stat":stat_json(0o100644, 5),"new":1}),
    ]);
    let out = peer.run(&["stat", "/srv/x"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("  File: /srv/x\n  Size: 5 "), "{text}");
    for field in [
        "Blocks: 8",
        "IO Block: 4096   regular file",
        "Device: 8,1\tInode: 12",
        "Links: 1",
        "Access: (0644/-rw-r--r--)  Uid: (    0/    root)",
        "Modify: ",
        "Change: ",
        " Birth: -",
    ] {
        assert!(text.contains(field), "{field:?} in {text}");
    }
    let out = peer.run(&["stat", "--nofollow", "--json", "/srv/x"]);
    assert_eq!(out.status.code(), Some(0));
    let value: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(value["stat"], stat_json(0o100644, 5));
    assert_eq!(value["rule"], "r");
    assert_eq!(
        peer.sent(),
        [
            json!({"op":"stat","path":"/srv/x"}),
            json!({"op":"stat","path":"/srv/x","nofollow":true})
        ]
    );
}

#[test]
fn refusals_exit_1_with_code_and_message_on_stderr() {
    let peer = scripted(vec![denied(), denied()]);
    let out = peer.run(&["stat", "/srv/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains("denied: no rule grants stat on /srv/x"),
        "{}",
        stderr(&out)
    );
    let out = peer.run(&["stat", "--json", "/srv/x"]);
    assert_eq!(out.status.code(), Some(1));
    let value: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(value["error"]["code"], "denied");
    drop(peer.sent());
}

#[test]
fn usage_errors_exit_2_and_an_absent_server_3() {
    let dir = scratch();
    let socket = dir.path().join("nobody.sock");
    let out = client(&socket, &["mv", "/only-one"]);
    assert_eq!(out.status.code(), Some(2));
    let out = client(&socket, &["mkdir", "/d", "--perm", "9"]);
    assert_eq!(out.status.code(), Some(2));
    let out = client(&socket, &["rm", "/x"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn changes_send_their_ops_and_are_silent_on_success() {
    let done = json!({"ok":true,"path":"/s/a","rule":"r"});
    let peer = scripted(vec![
        done.clone(),
        done.clone(),
        done.clone(),
        done.clone(),
        json!({"ok":true,"path":"/s/a","to":"/s/b","rule":"r"}),
        json!({"ok":false,"error":{"code":"exists","errno":"EEXIST","message":"/s/b exists"}}),
    ]);
    for args in [
        &["mkdir", "/s/a"][..],
        &["mkdir", "--perm", "0750", "/s/a"],
        &["rm", "/s/a"],
        &["rmdir", "/s/a"],
        &["mv", "/s/a", "/s/b"],
    ] {
        let out = peer.run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = peer.run(&["mv", "--no-replace", "/s/a", "/s/b"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("exists: /s/b exists"));
    assert_eq!(
        peer.sent(),
        [
            json!({"op":"mkdir","path":"/s/a","perm":"0700"}),
            json!({"op":"mkdir","path":"/s/a","perm":"0750"}),
            json!({"op":"unlink","path":"/s/a"}),
            json!({"op":"rmdir","path":"/s/a"}),
            json!({"op":"rename","path":"/s/a","to":"/s/b"}),
            json!({"op":"rename","path":"/s/a","to":"/s/b","noreplace":true}),
        ]
    );
}

#[test]
fn readlink_prints_the_exact_bytes() {
    let peer = scripted(vec![
        json!({"ok":true,"path":"/s/l","rule":"r","target":"a\u{fffd}","target_b64":"Yf8="}),
    ]);
    let out = peer.run(&["readlink", "/s/l"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"a\xff\n");
    drop(peer.sent());
}

fn entry(name: &str, kind: &str) -> Value {
    json!({"name": name, "type": kind, "ino": 5})
}

#[test]
fn ls_follows_pages_and_sorts_and_hides_dot_names_without_a() {
    let pages = || {
        vec![
            json!({"ok":true,"path":"/s","rule":"r","cursor":"c",
                   "entries":[entry("zeta","file"), entry(".","dir"), entry(".hidden","file")]}),
            json!({"ok":true,"path":"/s","rule":"r",
                   "entries":[entry("..","dir"), entry("alpha","dir"), entry("mid","symlink")]}),
        ]
    };
    let mut answers = pages();
    answers.extend(pages());
    let peer = scripted(answers);
    let out = peer.run(&["ls", "/s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "alpha\nmid\nzeta\n");
    let out = peer.run(&["ls", "-a", "/s"]);
    assert_eq!(stdout(&out), ".\n..\n.hidden\nalpha\nmid\nzeta\n");
    let sent = peer.sent();
    assert_eq!(sent[1], json!({"op":"readdir","path":"/s","cursor":"c"}));
}

#[test]
fn ls_l_shows_question_marks_where_stat_is_refused_and_exits_1() {
    let peer = scripted(vec![
        json!({"ok":true,"path":"/s","rule":"r","entries":[entry("b","dir"), entry("a","file")]}),
        json!({"ok":true,"path":"/s/a","rule":"r","stat":stat_json(0o100600, 1234)}),
        denied(),
    ]);
    let out = peer.run(&["ls", "-l", "/s"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "total 4");
    assert!(
        lines[1].starts_with("-rw------- 1 root root 1234 ") && lines[1].ends_with(" a"),
        "{text}"
    );
    assert_eq!(lines[2], "d????????? ? ?    ?       ?            ? b");
    assert!(
        stderr(&out).contains("cannot stat /s/b"),
        "{}",
        stderr(&out)
    );
    let sent = peer.sent();
    assert_eq!(
        sent[1..],
        [
            json!({"op":"stat","path":"/s/a","nofollow":true}),
            json!({"op":"stat","path":"/s/b","nofollow":true})
        ]
    );
}

// Against the real server.

/// A server granting everything below `tree/` but `tree/secret`, and
/// listing `tree/`.
fn tree_server() -> TestServer {
    let (server, _) = common::tree::serve_tree(
        "tree",
        0o755,
        |d| {
            let [tree, top] = common::tree::grant_below(d);
            let deny =
                json!({"name": "no-secrets", "effect": "deny", "paths": [format!("{d}/secret")]});
            json!([tree, top, deny])
        },
        &[],
    );
    server
}

fn cli(server: &TestServer, args: &[&str]) -> Output {
    client(&server.socket, args)
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn ls_and_stat_against_the_server_match_coreutils() {
    let server = tree_server();
    let tree = server.path("tree");
    fs::write(tree.join("b.log"), "bytes").unwrap();
    fs::write(tree.join("secret"), "no").unwrap();
    fs::create_dir(tree.join("a")).unwrap();
    std::os::unix::fs::symlink("b.log", tree.join("c")).unwrap();
    let out = cli(&server, &["ls", "-a", arg(&tree)]);
    assert_eq!(stdout(&out), ".\n..\na\nb.log\nc\nsecret\n");
    let out = cli(&server, &["ls", "-l", arg(&tree)]);
    assert_eq!(out.status.code(), Some(1), "the secret is refused");
    let text = stdout(&out);
    assert!(text.contains(" c -> b.log\n"), "{text}");
    assert!(text.contains("-????????? ? "), "{text}");
    let out = cli(&server, &["stat", "--json", arg(&tree.join("b.log"))]);
    let value: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let real = fs::metadata(tree.join("b.log")).unwrap();
    assert_eq!(value["stat"]["ino"], real.ino());
    assert_eq!(value["stat"]["size"], 5);
    assert_eq!(value["rule"], "tree");
}

#[test]
fn changes_against_the_server() {
    let server = tree_server();
    let tree = server.path("tree");
    let spool = tree.join("spool");
    let out = cli(&server, &["mkdir", "--perm", "0755", arg(&spool)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The default dir_perm 0700 masks what was asked.
    assert_eq!(
        fs::metadata(&spool).unwrap().permissions().mode() & 0o777,
        0o700
    );
    fs::write(spool.join("a"), "a").unwrap();
    fs::write(spool.join("b"), "b").unwrap();
    let out = cli(
        &server,
        &[
            "mv",
            "--no-replace",
            arg(&spool.join("a")),
            arg(&spool.join("b")),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    let out = cli(
        &server,
        &["mv", arg(&spool.join("a")), arg(&spool.join("b"))],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(fs::read_to_string(spool.join("b")).unwrap(), "a");
    let out = cli(&server, &["rmdir", arg(&spool)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("io_error"), "{}", stderr(&out));
    assert_eq!(
        cli(&server, &["rm", arg(&spool.join("b"))]).status.code(),
        Some(0)
    );
    assert_eq!(cli(&server, &["rmdir", arg(&spool)]).status.code(), Some(0));
    assert!(!spool.exists());
}

/// Runs `script` with the Python client importable, `FDOPEN_SOCKET` and
/// `TREE` set; `None` (and why) without python3.
fn python(script: &str, socket: &Path, tree: &str) -> Option<Output> {
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .env("FDOPEN_SOCKET", socket)
        .env("TREE", tree)
        .env(
            "EXAMPLES",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python"),
        )
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output();
    match out {
        Ok(out) => Some(out),
        Err(e) => {
            eprintln!("skipped: no python3 ({e})");
            None
        }
    }
}

/// The Python client of examples/python speaks the same wire.
#[test]
fn the_python_client_sends_and_reads_tree_ops_as_the_spec_says() {
    let peer = scripted(vec![
        json!({"ok":true,"path":"/s/l","rule":"r","stat":stat_json(0o120777, 1)}),
        json!({"ok":true,"path":"/s","rule":"r","cursor":"c",
               "entries":[entry(".","dir"), entry("a","file")]}),
        json!({"ok":true,"path":"/s","rule":"r",
               "entries":[{"name":"\u{fffd}","name_b64":"/w==","type":"file","ino":6}]}),
        json!({"ok":true,"path":"/s/a","to":"/s/\u{fffd}","to_b64":"L3Mv/w==","rule":"r"}),
        json!({"ok":false,"error":{"code":"io_error","errno":"ENOTEMPTY","message":"not empty"}}),
        json!({"ok":true,"path":"/s/l","rule":"r","target":"x\u{fffd}","target_b64":"eP8="}),
        json!({"ok":true,"path":"/s/l","rule":"r","names":["user.a","user.\u{fffd}"],
               "names_b64":["dXNlci5h","dXNlci7/"]}),
        json!({"ok":true,"path":"/s/l","rule":"r","value_b64":"AAE="}),
    ]);
    let script = r#"
import json, os, sys
sys.path.insert(0, os.environ["EXAMPLES"])
from fdopen_client import FdopenClient, FdopenError
with FdopenClient(os.environ["FDOPEN_SOCKET"]) as c:
    print(oct(c.stat("/s/l", nofollow=True, within=("/s", 1, 2))["mode"]))
    print([os.fsencode(n).hex() for n in c.listdir("/s")])
    c.rename("/s/a", b"/s/\xff", noreplace=True)
    try:
        c.rmdir("/s")
    except FdopenError as e:
        print(e.code, e.errno_name, e.errno == __import__("errno").ENOTEMPTY)
    print(os.fsencode(c.readlink("/s/l")).hex())
    print([os.fsencode(n).hex() for n in c.listxattr("/s/l")])
    print(c.getxattr("/s/l", "user.a").hex())
"#;
    let Some(out) = python(script, &peer.socket, "") else {
        return;
    };
    assert_eq!(
        stdout(&out),
        "0o120777\n['61', 'ff']\nio_error ENOTEMPTY True\n78ff\n['757365722e61', '757365722eff']\n0001\n",
        "{}",
        stderr(&out)
    );
    assert_eq!(
        peer.sent(),
        [
            json!({"op":"stat","path":"/s/l","nofollow":true,"within":{"path":"/s","id":[1,2]}}),
            json!({"op":"readdir","path":"/s"}),
            json!({"op":"readdir","path":"/s","cursor":"c"}),
            json!({"op":"rename","path":"/s/a","to_b64":"L3Mv/w==","noreplace":true}),
            json!({"op":"rmdir","path":"/s"}),
            json!({"op":"readlink","path":"/s/l"}),
            json!({"op":"xattr","path":"/s/l"}),
            json!({"op":"xattr","path":"/s/l","name":"user.a"}),
        ]
    );
}

/// `program args` as `uid`/`gid` (root only), in the C locale.
fn run_as(uid: u32, gid: u32, program: &str, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(program);
    cmd.env("LC_ALL", "C").args(args);
    as_ids(&mut cmd, uid, gid, &[]).output().unwrap()
}

fn coreutils(program: &str, args: &[&str]) -> Option<Output> {
    match std::process::Command::new(program)
        .env("LC_ALL", "C")
        .args(args)
        .output()
    {
        Ok(out) if out.status.success() => Some(out),
        other => {
            eprintln!("skipped: {program} unavailable ({other:?})");
            None
        }
    }
}

/// What the issue's outside suite does: an unprivileged client on a
/// root-only 0700 tree sees, through the server, what root sees with
/// coreutils, byte for byte.
#[test]
fn nobody_sees_a_root_only_tree_as_root_sees_it_with_coreutils() {
    if !is_root() {
        eprintln!("skipped: needs root to make a root-only tree and become nobody");
        return;
    }
    let server = tree_server();
    let tree = server.path("tree");
    fs::write(tree.join("b.log"), "some bytes").unwrap();
    fs::create_dir(tree.join("a")).unwrap();
    std::os::unix::fs::symlink("b.log", tree.join("c")).unwrap();
    fs::write(tree.join("Zed"), vec![1u8; 5000]).unwrap();
    fs::set_permissions(&tree, fs::Permissions::from_mode(0o700)).unwrap();
    let (uid, gid) = common::as_user::nobody();
    let client_as = |args: &[&str]| {
        let mut all = vec!["--socket", arg(&server.socket)];
        all.extend_from_slice(args);
        run_as(uid, gid, &client_under_test(), &all)
    };
    // Without the server, nobody cannot even list it.
    assert!(!run_as(uid, gid, "ls", &[arg(&tree)]).status.success());
    let ours = client_as(&["ls", "-l", arg(&tree)]);
    assert_eq!(ours.status.code(), Some(0), "{}", stderr(&ours));
    let Some(theirs) = coreutils("ls", &["-l", arg(&tree)]) else {
        return;
    };
    assert_eq!(stdout(&ours), stdout(&theirs));
    for name in ["b.log", "a", "c"] {
        let path = tree.join(name);
        let ours = client_as(&["stat", "--nofollow", arg(&path)]);
        assert_eq!(ours.status.code(), Some(0), "{}", stderr(&ours));
        let theirs = coreutils("stat", &[arg(&path)]).unwrap();
        assert_eq!(stdout(&ours), stdout(&theirs), "{name}");
    }
    let ours = client_as(&["readlink", arg(&tree.join("c"))]);
    assert_eq!(stdout(&ours), "b.log\n");
}

#[test]
fn ls_json_carries_entries_stats_and_refusals() {
    let peer = scripted(vec![
        json!({"ok":true,"path":"/s","rule":"r","entries":[entry("b","dir"), entry("a","file")]}),
        json!({"ok":true,"path":"/s/a","rule":"r","stat":stat_json(0o100600, 1234)}),
        denied(),
        denied(),
    ]);
    let out = peer.run(&["ls", "-l", "--json", "/s"]);
    assert_eq!(out.status.code(), Some(1), "one entry was refused");
    let value: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(value["ok"], true);
    assert_eq!(value["entries"][0]["name"], "a");
    assert_eq!(value["entries"][0]["stat"]["size"], 1234);
    assert_eq!(value["entries"][1]["type"], "dir");
    assert_eq!(value["entries"][1]["error"]["code"], "denied");
    let out = peer.run(&["ls", "--json", "/s"]);
    assert_eq!(out.status.code(), Some(1));
    let value: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(value["error"]["code"], "denied");
    drop(peer.sent());
}

#[test]
fn the_python_client_against_the_server() {
    let server = tree_server();
    let tree = server.path("tree");
    let big = tree.join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..1500 {
        fs::write(big.join(format!("f{i}")), "").unwrap();
    }
    let script = r#"
import os, sys
sys.path.insert(0, os.environ["EXAMPLES"])
from fdopen_client import FdopenClient, FdopenError
tree = os.environ["TREE"]
with FdopenClient(os.environ["FDOPEN_SOCKET"]) as c:
    big = os.path.join(tree, "big")
    assert sorted(c.listdir(big)) == sorted(os.listdir(big))
    assert c.stat(big)["ino"] == os.stat(big).st_ino
    spool = os.path.join(tree, "spool")
    c.mkdir(spool, perm="0750")
    open(os.path.join(spool, "a.tmp"), "w").close()
    c.rename(os.path.join(spool, "a.tmp"), os.path.join(spool, "a.job"), noreplace=True)
    try:
        c.rmdir(spool)
        raise SystemExit("rmdir of a full directory succeeded")
    except FdopenError as e:
        print(e.code, e.errno_name)
    c.unlink(os.path.join(spool, "a.job"))
    c.rmdir(spool)
    print(os.path.exists(spool))
"#;
    let Some(out) = python(script, &server.socket, arg(&tree)) else {
        return;
    };
    assert_eq!(
        stdout(&out),
        "io_error ENOTEMPTY\nFalse\n",
        "{}",
        stderr(&out)
    );
}

/// `ls | head -1`: a reader that stops early is not an error.
#[test]
fn ls_into_a_closed_pipe_exits_0() {
    let entries: Vec<Value> = (0..5000)
        .map(|i| entry(&format!("a-rather-long-file-name-{i:06}"), "file"))
        .collect();
    let peer = scripted(vec![
        json!({"ok":true,"path":"/s","rule":"r","entries":entries}),
    ]);
    let mut child = std::process::Command::new(client_under_test())
        .env("LC_ALL", "C")
        .arg("--socket")
        .arg(&peer.socket)
        .args(["ls", "/s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    drop(peer.sent());
}
