//! Policy-file hygiene (SPEC §5): a policy that anyone but root or the
//! server's uid could change is refused at start, on reload and by check,
//! with the path, owner, mode and fix; `--insecure-policy-permissions`
//! turns the refusal into a warning.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

const POLICY: &str = r#"{"rules":[{"name":"r","paths":["/nowhere/*"]}]}"#;

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `serve` that must exit by itself (it refuses), with its stderr.
fn serve_refused(dir: &Path, policy: &Path) -> String {
    let out = Command::new(SERVER)
        .arg("serve")
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .arg("--policy")
        .arg(policy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "serve must refuse: {err}");
    err
}

fn check_output(policy: &Path) -> (Option<i32>, String) {
    let out = Command::new(SERVER)
        .args(["check", "--policy"])
        .arg(policy)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Refused by serve and by check, naming `culprit`, its mode and the fix.
fn assert_refused(dir: &Path, policy: &Path, culprit: &Path, mode: &str, fix: &str) {
    let err = serve_refused(dir, policy);
    let culprit = culprit.display().to_string();
    for needle in [culprit.as_str(), mode, fix, "owner uid"] {
        assert!(err.contains(needle), "serve: {needle:?} missing in {err}");
    }
    let (code, err) = check_output(policy);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&culprit) && err.contains(fix), "check: {err}");
}

#[test]
fn a_group_or_world_writable_policy_file_is_refused() {
    let dir = scratch();
    let policy = dir.path().join("p.json");
    fs::write(&policy, POLICY).unwrap();
    for (mode, text) in [(0o664, "0664"), (0o646, "0646")] {
        chmod(&policy, mode);
        assert_refused(dir.path(), &policy, &policy, text, "chmod go-w");
    }
}

#[test]
fn a_writable_directory_above_it_is_refused_unless_sticky() {
    let dir = scratch();
    let open = dir.path().join("open");
    fs::create_dir(&open).unwrap();
    let policy = open.join("p.json");
    fs::write(&policy, POLICY).unwrap();
    chmod(&open, 0o777);
    assert_refused(dir.path(), &policy, &open, "0777", "chmod go-w");
    // Sticky, as /tmp is: no one else can replace what lies beneath.
    chmod(&open, 0o1777);
    let (code, err) = check_output(&policy);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn every_json_of_a_policy_directory_and_the_directory_itself_are_checked() {
    let dir = scratch();
    let policy_d = dir.path().join("policy.d");
    fs::create_dir(&policy_d).unwrap();
    fs::write(policy_d.join("10-a.json"), POLICY).unwrap();
    fs::write(policy_d.join("20-b.json"), r#"{"rules":[]}"#).unwrap();
    chmod(&policy_d.join("20-b.json"), 0o666);
    assert_refused(
        dir.path(),
        &policy_d,
        &policy_d.join("20-b.json"),
        "0666",
        "chmod go-w",
    );
    chmod(&policy_d.join("20-b.json"), 0o644);
    // The policy directory gets no sticky pass: anyone could add a *.json.
    chmod(&policy_d, 0o1777);
    assert_refused(dir.path(), &policy_d, &policy_d, "1777", "chmod go-w");
}

#[test]
fn the_real_path_behind_a_symlink_is_checked() {
    let dir = scratch();
    let open = dir.path().join("open");
    fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let real = open.join("p.json");
    fs::write(&real, POLICY).unwrap();
    let link = dir.path().join("p.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert_refused(dir.path(), &link, &open, "0777", "chmod go-w");
}

#[test]
fn a_policy_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: giving a file to another user needs root");
        return;
    }
    let dir = scratch();
    let policy = dir.path().join("p.json");
    fs::write(&policy, POLICY).unwrap();
    nix::unistd::chown(&policy, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    assert_refused(dir.path(), &policy, &policy, "0644", "chown root");
    let mut sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    nix::unistd::chown(&sub, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    sub.push("p.json");
    fs::write(&sub, POLICY).unwrap();
    assert_refused(
        dir.path(),
        &sub,
        sub.parent().unwrap(),
        "0755",
        "chown root",
    );
}

#[test]
fn a_reload_keeps_the_old_policy_when_the_new_one_is_exposed() {
    let dir = scratch();
    fs::write(dir.path().join("a.txt"), "a").unwrap();
    let d = glob(dir.path());
    let s = TestServer::start_in(
        dir,
        &serde_json::json!({"rules": [{"name": "old", "paths": [format!("{d}/*.txt")]}]})
            .to_string(),
        &[],
    );
    let a = s.path("a.txt");
    assert_eq!(s.ask(&open_line(&a, None)).0["rule"], "old");
    fs::write(
        &s.policy,
        serde_json::json!({"rules": [{"name": "new", "paths": [format!("{d}/*.txt")]}]})
            .to_string(),
    )
    .unwrap();
    chmod(&s.policy, 0o666);
    s.reload();
    assert_eq!(s.ask(&open_line(&a, None)).0["rule"], "old");
    let log = s.stderr_text();
    assert!(
        log.contains("0666") && log.contains("chmod go-w") && log.contains("previous policy"),
        "{log}"
    );
    chmod(&s.policy, 0o644);
    s.reload();
    assert_eq!(s.ask(&open_line(&a, None)).0["rule"], "new");
}

#[test]
fn the_insecure_flag_turns_the_refusal_into_a_warning() {
    let dir = scratch();
    let policy = dir.path().join("policy.json");
    fs::write(&policy, POLICY).unwrap();
    chmod(&policy, 0o666);
    let path = policy.clone();
    let s = TestServer::start_in(dir, POLICY, &["--insecure-policy-permissions"]);
    assert_eq!(path, s.policy);
    chmod(&s.policy, 0o666);
    s.reload();
    assert_eq!(s.ask(r#"{"op":"hello"}"#).0["ok"], true);
    let log = s.stderr_text();
    assert!(log.contains("insecure-policy-permissions"), "{log}");
    assert!(log.contains("reloaded policy"), "{log}");
}
