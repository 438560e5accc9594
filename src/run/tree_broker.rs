//! The broker's arm for tree calls (SPEC §8, v3): a trapped `stat`,
//! `access`, `readlink`, xattr read, `mkdir`, `unlink`, `rmdir` or
//! `rename` is asked of the server as the matching op of SPEC §3.6; the
//! answer is written into the program's memory in the layout of its call
//! and the syscall returns what the kernel would have. A refusal with an
//! errno the call can fail with returns that errno; any other refusal,
//! and everything we cannot decide, continues with the program's rights.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::broker::{Broker, Untouched, ask_for_errno};
use super::listener::Notification;
use super::memory::TargetMemory;
use super::open_call::absolute_path;
use super::target::Target;
use super::tree_call::{
    AccessCheck, PathArg, StatLayout, TreeCall, readlink_answer, stat_bytes, statx_bytes,
    xattr_answer, xattr_name_list,
};
use super::within::Within;
use crate::client::{Client, Metadata, OpenOptions, TreeReply, TreeRequest};
use crate::protocol::Mode;

/// Longest xattr name the kernel takes (`XATTR_NAME_MAX`).
const XATTR_NAME_MAX: usize = 255;

/// How a decided call ends.
enum Answer {
    /// The syscall returns this value.
    Value(i64),
    /// The syscall fails with this errno.
    Errno(i32),
}

/// A path argument resolved for the server: absolute, and with the
/// directory it was relative to, proved to be the program's own.
struct Resolved {
    path: PathBuf,
    within: Option<Within>,
}

/// A path argument made absolute, not yet proved: the directory fd and
/// the path its `/proc` link showed, for a relative one.
struct Named {
    path: PathBuf,
    base: Option<(i32, PathBuf)>,
}

impl Named {
    /// Proves the directory a relative path started from (`within`).
    fn prove(self, target: &Target, tgid: i32) -> Result<Resolved, Untouched> {
        let within = match self.base {
            Some((dirfd, base)) => Some(Within::prove(target, tgid, dirfd, base).ok_or(Untouched)?),
            None => None,
        };
        Ok(Resolved {
            path: self.path,
            within,
        })
    }
}

impl Broker {
    /// Answers a decoded tree call, or says it continues.
    pub(super) fn tree(
        &self,
        call: &Notification,
        target: &Target,
        tree: TreeCall,
        client: &mut Option<Client>,
    ) -> Result<(), Untouched> {
        let answer = match tree {
            TreeCall::Stat {
                path,
                nofollow,
                out,
                layout,
                ..
            } => {
                let (resolved, memory) = self.prepare(call, target, path, true)?;
                let request = with(TreeRequest::stat(&resolved.path), &resolved).nofollow(nofollow);
                self.on_reply(client, &tree, &request, |reply| match reply {
                    TreeReply::Stat { stat, .. } => {
                        let bytes = match layout {
                            StatLayout::Stat => stat_bytes(&statx_of(&stat)),
                            StatLayout::Statx => statx_bytes(&statx_of(&stat)),
                        };
                        write(memory.as_ref(), out, &bytes, 0)
                    }
                    _ => None,
                })?
            }
            TreeCall::Access {
                path,
                check,
                nofollow,
            } => {
                let (resolved, _) = self.prepare(call, target, path, false)?;
                let mode = match check {
                    AccessCheck::Exists => None,
                    AccessCheck::Read => Some(Mode::Read),
                    AccessCheck::Write => Some(Mode::Write),
                    AccessCheck::ReadWrite => Some(Mode::ReadWrite),
                };
                match mode {
                    None => {
                        let request =
                            with(TreeRequest::stat(&resolved.path), &resolved).nofollow(nofollow);
                        self.on_reply(client, &tree, &request, |_| Some(Answer::Value(0)))?
                    }
                    Some(mode) => {
                        let mut options = OpenOptions::new(mode).nofollow(nofollow);
                        if let Some(within) = &resolved.within {
                            options = options.within(client_within(within));
                        }
                        match ask_for_errno(client, &self.socket, |c| {
                            c.check_with(&resolved.path, &options)
                        }) {
                            Ok(_) => Answer::Value(0),
                            Err(errno) => refusal(&tree, errno)?,
                        }
                    }
                }
            }
            TreeCall::ReadLink { path, buf, size } => {
                let (resolved, memory) = self.prepare(call, target, path, true)?;
                let request = with(TreeRequest::readlink(&resolved.path), &resolved);
                self.on_reply(client, &tree, &request, |reply| match reply {
                    TreeReply::Link { target, .. } => {
                        let text = readlink_answer(target.as_os_str().as_bytes(), size)?;
                        write(memory.as_ref(), buf, text, text.len() as i64)
                    }
                    _ => None,
                })?
            }
            TreeCall::Xattr {
                path,
                nofollow,
                name,
                buf,
                size,
            } => {
                let name = match name {
                    Some(addr) => Some(target.read_c_string(addr).ok_or(Untouched)?),
                    None => None,
                };
                if name
                    .as_ref()
                    .is_some_and(|n| n.is_empty() || n.len() > XATTR_NAME_MAX)
                {
                    return Err(Untouched);
                }
                let (resolved, memory) = self.prepare(call, target, path, true)?;
                let request = match &name {
                    Some(name) => TreeRequest::xattr(&resolved.path, OsStr::from_bytes(name)),
                    None => TreeRequest::xattr_names(&resolved.path),
                };
                let request = with(request, &resolved).nofollow(nofollow);
                self.on_reply(client, &tree, &request, |reply| {
                    let value = match reply {
                        TreeReply::XattrValue(value) => value,
                        TreeReply::XattrNames(names) => {
                            xattr_name_list(names.iter().map(|n| n.as_bytes()))
                        }
                        _ => return None,
                    };
                    match xattr_answer(&value, size) {
                        Ok(Some(bytes)) => write(memory.as_ref(), buf, bytes, bytes.len() as i64),
                        Ok(None) => Some(Answer::Value(value.len() as i64)),
                        Err(errno) => Some(Answer::Errno(errno)),
                    }
                })?
            }
            TreeCall::Mkdir { path, mode } => {
                if mode & !0o777 != 0 {
                    return Err(Untouched);
                }
                let umask = target.umask().ok_or(Untouched)?;
                let (resolved, _) = self.prepare(call, target, path, false)?;
                let request = with(TreeRequest::mkdir(&resolved.path, mode & !umask), &resolved);
                self.on_reply(client, &tree, &request, |_| Some(Answer::Value(0)))?
            }
            TreeCall::Remove { path, dir } => {
                let (resolved, _) = self.prepare(call, target, path, false)?;
                let request = if dir {
                    TreeRequest::rmdir(&resolved.path)
                } else {
                    TreeRequest::unlink(&resolved.path)
                };
                let request = with(request, &resolved);
                self.on_reply(client, &tree, &request, |_| Some(Answer::Value(0)))?
            }
            TreeCall::Rename {
                from,
                to,
                noreplace,
            } => {
                let (resolved, to) = self.prepare_pair(call, target, from, to)?;
                let request =
                    with(TreeRequest::rename(&resolved.path, to), &resolved).noreplace(noreplace);
                self.on_reply(client, &tree, &request, |_| Some(Answer::Value(0)))?
            }
            // Directory streams: answered only for placeholders.
            TreeCall::Fstat { .. } | TreeCall::Getdents { .. } | TreeCall::Lseek { .. } => {
                return Err(Untouched);
            }
        };
        match answer {
            Answer::Value(value) => self.listener.answer(call.id, value),
            Answer::Errno(errno) => self.listener.fail(call.id, errno),
        }
        Ok(())
    }

    /// Reads and resolves one path argument, checks scope and identity,
    /// opens the task's memory if the answer is written there, and
    /// confirms with `ID_VALID` that all of it came from the task that
    /// trapped.
    fn prepare(
        &self,
        call: &Notification,
        target: &Target,
        arg: PathArg,
        writes_memory: bool,
    ) -> Result<(Resolved, Option<TargetMemory>), Untouched> {
        let named = self.resolve(target, arg)?;
        let tgid = target.tgid_if_same_identity(&self.own).ok_or(Untouched)?;
        let resolved = named.prove(target, tgid)?;
        let memory = if writes_memory {
            Some(TargetMemory::open(target.tid).map_err(|_| Untouched)?)
        } else {
            None
        };
        if !self.listener.still_valid(call.id) {
            return Err(Untouched);
        }
        Ok((resolved, memory))
    }

    /// [`prepare`] for `rename`'s two paths: one `within` must hold both
    /// (SPEC §3.6), so both are absolute or both relative to one directory.
    fn prepare_pair(
        &self,
        call: &Notification,
        target: &Target,
        from: PathArg,
        to: PathArg,
    ) -> Result<(Resolved, PathBuf), Untouched> {
        let (from, to) = (self.resolve(target, from)?, self.resolve(target, to)?);
        let tgid = target.tgid_if_same_identity(&self.own).ok_or(Untouched)?;
        let (from, to) = (from.prove(target, tgid)?, to.prove(target, tgid)?);
        if from.within != to.within {
            return Err(Untouched);
        }
        if !self.listener.still_valid(call.id) {
            return Err(Untouched);
        }
        Ok((from, to.path))
    }

    /// The absolute path a path argument names, if it is in the scope and
    /// not the program's own `/proc` (the server's is another). Cheap
    /// checks first: most trapped calls end here, untouched.
    fn resolve(&self, target: &Target, arg: PathArg) -> Result<Named, Untouched> {
        let raw = target.read_c_string(arg.addr).ok_or(Untouched)?;
        if raw.is_empty() {
            return Err(Untouched);
        }
        let base = if raw.first() == Some(&b'/') {
            None
        } else {
            Some(target.base_directory(arg.dirfd).ok_or(Untouched)?)
        };
        let path = absolute_path(&raw, base.as_deref()).ok_or(Untouched)?;
        if own_proc(&path) || !self.scope.covers_tree_path(&path) {
            return Err(Untouched);
        }
        Ok(Named {
            path,
            base: base.map(|base| (arg.dirfd, base)),
        })
    }

    /// Sends `request`; a reply becomes what `answer` makes of it (`None`:
    /// the call continues), a refusal what [`refusal`] says.
    fn on_reply(
        &self,
        client: &mut Option<Client>,
        call: &TreeCall,
        request: &TreeRequest,
        answer: impl FnOnce(TreeReply) -> Option<Answer>,
    ) -> Result<Answer, Untouched> {
        match ask_for_errno(client, &self.socket, |c| c.tree(request)) {
            Ok(reply) => answer(reply).ok_or(Untouched),
            Err(errno) => refusal(call, errno),
        }
    }
}

/// A refusal's errno goes back where the call can fail with it; any
/// other refusal continues the call with the program's own rights.
fn refusal(call: &TreeCall, errno: Option<i32>) -> Result<Answer, Untouched> {
    match errno {
        Some(errno) if call.can_fail_with(errno) => Ok(Answer::Errno(errno)),
        _ => Err(Untouched),
    }
}

/// `request` with the `within` of the directory its path was relative to.
fn with(request: TreeRequest, resolved: &Resolved) -> TreeRequest {
    match &resolved.within {
        Some(within) => request.within(client_within(within)),
        None => request,
    }
}

fn client_within(within: &Within) -> crate::client::Within {
    crate::client::Within {
        path: within.path.clone(),
        dev: within.dev,
        ino: within.ino,
    }
}

/// Writes the answer into the task, for the call to return `value`; a
/// buffer it cannot take makes the call fail with `EFAULT`, as the
/// kernel's own copy-out would.
fn write(memory: Option<&TargetMemory>, addr: u64, bytes: &[u8], value: i64) -> Option<Answer> {
    match memory?.write(addr, bytes) {
        Ok(()) => Some(Answer::Value(value)),
        Err(e) if e.raw_os_error() == Some(libc::EFAULT) => Some(Answer::Errno(libc::EFAULT)),
        Err(_) => None,
    }
}

/// `/proc/self`, `/proc/thread-self` and `/proc/PID` name the program's
/// own processes, which the server's `/proc` does not show as it sees them.
fn own_proc(path: &Path) -> bool {
    let mut parts = path.components().skip(1);
    if parts.next().map(|c| c.as_os_str()) != Some(OsStr::new("proc")) {
        return false;
    }
    match parts.next().and_then(|c| c.as_os_str().to_str()) {
        Some("self" | "thread-self") => true,
        Some(name) => name.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// What the server said of an inode, as the kernel's `statx` says it:
/// the basic fields, and the birth time where the filesystem has one,
/// with `stx_mask` naming exactly those.
pub fn statx_of(meta: &Metadata) -> libc::statx {
    // SAFETY: `struct statx` is plain old data; all-zero is valid.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    stx.stx_mask = libc::STATX_BASIC_STATS;
    stx.stx_blksize = meta.blksize as u32;
    stx.stx_nlink = meta.nlink as u32;
    stx.stx_uid = meta.uid;
    stx.stx_gid = meta.gid;
    stx.stx_mode = meta.mode as u16;
    stx.stx_ino = meta.ino;
    stx.stx_size = meta.size;
    stx.stx_blocks = meta.blocks;
    let time = |t: &mut libc::statx_timestamp, from: &crate::client::Timestamp| {
        t.tv_sec = from.sec;
        t.tv_nsec = from.nsec;
    };
    time(&mut stx.stx_atime, &meta.atime);
    time(&mut stx.stx_mtime, &meta.mtime);
    time(&mut stx.stx_ctime, &meta.ctime);
    if let Some(btime) = &meta.btime {
        time(&mut stx.stx_btime, btime);
        stx.stx_mask |= libc::STATX_BTIME;
    }
    (stx.stx_rdev_major, stx.stx_rdev_minor) = (libc::major(meta.rdev), libc::minor(meta.rdev));
    (stx.stx_dev_major, stx.stx_dev_minor) = (libc::major(meta.dev), libc::minor(meta.dev));
    stx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Timestamp;
    use crate::run::tree_call::as_bytes;
    use std::os::unix::fs::MetadataExt;

    /// Metadata as the server makes it: from what the kernel says.
    fn metadata(path: &str) -> (Metadata, libc::statx) {
        let c = std::ffi::CString::new(path).unwrap();
        // SAFETY: statx fills a zeroed struct of its own type.
        let mut k: libc::statx = unsafe { std::mem::zeroed() };
        let mask = libc::STATX_BASIC_STATS | libc::STATX_BTIME;
        let rc = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, mask, &mut k) };
        assert_eq!(rc, 0);
        let m = std::fs::metadata(path).unwrap();
        let ts = |t: libc::statx_timestamp| Timestamp {
            sec: t.tv_sec,
            nsec: t.tv_nsec,
        };
        let meta = Metadata {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            nlink: m.nlink(),
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev(),
            size: m.size(),
            blksize: m.blksize(),
            blocks: m.blocks(),
            atime: ts(k.stx_atime),
            mtime: ts(k.stx_mtime),
            ctime: ts(k.stx_ctime),
            btime: (k.stx_mask & libc::STATX_BTIME != 0).then(|| ts(k.stx_btime)),
        };
        (meta, k)
    }

    #[test]
    fn statx_is_filled_as_the_kernel_fills_it() {
        for path in ["/", "/dev/null", env!("CARGO_MANIFEST_DIR")] {
            let (meta, kernel) = metadata(path);
            let ours = statx_of(&meta);
            let wanted = libc::STATX_BASIC_STATS | libc::STATX_BTIME;
            assert_eq!(ours.stx_mask, kernel.stx_mask & wanted, "{path}");
            // Field by field, every one the mask names.
            let k = &kernel;
            assert_eq!(
                (ours.stx_mode, ours.stx_ino, ours.stx_nlink, ours.stx_size),
                (k.stx_mode, k.stx_ino, k.stx_nlink, k.stx_size)
            );
            assert_eq!(
                (
                    ours.stx_uid,
                    ours.stx_gid,
                    ours.stx_blocks,
                    ours.stx_blksize
                ),
                (k.stx_uid, k.stx_gid, k.stx_blocks, k.stx_blksize)
            );
            assert_eq!(
                (ours.stx_dev_major, ours.stx_dev_minor),
                (k.stx_dev_major, k.stx_dev_minor)
            );
            assert_eq!(
                (ours.stx_rdev_major, ours.stx_rdev_minor),
                (k.stx_rdev_major, k.stx_rdev_minor)
            );
            for (a, b) in [
                (ours.stx_mtime, k.stx_mtime),
                (ours.stx_ctime, k.stx_ctime),
                (ours.stx_btime, k.stx_btime),
            ] {
                assert_eq!((a.tv_sec, a.tv_nsec), (b.tv_sec, b.tv_nsec), "{path}");
            }
            // And struct stat from it is byte for byte the kernel's, but
            // for the atime, which may move between the two reads.
            // SAFETY: stat fills a zeroed struct of its own type.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let c = std::ffi::CString::new(path).unwrap();
            assert_eq!(unsafe { libc::stat(c.as_ptr(), &mut st) }, 0);
            let ours = stat_bytes(&statx_of(&meta));
            let atime = std::mem::offset_of!(libc::stat, st_atime);
            let after = std::mem::offset_of!(libc::stat, st_mtime);
            let theirs = as_bytes(&st);
            assert_eq!(ours[..atime], theirs[..atime], "{path}");
            assert_eq!(ours[after..], theirs[after..], "{path}");
        }
    }

    #[test]
    fn the_programs_own_proc_is_left_alone() {
        for path in ["/proc/self/fd/3", "/proc/thread-self", "/proc/1234/root/x"] {
            assert!(own_proc(Path::new(path)), "{path}");
        }
        for path in [
            "/proc/sys/kernel/x",
            "/proc",
            "/srv/proc/self",
            "/procx/self",
        ] {
            assert!(!own_proc(Path::new(path)), "{path}");
        }
    }
}
