//! Closing a round's descriptors in few system calls.
//!
//! A lane closes every descriptor it sent in a round at the end of it.
//! Those are mostly consecutive numbers (each grant's reopen takes the
//! lowest free slot, and the `O_PATH` handle before it is closed at once),
//! and one `close_range(2)` over a run of them costs about half of what a
//! `close` each does: on a virtual machine the system call itself is most
//! of a `close`. Only runs made wholly of descriptors in the batch are
//! closed that way, so nothing else is ever touched.

use std::os::fd::{IntoRawFd, OwnedFd, RawFd};

/// Closes `fds`, one `close_range` per run of consecutive numbers.
pub(super) fn close_all(fds: Vec<OwnedFd>) {
    if fds.len() < 2 {
        return drop(fds);
    }
    // From here on the numbers are ours to close, and nothing else is.
    let mut raw: Vec<RawFd> = fds.into_iter().map(IntoRawFd::into_raw_fd).collect();
    raw.sort_unstable();
    for run in raw.chunk_by(|a, b| b - a == 1) {
        close_run(run[0], run[run.len() - 1]);
    }
}

/// Closes every descriptor from `first` to `last`, all owned by the caller.
fn close_run(first: RawFd, last: RawFd) {
    if first < last {
        // SAFETY: every number in first..=last is an open descriptor the
        // caller owns and gives up; nothing else can hold one of them.
        let closed = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) } == 0;
        if closed {
            return;
        }
        // No close_range (before Linux 5.9): it closed nothing.
    }
    for fd in first..=last {
        // SAFETY: as above; each is closed exactly once.
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    fn ino(fd: impl AsFd) -> u64 {
        std::fs::File::from(fd.as_fd().try_clone_to_owned().unwrap())
            .metadata()
            .unwrap()
            .ino()
    }

    #[test]
    fn closes_exactly_the_batch() {
        // Twelve descriptors of one pipe's write end, mostly consecutive.
        let (read, write) = std::io::pipe().unwrap();
        let pipe = ino(&write);
        let write = OwnedFd::from(write);
        let dups: Vec<OwnedFd> = (0..12).map(|_| write.try_clone().unwrap()).collect();
        // Keep every third: the batch has gaps, and what is in them stays.
        let (kept, batch): (Vec<_>, Vec<_>) =
            dups.into_iter().enumerate().partition(|(i, _)| i % 3 == 1);
        let mut batch: Vec<OwnedFd> = batch.into_iter().map(|(_, f)| f).collect();
        batch.push(write);
        batch.reverse();
        close_all(batch);
        for (_, fd) in &kept {
            assert_eq!(ino(fd), pipe, "a descriptor outside the batch was closed");
        }
        drop(kept);
        // Every write end is closed now, the batch's too: end of file.
        let mut read = read;
        assert_eq!(read.read(&mut [0u8; 1]).unwrap(), 0);
    }
}
