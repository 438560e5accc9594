//! Identity beyond the uid (SPEC §1, §5): the client's cgroup v2 path and
//! systemd unit, pinned at accept; explain as another user; scope.

mod common;

use std::ffi::CString;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{Value, json};

/// The cgroup2 mount point, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if !right.starts_with("cgroup2 ") {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// `test.slice/{app,other}.service` under the cgroup2 root, removed when
/// dropped (after every process in them has exited).
struct TestCgroups {
    slice: PathBuf,
}

impl TestCgroups {
    /// `tag` keeps the tests of one process, which run at once, apart.
    fn create(tag: &str) -> Result<TestCgroups, String> {
        let root = cgroup2_mount().ok_or("no cgroup2 mount")?;
        let slice = root.join(format!("fdopen-test-{}-{tag}.slice", std::process::id()));
        for unit in ["app.service", "other.service"] {
            fs::create_dir_all(slice.join(unit))
                .map_err(|e| format!("{}: {e}", slice.display()))?;
        }
        Ok(TestCgroups { slice })
    }

    fn procs(&self, unit: &str) -> PathBuf {
        self.slice.join(unit).join("cgroup.procs")
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for unit in ["app.service", "other.service"] {
            let _ = fs::remove_dir(self.slice.join(unit));
        }
        let _ = fs::remove_dir(&self.slice);
    }
}

/// A command that moves itself into the cgroup whose `cgroup.procs` is
/// `procs` before it execs, so it connects from there.
fn in_cgroup(mut cmd: Command, procs: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let procs = CString::new(procs.to_str().unwrap()).unwrap();
    // SAFETY: open, write and close are async-signal-safe; writing "0"
    // to cgroup.procs moves the writing process.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn cgroups_or_skip(tag: &str) -> Option<TestCgroups> {
    if !is_root() {
        eprintln!("skipped: creating cgroups needs root");
        return None;
    }
    match TestCgroups::create(tag) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("skipped: cgroup2 is not writable here: {e}");
            None
        }
    }
}

fn identity_server() -> TestServer {
    let dir = scratch();
    fs::write(dir.path().join("app.key"), "app secret").unwrap();
    fs::write(dir.path().join("other.txt"), "for the other one").unwrap();
    let d = glob(dir.path());
    let policy = json!({"rules": [
        {"name": "app-only", "paths": [format!("{d}/app.key")], "units": ["app.service"]},
        {"name": "by-cgroup", "paths": [format!("{d}/other.txt")],
         "cgroups": ["/**/fdopen-test-*.slice/other.service"]}
    ]})
    .to_string();
    TestServer::start_in(dir, &policy, &[])
}

fn check_from(s: &TestServer, procs: &Path, path: &Path) -> std::process::Output {
    let mut cmd = Command::new(client_under_test());
    cmd.arg("--socket").arg(&s.socket).arg("check").arg(path);
    in_cgroup(cmd, procs).output().unwrap()
}

#[test]
fn units_and_cgroups_rules_match_the_cgroup_the_client_connected_from() {
    let Some(cgroups) = cgroups_or_skip("match") else {
        return;
    };
    let s = identity_server();
    let key = s.path("app.key");
    let other = s.path("other.txt");
    let app = check_from(&s, &cgroups.procs("app.service"), &key);
    assert!(
        app.status.success(),
        "{}",
        String::from_utf8_lossy(&app.stderr)
    );
    // The same uid from a sibling cgroup is refused.
    let sibling = check_from(&s, &cgroups.procs("other.service"), &key);
    assert_eq!(
        sibling.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&sibling.stderr)
    );
    // A cgroups glob.
    let by_glob = check_from(&s, &cgroups.procs("other.service"), &other);
    assert!(
        by_glob.status.success(),
        "{}",
        String::from_utf8_lossy(&by_glob.stderr)
    );
    let from_app = check_from(&s, &cgroups.procs("app.service"), &other);
    assert_eq!(from_app.status.code(), Some(1));
    // This test itself is in neither: refused both.
    assert_eq!(code(&s.ask(&open_line(&key, None)).0), "denied");
    // Audit records carry unit and cgroup.
    let audit = s.audit_lines();
    let first = &audit[0];
    assert_eq!(first["unit"], "app.service", "{first}");
    assert!(
        first["cgroup"].as_str().unwrap().ends_with("/app.service"),
        "{first}"
    );
}

#[test]
fn a_client_that_moves_after_connecting_keeps_the_identity_it_had() {
    let Some(cgroups) = cgroups_or_skip("move") else {
        return;
    };
    let s = identity_server();
    // Connects from app.service, moves to other.service, then asks. The
    // hello answered before the move proves the server has accepted (and
    // so read the identity): connect alone returns once the kernel queues
    // the connection, which may be before the accept.
    let program = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
answers = s.makefile()
s.sendall(b'{"op": "hello"}\n')
assert json.loads(answers.readline())["ok"]
with open(sys.argv[2], "w") as procs:
    procs.write("0")
s.sendall(json.dumps({"op": "check", "path": sys.argv[3]}).encode() + b"\n")
print(answers.readline(), end="")
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", program])
        .arg(&s.socket)
        .arg(cgroups.procs("other.service"))
        .arg(s.path("app.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = in_cgroup(cmd, &cgroups.procs("app.service"))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["ok"], true, "identity is the one at connect: {v}");
    assert_eq!(v["rule"], "app-only");
}

#[test]
fn explain_speaks_for_another_user_with_that_users_own_groups() {
    let dir = scratch();
    fs::write(dir.path().join("f"), "f").unwrap();
    let d = glob(dir.path());
    let policy = dir.path().join("p.json");
    fs::write(
        &policy,
        json!({"rules": [
            {"name": "root-group", "paths": [format!("{d}/f")], "groups": [0]},
            {"name": "app", "paths": [format!("{d}/f")], "units": ["web@*.service"], "modes": ["append"]}
        ]})
        .to_string(),
    )
    .unwrap();
    let file = dir.path().join("f");
    let explain = |args: &[&str]| {
        let path = [OsStr::new("--path"), file.as_os_str()];
        explain(&policy, path.into_iter().chain(args.iter().map(OsStr::new)))
    };
    if is_root() {
        assert_eq!(explain(&[]).0, Some(0));
        // uid 65534 does not get root's groups by being explained by root.
        let (code, text) = explain(&["--uid", "65534"]);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("none of the client's groups"), "{text}");
    }
    let (code, text) = explain(&["--user", "nobody"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("gid 65534"), "{text}");
    // Units: unknown without --unit; matched by glob with it.
    let (code, text) = explain(&["--user", "nobody", "--mode", "append"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("unknown"), "{text}");
    let (code, text) = explain(&[
        "--user",
        "nobody",
        "--mode",
        "append",
        "--unit",
        "web@1.service",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let (code, _) = explain(&[
        "--user",
        "nobody",
        "--mode",
        "append",
        "--cgroup",
        "/system.slice/db.service",
    ]);
    assert_eq!(code, Some(1));
}

#[test]
fn scope_lists_what_the_rules_for_this_client_could_grant() {
    let dir = scratch();
    let d = glob(dir.path());
    let me = nix::unistd::getuid().as_raw();
    let policy = json!({"rules": [
        {"name": "mine", "paths": [format!("{d}/mine/**")], "modes": ["read", "append"], "users": [me]},
        {"name": "uploads", "paths": [format!("{d}/up/*")], "modes": ["write"], "create": true},
        {"name": "tree", "paths": [format!("{d}/t/**")], "modes": ["list", "mkdir", "delete"]},
        {"name": "web", "binds": ["tcp:*:8443"]},
        {"name": "someone-else", "paths": ["/srv/**"], "users": [me.wrapping_add(1)]},
        {"name": "no-keys", "effect": "deny", "paths": ["/**/*.key"]}
    ]})
    .to_string();
    let s = TestServer::start_in(dir, &policy, &[]);
    let out = run_client(&s.socket, &["scope", "--json"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["paths"],
        json!([
            // stat comes with any mode (SPEC §5).
            {"glob": format!("{d}/mine/**"), "modes": ["read", "append", "stat"], "create": false},
            {"glob": format!("{d}/up/*"), "modes": ["write", "stat"], "create": true},
            {"glob": format!("{d}/t/**"), "modes": ["stat", "list", "mkdir", "delete"], "create": false}
        ]),
        "{v}"
    );
    assert_eq!(v["binds"], json!(["tcp:*:8443"]));
    assert!(!v.to_string().contains("someone-else") && !v.to_string().contains("no-keys"));
    let out = run_client(&s.socket, &["scope"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("may create") && text.contains("bind tcp:*:8443"),
        "{text}"
    );
}
