//! Directory streams (SPEC §8, v3). The server never hands out a
//! directory fd; a program that opens a directory `list` grants gets a
//! placeholder instead: an empty directory the supervisor made, opened
//! into the program and removed at once, so the fd refers to nothing but
//! an empty, deleted directory. The supervisor knows its placeholders by
//! device and inode and answers `getdents64`, `getdents`, `lseek` and
//! `fstat` on them from `readdir` and `stat` of the real directory; calls
//! relative to one are asked with the real path, `within` it.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::target::Target;
use super::within::Within;
use crate::client::{DirEntry, FileType};

/// The placeholders handed out, by the device and inode of each.
#[derive(Default)]
pub struct DirStreams {
    streams: Mutex<HashMap<(u64, u64), Stream>>,
    /// False until the first placeholder: until then a trapped
    /// `getdents`, `lseek` or `fstat` costs no more than reading this.
    any: AtomicBool,
}

/// Placeholders made by this process: each gets a name of its own, even
/// with several [`DirStreams`] (tests) at once.
static MADE: AtomicU64 = AtomicU64::new(0);

/// One placeholder's real directory and where its reader is.
pub struct Stream {
    /// The real directory: its path, device and inode.
    pub real: Within,
    /// The placeholder's birth time, where its filesystem records one: an
    /// inode number freed and reused by another deleted directory is not
    /// taken for the placeholder that had it.
    born: Option<Birth>,
    /// The listing, fetched on the first read after opening or rewinding,
    /// and dropped once read to the end.
    entries: Option<Vec<DirEntry>>,
    /// Index of the next entry; the `d_off` handed out for an entry is
    /// the index after it, so `lseek` to it resumes there.
    position: usize,
    /// Read to the end: no listing is fetched again until an `lseek`.
    at_end: bool,
}

impl DirStreams {
    /// A new placeholder for `real`, registered; the caller installs it.
    pub fn make(&self, real: Within) -> io::Result<OwnedFd> {
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(".fdopen-run-{}-{n}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path);
        let removed = fs::remove_dir(&path);
        let dir = opened?;
        removed?;
        let meta = dir.metadata()?;
        let stream = Stream {
            real,
            born: birth(dir.as_fd()),
            entries: None,
            position: 0,
            at_end: false,
        };
        self.lock().insert((meta.dev(), meta.ino()), stream);
        self.any.store(true, Ordering::Release);
        Ok(OwnedFd::from(dir))
    }

    /// Forgets the placeholder `fd` (not installed after all).
    pub fn forget(&self, fd: &OwnedFd) {
        if let Ok(dup) = fd.try_clone()
            && let Ok(meta) = fs::File::from(dup).metadata()
        {
            self.lock().remove(&(meta.dev(), meta.ino()));
        }
    }

    /// Whether any placeholder was ever made: the cheap test first.
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// The placeholder the task holds as `fd` (its cwd for `AT_FDCWD`):
    /// a deleted directory (no links) with the device and inode of one
    /// we made. A live directory that reuses a freed inode number has
    /// links, so it is never taken for one.
    pub fn key_of(&self, target: &Target, tgid: i32, fd: i32) -> Option<(u64, u64)> {
        if !self.any() {
            return None;
        }
        let held = target.held(tgid, fd)?;
        let born = birth(held.as_fd());
        let meta = fs::File::from(held).metadata().ok()?;
        let key = (meta.dev(), meta.ino());
        let ours = |s: &Stream| s.born == born;
        (meta.is_dir() && meta.nlink() == 0 && self.lock().get(&key).is_some_and(ours))
            .then_some(key)
    }

    /// The real directory of a placeholder.
    pub fn real(&self, key: (u64, u64)) -> Option<Within> {
        self.lock().get(&key).map(|s| s.real.clone())
    }

    /// Runs `f` on the placeholder's stream, under the lock (calls on one
    /// stream are answered one at a time, as the kernel does).
    pub fn with<T>(&self, key: (u64, u64), f: impl FnOnce(&mut Stream) -> T) -> Option<T> {
        self.lock().get_mut(&key).map(f)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), Stream>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Stream {
    /// Whether the listing must be fetched before the next read.
    pub fn needs_listing(&self) -> bool {
        self.entries.is_none() && !self.at_end
    }

    pub fn set_listing(&mut self, entries: Vec<DirEntry>) {
        self.entries = Some(entries);
    }

    /// The records of one `getdents` call into `count` bytes (`wide`:
    /// `linux_dirent64`), from the current position; empty at the end.
    /// `EINVAL` if the next record does not fit at all, as the kernel.
    pub fn read(&mut self, count: usize, wide: bool) -> Result<Vec<u8>, i32> {
        let entries = self.entries.as_deref().unwrap_or_default();
        let mut out = Vec::new();
        while let Some(entry) = entries.get(self.position) {
            let record = dirent(entry, self.position as i64 + 1, wide);
            if out.len() + record.len() > count {
                if out.is_empty() {
                    return Err(libc::EINVAL);
                }
                break;
            }
            out.extend_from_slice(&record);
            self.position += 1;
        }
        if out.is_empty() {
            // Read to the end: the listing goes, and an `lseek` fetches a
            // fresh one.
            self.entries = None;
            self.at_end = true;
        }
        Ok(out)
    }

    /// `lseek`: `SEEK_SET` to 0 rewinds (a fresh listing), to an offset
    /// we handed out resumes there (in a fresh listing if the last was
    /// read to the end); `SEEK_CUR` by 0 tells the position. `None` for
    /// anything else, which then acts on the empty placeholder.
    pub fn seek(&mut self, offset: i64, whence: i32) -> Option<i64> {
        match (whence, offset) {
            (libc::SEEK_SET, n) if n >= 0 => {
                if n == 0 {
                    self.entries = None;
                }
                self.position = usize::try_from(n).ok()?;
                self.at_end = false;
                Some(n)
            }
            (libc::SEEK_CUR, 0) => Some(self.position as i64),
            _ => None,
        }
    }
}

/// A birth time, seconds and nanoseconds.
type Birth = (i64, u32);

/// `fd`'s birth time, where its filesystem records one. From `statx`
/// itself (the one [`crate::safe_open::metadata`] makes): std's
/// `Metadata::created` has none on musl, which the shipped client links,
/// and would leave every placeholder without one.
fn birth(fd: BorrowedFd<'_>) -> Option<Birth> {
    let btime = crate::safe_open::metadata(fd).ok()?.btime?;
    Some((btime.sec, btime.nsec))
}

/// Whether an open asks for a directory stream: `O_DIRECTORY`, read-only,
/// creating nothing (`O_TMPFILE` includes `O_DIRECTORY`), not `O_PATH`.
pub fn wants_directory(flags: i32) -> bool {
    flags & libc::O_DIRECTORY != 0
        && flags & libc::O_ACCMODE == libc::O_RDONLY
        && flags & (libc::O_PATH | libc::O_CREAT | libc::O_TRUNC) == 0
        && flags & libc::O_TMPFILE != libc::O_TMPFILE
}

/// `d_type` of a listed entry.
fn d_type(file_type: FileType) -> u8 {
    match file_type {
        FileType::File => libc::DT_REG,
        FileType::Dir => libc::DT_DIR,
        FileType::Symlink => libc::DT_LNK,
        FileType::Fifo => libc::DT_FIFO,
        FileType::Socket => libc::DT_SOCK,
        FileType::Char => libc::DT_CHR,
        FileType::Block => libc::DT_BLK,
        FileType::Unknown => libc::DT_UNKNOWN,
    }
}

/// One record as the kernel writes it: `linux_dirent64` (`d_ino`,
/// `d_off`, `d_reclen`, `d_type`, the name and its NUL) or, for the old
/// `getdents`, `linux_dirent` (`d_type` in the record's last byte), each
/// padded to 8 bytes.
fn dirent(entry: &DirEntry, next: i64, wide: bool) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let name = entry.name.as_bytes();
    const HEADER: usize = 8 + 8 + 2;
    let unpadded = if wide {
        HEADER + 1 + name.len() + 1
    } else {
        HEADER + name.len() + 2
    };
    let reclen = unpadded.next_multiple_of(8);
    let mut record = Vec::with_capacity(reclen);
    record.extend_from_slice(&entry.ino.to_ne_bytes());
    record.extend_from_slice(&next.to_ne_bytes());
    record.extend_from_slice(&(reclen as u16).to_ne_bytes());
    if wide {
        record.push(d_type(entry.file_type));
    }
    record.extend_from_slice(name);
    record.resize(reclen, 0);
    if !wide {
        record[reclen - 1] = d_type(entry.file_type);
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;

    /// What the kernel writes for a real directory, call by call.
    fn kernel_records(dir: &std::path::Path, nr: libc::c_long) -> Vec<u8> {
        let file = fs::File::open(dir).unwrap();
        let mut buf = vec![0u8; 4096];
        // SAFETY: getdents into a buffer of the size given.
        let n = unsafe { libc::syscall(nr, file.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
        assert!(n > 0);
        buf.truncate(n as usize);
        buf
    }

    /// The entries, `d_off`s and types the kernel's records say.
    fn decode(buf: &[u8], wide: bool) -> Vec<(DirEntry, i64)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let ino = u64::from_ne_bytes(buf[at..at + 8].try_into().unwrap());
            let off = i64::from_ne_bytes(buf[at + 8..at + 16].try_into().unwrap());
            let reclen = u16::from_ne_bytes(buf[at + 16..at + 18].try_into().unwrap()) as usize;
            let record = &buf[at..at + reclen];
            let (kind, name_at) = if wide {
                (record[18], 19)
            } else {
                (record[reclen - 1], 18)
            };
            let name = &record[name_at..];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap()];
            let file_type = match kind {
                libc::DT_REG => FileType::File,
                libc::DT_DIR => FileType::Dir,
                libc::DT_LNK => FileType::Symlink,
                _ => FileType::Unknown,
            };
            let name = OsString::from(std::ffi::OsStr::from_bytes(name));
            out.push((
                DirEntry {
                    name,
                    file_type,
                    ino,
                },
                off,
            ));
            at += reclen;
        }
        out
    }

    #[test]
    fn records_are_byte_for_byte_the_kernels() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a-file"), "").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("x", dir.path().join("link-with-a-longer-name")).unwrap();
        let mut calls = vec![(libc::SYS_getdents64, true)];
        #[cfg(target_arch = "x86_64")]
        calls.push((libc::SYS_getdents, false));
        for (nr, wide) in calls {
            let kernel = kernel_records(dir.path(), nr);
            let ours: Vec<u8> = decode(&kernel, wide)
                .iter()
                .flat_map(|(entry, off)| dirent(entry, *off, wide))
                .collect();
            assert_eq!(ours, kernel, "wide: {wide}");
        }
    }

    fn stream(names: &[&str]) -> Stream {
        let entries = names
            .iter()
            .enumerate()
            .map(|(i, n)| DirEntry {
                name: (*n).into(),
                file_type: FileType::File,
                ino: i as u64 + 10,
            })
            .collect();
        Stream {
            real: Within {
                path: "/srv".into(),
                dev: 1,
                ino: 2,
            },
            born: None,
            entries: Some(entries),
            position: 0,
            at_end: false,
        }
    }

    #[test]
    fn reads_resume_where_they_stopped_and_seek_where_told() {
        let mut s = stream(&[".", "..", "a", "b"]);
        // Room for two 24-byte records.
        let first = s.read(48, true).unwrap();
        assert_eq!(decode(&first, true).len(), 2);
        assert_eq!(s.seek(0, libc::SEEK_CUR), Some(2));
        let rest = decode(&s.read(4096, true).unwrap(), true);
        let names: Vec<_> = rest.iter().map(|(e, _)| e.name.clone()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(rest.last().unwrap().1, 4);
        // Back to an offset we handed out.
        assert_eq!(s.seek(3, libc::SEEK_SET), Some(3));
        assert_eq!(decode(&s.read(4096, true).unwrap(), true)[0].0.name, "b");
        assert!(s.read(4096, true).unwrap().is_empty());
        // At the end the listing is dropped, and not fetched again...
        assert!(!s.needs_listing());
        assert!(s.read(4096, true).unwrap().is_empty());
        assert_eq!(s.seek(0, libc::SEEK_CUR), Some(4));
        // ...until an lseek: back to an offset handed out, or a rewind.
        assert_eq!(s.seek(2, libc::SEEK_SET), Some(2));
        assert!(s.needs_listing());
        s.set_listing(stream(&[".", "..", "a", "b"]).entries.unwrap());
        assert_eq!(decode(&s.read(4096, true).unwrap(), true).len(), 2);
        // A buffer too small for one record: EINVAL.
        assert_eq!(s.seek(0, libc::SEEK_SET), Some(0));
        assert!(s.needs_listing());
        s.set_listing(stream(&["x"]).entries.unwrap());
        assert_eq!(s.read(8, true), Err(libc::EINVAL));
        assert_eq!(s.seek(-1, libc::SEEK_END), None);
    }

    #[test]
    fn only_read_only_directory_opens_get_a_stream() {
        let dir = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        assert!(wants_directory(dir));
        assert!(!wants_directory(libc::O_RDONLY));
        assert!(!wants_directory(libc::O_TMPFILE | libc::O_WRONLY));
        assert!(!wants_directory(dir | libc::O_PATH));
        assert!(!wants_directory(dir | libc::O_CREAT));
    }

    #[test]
    fn a_placeholder_is_an_empty_deleted_directory_we_know() {
        let streams = DirStreams::default();
        assert!(!streams.any());
        let real = Within {
            path: "/srv".into(),
            dev: 1,
            ino: 2,
        };
        let fd = streams.make(real.clone()).unwrap();
        let meta = fs::File::from(fd.try_clone().unwrap()).metadata().unwrap();
        assert!(meta.is_dir() && meta.nlink() == 0);
        let me = Target {
            // SAFETY: gettid has no arguments.
            tid: unsafe { libc::gettid() },
        };
        let key = streams
            .key_of(&me, std::process::id() as i32, fd.as_raw_fd())
            .unwrap();
        assert_eq!(streams.real(key), Some(real));
        // A live directory is never one.
        let live = fs::File::open("/").unwrap();
        assert_eq!(
            streams.key_of(&me, std::process::id() as i32, live.as_raw_fd()),
            None
        );
        streams.forget(&fd);
        assert_eq!(streams.real(key), None);
    }

    #[test]
    fn a_placeholder_knows_its_birth_time_where_the_kernel_gives_one() {
        // std's `Metadata::created` has no statx on musl, which the
        // shipped client links: it must not be what the check rests on.
        let streams = DirStreams::default();
        let real = Within {
            path: "/srv".into(),
            dev: 1,
            ino: 2,
        };
        let fd = streams.make(real).unwrap();
        // SAFETY: all-zero is a valid statx; the call writes only it.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::statx(
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                libc::STATX_BTIME,
                &mut stx,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        if stx.stx_mask & libc::STATX_BTIME == 0 {
            eprintln!("skipped: no birth times on {:?}", std::env::temp_dir());
            return;
        }
        let meta = fs::File::from(fd.try_clone().unwrap()).metadata().unwrap();
        let streams = streams.lock();
        let stream = &streams[&(meta.dev(), meta.ino())];
        assert!(stream.born.is_some(), "the kernel gave {:?}", stx.stx_btime);
    }
}
