//! Opening a file without being tricked (SPEC §5).
//!
//! A path is first resolved to an `O_PATH` descriptor: that opens nothing
//! for real, so it never blocks on a FIFO and never touches a device. The
//! descriptor pins the inode; its real path and type are read from it, and
//! only once the policy has accepted those is the very same inode reopened
//! with the requested access through `/proc/self/fd`. Whatever is renamed
//! or swapped for a symlink in between, the file sent is the file checked.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode as Perm, SFlag};

use crate::protocol::Mode;
use crate::protocol::tree::{Metadata, Timestamp};

/// The kind of filesystem object a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    Directory,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
    Symlink,
    Other,
}

impl FileKind {
    fn of(mode: u32) -> FileKind {
        match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
            SFlag::S_IFREG => FileKind::Regular,
            SFlag::S_IFDIR => FileKind::Directory,
            SFlag::S_IFIFO => FileKind::Fifo,
            SFlag::S_IFCHR => FileKind::CharDevice,
            SFlag::S_IFBLK => FileKind::BlockDevice,
            SFlag::S_IFSOCK => FileKind::Socket,
            SFlag::S_IFLNK => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Regular => "regular file",
            FileKind::Directory => "directory",
            FileKind::Fifo => "FIFO",
            FileKind::CharDevice => "character device",
            FileKind::BlockDevice => "block device",
            FileKind::Socket => "socket",
            FileKind::Symlink => "symbolic link",
            FileKind::Other => "special file",
        }
    }
}

/// What the policy's type, size and age checks look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileFacts {
    pub kind: FileKind,
    pub size: u64,
    pub mtime: SystemTime,
    pub dev: u64,
    pub ino: u64,
    pub links: u64,
}

impl FileFacts {
    pub fn of(fd: impl AsFd) -> Result<FileFacts, OpenError> {
        Ok(FileFacts::from(&metadata(fd.as_fd())?))
    }

    /// What a file about to be created would show: empty, new.
    pub fn new_empty(now: SystemTime) -> FileFacts {
        FileFacts {
            kind: FileKind::Regular,
            size: 0,
            mtime: now,
            dev: 0,
            ino: 0,
            links: 1,
        }
    }

    /// Unix seconds of the mtime, as responses report it.
    pub fn mtime_secs(&self) -> i64 {
        match self.mtime.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }

    /// Age at `now`; a file from the future is of age zero.
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.mtime).unwrap_or_default()
    }
}

impl From<&Metadata> for FileFacts {
    fn from(stat: &Metadata) -> FileFacts {
        let mtime = if stat.mtime.sec >= 0 {
            SystemTime::UNIX_EPOCH + Duration::new(stat.mtime.sec as u64, stat.mtime.nsec)
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(stat.mtime.sec.unsigned_abs())
        };
        FileFacts {
            kind: FileKind::of(stat.mode),
            size: stat.size,
            mtime,
            dev: stat.dev,
            ino: stat.ino,
            links: stat.nlink,
        }
    }
}

/// `statx` of `fd`'s inode itself (`AT_EMPTY_PATH`; on an `O_PATH` handle
/// nothing is opened, so a FIFO never blocks): the facts the policy
/// checks and, in the same call, all a `stat` answer reports.
pub fn metadata(fd: BorrowedFd<'_>) -> Result<Metadata, OpenError> {
    // SAFETY: statx is plain old data; zero is a valid value of it.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid C string and `st` is writable.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS | libc::STATX_BTIME,
            &mut st,
        )
    };
    Errno::result(rc).map_err(|e| OpenError::from_errno(e, "statx"))?;
    let time = |t: libc::statx_timestamp| Timestamp {
        sec: t.tv_sec,
        nsec: t.tv_nsec,
    };
    Ok(Metadata {
        dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
        mode: u32::from(st.stx_mode),
        nlink: u64::from(st.stx_nlink),
        uid: st.stx_uid,
        gid: st.stx_gid,
        rdev: libc::makedev(st.stx_rdev_major, st.stx_rdev_minor),
        size: st.stx_size,
        blksize: u64::from(st.stx_blksize),
        blocks: st.stx_blocks,
        atime: time(st.stx_atime),
        mtime: time(st.stx_mtime),
        ctime: time(st.stx_ctime),
        btime: (st.stx_mask & libc::STATX_BTIME != 0).then(|| time(st.stx_btime)),
    })
}

/// Why a file could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("no such file")]
    NotFound,
    /// Missing, but only after following a symlink: where the missing part
    /// lies decides whether the client may be told ([`missing_real_path`]).
    #[error("no such file (through a symbolic link)")]
    Dangling,
    /// Out of descriptors: the client should retry later.
    #[error("server is out of file descriptors")]
    OutOfFds,
    #[error("{what}: {errno}", errno = errno.desc())]
    Io { what: &'static str, errno: Errno },
}

impl OpenError {
    fn from_errno(errno: Errno, what: &'static str) -> OpenError {
        match errno {
            Errno::ENOENT | Errno::ENOTDIR => OpenError::NotFound,
            Errno::EMFILE | Errno::ENFILE => OpenError::OutOfFds,
            errno => OpenError::Io { what, errno },
        }
    }
}

/// A path resolved to an inode, not yet opened for I/O.
#[derive(Debug)]
pub struct Located {
    handle: OwnedFd,
    /// The path of the inode after every symlink was followed.
    pub real_path: PathBuf,
    pub facts: FileFacts,
    /// Everything `statx` said of it, of which `facts` is the policy's part.
    pub metadata: Metadata,
}

fn how(resolve: ResolveFlag) -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(resolve)
}

fn proc_fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// A descriptor's name in `/proc/self/fd`, written on the stack: it is
/// made once per grant, and a `String` would be an allocation each time.
struct FdName {
    digits: [u8; 10],
    start: usize,
}

impl FdName {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.digits[self.start..]).expect("ASCII digits")
    }
}

fn fd_name(fd: &impl AsRawFd) -> FdName {
    // A descriptor is never negative; u32 has at most 10 digits.
    let mut n = fd.as_raw_fd().unsigned_abs();
    let mut name = FdName {
        digits: [0; 10],
        start: 10,
    };
    loop {
        name.start -= 1;
        name.digits[name.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return name;
        }
    }
}

/// Opens what [`Located::reopen`] keeps open for the life of the process,
/// so a server's descriptor count is stable from its start.
pub fn prepare() {
    proc_fd_dir();
}

/// `/proc/self/fd`, opened once. `/proc/self` names the whole process, so
/// every thread's descriptors are found in it.
fn proc_fd_dir() -> Option<BorrowedFd<'static>> {
    static DIR: OnceLock<Option<OwnedFd>> = OnceLock::new();
    DIR.get_or_init(|| {
        nix::fcntl::open(
            "/proc/self/fd",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Perm::empty(),
        )
        .ok()
    })
    .as_ref()
    .map(|fd| fd.as_fd())
}

/// Resolves `path` (absolute and normalised) to an `O_PATH` handle.
///
/// The common case has no symlinks and is answered by one `openat2` with
/// `RESOLVE_NO_SYMLINKS`, whose path is then the real path. Otherwise
/// symlinks are followed, but never magic links such as `/proc/self/fd/N`,
/// which would name the server's own descriptors.
pub fn locate(path: &Path) -> Result<Located, OpenError> {
    locate_from(nix::fcntl::AT_FDCWD, Path::new("/"), path)
}

/// [`locate`] for `rel` looked up from the directory `dir`, whose real
/// path is `base` (an absolute `rel` ignores both).
fn locate_from(dir: BorrowedFd<'_>, base: &Path, rel: &Path) -> Result<Located, OpenError> {
    let (handle, real_path) =
        match nix::fcntl::openat2(dir, rel, how(ResolveFlag::RESOLVE_NO_SYMLINKS)) {
            Ok(fd) if rel == Path::new(".") => (fd, base.to_owned()),
            Ok(fd) => (fd, base.join(rel)),
            Err(Errno::ELOOP) => {
                let fd = nix::fcntl::openat2(dir, rel, how(ResolveFlag::RESOLVE_NO_MAGICLINKS))
                    .map_err(|e| match OpenError::from_errno(e, "cannot resolve path") {
                        OpenError::NotFound => OpenError::Dangling,
                        other => other,
                    })?;
                let real = std::fs::read_link(proc_fd_path(&fd)).map_err(|e| OpenError::Io {
                    what: "cannot read real path",
                    errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                })?;
                (fd, real)
            }
            Err(Errno::ENOSYS) => {
                return Err(OpenError::Io {
                    what: "kernel lacks openat2 (Linux 5.6+ needed)",
                    errno: Errno::ENOSYS,
                });
            }
            Err(e) => return Err(OpenError::from_errno(e, "cannot resolve path")),
        };
    let metadata = metadata(handle.as_fd())?;
    let facts = FileFacts::from(&metadata);
    if facts.links == 0 && facts.kind == FileKind::Regular {
        // Unlinked between lookup and fstat: it no longer has a path.
        return Err(OpenError::NotFound);
    }
    Ok(Located {
        handle,
        real_path,
        facts,
        metadata,
    })
}

impl Located {
    /// Opens the located inode for I/O in `mode`.
    ///
    /// Call only for regular files: that is what makes this free of side
    /// effects. The reopen goes through the `O_PATH` handle's magic link,
    /// which names the pinned inode itself, so the facts already read from
    /// the handle hold for the file returned (SPEC §5): no second `fstat`.
    pub fn reopen(&self, mode: Mode) -> Result<File, OpenError> {
        debug_assert_eq!(self.facts.kind, FileKind::Regular);
        let flags = open_flags(mode) | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        let fd = match proc_fd_dir() {
            // One component to look up instead of four: this is per grant.
            Some(dir) => {
                nix::fcntl::openat(dir, fd_name(&self.handle).as_str(), flags, Perm::empty())
            }
            None => nix::fcntl::open(proc_fd_path(&self.handle).as_str(), flags, Perm::empty()),
        }
        .map_err(|e| OpenError::from_errno(e, "cannot open"))?;
        Ok(File::from(fd))
    }

    /// The real path, and the `O_PATH` handle for the caller to close
    /// later: a server closes it with the round's other descriptors, in
    /// one `close_range` (closing it never blocks: an `O_PATH` file has
    /// nothing to flush).
    pub fn into_parts(self) -> (PathBuf, OwnedFd) {
        (self.real_path, self.handle)
    }
}

/// Where a request's paths are looked up from: `/`, or a directory the
/// client holds (SPEC §3.1 `within`), checked to be that very one.
#[derive(Debug)]
pub enum Base {
    Root,
    /// Boxed: a located inode carries all its `statx` says.
    Within {
        dir: Box<Located>,
        requested: PathBuf,
    },
}

impl Base {
    /// The directory at `path` if it is the one with `dev` and `ino`;
    /// `None` otherwise (it was renamed, swapped or mounted over).
    pub fn within(path: &Path, dev: u64, ino: u64) -> Option<Base> {
        let dir = locate(path).ok()?;
        (dir.facts.kind == FileKind::Directory && (dir.facts.dev, dir.facts.ino) == (dev, ino))
            .then(|| Base::Within {
                dir: Box::new(dir),
                requested: path.to_owned(),
            })
    }

    /// Resolves `path` as [`locate`] does, from this base.
    pub fn locate(&self, path: &Path) -> Result<Located, OpenError> {
        match self {
            Base::Root => locate(path),
            Base::Within { dir, requested } => dir.locate_below(requested, path),
        }
    }
}

/// Opens the located directory for reading its entries, on the pinned
/// inode itself. The descriptor stays in the server (SPEC §3.6).
pub fn reopen_directory(located: &Located) -> Result<OwnedFd, OpenError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    match proc_fd_dir() {
        Some(dir) => {
            nix::fcntl::openat(dir, fd_name(&located.handle).as_str(), flags, Perm::empty())
        }
        None => nix::fcntl::open(proc_fd_path(&located.handle).as_str(), flags, Perm::empty()),
    }
    .map_err(|e| OpenError::from_errno(e, "cannot open directory"))
}

/// A file this request created: its directory and name, so that it can be
/// removed again if the grant cannot go out (SPEC §3.2).
#[derive(Debug)]
pub struct CreatedFile {
    dir: OwnedFd,
    name: OsString,
    dev: u64,
    ino: u64,
}

impl CreatedFile {
    /// Removes the file, if the name still leads to the inode created.
    pub fn remove(&self) {
        let still_ours = nix::sys::stat::fstatat(
            &self.dir,
            self.name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| (st.st_dev, st.st_ino) == (self.dev, self.ino));
        if still_ours {
            let _ = nix::unistd::unlinkat(
                &self.dir,
                self.name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

impl Located {
    /// Resolves `path`, which lies below (or is) this directory's
    /// `requested` path, starting from this very directory.
    pub fn locate_below(&self, requested: &Path, path: &Path) -> Result<Located, OpenError> {
        // Lookups start at this very directory (SPEC §3.1 `within`),
        // whatever has been renamed or mounted over since.
        let rel = path.strip_prefix(requested).unwrap_or(path);
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        locate_from(self.handle.as_fd(), &self.real_path, rel)
    }

    /// The `O_PATH` handle that pins the inode.
    pub fn handle(&self) -> BorrowedFd<'_> {
        self.handle.as_fd()
    }

    /// The entry `name` of this directory, not following it if it is a
    /// symlink (the symlink itself is returned, of kind `Symlink`).
    pub fn entry(&self, name: &OsStr) -> Result<Located, OpenError> {
        let handle = nix::fcntl::openat(
            &self.handle,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Perm::empty(),
        )
        .map_err(|e| OpenError::from_errno(e, "cannot resolve path"))?;
        let metadata = metadata(handle.as_fd())?;
        Ok(Located {
            handle,
            real_path: self.real_path.join(name),
            facts: FileFacts::from(&metadata),
            metadata,
        })
    }

    /// Creates `name` in this directory, for I/O in `mode`: `O_CREAT |
    /// O_EXCL | O_NOFOLLOW`, mode 0600 whatever the umask says later.
    /// `Ok(None)` when the name is taken (by anything, a symlink too).
    pub fn create(
        &self,
        name: &OsStr,
        mode: Mode,
    ) -> Result<Option<(File, CreatedFile)>, OpenError> {
        let flags = open_flags(mode)
            | OFlag::O_CREAT
            | OFlag::O_EXCL
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | OFlag::O_NOCTTY;
        let fd =
            match nix::fcntl::openat(&self.handle, name, flags, Perm::from_bits_truncate(0o600)) {
                Ok(fd) => fd,
                Err(Errno::EEXIST) => return Ok(None),
                Err(e) => return Err(OpenError::from_errno(e, "cannot create")),
            };
        let facts = FileFacts::of(&fd)?;
        let dir = nix::unistd::dup(&self.handle).map_err(|e| OpenError::from_errno(e, "dup"))?;
        let created = CreatedFile {
            dir,
            name: name.to_owned(),
            dev: facts.dev,
            ino: facts.ino,
        };
        Ok(Some((File::from(fd), created)))
    }

    /// The group a file or directory the server creates in this directory
    /// for a client whose group is `client_gid` gets, as the kernel would
    /// give it: this directory's own if it is set-group-ID, else the
    /// client's.
    pub fn group_for_new(&self, client_gid: u32) -> Result<u32, OpenError> {
        let st =
            nix::sys::stat::fstat(&self.handle).map_err(|e| OpenError::from_errno(e, "fstat"))?;
        Ok(if st.st_mode & libc::S_ISGID != 0 {
            st.st_gid
        } else {
            client_gid
        })
    }
}

/// Where the missing part of a path that could not be resolved would
/// really lie: the real path of its deepest existing directory, joined
/// with what is missing below it. Symlinks are followed as the kernel
/// would (at most 40); nothing is opened but `O_PATH` handles.
///
/// This only decides whether `not_found` may be said (SPEC §4); it is
/// never used to open anything, so a race here can cost at most a wrong
/// refusal code, never a grant.
pub fn missing_real_path(path: &Path) -> Result<PathBuf, OpenError> {
    let io = |what| move |errno| OpenError::Io { what, errno };
    let open_dir = |real: &Path| {
        nix::fcntl::openat2(
            nix::fcntl::AT_FDCWD,
            real,
            how(ResolveFlag::RESOLVE_NO_SYMLINKS),
        )
        .map_err(io("cannot resolve path"))
    };
    let mut pending: VecDeque<OsString> = components(path.as_os_str().as_bytes()).collect();
    let mut real = PathBuf::from("/");
    let mut dir = open_dir(&real)?;
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        match name.as_bytes() {
            b"." => continue,
            b".." => {
                real.pop();
                dir = open_dir(&real)?;
                continue;
            }
            _ => {}
        }
        let step = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH);
        let fd = match nix::fcntl::openat2(&dir, name.as_os_str(), step) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => {
                real.push(&name);
                // Below a missing name nothing exists, and a `..` there
                // would fail in the kernel too.
                for rest in pending.iter().take_while(|c| c.as_bytes() != b"..") {
                    if rest.as_bytes() != b"." {
                        real.push(rest);
                    }
                }
                return Ok(real);
            }
            Err(e) => return Err(io("cannot resolve path")(e)),
        };
        if FileFacts::of(&fd)?.kind == FileKind::Symlink {
            links += 1;
            if links > 40 {
                return Err(io("cannot resolve path")(Errno::ELOOP));
            }
            let target = nix::fcntl::readlinkat(&dir, name.as_os_str())
                .map_err(io("cannot read symbolic link"))?;
            let target = target.as_bytes();
            for component in components(target).collect::<Vec<_>>().into_iter().rev() {
                pending.push_front(component);
            }
            if target.first() == Some(&b'/') {
                real = PathBuf::from("/");
                dir = open_dir(&real)?;
            }
        } else {
            real.push(&name);
            dir = fd;
        }
    }
    // Everything exists now: it appeared since the open failed.
    Ok(real)
}

/// The non-empty components of a path, as owned names.
fn components(bytes: &[u8]) -> impl Iterator<Item = OsString> + '_ {
    bytes
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| OsString::from_vec(c.to_vec()))
}

/// Access flags for `open(2)`: never `O_CREAT` or `O_TRUNC` (SPEC §3).
fn open_flags(mode: Mode) -> OFlag {
    match mode {
        Mode::Read => OFlag::O_RDONLY,
        Mode::Write => OFlag::O_WRONLY,
        Mode::ReadWrite => OFlag::O_RDWR,
        Mode::Append => OFlag::O_WRONLY | OFlag::O_APPEND,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Raw(i32);

    impl AsRawFd for Raw {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.0
        }
    }

    #[test]
    fn fd_names_are_the_decimal_numbers() {
        for n in [0, 7, 10, 42, 1023, 65536, i32::MAX] {
            assert_eq!(fd_name(&Raw(n)).as_str(), n.to_string());
        }
    }
}
