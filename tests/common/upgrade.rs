//! Helpers for tests of in-place upgrades (SPEC §3.4): a copy of the
//! server to start from and break, `SIGUSR2`, and the successor, which
//! this process adopts and reaps.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{SERVER, TestServer};

/// This process adopts the servers an upgrade starts, once their parent
/// (the old server) is gone, so it can reap them.
pub fn adopt_orphans() {
    // SAFETY: a plain prctl on this process.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
}

/// A server started from a root-owned copy of its binary (see
/// [`server_copy`]), whose successors this process adopts; `None`, with
/// the reason printed, when not root (the upgrade checks the binary is
/// root's). Returns the server and the copy's path.
pub fn start_from_copy(policy: &str, extra: &[&str]) -> Option<(TestServer, PathBuf)> {
    if !super::is_root() {
        eprintln!("skipped: the upgrade checks the binary is root's, so this needs root");
        return None;
    }
    adopt_orphans();
    let dir = super::scratch();
    let copy = server_copy(dir.path());
    Some((TestServer::start_program(dir, &copy, policy, extra), copy))
}

/// A root-owned copy of the server in a directory only root may write,
/// so it passes the upgrade's ownership checks and the test can break it.
pub fn server_copy(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = bin.join("fdopen-server");
    install(Path::new(SERVER), &copy, "0755");
    copy
}

/// Copies `source` to `target` with `mode`, by another process: had this
/// one opened the target for writing, a fork by a parallel test could
/// inherit that descriptor until its exec, and running the target would
/// fail with ETXTBSY.
pub fn install(source: &Path, target: &Path, mode: &str) {
    let _ = std::fs::remove_file(target);
    let ok = Command::new("install")
        .args(["-m", mode])
        .arg(source)
        .arg(target)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Sends SIGUSR2 and returns what the server then said: `MAINPID=` (the
/// successor's pid) or `STATUS=` (why it serves on).
pub fn upgrade(server: &TestServer) -> String {
    server.signal(Signal::SIGUSR2);
    server.wait_notify_any(&["MAINPID=", "STATUS="])
}

/// The pid in a `MAINPID=N\n...` notification.
pub fn main_pid(said: &str) -> i32 {
    said.lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .unwrap_or_else(|| panic!("no MAINPID in {said:?}"))
        .parse()
        .unwrap()
}

/// Stops an adopted server and reaps it.
pub fn stop_adopted(pid: i32) {
    let pid = Pid::from_raw(pid);
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    nix::sys::wait::waitpid(pid, None).unwrap();
}

/// An adopted server (the successor an upgrade started), stopped and
/// reaped when dropped: a test that fails half-way leaves no server, nor
/// the directory it holds, behind.
pub struct Adopted(pub i32);

impl Adopted {
    /// Stops it now, checking that it was still there to stop.
    pub fn stop(self) {
        let pid = self.0;
        std::mem::forget(self);
        stop_adopted(pid);
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.0);
        if nix::sys::signal::kill(pid, Signal::SIGTERM).is_ok() {
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}
