//! A server over a scratch tree, for the tree operations (SPEC §3.6):
//! the tree is a directory in the server's own scratch directory, and
//! the policy is written over the tree's glob.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::{TestServer, glob, scratch};

/// Starts a server, reachable by every uid, whose directory holds the
/// tree `name/` (permissions `mode`) under the rules `rules` gives for
/// the tree's glob; `extra` are more server arguments. Returns the
/// server and the tree's path.
pub fn serve_tree(
    name: &str,
    mode: u32,
    rules: impl FnOnce(&str) -> Value,
    extra: &[&str],
) -> (TestServer, PathBuf) {
    let dir = scratch();
    let root = dir.path().join(name);
    fs::create_dir(&root).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(mode)).unwrap();
    let policy = json!({ "rules": rules(&glob(&root)) }).to_string();
    let mut args = vec!["--socket-mode", "0666"];
    args.extend_from_slice(extra);
    (TestServer::start_in(dir, &policy, &args), root)
}

/// The rule `tree` granting every tree op, reads, writes and creation
/// below the tree `d` (a glob), and `top` letting the tree itself be
/// stat'ed and listed.
pub fn grant_below(d: &str) -> [Value; 2] {
    [
        json!({"name": "tree", "paths": [format!("{d}/**")],
               "modes": ["read", "write", "stat", "list", "mkdir", "delete"], "create": true}),
        json!({"name": "top", "paths": [d], "modes": ["stat", "list"]}),
    ]
}

/// A scratch directory on another filesystem than `/tmp` (`/dev/shm`), for
/// cross-device renames; `None`, the reason printed, where there is none.
pub fn scratch_on_another_filesystem() -> Option<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("fdopen-test")
        .tempdir_in("/dev/shm");
    if dir.is_err() {
        eprintln!("skipped: no /dev/shm");
    }
    dir.ok()
}
