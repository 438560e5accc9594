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
pub(super) enum Answer {
    /// The syscall returns this value.
    Value(i64),
    /// The syscall fails with this errno.
    Errno(i32),
}

/// A path argument resolved for the server: absolute, and with the
/// directory it was relative to, proved to be the program's own.
pub(super) struct Resolved {
    pub(super) path: PathBuf,
    pub(super) within: Option<Within>,
    /// The call named it with a trailing `/`: a directory or `ENOTDIR`.
    dir_only: bool,
}

/// A path argument made absolute, not yet proved.
struct Named {
    path: PathBuf,
    base: Base,
    /// It ended in `/` or `/.`: it must name a directory.
    dir_only: bool,
}

/// Where a path argument starts from.
enum Base {
    Absolute,
    /// A directory fd or the cwd, and the path its `/proc` link showed.
    Held(i32, PathBuf),
    /// A placeholder's real directory, known by its device and inode.
    Placeholder(Within),
}

impl Named {
    /// Proves the directory a relative path started from (`within`).
    fn prove(self, target: &Target, tgid: i32) -> Result<Resolved, Untouched> {
        let within = match self.base {
            Base::Absolute => None,
            Base::Held(dirfd, base) => {
                Some(Within::prove(target, tgid, dirfd, base).ok_or(Untouched)?)
            }
            Base::Placeholder(real) => Some(real),
        };
        // A `..` that left the directory leaves `within` behind it: the
        // server would refuse the pair.
        if within
            .as_ref()
            .is_some_and(|w| !self.path.starts_with(&w.path))
        {
            return Err(Untouched);
        }
        Ok(Resolved {
            path: self.path,
            within,
            dir_only: self.dir_only,
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
                empty_path,
                out,
                layout,
            } => {
                if empty_path && target.read_c_string(path.addr).ok_or(Untouched)?.is_empty() {
                    self.placeholder_stat(call, target, path.dirfd, out, layout, client)?
                } else {
                    let (resolved, memory) = self.prepare(call, target, path, true, true)?;
                    // A trailing `/` follows even `lstat` through a final symlink.
                    let nofollow = nofollow && !resolved.dir_only;
                    let request =
                        with(TreeRequest::stat(&resolved.path), &resolved).nofollow(nofollow);
                    self.on_reply(client, &tree, &request, |reply| match reply {
                        TreeReply::Stat { stat, .. } if resolved.dir_only && !stat.is_dir() => {
                            Some(Answer::Errno(libc::ENOTDIR))
                        }
                        TreeReply::Stat { stat, .. } => {
                            write(memory.as_ref(), out, &laid_out(&stat, layout), 0)
                        }
                        _ => None,
                    })?
                }
            }
            TreeCall::Access {
                path,
                check,
                nofollow,
            } => {
                let (resolved, _) = self.prepare(call, target, path, false, false)?;
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
                            // A directory is readable where it may be listed.
                            Err(Some(libc::EISDIR)) if mode == Mode::Read => {
                                let listing =
                                    with(TreeRequest::readdir(&resolved.path, None), &resolved);
                                self.on_reply(client, &tree, &listing, |_| Some(Answer::Value(0)))?
                            }
                            Err(errno) => refusal(&tree, errno)?,
                        }
                    }
                }
            }
            TreeCall::ReadLink { path, buf, size } => {
                let (resolved, memory) = self.prepare(call, target, path, true, false)?;
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
                let name = xattr_name(target, name)?;
                let (resolved, memory) = self.prepare(call, target, path, true, false)?;
                let request =
                    with(xattr_request(&resolved.path, &name), &resolved).nofollow(nofollow);
                self.on_reply(client, &tree, &request, |reply| {
                    xattr_reply(reply, memory.as_ref(), buf, size)
                })?
            }
            TreeCall::FdXattr {
                fd,
                name,
                buf,
                size,
            } => {
                let name = xattr_name(target, name)?;
                let (path, held) = self.brokered_file(target, fd)?;
                let memory = self.memory(call, target)?;
                // The path the fd's link shows must still name that file.
                let stat = TreeRequest::stat(&path).nofollow(true);
                match ask_for_errno(client, &self.socket, |c| c.tree(&stat)) {
                    Ok(TreeReply::Stat { stat, .. }) if (stat.dev, stat.ino) == held => {}
                    _ => return Err(Untouched),
                }
                let request = xattr_request(&path, &name).nofollow(true);
                self.on_reply(client, &tree, &request, |reply| {
                    xattr_reply(reply, Some(&memory), buf, size)
                })?
            }
            TreeCall::Mkdir { path, mode } => {
                if mode & !0o777 != 0 {
                    return Err(Untouched);
                }
                let umask = target.umask().ok_or(Untouched)?;
                let (resolved, _) = self.prepare(call, target, path, false, true)?;
                let request = with(TreeRequest::mkdir(&resolved.path, mode & !umask), &resolved);
                self.on_reply(client, &tree, &request, |_| Some(Answer::Value(0)))?
            }
            TreeCall::Remove { path, dir } => {
                let (resolved, _) = self.prepare(call, target, path, false, dir)?;
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
            TreeCall::Fstat { fd, out } => {
                self.placeholder_stat(call, target, fd, out, StatLayout::Stat, client)?
            }
            TreeCall::Getdents {
                fd,
                buf,
                count,
                wide,
            } => self.placeholder_read(call, target, fd, buf, count, wide, client)?,
            TreeCall::Lseek { fd, offset, whence } => {
                self.placeholder_seek(call, target, fd, offset, whence)?
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
    pub(super) fn prepare(
        &self,
        call: &Notification,
        target: &Target,
        arg: PathArg,
        writes_memory: bool,
        dir_only_ok: bool,
    ) -> Result<(Resolved, Option<TargetMemory>), Untouched> {
        let named = self.resolve(target, arg)?;
        if named.dir_only && !dir_only_ok {
            return Err(Untouched);
        }
        let tgid = target.tgid_if_same_identity(&self.own).ok_or(Untouched)?;
        let resolved = named.prove(target, tgid)?;
        if writes_memory {
            return Ok((resolved, Some(self.memory(call, target)?)));
        }
        if !self.listener.still_valid(call.id) {
            return Err(Untouched);
        }
        Ok((resolved, None))
    }

    /// The task's memory, opened, then `ID_VALID` checked: what was read
    /// came from the task that trapped, and what we write goes to it.
    pub(super) fn memory(
        &self,
        call: &Notification,
        target: &Target,
    ) -> Result<TargetMemory, Untouched> {
        let memory = TargetMemory::open(target.tid).map_err(|_| Untouched)?;
        if !self.listener.still_valid(call.id) {
            return Err(Untouched);
        }
        Ok(memory)
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
        if from.dir_only || to.dir_only {
            return Err(Untouched);
        }
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
            Base::Absolute
        } else if let Some(held) = target.base_directory(arg.dirfd) {
            Base::Held(arg.dirfd, held)
        } else {
            Base::Placeholder(self.placeholder(target, arg.dirfd)?.1)
        };
        let (path, dir_only) = match &base {
            Base::Absolute => lexical_path(&raw, None),
            Base::Held(_, dir) => lexical_path(&raw, Some(dir)),
            Base::Placeholder(real) => lexical_path(&raw, Some(&real.path)),
        }
        .ok_or(Untouched)?;
        if own_proc(&path) || !self.scope.covers_tree_path(&path) {
            return Err(Untouched);
        }
        Ok(Named {
            path,
            base,
            dir_only,
        })
    }

    /// A file the task holds as `fd`, in the scope: the path its `/proc`
    /// link shows and the device and inode of the file itself.
    fn brokered_file(&self, target: &Target, fd: i32) -> Result<(PathBuf, (u64, u64)), Untouched> {
        if fd < 0 {
            return Err(Untouched);
        }
        let path = target.base_directory(fd).ok_or(Untouched)?;
        if own_proc(&path) || !self.scope.covers_tree_path(&path) {
            return Err(Untouched);
        }
        let tgid = target.tgid_if_same_identity(&self.own).ok_or(Untouched)?;
        let meta = target.held_metadata(tgid, fd).ok_or(Untouched)?;
        use std::os::unix::fs::MetadataExt;
        Ok((path, (meta.dev(), meta.ino())))
    }

    /// Sends `request`; a reply becomes what `answer` makes of it (`None`:
    /// the call continues), a refusal what [`refusal`] says.
    pub(super) fn on_reply(
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

/// The name an xattr read asks for, `None` for a listing; a name the
/// kernel would refuse (empty, too long) is the kernel's to refuse.
fn xattr_name(target: &Target, addr: Option<u64>) -> Result<Option<Vec<u8>>, Untouched> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let name = target.read_c_string(addr).ok_or(Untouched)?;
    if name.is_empty() || name.len() > XATTR_NAME_MAX {
        return Err(Untouched);
    }
    Ok(Some(name))
}

fn xattr_request(path: &Path, name: &Option<Vec<u8>>) -> TreeRequest {
    match name {
        Some(name) => TreeRequest::xattr(path, OsStr::from_bytes(name)),
        None => TreeRequest::xattr_names(path),
    }
}

/// An xattr answer in the program's buffer of `size` bytes at `buf`.
fn xattr_reply(
    reply: TreeReply,
    memory: Option<&TargetMemory>,
    buf: u64,
    size: u64,
) -> Option<Answer> {
    let value = match reply {
        TreeReply::XattrValue(value) => value,
        TreeReply::XattrNames(names) => xattr_name_list(names.iter().map(|n| n.as_bytes())),
        _ => return None,
    };
    match xattr_answer(&value, size) {
        Ok(Some(bytes)) => write(memory, buf, bytes, bytes.len() as i64),
        Ok(None) => Some(Answer::Value(value.len() as i64)),
        Err(errno) => Some(Answer::Errno(errno)),
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
pub(super) fn with(request: TreeRequest, resolved: &Resolved) -> TreeRequest {
    match &resolved.within {
        Some(within) => request.within(client_within(within)),
        None => request,
    }
}

/// `within` as the client library sends it.
pub(super) fn client_within(within: &Within) -> crate::client::Within {
    crate::client::Within {
        path: within.path.clone(),
        dev: within.dev,
        ino: within.ino,
    }
}

/// Writes the answer into the task, for the call to return `value`; a
/// buffer it cannot take makes the call fail with `EFAULT`, as the
/// kernel's own copy-out would.
pub(super) fn write(
    memory: Option<&TargetMemory>,
    addr: u64,
    bytes: &[u8],
    value: i64,
) -> Option<Answer> {
    match memory?.write(addr, bytes) {
        Ok(()) => Some(Answer::Value(value)),
        Err(e) if e.raw_os_error() == Some(libc::EFAULT) => Some(Answer::Errno(libc::EFAULT)),
        Err(_) => None,
    }
}

/// `path` made absolute against `base`, `.` components and repeated `/`
/// removed, and whether it ended in `/` or `/.` (a directory is meant).
/// A `..` leaves the component before it, which must then be a real
/// directory, not a symlink (whose `..` is its target's parent): checked
/// with our own `lstat`, and left to the kernel where we cannot tell.
fn lexical_path(raw: &[u8], base: Option<&Path>) -> Option<(PathBuf, bool)> {
    if raw.is_empty() {
        return None;
    }
    let dir_only = raw == b"." || raw.ends_with(b"/") || raw.ends_with(b"/.");
    let mut out: Vec<u8> = if raw[0] == b'/' {
        Vec::new()
    } else {
        let base = base?.as_os_str().as_bytes();
        base.strip_suffix(b"/").unwrap_or(base).to_vec()
    };
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if !out.is_empty() {
                    let left = std::fs::symlink_metadata(OsStr::from_bytes(&out)).ok()?;
                    if !left.is_dir() {
                        return None;
                    }
                    out.truncate(out.iter().rposition(|&b| b == b'/')?);
                }
            }
            name => {
                out.push(b'/');
                out.extend_from_slice(name);
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Some((PathBuf::from(OsStr::from_bytes(&out)), dir_only))
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

/// A `stat` answer in the struct the call wants.
pub(super) fn laid_out(stat: &Metadata, layout: StatLayout) -> Vec<u8> {
    let stx = statx_of(stat);
    match layout {
        StatLayout::Stat => stat_bytes(&stx),
        StatLayout::Statx => statx_bytes(&stx),
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
    use crate::run::tree_call::as_bytes;

    /// What the kernel says of `path`, and the `stat` answer a server
    /// sends about it (SPEC §3.6), parsed as the client parses it.
    fn metadata(path: &str) -> (Metadata, libc::statx) {
        let c = std::ffi::CString::new(path).unwrap();
        // SAFETY: statx fills a zeroed struct of its own type.
        let mut k: libc::statx = unsafe { std::mem::zeroed() };
        let mask = libc::STATX_BASIC_STATS | libc::STATX_BTIME;
        let rc = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, mask, &mut k) };
        assert_eq!(rc, 0);
        let time = |t: libc::statx_timestamp| serde_json::json!([t.tv_sec, t.tv_nsec]);
        let mut answer = serde_json::json!({
            "dev": libc::makedev(k.stx_dev_major, k.stx_dev_minor),
            "ino": k.stx_ino, "mode": k.stx_mode, "nlink": k.stx_nlink,
            "uid": k.stx_uid, "gid": k.stx_gid,
            "rdev": libc::makedev(k.stx_rdev_major, k.stx_rdev_minor),
            "size": k.stx_size, "blksize": k.stx_blksize, "blocks": k.stx_blocks,
            "atime": time(k.stx_atime), "mtime": time(k.stx_mtime), "ctime": time(k.stx_ctime),
        });
        if k.stx_mask & libc::STATX_BTIME != 0 {
            answer["btime"] = time(k.stx_btime);
        }
        (serde_json::from_value(answer).unwrap(), k)
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
    fn paths_are_made_absolute_and_dot_dot_leaves_only_real_directories() {
        let lex = |raw: &str, base: Option<&str>| {
            lexical_path(raw.as_bytes(), base.map(Path::new))
                .map(|(p, d)| (p.to_str().unwrap().to_owned(), d))
        };
        let p = |s: &str, d| Some((s.to_owned(), d));
        assert_eq!(lex("a//./b", Some("/x")), p("/x/a/b", false));
        assert_eq!(lex("b/", Some("/")), p("/b", true));
        assert_eq!(lex(".", Some("/x/y")), p("/x/y", true));
        assert_eq!(lex("/tmp/..", None), p("/", false));
        assert_eq!(lex("/..", None), p("/", false));
        assert_eq!(lex("rel", None), None);
        assert_eq!(lex("", Some("/x")), None);
        // A symlink's `..` is its target's parent: not ours to say.
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/usr/bin", dir.path().join("link")).unwrap();
        let through = format!("{}/link/..", dir.path().display());
        assert_eq!(lex(&through, None), None);
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
