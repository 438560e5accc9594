//! `fdopen-client run` (SPEC §8): unchanged programs, run as `nobody`
//! against a root server, read and append files `nobody` cannot open
//! itself. Root only (other uids); each test says why it skips.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{CLIENT, TestServer, glob, is_root};

const NOBODY: u32 = 65534;
const PYTHON: &str = "/usr/bin/python3";

/// A root server with a root-only directory `srv/` (0711, files 0600):
/// `srv/*` is readable through the policy except `denied` (a deny rule)
/// and `big` (over `max_size`); `log/*.log` may be appended to and created.
struct Setup {
    server: TestServer,
    /// A copy of fdopen-client that `nobody` can execute wherever the
    /// build tree lives.
    client: PathBuf,
    /// A privileged port free when the test started, the one `bind` rule
    /// allows (never a fixed one such as 80, which a web server may hold).
    port: u16,
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
        let server = TestServer::start_in(dir, &policy, &["--socket-mode", "0666"]);
        // Copied by another process: had this one opened the copy for
        // writing, a fork by a parallel test could inherit that descriptor
        // until its exec, and running the copy would fail with ETXTBSY.
        let client = server.path("fdopen-client");
        let copied = Command::new("install")
            .args(["-m", "0755", CLIENT])
            .arg(&client)
            .status()
            .unwrap();
        assert!(copied.success());
        Some(Setup {
            server,
            client,
            port,
        })
    }

    fn path(&self, name: &str) -> String {
        self.server.path(name).to_str().unwrap().to_owned()
    }

    /// `fdopen-client run [extra] -- program args`, as nobody.
    fn run_command(&self, extra: &[&str], program: &[&str]) -> Command {
        let mut cmd = as_nobody(self.client.to_str().unwrap());
        cmd.arg("--socket")
            .arg(&self.server.socket)
            .arg("run")
            .args(extra)
            .arg("--")
            .args(program);
        cmd
    }

    fn run(&self, program: &[&str]) -> Output {
        self.run_command(&[], program).output().unwrap()
    }

    /// Builds `tests/programs/NAME.c` into the scratch directory; `None`
    /// (with the reason printed) when the compiler or, for `-static`, a
    /// static libc is missing.
    fn build(&self, name: &str, flags: &[&str]) -> Option<String> {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
        let binary = self.server.path(&format!("{name}{}", flags.join("")));
        let built = Command::new("cc")
            .args(["-O", "-pthread", "-o"])
            .arg(&binary)
            .arg(&source)
            .args(flags)
            .output();
        match built {
            Ok(out) if out.status.success() => Some(binary.to_str().unwrap().to_owned()),
            Ok(out) => {
                eprintln!(
                    "skipped: cc {flags:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: no C compiler: {e}");
                None
            }
        }
    }
}

fn as_nobody(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir("/");
    // SAFETY: only async-signal-safe calls; groups first, uid last.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(NOBODY))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(NOBODY))?;
            Ok(())
        });
    }
    cmd
}

/// The same program as nobody, without `run`.
fn direct(program: &[&str]) -> Output {
    as_nobody(program[0]).args(&program[1..]).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
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
