//! `fdopen-client run` with real programs (SPEC v3 §8): each runs as
//! `nobody` under `run` against a root server on a fresh root-only tree,
//! and must get what root gets without `run`; and `run`'s own process
//! behaviour (exit codes, signals). Root only; each test says why it skips.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{CLIENT, TestServer, is_root, wait_timeout};

const NOBODY: u32 = 65534;

/// A root server on a scratch tree, and a copy of fdopen-client that
/// `nobody` can execute wherever the build tree lives.
struct Setup {
    server: TestServer,
    client: PathBuf,
}

impl Setup {
    fn new(policy: &str) -> Option<Setup> {
        if !is_root() {
            eprintln!("skipped: run tests need root (a root server, a nobody client)");
            return None;
        }
        let server = TestServer::start(policy, &["--socket-mode", "0666"]);
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

    /// `fdopen-client run -- program args`, as nobody, from `/`.
    fn run(&self, program: &[&str]) -> Command {
        let mut cmd = Command::new(&self.client);
        cmd.current_dir("/")
            .arg("--socket")
            .arg(&self.server.socket)
            .arg("run")
            .arg("--")
            .args(program);
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
}

const EMPTY_POLICY: &str = r#"{"rules":[]}"#;

#[test]
fn a_command_not_found_is_127_and_one_not_executable_is_126() {
    let Some(s) = Setup::new(EMPTY_POLICY) else {
        return;
    };
    let status = |program: &str| {
        let out = s.run(&[program]).output().unwrap();
        assert!(!out.stderr.is_empty(), "{program}: run says why");
        out.status.code()
    };
    assert_eq!(status("/nonexistent/program"), Some(127));
    assert_eq!(status("no-such-program-on-path"), Some(127));
    // Not executable for nobody: a 0644 file, and a directory.
    assert_eq!(status("/etc/passwd"), Some(126));
    assert_eq!(status("/"), Some(126));
}

#[test]
fn sigterm_to_run_reaches_every_supervised_process() {
    let Some(s) = Setup::new(EMPTY_POLICY) else {
        return;
    };
    for signal in [libc::SIGTERM, libc::SIGHUP] {
        // The shell forks a sleeper, says its pid, and waits for it: the
        // shell dies of the signal, and the sleeper must too, or `run`
        // (which stays while any supervised process is left) would wait
        // five minutes.
        let mut run = s
            .run(&["/bin/sh", "-c", "sleep 300 & echo $!; wait"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(run.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.trim().parse::<u32>().is_ok(), "{line:?}");
        // SAFETY: kill with integer arguments, to our own child.
        unsafe { libc::kill(run.id() as i32, signal) };
        let status = wait_timeout(&mut run, Duration::from_secs(30))
            .expect("run ended with the processes it supervises");
        assert_eq!(status.signal(), Some(signal));
    }
}
