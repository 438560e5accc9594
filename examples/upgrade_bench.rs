//! How long an in-place upgrade (SPEC §3.4, `SIGUSR2`) takes with N parked
//! connections, and how long a client that connects meanwhile waits in the
//! listening socket's backlog. A measurement for BENCHMARKS.md, not a test.
//!
//!     upgrade_bench SERVER_BINARY N...      (as root; e.g. 1000 10000)
//!
//! For each N: starts a root-owned copy of SERVER_BINARY in a temporary
//! directory, parks N loopback TCP connections, then, while a prober
//! thread connects and asks `hello` back to back, sends SIGUSR2 and waits
//! for the new process's `MAINPID=`. Prints the upgrade's duration and
//! the slowest `hello` round trip (connect included) during it, against
//! the slowest before it. Needs `RLIMIT_NOFILE` above N (both ends of
//! each connection live in this process until parked).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((binary, counts)) = args.split_first() else {
        return Err("usage: upgrade_bench SERVER_BINARY N...".into());
    };
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    // The successor outlives its parent: adopt it, to reap it.
    // SAFETY: a plain prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    println!(
        "parked | upgrade (SIGUSR2 to MAINPID=) | slowest hello during it | slowest before | probes during"
    );
    for n in counts {
        let n: usize = n.parse()?;
        let r = measure(Path::new(binary), n)?;
        println!(
            "{n} | {:.1} ms | {:.1} ms | {:.2} ms | {}",
            ms(r.upgrade),
            ms(r.slowest_during),
            ms(r.slowest_before),
            r.probes_during
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Result_ {
    upgrade: Duration,
    slowest_during: Duration,
    slowest_before: Duration,
    probes_during: usize,
}

fn measure(binary: &Path, n: usize) -> Result<Result_, Box<dyn std::error::Error>> {
    let dir = tempfile::Builder::new().prefix("upgrade-bench").tempdir()?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let copy = dir.path().join("fdopen-server");
    let installed = Command::new("install")
        .args(["-m", "0755"])
        .arg(binary)
        .arg(&copy)
        .status()?;
    if !installed.success() {
        return Err("cannot copy the server".into());
    }
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"rules":[{"name":"p","names":["b/**"],"ops":["park","wake","list"]}]}"#,
    )?;
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644))?;
    let socket = dir.path().join("s.sock");
    let notify = UnixDatagram::bind(dir.path().join("notify.sock"))?;
    notify.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut child = Command::new(&copy)
        .args(["serve", "--log-level", "warn", "--socket"])
        .arg(&socket)
        .arg("--policy")
        .arg(&policy)
        .args(["--max-held-per-uid", "65536", "--audit-log"])
        .arg(dir.path().join("audit.log"))
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_for(&notify, "READY=1")?;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut parker = fdopen::Client::connect(&socket)?;
    let mut peers = Vec::with_capacity(n);
    for i in 0..n {
        let peer = TcpStream::connect(addr)?;
        let (ours, _) = listener.accept()?;
        parker.park(&format!("b/{i}"), ours.as_fd(), None)?;
        peers.push(peer);
    }
    drop(parker);

    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let socket = socket.clone();
        std::thread::spawn(move || probe(&socket, &stop))
    };
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )?;
    let said = wait_for(&notify, "MAINPID=")?;
    let done = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let probes = prober.join().map_err(|_| "prober panicked")?;
    child.wait()?;
    let successor: i32 = said
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .ok_or("no MAINPID")?
        .parse()?;
    let successor = nix::unistd::Pid::from_raw(successor);
    nix::sys::signal::kill(successor, nix::sys::signal::Signal::SIGKILL)?;
    nix::sys::wait::waitpid(successor, None)?;
    drop(peers);

    // A probe overlaps the upgrade if it was under way at any time in it.
    let during: Vec<Duration> = probes
        .iter()
        .filter(|(start, took)| *start < done && *start + *took > signalled)
        .map(|(_, took)| *took)
        .collect();
    let before = probes
        .iter()
        .filter(|(start, took)| *start + *took < signalled)
        .map(|(_, took)| *took)
        .max()
        .unwrap_or_default();
    Ok(Result_ {
        upgrade: done - signalled,
        slowest_during: during.iter().copied().max().unwrap_or_default(),
        slowest_before: before,
        probes_during: during.len(),
    })
}

/// Connects and asks `hello`, back to back, until told to stop; each
/// probe's start and round trip.
fn probe(socket: &PathBuf, stop: &AtomicBool) -> Vec<(Instant, Duration)> {
    let mut probes = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let start = Instant::now();
        // Until answered: one closed unanswered by the old process asks
        // again at once, and its wait counts from the first try.
        loop {
            let answered = UnixStream::connect(socket).and_then(|mut s| {
                s.write_all(b"{\"op\":\"hello\"}\n")?;
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line)?;
                Ok(line.contains("\"ok\":true"))
            });
            if answered.unwrap_or(false) {
                break;
            }
        }
        probes.push((start, start.elapsed()));
    }
    probes
}

fn wait_for(notify: &UnixDatagram, prefix: &str) -> Result<String, Box<dyn std::error::Error>> {
    let mut buf = [0u8; 1024];
    loop {
        let n = notify.recv(&mut buf)?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with(prefix) {
            return Ok(text);
        }
    }
}
