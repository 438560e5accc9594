//! Shared helpers: start the real `fdopen-server` on a temporary socket,
//! wait for its readiness notification (never a sleep), and talk to it.
#![allow(dead_code)]

pub mod as_user;
pub mod fake_systemd;
pub mod fuse;
pub mod tree;
pub mod upgrade;

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fdopen::client::Client;
use serde_json::Value;
use tempfile::TempDir;

pub const SERVER: &str = env!("CARGO_BIN_EXE_fdopen-server");
pub const CLIENT: &str = env!("CARGO_BIN_EXE_fdopen-client");

/// The client every test that runs `fdopen-client` drives:
/// `FDOPEN_TEST_CLIENT` if set (`make test` sets it to the static musl
/// build that `make build` ships, for a second pass), else this build's.
pub fn client_under_test() -> String {
    std::env::var("FDOPEN_TEST_CLIENT").unwrap_or_else(|_| CLIENT.to_owned())
}

/// A scratch directory whose path is safe to put in a glob.
///
/// Files the tests write get the usual 0644/0755 whatever umask the test
/// runner came with: a group-writable policy is refused (SPEC §5).
pub fn scratch() -> TempDir {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let dir = tempfile::Builder::new()
        .prefix("fdopen-test")
        .tempdir()
        .unwrap();
    // Let other uids (user/group tests) reach the socket and files inside.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Escapes a path for use inside a policy glob.
pub fn glob(path: &Path) -> String {
    globset::escape(path.to_str().unwrap())
}

pub struct TestServer {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub policy: PathBuf,
    pub audit: PathBuf,
    pub child: Option<Child>,
    pub stderr: PathBuf,
    /// Where the server's sd_notify messages arrive.
    pub notify: UnixDatagram,
    /// What must go after the server and before its directory: mounts
    /// inside it (a mounted directory cannot be removed).
    guards: Vec<Box<dyn std::any::Any>>,
}

impl TestServer {
    /// Starts a server on `policy` (JSON text) with extra `serve` flags.
    pub fn start(policy: &str, extra: &[&str]) -> TestServer {
        Self::start_in(scratch(), policy, extra)
    }

    pub fn start_in(dir: TempDir, policy: &str, extra: &[&str]) -> TestServer {
        Self::start_with_fd_limit(dir, policy, extra, None)
    }

    /// Like [`start_in`], with `RLIMIT_NOFILE` set to `(soft, hard)`.
    pub fn start_with_fd_limit(
        dir: TempDir,
        policy: &str,
        extra: &[&str],
        limit: Option<(u64, u64)>,
    ) -> TestServer {
        let launch = Launch {
            fd_limit: limit,
            ..Launch::default()
        };
        Self::launch(dir, policy, extra, launch)
    }

    /// Like [`start_in`], with the server's umask set to `mask`.
    pub fn start_with_umask(dir: TempDir, policy: &str, extra: &[&str], mask: u32) -> TestServer {
        let launch = Launch {
            umask: Some(mask),
            ..Launch::default()
        };
        Self::launch(dir, policy, extra, launch)
    }

    /// Like [`start_in`], with `env` added to the server's environment.
    pub fn start_with_env(
        dir: TempDir,
        policy: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TestServer {
        let launch = Launch {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Launch::default()
        };
        Self::launch(dir, policy, extra, launch)
    }

    /// Like [`start_in`], running `program` (a copy of the server, say)
    /// instead of the one cargo built.
    pub fn start_program(dir: TempDir, program: &Path, policy: &str, extra: &[&str]) -> TestServer {
        let program = program.to_str().unwrap();
        Self::launch_program(dir, program, policy, extra, Launch::default())
    }

    fn launch(dir: TempDir, policy: &str, extra: &[&str], launch: Launch) -> TestServer {
        Self::launch_program(dir, SERVER, policy, extra, launch)
    }

    fn launch_program(
        dir: TempDir,
        program: &str,
        policy: &str,
        extra: &[&str],
        launch: Launch,
    ) -> TestServer {
        let mut server = Self::unstarted(dir, policy);
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--socket".into(),
            server.socket.to_str().unwrap().into(),
            "--policy".into(),
            server.policy.to_str().unwrap().into(),
            "--audit-log".into(),
            server.audit.to_str().unwrap().into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(program);
        cmd.args(&args);
        server.child = Some(spawn_on(cmd, &server.notify, &server.stderr, launch));
        server
    }

    /// A server's directory, policy and notify socket, with no server
    /// yet: for a test that starts it its own way (as a service manager
    /// would, say).
    pub fn unstarted(dir: TempDir, policy: &str) -> TestServer {
        let policy_path = dir.path().join("policy.json");
        fs::write(&policy_path, policy).unwrap();
        TestServer {
            socket: dir.path().join("fdopen.sock"),
            policy: policy_path,
            audit: dir.path().join("audit.log"),
            child: None,
            stderr: dir.path().join("server.stderr"),
            notify: notify_socket(dir.path()),
            dir,
            guards: Vec::new(),
        }
    }

    /// Keeps `guard` (a mount in the server's directory, say) until the
    /// server has exited, and drops it before the directory is removed;
    /// guards go in the reverse order of being held, as locals do.
    pub fn hold(&mut self, guard: impl std::any::Any) {
        self.guards.push(Box::new(guard));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// A client whose reads give up after 30 s, so a server bug fails a
    /// test instead of hanging it.
    pub fn client(&self) -> Client {
        Client::from_stream(self.connect())
    }

    pub fn connect(&self) -> UnixStream {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
    }

    /// Sends one raw line and returns the parsed response and any fd.
    pub fn ask(&self, line: &str) -> (Value, Option<OwnedFd>) {
        let mut c = self.client();
        ask(&mut c, line)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn audit_lines(&self) -> Vec<Value> {
        fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `signal` and waits for the exit status.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        wait_timeout(&mut child, Duration::from_secs(20)).expect("server exits")
    }

    /// Waits for the next notification that starts with `prefix`.
    pub fn wait_notify(&self, prefix: &str) -> String {
        self.wait_notify_any(&[prefix])
    }

    /// Waits for the next notification that starts with one of `prefixes`.
    pub fn wait_notify_any(&self, prefixes: &[&str]) -> String {
        let mut buf = [0u8; 1024];
        loop {
            let n = recv_retrying(&self.notify, &mut buf).expect("server notification");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if prefixes.iter().any(|p| text.starts_with(p)) {
                return text;
            }
        }
    }

    /// SIGHUP, then waits until the server says it is ready again.
    pub fn reload(&self) {
        self.signal(nix::sys::signal::Signal::SIGHUP);
        self.wait_notify("RELOADING=1");
        self.wait_notify("READY=1");
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        while let Some(guard) = self.guards.pop() {
            drop(guard);
        }
    }
}

/// A privileged TCP and UDP port free on 127.0.0.1 right now, from
/// `from` up: never a fixed port, which another program may hold (80,
/// 443), and each test its own range, as tests run in parallel.
pub fn free_privileged_port(from: u16) -> u16 {
    use std::net::{TcpListener, UdpSocket};
    (from..from + 100)
        .find(|&p| {
            TcpListener::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.1", p)).is_ok()
        })
        .expect("a free port below 1024")
}

/// Spawns `program args` with a NOTIFY_SOCKET and waits for `READY=1`.
pub fn spawn_ready(dir: &Path, program: &str, args: &[String], stderr: &Path) -> Child {
    spawn_ready_limited(dir, program, args, stderr, None)
}

pub fn spawn_ready_limited(
    dir: &Path,
    program: &str,
    args: &[String],
    stderr: &Path,
    fd_limit: Option<(u64, u64)>,
) -> Child {
    let launch = Launch {
        fd_limit,
        ..Launch::default()
    };
    spawn_notifying(dir, program, args, stderr, launch).0
}

/// What a server process starts with besides its arguments.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// `RLIMIT_NOFILE` as `(soft, hard)`.
    pub fd_limit: Option<(u64, u64)>,
    pub umask: Option<u32>,
    /// Added to its environment.
    pub env: Vec<(String, String)>,
}

/// Spawns and waits for `READY=1`; returns the notify socket too, for the
/// `RELOADING=1`/`READY=1` of later reloads.
pub fn spawn_notifying(
    dir: &Path,
    program: &str,
    args: &[String],
    stderr: &Path,
    launch: Launch,
) -> (Child, UnixDatagram) {
    let notify = notify_socket(dir);
    let mut cmd = Command::new(program);
    cmd.args(args);
    let child = spawn_on(cmd, &notify, stderr, launch);
    (child, notify)
}

/// A socket in `dir` for a server's sd_notify messages.
pub fn notify_socket(dir: &Path) -> UnixDatagram {
    let notify_path = dir.join(format!("notify-{}.sock", std::process::id()));
    let _ = fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    notify
}

/// Spawns `cmd` as a server telling `notify` about itself, and waits for
/// its `READY=1`.
pub fn spawn_on(mut cmd: Command, notify: &UnixDatagram, stderr: &Path, launch: Launch) -> Child {
    let notify_path = notify.local_addr().unwrap();
    let notify_path = notify_path.as_pathname().unwrap().to_owned();
    cmd
        // Hermetic: nothing from the caller's service manager leaks in.
        .env_remove("JOURNAL_STREAM")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(stderr).unwrap())
        .envs(launch.env.iter().map(|(k, v)| (k, v)));
    let (fd_limit, umask) = (launch.fd_limit, launch.umask);
    if fd_limit.is_some() || umask.is_some() {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit and umask are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if let Some((soft, hard)) = fd_limit {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        soft,
                        hard,
                    )?;
                }
                if let Some(mask) = umask {
                    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    let mut buf = [0u8; 64];
    match recv_retrying(notify, &mut buf) {
        Ok(n) if &buf[..n] == b"READY=1" => {}
        other => {
            let _ = child.kill();
            panic!(
                "server did not become ready ({other:?}): {}",
                fs::read_to_string(stderr).unwrap_or_default()
            );
        }
    }
    child
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn ask(client: &mut Client, line: &str) -> (Value, Option<OwnedFd>) {
    client.send_raw(format!("{line}\n").as_bytes()).unwrap();
    receive(client)
}

pub fn receive(client: &mut Client) -> (Value, Option<OwnedFd>) {
    let response = client.receive().unwrap();
    let value = serde_json::to_value(&response.line).unwrap();
    (value, response.fd)
}

/// `{"op":"open","path":P}` with an optional mode.
pub fn open_line(path: &Path, mode: Option<&str>) -> String {
    let mut v = serde_json::json!({"op": "open", "path": path.to_str().unwrap()});
    if let Some(m) = mode {
        v["mode"] = m.into();
    }
    v.to_string()
}

pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Runs the client binary against `socket`.
pub fn run_client(socket: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(client_under_test())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().unwrap()
}

/// A tmpfs of `size`, unmounted when dropped.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    /// A 64 KiB disk at `DIR/disk`, or `None` with the reason printed
    /// (not root, or no tmpfs here).
    pub fn in_or_skip(dir: &Path) -> Option<SmallDisk> {
        if !is_root() {
            eprintln!("skipped: mounting a small tmpfs needs root");
            return None;
        }
        SmallDisk::mount(&dir.join("disk"), "64k")
            .map_err(|e| eprintln!("skipped: {e}"))
            .ok()
    }

    pub fn mount(at: &Path, size: &str) -> Result<SmallDisk, String> {
        fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(SmallDisk(at.to_owned()))
        } else {
            Err(format!("mount -t tmpfs failed: {status}"))
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Panics, showing its stderr, unless the command succeeded.
pub fn assert_succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Count of open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// The exit code of a script for [`in_a_private_mount_namespace`] whose
/// mount failed (no privilege, no tmpfs here): the test skips.
pub const CANNOT_MOUNT: i32 = 99;

/// `sh -c SCRIPT sh ARGS...` (arguments added by the caller) in a mount
/// namespace of its own with private propagation, so that what the
/// script mounts is gone when it ends and never seen outside. The script
/// exits [`CANNOT_MOUNT`] when a mount fails.
pub fn in_a_private_mount_namespace(script: &str) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ]);
    cmd
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Makes `cmd` run as `uid`/`gid` with the supplementary `groups`
/// (root only): groups first, uid last, as each step needs the
/// privilege the next one drops.
pub fn as_ids<'a>(cmd: &'a mut Command, uid: u32, gid: u32, groups: &[u32]) -> &'a mut Command {
    use std::os::unix::process::CommandExt;
    let groups: Vec<nix::unistd::Gid> = groups
        .iter()
        .map(|&g| nix::unistd::Gid::from_raw(g))
        .collect();
    // SAFETY: only async-signal-safe calls after the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
            Ok(())
        })
    }
}

/// One connection of a scripted peer: answers each request line with
/// the next of `answers` until they run out or the client hangs up, and
/// keeps the requests in `seen`.
pub fn answer_lines(stream: UnixStream, answers: &mut VecDeque<Value>, seen: &mut Vec<Value>) {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    while !answers.is_empty() && reader.read_line(&mut line).unwrap() > 0 {
        seen.push(serde_json::from_str(&line).unwrap());
        writeln!(writer, "{}", answers.pop_front().unwrap()).unwrap();
        line.clear();
    }
}

/// Runs `fdopen-client check PATH` as another user (root only).
pub fn check_as(
    socket: &Path,
    uid: u32,
    gid: u32,
    groups: &[u32],
    path: &Path,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(CLIENT);
    cmd.arg("--socket").arg(socket).arg("check").arg(path);
    as_ids(&mut cmd, uid, gid, groups).output().unwrap()
}

/// `recv` that goes on through `EINTR`: a signal meant for nobody in
/// particular must not read as "the server never said READY".
pub fn recv_retrying(socket: &UnixDatagram, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match socket.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Runs `fdopen-server explain --policy POLICY ARGS...`; returns its exit
/// code and standard output.
pub fn explain<S: AsRef<std::ffi::OsStr>>(
    policy: &Path,
    args: impl IntoIterator<Item = S>,
) -> (Option<i32>, String) {
    let out = Command::new(SERVER)
        .args(["explain", "--policy"])
        .arg(policy)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Waits until the text of `path` satisfies `done`, woken by inotify on
/// each change rather than by a timer; gives up after 30 s.
pub fn await_file(path: &Path, done: impl Fn(&str) -> bool) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use std::os::fd::AsFd;
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).unwrap();
    inotify.add_watch(path, AddWatchFlags::IN_MODIFY).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if done(&fs::read_to_string(path).unwrap_or_default()) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{} never got there", path.display());
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let _ = poll(&mut fds, timeout);
        let _ = inotify.read_events();
    }
}
