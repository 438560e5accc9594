//! `fdopen-client run` never does what the program did not get (SPEC §8,
//! issue 19): no truncation or creation behind an open the program saw
//! fail, no directory it never named, no socket more exposed than its
//! own. Each test runs a small program as `nobody` against a root server,
//! with and without `run`, and checks what is left on disk. Root only.

mod common;

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{CLIENT, TestServer, glob, is_root};

const NOBODY: u32 = 65534;
/// The other unprivileged user of the confused-deputy test.
const DAEMON: u32 = 1;
const PYTHON: &str = "/usr/bin/python3";

/// A root server whose policy lets anyone write, truncate and create in
/// the root-only `w/`, only write in `nt/`, and read and truncate in
/// `pub/sub/`.
struct Setup {
    server: TestServer,
    /// A copy of fdopen-client that `nobody` can execute.
    client: PathBuf,
}

impl Setup {
    fn new() -> Option<Setup> {
        if !is_root() {
            eprintln!("skipped: run tests need root (a root server, a nobody client)");
            return None;
        }
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
                "truncate":true}}]}}"#,
            w = glob(&w),
            nt = glob(&nt),
            sub = glob(&sub),
        );
        let server = TestServer::start_in(dir, &policy, &["--socket-mode", "0666"]);
        // Copied by another process, so that no fork of a parallel test
        // inherits a descriptor open for writing on it (ETXTBSY).
        let client = server.path("fdopen-client");
        let copied = Command::new("install")
            .args(["-m", "0755", CLIENT])
            .arg(&client)
            .status()
            .unwrap();
        assert!(copied.success());
        Some(Setup { server, client })
    }

    /// A root-only file (0600) with `content`.
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.server.path(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// `fdopen-client run -- program`, as nobody.
    fn run_command(&self, program: &[&str]) -> Command {
        let mut cmd = as_user(self.client.to_str().unwrap(), NOBODY);
        cmd.arg("--socket")
            .arg(&self.server.socket)
            .arg("run")
            .arg("--")
            .args(program);
        cmd
    }

    fn run(&self, program: &[&str]) -> Output {
        self.run_command(program).output().unwrap()
    }

    /// Builds `tests/programs/NAME.c`; `None` (said why) without a compiler.
    fn build(&self, name: &str) -> Option<String> {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
        let binary = self.server.path(name);
        match Command::new("cc")
            .arg("-O")
            .arg("-o")
            .arg(&binary)
            .arg(&source)
            .output()
        {
            Ok(out) if out.status.success() => Some(binary.to_str().unwrap().to_owned()),
            Ok(out) => {
                eprintln!(
                    "skipped: cc failed: {}",
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

/// `program` to be run as `uid` (its group too, no supplementary ones).
fn as_user(program: &str, uid: u32) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir("/");
    // SAFETY: only async-signal-safe calls; groups first, uid last.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(uid))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
            Ok(())
        });
    }
    cmd
}

/// The same program as nobody, without `run`.
fn direct(program: &[&str]) -> Output {
    as_user(program[0], NOBODY)
        .args(&program[1..])
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `fullopen ARGS` with and without `run`: both must print `expected`.
#[track_caller]
fn same_result(s: &Setup, fullopen: &str, args: &[&str], expected: &str) {
    let mut program = vec![fullopen];
    program.extend_from_slice(args);
    let without = direct(&program);
    assert_eq!(stdout(&without), expected, "without run: {without:?}");
    let with = s.run(&program);
    assert_eq!(stdout(&with), expected, "under run: {with:?}");
}

#[test]
fn a_full_descriptor_table_truncates_nothing() {
    let Some(s) = Setup::new() else { return };
    let Some(fullopen) = s.build("fullopen") else {
        return;
    };
    let file = s.file("w/precious", "precious-data\n");
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
    let Some(s) = Setup::new() else { return };
    let Some(fullopen) = s.build("fullopen") else {
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
    let Some(s) = Setup::new() else { return };
    let Some(fullopen) = s.build("fullopen") else {
        return;
    };
    let file = s.file("w/owned-by-root", "precious-data\n");
    let args = [file.to_str().unwrap(), "wronly", "trunc", "noatime"];
    same_result(&s, &fullopen, &args, "EACCES\n");
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious-data\n");
}

#[test]
fn a_brokered_truncation_comes_before_the_program_writes() {
    let Some(s) = Setup::new() else { return };
    let Some(fullopen) = s.build("fullopen") else {
        return;
    };
    let file = s.file("w/log", "a much longer old content\n");
    let path = file.to_str().unwrap();
    for _ in 0..20 {
        let out = s.run(&[&fullopen, path, "wronly", "trunc", "--write", "new\n"]);
        assert_eq!(stdout(&out), "fd\n", "{out:?}");
        assert_eq!(fs::read_to_string(&file).unwrap(), "new\n");
    }
}

#[test]
fn truncation_stays_the_servers_to_grant() {
    let Some(s) = Setup::new() else { return };
    let Some(fullopen) = s.build("fullopen") else {
        return;
    };
    // `nt/` may be written, not truncated: asking without `truncate` and
    // truncating its own copy must not let the supervisor do more.
    let file = s.file("nt/kept", "kept-data\n");
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

fn overmount(s: &Setup) -> Option<Overmounted> {
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

/// `cmd` with `fd` as its descriptor 3.
fn with_fd_3(cmd: &mut Command, fd: BorrowedFd<'_>) {
    let raw = fd.as_raw_fd();
    // SAFETY: dup2 only, after the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn a_directory_fd_from_another_mount_namespace_is_not_the_path_it_shows() {
    let Some(s) = Setup::new() else { return };
    let data = s.file("pub/sub/data.txt", "real-data\n");
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
    let mut with = s.run_command(&[PYTHON, "-c", script]);
    with_fd_3(&mut with, over.fd.as_fd());
    let with = with.output().unwrap();
    assert_eq!(stdout(&with), enoent, "{with:?}");
    assert_eq!(fs::read_to_string(&data).unwrap(), "real-data\n");
    drop(over);
    // The same calls on the real directory are brokered.
    let real = OwnedFd::from(fs::File::open(s.server.path("pub/sub")).unwrap());
    let mut again = s.run_command(&[PYTHON, "-c", script]);
    with_fd_3(&mut again, real.as_fd());
    let again = again.output().unwrap();
    assert_eq!(
        stdout(&again),
        "b'real-data\\n'\nopened\nb''\nopened\n",
        "{again:?}"
    );
}
