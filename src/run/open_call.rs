//! What a trapped `open`, `openat`, `openat2` or `creat` asks for, and
//! whether the server can honour it exactly (SPEC §8). A call the server
//! cannot reproduce faithfully is left to the program's own rights.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::listener::Notification;
use super::target::Target;
use super::within::Within;
use crate::client::OpenOptions;
use crate::protocol::{Create, Mode};

/// The arguments of an open-like syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenArgs {
    pub dirfd: i32,
    pub path_addr: u64,
    pub flags: i32,
    pub mode: u32,
}

impl OpenArgs {
    /// The path argument, as the tree calls take one.
    pub fn path_arg(&self) -> super::tree_call::PathArg {
        super::tree_call::PathArg {
            dirfd: self.dirfd,
            addr: self.path_addr,
        }
    }

    /// Decodes the call; `None` for `openat2` with `RESOLVE_*` flags or an
    /// unreadable or malformed `open_how`.
    pub fn decode(call: &Notification, target: &Target) -> Option<OpenArgs> {
        let a = call.args;
        let nr = call.nr;
        #[cfg(target_arch = "x86_64")]
        {
            if nr == libc::SYS_open {
                return Some(OpenArgs {
                    dirfd: libc::AT_FDCWD,
                    path_addr: a[0],
                    flags: a[1] as i32,
                    mode: a[2] as u32,
                });
            }
            if nr == libc::SYS_creat {
                return Some(OpenArgs {
                    dirfd: libc::AT_FDCWD,
                    path_addr: a[0],
                    flags: libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
                    mode: a[1] as u32,
                });
            }
        }
        if nr == libc::SYS_openat {
            return Some(OpenArgs {
                dirfd: a[0] as i32,
                path_addr: a[1],
                flags: a[2] as i32,
                mode: a[3] as u32,
            });
        }
        if nr == libc::SYS_openat2 {
            return open_how(target, a[2], a[3]).map(|(flags, mode)| OpenArgs {
                dirfd: a[0] as i32,
                path_addr: a[1],
                flags,
                mode,
            });
        }
        None
    }
}

/// `struct open_how` at `addr` of `size` bytes: flags and mode, if
/// `resolve` is 0 and any bytes past the known struct are zero (else the
/// kernel would refuse it, and so the program must see that refusal).
fn open_how(target: &Target, addr: u64, size: u64) -> Option<(i32, u32)> {
    const KNOWN: usize = 24;
    if !(KNOWN as u64..=512).contains(&size) {
        return None;
    }
    let mut buf = vec![0u8; size as usize];
    if target.read_memory(addr, &mut buf) != buf.len() || buf[KNOWN..].iter().any(|&b| b != 0) {
        return None;
    }
    let word = |i: usize| u64::from_ne_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap());
    let (flags, mode, resolve) = (word(0), word(1), word(2));
    if resolve != 0 || flags > u64::from(u32::MAX) || mode > 0o7777 {
        return None;
    }
    Some((flags as i32, mode as u32))
}

/// Where an open points: the absolute path asked of the server and, for
/// a relative call, the directory it was proved to start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPath {
    pub path: PathBuf,
    pub within: Option<Within>,
}

/// An open the server can do exactly as the program asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brokerable {
    pub mode: Mode,
    pub create: Create,
    pub truncate: bool,
    /// The call's mode argument; the task's umask is applied later.
    pub create_mode: u32,
    pub cloexec: bool,
    /// Status flags to set with `F_SETFL` before installing the fd.
    pub status_flags: i32,
    /// `O_NOFOLLOW`, asked as `nofollow` (SPEC §3.6).
    pub nofollow: bool,
}

/// Flags the server cannot honour: the call continues untouched.
const UNTOUCHABLE: i32 =
    libc::O_PATH | libc::O_DIRECTORY | libc::O_TMPFILE | libc::O_SYNC | libc::O_DSYNC;
/// Status flags `fcntl(F_SETFL)` sets on the granted fd.
const SETTABLE: i32 = libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME;

impl Brokerable {
    pub fn from_flags(flags: i32, mode: u32) -> Option<Brokerable> {
        // O_TMPFILE includes O_DIRECTORY, and O_SYNC includes O_DSYNC:
        // any overlap is enough to leave the call alone.
        if flags & UNTOUCHABLE != 0 {
            return None;
        }
        // `F_SETFL` may refuse these (`O_NOATIME` on a file the program
        // does not own, `O_DIRECT` where the filesystem lacks it), and
        // only once the server has created the file, which would stay.
        let creating = flags & libc::O_CREAT != 0;
        if creating && flags & (libc::O_NOATIME | libc::O_DIRECT) != 0 {
            return None;
        }
        let append = flags & libc::O_APPEND != 0;
        let mode_wanted = match (flags & libc::O_ACCMODE, append) {
            (libc::O_RDONLY, false) => Mode::Read,
            (libc::O_WRONLY, false) => Mode::Write,
            (libc::O_WRONLY, true) => Mode::Append,
            (libc::O_RDWR, false) => Mode::ReadWrite,
            _ => return None,
        };
        let create = match (creating, flags & libc::O_EXCL != 0) {
            (false, _) => Create::No,
            (true, false) => Create::Yes,
            (true, true) => Create::Exclusive,
        };
        let truncate = flags & libc::O_TRUNC != 0;
        // The server refuses create or truncate with read, and perm bits
        // beyond 0777; the kernel would not, so leave those alone.
        let reading = mode_wanted == Mode::Read;
        if (reading && (create.is_requested() || truncate))
            || (create.is_requested() && mode & !0o777 != 0)
        {
            return None;
        }
        Some(Brokerable {
            mode: mode_wanted,
            create,
            truncate,
            create_mode: mode,
            cloexec: flags & libc::O_CLOEXEC != 0,
            status_flags: flags & SETTABLE,
            nofollow: flags & libc::O_NOFOLLOW != 0,
        })
    }

    /// Whether the kernel could fail this open with `errno`, so that the
    /// server's may be handed on (SPEC §8): `ELOOP` only with
    /// `O_NOFOLLOW`, `EEXIST` only with `O_EXCL`, `EISDIR` only when
    /// writing (a directory opens for reading).
    pub fn can_fail_with(&self, errno: i32) -> bool {
        let writing = self.mode != Mode::Read;
        match errno {
            libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG | libc::EIO => true,
            libc::ELOOP => self.nofollow,
            libc::EEXIST => self.create == Create::Exclusive,
            libc::EISDIR | libc::EROFS | libc::ETXTBSY => writing,
            _ => false,
        }
    }

    /// The request, with the created file's bits as the kernel would give
    /// them: the call's mode less the task's umask.
    pub fn options(&self, umask: u32) -> OpenOptions {
        let options = OpenOptions::new(self.mode)
            .create(self.create)
            .truncate(self.truncate)
            .nofollow(self.nofollow);
        if self.create.is_requested() {
            options.perm(self.create_mode & !umask & 0o777)
        } else {
            options
        }
    }
}

/// `path` made absolute against `base`, with `.` components and repeated
/// `/` removed. `None` for paths the server would refuse or read
/// differently: empty, with a `..` component, or with a trailing `/`.
pub fn absolute_path(path: &[u8], base: Option<&Path>) -> Option<PathBuf> {
    if path.is_empty() || path.ends_with(b"/") || path.ends_with(b"/.") || path == b"." {
        return None;
    }
    let mut out: Vec<u8> = if path[0] == b'/' {
        Vec::with_capacity(path.len())
    } else {
        base?.as_os_str().as_bytes().to_vec()
    };
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            name => {
                if out.last() != Some(&b'/') {
                    out.push(b'/');
                }
                out.extend_from_slice(name);
            }
        }
    }
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(&out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_modes_map_to_the_protocol() {
        let b = |f| Brokerable::from_flags(f, 0o666).map(|b| b.mode);
        assert_eq!(b(libc::O_RDONLY), Some(Mode::Read));
        assert_eq!(b(libc::O_WRONLY), Some(Mode::Write));
        assert_eq!(b(libc::O_WRONLY | libc::O_APPEND), Some(Mode::Append));
        assert_eq!(b(libc::O_RDWR), Some(Mode::ReadWrite));
        assert_eq!(b(libc::O_RDWR | libc::O_APPEND), None);
        assert_eq!(b(libc::O_ACCMODE), None);
    }

    #[test]
    fn flags_the_server_cannot_honour_leave_the_call_alone() {
        for flag in [
            libc::O_PATH,
            libc::O_DIRECTORY,
            libc::O_TMPFILE,
            libc::O_SYNC,
            libc::O_DSYNC,
        ] {
            assert_eq!(
                Brokerable::from_flags(flag | libc::O_WRONLY, 0),
                None,
                "{flag:o}"
            );
        }
        assert_eq!(
            Brokerable::from_flags(libc::O_RDONLY | libc::O_TRUNC, 0),
            None
        );
        assert_eq!(
            Brokerable::from_flags(libc::O_WRONLY | libc::O_CREAT, 0o4755),
            None
        );
        // F_SETFL could refuse them only after the server created the file.
        for flag in [libc::O_NOATIME, libc::O_DIRECT] {
            let creating = libc::O_WRONLY | libc::O_CREAT | flag;
            assert_eq!(Brokerable::from_flags(creating, 0o644), None, "{flag:o}");
            assert!(Brokerable::from_flags(libc::O_WRONLY | flag, 0).is_some());
        }
    }

    #[test]
    fn create_truncate_and_perm_follow_the_call() {
        let b = Brokerable::from_flags(
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NONBLOCK,
            0o666,
        )
        .unwrap();
        assert_eq!((b.create, b.truncate, b.cloexec), (Create::Yes, true, true));
        assert_eq!(b.status_flags, libc::O_NONBLOCK);
        assert_eq!(b.options(0o022).perm, Some(0o644));
        let excl = Brokerable::from_flags(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600);
        assert_eq!(excl.unwrap().create, Create::Exclusive);
        let plain = Brokerable::from_flags(libc::O_RDONLY, 0o777).unwrap();
        assert_eq!(plain.options(0).perm, None);
    }

    #[test]
    fn paths_are_made_absolute_and_tidy() {
        let cwd = Path::new("/home/u");
        let abs = |p: &[u8]| absolute_path(p, Some(cwd));
        assert_eq!(abs(b"a//./b"), Some(PathBuf::from("/home/u/a/b")));
        assert_eq!(abs(b"/srv//x"), Some(PathBuf::from("/srv/x")));
        assert_eq!(abs(b"../x"), None);
        assert_eq!(abs(b"dir/"), None);
        assert_eq!(abs(b""), None);
        assert_eq!(absolute_path(b"rel", None), None);
        assert_eq!(
            absolute_path(b"x", Some(Path::new("/"))),
            Some(PathBuf::from("/x"))
        );
    }
}
