//! A filesystem that stops answering (SPEC §5, `--fs-timeout`): the client
//! whose file lives there gets `io_error` in time, everyone else, on the
//! same worker thread too, keeps being served, the server's threads and
//! descriptors stay bounded, and it recovers when the filesystem answers
//! again. The filesystem is a FUSE one made here, whose lookups block
//! while it is "hung". Needs root and /dev/fuse; skips otherwise.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::fuse::Mounted;
use common::*;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, ReplyAttr, ReplyEntry,
    Request,
};
use serde_json::json;

/// Whether lookups block, and a way to let them go.
#[derive(Default)]
struct Gate {
    hung: Mutex<bool>,
    released: Condvar,
    /// Lookups that were made to wait.
    blocked: AtomicUsize,
}

impl Gate {
    fn set_hung(&self, hung: bool) {
        *self.hung.lock().unwrap() = hung;
        self.released.notify_all();
    }

    fn pass(&self) {
        let mut hung = self.hung.lock().unwrap();
        if *hung {
            self.blocked.fetch_add(1, Ordering::SeqCst);
        }
        while *hung {
            hung = self.released.wait(hung).unwrap();
        }
    }
}

/// Lets every lookup go when dropped: held after the mount, it is
/// dropped before it, so a failing test never leaves the filesystem's
/// thread waiting.
struct ReleaseOnDrop(Arc<Gate>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.set_hung(false);
    }
}

/// A root directory with one regular file, `file.txt`.
struct HangingFs {
    gate: Arc<Gate>,
}

fn attr(ino: u64, kind: FileType, size: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: 1,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm: if kind == FileType::Directory {
            0o755
        } else {
            0o644
        },
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 512,
        flags: 0,
    }
}

impl Filesystem for HangingFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.gate.pass();
        if parent == INodeNo::ROOT && name == "file.txt" {
            // No caching: every lookup reaches us, so a hang is a hang.
            reply.entry(
                &Duration::ZERO,
                &attr(2, FileType::RegularFile, 5),
                Generation(0),
            );
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match u64::from(ino) {
            1 => reply.attr(&Duration::ZERO, &attr(1, FileType::Directory, 0)),
            2 => reply.attr(&Duration::ZERO, &attr(2, FileType::RegularFile, 5)),
            _ => reply.error(Errno::ENOENT),
        }
    }
}

fn threads(pid: u32) -> usize {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A scratch directory holding `local.txt`, with a [`HangingFs`] mounted
/// at `fuse/`; `None`, the reason printed, where FUSE cannot be mounted.
fn mount_hanging() -> Option<(tempfile::TempDir, Mounted, Arc<Gate>)> {
    if let Err(why) = common::fuse::available() {
        eprintln!("skipped: {why}");
        return None;
    }
    let dir = scratch();
    fs::write(dir.path().join("local.txt"), "local").unwrap();
    let gate = Arc::new(Gate::default());
    let fs = HangingFs { gate: gate.clone() };
    match Mounted::new(&dir.path().join("fuse"), fs) {
        Ok(mounted) => Some((dir, mounted, gate)),
        Err(e) => {
            eprintln!("skipped: cannot mount a FUSE filesystem here: {e}");
            None
        }
    }
}

#[test]
fn a_hung_filesystem_times_out_one_request_and_stalls_nobody() {
    let Some((dir, mounted, gate)) = mount_hanging() else {
        return;
    };
    let release = ReleaseOnDrop(gate.clone());

    let d = glob(dir.path());
    let policy = json!({"rules": [{"name": "all", "paths": [format!("{d}/**")]}]}).to_string();
    // One worker: the hung request and everyone else share its thread.
    let mut s = TestServer::start_in(
        dir,
        &policy,
        &[
            "--workers",
            "1",
            "--fs-timeout",
            "3s",
            "--socket-mode",
            "0666",
        ],
    );
    let pid = s.pid();
    let hung_file = mounted.point.join("file.txt");
    // Gone with the server, before its directory: the release first.
    s.hold(mounted);
    s.hold(release);
    let local = s.path("local.txt");

    // While it answers, the FUSE file is granted like any other.
    let (v, _) = s.ask(&json!({"op": "check", "path": hung_file}).to_string());
    assert_eq!(v["ok"], true, "{v}");
    let threads_at_rest = threads(pid);
    let fds_at_rest = fd_count(pid);

    gate.set_hung(true);
    let mut victim = s.client();
    victim
        .send_raw(format!("{}\n", open_line(&hung_file, None)).as_bytes())
        .unwrap();
    // Everyone else, on the same thread, is served until the victim is
    // answered.
    let victim_answered = Arc::new(AtomicBool::new(false));
    let others = {
        let mut c = s.client();
        let done = victim_answered.clone();
        let local = local.clone();
        std::thread::spawn(move || {
            let mut answered = 0usize;
            while !done.load(Ordering::SeqCst) {
                let (v, fd) = ask(&mut c, &open_line(&local, None));
                assert_eq!(v["ok"], true, "{v}");
                assert!(fd.is_some());
                answered += 1;
            }
            answered
        })
    };
    let (v, fd) = receive(&mut victim);
    victim_answered.store(true, Ordering::SeqCst);
    let answered_meanwhile = others.join().unwrap();
    assert_eq!(code(&v), "io_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fs-timeout"),
        "{v}"
    );
    assert!(fd.is_none());
    assert!(
        gate.blocked.load(Ordering::SeqCst) >= 1,
        "the lookup really hung"
    );
    // Three seconds of a debug build serve thousands; a worker stuck in
    // the lookup would have served none.
    assert!(
        answered_meanwhile >= 500,
        "only {answered_meanwhile} answers while the filesystem hung"
    );

    // More requests for the hung filesystem, from several clients at once:
    // each is answered (io_error, or busy once the stuck calls reach their
    // cap), and threads and descriptors stay bounded.
    let mut clients: Vec<_> = (0..20)
        .map(|_| {
            let mut c = s.client();
            c.send_raw(format!("{}\n", open_line(&hung_file, None)).as_bytes())
                .unwrap();
            c
        })
        .collect();
    // Root has reached its cap of stuck calls; another user is still
    // served while they wait.
    for _ in 0..20 {
        let out = check_as(&s.socket, 65534, 65534, &[], &local);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let peak_threads = threads(pid);
    let mut codes = Vec::new();
    for c in &mut clients {
        codes.push(code(&receive(c).0).to_owned());
    }
    assert!(
        codes.iter().all(|c| c == "io_error" || c == "busy"),
        "{codes:?}"
    );
    assert!(
        codes.iter().any(|c| c == "busy"),
        "the cap was reached: {codes:?}"
    );
    // Workers, watchdog and main thread, plus at most the per-uid cap of
    // abandoned calls (all clients here are root).
    assert!(
        peak_threads <= threads_at_rest + 4,
        "threads grew from {threads_at_rest} to {peak_threads}"
    );
    assert!(
        fd_count(pid) <= fds_at_rest + 30,
        "descriptors grew from {fds_at_rest} to {}",
        fd_count(pid)
    );

    // The filesystem comes back: the stuck calls return, and it is served.
    gate.set_hung(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (v, fd) = s.ask(&open_line(&hung_file, None));
        if v["ok"] == true {
            assert!(fd.is_some());
            break;
        }
        assert_eq!(code(&v), "busy", "{v}");
        assert!(Instant::now() < deadline, "no recovery: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        threads(pid) <= threads_at_rest + 1,
        "abandoned threads ended: {} now, {threads_at_rest} at rest",
        threads(pid)
    );
    let log = s.stderr_text();
    assert!(log.contains("stuck"), "{log}");
}

#[test]
fn tree_requests_on_a_hung_filesystem_time_out_like_opens() {
    let Some((dir, mounted, gate)) = mount_hanging() else {
        return;
    };
    let release = ReleaseOnDrop(gate.clone());
    let d = glob(dir.path());
    let policy = json!({"rules": [{"name": "all", "paths": [format!("{d}/**")],
                                   "modes": ["read", "stat", "delete"]}]})
    .to_string();
    let mut s = TestServer::start_in(dir, &policy, &["--workers", "1", "--fs-timeout", "1s"]);
    let hung_file = mounted.point.join("file.txt");
    // Gone with the server, before its directory (which the mount would
    // otherwise keep in /tmp): the release first.
    s.hold(mounted);
    s.hold(release);
    let local = s.path("local.txt");
    gate.set_hung(true);
    for op in ["stat", "unlink", "xattr"] {
        let mut victim = s.client();
        victim
            .send_raw(format!("{}\n", json!({"op": op, "path": hung_file})).as_bytes())
            .unwrap();
        // The same worker answers others meanwhile.
        let (v, _) = s.ask(&json!({"op": "stat", "path": local}).to_string());
        assert_eq!(v["ok"], true, "{v}");
        let (v, _) = receive(&mut victim);
        assert!(code(&v) == "io_error" || code(&v) == "busy", "{op}: {v}");
    }
    assert!(
        gate.blocked.load(Ordering::SeqCst) >= 1,
        "the lookup really hung"
    );
    // Let the stuck calls return before the server is stopped: a thread
    // stuck in FUSE keeps its process from being reaped.
    gate.set_hung(false);
    drop(s);
}
