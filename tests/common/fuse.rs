//! Mounting a FUSE filesystem made by a test, and always getting rid of
//! it again, even when the test fails while the filesystem hangs.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Attributes of root's file or directory `ino` of a test filesystem:
/// the fields a test does not care about, filled in one way for all.
pub fn attr(ino: u64, kind: fuser::FileType, size: u64, perm: u16) -> fuser::FileAttr {
    let dir = kind == fuser::FileType::Directory;
    fuser::FileAttr {
        ino: fuser::INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: std::time::UNIX_EPOCH,
        mtime: std::time::UNIX_EPOCH,
        ctime: std::time::UNIX_EPOCH,
        crtime: std::time::UNIX_EPOCH,
        kind,
        perm,
        nlink: if dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 512,
        flags: 0,
    }
}

/// Whether a test can mount a FUSE filesystem here, or why not.
pub fn available() -> Result<(), &'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Err("mounting a FUSE filesystem needs root");
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse on this machine");
    }
    Ok(())
}

/// A mounted filesystem; aborted through its FUSE connection and unmounted
/// when dropped, so a failing test never leaves a hung mount behind.
pub struct Mounted {
    pub point: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Mounted {
    /// Mounts `fs` at `point` (created if missing); root only.
    pub fn new(point: &Path, fs: impl fuser::Filesystem + 'static) -> Result<Mounted, String> {
        ensure_fusectl()?;
        fs::create_dir_all(point).map_err(|e| e.to_string())?;
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("fdopen-test".into())];
        let session = fuser::spawn_mount(fs, point, &config).map_err(|e| e.to_string())?;
        Ok(Mounted {
            point: point.to_owned(),
            session: Some(session),
        })
    }

    /// `/sys/fs/fuse/connections/N/abort`: fails every request, pending
    /// or future, so nothing stays stuck on this filesystem.
    pub fn abort(&self) {
        if let Ok(meta) = fs::metadata(&self.point) {
            let minor = nix::sys::stat::minor(meta.dev());
            let _ = fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.abort();
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.point)
            .status();
        drop(self.session.take());
    }
}

/// The FUSE control filesystem, whose `abort` files are the cleanup of
/// last resort; mounted here if the machine has not.
fn ensure_fusectl() -> Result<(), String> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    if mounts.lines().any(|l| l.contains(" - fusectl ")) {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "fusectl", "none", "/sys/fs/fuse/connections"])
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err("cannot mount fusectl, so a hung mount could not be cleaned up".into())
    }
}
