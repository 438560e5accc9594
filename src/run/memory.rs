//! Writing answers into a trapped task's memory (SPEC §8, tree calls).
//!
//! The handle is `/proc/TID/mem`, opened *before* the final
//! `SECCOMP_IOCTL_NOTIF_ID_VALID`: a handle on a thread's memory stays
//! bound to that thread's address space, so once the check confirms the
//! thread still waits on its call, a recycled thread id can never receive
//! what we write.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;

/// A write handle on one task's memory.
#[derive(Debug)]
pub struct TargetMemory {
    file: File,
}

impl TargetMemory {
    /// Opens the memory of thread `tid`; callers check `ID_VALID` after.
    pub fn open(tid: i32) -> io::Result<TargetMemory> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{tid}/mem"))?;
        Ok(TargetMemory { file })
    }

    /// Writes all of `bytes` at `addr`; `EFAULT` if part of the range is
    /// not writable there, as the kernel itself would answer the call.
    pub fn write(&self, addr: u64, bytes: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < bytes.len() {
            match self.file.write_at(&bytes[done..], addr + done as u64) {
                Ok(0) => return Err(io::Error::from_raw_os_error(libc::EFAULT)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    return Err(io::Error::from_raw_os_error(libc::EFAULT));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_into_a_task_and_refuses_unmapped_memory() {
        // SAFETY: gettid has no arguments.
        let me = TargetMemory::open(unsafe { libc::gettid() }).unwrap();
        let mut buf = [0u8; 8];
        me.write(buf.as_mut_ptr() as u64, b"written!").unwrap();
        // The write went around the compiler's view of `buf`.
        // SAFETY: a read of a live local array.
        let seen = unsafe { std::ptr::read_volatile(&buf) };
        assert_eq!(&seen, b"written!");
        let err = me.write(8, b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
    }
}
