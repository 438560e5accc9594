//! `fdopen-client run` (SPEC §8): unchanged programs, run as `nobody`
//! against a root server, read and append files `nobody` cannot open
//! itself. Root only (other uids); each test says why it skips.

mod common;
#[allow(dead_code)]
#[path = "common/supervised.rs"]
mod supervised;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};

use common::{client_under_test, glob, is_root};
use supervised::{NOBODY, Supervised, direct, stdout};

const PYTHON: &str = "/usr/bin/python3";

/// A root server with a root-only directory `srv/` (0711, files 0600):
/// `srv/*` is readable through the policy except `denied` (a deny rule)
/// and `big` (over `max_size`); `log/*.log` may be appended to and created.
struct Setup {
    supervised: Supervised,
    /// A privileged port free when the test started, the one `bind` rule
    /// allows (never a fixed one such as 80, which a web server may hold).
    port: u16,
}

/// The shared server, client copy and helpers of `Supervised`.
impl std::ops::Deref for Setup {
    type Target = Supervised;
    fn deref(&self) -> &Supervised {
        &self.supervised
    }
}

impl Setup {
    fn new() -> Option<Setup> {
        if !is_root() {
            eprintln!("skipped: run tests need root (a root server, a nobody client)");
            return None;
        }
        let dir = common::scratch();
        let root = dir.path();
        let srv = root.join("srv");
        fs::create_dir(&srv).unwrap();
        for (name, content) in [
            ("secret", "secret-data\n".to_owned()),
            ("other", "other-data\n".to_owned()),
            ("denied", "denied-data\n".to_owned()),
            ("big", "x".repeat(200)),
        ] {
            fs::write(srv.join(name), content).unwrap();
            fs::set_permissions(srv.join(name), fs::Permissions::from_mode(0o600)).unwrap();
        }
        for i in 0..8 {
            let path = srv.join(format!("t{i}"));
            fs::write(&path, format!("thread-{i}")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::set_permissions(&srv, fs::Permissions::from_mode(0o711)).unwrap();
        let log = root.join("log");
        fs::create_dir(&log).unwrap();
        fs::set_permissions(&log, fs::Permissions::from_mode(0o755)).unwrap();
        let out = root.join("out");
        fs::create_dir(&out).unwrap();
        chown(&out, Some(NOBODY), Some(NOBODY)).unwrap();
        let port = common::free_privileged_port(600);
        let policy = format!(
            r#"{{"rules":[
              {{"name":"no","effect":"deny","paths":["{srv}/denied"]}},
              {{"name":"srv","effect":"allow","paths":["{srv}/*"],"modes":["read"],"max_size":100}},
              {{"name":"logs","effect":"allow","paths":["{log}/*.log"],"modes":["append","write"],
                "create":true,"truncate":true,"create_perm":"0644"}},
              {{"name":"web","effect":"allow","binds":["tcp:127.0.0.1:{port}"]}}]}}"#,
            srv = glob(&srv),
            log = glob(&log),
        );
        let supervised = Supervised::start(dir, &policy)?;
        Some(Setup { supervised, port })
    }

    fn path(&self, name: &str) -> String {
        self.server.path(name).to_str().unwrap().to_owned()
    }
}

#[track_caller]
fn assert_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(out)
}

#[test]
fn dynamic_c_programs_read_and_copy_what_nobody_cannot_open() {
    let Some(s) = Setup::new() else { return };
    let secret = s.path("srv/secret");
    assert!(!direct(&["/bin/cat", &secret]).status.success());
    assert_eq!(assert_ok(&s.run(&["/bin/cat", &secret])), "secret-data\n");
    let copy = s.path("out/copy");
    assert_ok(&s.run(&["/bin/cp", &secret, &copy]));
    assert_eq!(fs::read_to_string(&copy).unwrap(), "secret-data\n");
}

#[test]
fn tail_follow_keeps_reading_a_brokered_file() {
    let Some(s) = Setup::new() else { return };
    let secret = s.path("srv/secret");
    let mut child = s
        .run_command(
            &[],
            &["/usr/bin/tail", "-f", "-n", "+1", "-s", "0.05", &secret],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "secret-data");
    fs::OpenOptions::new()
        .append(true)
        .open(&secret)
        .unwrap()
        .write_all(b"appended later\n")
        .unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "appended later");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "tail got run's SIGTERM"
    );
}

#[test]
fn a_static_binary_making_raw_syscalls_is_brokered() {
    let Some(s) = Setup::new() else { return };
    let Some(opener) = s.build("opener", &["-static"]) else {
        return;
    };
    let secret = s.path("srv/secret");
    let out = s.run(&[&opener, "--raw", &secret]);
    assert_eq!(assert_ok(&out), format!("{secret}: secret-data\n\n"));
}

#[test]
fn threads_opening_at_once_each_get_their_own_file() {
    let Some(s) = Setup::new() else { return };
    let Some(opener) = s.build("opener", &[]) else {
        return;
    };
    let paths: Vec<String> = (0..8).map(|i| s.path(&format!("srv/t{i}"))).collect();
    let mut args = vec![opener.as_str()];
    args.extend(paths.iter().map(String::as_str));
    let expected: String = paths
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{p}: thread-{i}\n"))
        .collect();
    for _ in 0..5 {
        assert_eq!(assert_ok(&s.run(&args)), expected);
    }
}

#[test]
fn python_open_and_pathlib_relative_paths_and_dirfds() {
    let Some(s) = Setup::new() else { return };
    let srv = s.path("srv");
    let script = format!(
        r#"import os, pathlib
print(open("{srv}/secret").read(), end="")
print(pathlib.Path("{srv}/other").read_text(), end="")
os.chdir("{srv}")
print(open("secret").read(), end="")
d = os.open("{srv}", os.O_PATH)
print(os.read(os.open("other", os.O_RDONLY, dir_fd=d), 100).decode(), end="")
"#
    );
    let out = s.run(&[PYTHON, "-c", &script]);
    assert_eq!(
        assert_ok(&out),
        "secret-data\nother-data\nsecret-data\nother-data\n"
    );
}

#[test]
fn shell_redirections_append_and_create_as_the_user() {
    let Some(s) = Setup::new() else { return };
    let log = s.path("log/a.log");
    let line = format!("echo x >> {log}; echo y >> {log}");
    assert_ok(&s.run(&["/bin/sh", "-c", &line]));
    assert_eq!(fs::read_to_string(&log).unwrap(), "x\ny\n");
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(&log).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o644));
    let audit = s.server.audit_lines();
    let created: Vec<_> = audit.iter().filter(|r| r["created"] == true).collect();
    assert_eq!(created.len(), 1, "created once, then opened: {audit:?}");
}

#[test]
fn children_of_the_program_are_brokered_too() {
    let Some(s) = Setup::new() else { return };
    let line = format!(
        "cat {a} & cat {b}; wait",
        a = s.path("srv/secret"),
        b = s.path("srv/other")
    );
    let out = stdout(&s.run(&["/bin/sh", "-c", &line]));
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["other-data", "secret-data"]);
}

#[test]
fn refusals_look_exactly_as_without_run() {
    let Some(s) = Setup::new() else { return };
    for name in ["srv/denied", "srv/big", "srv/missing"] {
        let cat = ["/bin/cat", &s.path(name)].map(str::to_owned);
        let cat: Vec<&str> = cat.iter().map(String::as_str).collect();
        let (with, without) = (s.run(&cat), direct(&cat));
        assert!(!with.status.success(), "{name} was granted");
        assert_eq!(
            (with.status.code(), &with.stdout, &with.stderr),
            (without.status.code(), &without.stdout, &without.stderr),
            "{name}"
        );
    }
    let refused: Vec<_> = s
        .server
        .audit_lines()
        .into_iter()
        .filter(|r| r["ok"] == false)
        .map(|r| r["code"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(refused, ["denied", "too_large", "not_found"]);
}

#[test]
fn flags_the_server_cannot_honour_are_left_alone() {
    let Some(s) = Setup::new() else { return };
    let script = format!(
        r#"import os
for name in ["O_RDONLY", "O_DIRECTORY", "O_PATH", "O_SYNC", "O_DSYNC"]:
    flags = getattr(os, name) if name == "O_RDONLY" else os.O_RDONLY | getattr(os, name)
    try:
        os.close(os.open("{secret}", flags))
        print(name, "ok")
    except OSError as e:
        print(name, e.errno)
"#,
        secret = s.path("srv/secret")
    );
    let with = stdout(&s.run(&[PYTHON, "-c", &script]));
    let without = stdout(&direct(&[PYTHON, "-c", &script]));
    let (first_with, rest_with) = with.split_once('\n').unwrap();
    let (first_without, rest_without) = without.split_once('\n').unwrap();
    assert_eq!(first_with, "O_RDONLY ok");
    assert_eq!(first_without, format!("O_RDONLY {}", libc::EACCES));
    assert_eq!(rest_with, rest_without);
}

#[test]
fn a_path_rewritten_while_trapped_never_yields_another_file() {
    let Some(s) = Setup::new() else { return };
    let Some(flipper) = s.build("flipper", &[]) else {
        return;
    };
    // Same length: "secret" and "denied", one granted, one refused.
    let out = s.run(&[
        &flipper,
        &s.path("srv/secret"),
        &s.path("srv/denied"),
        "secret-data\n",
        "2000",
    ]);
    let text = assert_ok(&out);
    assert!(!text.contains("LEAK"), "{text}");
    let granted: u32 = text
        .trim()
        .strip_prefix("granted ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(granted > 0, "{text}");
}

#[test]
fn python_http_server_binds_a_privileged_port_and_a_refused_port_is_eacces() {
    let Some(s) = Setup::new() else { return };
    let port = s.port.to_string();
    let mut server = s
        .run_command(
            &[],
            &[
                PYTHON,
                "-u",
                "-m",
                "http.server",
                &port,
                "--bind",
                "127.0.0.1",
                "--directory",
                "/",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let banner = lines.next().unwrap().unwrap();
    assert!(
        banner.starts_with(&format!("Serving HTTP on 127.0.0.1 port {port} ")),
        "{banner}"
    );
    let mut http = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    http.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    http.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    // SIGTERM to run reaches python, which dies of it, and so does run.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(server.wait().unwrap().signal(), Some(libc::SIGTERM));

    // A privileged port outside the rule, then the rule's own with
    // --no-bind: the kernel's EACCES either way.
    let bind_to = |p: u16| {
        format!(
            "import socket\ntry:\n socket.socket().bind(('127.0.0.1', {p}))\n print('bound')\nexcept OSError as e:\n print(e.errno)"
        )
    };
    assert_eq!(
        stdout(&s.run(&[PYTHON, "-c", &bind_to(s.port + 1)])).trim(),
        libc::EACCES.to_string()
    );
    let no_bind = s
        .run_command(&["--no-bind"], &[PYTHON, "-c", &bind_to(s.port)])
        .output()
        .unwrap();
    assert_eq!(stdout(&no_bind).trim(), libc::EACCES.to_string());
}

#[test]
fn exit_status_and_signals_pass_through() {
    let Some(s) = Setup::new() else { return };
    assert_eq!(s.run(&["/bin/sh", "-c", "exit 7"]).status.code(), Some(7));
    let killed = s.run(&["/bin/sh", "-c", "kill -USR1 $$"]);
    assert_eq!(killed.status.signal(), Some(libc::SIGUSR1));

    let script = "import signal, sys\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\nprint('ready', flush=True)\nsignal.pause()";
    let mut child = s
        .run_command(&[], &[PYTHON, "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(42));
}

#[test]
fn a_command_killed_by_a_real_time_signal_ends_run_with_it() {
    // Signal 40 is real-time whichever libc (glibc's SIGRTMIN is 34,
    // musl's 35): nix's `WaitStatus` has no variant for it.
    let Some(s) = Setup::new() else { return };
    let killed = s.run(&["/bin/sh", "-c", "kill -40 $$"]);
    assert_eq!(
        killed.status.signal(),
        Some(40),
        "{:?}: {}",
        killed.status,
        String::from_utf8_lossy(&killed.stderr)
    );
}

#[test]
fn the_program_gets_no_descriptor_it_did_not_ask_for() {
    let Some(s) = Setup::new() else { return };
    let script = "import os\nprint(sorted(os.listdir('/proc/self/fd')))";
    let with = stdout(&s.run(&[PYTHON, "-c", script]));
    let without = stdout(&direct(&[PYTHON, "-c", script]));
    assert_eq!(with, without);
}

#[test]
fn descendants_outliving_the_command_are_still_served() {
    let Some(s) = Setup::new() else { return };
    // The orphan waits until its parent is gone (reaped by run), then
    // opens through the broker; run must wait for it.
    let line = format!(
        "p=$$; (while kill -0 $p 2>/dev/null; do :; done; cat {}) & exit 3",
        s.path("srv/secret")
    );
    let out = s.run(&["/bin/sh", "-c", &line]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "secret-data\n");
}

#[test]
fn a_task_that_changed_its_identity_is_left_alone() {
    let Some(s) = Setup::new() else { return };
    // run as root; the program becomes nobody before it opens: the
    // broker must not open for nobody what the server grants root.
    let script = format!(
        "import os\nos.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\ntry:\n open('{}')\n print('opened')\nexcept OSError as e:\n print(e.errno)",
        s.path("srv/secret")
    );
    let out = Command::new(&s.client)
        .arg("--socket")
        .arg(&s.server.socket)
        .args(["run", "--", PYTHON, "-c", &script])
        .output()
        .unwrap();
    assert_eq!(assert_ok(&out).trim(), libc::EACCES.to_string());
}

/// One call the server is slow to answer holds up no other trapped call
/// (SPEC §8: every supervised process keeps being served): `run` receives
/// on one thread for speed, and a spare thread takes the other calls over
/// while that one waits. A stand-in server never answers the open; the
/// shell's later calls must still be answered. Any uid.
#[test]
fn a_call_the_server_is_slow_to_answer_holds_up_no_other_call() {
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = common::scratch();
    let slow = dir.path().join("slow");
    fs::write(&slow, "slow\n").unwrap();
    let go = dir.path().join("go");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let socket = dir.path().join("stand-in.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (asked, open_asked) = mpsc::channel();
    let scope = serde_json::json!({"ok": true, "binds": [],
        "paths": [{"glob": glob(&slow), "modes": ["read"], "create": false}]});
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let (stream, asked, scope) = (stream.unwrap(), asked.clone(), scope.clone());
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines() {
                    let request: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
                    let answer = match request["op"].as_str() {
                        Some("hello") => serde_json::json!({"ok": true, "server": "fdopen"}),
                        Some("scope") => scope.clone(),
                        // The open is never answered.
                        _ => {
                            let _ = asked.send(request);
                            continue;
                        }
                    };
                    writeln!(out, "{answer}").unwrap();
                }
            });
        }
    });

    let script = format!(
        "cat {} >/dev/null & read x < {}; stat -c answered /dev/null; kill $!; wait",
        slow.display(),
        go.display()
    );
    let mut run = Command::new(client_under_test())
        .arg("--socket")
        .arg(&socket)
        .args(["run", "--", "/bin/sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let request = open_asked
        .recv_timeout(Duration::from_secs(20))
        .expect("cat's open reaches the server");
    assert_eq!(request["op"], "open");
    // Opening the FIFO blocks until the shell opens it, itself a trapped
    // call; on a thread of its own, so that a hang fails the test below.
    std::thread::spawn(move || fs::write(go, "go\n"));
    let status = common::wait_timeout(&mut run, Duration::from_secs(20))
        .expect("the shell's calls are answered while the open waits");
    let mut out = String::new();
    run.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(out, "answered\n");
}

/// `fdopen-client --socket SOCKET run [extra] -- touch MARK`, as this
/// user, with `MARK` beside the socket: it exists afterwards only if
/// the command ran.
fn touch_under_run(socket: &std::path::Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(client_under_test());
    cmd.arg("--socket")
        .arg(socket)
        .arg("run")
        .args(extra)
        .args(["--", "/usr/bin/touch"])
        .arg(socket.with_file_name("started"));
    cmd
}

/// [`touch_under_run`] where the command must never start, `run` saying
/// `why` on stderr; returns how it ended.
fn never_starts(socket: &std::path::Path, extra: &[&str], why: &str) -> Output {
    let out = touch_under_run(socket, extra).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(why),
        "{out:?}"
    );
    assert!(
        !socket.with_file_name("started").exists(),
        "the command ran"
    );
    out
}

/// Without a server, the command never starts: the child waits for the
/// broker thread's word before it execs (`run` asks the server while the
/// child forks). Any uid.
#[test]
fn without_a_server_the_command_never_starts() {
    let dir = common::scratch();
    let socket = dir.path().join("nobody-listens.sock");
    let out = never_starts(&socket, &[], "no server answers");
    assert!(!out.status.success());
}

/// A server at its `--max-clients` answers `run`'s connection `busy` and
/// closes it: the command never starts, and `run` says why, as `hello`
/// does, whether its questions went out before the close or not (the
/// runs race the server's close). Any uid.
#[test]
fn a_busy_server_is_named_and_the_command_never_starts() {
    let server = common::TestServer::start(r#"{"rules":[]}"#, &["--max-clients", "1"]);
    let mut admitted = server.client();
    assert_eq!(
        common::ask(&mut admitted, r#"{"op":"hello"}"#).0["ok"],
        true
    );
    for _ in 0..20 {
        let out = never_starts(&server.socket, &[], "busy: too many clients");
        assert_eq!(out.status.code(), Some(1), "{out:?}");
    }
}

/// A `--broker` glob that does not compile is a usage error (exit 2),
/// said before anything starts: no server is asked (none listens here,
/// which would be exit 3) and the command never runs. Any uid.
#[test]
fn a_bad_broker_glob_is_a_usage_error_before_anything_starts() {
    let dir = common::scratch();
    let socket = dir.path().join("nobody-listens.sock");
    let out = never_starts(&socket, &["--broker", "/srv/["], "bad --broker glob");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// The command dies with its supervisor (`PR_SET_PDEATHSIG`): without
/// it, its next trapped call would fail. `run` is killed outright once
/// the command has started and waits in a shell builtin; the command
/// must end too. Any uid.
#[test]
fn the_command_dies_with_a_killed_supervisor() {
    let server = common::TestServer::start(r#"{"rules":[]}"#, &[]);
    let mut run = Command::new(client_under_test())
        .arg("--socket")
        .arg(&server.socket)
        .args(["run", "--", "/bin/sh", "-c", "echo $$; read line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The shell waits on this pipe, held open until the end, making no
    // call that traps: only the death signal can end it.
    let _held = run.stdin.take();
    let mut pid = String::new();
    BufReader::new(run.stdout.take().unwrap())
        .read_line(&mut pid)
        .unwrap();
    let pid: i32 = pid.trim().parse().unwrap();
    // SAFETY: pidfd_open with integer arguments; the result is ours.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    assert!(pidfd >= 0, "{}", std::io::Error::last_os_error());
    run.kill().unwrap();
    run.wait().unwrap();
    // Readable once the command has ended; ten seconds is "never".
    let mut ended = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own, then close of our own pidfd.
    let ready = unsafe { libc::poll(&mut ended, 1, 10_000) };
    unsafe { libc::close(pidfd) };
    assert_eq!(ready, 1, "the command outlived its supervisor");
}

/// `run`'s connection to a server played by the test, once `run` has
/// asked its two questions, `hello` then `scope`.
fn accept_questions(listener: &std::os::unix::net::UnixListener) -> std::os::unix::net::UnixStream {
    let (stream, _) = listener.accept().unwrap();
    let mut questions = BufReader::new(&stream).lines();
    assert!(questions.next().unwrap().unwrap().contains("hello"));
    assert!(questions.next().unwrap().unwrap().contains("scope"));
    stream
}

/// A server that takes the questions and never answers must not leave
/// `run` deaf: SIGTERM (or Ctrl-C's SIGINT) sent to it while it waits
/// ends it, dying of that signal, and the command, forked but not
/// exec'd, never starts. The server here is the test. Any uid.
#[test]
fn a_signal_while_the_server_does_not_answer_ends_run_and_the_command_never_starts() {
    let dir = common::scratch();
    let socket = dir.path().join("mute.sock");
    let mark = dir.path().join("started");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut run = touch_under_run(&socket, &[]).spawn().unwrap();
        // Both asked, neither answered, the connection open: run waits.
        let _stream = accept_questions(&listener);
        // SAFETY: kill with integer arguments, to our own child.
        unsafe { libc::kill(run.id() as i32, signal) };
        let status = common::wait_timeout(&mut run, std::time::Duration::from_secs(30))
            .expect("run ignored the signal while the server was mute");
        assert_eq!(status.signal(), Some(signal));
        assert!(!mark.exists(), "the command ran");
    }
}

/// A server that stops halfway, after the answer to `hello` or in the
/// middle of a line, must not leave `run` deaf either: SIGTERM sent once
/// `run` has read what came ends it, and the command never starts.
#[test]
fn a_signal_while_the_server_stops_halfway_ends_run_and_the_command_never_starts() {
    let dir = common::scratch();
    let socket = dir.path().join("halting.sock");
    let mark = dir.path().join("started");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let hello = "{\"ok\":true,\"server\":\"fdopen\",\"version\":\"0.2.0\",\"protocol\":3}\n";
    for said in [hello, "{\"ok\":tr"] {
        let mut run = touch_under_run(&socket, &[]).spawn().unwrap();
        let mut stream = accept_questions(&listener);
        stream.write_all(said.as_bytes()).unwrap();
        // Until run has read it all: nothing left unread on our side.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let mut unread: libc::c_int = 0;
            // SAFETY: SIOCOUTQ writes one int.
            let rc = unsafe {
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&stream),
                    libc::TIOCOUTQ,
                    &mut unread,
                )
            };
            assert_eq!(rc, 0, "SIOCOUTQ");
            if unread == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "run never read {said:?}"
            );
            std::thread::yield_now();
        }
        // SAFETY: kill with integer arguments, to our own child.
        unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
        let status = common::wait_timeout(&mut run, std::time::Duration::from_secs(30))
            .unwrap_or_else(|| panic!("run ignored SIGTERM after the server said {said:?}"));
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{said:?}");
        assert!(!mark.exists(), "the command ran");
        drop(stream);
    }
}
