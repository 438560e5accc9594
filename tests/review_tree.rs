//! Adversarial review of the tree operations (SPEC §3.6) as `nobody`
//! against a root server on a root-only tree: what each answer may say
//! about paths the policy does not grant.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::as_user::Conn;
use common::*;
use serde_json::{Value, json};

/// A server whose 0700 tree `t/` holds what `rules` grant.
struct Tree {
    server: TestServer,
    root: PathBuf,
}

impl Tree {
    fn start(rules: impl Fn(&str) -> Value) -> Option<Tree> {
        if !is_root() {
            eprintln!("skipped: needs root to serve a tree nobody cannot reach");
            return None;
        }
        let dir = scratch();
        let root = dir.path().join("t");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        let policy = json!({ "rules": rules(&glob(&root)) }).to_string();
        let server = TestServer::start_in(dir, &policy, &["--socket-mode", "0666"]);
        Some(Tree { server, root })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn nobody(&self) -> Conn {
        Conn::nobody(&self.server.socket)
    }
}

/// The error code and errno of an answer.
fn refusal(v: &Value) -> (&str, Option<&str>) {
    (code(v), v["error"]["errno"].as_str())
}

/// A parent that is a symlink out of the granted tree says nothing of
/// what it leads to: a file, a directory and nothing at all there are
/// all `denied`, without errno (SPEC §3.6 `errno`, §4). Before the fix a
/// link to an ungranted file answered `not_found` `ENOTDIR`, telling the
/// client that the file exists and is not a directory.
#[test]
fn a_symlinked_parent_tells_nothing_of_where_it_leads() {
    let Some(t) = Tree::start(|d| {
        json!([{"name": "g", "paths": [format!("{d}/g/**")],
                "modes": ["read", "write", "stat", "list", "delete", "mkdir"], "create": true}])
    }) else {
        return;
    };
    fs::create_dir_all(t.path("g")).unwrap();
    fs::create_dir_all(t.path("secret/d")).unwrap();
    fs::write(t.path("secret/f"), "secret").unwrap();
    // Below the directory link, `x` is a symlink: nofollow stops at it.
    symlink("f", t.path("secret/d/x")).unwrap();
    fs::write(t.path("g/a.txt"), "a").unwrap();
    for (link, target) in [("to_file", "f"), ("to_dir", "d"), ("to_missing", "missing")] {
        symlink(t.path("secret").join(target), t.path("g").join(link)).unwrap();
    }
    let mut c = t.nobody();
    for link in ["to_file", "to_dir", "to_missing"] {
        let below = t.path(&format!("g/{link}/x"));
        let mut requests = vec![
            json!({"op": "mkdir", "path": below}),
            json!({"op": "unlink", "path": below}),
            json!({"op": "rmdir", "path": below}),
            json!({"op": "readlink", "path": below}),
            json!({"op": "stat", "path": below}),
            json!({"op": "stat", "path": below, "nofollow": true}),
            json!({"op": "xattr", "path": below, "nofollow": true}),
            json!({"op": "readdir", "path": below}),
            json!({"op": "check", "path": below}),
            json!({"op": "check", "path": below, "nofollow": true}),
            json!({"op": "open", "path": below, "nofollow": true}),
            json!({"op": "check", "path": below, "mode": "write", "create": true}),
            json!({"op": "rename", "path": t.path("g/a.txt"), "to": below}),
            json!({"op": "rename", "path": below, "to": t.path("g/b.txt")}),
        ];
        for r in &mut requests {
            let v = c.ask(r);
            assert_eq!(refusal(&v), ("denied", None), "{r}: {v}");
        }
    }
    assert!(t.path("g/a.txt").exists(), "nothing was moved");
}

/// A trailing `/` asks for a directory (SPEC §3.1) on every op: a file
/// named so is `not_regular` (`ENOTDIR`), as the kernel says, and a
/// `rename` does not move it.
#[test]
fn a_trailing_slash_on_a_file_is_enotdir_for_every_op() {
    let Some(t) = Tree::start(|d| {
        json!([{"name": "g", "paths": [format!("{d}/g/**")],
                "modes": ["read", "write", "stat", "delete"], "create": true}])
    }) else {
        return;
    };
    fs::create_dir_all(t.path("g")).unwrap();
    fs::write(t.path("g/a.txt"), "a").unwrap();
    let slashed = format!("{}/", t.path("g/a.txt").display());
    let mut c = t.nobody();
    for r in [
        json!({"op": "xattr", "path": slashed}),
        json!({"op": "stat", "path": slashed}),
        json!({"op": "rename", "path": slashed, "to": t.path("g/b.txt")}),
        json!({"op": "rename", "path": t.path("g/a.txt"), "to": format!("{}/", t.path("g/b.txt").display())}),
    ] {
        let v = c.ask(&r);
        assert_eq!(refusal(&v), ("not_regular", Some("ENOTDIR")), "{r}: {v}");
    }
    assert!(t.path("g/a.txt").exists());
    assert!(!t.path("g/b.txt").exists());
}

/// Probes of answers the table fixes, each refused before any change
/// and so recorded once.
#[test]
fn probes_of_nofollow_rename_refusals_and_would_create() {
    let Some(t) = Tree::start(|d| {
        json!([{"name": "g", "paths": [format!("{d}/g/**")],
                "modes": ["read", "write", "stat", "delete", "mkdir"], "create": true}])
    }) else {
        return;
    };
    fs::create_dir_all(t.path("g/real")).unwrap();
    fs::create_dir_all(t.path("secret")).unwrap();
    fs::write(t.path("secret/f"), "s").unwrap();
    fs::write(t.path("g/real/a.txt"), "a").unwrap();
    fs::write(t.path("g/one"), "1").unwrap();
    fs::hard_link(t.path("g/one"), t.path("g/two")).unwrap();
    symlink(t.path("g/real"), t.path("g/dirlink")).unwrap();
    symlink(t.path("secret/f"), t.path("g/out")).unwrap();
    let mut c = t.nobody();
    // nofollow: a non-final symlink is followed, a final one never,
    // wherever it points.
    let v = c.ask(&json!({"op": "check", "path": t.path("g/dirlink/a.txt"), "nofollow": true}));
    assert_eq!(v["ok"], true, "{v}");
    for op in ["open", "check"] {
        let v = c.ask(&json!({"op": op, "path": t.path("g/out"), "nofollow": true}));
        assert_eq!(refusal(&v), ("not_regular", Some("ELOOP")), "{op}: {v}");
    }
    // rename: several links, a directory.
    let v = c.ask(&json!({"op": "rename", "path": t.path("g/one"), "to": t.path("g/three")}));
    assert_eq!(code(&v), "not_regular", "{v}");
    let v = c.ask(&json!({"op": "rename", "path": t.path("g/real"), "to": t.path("g/moved")}));
    assert_eq!(refusal(&v), ("io_error", Some("EXDEV")), "{v}");
    // check that would create: would_create, never created.
    let v =
        c.ask(&json!({"op": "check", "path": t.path("g/new"), "mode": "write", "create": true}));
    assert_eq!(v["ok"], true, "{v}");
    assert!(!t.path("g/new").exists());
    drop(c);
    let lines = t.server.audit_lines();
    let renames: Vec<&Value> = lines.iter().filter(|l| l["op"] == "rename").collect();
    assert_eq!(renames.len(), 2, "{renames:?}");
    assert!(renames.iter().all(|l| l["ok"] == false), "{renames:?}");
    let check = lines
        .iter()
        .find(|l| l["op"] == "check" && l["path"] == json!(t.path("g/new")))
        .expect("check recorded");
    assert_eq!(check["would_create"], true, "{check}");
    assert!(check.get("created").is_none(), "{check}");
}

/// A directory granted `stat` by implication answers `xattr` like any
/// granted path: a missing attribute is `not_found` (`ENODATA`), as
/// SPEC §3.6 says, not `denied` as if the directory were not granted
/// (`ls -l` asks every directory for its ACL attributes).
#[test]
fn an_implied_directory_answers_a_missing_attribute_enodata() {
    let Some(t) =
        Tree::start(|d| json!([{"name": "logs", "paths": [format!("{d}/app/**/*.log")]}]))
    else {
        return;
    };
    fs::create_dir_all(t.path("app/2026")).unwrap();
    let mut c = t.nobody();
    let v = c.ask(&json!({"op": "xattr", "path": t.path("app/2026"), "name": "user.none"}));
    assert_eq!(refusal(&v), ("not_found", Some("ENODATA")), "{v}");
    // Missing, or a file there: still denied.
    fs::write(t.path("app/2026/f.txt"), "f").unwrap();
    for not in ["app/2026/f.txt", "app/2026/missing"] {
        let v = c.ask(&json!({"op": "xattr", "path": t.path(not), "name": "user.none"}));
        assert_eq!(refusal(&v), ("denied", None), "{not}: {v}");
    }
}

/// procfs magic links are never read, whatever the policy says; the
/// plain links in procfs's root are.
#[test]
fn procfs_magic_links_are_denied_to_readlink() {
    let Some(t) =
        Tree::start(|_| json!([{"name": "proc", "paths": ["/proc/**"], "modes": ["stat"]}]))
    else {
        return;
    };
    let mut c = t.nobody();
    for magic in [
        "/proc/self/exe",
        "/proc/self/cwd",
        "/proc/self/fd/0",
        "/proc/1/root",
    ] {
        let v = c.ask(&json!({"op": "readlink", "path": magic}));
        assert_eq!(refusal(&v), ("denied", None), "{magic}: {v}");
    }
    let v = c.ask(&json!({"op": "readlink", "path": "/proc/self"}));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["target"], t.server.pid().to_string(), "{v}");
}

/// The path the server was started from is its binary too: an upgrade
/// runs it again (SPEC §3.4), so a client that could remove it or
/// rename its own file onto it would have root run that file. Started
/// through a symlink, the link and every hop to the binary are protected
/// whatever the policy says (SPEC §3.6 self-protection).
#[test]
fn the_path_the_server_was_started_from_is_not_changed() {
    if !is_root() {
        eprintln!("skipped: needs root to serve a tree nobody cannot reach");
        return;
    }
    let dir = scratch();
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let link = bin.join("fdopen-server");
    let hop = bin.join("current");
    symlink(SERVER, &hop).unwrap();
    symlink("current", &link).unwrap();
    fs::write(bin.join("evil"), "#!/bin/sh\n").unwrap();
    let policy = json!({"rules": [{"name": "bin", "paths": [format!("{}/**", glob(&bin))],
        "modes": ["read", "write", "stat", "delete"], "create": true}]})
    .to_string();
    let server = TestServer::start_program(dir, &link, &policy, &["--socket-mode", "0666"]);
    let mut c = Conn::nobody(&server.socket);
    for path in [&link, &hop] {
        let v = c.ask(&json!({"op": "unlink", "path": path}));
        assert_eq!(refusal(&v), ("denied", None), "{}: {v}", path.display());
        let v = c.ask(&json!({"op": "rename", "path": bin.join("evil"), "to": path}));
        assert_eq!(refusal(&v), ("denied", None), "{}: {v}", path.display());
        assert!(fs::symlink_metadata(path).unwrap().file_type().is_symlink());
    }
    // Elsewhere in that directory the policy decides.
    let v = c.ask(&json!({"op": "unlink", "path": bin.join("evil")}));
    assert_eq!(v["ok"], true, "{v}");
}

/// Removes a directory made on a pseudo-filesystem, whatever the test
/// asserted first.
struct Rmdir(PathBuf);

impl Drop for Rmdir {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// A cgroup v1 hierarchy root may make directories in, or `None` (and
/// why, printed).
fn cgroup_hierarchy() -> Option<&'static Path> {
    let parent = Path::new("/sys/fs/cgroup/pids");
    let on_cgroupfs = nix::sys::statfs::statfs(parent)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP_SUPER_MAGIC);
    if !is_root() || !on_cgroupfs {
        eprintln!(
            "skipped: needs root and a cgroup v1 pids hierarchy at {}",
            parent.display()
        );
        return None;
    }
    Some(parent)
}

/// A rule rooted on a pseudo-filesystem grants `mkdir` there (SPEC
/// §3.6), where the kernel fills every new directory with its own files
/// (a cgroup's `cgroup.procs`): the directory the server made is still
/// its own, so it gets the client as owner and its mode, and is not
/// refused and left behind as root's with mode 0.
#[test]
fn mkdir_on_a_cgroup_filesystem_under_a_rule_rooted_there() {
    let Some(parent) = cgroup_hierarchy() else {
        return;
    };
    let dir = scratch();
    let made = parent.join(format!("fdopen-review-{}", std::process::id()));
    let _cleanup = Rmdir(made.clone());
    let policy =
        json!({"rules": [{"name": "cg", "paths": [format!("{}/fdopen-review-*", parent.display())],
        "modes": ["mkdir", "delete", "stat"], "dir_perm": "0755"}]})
        .to_string();
    let server = TestServer::start_in(dir, &policy, &["--socket-mode", "0666"]);
    let mut c = Conn::nobody(&server.socket);
    let v = c.ask(&json!({"op": "mkdir", "path": made, "perm": "0755"}));
    assert_eq!(v["ok"], true, "{v}");
    let meta = fs::metadata(&made).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.uid(), common::as_user::nobody().0);
    assert_eq!(meta.mode() & 0o7777, 0o755);
    let v = c.ask(&json!({"op": "rmdir", "path": made}));
    assert_eq!(v["ok"], true, "{v}");
}

/// Across filesystems a rename is `EXDEV` whether or not `to` exists, as
/// the kernel checks: `mv` then copies, where `EEXIST` would stop it.
#[test]
fn rename_across_filesystems_onto_an_existing_name_is_exdev() {
    let Some(shm) = common::tree::scratch_on_another_filesystem() else {
        return;
    };
    let other = glob(shm.path());
    let Some(t) = Tree::start(|d| {
        json!([{"name": "in", "paths": [format!("{d}/*")], "modes": ["read", "delete"]},
               {"name": "out", "paths": [format!("{other}/*")], "modes": ["write"], "create": true}])
    }) else {
        return;
    };
    use std::os::unix::fs::MetadataExt;
    if fs::metadata(shm.path()).unwrap().dev() == fs::metadata(&t.root).unwrap().dev() {
        eprintln!("skipped: /dev/shm and /tmp are one filesystem here");
        return;
    }
    fs::write(t.path("a"), "A").unwrap();
    fs::write(shm.path().join("a"), "old").unwrap();
    let mut c = t.nobody();
    for noreplace in [false, true] {
        let v = c.ask(&json!({"op": "rename", "path": t.path("a"), "to": shm.path().join("a"), "noreplace": noreplace}));
        assert_eq!(refusal(&v), ("io_error", Some("EXDEV")), "{v}");
    }
    assert_eq!(fs::read_to_string(shm.path().join("a")).unwrap(), "old");
}

/// Only the glob that grants a path on a pseudo-filesystem can root the
/// grant there (SPEC §3.6: "the granting rule's glob"): another glob of
/// the same rule, rooted on it, lends the rule nothing.
#[test]
fn a_pseudo_filesystem_change_needs_its_granting_glob_rooted_there() {
    let Some(parent) = cgroup_hierarchy() else {
        return;
    };
    let dir = scratch();
    let made = parent.join(format!("fdopen-review2-{}", std::process::id()));
    let _cleanup = Rmdir(made.clone());
    let policy = json!({"rules": [{"name": "cg", "modes": ["mkdir"],
        "paths": [format!("{}/fdopen-review-*", parent.display()), "/**/fdopen-review2-*"]}]})
    .to_string();
    let server = TestServer::start_in(dir, &policy, &["--socket-mode", "0666"]);
    let mut c = Conn::nobody(&server.socket);
    let v = c.ask(&json!({"op": "mkdir", "path": made}));
    assert_eq!(refusal(&v), ("denied", None), "{v}");
    assert!(!made.exists());
}

/// A trailing `/` follows a final symlink even with `nofollow`, as
/// `lstat("link/")` does (`ls -ld link/`).
#[test]
fn a_trailing_slash_follows_a_final_symlink_even_with_nofollow() {
    let Some(t) =
        Tree::start(|d| json!([{"name": "g", "paths": [format!("{d}/g/**")], "modes": ["stat"]}]))
    else {
        return;
    };
    fs::create_dir_all(t.path("g/real")).unwrap();
    symlink(t.path("g/real"), t.path("g/link")).unwrap();
    let slashed = format!("{}/", t.path("g/link").display());
    let mut c = t.nobody();
    let v = c.ask(&json!({"op": "stat", "path": slashed, "nofollow": true}));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["stat"]["mode"].as_u64().unwrap() & 0o170000,
        0o040000,
        "{v}"
    );
    let v = c.ask(&json!({"op": "xattr", "path": slashed, "nofollow": true}));
    assert_eq!(v["ok"], true, "{v}");
}
