//! The directory a relative call starts from (SPEC §8, relative paths):
//! the program's dirfd or cwd, named by a path the supervisor has proved
//! to reach that very directory. The text of a `/proc` link alone can name
//! another one (a mount in another namespace, a detached mount, a rename),
//! and brokering by that text would open for the program what it never
//! named: a confused deputy.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::target::Target;

/// A directory the program holds, with the path that names it for the
/// supervisor (and the server, which shares the mount namespace) and its
/// `st_dev`/`st_ino`, which the server can check again (`within`, §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Within {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

impl Within {
    /// The directory `dirfd` (or the cwd, for `AT_FDCWD`) of the task,
    /// if `path`, the text its `/proc` link showed
    /// ([`Target::base_directory`]), looked up in the supervisor's mount
    /// namespace, leads to the directory the task holds: same device and
    /// inode. `None` otherwise, and the call continues untouched.
    ///
    /// The link is read before the task's own directory is fetched, so a
    /// directory swapped in between makes the two differ, never agree on a
    /// third. What the path names can still change after this check;
    /// passing `dev` and `ino` on to the server closes that window.
    pub fn prove(target: &Target, tgid: i32, dirfd: i32, path: PathBuf) -> Option<Within> {
        let (dev, ino) = target.directory_id(tgid, dirfd)?;
        let named = fs::metadata(&path).ok()?;
        (named.is_dir() && named.dev() == dev && named.ino() == ino).then_some(Within {
            path,
            dev,
            ino,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, RawFd};

    fn prove(fd: RawFd) -> Option<Within> {
        let (target, tgid) = me();
        Within::prove(&target, tgid, fd, target.base_directory(fd)?)
    }

    fn me() -> (Target, i32) {
        // SAFETY: gettid has no arguments.
        let tid = unsafe { libc::gettid() };
        (Target { tid }, std::process::id() as i32)
    }

    #[test]
    fn a_directory_fd_is_proved_by_its_own_path() {
        let dir = tempfile::tempdir().unwrap();
        let held = fs::File::open(dir.path()).unwrap();
        let within = prove(held.as_raw_fd()).unwrap();
        let meta = fs::metadata(dir.path()).unwrap();
        assert_eq!(within.path, dir.path().canonicalize().unwrap());
        assert_eq!((within.dev, within.ino), (meta.dev(), meta.ino()));
    }

    #[test]
    fn a_renamed_directory_is_not_the_one_its_old_path_names() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        let held = fs::File::open(&a).unwrap();
        assert!(prove(held.as_raw_fd()).is_some());
        // The link follows the rename; a new directory at the old name
        // must not pass for the one held.
        fs::rename(&a, &b).unwrap();
        fs::create_dir(&a).unwrap();
        let within = prove(held.as_raw_fd()).unwrap();
        assert_eq!(within.path, b.canonicalize().unwrap());
        fs::remove_dir(&b).unwrap();
        assert_eq!(prove(held.as_raw_fd()), None);
    }

    #[test]
    fn a_file_is_no_directory() {
        let file = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(prove(file.as_file().as_raw_fd()), None);
        assert_eq!(prove(-5), None);
        // A path that names another directory than the one held.
        let (target, tgid) = me();
        let held = fs::File::open("/").unwrap();
        let other = Within::prove(&target, tgid, held.as_raw_fd(), "/proc".into());
        assert_eq!(other, None);
    }
}
