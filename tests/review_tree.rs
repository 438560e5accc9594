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
