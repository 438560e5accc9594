//! A small fake of what systemd does with a service's fd store, for the
//! restart tests (there is no systemd in the test machines). It follows
//! systemd v254 and later (`FileDescriptorStorePreserve=` is v254), as
//! sd_notify(3), sd_listen_fds(3) and systemd.service(5) document it:
//!
//! - `FDSTORE=1` with fds attached stores them, under `FDNAME=` (default
//!   `stored`), up to `FileDescriptorStoreMax=`; more are closed;
//! - the same open file twice is kept once;
//! - `FDSTOREREMOVE=1` with `FDNAME=` removes every fd of that name;
//! - a stored fd that polls `EPOLLHUP` or `EPOLLERR` is dropped (PID 1
//!   watches each one; `on_fd_store_io` in src/core/service.c);
//! - at the next start the fds come at 3, 4, ... (those of the socket
//!   units first, named by them, then the stored ones) with `LISTEN_FDS`,
//!   `LISTEN_FDNAMES` (colon-separated) and `LISTEN_PID` set to the
//!   started process's own pid; the store keeps them until removed.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::Command;

pub struct FdStore {
    /// `FileDescriptorStoreMax=`.
    pub max: usize,
    /// What socket units pass, by name (`fdopen.socket`): never stored,
    /// never closed between starts.
    pub sockets: Vec<(String, OwnedFd)>,
    pub entries: Vec<(String, OwnedFd)>,
    /// Every notification seen, for assertions.
    pub messages: Vec<String>,
}

impl FdStore {
    pub fn new(max: usize) -> FdStore {
        FdStore {
            max,
            sockets: Vec::new(),
            entries: Vec::new(),
            messages: Vec::new(),
        }
    }

    /// Takes in every notification waiting on `notify`.
    pub fn take_messages(&mut self, notify: &UnixDatagram) {
        notify.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 4096];
        while let Ok(got) = fdopen::fdpass::recv(notify.as_fd(), &mut buf) {
            let text = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
            self.message(&text, got.fds);
        }
        notify.set_nonblocking(false).unwrap();
    }

    fn message(&mut self, text: &str, fds: Vec<OwnedFd>) {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).map(str::to_owned))
        };
        let name = field("FDNAME=").unwrap_or_else(|| "stored".into());
        if field("FDSTORE=").as_deref() == Some("1") {
            for fd in fds {
                let duplicate = self.entries.iter().any(|(_, kept)| same_file(kept, &fd));
                if !duplicate && self.entries.len() < self.max {
                    self.entries.push((name.clone(), fd));
                }
            }
        } else if field("FDSTOREREMOVE=").as_deref() == Some("1") {
            self.entries.retain(|(n, _)| *n != name);
        }
        self.messages.push(text.to_owned());
    }

    /// Drops what PID 1 would have dropped by now: fds that hang up.
    pub fn drop_hung_up(&mut self) {
        self.entries.retain(|(_, fd)| {
            let mut p = [nix::poll::PollFd::new(
                fd.as_fd(),
                nix::poll::PollFlags::empty(),
            )];
            nix::poll::poll(&mut p, nix::poll::PollTimeout::ZERO).unwrap();
            let got = p[0].revents().unwrap();
            !got.intersects(nix::poll::PollFlags::POLLHUP | nix::poll::PollFlags::POLLERR)
        });
    }

    /// A command that starts `program args` as systemd would with this
    /// store: fds at 3.., `LISTEN_*` set (`LISTEN_PID` by the shell that
    /// then execs the program, so it is the program's own pid).
    pub fn command(&self, program: &str, args: &[String]) -> Command {
        let passed = || self.sockets.iter().chain(&self.entries);
        let names: Vec<&str> = passed().map(|(n, _)| n.as_str()).collect();
        let script = format!(
            "export LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={}; exec \"$0\" \"$@\"",
            names.len(),
            names.join(":")
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script).arg(program).args(args);
        let raw: Vec<i32> = passed().map(|(_, fd)| fd.as_raw_fd()).collect();
        use std::os::unix::process::CommandExt;
        // SAFETY: only dup2 and fcntl, async-signal-safe. Sources are
        // first moved above the targets so none is overwritten early.
        unsafe {
            cmd.pre_exec(move || {
                let base = 1000;
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, base + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for i in 0..raw.len() as i32 {
                    if libc::dup2(base + i, 3 + i) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(base + i);
                }
                Ok(())
            });
        }
        cmd
    }
}

fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    let meta = |fd: &OwnedFd| {
        std::fs::File::from(fd.try_clone().unwrap())
            .metadata()
            .map(|m| (m.dev(), m.ino()))
            .unwrap()
    };
    meta(a) == meta(b)
}
