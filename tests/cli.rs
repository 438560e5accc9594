//! The command lines of SPEC §7: check, explain, client exit codes, the
//! echo demo, and the socket's life cycle.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::{Command, Stdio};

use common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

fn demo_server() -> TestServer {
    let dir = scratch();
    fs::write(dir.path().join("hello.txt"), "hello world\n").unwrap();
    fs::write(dir.path().join("out.log"), "").unwrap();
    let d = glob(dir.path());
    let policy = json!({"rules": [
        {"name": "read-txt", "paths": [format!("{d}/*.txt")]},
        {"name": "log", "paths": [format!("{d}/*.log")], "modes": ["write", "append", "readwrite"]}
    ]})
    .to_string();
    TestServer::start_in(dir, &policy, &[])
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).output().unwrap()
}

/// Runs `fdopen-server serve` that is expected to exit by itself.
fn serve_once(socket: &std::path::Path, policy: &std::path::Path) -> std::process::Output {
    Command::new(SERVER)
        .arg("serve")
        .arg("--socket")
        .arg(socket)
        .arg("--policy")
        .arg(policy)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn shipped_policies_pass_check() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let out = run(SERVER, &["check", "--policy", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            text(&out.stderr)
        );
    }
}

#[test]
fn check_reports_located_errors_and_exits_1() {
    let dir = scratch();
    let bad = dir.path().join("bad.json");
    fs::write(
        &bad,
        "{\"rules\": [\n  {\"name\": \"a\", \"paths\": [\"/x\"]},\n  {\"name\": \"a\", \"paths\": [\"y/*\"], \"max_size\": \"1XB\"}\n]}\n",
    )
    .unwrap();
    let out = run(SERVER, &["check", "--policy", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{}:3:", bad.display())), "{err}");
    assert!(err.contains("rule \"a\""), "{err}");
    assert!(err.contains("unknown unit"), "{err}");

    let good = dir.path().join("good.json");
    fs::write(&good, r#"{"rules":[{"name":"a","paths":["/x"]}]}"#).unwrap();
    let out = run(SERVER, &["check", "--policy", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(SERVER, &["check", "--policy", "/nonexistent/policy.json"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn serve_with_a_broken_policy_exits_2() {
    let dir = scratch();
    let bad = dir.path().join("bad.json");
    fs::write(&bad, r#"{"rules":[{"name":"a","paths":["relative"]}]}"#).unwrap();
    let sock = dir.path().join("s.sock");
    let out = serve_once(&sock, &bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not absolute"));
    assert!(!sock.exists());
}

#[test]
fn explain_shows_each_rule_and_the_decision() {
    let dir = scratch();
    fs::write(dir.path().join("big.log"), vec![b'x'; 4096]).unwrap();
    let d = glob(dir.path());
    let policy = dir.path().join("p.json");
    fs::write(
        &policy,
        json!({"rules": [
            {"name": "small-logs", "paths": [format!("{d}/*.log")], "max_size": "1KiB"},
            {"name": "txt-only", "paths": [format!("{d}/*.txt")]},
            {"name": "writers", "paths": [format!("{d}/*.log")], "modes": ["write"]},
            {"name": "alice-only", "paths": [format!("{d}/*.log")], "users": [4242]}
        ]})
        .to_string(),
    )
    .unwrap();
    let target = dir.path().join("big.log");
    let args = [
        "explain",
        "--policy",
        policy.to_str().unwrap(),
        "--path",
        target.to_str().unwrap(),
        "--uid",
        "1000",
        "--gid",
        "1000",
    ];
    let out = run(SERVER, &args);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out.stdout);
    assert!(
        t.contains("small-logs  no: allows at most 1 KiB; file is 4 KiB"),
        "{t}"
    );
    assert!(
        t.contains("txt-only    no: path matches none of its globs"),
        "{t}"
    );
    assert!(
        t.contains("writers     no: does not cover mode read"),
        "{t}"
    );
    assert!(
        t.contains("alice-only  no: uid 1000 is not among its users"),
        "{t}"
    );
    assert!(
        t.contains("decision: too_large: rule small-logs allows at most 1 KiB; file is 4 KiB"),
        "{t}"
    );

    let out = run(
        SERVER,
        &[
            "explain",
            "--policy",
            policy.to_str().unwrap(),
            "--path",
            target.to_str().unwrap(),
            "--uid",
            "4242",
            // An unknown uid's groups are not guessed (nor taken from root).
            "--gid",
            "4242",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"]["ok"], true);
    assert_eq!(v["decision"]["rule"], "alice-only");
    assert_eq!(v["rules"][3]["matched"], true);
    assert_eq!(v["rules"][1]["matched"], false);
}

#[test]
fn client_exit_codes() {
    let s = demo_server();
    let sock = s.socket.to_str().unwrap();
    let hello = s.path("hello.txt");
    let ok = run_client(&s.socket, &["open", hello.to_str().unwrap()], b"");
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(text(&ok.stdout), "hello world\n");

    let refused = run_client(&s.socket, &["open", "/etc/hostname"], b"");
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("denied"),
        "{}",
        text(&refused.stderr)
    );
    assert!(refused.stdout.is_empty());

    let usage = run(
        &client_under_test(),
        &["--socket", sock, "open", "--mode", "exec", "/x"],
    );
    assert_eq!(usage.status.code(), Some(2));
    let usage = run(&client_under_test(), &["--socket", sock, "frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));

    let unreachable = run(
        &client_under_test(),
        &["--socket", s.path("nobody.sock").to_str().unwrap(), "hello"],
    );
    assert_eq!(unreachable.status.code(), Some(3));
    let said = text(&unreachable.stderr);
    assert!(said.contains("no server answers"), "{said}");
    assert!(said.contains("nobody.sock"), "{said}");
}

/// No server anywhere the client looks (SPEC §1): exit 3, naming each
/// path it tried and how to start a server, whether no default applies
/// (root without /run/fdopen/fdopen.sock, no XDG_RUNTIME_DIR) or the
/// default names a socket nobody listens on.
/// A client that cannot write its answer (stdout on a full device)
/// panics as it did under std's runtime: exit 101 with the message, not
/// an abort (SIGABRT, a core file) from a panic unwinding into the C
/// `main` of the `no_main` binary.
#[test]
fn a_panicking_client_exits_101_and_does_not_abort() {
    let s = demo_server();
    let out = Command::new(client_under_test())
        .arg("--socket")
        .arg(&s.socket)
        .arg("hello")
        .stdout(
            fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(101), "{out:?}");
    assert!(
        text(&out.stderr).contains("No space left on device"),
        "{out:?}"
    );
}

#[test]
fn no_server_is_exit_3_with_the_paths_tried_and_how_to_start_one() {
    if std::path::Path::new("/run/fdopen/fdopen.sock").exists() {
        eprintln!("skipped: a system server's socket exists here");
        return;
    }
    let dir = scratch();
    let runtime = dir.path().to_str().unwrap();
    for xdg in [None, Some(runtime)] {
        let mut cmd = Command::new(client_under_test());
        cmd.arg("hello")
            .env_remove("FDOPEN_SOCKET")
            .env_remove("XDG_RUNTIME_DIR");
        if let Some(xdg) = xdg {
            cmd.env("XDG_RUNTIME_DIR", xdg);
        }
        let out = cmd.output().unwrap();
        let said = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{xdg:?}: {said}");
        assert!(said.contains("/run/fdopen/fdopen.sock"), "{said}");
        if let Some(xdg) = xdg {
            assert!(said.contains(&format!("{xdg}/fdopen.sock")), "{said}");
        }
        assert!(said.contains("no server answers"), "{said}");
        assert!(
            said.contains("systemctl start fdopen.socket") && said.contains("fdopen-server serve"),
            "{said}"
        );
    }
}

#[test]
fn socket_comes_from_fdopen_socket_when_not_given() {
    let s = demo_server();
    let out = Command::new(client_under_test())
        .arg("hello")
        .env("FDOPEN_SOCKET", &s.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("fdopen "));
}

#[test]
fn open_runs_a_command_with_the_file_as_stdin_or_stdout() {
    let s = demo_server();
    let hello = s.path("hello.txt");
    let out = run_client(
        &s.socket,
        &["open", hello.to_str().unwrap(), "--", "wc", "-c"],
        b"",
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).trim(), "12");

    let log = s.path("out.log");
    let out = run_client(
        &s.socket,
        &[
            "open",
            "--mode",
            "append",
            log.to_str().unwrap(),
            "--",
            "echo",
            "appended",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run_client(
        &s.socket,
        &["open", "--mode", "append", log.to_str().unwrap()],
        b"from stdin\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fs::read_to_string(&log).unwrap(), "appended\nfrom stdin\n");

    // The command's own exit status comes through.
    let out = run_client(
        &s.socket,
        &["open", hello.to_str().unwrap(), "--", "sh", "-c", "exit 7"],
        b"",
    );
    assert_eq!(out.status.code(), Some(7));
}

/// `fdopen-client ARGS...` started with the descriptors `closed` closed,
/// as a service manager or `cmd <&- >&-` may start it.
fn client_with_closed(closed: &'static [i32], args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(client_under_test());
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped());
    // SAFETY: close only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in closed {
                libc::close(fd);
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn open_cmd_gets_the_file_on_stdin_and_stdout_even_when_started_without_them() {
    // The granted file must reach CMD at 0 and/or 1 whichever descriptor
    // it was received at, even at the very one it goes to (dup2 onto
    // itself would leave it close-on-exec) or the other (closed as the
    // original after its copy).
    let s = demo_server();
    let socket = s.socket.to_str().unwrap();
    let hello = s.path("hello.txt");
    let hello = hello.to_str().unwrap();
    let log = s.path("out.log");
    let log_path = log.to_str().unwrap();
    for closed in [&[0][..], &[1], &[0, 1]] {
        let out = client_with_closed(
            closed,
            &[
                "--socket", socket, "open", hello, "--", "sh", "-c", "cat >&2",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{closed:?}: {out:?}");
        assert_eq!(text(&out.stderr), "hello world\n", "{closed:?}");

        fs::write(&log, "").unwrap();
        let args = [
            "--socket",
            socket,
            "open",
            "--mode",
            "readwrite",
            log_path,
            "--",
            "sh",
            "-c",
            "cat <&0 >&2; echo written; echo also to stdin >&0",
        ];
        let out = client_with_closed(closed, &args);
        assert_eq!(out.status.code(), Some(0), "{closed:?}: {out:?}");
        assert_eq!(
            fs::read_to_string(&log).unwrap(),
            "written\nalso to stdin\n",
            "{closed:?}: {out:?}"
        );
    }
}

#[test]
fn a_cmd_without_a_shebang_runs_with_sh_as_execvp_runs_it() {
    // glibc's execvp runs a file the kernel cannot (ENOEXEC) with /bin/sh,
    // as POSIX says; musl's does not, and the client is built against
    // either (`make test` runs this against both).
    let s = demo_server();
    let hello = s.path("hello.txt");
    let hello = hello.to_str().unwrap();
    let script = |name: &str, body: &str| {
        let path = s.path(name);
        fs::write(&path, body).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let from_stdin = script("from-stdin", "echo \"stdin: $(cat)\"\n");
    let out = run_client(&s.socket, &["open", hello, "--", &from_stdin], b"");
    assert_eq!(
        text(&out.stdout),
        "stdin: hello world\n",
        "{}",
        text(&out.stderr)
    );
    let from_fd = script("from-fd", "echo \"fd 3: $(cat <&3)\"\n");
    let fd = format!("3={hello}");
    let out = run_client(&s.socket, &["exec", "--fd", &fd, "--", &from_fd], b"");
    assert_eq!(
        text(&out.stdout),
        "fd 3: hello world\n",
        "{}",
        text(&out.stderr)
    );
}

/// `fdopen-client ARGS...` run with no `PATH`, in a private mount namespace
/// where `/usr/local/bin` is an empty tmpfs holding only `only-here`
/// (`echo found`), or with `PATH=/usr/local/bin` if `path` says so.
/// `None`, the reason printed, where that cannot be set up.
fn in_a_private_usr_local_bin(path: bool, args: &[&str]) -> Option<std::process::Output> {
    if !is_root() || !std::path::Path::new("/usr/local/bin").is_dir() {
        eprintln!("skipped: needs root and /usr/local/bin to mount a tmpfs over it");
        return None;
    }
    let script = r#"client=$1; shift
mount -t tmpfs fdopen-test /usr/local/bin || exit 99
printf '#!/bin/sh\necho found\n' > /usr/local/bin/only-here
chmod 755 /usr/local/bin/only-here
if [ "$FDOPEN_TEST_KEEP_PATH" ]; then exec env PATH=/usr/local/bin "$client" "$@"; fi
exec env -u PATH "$client" "$@""#;
    let mut cmd = in_a_private_mount_namespace(script);
    cmd.arg(client_under_test()).args(args);
    if path {
        cmd.env("FDOPEN_TEST_KEEP_PATH", "1");
    }
    let out = cmd.output().unwrap();
    if out.status.code() == Some(CANNOT_MOUNT) {
        eprintln!("skipped: cannot mount a tmpfs here: {}", text(&out.stderr));
        return None;
    }
    Some(out)
}

#[test]
fn without_path_cmd_is_looked_for_in_bin_and_usr_bin_only() {
    // With no PATH, glibc's execvp looks in /bin:/usr/bin, musl's in
    // /usr/local/bin first. `run` looks where glibc does, and so must
    // `open`, `exec`, `bind` and `retrieve -- CMD`, whichever libc the
    // client has (`make test` runs this against both).
    let s = demo_server();
    let hello = s.path("hello.txt");
    let socket = s.socket.to_str().unwrap();
    let hello = hello.to_str().unwrap();
    let commands: [&[&str]; 3] = [
        &["--socket", socket, "run", "--", "only-here"],
        &["--socket", socket, "exec", "--", "only-here"],
        &["--socket", socket, "open", hello, "--", "only-here"],
    ];
    for args in commands {
        // The set-up works: with PATH naming it, the program is found.
        let Some(found) = in_a_private_usr_local_bin(true, args) else {
            return;
        };
        assert_eq!(
            text(&found.stdout),
            "found\n",
            "{args:?}: {}",
            text(&found.stderr)
        );
        let out = in_a_private_usr_local_bin(false, args).unwrap();
        assert_eq!(
            text(&out.stdout),
            "",
            "{args:?} ran /usr/local/bin/only-here"
        );
        assert!(
            text(&out.stderr).contains("No such file or directory"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn stat_reads_a_tz_naming_a_zoneinfo_file_from_that_file() {
    // `EST5EDT` both names a zoneinfo file and parses as a POSIX zone
    // without daylight rules: glibc (and stat(1)) read the file, musl
    // took the string, and put a January time in daylight saving.
    if !std::path::Path::new("/usr/share/zoneinfo/EST5EDT").is_file() {
        eprintln!("skipped: no /usr/share/zoneinfo/EST5EDT");
        return;
    }
    let dir = scratch();
    let file = dir.path().join("f");
    fs::write(&file, "").unwrap();
    // 2026-01-15 12:00:00 UTC, in winter.
    let january = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_768_478_400);
    fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(january)
        .unwrap();
    let policy = json!({"rules": [
        {"name": "f", "paths": [glob(&file)], "modes": ["stat"]}
    ]})
    .to_string();
    let s = TestServer::start_in(dir, &policy, &[]);
    let out = Command::new(client_under_test())
        .env("TZ", "EST5EDT")
        .arg("--socket")
        .arg(&s.socket)
        .arg("stat")
        .arg(&file)
        .output()
        .unwrap();
    assert_succeeded(&out);
    assert!(
        text(&out.stdout).contains("Modify: 2026-01-15 07:00:00.000000000 -0500\n"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_subcommand_prints_json_on_request() {
    let s = demo_server();
    let hello = s.path("hello.txt");
    let out = run_client(
        &s.socket,
        &["check", "--json", hello.to_str().unwrap()],
        b"",
    );
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rule"], "read-txt");
    assert_eq!(v["size"], 12);
    let out = run_client(
        &s.socket,
        &[
            "check",
            "--json",
            "--mode",
            "write",
            hello.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "denied");
}

#[test]
fn help_documents_every_subcommand() {
    let out = run(SERVER, &["--help"]);
    let t = text(&out.stdout);
    for word in ["serve", "check", "explain", "echo"] {
        assert!(t.contains(word), "{t}");
    }
    let out = run(SERVER, &["serve", "--help"]);
    let t = text(&out.stdout);
    for flag in [
        "--socket",
        "--policy",
        "--socket-mode",
        "--socket-group",
        "--audit-log",
        "--max-request",
        "--idle-timeout",
        "--max-clients",
    ] {
        assert!(t.contains(flag), "{flag}: {t}");
    }
    let out = run(&client_under_test(), &["open", "--help"]);
    let t = text(&out.stdout);
    assert!(t.contains("readwrite") && t.contains("CMD"), "{t}");
}

#[test]
fn echo_demo_prints_every_line_of_several_clients() {
    let dir = scratch();
    let sock = dir.path().join("echo.sock");
    let out_path = dir.path().join("echo.out");
    let notify = dir.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    let mut server = Command::new(SERVER)
        .args(["echo", "--socket", sock.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify)
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(dir.path().join("echo.err")).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 16];
    listener.recv(&mut buf).unwrap();

    let clients: Vec<_> = (0..4)
        .map(|i| {
            let mut child = Command::new(client_under_test())
                .args(["--socket", sock.to_str().unwrap(), "echo"])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            for n in 0..50 {
                // Long enough that a line split in two writes would show.
                writeln!(stdin, "client {i} line {n} {}", "x".repeat(1000)).unwrap();
            }
            drop(stdin);
            child
        })
        .collect();
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    // The clients wrote straight into the server's standard output (the
    // seed's way round): each line whole, each client's in its order.
    let printed = fs::read_to_string(&out_path).unwrap();
    assert_eq!(printed.lines().count(), 200, "{printed}");
    for i in 0..4 {
        let mine: Vec<&str> = printed
            .lines()
            .filter(|l| l.starts_with(&format!("client {i} ")))
            .collect();
        let want: Vec<String> = (0..50)
            .map(|n| format!("client {i} line {n} {}", "x".repeat(1000)))
            .collect();
        assert_eq!(mine, want);
    }
    // Ctrl-C stops it cleanly, says so by the signal's name, and its
    // socket goes with it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(server.wait().unwrap().code(), Some(0));
    assert!(!sock.exists(), "the echo server removes its socket");
    let said = fs::read_to_string(dir.path().join("echo.err")).unwrap();
    assert!(
        said.contains("SIGINT: stopped") && !said.contains("Ok("),
        "{said}"
    );
}

/// What a newcomer writes first is understood: a policy as a bare array
/// of rules gets told the policy's shape, explain takes a relative path as
/// the client does, and a rule without paths is said to have none.
#[test]
fn check_and_explain_speak_plainly() {
    let dir = scratch();
    let bare = dir.path().join("bare.json");
    fs::write(&bare, r#"[{"name": "a", "paths": ["/srv/*"]}]"#).unwrap();
    let out = run(SERVER, &["check", "--policy", bare.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr);
    assert!(
        said.contains(r#"{"rules": [...]}"#) && !said.contains("invalid type"),
        "{said}"
    );

    fs::write(dir.path().join("f.txt"), "f").unwrap();
    let policy = dir.path().join("p.json");
    fs::write(
        &policy,
        json!({"rules": [
            {"name": "held", "names": ["jobs/*"]},
            {"name": "txt", "paths": [format!("{}/*.txt", glob(dir.path()))]}
        ]})
        .to_string(),
    )
    .unwrap();
    let out = Command::new(SERVER)
        .args(["explain", "--policy"])
        .arg(&policy)
        .args(["--path", "f.txt"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}{}", text(&out.stderr));
    let held = said
        .lines()
        .find(|l| l.contains("held"))
        .unwrap_or_default();
    assert!(
        held.contains("no paths") && !held.contains("globs"),
        "{said}"
    );
}

#[test]
fn socket_life_cycle() {
    let mut s = demo_server();
    // Mode 0660 by default.
    let meta = fs::metadata(&s.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);

    // A second server on a live socket refuses and leaves the first alone.
    let out = serve_once(&s.socket, &s.policy);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("already listening"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(s.ask(r#"{"op":"hello"}"#).0["ok"], true);

    // SIGTERM: exit 0, socket removed.
    let status = s.stop_with(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0));
    assert!(!s.socket.exists());
}

#[test]
fn stale_socket_is_replaced_and_other_files_are_not() {
    let dir = scratch();
    let sock = dir.path().join("fdopen.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap()); // stale: nobody listens
    let s = TestServer::start_in(dir, r#"{"rules":[]}"#, &["--socket-mode", "0600"]);
    assert_eq!(s.ask(r#"{"op":"hello"}"#).0["ok"], true);
    assert_eq!(
        fs::metadata(&s.socket).unwrap().permissions().mode() & 0o7777,
        0o600
    );

    let dir = scratch();
    let file = dir.path().join("not-a-socket");
    fs::write(&file, "precious").unwrap();
    let out = serve_once(&file, std::path::Path::new("/dev/null"));
    assert_eq!(out.status.code(), Some(2));
    let policy = dir.path().join("p.json");
    fs::write(&policy, r#"{"rules":[]}"#).unwrap();
    let out = serve_once(&file, &policy);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not a socket"));
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious");
}

/// The pid that sent the next datagram on `notify` (SO_PASSCRED), and its text.
fn next_notification(notify: &std::os::unix::net::UnixDatagram) -> (i32, String) {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 256];
    let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = loop {
        match recvmsg::<()>(
            notify.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.expect("a notification within the read timeout"),
        }
    };
    let pid = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
            _ => None,
        })
        .expect("credentials");
    let n = msg.bytes;
    (pid, String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn servers_started_together_on_a_stale_socket_never_steal_it() {
    const ROUNDS: usize = 20;
    const SERVERS: usize = 4;
    let dir = scratch();
    let policy = dir.path().join("p.json");
    fs::write(&policy, r#"{"rules":[]}"#).unwrap();
    let sock = dir.path().join("fdopen.sock");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    nix::sys::socket::setsockopt(&notify, nix::sys::socket::sockopt::PassCred, &true).unwrap();
    for round in 0..ROUNDS {
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap()); // stale
        // Every server is exec'd by a shell that first waits for this gate
        // to close, so all of them start at the same moment.
        let (gate, gate_open) = std::io::pipe().unwrap();
        let mut children: Vec<_> = (0..SERVERS)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", r#"read -r _; exec "$0" "$@" </dev/null"#, SERVER])
                    .args(["serve", "--socket"])
                    .arg(&sock)
                    .arg("--policy")
                    .arg(&policy)
                    .env("NOTIFY_SOCKET", &notify_path)
                    .env("FDOPEN_TEST_CLAIM_DELAY_MS", "20")
                    .env_remove("LISTEN_FDS")
                    .env_remove("LISTEN_PID")
                    .stdin(gate.try_clone().unwrap())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        drop((gate, gate_open));
        // The previous round's winner said STOPPING=1 on its way out.
        let winner = loop {
            match next_notification(&notify) {
                (pid, text) if text == "READY=1" => break pid,
                _ => continue,
            }
        };
        let (mut winners, losers): (Vec<_>, Vec<_>) =
            children.drain(..).partition(|c| c.id() as i32 == winner);
        assert_eq!(winners.len(), 1, "round {round}: READY from a stranger");
        for mut loser in losers {
            let status = wait_timeout(&mut loser, std::time::Duration::from_secs(20));
            let mut err = String::new();
            use std::io::Read;
            loser
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert_eq!(
                status.and_then(|s| s.code()),
                Some(2),
                "round {round}: every other server exits 2: {err}"
            );
            assert!(err.contains("already listening"), "round {round}: {err}");
        }
        // The one that serves still owns the socket.
        let mut c = fdopen::Client::connect(&sock).unwrap();
        assert_eq!(c.hello().unwrap().server, "fdopen");
        let mut winner = winners.pop().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(winner.id() as i32),
            Signal::SIGTERM,
        )
        .unwrap();
        assert_eq!(winner.wait().unwrap().code(), Some(0));
        // It removes its socket on the way out; the next round starts stale.
        assert!(!sock.exists(), "round {round}");
    }
}

#[test]
fn socket_group_is_applied() {
    if !is_root() {
        eprintln!("skipped: chown to another group needs root");
        return;
    }
    let s = TestServer::start(r#"{"rules":[]}"#, &["--socket-group", "4321"]);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&s.socket).unwrap().gid(), 4321);
}

#[test]
fn exec_places_files_and_sockets_at_the_numbers_asked() {
    let dir = scratch();
    fs::write(dir.path().join("a.txt"), "from a\n").unwrap();
    fs::write(dir.path().join("b.log"), "").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = glob(dir.path());
    let policy = json!({"rules": [
        {"name": "read", "paths": [format!("{d}/*.txt")]},
        {"name": "log", "paths": [format!("{d}/*.log")], "modes": ["append"]},
        {"name": "sock", "binds": [format!("tcp:127.0.0.1:{port}")]}
    ]})
    .to_string();
    let s = TestServer::start_in(dir, &policy, &[]);
    let a = format!("5={}", s.path("a.txt").display());
    let b = format!("7={}:append", s.path("b.log").display());
    let sock = format!("6=tcp:127.0.0.1:{port}");
    let script = r#"cat "$1" && echo appended >&7 && readlink /proc/self/fd/6"#;
    let out = run_client(
        &s.socket,
        &[
            "exec", "--fd", &a, "--fd", &b, "--bind", &sock, "--", "sh", "-c", script, "sh", "{5}",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("from a\nsocket:["), "{stdout}");
    assert_eq!(fs::read_to_string(s.path("b.log")).unwrap(), "appended\n");
    // The same number twice is a usage error; a refused file exits 1.
    let out = run_client(
        &s.socket,
        &[
            "exec",
            "--fd",
            &a,
            "--bind",
            "5=tcp:127.0.0.1:1",
            "--",
            "true",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run_client(
        &s.socket,
        &["exec", "--fd", "3=/etc/shadow", "--", "true"],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn a_missing_socket_directory_is_named_not_created() {
    let dir = scratch();
    let policy = dir.path().join("p.json");
    fs::write(&policy, r#"{"rules":[{"name":"a","paths":["/x"]}]}"#).unwrap();
    let missing = dir.path().join("typo").join("fdopen.sock");
    let out = Command::new(SERVER)
        .args(["serve", "--socket"])
        .arg(&missing)
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("fdopen-server: error: "), "{stderr}");
    assert!(
        stderr.contains("typo") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(!dir.path().join("typo").exists(), "nothing created");
}

#[test]
fn an_empty_policy_or_directory_is_a_warning() {
    let dir = scratch();
    let policies = dir.path().join("policy.d");
    fs::create_dir(&policies).unwrap();
    let check = |path: &std::path::Path| {
        let out = Command::new(SERVER)
            .args(["check", "--policy"])
            .arg(path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        text(&out.stderr)
    };
    assert!(check(&policies).contains("warning: ") && check(&policies).contains("no *.json"));
    fs::write(policies.join("a.json"), r#"{"rules":[]}"#).unwrap();
    let said = check(&policies);
    assert!(
        said.contains("fdopen-server: warning: ") && said.contains("no rules"),
        "{said}"
    );
}

/// A granted file that then cannot be written (its disk is full) is the
/// file's failure, not the server's: the client names the file and exits
/// 1, as for the server's io_error, never "connection to the server
/// failed" and 3.
#[test]
fn a_copy_that_fails_names_the_file_not_the_connection() {
    let dir = scratch();
    let Some(disk) = SmallDisk::in_or_skip(dir.path()) else {
        return;
    };
    let target = disk.0.join("big.log");
    let policy = json!({"rules": [{"name": "disk", "paths": [format!("{}/*", glob(&disk.0))],
        "modes": ["write"], "create": true}]})
    .to_string();
    let mut s = TestServer::start_in(dir, &policy, &[]);
    s.hold(disk);
    let out = run_client(
        &s.socket,
        &[
            "open",
            "--mode",
            "write",
            "--create",
            target.to_str().unwrap(),
        ],
        &vec![b'x'; 1 << 20],
    );
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("big.log") && !said.contains("connection to the server"),
        "{said}"
    );
}
