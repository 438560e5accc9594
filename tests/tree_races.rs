//! Tree operations under races (SPEC §3.6): a source swapped after the
//! server checked it, and a parent directory swapped for a symlink while
//! the server resolves it. Each runs many rounds, bounded in time; one
//! lost round is a hole.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::as_user::Conn;
use common::*;
use serde_json::{Value, json};

const ROUNDS: usize = 2000;
const LIMIT: Duration = Duration::from_secs(8);

/// A root-only tree and a server granting `rules` (given the tree's glob).
fn start(rules: impl Fn(&str) -> Value) -> Option<(TestServer, std::path::PathBuf)> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    let (server, root) = common::tree::serve_tree("t", 0o700, rules, &[]);
    Some((server, root))
}

/// Runs `racer` on a thread until the returned guard is dropped.
struct Racer(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Racer {
    fn run(mut step: impl FnMut() + Send + 'static) -> Racer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                step();
            }
        });
        Racer(stop, Some(handle))
    }
}

impl Drop for Racer {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            h.join().unwrap();
        }
    }
}

#[test]
fn a_source_swapped_after_the_check_never_arrives() {
    let Some((s, t)) = start(|d| {
        json!([{"name": "in", "paths": [format!("{d}/in/*")], "modes": ["read", "delete"]},
               {"name": "out", "paths": [format!("{d}/out/*")], "modes": ["write"], "create": true}])
    }) else {
        return;
    };
    for sub in ["in", "out", "hidden"] {
        fs::create_dir(t.join(sub)).unwrap();
    }
    fs::write(t.join("hidden/secret"), "secret").unwrap();
    let src = t.join("in/src");
    fs::write(&src, "ok").unwrap();
    // The name flips between the checked file and a symlink to a secret.
    let (racer_in, secret) = (t.join("in"), t.join("hidden/secret"));
    let racer = Racer::run(move || {
        let _ = fs::remove_file(racer_in.join("s.tmp"));
        symlink(&secret, racer_in.join("s.tmp")).unwrap();
        fs::rename(racer_in.join("s.tmp"), racer_in.join("src")).unwrap();
        fs::write(racer_in.join("r.tmp"), "ok").unwrap();
        fs::rename(racer_in.join("r.tmp"), racer_in.join("src")).unwrap();
    });
    let mut c = Conn::nobody(&s.socket);
    let dst = t.join("out/dst");
    let start = Instant::now();
    let (mut moved, mut rounds) = (0, 0);
    while rounds < ROUNDS && start.elapsed() < LIMIT {
        rounds += 1;
        let v = c.ask(&json!({"op": "rename", "path": src, "to": dst}));
        if v["ok"] == true {
            moved += 1;
            let m = fs::symlink_metadata(&dst).unwrap();
            assert!(
                m.file_type().is_file(),
                "a symlink arrived at round {rounds}"
            );
            assert_eq!(fs::read_to_string(&dst).unwrap(), "ok");
            fs::remove_file(&dst).unwrap();
        } else {
            assert!(!dst.exists(), "{v}");
        }
    }
    drop(racer);
    assert!(moved > 0, "no rename got through in {rounds} rounds");
    assert_eq!(
        fs::read_to_string(t.join("hidden/secret")).unwrap(),
        "secret"
    );
}

#[test]
fn a_parent_swapped_for_a_symlink_never_redirects_a_change() {
    let Some((s, t)) = start(
        |d| json!([{"name": "work", "paths": [format!("{d}/work/**")], "modes": ["delete", "stat"]}]),
    ) else {
        return;
    };
    fs::create_dir_all(t.join("work")).unwrap();
    fs::create_dir_all(t.join("keep")).unwrap();
    fs::write(t.join("keep/victim"), "keep").unwrap();
    let work = t.join("work");
    let keep = t.join("keep");
    // work/d flips between a real directory and a symlink to keep/, in
    // one step each time (RENAME_EXCHANGE with work/d.alt).
    fs::create_dir(work.join("d")).unwrap();
    symlink(&keep, work.join("d.alt")).unwrap();
    let mut d_is_dir = true;
    let racer = Racer::run(move || {
        exchange(&work.join("d.alt"), &work.join("d"));
        d_is_dir = !d_is_dir;
        // Whichever name holds the real directory gets its file back.
        let real = if d_is_dir { "d" } else { "d.alt" };
        let _ = fs::write(work.join(real).join("victim"), "mine");
    });
    let mut c = Conn::nobody(&s.socket);
    let target = t.join("work/d/victim");
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < ROUNDS && start.elapsed() < LIMIT {
        rounds += 1;
        let op = if rounds % 2 == 0 { "unlink" } else { "stat" };
        let v = c.ask(&json!({"op": op, "path": target}));
        if op == "stat" && v["ok"] == true {
            assert!(v["path"].as_str().unwrap().contains("/work/"), "{v}");
        }
        assert!(
            t.join("keep/victim").exists(),
            "removed through a swapped parent at round {rounds}: {v}"
        );
    }
    drop(racer);
    assert_eq!(fs::read_to_string(t.join("keep/victim")).unwrap(), "keep");
}

/// Swaps two names in one step (`RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        a,
        nix::fcntl::AT_FDCWD,
        b,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .unwrap();
}
