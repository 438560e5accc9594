//! `fdopen-client run` never does what the program did not get (SPEC §8,
//! issue 19): no truncation or creation behind an open the program saw
//! fail, no directory it never named, no socket more exposed than its
//! own. Each test runs a small program as `nobody` against a root server,
//! with and without `run`, and checks what is left on disk. Root only.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{CLIENT, TestServer, glob, is_root};

const NOBODY: u32 = 65534;

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
