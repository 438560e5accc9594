//! The policy side of tree operations (SPEC §5): `explain --op` for the
//! tree modes, implied stat as explain shows it, and what `check` says of
//! tree rules.

mod common;

use std::fs;
use std::process::Command;

use common::*;
use serde_json::json;

fn policy_file(dir: &std::path::Path, rules: serde_json::Value) -> std::path::PathBuf {
    let file = dir.join("policy.json");
    fs::write(&file, json!({ "rules": rules }).to_string()).unwrap();
    file
}

#[test]
fn explain_op_decides_tree_modes_as_the_server_does() {
    let dir = scratch();
    let d = glob(dir.path());
    fs::create_dir_all(dir.path().join("srv/app/2026")).unwrap();
    fs::write(dir.path().join("srv/app/2026/a.log"), "").unwrap();
    fs::write(dir.path().join("srv/app/notes.txt"), "").unwrap();
    let policy = policy_file(
        dir.path(),
        json!([{"name": "logs", "paths": [format!("{d}/srv/app/**/*.log")], "modes": ["read", "delete"]},
               {"name": "no-2025", "effect": "deny", "paths": [format!("{d}/srv/app/2025/**")]}]),
    );
    let p = |rel: &str| dir.path().join(rel).to_str().unwrap().to_owned();
    // A directory on the way: implied stat.
    let (code, out) = explain(&policy, ["--path", &p("srv/app/2026"), "--op", "stat"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("implied"), "{out}");
    assert!(out.contains("decision: granted by rule logs"), "{out}");
    // A file there that no glob matches: denied; list never implied.
    let (code, out) = explain(&policy, ["--path", &p("srv/app/notes.txt"), "--op", "stat"]);
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = explain(&policy, ["--path", &p("srv/app/2026"), "--op", "list"]);
    assert_eq!(code, Some(1), "{out}");
    // The file the glob names: stat with its read, delete as listed.
    for op in ["stat", "delete"] {
        let (code, out) = explain(&policy, ["--path", &p("srv/app/2026/a.log"), "--op", op]);
        assert_eq!(code, Some(0), "{op}: {out}");
    }
    let (code, out) = explain(
        &policy,
        ["--path", &p("srv/app/2026/a.log"), "--op", "mkdir"],
    );
    assert_eq!(code, Some(1), "{out}");
    // A bare deny rule covers the tree modes.
    let (code, out) = explain(
        &policy,
        ["--path", &p("srv/app/2025/x.log"), "--op", "delete"],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no-2025"), "{out}");
    // A held op is no tree mode.
    let (code, _) = explain(&policy, ["--path", &p("srv"), "--op", "park"]);
    assert_eq!(code, Some(2));
}

fn check(policy: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(SERVER)
        .args(["check", "--policy"])
        .arg(policy)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn check_warns_about_tree_rules_and_refuses_a_rule_that_could_change_the_policy() {
    let dir = scratch();
    let d = glob(dir.path());
    let policy = policy_file(
        dir.path(),
        json!([{"name": "tmp-cleanup", "paths": ["/tmp/app/*"], "modes": ["delete"]},
               {"name": "v2-deny", "effect": "deny", "paths": ["/srv/secret/**"],
                "modes": ["read", "write", "readwrite", "append"]}]),
    );
    let (code, out) = check(&policy);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("sticky"), "{out}");
    assert!(out.contains("v3 modes"), "{out}");
    let policy = policy_file(
        dir.path(),
        json!([{"name": "too-much", "paths": [format!("{d}/*")], "modes": ["read", "delete"]}]),
    );
    let (code, out) = check(&policy);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("too-much") && out.contains("policy's own"),
        "{out}"
    );
}
