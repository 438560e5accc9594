//! The tree calls `run` traps (SPEC §8, v3): what each one asks, decoded
//! from its native arguments, and its answer laid out as the very call
//! the program made expects it (`struct stat`, `struct statx`, a
//! `readlink` buffer, an xattr buffer). A call with flags we do not
//! decode is `None` here and continues with the program's own rights.

use super::listener::Notification;

/// A path argument: the address of its text and the directory a relative
/// one starts from (`AT_FDCWD` for the cwd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathArg {
    pub dirfd: i32,
    pub addr: u64,
}

impl PathArg {
    fn cwd(addr: u64) -> PathArg {
        PathArg {
            dirfd: libc::AT_FDCWD,
            addr,
        }
    }

    fn at(dirfd: u64, addr: u64) -> PathArg {
        PathArg {
            dirfd: dirfd as i32,
            addr,
        }
    }
}

/// The struct a stat-family call wants its answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatLayout {
    Stat,
    Statx,
}

/// What `access` asks: `F_OK` is a `stat`, `R_OK`/`W_OK` a `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessCheck {
    Exists,
    Read,
    Write,
    ReadWrite,
}

/// One decoded tree call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeCall {
    /// `stat`, `lstat`, `newfstatat`, `statx`; `empty_path`: the call may
    /// name the dirfd itself with an empty path (`AT_EMPTY_PATH`).
    Stat {
        path: PathArg,
        nofollow: bool,
        empty_path: bool,
        out: u64,
        layout: StatLayout,
    },
    /// `fstat`.
    Fstat {
        fd: i32,
        out: u64,
    },
    Access {
        path: PathArg,
        check: AccessCheck,
        nofollow: bool,
    },
    ReadLink {
        path: PathArg,
        buf: u64,
        size: u64,
    },
    /// `getxattr`/`lgetxattr` (with `name`), `listxattr`/`llistxattr`.
    Xattr {
        path: PathArg,
        nofollow: bool,
        name: Option<u64>,
        buf: u64,
        size: u64,
    },
    /// `fgetxattr` (with `name`), `flistxattr`: on a file the program
    /// holds, which it may have from the server.
    FdXattr {
        fd: i32,
        name: Option<u64>,
        buf: u64,
        size: u64,
    },
    Mkdir {
        path: PathArg,
        mode: u32,
    },
    /// `unlink`, `rmdir`, `unlinkat` (`dir` with `AT_REMOVEDIR`).
    Remove {
        path: PathArg,
        dir: bool,
    },
    Rename {
        from: PathArg,
        to: PathArg,
        noreplace: bool,
    },
    /// `getdents64` (`wide`) and the older `getdents`.
    Getdents {
        fd: i32,
        buf: u64,
        count: u64,
        wide: bool,
    },
    Lseek {
        fd: i32,
        offset: i64,
        whence: i32,
    },
}

/// `at` flags we decode; any other bit makes the kernel say `EINVAL`,
/// which the program must see from the kernel itself.
const STAT_FLAGS: u64 =
    (libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH | libc::AT_NO_AUTOMOUNT) as u64;
const STATX_FLAGS: u64 = STAT_FLAGS | libc::AT_STATX_SYNC_TYPE as u64;
const ACCESS_FLAGS: u64 = (libc::AT_EACCESS | libc::AT_SYMLINK_NOFOLLOW) as u64;

fn has(flags: u64, flag: i32) -> bool {
    flags & flag as u64 != 0
}

/// Syscalls only x86_64 has (older aarch64-less names).
#[cfg(target_arch = "x86_64")]
fn decode_legacy(nr: i64, a: [u64; 6]) -> Option<TreeCall> {
    use TreeCall::*;
    Some(match nr {
        libc::SYS_stat | libc::SYS_lstat => Stat {
            path: PathArg::cwd(a[0]),
            nofollow: nr == libc::SYS_lstat,
            empty_path: false,
            out: a[1],
            layout: StatLayout::Stat,
        },
        libc::SYS_access => Access {
            path: PathArg::cwd(a[0]),
            check: access_check(a[1])?,
            nofollow: false,
        },
        libc::SYS_readlink => ReadLink {
            path: PathArg::cwd(a[0]),
            buf: a[1],
            size: a[2],
        },
        libc::SYS_mkdir => Mkdir {
            path: PathArg::cwd(a[0]),
            mode: a[1] as u32,
        },
        libc::SYS_unlink | libc::SYS_rmdir => Remove {
            path: PathArg::cwd(a[0]),
            dir: nr == libc::SYS_rmdir,
        },
        libc::SYS_rename => Rename {
            from: PathArg::cwd(a[0]),
            to: PathArg::cwd(a[1]),
            noreplace: false,
        },
        libc::SYS_getdents => Getdents {
            fd: a[0] as i32,
            buf: a[1],
            count: a[2],
            wide: false,
        },
        _ => return None,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn decode_legacy(_nr: i64, _a: [u64; 6]) -> Option<TreeCall> {
    None
}

/// The syscalls of every architecture.
fn decode_common(nr: i64, a: [u64; 6]) -> Option<TreeCall> {
    use TreeCall::*;
    Some(match nr {
        libc::SYS_newfstatat | libc::SYS_statx => {
            let (flags, out, layout, known) = if nr == libc::SYS_statx {
                (a[2], a[4], StatLayout::Statx, STATX_FLAGS)
            } else {
                (a[3], a[2], StatLayout::Stat, STAT_FLAGS)
            };
            if flags & !known != 0 {
                return None;
            }
            Stat {
                path: PathArg::at(a[0], a[1]),
                nofollow: has(flags, libc::AT_SYMLINK_NOFOLLOW),
                empty_path: has(flags, libc::AT_EMPTY_PATH),
                out,
                layout,
            }
        }
        libc::SYS_fstat => Fstat {
            fd: a[0] as i32,
            out: a[1],
        },
        libc::SYS_faccessat | libc::SYS_faccessat2 => {
            let flags = if nr == libc::SYS_faccessat2 { a[3] } else { 0 };
            if flags & !ACCESS_FLAGS != 0 {
                return None;
            }
            Access {
                path: PathArg::at(a[0], a[1]),
                check: access_check(a[2])?,
                nofollow: has(flags, libc::AT_SYMLINK_NOFOLLOW),
            }
        }
        libc::SYS_readlinkat => ReadLink {
            path: PathArg::at(a[0], a[1]),
            buf: a[2],
            size: a[3],
        },
        libc::SYS_getxattr | libc::SYS_lgetxattr => Xattr {
            path: PathArg::cwd(a[0]),
            nofollow: nr == libc::SYS_lgetxattr,
            name: Some(a[1]),
            buf: a[2],
            size: a[3],
        },
        libc::SYS_listxattr | libc::SYS_llistxattr => Xattr {
            path: PathArg::cwd(a[0]),
            nofollow: nr == libc::SYS_llistxattr,
            name: None,
            buf: a[1],
            size: a[2],
        },
        libc::SYS_fgetxattr => FdXattr {
            fd: a[0] as i32,
            name: Some(a[1]),
            buf: a[2],
            size: a[3],
        },
        libc::SYS_flistxattr => FdXattr {
            fd: a[0] as i32,
            name: None,
            buf: a[1],
            size: a[2],
        },
        libc::SYS_mkdirat => Mkdir {
            path: PathArg::at(a[0], a[1]),
            mode: a[2] as u32,
        },
        libc::SYS_unlinkat => {
            if a[2] & !(libc::AT_REMOVEDIR as u64) != 0 {
                return None;
            }
            Remove {
                path: PathArg::at(a[0], a[1]),
                dir: has(a[2], libc::AT_REMOVEDIR),
            }
        }
        libc::SYS_renameat | libc::SYS_renameat2 => {
            let flags = if nr == libc::SYS_renameat2 { a[4] } else { 0 };
            if flags & !u64::from(libc::RENAME_NOREPLACE) != 0 {
                return None;
            }
            Rename {
                from: PathArg::at(a[0], a[1]),
                to: PathArg::at(a[2], a[3]),
                noreplace: flags != 0,
            }
        }
        libc::SYS_getdents64 => Getdents {
            fd: a[0] as i32,
            buf: a[1],
            count: a[2],
            wide: true,
        },
        libc::SYS_lseek => Lseek {
            fd: a[0] as i32,
            offset: a[1] as i64,
            whence: a[2] as i32,
        },
        _ => return None,
    })
}

/// `access` modes: `X_OK` (alone or with others) and unknown bits continue.
fn access_check(mode: u64) -> Option<AccessCheck> {
    const R: u64 = libc::R_OK as u64;
    const W: u64 = libc::W_OK as u64;
    Some(match mode {
        0 => AccessCheck::Exists,
        R => AccessCheck::Read,
        W => AccessCheck::Write,
        m if m == R | W => AccessCheck::ReadWrite,
        _ => return None,
    })
}

impl TreeCall {
    /// Decodes a trapped call; `None` if it is no tree call or has flags
    /// we leave to the kernel.
    pub fn decode(call: &Notification) -> Option<TreeCall> {
        decode_common(call.nr, call.args).or_else(|| decode_legacy(call.nr, call.args))
    }

    /// Whether the kernel could fail this call with `errno`, so that the
    /// server's errno may be handed to the program (SPEC §8). `EEXIST`
    /// only where the call creates (`mkdir`, `RENAME_NOREPLACE`).
    pub fn can_fail_with(&self, errno: i32) -> bool {
        use libc::*;
        const LOOKUP: [i32; 5] = [ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG, EIO];
        if LOOKUP.contains(&errno) {
            return true;
        }
        let more: &[i32] = match self {
            TreeCall::Stat { .. } | TreeCall::Fstat { .. } => &[EOVERFLOW],
            TreeCall::Access { .. } => &[EROFS, ETXTBSY],
            TreeCall::ReadLink { .. } => &[EINVAL],
            TreeCall::Xattr { name: Some(_), .. } => &[ENODATA, EOPNOTSUPP, E2BIG],
            TreeCall::Xattr { name: None, .. } => &[EOPNOTSUPP, E2BIG],
            TreeCall::FdXattr { name: Some(_), .. } => &[ENODATA, EOPNOTSUPP, E2BIG],
            TreeCall::FdXattr { name: None, .. } => &[EOPNOTSUPP, E2BIG],
            TreeCall::Mkdir { .. } => &[EEXIST, EROFS, ENOSPC, EDQUOT, EMLINK],
            TreeCall::Remove { dir: false, .. } => &[EISDIR, EROFS, EBUSY, EPERM],
            TreeCall::Remove { dir: true, .. } => &[ENOTEMPTY, EROFS, EBUSY, EINVAL],
            TreeCall::Rename { noreplace, .. } => {
                if *noreplace && errno == EEXIST {
                    return true;
                }
                &[
                    EISDIR, EXDEV, ENOTEMPTY, EROFS, EBUSY, ENOSPC, EDQUOT, EMLINK,
                ]
            }
            TreeCall::Getdents { .. } | TreeCall::Lseek { .. } => &[],
        };
        more.contains(&errno)
    }
}

/// A `statx` answer reduced to what the fields say: `stx_mask` names the
/// fields that are set, and every other field is zero.
pub fn statx_bytes(stx: &libc::statx) -> Vec<u8> {
    as_bytes(stx).to_vec()
}

/// `struct stat` as `newfstatat`, `stat`, `lstat` and `fstat` write it,
/// from what `statx` says (the kernel fills both from one `kstat`).
pub fn stat_bytes(stx: &libc::statx) -> Vec<u8> {
    // SAFETY: `struct stat` is plain old data; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    st.st_ino = stx.stx_ino;
    st.st_nlink = stx.stx_nlink.into();
    st.st_mode = stx.stx_mode.into();
    st.st_uid = stx.stx_uid;
    st.st_gid = stx.stx_gid;
    st.st_rdev = libc::makedev(stx.stx_rdev_major, stx.stx_rdev_minor);
    st.st_size = stx.stx_size as i64;
    st.st_blksize = stx.stx_blksize.into();
    st.st_blocks = stx.stx_blocks as i64;
    st.st_atime = stx.stx_atime.tv_sec;
    st.st_atime_nsec = stx.stx_atime.tv_nsec.into();
    st.st_mtime = stx.stx_mtime.tv_sec;
    st.st_mtime_nsec = stx.stx_mtime.tv_nsec.into();
    st.st_ctime = stx.stx_ctime.tv_sec;
    st.st_ctime_nsec = stx.stx_ctime.tv_nsec.into();
    as_bytes(&st).to_vec()
}

pub fn as_bytes<T>(value: &T) -> &[u8] {
    // SAFETY: used only on the kernel's plain-old-data structs, zeroed
    // before filling, so padding bytes are initialised too.
    unsafe { std::slice::from_raw_parts((value as *const T).cast(), size_of::<T>()) }
}

/// What `readlink` writes and returns for a buffer of `size` bytes: the
/// link text truncated to the buffer, without a NUL, and its length.
/// `None` for a size the kernel refuses (`EINVAL`: it must say so).
pub fn readlink_answer(target: &[u8], size: u64) -> Option<&[u8]> {
    let size = i32::try_from(size).ok().filter(|&s| s > 0)? as usize;
    Some(&target[..target.len().min(size)])
}

/// What an xattr read writes for a buffer of `size` bytes: nothing when
/// `size` is 0 (the call returns the length the value needs), the value
/// when it fits, else `Err(ERANGE)`.
pub fn xattr_answer(value: &[u8], size: u64) -> Result<Option<&[u8]>, i32> {
    if size == 0 {
        Ok(None)
    } else if (value.len() as u64) > size {
        Err(libc::ERANGE)
    } else {
        Ok(Some(value))
    }
}

/// `listxattr`'s buffer: each name followed by a NUL.
pub fn xattr_name_list<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut list = Vec::new();
    for name in names {
        list.extend_from_slice(name);
        list.push(0);
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    fn call(nr: i64, args: &[u64]) -> Option<TreeCall> {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        TreeCall::decode(&Notification {
            id: 1,
            tid: 1,
            nr,
            args: a,
        })
    }

    /// What the kernel itself says of `path`, with `statx`.
    fn kernel_statx(path: &std::path::Path, flags: i32) -> libc::statx {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: statx fills a zeroed struct of its own type.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        let mask = libc::STATX_BASIC_STATS | libc::STATX_BTIME;
        let rc = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), flags, mask, &mut stx) };
        assert_eq!(rc, 0);
        stx
    }

    #[test]
    fn stat_layout_is_what_the_kernel_writes() {
        for path in [
            "/",
            "/dev/null",
            "/proc/self/exe",
            env!("CARGO_MANIFEST_DIR"),
        ] {
            let path = std::path::Path::new(path);
            let c = CString::new(path.as_os_str().as_bytes()).unwrap();
            // SAFETY: lstat fills a zeroed struct of its own type.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::lstat(c.as_ptr(), &mut st) }, 0);
            let ours = stat_bytes(&kernel_statx(path, libc::AT_SYMLINK_NOFOLLOW));
            assert_eq!(ours, as_bytes(&st), "{path:?}");
        }
    }

    #[test]
    fn syscall_arguments_decode_per_call() {
        let nofollow = libc::AT_SYMLINK_NOFOLLOW as u64;
        assert_eq!(
            call(libc::SYS_newfstatat, &[3, 0x10, 0x20, nofollow]),
            Some(TreeCall::Stat {
                path: PathArg {
                    dirfd: 3,
                    addr: 0x10
                },
                nofollow: true,
                empty_path: false,
                out: 0x20,
                layout: StatLayout::Stat,
            })
        );
        let cwd = libc::AT_FDCWD as u32 as u64;
        let empty = libc::AT_EMPTY_PATH as u64;
        assert_eq!(
            call(libc::SYS_statx, &[cwd, 0x10, empty, 0x7ff, 0x30]),
            Some(TreeCall::Stat {
                path: PathArg::cwd(0x10),
                nofollow: false,
                empty_path: true,
                out: 0x30,
                layout: StatLayout::Statx,
            })
        );
        // An unknown flag: the kernel answers EINVAL itself.
        assert_eq!(
            call(libc::SYS_newfstatat, &[3, 0x10, 0x20, 0x8000_0000]),
            None
        );
        assert_eq!(
            call(libc::SYS_unlinkat, &[4, 0x10, libc::AT_REMOVEDIR as u64]),
            Some(TreeCall::Remove {
                path: PathArg {
                    dirfd: 4,
                    addr: 0x10
                },
                dir: true
            })
        );
        let exchange = 2; // RENAME_EXCHANGE continues
        assert_eq!(call(libc::SYS_renameat2, &[cwd, 1, cwd, 2, exchange]), None);
        assert_eq!(
            call(libc::SYS_renameat2, &[cwd, 1, 5, 2, 1]),
            Some(TreeCall::Rename {
                from: PathArg::cwd(1),
                to: PathArg { dirfd: 5, addr: 2 },
                noreplace: true
            })
        );
        assert_eq!(
            call(libc::SYS_lgetxattr, &[0x10, 0x20, 0x30, 64]),
            Some(TreeCall::Xattr {
                path: PathArg::cwd(0x10),
                nofollow: true,
                name: Some(0x20),
                buf: 0x30,
                size: 64
            })
        );
        assert_eq!(call(libc::SYS_read, &[0, 0, 0]), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn legacy_calls_decode_relative_to_the_cwd() {
        assert_eq!(
            call(libc::SYS_lstat, &[0x10, 0x20]),
            Some(TreeCall::Stat {
                path: PathArg::cwd(0x10),
                nofollow: true,
                empty_path: false,
                out: 0x20,
                layout: StatLayout::Stat,
            })
        );
        assert_eq!(
            call(libc::SYS_access, &[0x10, libc::W_OK as u64]),
            Some(TreeCall::Access {
                path: PathArg::cwd(0x10),
                check: AccessCheck::Write,
                nofollow: false
            })
        );
        // X_OK is the kernel's to answer.
        assert_eq!(call(libc::SYS_access, &[0x10, libc::X_OK as u64]), None);
        assert_eq!(
            call(libc::SYS_rmdir, &[0x10]),
            Some(TreeCall::Remove {
                path: PathArg::cwd(0x10),
                dir: true
            })
        );
    }

    #[test]
    fn errnos_go_back_only_where_the_call_can_fail_with_them() {
        let mkdir = TreeCall::Mkdir {
            path: PathArg::cwd(0),
            mode: 0o755,
        };
        assert!(mkdir.can_fail_with(libc::EEXIST));
        let rename = |noreplace| TreeCall::Rename {
            from: PathArg::cwd(0),
            to: PathArg::cwd(0),
            noreplace,
        };
        assert!(!rename(false).can_fail_with(libc::EEXIST));
        assert!(rename(true).can_fail_with(libc::EEXIST));
        assert!(rename(false).can_fail_with(libc::EXDEV));
        let access = TreeCall::Access {
            path: PathArg::cwd(0),
            check: AccessCheck::Write,
            nofollow: false,
        };
        // access(dir, W_OK) succeeds where an open for writing would not.
        assert!(!access.can_fail_with(libc::EISDIR));
        assert!(access.can_fail_with(libc::ENOENT));
    }

    #[test]
    fn readlink_truncates_and_xattr_says_erange() {
        assert_eq!(readlink_answer(b"target", 3), Some(&b"tar"[..]));
        assert_eq!(readlink_answer(b"target", 64), Some(&b"target"[..]));
        assert_eq!(readlink_answer(b"target", 0), None);
        assert_eq!(readlink_answer(b"target", u64::MAX), None);
        assert_eq!(xattr_answer(b"value", 0), Ok(None));
        assert_eq!(xattr_answer(b"value", 4), Err(libc::ERANGE));
        assert_eq!(xattr_answer(b"value", 5), Ok(Some(&b"value"[..])));
        assert_eq!(
            xattr_name_list([&b"user.a"[..], b"user.b"]),
            b"user.a\0user.b\0"
        );
    }
}
