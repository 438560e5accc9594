//! Helpers for tests of `fdopen-client run` (SPEC §8): a root server
//! reachable by every uid, a copy of the client that `nobody` can run,
//! small C programs from `tests/programs`, and commands run as another
//! user. Included with `#[path]` next to `mod common;`, as it needs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{TestServer, as_ids, client_under_test, is_root};

pub const NOBODY: u32 = 65534;

/// A root server and a client for other uids to run it under.
pub struct Supervised {
    pub server: TestServer,
    /// A copy of fdopen-client that `nobody` can execute wherever the
    /// build tree lives.
    pub client: PathBuf,
}

impl Supervised {
    /// Starts a root server on `policy` in `dir`; `None` (said why) when
    /// not root.
    pub fn start(dir: tempfile::TempDir, policy: &str) -> Option<Supervised> {
        if !is_root() {
            eprintln!("skipped: run tests need root (a root server, a nobody client)");
            return None;
        }
        let server = TestServer::start_in(dir, policy, &["--socket-mode", "0666"]);
        // Copied by another process: had this one opened the copy for
        // writing, a fork by a parallel test could inherit that descriptor
        // until its exec, and running the copy would fail with ETXTBSY.
        let client = server.path("fdopen-client");
        let copied = Command::new("install")
            .args(["-m", "0755", &client_under_test()])
            .arg(&client)
            .status()
            .unwrap();
        assert!(copied.success());
        Some(Supervised { server, client })
    }

    /// `fdopen-client run [extra] -- program args`, as nobody.
    pub fn run_command(&self, extra: &[&str], program: &[&str]) -> Command {
        let mut cmd = as_user(self.client.to_str().unwrap(), NOBODY);
        cmd.arg("--socket")
            .arg(&self.server.socket)
            .arg("run")
            .args(extra)
            .arg("--")
            .args(program);
        cmd
    }

    pub fn run(&self, program: &[&str]) -> Output {
        self.run_command(&[], program).output().unwrap()
    }

    /// Builds `tests/programs/NAME.c` into the scratch directory; `None`
    /// (with the reason printed) when the compiler or, for `-static`, a
    /// static libc is missing.
    pub fn build(&self, name: &str, flags: &[&str]) -> Option<String> {
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

/// `program`, to be run as `uid` (and gid `uid`, no supplementary
/// groups) from `/`.
pub fn as_user(program: &str, uid: u32) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir("/");
    as_ids(&mut cmd, uid, uid, &[]);
    cmd
}

/// The program as nobody, without `run`.
pub fn direct(program: &[&str]) -> Output {
    as_user(program[0], NOBODY)
        .args(&program[1..])
        .output()
        .unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
