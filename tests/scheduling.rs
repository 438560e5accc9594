//! How the server's threads stand with the CPU scheduler: its workers
//! weigh more than one client thread (`--worker-nice`), its other
//! threads do not.

mod common;

use std::fs;

use common::*;
use serde_json::json;

/// The niceness of each of `pid`'s threads, by thread name.
fn niceness_by_thread(pid: u32) -> Vec<(String, i64)> {
    let mut threads = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(name) = fs::read_to_string(task.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        let Ok(stat) = fs::read_to_string(task.join("stat")) else {
            continue;
        };
        // Fields after the name, which is in parentheses and may hold
        // spaces: state is the first, niceness the 17th.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let nice = after.split(' ').nth(16).unwrap().parse().unwrap();
        threads.push((name.trim().to_owned(), nice));
    }
    threads
}

/// A server with one worker that has answered a request: by then the
/// worker has set its niceness, which it does before anything else.
fn serving(extra: &[&str]) -> TestServer {
    let dir = scratch();
    let d = glob(dir.path());
    let policy = json!({"rules": [{"name": "all", "paths": [format!("{d}/**")]}]}).to_string();
    let mut args = vec!["--workers", "1"];
    args.extend_from_slice(extra);
    let server = TestServer::start_in(dir, &policy, &args);
    let mut client = server.client();
    client.hello().unwrap();
    server
}

fn workers_and_others(server: &TestServer) -> (Vec<i64>, Vec<(String, i64)>) {
    let (workers, others): (Vec<_>, Vec<_>) = niceness_by_thread(server.pid())
        .into_iter()
        .partition(|(name, _)| name.starts_with("fdopen-worker"));
    (workers.into_iter().map(|(_, nice)| nice).collect(), others)
}

#[test]
fn workers_are_niced_minus_5_by_default_and_no_other_thread_is() {
    if !is_root() {
        eprintln!("skipped: raising a thread's priority needs root (CAP_SYS_NICE)");
        return;
    }
    let server = serving(&[]);
    let (workers, others) = workers_and_others(&server);
    // --worker-nice is absolute, as nice values are; the server's other
    // threads keep the niceness it was started with: ours.
    assert_eq!(workers, vec![-5]);
    // SAFETY: getpriority has no preconditions; -1 is a valid niceness,
    // and this process is not reniced meanwhile.
    let ours = i64::from(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) });
    assert!(!others.is_empty());
    for (name, nice) in others {
        assert_eq!(nice, ours, "thread {name}");
    }
}

#[test]
fn worker_nice_sets_the_workers_niceness() {
    // Lowering a priority needs no privilege.
    let server = serving(&["--worker-nice", "7"]);
    assert_eq!(workers_and_others(&server).0, vec![7]);
    let server = serving(&["--worker-nice", "0"]);
    assert_eq!(workers_and_others(&server).0, vec![0]);
}

#[test]
fn worker_nice_out_of_range_is_a_usage_error() {
    let dir = scratch();
    let policy = dir.path().join("policy.json");
    fs::write(&policy, r#"{"rules":[]}"#).unwrap();
    for bad in ["-21", "20", "x"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fdopen-server"))
            .args(["serve", "--socket"])
            .arg(dir.path().join("s.sock"))
            .arg("--policy")
            .arg(&policy)
            .args(["--worker-nice", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--worker-nice {bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("worker-nice"));
    }
}
