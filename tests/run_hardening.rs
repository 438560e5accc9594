//! `fdopen-client run` never does what the program did not get (SPEC §8,
//! issue 19): no truncation or creation behind an open the program saw
//! fail, no directory it never named, no socket more exposed than its
//! own. Each test runs a small program as `nobody` against a root server,
//! with and without `run`, and checks what is left on disk. Root only.

mod common;
#[path = "common/supervised.rs"]
mod supervised;

use std::fs;
use std::net::{Ipv6Addr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::glob;
use supervised::{NOBODY, Supervised, as_user, direct, stdout};

/// The other unprivileged user of the confused-deputy test.
const DAEMON: u32 = 1;
const PYTHON: &str = "/usr/bin/python3";

/// A root server whose policy lets anyone write, truncate and create in
/// the root-only `w/`, only write in `nt/`, read and truncate in
/// `pub/sub/`, and, given a port, bind it on 127.0.0.1 and ::1.
fn start(port: Option<u16>) -> Option<Supervised> {
    let dir = common::scratch();
    let root = dir.path();
    let w = root.join("w");
    fs::create_dir(&w).unwrap();
    let sub = root.join("pub/sub");
    fs::create_dir_all(&sub).unwrap();
    let nt = root.join("nt");
    fs::create_dir(&nt).unwrap();
    let policy = format!(
        r#"{{"rules":[
          {{"name":"w","effect":"allow","paths":["{w}/*"],"modes":["write","readwrite"],
            "create":true,"truncate":true,"create_perm":"0644"}},
          {{"name":"nt","effect":"allow","paths":["{nt}/*"],"modes":["write"]}},
          {{"name":"pub","effect":"allow","paths":["{sub}/*"],"modes":["read","write"],
            "truncate":true}}{web}]}}"#,
        w = glob(&w),
        nt = glob(&nt),
        sub = glob(&sub),
        web = port.map_or(String::new(), |port| format!(
            r#",{{"name":"web","effect":"allow","binds":["tcp:127.0.0.1:{port}","tcp:[::1]:{port}"]}}"#
        )),
    );
    Supervised::start(dir, &policy)
}

/// A setup with `tests/programs/NAME.c` built; `None` (said why) to skip.
fn with_program(name: &str) -> Option<(Supervised, String)> {
    let s = start(None)?;
    let program = s.build(name, &[])?;
    Some((s, program))
}

/// A root-only file (0600) with `content`.
fn root_file(s: &Supervised, name: &str, content: &str) -> PathBuf {
    let path = s.server.path(name);
    fs::write(&path, content).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `fullopen ARGS` with and without `run`: both must print `expected`.
#[track_caller]
fn same_result(s: &Supervised, fullopen: &str, args: &[&str], expected: &str) {
    let mut program = vec![fullopen];
    program.extend_from_slice(args);
    let without = direct(&program);
    assert_eq!(stdout(&without), expected, "without run: {without:?}");
    let with = s.run(&program);
    assert_eq!(stdout(&with), expected, "under run: {with:?}");
}

#[test]
fn a_full_descriptor_table_truncates_nothing() {
    let Some((s, fullopen)) = with_program("fullopen") else {
        return;
    };
    let file = root_file(&s, "w/precious", "precious-data\n");
    let path = file.to_str().unwrap();
    same_result(
        &s,
        &fullopen,
        &["--full", path, "wronly", "trunc"],
        "EMFILE\n",
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious-data\n");
    same_result(
        &s,
        &fullopen,
        &["--full", path, "rdwr", "trunc", "creat"],
        "EMFILE\n",
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious-data\n");
}

#[test]
fn a_full_descriptor_table_creates_nothing() {
    let Some((s, fullopen)) = with_program("fullopen") else {
        return;
    };
    let file = s.server.path("w/new");
    let path = file.to_str().unwrap();
    let excl = ["--full", path, "wronly", "creat", "excl"];
    same_result(&s, &fullopen, &excl, "EMFILE\n");
    assert!(!file.exists(), "created behind the program's EMFILE");
    // With room, the same call is brokered: the file is the program's.
    assert_eq!(
        stdout(&s.run(&[&fullopen, path, "wronly", "creat", "excl"])),
        "fd\n"
    );
    assert!(file.exists());
}

#[test]
fn noatime_on_a_file_of_another_owner_truncates_nothing() {
    let Some((s, fullopen)) = with_program("fullopen") else {
        return;
    };
    let file = root_file(&s, "w/owned-by-root", "precious-data\n");
    let args = [file.to_str().unwrap(), "wronly", "trunc", "noatime"];
    same_result(&s, &fullopen, &args, "EACCES\n");
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious-data\n");
}

#[test]
fn a_brokered_truncation_comes_before_the_program_writes() {
    let Some((s, fullopen)) = with_program("fullopen") else {
        return;
    };
    let file = root_file(&s, "w/log", "a much longer old content\n");
    let path = file.to_str().unwrap();
    for _ in 0..20 {
        let out = s.run(&[&fullopen, path, "wronly", "trunc", "--write", "new\n"]);
        assert_eq!(stdout(&out), "fd\n", "{out:?}");
        assert_eq!(fs::read_to_string(&file).unwrap(), "new\n");
    }
}

#[test]
fn truncation_stays_the_servers_to_grant() {
    let Some((s, fullopen)) = with_program("fullopen") else {
        return;
    };
    // `nt/` may be written, not truncated: asking without `truncate` and
    // truncating its own copy must not let the supervisor do more.
    let file = root_file(&s, "nt/kept", "kept-data\n");
    let path = file.to_str().unwrap();
    same_result(&s, &fullopen, &[path, "wronly", "trunc"], "EACCES\n");
    assert_eq!(fs::read_to_string(&file).unwrap(), "kept-data\n");
    assert_eq!(stdout(&s.run(&[&fullopen, path, "wronly"])), "fd\n");
}

/// A directory that `daemon`, in its own user and mount namespace, has
/// mounted a tmpfs over: the fd of `pub/sub` inside that tmpfs, and the
/// process keeping the namespace alive until dropped.
struct Overmounted {
    fd: OwnedFd,
    keeper: std::process::Child,
    _line: UnixStream,
}

impl Drop for Overmounted {
    fn drop(&mut self) {
        let _ = self.keeper.kill();
        let _ = self.keeper.wait();
    }
}

fn overmount(s: &Supervised) -> Option<Overmounted> {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let public = s.server.path("pub");
    let script = format!(
        r#"import os, socket, subprocess
subprocess.run(["mount", "-t", "tmpfs", "none", "{public}"], check=True)
os.mkdir("{public}/sub")
fd = os.open("{public}/sub", os.O_RDONLY | os.O_DIRECTORY)
line = socket.socket(fileno=3)
socket.send_fds(line, [b"x"], [fd])
line.recv(1)
"#,
        public = public.display()
    );
    let mut cmd = as_user("/usr/bin/unshare", DAEMON);
    cmd.args(["-Urm", PYTHON, "-c", &script])
        .stderr(Stdio::piped());
    with_fd_3(&mut cmd, theirs.as_fd());
    let mut keeper = cmd.spawn().unwrap();
    drop(theirs);
    let mut byte = [0u8; 1];
    let received = fdopen::fdpass::recv(ours.as_fd(), &mut byte);
    match received.ok().and_then(|r| r.fds.into_iter().next()) {
        Some(fd) => Some(Overmounted {
            fd,
            keeper,
            _line: ours,
        }),
        None => {
            let _ = keeper.kill();
            let out = keeper.wait_with_output().unwrap();
            eprintln!(
                "skipped: unshare -Urm as an unprivileged user failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            None
        }
    }
}

/// `cmd` with `fd` as its descriptor 3. An `fd` that already is 3 keeps
/// its close-on-exec flag through `dup2` (which then does nothing): that
/// one is cleared instead, or the command would get no fd 3 at all.
fn with_fd_3(cmd: &mut Command, fd: BorrowedFd<'_>) {
    let raw = fd.as_raw_fd();
    // SAFETY: dup2 or fcntl only, after the fork.
    unsafe {
        cmd.pre_exec(move || {
            let done = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 3)
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn a_directory_fd_from_another_mount_namespace_is_not_the_path_it_shows() {
    let Some(s) = start(None) else { return };
    let data = root_file(&s, "pub/sub/data.txt", "real-data\n");
    let Some(over) = overmount(&s) else { return };
    // Relative to fd 3, then relative to the cwd after fchdir to it; the
    // real file's content, were it read, and the errno otherwise.
    let script = r#"import os
def attempt(flags, dir_fd=None):
    try:
        fd = os.open("data.txt", flags, dir_fd=dir_fd)
        print(os.read(fd, 100) if flags == os.O_RDONLY else "opened")
    except OSError as e:
        print(e.errno)
for flags in [os.O_RDONLY, os.O_WRONLY | os.O_TRUNC]:
    attempt(flags, dir_fd=3)
os.fchdir(3)
for flags in [os.O_RDONLY, os.O_WRONLY | os.O_TRUNC]:
    attempt(flags)
"#;
    let mut without = as_user(PYTHON, NOBODY);
    without.args(["-c", script]);
    with_fd_3(&mut without, over.fd.as_fd());
    let without = without.output().unwrap();
    let enoent = format!("{}\n", libc::ENOENT).repeat(4);
    assert_eq!(stdout(&without), enoent, "{without:?}");
    let mut with = s.run_command(&[], &[PYTHON, "-c", script]);
    with_fd_3(&mut with, over.fd.as_fd());
    let with = with.output().unwrap();
    assert_eq!(stdout(&with), enoent, "{with:?}");
    assert_eq!(fs::read_to_string(&data).unwrap(), "real-data\n");
    drop(over);
    // The same calls on the real directory are brokered.
    let real = OwnedFd::from(fs::File::open(s.server.path("pub/sub")).unwrap());
    let mut again = s.run_command(&[], &[PYTHON, "-c", script]);
    with_fd_3(&mut again, real.as_fd());
    let again = again.output().unwrap();
    assert_eq!(
        stdout(&again),
        "b'real-data\\n'\nopened\nb''\nopened\n",
        "{again:?}"
    );
}

/// A privileged port free on 127.0.0.1 and ::1 right now, from `from`
/// up: each test has a range of its own, as tests run in parallel.
fn free_privileged_port(from: u16) -> Option<u16> {
    let port = (from..from + 30).find(|&p| {
        TcpListener::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind((Ipv6Addr::LOCALHOST, p)).is_ok()
    });
    if port.is_none() {
        eprintln!("skipped: no free port in {from}..{}", from + 30);
    }
    port
}

/// For bind tests: a setup granting a privileged port found free from
/// `from` up, `binder` built, and the port as text.
fn binding(from: u16) -> Option<(Supervised, String, String)> {
    let port = free_privileged_port(from)?;
    let s = start(Some(port))?;
    let binder = s.build("binder", &[])?;
    Some((s, binder, port.to_string()))
}

/// `binder ARGS` under run and without: (with, without).
fn bind_both(s: &Supervised, binder: &str, args: &[&str]) -> (String, String) {
    let mut program = vec![binder];
    program.extend_from_slice(args);
    (stdout(&s.run(&program)), stdout(&direct(&program)))
}

#[test]
fn a_socket_bound_to_a_device_filtered_or_with_a_ttl_floor_stays_so() {
    let Some((s, binder, port)) = binding(900) else {
        return;
    };
    let (with, without) = bind_both(&s, &binder, &["4", &port, "16", "device"]);
    assert_eq!(without, "EACCES\n");
    assert_eq!(
        with,
        format!("bound port={port} device=lo filter=0 locked=0 minttl=0\n")
    );
    let (with, _) = bind_both(&s, &binder, &["6", &port, "28", "minttl"]);
    assert_eq!(
        with,
        format!("bound port={port} device= filter=0 locked=0 minttl=255\n")
    );
    let (with, _) = bind_both(&s, &binder, &["4", &port, "16"]);
    assert_eq!(
        with,
        format!("bound port={port} device= filter=0 locked=0 minttl=0\n")
    );
    // Some kernels refuse SO_ATTACH_FILTER to an unprivileged socket;
    // the supervisor, with the program's rights, could not copy it then.
    let (with, without) = bind_both(&s, &binder, &["4", "0", "16", "filter"]);
    if !without.starts_with("bound") {
        eprintln!("skipped the filter: nobody cannot attach one here");
        return;
    }
    assert!(with.starts_with("bound"), "{with}");
    let (with, _) = bind_both(&s, &binder, &["4", &port, "16", "device", "filter"]);
    assert_eq!(
        with,
        format!("bound port={port} device=lo filter=1 locked=1 minttl=0\n")
    );
}

#[test]
fn an_rfc2133_ipv6_address_is_brokered_like_a_full_one() {
    let Some((s, binder, port)) = binding(930) else {
        return;
    };
    for len in ["24", "28"] {
        let (with, without) = bind_both(&s, &binder, &["6", &port, len]);
        assert_eq!(without, "EACCES\n", "{len}");
        assert_eq!(
            with,
            format!("bound port={port} device= filter=0 locked=0 minttl=0\n"),
            "{len}"
        );
    }
}

#[test]
fn an_address_length_the_kernel_refuses_gets_its_einval() {
    let Some((s, binder, port)) = binding(960) else {
        return;
    };
    for (family, len) in [
        ("4", "129"),
        ("4", "-1"),
        ("4", "15"),
        ("6", "23"),
        ("6", "129"),
    ] {
        let (with, without) = bind_both(&s, &binder, &[family, &port, len]);
        assert_eq!(
            (with.as_str(), without.as_str()),
            ("EINVAL\n", "EINVAL\n"),
            "{family} {len}"
        );
    }
    let granted: Vec<_> = s
        .server
        .audit_lines()
        .into_iter()
        .filter(|r| r["op"] == "bind")
        .collect();
    assert!(granted.is_empty(), "asked the server: {granted:?}");
}
