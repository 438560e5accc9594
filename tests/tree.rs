//! Tree operations (SPEC §3.6) over the raw protocol, as `nobody` against
//! a root server, on a root-only 0700 tree: every answer and errno as
//! the table says, `within`, `nofollow`, cursors, and the audit records.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::as_user::{Conn, nobody};
use common::*;
use serde_json::{Value, json};

/// A server whose tree `t/` (0700, root's) holds what `policy` grants.
struct Tree {
    server: TestServer,
    root: PathBuf,
}

impl Tree {
    fn start(rules: impl Fn(&str) -> Value, extra: &[&str]) -> Option<Tree> {
        if !is_root() {
            eprintln!("skipped: needs root to serve a tree nobody cannot reach");
            return None;
        }
        let (server, root) = common::tree::serve_tree("t", 0o700, rules, extra);
        Some(Tree { server, root })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn nobody(&self) -> Conn {
        Conn::nobody(&self.server.socket)
    }
}

fn req(op: &str, path: &Path) -> Value {
    json!({"op": op, "path": path})
}

fn with(mut v: Value, extra: Value) -> Value {
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

/// The error code and errno of an answer.
fn refusal(v: &Value) -> (&str, Option<&str>) {
    (code(v), v["error"]["errno"].as_str())
}

#[test]
fn stat_answers_what_the_kernel_says_and_implies_directories_only() {
    let Some(t) = Tree::start(
        |d| json!([{"name": "logs", "paths": [format!("{d}/app/**/*.log")]}]),
        &[],
    ) else {
        return;
    };
    fs::create_dir_all(t.path("app/2026/11")).unwrap();
    fs::write(t.path("app/2026/11/a.log"), "hello").unwrap();
    fs::write(t.path("app/2026/11/secret.txt"), "no").unwrap();
    let mut c = t.nobody();
    let v = c.ask(&req("stat", &t.path("app/2026/11/a.log")));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["rule"], "logs");
    let m = fs::symlink_metadata(t.path("app/2026/11/a.log")).unwrap();
    let st = &v["stat"];
    for (field, want) in [
        ("dev", m.dev()),
        ("ino", m.ino()),
        ("mode", u64::from(m.mode())),
        ("nlink", m.nlink()),
        ("uid", u64::from(m.uid())),
        ("gid", u64::from(m.gid())),
        ("rdev", m.rdev()),
        ("size", m.size()),
        ("blksize", m.blksize()),
        ("blocks", m.blocks()),
    ] {
        assert_eq!(st[field].as_u64(), Some(want), "{field}: {v}");
    }
    assert_eq!(st["mtime"], json!([m.mtime(), m.mtime_nsec()]));
    assert_eq!(st["ctime"], json!([m.ctime(), m.ctime_nsec()]));
    // Directories on the way, and below the `**`: implied.
    for dir in ["", "app", "app/2026", "app/2026/11"] {
        let v = c.ask(&req("stat", &t.path(dir)));
        assert_eq!(v["ok"], true, "{dir}: {v}");
        assert_eq!(v["stat"]["mode"].as_u64().unwrap() & 0o170000, 0o040000);
    }
    // A file there, or a missing name: denied, as if nothing were there.
    for not in ["app/2026/11/secret.txt", "app/2026/11/missing", "app/nodir"] {
        let v = c.ask(&req("stat", &t.path(not)));
        assert_eq!(refusal(&v), ("denied", None), "{not}: {v}");
    }
    // Below a file or a missing name, other metadata ops learn no more.
    for op in ["readlink", "xattr", "stat"] {
        for under in ["app/2026/11/secret.txt/x", "app/nodir/x"] {
            let v = c.ask(&req(op, &t.path(under)));
            assert_eq!(refusal(&v), ("denied", None), "{op} {under}: {v}");
        }
    }
    // A missing file that a glob matches: not_found, with its errno.
    let v = c.ask(&req("stat", &t.path("app/2026/11/gone.log")));
    assert_eq!(refusal(&v), ("not_found", Some("ENOENT")), "{v}");
    // list is never implied.
    let v = c.ask(&req("readdir", &t.path("app")));
    assert_eq!(refusal(&v), ("denied", None), "{v}");
}

#[test]
fn stat_never_opens_and_never_blocks_on_a_fifo() {
    let Some(t) = Tree::start(
        |d| json!([{"name": "all", "paths": [format!("{d}/**")], "modes": ["stat"]}]),
        &[],
    ) else {
        return;
    };
    let fifo = t.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut c = t.nobody();
    let v = c.ask(&req("stat", &fifo));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["stat"]["mode"].as_u64().unwrap() & 0o170000, 0o010000);
}

#[test]
fn nofollow_readlink_and_symlinks_judged_at_both_ends() {
    let Some(t) = Tree::start(
        |d| {
            json!([{"name": "links", "paths": [format!("{d}/links/*")], "modes": ["read", "stat"]},
                   {"name": "via", "paths": [format!("{d}/via/**")], "modes": ["read"]},
                   {"name": "data", "paths": [format!("{d}/data/*")], "modes": ["read"]}])
        },
        &[],
    ) else {
        return;
    };
    fs::create_dir_all(t.path("links")).unwrap();
    fs::create_dir_all(t.path("data")).unwrap();
    fs::create_dir_all(t.path("hidden")).unwrap();
    fs::write(t.path("data/f"), "data").unwrap();
    fs::write(t.path("hidden/h"), "hidden").unwrap();
    symlink(t.path("data/f"), t.path("links/ok")).unwrap();
    symlink("../hidden/h", t.path("links/out")).unwrap();
    fs::write(t.path("links/plain"), "plain").unwrap();
    let mut c = t.nobody();
    // Followed: judged at the real path too; nofollow: the link itself.
    let v = c.ask(&req("stat", &t.path("links/ok")));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["path"], json!(t.path("data/f")));
    let v = c.ask(&req("stat", &t.path("links/out")));
    assert_eq!(refusal(&v), ("denied", None), "{v}");
    let v = c.ask(&with(
        req("stat", &t.path("links/out")),
        json!({"nofollow": true}),
    ));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["stat"]["mode"].as_u64().unwrap() & 0o170000, 0o120000);
    // readlink: the target's bytes; not a link: EINVAL.
    let v = c.ask(&req("readlink", &t.path("links/out")));
    assert_eq!(v["target"], "../hidden/h", "{v}");
    let v = c.ask(&req("readlink", &t.path("links/plain")));
    assert_eq!(refusal(&v), ("not_regular", Some("EINVAL")), "{v}");
    // open and check with nofollow: a final symlink is ELOOP.
    for op in ["open", "check"] {
        let v = c.ask(&json!({"op": op, "path": t.path("links/ok"), "nofollow": true}));
        assert_eq!(refusal(&v), ("not_regular", Some("ELOOP")), "{op}: {v}");
        let v = c.ask(&json!({"op": op, "path": t.path("links/plain"), "nofollow": true}));
        assert_eq!(v["ok"], true, "{op}: {v}");
    }
    // Through a symlinked directory, a missing name is not said to be
    // missing where the policy does not reach.
    fs::create_dir(t.path("via")).unwrap();
    symlink("../hidden", t.path("via/dir")).unwrap();
    for name in ["missing", "h"] {
        for op in ["stat", "xattr", "check"] {
            let r = with(
                req(op, &t.path(&format!("via/dir/{name}"))),
                json!({"nofollow": true}),
            );
            assert_eq!(refusal(&c.ask(&r)), ("denied", None), "{op} {name}");
        }
    }
    // Fields that do not belong to an op are bad_request.
    let v = c.ask(&with(
        req("readlink", &t.path("links/ok")),
        json!({"nofollow": true}),
    ));
    assert_eq!(code(&v), "bad_request", "{v}");
}

#[test]
fn readdir_pages_thousands_of_entries_in_kernel_order_with_a_connection_bound_cursor() {
    let Some(t) = Tree::start(
        |d| json!([{"name": "spool", "paths": [format!("{d}/spool")], "modes": ["list"]}]),
        &[],
    ) else {
        return;
    };
    let spool = t.path("spool");
    fs::create_dir(&spool).unwrap();
    for i in 0..2500 {
        fs::write(spool.join(format!("f{i:04}")), "").unwrap();
    }
    fs::create_dir(spool.join("sub")).unwrap();
    symlink("f0001", spool.join("link")).unwrap();
    let mut c = t.nobody();
    let mut names = Vec::new();
    let mut types = std::collections::HashMap::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut r = req("readdir", &spool);
        if let Some(cur) = &cursor {
            r["cursor"] = cur.clone().into();
        }
        let v = c.ask(&r);
        assert_eq!(v["ok"], true, "{v}");
        let entries = v["entries"].as_array().unwrap();
        assert!(entries.len() <= 1000);
        for e in entries {
            let name = e["name"].as_str().unwrap().to_owned();
            types.insert(name.clone(), e["type"].as_str().unwrap().to_owned());
            names.push(name);
        }
        pages += 1;
        match v["cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    // . and .. included, each name once, as many as the kernel has.
    let unique: BTreeSet<_> = names.iter().cloned().collect();
    assert_eq!(unique.len(), names.len(), "a name came twice");
    let mut want: BTreeSet<String> = fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    want.insert(".".into());
    want.insert("..".into());
    assert_eq!(unique, want);
    assert_eq!(types["sub"], "dir");
    assert_eq!(types["link"], "symlink");
    assert_eq!(types["f0007"], "file");
    // A cursor is good only on the connection that was given it.
    let v = c.ask(&req("readdir", &spool));
    let cursor = v["cursor"].as_str().unwrap().to_owned();
    let mut other = t.nobody();
    let v = other.ask(&with(req("readdir", &spool), json!({"cursor": cursor})));
    assert_eq!(code(&v), "bad_request", "{v}");
    let v = c.ask(&with(req("readdir", &spool), json!({"cursor": cursor})));
    assert_eq!(v["ok"], true, "{v}");
    // Not a directory: ENOTDIR.
    let v = c.ask(&req("readdir", &spool.join("f0001")));
    assert_eq!(
        code(&v),
        "denied",
        "only the directory is granted list: {v}"
    );
}

#[test]
fn mkdir_owner_and_mode_under_any_umask() {
    if !is_root() {
        return;
    }
    let dir = scratch();
    let root = dir.path().join("t");
    fs::create_dir(&root).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
    let d = glob(&root);
    let policy = json!({"rules": [
        {"name": "spool", "paths": [format!("{d}/spool/*")], "modes": ["mkdir"], "dir_perm": "0750"},
        {"name": "mine", "paths": [format!("{d}/own/*")], "modes": ["mkdir"], "owner": "server"}
    ]})
    .to_string();
    fs::create_dir(root.join("spool")).unwrap();
    fs::create_dir(root.join("own")).unwrap();
    let s = TestServer::start_with_umask(dir, &policy, &["--socket-mode", "0666"], 0o077);
    let (uid, gid) = nobody();
    let mut c = Conn::nobody(&s.socket);
    let made = root.join("spool/q");
    let v = c.ask(&with(req("mkdir", &made), json!({"perm": "0775"})));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["created"], true, "{v}");
    let m = fs::metadata(&made).unwrap();
    assert!(m.is_dir());
    assert_eq!((m.uid(), m.gid()), (uid, gid));
    assert_eq!(
        m.mode() & 0o7777,
        0o750,
        "perm & dir_perm, whatever the umask"
    );
    // Default perm is 0700; a taken name is exists (EEXIST).
    let v = c.ask(&req("mkdir", &made));
    assert_eq!(refusal(&v), ("exists", Some("EEXIST")), "{v}");
    let v = c.ask(&req("mkdir", &root.join("own/x")));
    assert_eq!(v["ok"], true, "{v}");
    let m = fs::metadata(root.join("own/x")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o700));
    // Not granted: denied.
    let v = c.ask(&req("mkdir", &root.join("elsewhere")));
    assert_eq!(refusal(&v), ("denied", None), "{v}");
}

#[test]
fn unlink_and_rmdir_act_on_the_name_never_through_it() {
    let Some(t) = Tree::start(
        |d| json!([{"name": "work", "paths": [format!("{d}/work/**")], "modes": ["delete"]}]),
        &[],
    ) else {
        return;
    };
    fs::create_dir_all(t.path("work/full")).unwrap();
    fs::create_dir_all(t.path("work/empty")).unwrap();
    fs::write(t.path("work/full/x"), "").unwrap();
    fs::write(t.path("target"), "keep me").unwrap();
    symlink(t.path("target"), t.path("work/link")).unwrap();
    fs::write(t.path("work/file"), "").unwrap();
    let mut c = t.nobody();
    // unlink of a symlink removes the link, not what it names.
    let v = c.ask(&req("unlink", &t.path("work/link")));
    assert_eq!(v["ok"], true, "{v}");
    assert!(fs::symlink_metadata(t.path("work/link")).is_err());
    assert_eq!(fs::read_to_string(t.path("target")).unwrap(), "keep me");
    let v = c.ask(&req("unlink", &t.path("work/empty")));
    assert_eq!(refusal(&v), ("not_regular", Some("EISDIR")), "{v}");
    let v = c.ask(&req("rmdir", &t.path("work/file")));
    assert_eq!(refusal(&v), ("not_regular", Some("ENOTDIR")), "{v}");
    let v = c.ask(&req("rmdir", &t.path("work/full")));
    assert_eq!(refusal(&v), ("io_error", Some("ENOTEMPTY")), "{v}");
    let v = c.ask(&req("rmdir", &t.path("work/empty")));
    assert_eq!(v["ok"], true, "{v}");
    assert!(!t.path("work/empty").exists());
    let v = c.ask(&req("unlink", &t.path("work/file")));
    assert_eq!(v["ok"], true, "{v}");
    let v = c.ask(&req("unlink", &t.path("work/file")));
    assert_eq!(refusal(&v), ("not_found", Some("ENOENT")), "{v}");
    // Outside the grant: denied, and nothing is removed.
    let v = c.ask(&req("unlink", &t.path("target")));
    assert_eq!(refusal(&v), ("denied", None), "{v}");
    assert!(t.path("target").exists());
}

#[test]
fn rename_needs_read_and_delete_and_replaces_only_with_delete_on_to() {
    let Some(t) = Tree::start(
        |d| {
            json!([{"name": "in", "paths": [format!("{d}/in/*")], "modes": ["read", "delete"]},
                   {"name": "out", "paths": [format!("{d}/out/*")], "modes": ["write"], "create": true},
                   {"name": "replace", "paths": [format!("{d}/out/replaceable")], "modes": ["delete"]},
                   {"name": "noread", "paths": [format!("{d}/noread/*")], "modes": ["delete"]}])
        },
        &[],
    ) else {
        return;
    };
    for sub in ["in", "out", "noread"] {
        fs::create_dir(t.path(sub)).unwrap();
    }
    let mut c = t.nobody();
    let rename =
        |from: &str, to: &str| json!({"op": "rename", "path": t.path(from), "to": t.path(to)});
    fs::write(t.path("in/a"), "A").unwrap();
    let v = c.ask(&rename("in/a", "out/a"));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["to"], json!(t.path("out/a")));
    assert_eq!(v["rule"], "out");
    assert!(!t.path("in/a").exists());
    assert_eq!(fs::read_to_string(t.path("out/a")).unwrap(), "A");
    // An existing `to` without delete on it: exists, nothing moves.
    fs::write(t.path("in/b"), "B").unwrap();
    let v = c.ask(&rename("in/b", "out/a"));
    assert_eq!(refusal(&v), ("exists", Some("EEXIST")), "{v}");
    assert_eq!(fs::read_to_string(t.path("out/a")).unwrap(), "A");
    assert!(t.path("in/b").exists());
    // With delete on it: replaced, unless noreplace.
    fs::write(t.path("out/replaceable"), "old").unwrap();
    let v = c.ask(&with(
        rename("in/b", "out/replaceable"),
        json!({"noreplace": true}),
    ));
    assert_eq!(refusal(&v), ("exists", Some("EEXIST")), "{v}");
    let v = c.ask(&rename("in/b", "out/replaceable"));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(fs::read_to_string(t.path("out/replaceable")).unwrap(), "B");
    // No read on the source: denied.
    fs::write(t.path("noread/c"), "C").unwrap();
    let v = c.ask(&rename("noread/c", "out/c"));
    assert_eq!(refusal(&v), ("denied", None), "{v}");
    // Several links: not_regular; a directory: EXDEV.
    fs::write(t.path("in/linked"), "L").unwrap();
    fs::hard_link(t.path("in/linked"), t.path("in/linked2")).unwrap();
    let v = c.ask(&rename("in/linked", "out/l"));
    assert_eq!(code(&v), "not_regular", "{v}");
    fs::create_dir(t.path("in/dir")).unwrap();
    let v = c.ask(&rename("in/dir", "out/dir"));
    assert_eq!(refusal(&v), ("io_error", Some("EXDEV")), "{v}");
    // No temporary names are left behind.
    let left: Vec<_> = fs::read_dir(t.path("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".fdopen"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Its record names both ends.
    drop(c);
    let lines = t.server.audit_lines();
    let first = lines
        .iter()
        .find(|l| l["op"] == "rename" && l["ok"] == true)
        .expect("a rename record");
    assert_eq!(first["path"], json!(t.path("in/a")));
    assert_eq!(first["to"], json!(t.path("out/a")));
    assert_eq!(first["rule"], "out");
}

#[test]
fn within_must_be_the_directory_held_and_lead_the_path() {
    let Some(t) = Tree::start(
        |d| json!([{"name": "all", "paths": [format!("{d}/**")], "modes": ["read", "stat"]}]),
        &[],
    ) else {
        return;
    };
    fs::create_dir(t.path("d")).unwrap();
    fs::write(t.path("d/f"), "f").unwrap();
    let m = fs::metadata(t.path("d")).unwrap();
    let mut c = t.nobody();
    let within = |dev: u64, ino: u64| json!({"path": t.path("d"), "id": [dev, ino]});
    let v = c.ask(&with(
        req("stat", &t.path("d/f")),
        json!({"within": within(m.dev(), m.ino())}),
    ));
    assert_eq!(v["ok"], true, "{v}");
    let v = c.ask(&with(
        json!({"op": "open", "path": t.path("d/f")}),
        json!({"within": within(m.dev(), m.ino())}),
    ));
    assert_eq!(v["ok"], true, "{v}");
    // Another inode: denied; a path not below it: bad_request.
    for op in ["stat", "check"] {
        let v = c.ask(&with(
            req(op, &t.path("d/f")),
            json!({"within": within(m.dev(), m.ino() + 1)}),
        ));
        assert_eq!(refusal(&v), ("denied", None), "{op}: {v}");
    }
    let v = c.ask(&with(
        req("stat", &t.path("other")),
        json!({"within": within(m.dev(), m.ino())}),
    ));
    assert_eq!(code(&v), "bad_request", "{v}");
    // Swapped after the client looked: the new directory is not the one held.
    fs::rename(t.path("d"), t.path("d-old")).unwrap();
    fs::create_dir(t.path("d")).unwrap();
    fs::write(t.path("d/f"), "swapped").unwrap();
    let v = c.ask(&with(
        req("stat", &t.path("d/f")),
        json!({"within": within(m.dev(), m.ino())}),
    ));
    assert_eq!(refusal(&v), ("denied", None), "{v}");
}

#[test]
fn audit_records_carry_seq_changes_come_first_and_failures_follow() {
    let Some(t) = Tree::start(
        |d| json!([{"name": "w", "paths": [format!("{d}/**")], "modes": ["delete", "stat", "mkdir"]}]),
        &[],
    ) else {
        return;
    };
    fs::create_dir_all(t.path("full/x")).unwrap();
    let mut c = t.nobody();
    assert_eq!(c.ask(&req("stat", &t.path("full")))["ok"], true);
    assert_eq!(code(&c.ask(&req("rmdir", &t.path("full")))), "io_error");
    assert_eq!(c.ask(&req("mkdir", &t.path("new")))["ok"], true);
    assert_eq!(c.ask(&json!({"op": "hello"}))["ok"], true);
    // Refused before anything was tried: one record.
    assert_eq!(
        code(&c.ask(&req("unlink", Path::new("/etc/passwd")))),
        "denied"
    );
    drop(c);
    let lines = t.server.audit_lines();
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| l["seq"].as_u64().expect("seq"))
        .collect();
    let rmdir: Vec<&Value> = lines.iter().filter(|l| l["op"] == "rmdir").collect();
    assert_eq!(rmdir.len(), 2, "{lines:?}");
    assert_eq!(rmdir[0]["ok"], true, "recorded before it was tried");
    assert_eq!(rmdir[1]["ok"], false);
    assert_eq!(rmdir[1]["code"], "io_error");
    assert_eq!(rmdir[0]["seq"], rmdir[1]["seq"]);
    let distinct: BTreeSet<_> = seqs.iter().collect();
    assert_eq!(
        distinct.len(),
        seqs.len() - 1,
        "only the failure shares a seq"
    );
    let stat = lines
        .iter()
        .find(|l| l["op"] == "stat")
        .expect("stat is recorded");
    assert_eq!(stat["ok"], true);
    assert!(lines.iter().any(|l| l["op"] == "mkdir" && l["ok"] == true));
    let unlink: Vec<&Value> = lines.iter().filter(|l| l["op"] == "unlink").collect();
    assert_eq!(unlink.len(), 1, "{unlink:?}");
    assert_eq!(unlink[0]["code"], "denied");
    assert_eq!(unlink[0]["path"], "/etc/passwd");
}

#[test]
fn audit_metadata_off_silences_metadata_records_only() {
    let Some(t) = Tree::start(
        |d| json!([{"name": "w", "paths": [format!("{d}/**")], "modes": ["list", "mkdir"]}]),
        &["--audit-metadata", "off"],
    ) else {
        return;
    };
    fs::create_dir(t.path("s")).unwrap();
    let mut c = t.nobody();
    assert_eq!(c.ask(&req("stat", &t.path("")))["ok"], true);
    assert_eq!(c.ask(&req("readdir", &t.path("s")))["ok"], true);
    assert_eq!(
        code(&c.ask(&req("stat", Path::new("/etc/shadow")))),
        "denied"
    );
    assert_eq!(c.ask(&req("mkdir", &t.path("m")))["ok"], true);
    drop(c);
    let ops: Vec<String> = t
        .server
        .audit_lines()
        .iter()
        .map(|l| l["op"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ops, vec!["mkdir".to_owned()]);
}

#[test]
fn the_servers_own_files_and_pseudo_filesystems_are_not_changed() {
    let Some(t) = Tree::start(
        |_| json!([{"name": "everything", "paths": ["/**"], "modes": ["read", "stat", "delete", "mkdir", "write"], "create": true}]),
        &[],
    ) else {
        return;
    };
    let s = &t.server;
    let mut c = t.nobody();
    for path in [&s.policy, &s.audit, &s.socket] {
        let v = c.ask(&req("unlink", path));
        assert_eq!(refusal(&v), ("denied", None), "{}: {v}", path.display());
        assert!(path.exists());
        // Reading and stat stay as the policy says; opening to write does not.
        assert_eq!(c.ask(&req("stat", path))["ok"], true);
        let v = c.ask(&json!({"op": "check", "path": path, "mode": "write"}));
        assert_eq!(refusal(&v), ("denied", None), "{}: {v}", path.display());
    }
    let v = c.ask(&json!({"op": "check", "path": s.policy}));
    assert_eq!(v["ok"], true, "read stays: {v}");
    let v = c.ask(&json!({"op": "rename", "path": t.path("x"), "to": s.policy}));
    assert_eq!(code(&v), "denied", "{v}");
    let v = c.ask(&req("rmdir", s.dir.path()));
    assert_eq!(code(&v), "denied", "above the policy: {v}");
    // proc and sysfs: no rule rooted there.
    let v = c.ask(&req("mkdir", Path::new("/proc/fdopen-test")));
    assert_eq!(code(&v), "denied", "{v}");
    let v = c.ask(&req("mkdir", Path::new("/sys/fs/fdopen-test")));
    assert_eq!(code(&v), "denied", "{v}");
}

#[test]
fn xattr_lists_and_reads_user_attributes_never_trusted() {
    let Some(t) = Tree::start(
        |d| json!([{"name": "x", "paths": [format!("{d}/f")], "modes": ["read"]}]),
        &[],
    ) else {
        return;
    };
    let file = t.path("f");
    fs::write(&file, "").unwrap();
    let set = |name: &str, value: &[u8]| {
        let path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        let name = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid C strings and a buffer of the given length.
        unsafe {
            libc::setxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        }
    };
    if set("user.colour", b"blue\x00\xff") != 0 {
        eprintln!("skipped: this filesystem has no user xattrs");
        return;
    }
    let _ = set("trusted.secret", b"root only");
    let mut c = t.nobody();
    let v = c.ask(&req("xattr", &file));
    assert_eq!(v["ok"], true, "{v}");
    let names: Vec<&str> = v["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(names.contains(&"user.colour"), "{v}");
    assert!(!names.iter().any(|n| n.starts_with("trusted.")), "{v}");
    let v = c.ask(&with(req("xattr", &file), json!({"name": "user.colour"})));
    assert_eq!(v["value_b64"], "Ymx1ZQD/", "{v}");
    let v = c.ask(&with(req("xattr", &file), json!({"name": "user.none"})));
    assert_eq!(refusal(&v), ("not_found", Some("ENODATA")), "{v}");
    let v = c.ask(&with(
        req("xattr", &file),
        json!({"name": "trusted.secret"}),
    ));
    assert_eq!(code(&v), "denied", "{v}");
}

#[test]
fn rename_across_filesystems_is_exdev() {
    let Some(shm) = common::tree::scratch_on_another_filesystem() else {
        return;
    };
    let other = glob(shm.path());
    let Some(t) = Tree::start(
        |d| {
            json!([{"name": "in", "paths": [format!("{d}/*")], "modes": ["read", "delete"]},
                   {"name": "out", "paths": [format!("{other}/*")], "modes": ["write"], "create": true}])
        },
        &[],
    ) else {
        return;
    };
    if fs::metadata(shm.path()).unwrap().dev() == fs::metadata(&t.root).unwrap().dev() {
        eprintln!("skipped: /dev/shm and /tmp are one filesystem here");
        return;
    }
    fs::write(t.path("a"), "A").unwrap();
    let mut c = t.nobody();
    let v = c.ask(&json!({"op": "rename", "path": t.path("a"), "to": shm.path().join("a")}));
    assert_eq!(refusal(&v), ("io_error", Some("EXDEV")), "{v}");
    assert!(t.path("a").exists());
    assert!(!shm.path().join("a").exists());
}

#[test]
fn mkdir_in_a_set_group_id_directory_keeps_the_bit_and_the_group() {
    let Some(t) = Tree::start(
        |d| json!([{"name": "m", "paths": [format!("{d}/shared/*")], "modes": ["mkdir"], "dir_perm": "0770"}]),
        &[],
    ) else {
        return;
    };
    let shared = t.path("shared");
    fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, None, Some(4242)).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o2770)).unwrap();
    let mut c = t.nobody();
    let v = c.ask(&with(
        req("mkdir", &shared.join("d")),
        json!({"perm": "0777"}),
    ));
    assert_eq!(v["ok"], true, "{v}");
    let m = fs::metadata(shared.join("d")).unwrap();
    assert_eq!(m.gid(), 4242);
    assert_eq!(m.mode() & 0o7777, 0o2770);
}

#[test]
fn a_trailing_slash_asks_for_a_directory() {
    let Some(t) = Tree::start(
        |d| json!([{"name": "w", "paths": [format!("{d}/**")], "modes": ["delete"]}]),
        &[],
    ) else {
        return;
    };
    fs::write(t.path("file"), "").unwrap();
    fs::create_dir(t.path("dir")).unwrap();
    let mut c = t.nobody();
    let slashed =
        |rel: &str| json!({"op": "unlink", "path": format!("{}/", t.path(rel).display())});
    let v = c.ask(&slashed("file"));
    assert_eq!(refusal(&v), ("not_regular", Some("ENOTDIR")), "{v}");
    assert!(t.path("file").exists());
    let v = c.ask(&slashed("dir"));
    assert_eq!(refusal(&v), ("not_regular", Some("EISDIR")), "{v}");
    assert!(t.path("dir").exists());
    let v = c.ask(&json!({"op": "stat", "path": format!("{}/", t.path("file").display())}));
    assert_eq!(refusal(&v), ("not_regular", Some("ENOTDIR")), "{v}");
}

#[test]
fn the_servers_binary_is_not_changed_whatever_the_policy_says() {
    if !is_root() {
        return;
    }
    let dir = scratch();
    let copy = common::upgrade::server_copy(dir.path());
    let d = glob(dir.path());
    let policy = json!({"rules": [{"name": "all", "paths": [format!("{d}/**")],
                                   "modes": ["read", "write", "delete", "stat"], "create": true}]})
    .to_string();
    let s = TestServer::start_program(dir, &copy, &policy, &["--socket-mode", "0666"]);
    let mut c = Conn::nobody(&s.socket);
    let v = c.ask(&req("unlink", &copy));
    assert_eq!(refusal(&v), ("denied", None), "{v}");
    let v = c.ask(&json!({"op": "check", "path": copy, "mode": "write"}));
    assert_eq!(refusal(&v), ("denied", None), "{v}");
    let v = c.ask(&json!({"op": "rename", "path": s.path("x"), "to": copy}));
    assert_eq!(refusal(&v), ("denied", None), "{v}");
    assert_eq!(c.ask(&req("stat", &copy))["ok"], true);
    assert!(copy.exists());
    // What is not the server's stays as the policy says.
    fs::write(s.path("other"), "").unwrap();
    assert_eq!(c.ask(&req("unlink", &s.path("other")))["ok"], true);
}
