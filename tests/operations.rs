//! What an admin relies on: reloads, log rotation, systemd, warnings,
//! completions and man pages, and a client in another language.

mod common;

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use serde_json::json;

fn policy_with_rule(dir: &std::path::Path, name: &str) -> String {
    let d = glob(dir);
    json!({"rules": [{"name": name, "paths": [format!("{d}/*.txt")]}]}).to_string()
}

/// A server whose policy has one rule, `name`, allowing its `a.txt`.
fn server_with_rule(name: &str) -> TestServer {
    let dir = scratch();
    fs::write(dir.path().join("a.txt"), "a").unwrap();
    let policy = policy_with_rule(dir.path(), name);
    TestServer::start_in(dir, &policy, &[])
}

#[test]
fn reload_under_load_never_fails_a_request() {
    let s = server_with_rule("v0");
    let stop = Arc::new(AtomicBool::new(false));
    let path = s.path("a.txt");
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (socket, path, stop) = (s.socket.clone(), path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rules = std::collections::BTreeSet::new();
                let mut c = fdopen::Client::connect(&socket).unwrap();
                let mut n = 0;
                // Bounded: stops when told, or after a generous count.
                while !stop.load(Ordering::Relaxed) && n < 2_000_000 {
                    let (_, grant) = c
                        .open_with_grant(&path, fdopen::Mode::Read)
                        .expect("no request fails during reloads");
                    rules.insert(grant.rule);
                    n += 1;
                }
                (n, rules)
            })
        })
        .collect();
    for round in 1..=30 {
        fs::write(
            &s.policy,
            policy_with_rule(s.dir.path(), &format!("v{round}")),
        )
        .unwrap();
        s.reload();
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    for w in workers {
        let (n, rules) = w.join().unwrap();
        assert!(n > 0);
        seen.extend(rules);
    }
    assert!(
        seen.contains("v30") || s.client().check(&path, fdopen::Mode::Read).unwrap().rule == "v30"
    );
    assert!(seen.len() > 1, "requests saw several policies: {seen:?}");
}

#[test]
fn a_broken_policy_on_reload_keeps_the_old_one_and_is_logged() {
    let s = server_with_rule("good");
    fs::write(
        &s.policy,
        "{\"rules\": [\n  {\"name\": \"bad\", \"paths\": [\"relative/*\"]}\n]}",
    )
    .unwrap();
    s.reload();
    let grant = s
        .client()
        .check(s.path("a.txt"), fdopen::Mode::Read)
        .unwrap();
    assert_eq!(grant.rule, "good");
    let log = s.stderr_text();
    assert!(
        log.contains(&format!("{}:2:3: rule \"bad\"", s.policy.display())),
        "{log}"
    );
    assert!(log.contains("previous policy stays in force"), "{log}");
    // A fixed policy is then picked up.
    fs::write(&s.policy, policy_with_rule(s.dir.path(), "fixed")).unwrap();
    s.reload();
    assert_eq!(
        s.client()
            .check(s.path("a.txt"), fdopen::Mode::Read)
            .unwrap()
            .rule,
        "fixed"
    );
}

#[test]
fn sighup_reopens_the_audit_log_for_logrotate() {
    let s = server_with_rule("r");
    let mut c = s.client();
    c.check(s.path("a.txt"), fdopen::Mode::Read).unwrap();
    let rotated = s.path("audit.log.1");
    fs::rename(&s.audit, &rotated).unwrap();
    s.reload();
    c.check(s.path("a.txt"), fdopen::Mode::Read).unwrap();
    c.check(s.path("a.txt"), fdopen::Mode::Read).unwrap();
    assert_eq!(fs::read_to_string(&rotated).unwrap().lines().count(), 1);
    assert_eq!(s.audit_lines().len(), 2);
}

#[test]
fn socket_activation_uses_the_listener_systemd_passes() {
    let dir = scratch();
    fs::write(dir.path().join("a.txt"), "a").unwrap();
    let policy_path = dir.path().join("p.json");
    fs::write(&policy_path, policy_with_rule(dir.path(), "act")).unwrap();
    let socket = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let fd: OwnedFd = listener.into();
    let raw = fd.as_raw_fd();
    // systemd's contract: the socket at fd 3, LISTEN_PID naming the server.
    // The shell moves the listener to fd 3 (the test process may use 3).
    let moved = if raw == 3 {
        String::new()
    } else {
        format!("exec 3<&{raw} {raw}<&-; ")
    };
    let script =
        format!("{moved}export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" serve --policy \"$1\"");
    let args = ["-c", &script, SERVER, policy_path.to_str().unwrap()].map(String::from);
    use std::os::unix::process::CommandExt;
    let notify_path = dir.path().join("n.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(&args)
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("FDOPEN_SOCKET");
    // SAFETY: fcntl is async-signal-safe; the listener must survive exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(fd);
    let mut buf = [0u8; 32];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    let mut c = fdopen::Client::connect(&socket).unwrap();
    assert_eq!(
        c.check(dir.path().join("a.txt"), fdopen::Mode::Read)
            .unwrap()
            .rule,
        "act"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn check_warns_about_rules_that_can_never_match_and_strict_fails() {
    let dir = scratch();
    let policy = dir.path().join("p.json");
    fs::write(
        &policy,
        json!({"rules": [
            {"name": "upside-down", "paths": ["/etc/*"], "min_size": "2KiB", "max_size": "1KiB"},
            {"name": "nowhere", "paths": ["/no/such/place/*.log"]},
            {"name": "logs", "paths": ["/var/log/*.log"]},
            {"name": "no-var", "effect": "deny", "paths": ["/var/**"]}
        ]})
        .to_string(),
    )
    .unwrap();
    let out = Command::new(SERVER)
        .args(["check", "--policy", policy.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rule \"upside-down\": min_size"), "{err}");
    assert!(
        err.contains("rule \"nowhere\"") && err.contains("/no/such/place does not exist"),
        "{err}"
    );
    assert!(
        err.contains("rule \"logs\": every request it allows is denied by rule \"no-var\""),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}:", policy.display())),
        "warnings are located: {err}"
    );
    let out = Command::new(SERVER)
        .args(["check", "--strict", "--policy", policy.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn completions_and_man_pages_are_generated() {
    for (bin, shell) in [(SERVER, "bash"), (CLIENT, "zsh"), (SERVER, "fish")] {
        let out = Command::new(bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("fdopen"),
            "{bin} {shell}"
        );
    }
    let dir = scratch();
    let out = Command::new(SERVER)
        .args(["man", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    for page in [
        "man8/fdopen-server.8",
        "man1/fdopen-client.1",
        "man8/fdopen-server-serve.8",
        "man1/fdopen-client-open.1",
    ] {
        let text = fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
}

#[test]
fn operational_log_is_plain_or_journald_prefixed_and_respects_the_level() {
    let dir = scratch();
    let policy = dir.path().join("p.json");
    fs::write(&policy, r#"{"rules":[]}"#).unwrap();
    let run = |journal: bool| {
        let mut cmd = Command::new(SERVER);
        cmd.args([
            "serve",
            "--socket",
            "/nonexistent-dir/x/y.sock",
            "--policy",
            "/nonexistent.json",
        ]);
        if journal {
            cmd.env("JOURNAL_STREAM", "8:1234");
        } else {
            cmd.env_remove("JOURNAL_STREAM");
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let plain = run(false);
    assert!(
        plain
            .lines()
            .any(|l| l.starts_with("fdopen-server: error: cannot load policy")),
        "{plain}"
    );
    let journal = run(true);
    assert!(
        journal
            .lines()
            .any(|l| l.starts_with("<3>error: cannot load policy")),
        "{journal}"
    );

    // Startup lines are info: hidden at --log-level warn.
    let s = TestServer::start_in(dir, r#"{"rules":[]}"#, &["--log-level", "warn"]);
    assert_eq!(s.ask(r#"{"op":"hello"}"#).0["ok"], true);
    assert!(
        !s.stderr_text().contains("listening"),
        "{}",
        s.stderr_text()
    );
}

#[test]
fn python_standard_library_client_opens_a_file() {
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok());
    let Some(python) = python else {
        panic!("python3 is needed for this test (the README's make test installs nothing else)");
    };
    let dir = scratch();
    fs::write(dir.path().join("a.txt"), "through python\n").unwrap();
    let policy = policy_with_rule(dir.path(), "py");
    let s = TestServer::start_in(dir, &policy, &[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/fdopen_client.py"
    );
    let out = Command::new(python)
        .args([
            script,
            "--socket",
            s.socket.to_str().unwrap(),
            "open",
            s.path("a.txt").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through python\n");
    let out = Command::new(python)
        .args([
            script,
            "--socket",
            s.socket.to_str().unwrap(),
            "open",
            "/etc/hostname",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("denied"));
}

#[test]
fn python_client_creates_a_file_with_a_mode() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch();
    let d = glob(dir.path());
    let policy = serde_json::json!({"rules": [{"name": "up", "paths": [format!("{d}/*.txt")],
        "modes": ["write"], "create": true, "create_perm": "0640"}]})
    .to_string();
    let s = TestServer::start_in(dir, &policy, &[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/fdopen_client.py"
    );
    let new = s.path("new.txt");
    let mut child = Command::new("python3")
        .args([script, "--socket", s.socket.to_str().unwrap(), "open"])
        .arg(&new)
        .args(["--mode", "write", "--create", "exclusive", "--perm", "0664"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from python\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_to_string(&new).unwrap(), "from python\n");
    assert_eq!(
        fs::metadata(&new).unwrap().permissions().mode() & 0o777,
        0o640
    );
}

#[test]
fn python_client_binds_and_serves_a_socket() {
    use std::io::{BufRead, Read};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let policy = serde_json::json!({"rules": [{"name": "sock", "binds": [format!("tcp:127.0.0.1:{port}")]}]})
        .to_string();
    let s = TestServer::start(&policy, &[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/fdopen_client.py"
    );
    let mut child = Command::new("python3")
        .args([script, "--socket", s.socket.to_str().unwrap(), "bind"])
        .arg(format!("tcp:127.0.0.1:{port}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its first line comes once it holds the socket.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut bound = String::new();
    stdout.read_line(&mut bound).unwrap();
    assert_eq!(bound.trim(), format!("tcp:127.0.0.1:{port}"));
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "hello from python\n");
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_new_audit_log_is_0640_in_the_socket_group_whatever_the_umask() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let extra: &[&str] = if is_root() {
        &["--socket-group", "4321"]
    } else {
        &[]
    };
    // The server creates its audit log under umask 077.
    let s = TestServer::start_with_umask(scratch(), r#"{"rules":[]}"#, extra, 0o077);
    let meta = fs::metadata(&s.audit).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o640,
        "umask 077 would give 0600"
    );
    if is_root() {
        assert_eq!(meta.gid(), 4321);
    } else {
        eprintln!("skipped the group half: giving a file to another group needs root");
    }
}
