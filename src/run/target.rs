//! What the supervisor learns about a trapped task: bytes from its memory,
//! its cwd and descriptors from /proc, and whether it still runs with the
//! supervisor's identity (SPEC §8). Every read here can race with the task;
//! callers confirm with `SECCOMP_IOCTL_NOTIF_ID_VALID` before acting.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// `PATH_MAX`, terminating NUL included.
pub const PATH_MAX: usize = 4096;
const PAGE: usize = 4096;

/// A trapped thread.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub tid: i32,
}

/// What a task must share with the supervisor to be brokered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Real, effective and filesystem uid; the same for gids.
    uids: [u32; 3],
    gids: [u32; 3],
    mount_ns: OsString,
    user_ns: OsString,
    root: (u64, u64),
}

/// From `/proc/TID/status`: the task's identity-relevant fields.
#[derive(Debug)]
pub struct Status {
    pub tgid: i32,
    pub umask: u32,
    uids: [u32; 3],
    gids: [u32; 3],
}

impl Status {
    fn parse(text: &str) -> Option<Status> {
        let mut tgid = None;
        let mut umask = None;
        let mut uids = None;
        let mut gids = None;
        // Uid:/Gid: lines are "real effective saved filesystem".
        let ids = |rest: &str| -> Option<[u32; 3]> {
            let v: Vec<u32> = rest
                .split_whitespace()
                .map(|s| s.parse().ok())
                .collect::<Option<_>>()?;
            (v.len() == 4).then(|| [v[0], v[1], v[3]])
        };
        for line in text.lines() {
            let Some((key, rest)) = line.split_once(':') else {
                continue;
            };
            match key {
                "Tgid" => tgid = rest.trim().parse().ok(),
                "Umask" => umask = u32::from_str_radix(rest.trim(), 8).ok(),
                "Uid" => uids = ids(rest),
                "Gid" => gids = ids(rest),
                _ => {}
            }
        }
        Some(Status {
            tgid: tgid?,
            umask: umask?,
            uids: uids?,
            gids: gids?,
        })
    }
}

/// The ids that decide whether a task is brokered.
struct Credentials {
    tgid: i32,
    uids: [u32; 3],
    gids: [u32; 3],
}

/// `struct pidfd_info` as of Linux 6.13 (`PIDFD_INFO_SIZE_VER0`).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}

const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;
const PIDFD_INFO_PID: u64 = 1;
const PIDFD_INFO_CREDS: u64 = 2;
/// `_IOWR(0xFF, 11, struct pidfd_info)`.
const PIDFD_GET_INFO: libc::Ioctl =
    (3 << 30 | (size_of::<PidfdInfo>() as u32) << 16 | 0xFF << 8 | 11) as libc::Ioctl;

/// The task's ids from a thread pidfd, or `None` where the kernel lacks
/// `PIDFD_THREAD` or `PIDFD_GET_INFO`.
fn pidfd_credentials(tid: i32) -> Option<Credentials> {
    let pidfd = pidfd_open(tid, PIDFD_THREAD).ok()?;
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_PID | PIDFD_INFO_CREDS,
        ..PidfdInfo::default()
    };
    use std::os::fd::AsRawFd;
    // SAFETY: the ioctl fills a struct of the size its number encodes.
    let rc = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO, &mut info) };
    if rc != 0
        || info.mask & (PIDFD_INFO_PID | PIDFD_INFO_CREDS) != PIDFD_INFO_PID | PIDFD_INFO_CREDS
    {
        return None;
    }
    Some(Credentials {
        tgid: info.tgid as i32,
        uids: [info.ruid, info.euid, info.fsuid],
        gids: [info.rgid, info.egid, info.fsgid],
    })
}

fn root_id(path: &str) -> io::Result<(u64, u64)> {
    let meta = fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

impl Identity {
    /// The supervisor's own.
    pub fn own() -> io::Result<Identity> {
        // SAFETY: gettid has no arguments.
        let tid = unsafe { libc::gettid() };
        let ids = Target { tid }
            .credentials()
            .ok_or_else(|| io::Error::other("cannot read our own ids"))?;
        Ok(Identity {
            uids: ids.uids,
            gids: ids.gids,
            mount_ns: fs::read_link("/proc/self/ns/mnt")?.into_os_string(),
            user_ns: fs::read_link("/proc/self/ns/user")?.into_os_string(),
            root: root_id("/proc/self/root")?,
        })
    }
}

impl Target {
    fn proc(&self, what: &str) -> String {
        format!("/proc/{}/{what}", self.tid)
    }

    /// The task's thread group if it runs with `own` identity; `None` if
    /// not (or if it is gone).
    pub fn tgid_if_same_identity(&self, own: &Identity) -> Option<i32> {
        // Dumpable: not checked here, because the kernel does it for us.
        // Every brokered call first reads the task's memory
        // (`process_vm_readv`), which needs ptrace access, and a task that
        // is not dumpable refuses that to a supervisor without
        // CAP_SYS_PTRACE. A root supervisor has it, but then the task is
        // root too (the uids must match) and can open anything itself.
        let ids = self.credentials()?;
        let same = ids.uids == own.uids
            && ids.gids == own.gids
            && fs::read_link(self.proc("ns/mnt")).ok()?.as_os_str() == own.mount_ns
            && fs::read_link(self.proc("ns/user")).ok()?.as_os_str() == own.user_ns
            && root_id(&self.proc("root")).ok()? == own.root;
        same.then_some(ids.tgid)
    }

    /// Ids and thread group: one `PIDFD_GET_INFO` ioctl where the kernel
    /// has it (6.13+), else `/proc/TID/status`, which costs five times as
    /// much to format and parse.
    fn credentials(&self) -> Option<Credentials> {
        pidfd_credentials(self.tid).or_else(|| {
            let status = Status::parse(&fs::read_to_string(self.proc("status")).ok()?)?;
            Some(Credentials {
                tgid: status.tgid,
                uids: status.uids,
                gids: status.gids,
            })
        })
    }

    /// The task's umask, for the bits of a file it creates.
    pub fn umask(&self) -> Option<u32> {
        Some(Status::parse(&fs::read_to_string(self.proc("status")).ok()?)?.umask)
    }

    /// Reads up to `buf.len()` bytes at `addr`; returns how many were
    /// readable. Reads go page by page, since `process_vm_readv` does not
    /// split one iovec at an unmapped page.
    pub fn read_memory(&self, addr: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let at = addr as usize + done;
            let chunk = (PAGE - at % PAGE).min(buf.len() - done);
            let local = libc::iovec {
                iov_base: buf[done..].as_mut_ptr().cast(),
                iov_len: chunk,
            };
            let remote = libc::iovec {
                iov_base: at as *mut libc::c_void,
                iov_len: chunk,
            };
            // SAFETY: `local` is within `buf`; the remote side is checked
            // by the kernel.
            let n = unsafe { libc::process_vm_readv(self.tid, &local, 1, &remote, 1, 0) };
            if n <= 0 {
                break;
            }
            done += n as usize;
            if (n as usize) < chunk {
                break;
            }
        }
        done
    }

    /// A NUL-terminated string at `addr`, at most `PATH_MAX` bytes with the
    /// NUL; `None` if it is longer, unterminated or unreadable.
    pub fn read_c_string(&self, addr: u64) -> Option<Vec<u8>> {
        let mut buf = Vec::with_capacity(256);
        let mut at = addr;
        while buf.len() < PATH_MAX {
            let chunk = (PAGE - at as usize % PAGE).min(PATH_MAX - buf.len());
            let mut piece = [0u8; PAGE];
            let n = self.read_memory(at, &mut piece[..chunk]);
            if let Some(nul) = piece[..n].iter().position(|&b| b == 0) {
                buf.extend_from_slice(&piece[..nul]);
                return Some(buf);
            }
            if n < chunk {
                return None;
            }
            buf.extend_from_slice(&piece[..n]);
            at += n as u64;
        }
        None
    }

    /// The directory a relative path starts from: the cwd for `AT_FDCWD`,
    /// else what `dirfd` refers to. `None` for anything that is not a
    /// plain absolute path (a deleted directory, a socket, a pipe).
    pub fn base_directory(&self, dirfd: i32) -> Option<PathBuf> {
        let link = if dirfd == libc::AT_FDCWD {
            self.proc("cwd")
        } else if dirfd >= 0 {
            self.proc(&format!("fd/{dirfd}"))
        } else {
            return None;
        };
        let path = fs::read_link(link).ok()?.into_os_string().into_vec();
        if path.first() != Some(&b'/') || path.ends_with(b" (deleted)") {
            return None;
        }
        Some(PathBuf::from(OsString::from_vec(path)))
    }

    /// The `fdinfo` flags of descriptor `fd` (they carry `O_CLOEXEC` for a
    /// close-on-exec descriptor, which `pidfd_getfd` cannot tell).
    pub fn fd_flags(&self, tgid: i32, fd: RawFd) -> Option<i32> {
        let info = fs::read_to_string(format!("/proc/{tgid}/fdinfo/{fd}")).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| i32::from_str_radix(v.trim(), 8).ok())
    }

    /// A duplicate of the target's descriptor `fd` (`pidfd_getfd`), taken
    /// from the trapped thread's own table where the kernel can name a
    /// thread (`PIDFD_THREAD`, 6.9+; a thread may have unshared its
    /// table), else from its thread group's.
    pub fn duplicate_fd(&self, tgid: i32, fd: RawFd) -> io::Result<OwnedFd> {
        let pidfd = pidfd_open(self.tid, PIDFD_THREAD).or_else(|_| pidfd_open(tgid, 0))?;
        use std::os::fd::AsRawFd;
        // SAFETY: a raw syscall with integer arguments; the result is a
        // fresh descriptor we own.
        unsafe {
            let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
            if dup < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(OwnedFd::from_raw_fd(dup as RawFd))
        }
    }

    /// `st_dev` and `st_ino` of the directory the task holds as `dirfd`
    /// (its cwd for `AT_FDCWD`: `/proc/TID/cwd` opened, then `fstat`);
    /// `None` for anything that is not a directory.
    pub fn directory_id(&self, tgid: i32, dirfd: i32) -> Option<(u64, u64)> {
        let meta = self.held_metadata(tgid, dirfd)?;
        meta.is_dir().then(|| (meta.dev(), meta.ino()))
    }

    /// What `fstat` says of the task's `dirfd`, or of its cwd for
    /// `AT_FDCWD`.
    pub fn held_metadata(&self, tgid: i32, dirfd: i32) -> Option<fs::Metadata> {
        fs::File::from(self.held(tgid, dirfd)?).metadata().ok()
    }

    /// Our own descriptor of what the task holds as `dirfd`, or of its
    /// cwd for `AT_FDCWD`.
    pub fn held(&self, tgid: i32, dirfd: i32) -> Option<OwnedFd> {
        let held = if dirfd == libc::AT_FDCWD {
            // Not through std's OpenOptions: it masks custom flags with
            // O_ACCMODE, which on musl includes O_PATH (as O_SEARCH), and
            // a plain read open of a directory the program may search but
            // not read would fail.
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            nix::fcntl::open(self.proc("cwd").as_str(), flags, Mode::empty()).ok()?
        } else if dirfd >= 0 {
            self.duplicate_fd(tgid, dirfd).ok()?
        } else {
            return None;
        };
        Some(held)
    }

    /// Whether one more descriptor fits in the task's table: fewer open
    /// fds below its `RLIMIT_NOFILE` soft limit than the limit (the
    /// kernel hands out the lowest free number, and `EMFILE` if that is
    /// not below the limit). `None` if either cannot be read. Only a
    /// snapshot: another thread sharing the table can fill it, or lower
    /// the limit, before the fd is installed.
    pub fn has_free_fd(&self) -> Option<bool> {
        let mut limit = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 reads the limit into a struct we own; no new
        // limit is passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                self.tid,
                libc::RLIMIT_NOFILE,
                std::ptr::null::<libc::rlimit64>(),
                &mut limit,
            )
        };
        if rc != 0 {
            return None;
        }
        let soft = limit.rlim_cur;
        let mut below = 0u64;
        for entry in fs::read_dir(self.proc("fd")).ok()? {
            let name = entry.ok()?.file_name();
            if name.to_str()?.parse::<u64>().ok()? < soft {
                below += 1;
            }
        }
        Some(below < soft)
    }
}

/// A pidfd for `pid` with `flags`, owned.
fn pidfd_open(pid: i32, flags: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open with integer arguments; the result is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_takes_real_effective_and_filesystem_ids() {
        let text = "Name:\tx\nUmask:\t0027\nTgid:\t41\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\n";
        let s = Status::parse(text).unwrap();
        assert_eq!(
            (s.tgid, s.umask, s.uids, s.gids),
            (41, 0o027, [1, 2, 4], [5, 6, 8])
        );
        assert!(Status::parse("Tgid:\t1\n").is_none());
    }

    #[test]
    fn reads_own_memory_up_to_the_nul() {
        let me = Target {
            tid: std::process::id() as i32,
        };
        let text = b"/srv/data\0tail";
        assert_eq!(
            me.read_c_string(text.as_ptr() as u64).unwrap(),
            b"/srv/data"
        );
        assert!(me.read_c_string(0).is_none());
        let tgid = me.tgid_if_same_identity(&Identity::own().unwrap());
        assert_eq!(tgid, Some(me.tid));
    }

    #[test]
    fn a_table_with_room_has_a_free_fd_and_a_full_one_not() {
        // A child of our own, so that lowering its limit leaves ours. Its
        // fds 0, 1 and 2 are open and stay so; what it inherited with
        // O_CLOEXEC may still be closing as `spawn` returns (the kernel
        // closes those after the pipe `spawn` waits on), so the test
        // counts on nothing above 2.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let target = Target {
            tid: child.id() as i32,
        };
        assert_eq!(target.has_free_fd(), Some(true));
        // Full: the limit at 3, with 0, 1 and 2 taken.
        let full = libc::rlimit64 {
            rlim_cur: 3,
            rlim_max: 3,
        };
        // SAFETY: prlimit64 sets the child's limit from a struct we own.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                target.tid,
                libc::RLIMIT_NOFILE,
                &full,
                std::ptr::null_mut::<libc::rlimit64>(),
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        assert_eq!(target.has_free_fd(), Some(false));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn pidfd_and_proc_agree_on_our_ids() {
        // SAFETY: gettid has no arguments.
        let tid = unsafe { libc::gettid() };
        let Some(fast) = pidfd_credentials(tid) else {
            eprintln!("skipped: no PIDFD_GET_INFO on this kernel");
            return;
        };
        let text = fs::read_to_string("/proc/thread-self/status").unwrap();
        let status = Status::parse(&text).unwrap();
        assert_eq!(
            (fast.tgid, fast.uids, fast.gids),
            (status.tgid, status.uids, status.gids)
        );
    }
}
