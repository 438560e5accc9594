//! The policy against a real filesystem: symlinks cannot escape, globs
//! mean what the spec says, deny wins, and identity comes from the kernel.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;

use common::*;
use serde_json::json;

/// `allowed/` is granted, `forbidden/` is not.
fn symlink_server() -> TestServer {
    let dir = scratch();
    fs::create_dir_all(dir.path().join("allowed/sub")).unwrap();
    fs::create_dir(dir.path().join("forbidden")).unwrap();
    fs::write(dir.path().join("allowed/ok.txt"), "ok\n").unwrap();
    fs::write(dir.path().join("forbidden/secret.txt"), "secret\n").unwrap();
    let d = glob(dir.path());
    let policy =
        json!({"rules": [{"name": "allowed", "paths": [format!("{d}/allowed/**")]}]}).to_string();
    TestServer::start_in(dir, &policy, &[])
}

#[test]
fn absolute_and_relative_symlinks_out_of_the_allowed_tree_are_denied() {
    let s = symlink_server();
    symlink(s.path("forbidden/secret.txt"), s.path("allowed/abs")).unwrap();
    symlink("../forbidden/secret.txt", s.path("allowed/rel")).unwrap();
    symlink("/etc/passwd", s.path("allowed/etc")).unwrap();
    symlink(s.path("forbidden"), s.path("allowed/dirlink")).unwrap();
    for link in [
        "allowed/abs",
        "allowed/rel",
        "allowed/etc",
        "allowed/dirlink/secret.txt",
    ] {
        let (v, fd) = s.ask(&open_line(&s.path(link), None));
        assert_eq!(code(&v), "denied", "{link}: {v}");
        assert!(fd.is_none());
        // The message does not say where the link leads.
        assert!(
            !v.to_string().contains("forbidden") && !v.to_string().contains("passwd"),
            "{v}"
        );
    }
}

#[test]
fn symlinks_within_the_allowed_tree_are_followed_and_report_the_real_path() {
    let s = symlink_server();
    symlink("ok.txt", s.path("allowed/alias")).unwrap();
    symlink(s.path("allowed"), s.path("allowed/sub/up")).unwrap();
    for link in ["allowed/alias", "allowed/sub/up/ok.txt"] {
        let (v, fd) = s.ask(&open_line(&s.path(link), None));
        assert_eq!(v["ok"], true, "{link}: {v}");
        assert_eq!(v["path"], s.path("allowed/ok.txt").to_str().unwrap());
        let ino = fs::metadata(s.path("allowed/ok.txt")).unwrap().ino();
        assert_eq!(fs::File::from(fd.unwrap()).metadata().unwrap().ino(), ino);
    }
    let audit = s.audit_lines();
    assert_eq!(
        audit[0]["real_path"],
        s.path("allowed/ok.txt").to_str().unwrap()
    );
}

#[test]
fn a_symlink_out_of_the_grant_is_denied_whether_or_not_its_target_exists() {
    let s = symlink_server();
    // Existing and missing targets outside the grant, by absolute and
    // relative links, through a link to a directory, and a chain of links.
    symlink(s.path("forbidden/secret.txt"), s.path("allowed/there")).unwrap();
    symlink(s.path("forbidden/nothing.txt"), s.path("allowed/missing")).unwrap();
    symlink("../forbidden/nothing.txt", s.path("allowed/rel-missing")).unwrap();
    symlink(s.path("forbidden"), s.path("allowed/dir")).unwrap();
    symlink(s.path("no-such-dir/x"), s.path("allowed/deep-missing")).unwrap();
    symlink("missing", s.path("allowed/chain")).unwrap();
    for link in [
        "allowed/there",
        "allowed/missing",
        "allowed/rel-missing",
        "allowed/dir/secret.txt",
        "allowed/dir/nothing.txt",
        "allowed/dir/no/such/depth",
        "allowed/deep-missing",
        "allowed/chain",
    ] {
        for op in ["open", "check"] {
            let line = json!({"op": op, "path": s.path(link)}).to_string();
            let (v, fd) = s.ask(&line);
            assert_eq!(code(&v), "denied", "{op} {link}: {v}");
            assert!(fd.is_none());
        }
    }
}

#[test]
fn a_missing_file_the_client_may_see_is_not_found_even_through_a_symlink() {
    let s = symlink_server();
    symlink("nothing.txt", s.path("allowed/to-missing")).unwrap();
    symlink(s.path("allowed/sub"), s.path("allowed/sublink")).unwrap();
    for path in [
        "allowed/nothing.txt",
        "allowed/to-missing",
        "allowed/sublink/nothing.txt",
        "allowed/no-dir/nothing.txt",
    ] {
        let (v, _) = s.ask(&open_line(&s.path(path), None));
        assert_eq!(code(&v), "not_found", "{path}: {v}");
    }
}

#[test]
fn a_grant_through_a_symlink_names_the_rule_that_granted_the_real_path() {
    let dir = scratch();
    fs::create_dir_all(dir.path().join("links")).unwrap();
    fs::create_dir_all(dir.path().join("data")).unwrap();
    fs::write(dir.path().join("data/f.txt"), "f").unwrap();
    symlink(dir.path().join("data/f.txt"), dir.path().join("links/f")).unwrap();
    let d = glob(dir.path());
    let policy = json!({"rules": [
        {"name": "links", "paths": [format!("{d}/links/*")]},
        {"name": "data", "paths": [format!("{d}/data/*")]}
    ]})
    .to_string();
    let s = TestServer::start_in(dir, &policy, &[]);
    let (v, fd) = s.ask(&open_line(&s.path("links/f"), None));
    assert_eq!(v["ok"], true, "{v}");
    assert!(fd.is_some());
    assert_eq!(v["rule"], "data", "{v}");
    assert_eq!(s.audit_lines()[0]["rule"], "data");
}

#[test]
fn a_trailing_slash_asks_for_a_directory() {
    let s = symlink_server();
    let file = s.path("allowed/ok.txt");
    for suffix in ["/", "/.", "/./"] {
        let path = format!("{}{suffix}", file.display());
        let (v, fd) = s.ask(&json!({"op": "open", "path": path}).to_string());
        assert_eq!(code(&v), "not_regular", "{path}: {v}");
        assert!(fd.is_none());
    }
    let (v, _) = s.ask(
        &json!({"op": "open", "path": format!("{}/nothing/", s.path("allowed").display())})
            .to_string(),
    );
    assert_eq!(code(&v), "not_found", "{v}");
}

#[test]
fn check_decides_on_the_handle_and_never_opens_the_file() {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let s = symlink_server();
    let file = s.path("allowed/ok.txt");
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
    inotify
        .add_watch(&file, AddWatchFlags::IN_ALL_EVENTS)
        .unwrap();
    let (v, fd) = s.ask(&json!({"op": "check", "path": file}).to_string());
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["fd"], false);
    assert!(fd.is_none());
    // The answer came after the decision: any event would be queued now.
    match inotify.read_events() {
        Err(nix::errno::Errno::EAGAIN) => {}
        other => panic!("check touched the file: {other:?}"),
    }
    // The same watch does see an open, so the test can fail.
    let (v, fd) = s.ask(&open_line(&file, None));
    assert_eq!(v["ok"], true, "{v}");
    drop(fd);
    let events = inotify.read_events().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.mask.contains(AddWatchFlags::IN_OPEN)),
        "{events:?}"
    );
}

#[test]
fn non_utf8_paths_travel_as_base64_in_requests_responses_and_audit() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let s = symlink_server();
    let mut raw = s.path("allowed").into_os_string().into_vec();
    raw.extend_from_slice(b"/caf\xe9.txt");
    let name = Path::new(OsStr::from_bytes(&raw));
    fs::write(name, "bytes").unwrap();
    // A link whose own name is UTF-8, so the real path differs from it.
    symlink(name, s.path("allowed/utf8-link")).unwrap();
    let b64 = |bytes: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let mut c = s.client();
    let (v, fd) = ask(
        &mut c,
        &json!({"op": "open", "path_b64": b64(&raw)}).to_string(),
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["path_b64"], b64(&raw));
    assert_eq!(
        v["path"],
        String::from_utf8_lossy(&raw).into_owned(),
        "a lossy text beside the exact bytes"
    );
    let mut text = String::new();
    use std::io::Read;
    fs::File::from(fd.unwrap())
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "bytes");
    // The library sends such paths as path_b64 by itself.
    let grant = c.check(name, fdopen::Mode::Read).unwrap();
    assert_eq!(grant.path_b64.as_deref(), Some(b64(&raw).as_str()));
    let (v, _) = ask(&mut c, &open_line(&s.path("allowed/utf8-link"), None));
    assert_eq!(v["path_b64"], b64(&raw), "{v}");
    let audit = s.audit_lines();
    assert_eq!(audit[0]["path_b64"], b64(&raw));
    assert_eq!(audit[2]["real_path_b64"], b64(&raw), "{}", audit[2]);
    assert!(audit[2].get("path_b64").is_none(), "{}", audit[2]);
    // Two names that differ only in bytes the lossy text hides differ in
    // the record.
    let mut other = s.path("allowed").into_os_string().into_vec();
    other.extend_from_slice(b"/caf\xe8.txt");
    let (v, _) = ask(
        &mut c,
        &json!({"op": "check", "path_b64": b64(&other)}).to_string(),
    );
    assert_eq!(code(&v), "not_found");
    let audit = s.audit_lines();
    assert_eq!(audit[3]["path"], audit[0]["path"]);
    assert_ne!(audit[3]["path_b64"], audit[0]["path_b64"]);
}

#[test]
fn magic_links_never_reach_the_servers_own_descriptors() {
    let dir = scratch();
    let policy = json!({"rules": [{"name": "all", "paths": ["/**"]}]}).to_string();
    let s = TestServer::start_in(dir, &policy, &[]);
    for fd in 0..8 {
        let (v, got) =
            s.ask(&json!({"op": "open", "path": format!("/proc/self/fd/{fd}")}).to_string());
        assert!(got.is_none(), "fd {fd}: {v}");
        assert_ne!(v["ok"], true, "fd {fd}: {v}");
    }
    symlink("/proc/self/fd/3", s.path("magic")).unwrap();
    let (v, got) = s.ask(&open_line(&s.path("magic"), None));
    assert!(got.is_none() && v["ok"] == false, "{v}");
}

#[test]
fn unknown_paths_are_denied_before_the_filesystem_is_looked_at() {
    // Same answer whether or not the file exists: nothing leaks.
    let s = symlink_server();
    let (exists, _) = s.ask(&open_line(&s.path("forbidden/secret.txt"), None));
    let (missing, _) = s.ask(&open_line(&s.path("forbidden/nope.txt"), None));
    assert_eq!(exists, missing);
    assert_eq!(code(&exists), "denied");
}

#[test]
fn star_does_not_cross_slash_but_double_star_does() {
    let dir = scratch();
    for p in [
        "one/a.log",
        "one/deep/b.log",
        "two/a.log",
        "two/deep/er/b.log",
    ] {
        let p = dir.path().join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, "x").unwrap();
    }
    let d = glob(dir.path());
    let policy = json!({"rules": [
        {"name": "star", "paths": [format!("{d}/one/*.log")]},
        {"name": "globstar", "paths": [format!("{d}/two/**/*.log")]}
    ]})
    .to_string();
    let s = TestServer::start_in(dir, &policy, &[]);
    for (p, want) in [
        ("one/a.log", Some("star")),
        ("one/deep/b.log", None),
        ("two/a.log", Some("globstar")),
        ("two/deep/er/b.log", Some("globstar")),
    ] {
        let (v, _) = s.ask(&open_line(&s.path(p), None));
        match want {
            Some(rule) => assert_eq!(v["rule"], rule, "{p}: {v}"),
            None => assert_eq!(code(&v), "denied", "{p}: {v}"),
        }
    }
}

#[test]
fn deny_overrides_allow_in_either_file_order() {
    let dir = scratch();
    fs::create_dir(dir.path().join("policy.d")).unwrap();
    fs::write(dir.path().join("a.key"), "k").unwrap();
    fs::write(dir.path().join("a.txt"), "t").unwrap();
    let d = glob(dir.path());
    // Deny in the first file, allow in the second.
    fs::write(
        dir.path().join("policy.d/10-deny.json"),
        json!({"rules": [{"name": "no-keys", "effect": "deny", "paths": ["/**/*.key"]}]})
            .to_string(),
    )
    .unwrap();
    fs::write(
        dir.path().join("policy.d/20-allow.json"),
        json!({"rules": [{"name": "all", "paths": [format!("{d}/*")],
            "modes": ["read", "write", "readwrite", "append"]}]})
        .to_string(),
    )
    .unwrap();
    fs::write(dir.path().join("policy.d/ignored.txt"), "not json").unwrap();
    let socket = dir.path().join("s.sock");
    let stderr = dir.path().join("stderr");
    let args: Vec<String> = [
        "serve",
        "--socket",
        socket.to_str().unwrap(),
        "--policy",
        dir.path().join("policy.d").to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let mut child = spawn_ready(dir.path(), SERVER, &args, &stderr);
    let mut c = fdopen::Client::connect(&socket).unwrap();
    // A deny rule without "modes" denies every mode (SPEC v2 §5).
    for mode in fdopen::Mode::ALL {
        assert_eq!(c.check(dir.path().join("a.txt"), mode).unwrap().rule, "all");
        let e = c.open(dir.path().join("a.key"), mode).unwrap_err();
        assert_eq!(e.to_string(), "denied: denied by rule no-keys", "{mode}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Runs `fdopen-client check` as another uid/gid.

#[test]
fn user_and_group_rules_match_kernel_credentials() {
    if !is_root() {
        eprintln!("skipped: needs root to run clients as other uids");
        return;
    }
    let dir = scratch();
    fs::write(dir.path().join("u.txt"), "u").unwrap();
    fs::write(dir.path().join("g.txt"), "g").unwrap();
    let d = glob(dir.path());
    let policy = json!({"rules": [
        {"name": "for-uid", "paths": [format!("{d}/u.txt")], "users": [4242]},
        {"name": "for-gid", "paths": [format!("{d}/g.txt")], "groups": [4343]}
    ]})
    .to_string();
    let s = TestServer::start_in(dir, &policy, &["--socket-mode", "0666"]);
    let ok = |o: &std::process::Output| o.status.code() == Some(0);
    assert!(ok(&check_as(&s.socket, 4242, 100, &[], &s.path("u.txt"))));
    assert!(!ok(&check_as(&s.socket, 4243, 100, &[], &s.path("u.txt"))));
    // Root is not special to the policy.
    assert!(!ok(&check_as(&s.socket, 0, 0, &[], &s.path("u.txt"))));
    // Group by primary gid, then by supplementary group.
    assert!(ok(&check_as(&s.socket, 5000, 4343, &[], &s.path("g.txt"))));
    assert!(ok(&check_as(
        &s.socket,
        5000,
        100,
        &[4343],
        &s.path("g.txt")
    )));
    let denied = check_as(&s.socket, 5000, 100, &[101], &s.path("g.txt"));
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("denied"));
    // The audit log shows the uid the kernel reported.
    let uids: Vec<i64> = s
        .audit_lines()
        .iter()
        .map(|l| l["uid"].as_i64().unwrap())
        .collect();
    assert_eq!(&uids[..3], &[4242, 4243, 0]);
}

#[test]
fn nothing_in_a_request_changes_who_the_client_is() {
    let dir = scratch();
    fs::write(dir.path().join("f"), "f").unwrap();
    let d = glob(dir.path());
    let other = nix::unistd::getuid().as_raw() + 1;
    let policy =
        json!({"rules": [{"name": "other", "paths": [format!("{d}/f")], "users": [other]}]})
            .to_string();
    let s = TestServer::start_in(dir, &policy, &[]);
    let path = s.path("f");
    let mut c = s.client();
    for line in [
        json!({"op": "open", "path": path, "uid": other}),
        json!({"op": "open", "path": path, "user": other}),
        json!({"op": "open", "path": path, "credentials": {"uid": other}}),
    ] {
        let (v, fd) = ask(&mut c, &line.to_string());
        assert_eq!(code(&v), "bad_request", "{line}");
        assert!(fd.is_none());
    }
    let (v, _) = ask(&mut c, &open_line(&path, None));
    assert_eq!(code(&v), "denied");
}
