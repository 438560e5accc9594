//! Tree operations on the filesystem (SPEC §3.6), one function per op.
//!
//! Each resolves the parent directory as safely as an open does
//! ([`safe_open`]: no magic links, no escape through a swapped symlink,
//! the real path read from the resolved handle), then acts on the final
//! name relative to that directory's descriptor, so a final symlink is
//! never followed by a change. Both the requested and the real path are
//! judged ([`Policy::decide_tree_path`]). No directory descriptor ever
//! leaves the server: `readdir` answers entries as data.

use std::ffi::{OsStr, OsString};
use std::hash::{BuildHasher, Hash, Hasher};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode as Perm;
use nix::unistd::UnlinkatFlags;

use super::protected::Protected;
use crate::decision::tree::not_a_granted_directory;
use crate::decision::{Candidates, PathGrant, Refusal, Scratch, Wants, leads_elsewhere};
use crate::path_index::literal_prefix;
use crate::peer::PeerIdentity;
use crate::policy::{Owner, Policy, Rule, compile_glob};
use crate::protocol::tree::{FileType, MAX_ENTRIES, TreeAnswer, WireEntry};
use crate::protocol::{ErrorCode, PathMode, RequestPath, TreeOp, TreeRequest, Within};
use crate::safe_open::{self, Base, FileKind, Located, OpenError};

/// A granted tree request: the real path, the rule, and the answer.
#[derive(Debug)]
pub struct TreeDone {
    pub path: PathBuf,
    pub rule: String,
    pub answer: TreeAnswer,
    /// A change, whose record was written before it was made (SPEC §6).
    pub recorded: bool,
}

/// Writes the audit record of a change before it is made, and a second
/// one (same `seq`, `ok:false`) if the system call then fails (SPEC §6).
pub trait ChangeLog {
    /// The change to `real` (and `to`) under `rule` is about to be made;
    /// an error means it must not be.
    fn before(&mut self, real: &Path, to: Option<&Path>, rule: &str) -> Result<(), Refusal>;
    /// The change recorded by [`ChangeLog::before`] failed: records
    /// that, and gives back the refusal, marked as recorded.
    fn failed(&mut self, refusal: Refusal) -> Refusal;
}

/// One tree request being carried out.
pub struct Tree<'a> {
    pub policy: &'a Policy,
    pub client: &'a PeerIdentity,
    pub protected: &'a Protected,
    pub scratch: &'a mut Scratch,
}

impl<'a> Tree<'a> {
    /// Carries out `request`; a change is recorded through `log`.
    pub fn run(
        &mut self,
        request: &TreeRequest,
        log: &mut dyn ChangeLog,
    ) -> Result<TreeDone, Refusal> {
        match request.op {
            TreeOp::Stat | TreeOp::Readlink | TreeOp::Xattr => self.metadata(request),
            TreeOp::Readdir => self.readdir(request),
            TreeOp::Mkdir => self.mkdir(request, log),
            TreeOp::Unlink => self.remove(request, log, false),
            TreeOp::Rmdir => self.remove(request, log, true),
            TreeOp::Rename => self.rename(request, log),
        }
    }

    /// Decides `mode` on the requested path, before the filesystem is touched.
    pub fn decide_requested(
        &mut self,
        path: &Path,
        wants: impl Into<Wants>,
    ) -> Result<PathGrant<'_>, Refusal> {
        let (requested, _) = self.scratch.both();
        self.policy
            .decide_tree_path(path, self.client, wants.into(), requested)
    }

    /// Both paths of one side of a request: the requested one, then the
    /// real one where it differs (a symlink on the way). Returns the rule
    /// that grants the real path and whether only a directory may be
    /// answered (implied `stat`).
    fn judge(
        &mut self,
        requested: &Path,
        real: &Path,
        wants: impl Into<Wants>,
    ) -> Result<(&'a Rule, bool), Refusal> {
        let wants = wants.into();
        let policy: &'a Policy = self.policy;
        let (req_c, real_c) = self.scratch.both();
        let granted = policy.decide_tree_path(requested, self.client, wants, req_c)?;
        let real_grant = if real == requested {
            granted
        } else {
            policy
                .decide_tree_path(real, self.client, wants, real_c)
                .map_err(leads_elsewhere)?
        };
        let directories_only = granted.directories_only() || real_grant.directories_only();
        Ok((real_grant.rule(), directories_only))
    }

    /// `stat`, `readlink`, `xattr`. A path granted only as a directory
    /// (implied stat) says nothing more of what is there: missing or not
    /// a directory, it is denied (SPEC §5).
    fn metadata(&mut self, request: &TreeRequest) -> Result<TreeDone, Refusal> {
        let implied = self
            .decide_requested(&request.path.path, PathMode::Stat)?
            .directories_only();
        let answer = match request.op {
            TreeOp::Stat => self.stat(request),
            TreeOp::Readlink => self.readlink(request),
            _ => self.xattr(request),
        };
        match answer {
            // A missing attribute of the granted directory is said as such.
            Err(r) if r.errno == Some(Errno::ENODATA) => Err(r),
            Err(r) if implied && matches!(r.code, ErrorCode::NotFound | ErrorCode::NotRegular) => {
                Err(not_a_granted_directory(self.client))
            }
            other => other,
        }
    }

    /// The inode `stat` and `xattr` read, judged, with the rule that
    /// grants it: a final symlink is followed unless `nofollow` (a trailing
    /// `/` follows it even then, as `lstat("link/")` does), and where only
    /// a directory may be answered anything else is denied.
    fn inode(&mut self, request: &TreeRequest) -> Result<(Located, &'a Rule), Refusal> {
        let path = &request.path.path;
        let base = base_of(request.within.as_ref())?;
        let located = if request.nofollow && !request.path.directory {
            self.final_name(&base, path)?
        } else {
            self.follow(&base, path, PathMode::Stat)?
        };
        let (rule, directories_only) = self.judge(path, &located.real_path, PathMode::Stat)?;
        if directories_only && located.facts.kind != FileKind::Directory {
            return Err(not_a_granted_directory(self.client));
        }
        wants_directory(&request.path, &located)?;
        Ok((located, rule))
    }

    fn stat(&mut self, request: &TreeRequest) -> Result<TreeDone, Refusal> {
        let (located, rule) = self.inode(request)?;
        // Read when it was located, on the handle that pins it.
        let stat = located.metadata.clone();
        Ok(TreeDone {
            path: located.real_path,
            rule: rule.name.clone(),
            answer: TreeAnswer::Stat(stat),
            recorded: false,
        })
    }

    fn readlink(&mut self, request: &TreeRequest) -> Result<TreeDone, Refusal> {
        let path = &request.path.path;
        let base = base_of(request.within.as_ref())?;
        let entry = self.entry(&base, path, PathMode::Stat)?;
        let (rule, directories_only) = self.judge(path, &entry.real, PathMode::Stat)?;
        let link = entry.found.map_err(Refusal::from)?;
        if directories_only {
            return Err(not_a_granted_directory(self.client));
        }
        if link.facts.kind != FileKind::Symlink {
            return Err(Refusal::with_errno(
                ErrorCode::NotRegular,
                Errno::EINVAL,
                format!("not a symbolic link: a {}", link.facts.kind.describe()),
            ));
        }
        if is_magic_link(&entry.parent) {
            return Err(Refusal::new(
                ErrorCode::Denied,
                "a procfs magic link names a process's own objects; it is never read",
            ));
        }
        let target = nix::fcntl::readlinkat(entry.parent.handle(), entry.name.as_os_str())
            .map_err(|e| io("readlinkat", e))?;
        Ok(TreeDone {
            path: entry.real,
            rule: rule.name.clone(),
            answer: TreeAnswer::Link(target.as_bytes().to_vec()),
            recorded: false,
        })
    }

    fn xattr(&mut self, request: &TreeRequest) -> Result<TreeDone, Refusal> {
        if let Some(name) = &request.name
            && !readable_xattr(name)
        {
            return Err(Refusal::new(
                ErrorCode::Denied,
                "only user., security. and system. attributes are read",
            ));
        }
        let (located, rule) = self.inode(request)?;
        let answer = match &request.name {
            Some(name) => TreeAnswer::XattrValue(get_xattr(&located, name)?),
            None => TreeAnswer::XattrNames(list_xattrs(&located)?),
        };
        Ok(TreeDone {
            path: located.real_path,
            rule: rule.name.clone(),
            answer,
            recorded: false,
        })
    }

    fn readdir(&mut self, request: &TreeRequest) -> Result<TreeDone, Refusal> {
        let path = &request.path.path;
        let cursor = match &request.cursor {
            Some(text) => Some(Cursor::parse(text, self.client.connection, path)?),
            None => None,
        };
        self.decide_requested(path, PathMode::List)?;
        let base = base_of(request.within.as_ref())?;
        let located = self.follow(&base, path, PathMode::List)?;
        let (rule, _) = self.judge(path, &located.real_path, PathMode::List)?;
        if located.facts.kind != FileKind::Directory {
            return Err(Refusal::with_errno(
                ErrorCode::NotRegular,
                Errno::ENOTDIR,
                format!("not a directory: a {}", located.facts.kind.describe()),
            ));
        }
        if let Some(cursor) = &cursor
            && (cursor.dev, cursor.ino) != (located.facts.dev, located.facts.ino)
        {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "the cursor belongs to another directory (replaced since?)",
            ));
        }
        let dir = safe_open::reopen_directory(&located).map_err(Refusal::from)?;
        let (entries, next) =
            read_entries(&dir, cursor.map(|c| c.offset)).map_err(|e| io("getdents64", e))?;
        let cursor = next.map(|offset| {
            Cursor {
                dev: located.facts.dev,
                ino: located.facts.ino,
                offset,
            }
            .encode(self.client.connection, path)
        });
        Ok(TreeDone {
            path: located.real_path,
            rule: rule.name.clone(),
            answer: TreeAnswer::Dir { entries, cursor },
            recorded: false,
        })
    }

    /// The entry `mkdir`, `unlink` or `rmdir` changes and the rule that
    /// grants `mode` on it: decided on the requested path before the
    /// filesystem is touched, judged on the real one, and checked that it
    /// may be changed there.
    fn changed_entry(
        &mut self,
        request: &TreeRequest,
        mode: PathMode,
    ) -> Result<(Entry, &'a Rule), Refusal> {
        let path = &request.path.path;
        self.decide_requested(path, mode)?;
        let base = base_of(request.within.as_ref())?;
        let entry = self.entry(&base, path, mode)?;
        let (rule, _) = self.judge(path, &entry.real, mode)?;
        self.may_change(&[path, &entry.real], &entry.parent, rule)?;
        Ok((entry, rule))
    }

    fn mkdir(
        &mut self,
        request: &TreeRequest,
        log: &mut dyn ChangeLog,
    ) -> Result<TreeDone, Refusal> {
        let (entry, rule) = self.changed_entry(request, PathMode::Mkdir)?;
        if entry.found.is_ok() {
            return Err(Refusal::with_errno(
                ErrorCode::Exists,
                Errno::EEXIST,
                "the name is taken",
            ));
        }
        log.before(&entry.real, None, &rule.name)?;
        // Mode 0 until it is known to be ours: no one can enter meanwhile.
        let made =
            nix::sys::stat::mkdirat(entry.parent.handle(), entry.name.as_os_str(), Perm::empty());
        if let Err(e) = made {
            let refusal = change_failed(e, "mkdirat");
            return Err(log.failed(refusal));
        }
        if let Err(refusal) = finish_directory(&entry, rule, request.perm, self.client) {
            return Err(log.failed(refusal));
        }
        Ok(TreeDone {
            path: entry.real,
            rule: rule.name.clone(),
            answer: TreeAnswer::Created,
            recorded: true,
        })
    }

    /// `unlink` (`directory` false) or `rmdir`.
    fn remove(
        &mut self,
        request: &TreeRequest,
        log: &mut dyn ChangeLog,
        directory: bool,
    ) -> Result<TreeDone, Refusal> {
        let (entry, rule) = self.changed_entry(request, PathMode::Delete)?;
        let found = entry.found.as_ref().map_err(|e| Refusal::from(e.clone()))?;
        let is_dir = found.facts.kind == FileKind::Directory;
        // `unlink("file/")` fails in the kernel too.
        wants_directory(&request.path, found)?;
        if is_dir != directory {
            let (errno, why) = if directory {
                (Errno::ENOTDIR, "not a directory")
            } else {
                (Errno::EISDIR, "a directory: use rmdir")
            };
            return Err(Refusal::with_errno(ErrorCode::NotRegular, errno, why));
        }
        log.before(&entry.real, None, &rule.name)?;
        let flag = if directory {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        if let Err(e) = nix::unistd::unlinkat(entry.parent.handle(), entry.name.as_os_str(), flag) {
            // Some filesystems say EEXIST for a directory that is not empty.
            let e = if directory && e == Errno::EEXIST {
                Errno::ENOTEMPTY
            } else {
                e
            };
            let refusal = change_failed(e, if directory { "rmdir" } else { "unlink" });
            return Err(log.failed(refusal));
        }
        Ok(TreeDone {
            path: entry.real,
            rule: rule.name.clone(),
            answer: TreeAnswer::Done { to: None },
            recorded: true,
        })
    }

    fn rename(
        &mut self,
        request: &TreeRequest,
        log: &mut dyn ChangeLog,
    ) -> Result<TreeDone, Refusal> {
        let path = &request.path.path;
        let to_path = &request.to.as_ref().expect("rename has a to").path;
        // Before the filesystem: read and delete on the source, write with
        // create on `to`.
        for mode in [PathMode::Read, PathMode::Delete] {
            self.decide_requested(path, mode)?;
        }
        let create = Wants {
            mode: PathMode::Write,
            create: true,
            truncate: false,
        };
        self.decide_requested(to_path, create)?;
        let base = base_of(request.within.as_ref())?;
        let from = self.entry(&base, path, PathMode::Read)?;
        let to = self.entry(&base, to_path, create)?;
        self.judge(path, &from.real, PathMode::Read)?;
        let (from_rule, _) = self.judge(path, &from.real, PathMode::Delete)?;
        let (to_rule, _) = self.judge(to_path, &to.real, create)?;
        self.may_change(&[path, &from.real], &from.parent, from_rule)?;
        self.may_change(&[to_path, &to.real], &to.parent, to_rule)?;
        let source = from.found.as_ref().map_err(|e| Refusal::from(e.clone()))?;
        if source.facts.kind == FileKind::Directory {
            return Err(Refusal::with_errno(
                ErrorCode::IoError,
                Errno::EXDEV,
                "directories are not renamed: copy and delete instead",
            ));
        }
        // `rename("file/", ..)` and `rename(.., "to/")` ask for directories.
        wants_directory(&request.path, source)?;
        if let Some(to_request) = &request.to
            && to_request.directory
        {
            return Err(Refusal::with_errno(
                ErrorCode::NotRegular,
                Errno::ENOTDIR,
                "the destination ends in / but a file is moved",
            ));
        }
        if source.facts.kind != FileKind::Regular || source.facts.links != 1 {
            return Err(Refusal::new(
                ErrorCode::NotRegular,
                "only a regular file with a single link is renamed",
            ));
        }
        // Content conditions of the read grant hold for the file moved.
        let mut read_rules = Candidates::default();
        self.policy
            .candidates(&from.real, self.client, PathMode::Read, &mut read_rules)
            .map_err(leads_elsewhere)?;
        self.policy
            .judge(&read_rules, &source.facts, SystemTime::now())?;
        // Before whether `to` exists, as the kernel does: tools that hear
        // EXDEV copy instead.
        if source.facts.dev != to.parent.facts.dev {
            return Err(Refusal::with_errno(
                ErrorCode::IoError,
                Errno::EXDEV,
                "source and destination are on different filesystems",
            ));
        }
        // Replacing an existing `to` needs delete on it, and no noreplace.
        let replace = match &to.found {
            Ok(_) => {
                let deletable =
                    !request.noreplace && self.judge(to_path, &to.real, PathMode::Delete).is_ok();
                if !deletable {
                    return Err(Refusal::with_errno(
                        ErrorCode::Exists,
                        Errno::EEXIST,
                        "the destination exists (and may not be replaced)",
                    ));
                }
                true
            }
            Err(OpenError::NotFound) => {
                !request.noreplace && self.judge(to_path, &to.real, PathMode::Delete).is_ok()
            }
            Err(e) => return Err(Refusal::from(e.clone())),
        };
        log.before(&from.real, Some(&to.real), &to_rule.name)?;
        if let Err(refusal) = move_pinned(source, &from, &to, replace) {
            return Err(log.failed(refusal));
        }
        Ok(TreeDone {
            path: from.real,
            rule: to_rule.name.clone(),
            answer: TreeAnswer::Done { to: Some(to.real) },
            recorded: true,
        })
    }

    /// [`entry`], where a parent that is no directory is `not_found`
    /// (`ENOTDIR`) only if `wants` is granted on the real path below it:
    /// reached through a symlink, it may be a file the client may not see
    /// (SPEC §4).
    fn entry(
        &mut self,
        base: &Base,
        path: &Path,
        wants: impl Into<Wants>,
    ) -> Result<Entry, Refusal> {
        let entry = entry(base, path)?;
        if entry.parent.facts.kind != FileKind::Directory {
            let (_, directories_only) = self.judge(path, &entry.real, wants)?;
            if directories_only {
                return Err(not_a_granted_directory(self.client));
            }
            return Err(Refusal::with_errno(
                ErrorCode::NotFound,
                Errno::ENOTDIR,
                "a component of the path is not a directory",
            ));
        }
        Ok(entry)
    }

    /// The final name of `path` itself, not followed (`nofollow`): its
    /// real path is judged before anything is said of whether it exists.
    fn final_name(&mut self, base: &Base, path: &Path) -> Result<Located, Refusal> {
        let entry = self.entry(base, path, PathMode::Stat)?;
        self.judge(path, &entry.real, PathMode::Stat)?;
        Ok(entry.found?)
    }

    /// Resolves `path`, following symlinks as an open does; a path that
    /// breaks off behind a symlink is `not_found` only where the client
    /// may see the missing part (SPEC §4).
    fn follow(&mut self, base: &Base, path: &Path, mode: PathMode) -> Result<Located, Refusal> {
        match base.locate(path) {
            Ok(located) => Ok(located),
            Err(OpenError::Dangling) => {
                let (_, real_c) = self.scratch.both();
                let missing = safe_open::missing_real_path(path)
                    .map_err(|_| leads_elsewhere(Refusal::new(ErrorCode::Denied, "")))?;
                match self
                    .policy
                    .decide_tree_path(&missing, self.client, Wants::mode(mode), real_c)
                {
                    Ok(grant) if !grant.directories_only() => {
                        Err(Refusal::from(OpenError::NotFound))
                    }
                    Ok(_) => Err(not_a_granted_directory(self.client)),
                    Err(refusal) => Err(leads_elsewhere(refusal)),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// What no policy can grant: changes to the server's own files, and
    /// on a pseudo-filesystem unless the rule's glob is rooted there.
    fn may_change(&self, paths: &[&Path], parent: &Located, rule: &Rule) -> Result<(), Refusal> {
        if paths.iter().any(|p| self.protected.covers(p)) {
            return Err(Protected::refusal());
        }
        let fs = filesystem_type(parent.handle());
        if let Some(fs) = fs.filter(|fs| PSEUDO_FILESYSTEMS.contains(fs)) {
            // The glob that grants the path, not any other of the rule.
            let rooted_there = rule.paths.iter().any(|glob| {
                let grants = compile_glob(glob).is_ok_and(|g| {
                    let g = g.compile_matcher();
                    paths.iter().any(|p| g.is_match(p))
                });
                grants
                    && nix::sys::statfs::statfs(literal_prefix(glob)).is_ok_and(|s| magic(&s) == fs)
            });
            if !rooted_there {
                return Err(Refusal::new(
                    ErrorCode::Denied,
                    "changes on a pseudo-filesystem (proc, sysfs, cgroup, ...) need a rule rooted on it",
                ));
            }
        }
        Ok(())
    }
}

/// proc, sysfs, cgroup, cgroup2, tracefs, debugfs, configfs, securityfs,
/// bpf: creating and removing entries there acts on the kernel.
const PSEUDO_FILESYSTEMS: [i64; 9] = [
    0x9fa0,
    0x6265_6572,
    0x0027_e0eb,
    0x6367_7270,
    0x7472_6163,
    0x6462_6720,
    0x6265_6570,
    0x7363_6673,
    0xcafe_4a11,
];

const PROC_SUPER_MAGIC: i64 = 0x9fa0;

fn filesystem_type(fd: BorrowedFd<'_>) -> Option<i64> {
    nix::sys::statfs::fstatfs(fd).ok().map(|s| magic(&s))
}

/// The filesystem's magic number, whatever width the platform gives it.
#[allow(clippy::unnecessary_cast)]
fn magic(s: &nix::sys::statfs::Statfs) -> i64 {
    s.filesystem_type().0 as i64
}

/// A symlink in a procfs directory below `/proc` itself (`/proc/N/fd/*`,
/// `cwd`, `exe`, `root`, `ns/*`, ...): a magic link. The plain ones
/// (`/proc/self`, `/proc/mounts`) live in the root of procfs.
fn is_magic_link(parent: &Located) -> bool {
    filesystem_type(parent.handle()) == Some(PROC_SUPER_MAGIC) && parent.facts.ino != 1
}

/// The checked `within` of a request, or `/`.
fn base_of(within: Option<&Within>) -> Result<Base, Refusal> {
    match within {
        None => Ok(Base::Root),
        Some(w) => Base::within(&w.path.path, w.dev, w.ino).ok_or_else(Refusal::within_mismatch),
    }
}

/// The parent of `path`, resolved from `base`, and its final name, not
/// followed. The parent may be no directory: [`Tree::entry`] says so only
/// where the client may see it.
fn entry(base: &Base, path: &Path) -> Result<Entry, Refusal> {
    let (Some(parent_path), Some(name)) = (path.parent(), path.file_name()) else {
        // `/` itself: it has no parent to act in.
        let root = base.locate(path)?;
        return Ok(Entry {
            real: root.real_path.clone(),
            name: OsString::from("."),
            found: Ok(safe_open::locate(Path::new("/"))?),
            parent: root,
        });
    };
    let parent = match base.locate(parent_path) {
        Ok(parent) => parent,
        Err(OpenError::Dangling) => {
            return Err(leads_elsewhere(Refusal::new(ErrorCode::Denied, "")));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Entry {
        real: parent.real_path.join(name),
        found: parent.entry(name),
        name: name.to_owned(),
        parent,
    })
}

/// A final name and the directory it is in.
struct Entry {
    parent: Located,
    name: OsString,
    /// The parent's real path and the name.
    real: PathBuf,
    /// What the name is now (not followed), or why it is not.
    found: Result<Located, OpenError>,
}

/// A path that ends in `/` asks for a directory.
fn wants_directory(path: &RequestPath, located: &Located) -> Result<(), Refusal> {
    if path.directory && located.facts.kind != FileKind::Directory {
        return Err(Refusal::with_errno(
            ErrorCode::NotRegular,
            Errno::ENOTDIR,
            "the path ends in / but names no directory",
        ));
    }
    Ok(())
}

fn io(what: &str, errno: Errno) -> Refusal {
    Refusal::with_errno(
        ErrorCode::IoError,
        errno,
        format!("{what}: {}", errno.desc()),
    )
}

/// The refusal of a change whose system call failed.
fn change_failed(errno: Errno, what: &str) -> Refusal {
    let code = match errno {
        Errno::EEXIST => ErrorCode::Exists,
        Errno::ENOENT => ErrorCode::NotFound,
        Errno::ENOTDIR | Errno::EISDIR => ErrorCode::NotRegular,
        _ => ErrorCode::IoError,
    };
    Refusal::with_errno(code, errno, format!("{what} failed: {}", errno.desc()))
}

/// Gives the directory `mkdir` just made its owner and mode, if it is
/// the one it made (a directory owned by the server, empty); otherwise,
/// or if a step fails, removes it (SPEC §3.6).
fn finish_directory(
    entry: &Entry,
    rule: &Rule,
    perm: u32,
    client: &PeerIdentity,
) -> Result<(), Refusal> {
    let dir = nix::fcntl::openat(
        entry.parent.handle(),
        entry.name.as_os_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Perm::empty(),
    )
    .map_err(|e| io("cannot open the new directory", e))?;
    let st = nix::sys::stat::fstat(&dir).map_err(|e| io("fstat", e))?;
    // On a pseudo-filesystem the kernel fills a new directory with its
    // own files (a cgroup's `cgroup.procs`): ownership alone tells there.
    let pseudo = filesystem_type(dir.as_fd()).is_some_and(|fs| PSEUDO_FILESYSTEMS.contains(&fs));
    let ours = st.st_mode & libc::S_IFMT == libc::S_IFDIR
        && st.st_uid == nix::unistd::geteuid().as_raw()
        // Empty: `.` and `..` only (nlink says nothing on btrfs).
        && (pseudo
            || read_entries(&dir, None)
                .is_ok_and(|(entries, more)| entries.len() <= 2 && more.is_none()));
    if !ours {
        // Not what mkdirat made: someone else's. Leave it alone.
        return Err(Refusal::with_errno(
            ErrorCode::IoError,
            Errno::EEXIST,
            "the new directory was replaced before its owner could be set",
        ));
    }
    let remove = |refusal: Refusal| {
        let still_ours = nix::sys::stat::fstatat(
            entry.parent.handle(),
            entry.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|now| (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino));
        if still_ours {
            let _ = nix::unistd::unlinkat(
                entry.parent.handle(),
                entry.name.as_os_str(),
                UnlinkatFlags::RemoveDir,
            );
        }
        refusal
    };
    if rule.owner == Owner::Client {
        let gid = entry
            .parent
            .group_for_new(client.gid)
            .map_err(|e| remove(e.into()))?;
        nix::unistd::fchown(
            &dir,
            Some(nix::unistd::Uid::from_raw(client.uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| remove(io("fchown of the new directory failed; it was removed", e)))?;
    }
    // The kernel's set-group-ID bit from a set-group-ID parent stays.
    let bits = (perm & rule.dir_perm) | (st.st_mode & libc::S_ISGID);
    nix::sys::stat::fchmod(&dir, Perm::from_bits_truncate(bits))
        .map_err(|e| remove(io("fchmod of the new directory failed; it was removed", e)))?;
    Ok(())
}

/// Moves the pinned, checked `source` to `to` (SPEC §3.6): link it under
/// a temporary name in `to`'s directory, rename that onto `to` (never
/// replacing unless `replace`), then unlink the source name if it still
/// names the pinned inode. Whatever was swapped in at the source name,
/// only the checked file arrives at `to`.
fn move_pinned(source: &Located, from: &Entry, to: &Entry, replace: bool) -> Result<(), Refusal> {
    let temp = link_temporary(source, &to.parent)?;
    let renamed = rename_in(&to.parent, &temp, &to.name, replace);
    // Gone if the rename moved it; still there if it failed, or if `to`
    // already was this very inode.
    remove_if_pinned(&to.parent, &temp, source);
    renamed.map_err(|e| change_failed(e, "renameat2"))?;
    if to.parent.facts.dev == from.parent.facts.dev && to.real != from.real {
        remove_if_pinned(&from.parent, &from.name, source);
    }
    Ok(())
}

/// `renameat2` of `from` to `to`, both in `dir`, replacing `to` only if
/// `replace`. Through libc rather than nix, whose wrapper exists for glibc
/// alone: the library also builds for musl (the static `fdopen-client`).
fn rename_in(dir: &Located, from: &OsStr, to: &OsStr, replace: bool) -> nix::Result<()> {
    let flags = if replace { 0 } else { libc::RENAME_NOREPLACE };
    let from = std::ffi::CString::new(from.as_bytes()).map_err(|_| Errno::EINVAL)?;
    let to = std::ffi::CString::new(to.as_bytes()).map_err(|_| Errno::EINVAL)?;
    let dir = dir.handle().as_raw_fd();
    // SAFETY: both names are NUL-terminated and outlive the call; `dir` is
    // a descriptor `Located` keeps open.
    Errno::result(unsafe { libc::renameat2(dir, from.as_ptr(), dir, to.as_ptr(), flags) }).map(drop)
}

/// Links `source` into `dir` under a fresh name.
fn link_temporary(source: &Located, dir: &Located) -> Result<OsString, Refusal> {
    for attempt in 0..16u32 {
        let name = OsString::from(format!(
            ".fdopen-rename-{}-{attempt}-{:x}",
            std::process::id(),
            random_u64()
        ));
        let linked = nix::unistd::linkat(
            source.handle(),
            "",
            dir.handle(),
            name.as_os_str(),
            AtFlags::AT_EMPTY_PATH,
        )
        .or_else(|e| match e {
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the handle's magic
            // link names the same inode without it.
            Errno::ENOENT => nix::unistd::linkat(
                nix::fcntl::AT_FDCWD,
                format!("/proc/self/fd/{}", source.handle().as_raw_fd()).as_str(),
                dir.handle(),
                name.as_os_str(),
                AtFlags::AT_SYMLINK_FOLLOW,
            ),
            e => Err(e),
        });
        match linked {
            Ok(()) => return Ok(name),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(change_failed(e, "linkat")),
        }
    }
    Err(change_failed(Errno::EEXIST, "linkat"))
}

/// Unlinks `name` in `dir` if it names the inode `pinned` holds.
fn remove_if_pinned(dir: &Located, name: &OsStr, pinned: &Located) {
    let same = nix::sys::stat::fstatat(dir.handle(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| (st.st_dev, st.st_ino) == (pinned.facts.dev, pinned.facts.ino));
    if same {
        let _ = nix::unistd::unlinkat(dir.handle(), name, UnlinkatFlags::NoRemoveDir);
    }
}

/// A process-wide key for what must not be guessed (cursor tags,
/// temporary names).
fn secret() -> &'static std::collections::hash_map::RandomState {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    KEY.get_or_init(Default::default)
}

fn random_u64() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    secret().hash_one(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Where a `readdir` answer stopped: the directory it lists and the
/// kernel's offset in it, tagged so that only the connection given it,
/// for that path, can use it (SPEC §3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    dev: u64,
    ino: u64,
    offset: i64,
}

impl Cursor {
    fn tag(&self, connection: u64, path: &Path) -> u64 {
        let mut h = secret().build_hasher();
        (connection, self.dev, self.ino, self.offset).hash(&mut h);
        path.as_os_str().as_bytes().hash(&mut h);
        h.finish()
    }

    fn encode(&self, connection: u64, path: &Path) -> String {
        format!(
            "{:x}.{:x}.{:x}.{:x}",
            self.dev,
            self.ino,
            self.offset,
            self.tag(connection, path)
        )
    }

    fn parse(text: &str, connection: u64, path: &Path) -> Result<Cursor, Refusal> {
        let bad = || {
            Refusal::new(
                ErrorCode::BadRequest,
                "this connection was given no such cursor",
            )
        };
        let parts: Vec<u64> = text
            .split('.')
            .map(|p| u64::from_str_radix(p, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        let [dev, ino, offset, tag] = parts[..] else {
            return Err(bad());
        };
        let cursor = Cursor {
            dev,
            ino,
            offset: offset as i64,
        };
        if cursor.tag(connection, path) != tag {
            return Err(bad());
        }
        Ok(cursor)
    }
}

/// Reads up to [`MAX_ENTRIES`] entries, in the kernel's order, from
/// `offset` on; the offset to go on from when more remain.
fn read_entries(
    dir: &OwnedFd,
    offset: Option<i64>,
) -> Result<(Vec<WireEntry>, Option<i64>), Errno> {
    if let Some(offset) = offset {
        nix::unistd::lseek(dir, offset, nix::unistd::Whence::SeekSet)?;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut entries = Vec::new();
    let mut last = offset.unwrap_or(0);
    loop {
        // SAFETY: the buffer is valid for its length; the kernel writes at most that.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        let n = Errno::result(n)? as usize;
        if n == 0 {
            return Ok((entries, None));
        }
        let mut at = 0;
        while at + 19 <= n {
            let field = |from: usize, len: usize| &buf[at + from..at + from + len];
            let ino = u64::from_ne_bytes(field(0, 8).try_into().expect("8 bytes"));
            let off = i64::from_ne_bytes(field(8, 8).try_into().expect("8 bytes"));
            let reclen = u16::from_ne_bytes(field(16, 2).try_into().expect("2 bytes")) as usize;
            let kind = buf[at + 18];
            if reclen == 0 || at + reclen > n {
                break;
            }
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if entries.len() == MAX_ENTRIES {
                return Ok((entries, Some(last)));
            }
            entries.push(WireEntry::new(
                name,
                FileType::from_d_type(kind).as_str(),
                ino,
            ));
            last = off;
            at += reclen;
        }
    }
}

/// The namespaces read (SPEC §3.6): never `trusted.`.
fn readable_xattr(name: &[u8]) -> bool {
    [&b"user."[..], b"security.", b"system."]
        .iter()
        .any(|ns| name.starts_with(ns) && name.len() > ns.len())
}

/// The inode's own name in `/proc/self/fd`, through which `getxattr`
/// reaches an `O_PATH` handle (`fgetxattr` refuses one).
fn proc_path(located: &Located) -> std::ffi::CString {
    std::ffi::CString::new(format!("/proc/self/fd/{}", located.handle().as_raw_fd()))
        .expect("no NUL in a number")
}

fn get_xattr(located: &Located, name: &[u8]) -> Result<Vec<u8>, Refusal> {
    let path = proc_path(located);
    let name = std::ffi::CString::new(name)
        .map_err(|_| Refusal::new(ErrorCode::BadRequest, "NUL in name"))?;
    sized_read(|buf, len| {
        // SAFETY: both strings are valid; `buf` is valid for `len` bytes.
        unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.cast(), len) }
    })
    .map_err(|e| match e {
        Errno::ENODATA => Refusal::with_errno(ErrorCode::NotFound, e, "no such attribute"),
        e => io("getxattr", e),
    })
}

fn list_xattrs(located: &Located) -> Result<Vec<Vec<u8>>, Refusal> {
    let path = proc_path(located);
    let raw = sized_read(|buf, len| {
        // SAFETY: the path is valid; `buf` is valid for `len` bytes.
        unsafe { libc::listxattr(path.as_ptr(), buf.cast(), len) }
    })
    .map_err(|e| io("listxattr", e))?;
    Ok(raw
        .split(|&b| b == 0)
        .filter(|n| readable_xattr(n))
        .map(<[u8]>::to_vec)
        .collect())
}

/// Calls `read` with a buffer large enough for what it returns, asking
/// for the size first and growing on `ERANGE`.
fn sized_read(read: impl Fn(*mut u8, usize) -> isize) -> Result<Vec<u8>, Errno> {
    for _ in 0..8 {
        let size = Errno::result(read(std::ptr::null_mut(), 0))? as usize;
        let mut buf = vec![0u8; size.max(1)];
        match Errno::result(read(buf.as_mut_ptr(), buf.len())) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::ERANGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_works_only_on_its_connection_and_path() {
        let c = Cursor {
            dev: 1,
            ino: 2,
            offset: 77,
        };
        let text = c.encode(5, Path::new("/d"));
        assert_eq!(Cursor::parse(&text, 5, Path::new("/d")).unwrap(), c);
        assert!(Cursor::parse(&text, 6, Path::new("/d")).is_err());
        assert!(Cursor::parse(&text, 5, Path::new("/e")).is_err());
        assert!(Cursor::parse("1.2.3.4", 5, Path::new("/d")).is_err());
        assert!(Cursor::parse("junk", 5, Path::new("/d")).is_err());
    }

    #[test]
    fn only_user_security_and_system_attributes() {
        assert!(readable_xattr(b"user.x"));
        assert!(readable_xattr(b"security.selinux"));
        assert!(readable_xattr(b"system.posix_acl_access"));
        assert!(!readable_xattr(b"trusted.overlay.opaque"));
        assert!(!readable_xattr(b"user."));
    }
}
