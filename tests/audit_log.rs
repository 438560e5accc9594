//! The audit log on a full disk (SPEC §6): every line in it is one whole
//! record, no grant is sent without its record, and grants resume by
//! themselves once there is room. Needs root for a small tmpfs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{Value, json};

/// Sends `count` requests at once, every third a `check`, cycling over
/// `files`; returns each answer as (ok, error code, an fd came or, for a
/// check, none was due).
fn burst(s: &TestServer, files: &[PathBuf], count: usize) -> Vec<(bool, String, bool)> {
    let mut c = s.client();
    let op = |i: usize| if i % 3 == 2 { "check" } else { "open" };
    let lines: String = (0..count)
        .map(|i| format!("{}\n", json!({"op": op(i), "path": files[i % files.len()]})))
        .collect();
    c.send_raw(lines.as_bytes()).unwrap();
    (0..count)
        .map(|i| {
            let (v, fd) = receive(&mut c);
            let fd_as_due = fd.is_some() == (op(i) == "open" && v["ok"] == true);
            (v["ok"] == true, code(&v).to_owned(), fd_as_due)
        })
        .collect()
}

/// Every line of the log, each of which must be one whole JSON record.
fn whole_records(path: &Path) -> Vec<Value> {
    let text = fs::read(path).unwrap();
    assert!(
        text.is_empty() || text.ends_with(b"\n"),
        "the log ends in a torn record"
    );
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_slice(l)
                .unwrap_or_else(|e| panic!("torn line {:?}: {e}", String::from_utf8_lossy(l)));
            assert!(v["ts"].is_string() && v["uid"].is_number(), "{v}");
            v
        })
        .collect()
}

fn grants(records: &[Value]) -> usize {
    records.iter().filter(|r| r["ok"] == true).count()
}

#[test]
fn a_full_disk_never_tears_a_record_nor_lets_an_unrecorded_grant_out() {
    let dir = scratch();
    let Some(disk) = common::SmallDisk::in_or_skip(dir.path()) else {
        return;
    };
    let files: Vec<PathBuf> = (0..10)
        .map(|i| {
            let p = dir.path().join(format!("f{i}.txt"));
            fs::write(&p, "x").unwrap();
            p
        })
        .collect();
    // The server writes to the path TestServer reads: a link onto the disk.
    let log = disk.0.join("audit.log");
    std::os::unix::fs::symlink(&log, dir.path().join("audit.log")).unwrap();
    // Leave two pages free.
    let filler = disk.0.join("filler");
    fs::write(&filler, vec![0u8; 14 * 4096]).unwrap();
    let d = glob(dir.path());
    let policy = json!({"rules": [{"name": "all", "paths": [format!("{d}/*.txt")]}]}).to_string();
    let mut s = TestServer::start_in(dir, &policy, &["--workers", "1"]);
    // Unmounted once the server is gone, so its directory can go too.
    s.hold(disk);

    let answers = burst(&s, &files, 400);
    let granted = answers.iter().filter(|a| a.0).count();
    let refused: Vec<_> = answers.iter().filter(|a| !a.0).collect();
    assert!(
        refused.iter().all(|a| a.1 == "io_error" && a.2),
        "only io_error, with no fd: {refused:?}"
    );
    assert!(!refused.is_empty(), "the disk filled up");
    assert!(
        answers.iter().all(|a| a.2),
        "an fd for each granted open only"
    );
    let records = whole_records(&log);
    assert_eq!(
        grants(&records),
        granted,
        "one grant record per grant sent, none for a refused one"
    );

    // Room again: grants resume, no restart.
    fs::remove_file(&filler).unwrap();
    let answers = burst(&s, &files, 50);
    assert!(answers.iter().all(|a| a.0 && a.2), "{answers:?}");
    let records = whole_records(&log);
    assert_eq!(grants(&records), granted + 50);
    assert!(
        s.stderr_text().contains("audit log write failed"),
        "{}",
        s.stderr_text()
    );
}

/// One owner story (README "Audit log"): the server alone creates the log,
/// `0640` in its own group (or `--socket-group`), and the shipped
/// logrotate configuration, run for real, leaves it that way: it moves the
/// log and the server, told by SIGHUP, creates the next one itself, so a
/// rotation never makes the records readable by the clients' group.
#[test]
fn rotation_with_the_shipped_logrotate_config_keeps_the_logs_owner_and_mode() {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        eprintln!("skipped: logrotate of a root server's log needs root");
        return;
    }
    if Command::new("logrotate").arg("--version").output().is_err() {
        eprintln!("skipped: logrotate is not installed (make test-tools installs it as root)");
        return;
    }
    let dir = scratch();
    fs::write(dir.path().join("a.txt"), "a").unwrap();
    let d = glob(dir.path());
    let policy = json!({"rules": [{"name": "all", "paths": [format!("{d}/*.txt")]}]}).to_string();
    let s = TestServer::start_in(dir, &policy, &[]);
    let file = s.path("a.txt");
    assert_eq!(s.ask(&open_line(&file, None)).0["ok"], true);
    let before = fs::metadata(&s.audit).unwrap();
    assert_eq!(before.mode() & 0o7777, 0o640);

    // The shipped configuration, on this server's log and pid.
    let shipped = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/logrotate/fdopen"),
    )
    .unwrap();
    let start = shipped.find("postrotate").unwrap();
    let end = shipped.find("endscript").unwrap();
    let config = format!(
        "{}postrotate\n        kill -HUP {}\n    {}",
        &shipped[..start],
        s.pid(),
        &shipped[end..]
    )
    .replace("/var/log/fdopen/audit.log", s.audit.to_str().unwrap());
    let config_path = s.path("logrotate.conf");
    fs::write(&config_path, config).unwrap();
    let out = Command::new("logrotate")
        .arg("--force")
        .arg("--state")
        .arg(s.path("logrotate.state"))
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    s.wait_notify("RELOADING=1");
    s.wait_notify("READY=1");

    assert_eq!(s.ask(&open_line(&file, None)).0["ok"], true);
    let after = fs::metadata(&s.audit).unwrap();
    assert_ne!(after.ino(), before.ino(), "rotated");
    assert_eq!(
        (after.mode() & 0o7777, after.uid(), after.gid()),
        (before.mode() & 0o7777, before.uid(), before.gid()),
        "the new log is made as the first one was"
    );
    assert_eq!(s.audit_lines().len(), 1, "the new request's record");
    let rotated = fs::read_to_string(s.path("audit.log.1")).unwrap();
    assert_eq!(rotated.lines().count(), 1);
}

#[test]
fn a_tree_change_whose_record_cannot_be_written_is_not_made() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let dir = scratch();
    let disk = match SmallDisk::mount(&dir.path().join("disk"), "16k") {
        Ok(disk) => disk,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let log = disk.0.join("audit.log");
    std::os::unix::fs::symlink(&log, dir.path().join("audit.log")).unwrap();
    let victim = dir.path().join("victim.txt");
    fs::write(&victim, "x").unwrap();
    let d = glob(dir.path());
    let policy = json!({"rules": [{"name": "all", "paths": [format!("{d}/*")],
                                   "modes": ["delete", "mkdir"]}]})
    .to_string();
    let mut s = TestServer::start_in(dir, &policy, &[]);
    // Not a byte left for a record.
    let filler = disk.0.join("filler");
    let _ = fs::write(&filler, vec![0u8; 64 * 1024]);
    s.hold(disk);
    let mut c = s.client();
    let (v, _) = ask(&mut c, &json!({"op": "unlink", "path": victim}).to_string());
    assert_eq!(code(&v), "io_error", "{v}");
    assert!(victim.exists(), "removed without a record");
    let made = s.path("made");
    let (v, _) = ask(&mut c, &json!({"op": "mkdir", "path": made}).to_string());
    assert_eq!(code(&v), "io_error", "{v}");
    assert!(!made.exists(), "made without a record");
    // Room again: the change is recorded, then made.
    fs::remove_file(&filler).unwrap();
    let (v, _) = ask(&mut c, &json!({"op": "unlink", "path": victim}).to_string());
    assert_eq!(v["ok"], true, "{v}");
    assert!(!victim.exists());
    let records = whole_records(&log);
    assert!(
        records
            .iter()
            .any(|r| r["op"] == "unlink" && r["ok"] == true),
        "{records:?}"
    );
}
