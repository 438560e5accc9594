//! One trapped syscall, from notification to answer. Every path ends in
//! exactly one answer: the server's grant installed in the task, or the
//! syscall continued with the task's own rights (SPEC §8: `run` only adds).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use super::bind_call::{BindArgs, ProgramSocket, copy_options};
use super::dir_stream::{DirStreams, wants_directory};
use super::listener::{Install, Listener, Notification, target_gone};
use super::open_call::{Brokerable, OpenArgs, OpenPath, absolute_path};
use super::scope::BrokerScope;
use super::target::{Identity, Target};
use super::tree_broker::client_within;
use super::tree_call::TreeCall;
use super::turns::Turns;
use super::within::Within;
use crate::address::BindAddress;
use crate::client::{BindOptions, Client, OpenOptions};

/// How long a supervisor thread waits for one answer before it gives the
/// connection up; the server's own `--fs-timeout` answers far sooner.
const SERVER_PATIENCE: Duration = Duration::from_secs(60);
/// How long a supervisor thread polls for the server's answer before it
/// sleeps on it.
const SERVER_BUSY_POLL: Duration = Duration::from_micros(50);

/// What every supervisor thread shares.
pub struct Broker {
    pub listener: Listener,
    pub scope: BrokerScope,
    pub own: Identity,
    pub socket: PathBuf,
    /// `net.ipv4.ip_unprivileged_port_start`; `None` with `--no-bind`.
    pub privileged_below: Option<u16>,
    /// The placeholders handed out for directory streams (SPEC §8, v3).
    pub dir_streams: DirStreams,
    /// Which supervisor thread receives the next trapped call.
    pub turns: Turns,
    /// This broker, for starting a spare thread.
    pub me: Weak<Broker>,
}

/// Something that stops a call from being brokered; it then continues.
pub(super) struct Untouched;

impl Broker {
    /// Answers trapped syscalls until no task is left that could trap,
    /// taking turns with the other threads (see [`Turns`]). Each thread
    /// keeps its own connection to the server, made on its first brokered
    /// call.
    ///
    /// It then waits for `run` to exit rather than end: tearing the thread
    /// and its connection down just as `run` reaps the command and exits
    /// would only compete with that for a CPU (~0.07 ms of every `run` on
    /// two cores), and the exit takes everything at once.
    pub fn serve(&self) -> ! {
        let mut client = None;
        loop {
            self.turns.take();
            let Ok(call) = self.listener.receive() else {
                self.turns.leave();
                loop {
                    std::thread::park();
                }
            };
            if self.handle(&call, &mut client).is_err() {
                self.listener.proceed(call.id);
            }
            self.turns.answered();
        }
    }

    /// Called before anything that can wait (the server, a filesystem):
    /// if it waits long, another thread receives meanwhile, started now
    /// if there is none yet.
    pub(super) fn may_wait(&self) {
        if !self.turns.may_wait() {
            return;
        }
        let started = self.me.upgrade().and_then(|broker| {
            std::thread::Builder::new()
                .name("fdopen-run".into())
                .spawn(move || broker.serve())
                .ok()
        });
        if started.is_none() {
            self.turns.not_started();
        }
    }

    fn handle(&self, call: &Notification, client: &mut Option<Client>) -> Result<(), Untouched> {
        let target = Target { tid: call.tid };
        if call.nr == libc::SYS_bind {
            let unprivileged_start = self.privileged_below.ok_or(Untouched)?;
            let args = BindArgs::decode(call, &target, unprivileged_start).ok_or(Untouched)?;
            return self.bind(call, &target, args, client);
        }
        if let Some(tree) = TreeCall::decode(call) {
            return self.tree(call, &target, tree, client);
        }
        let args = OpenArgs::decode(call, &target).ok_or(Untouched)?;
        self.open(call, &target, args, client)
    }

    fn open(
        &self,
        call: &Notification,
        target: &Target,
        args: OpenArgs,
        client: &mut Option<Client>,
    ) -> Result<(), Untouched> {
        if wants_directory(args.flags) {
            return self.open_directory(call, target, args.path_arg(), args.flags, client);
        }
        let wanted = Brokerable::from_flags(args.flags, args.mode).ok_or(Untouched)?;
        let raw_path = target.read_c_string(args.path_addr).ok_or(Untouched)?;
        let (base, placeholder) = if raw_path.first() == Some(&b'/') {
            (None, None)
        } else {
            match target.base_directory(args.dirfd) {
                Some(base) => (Some(base), None),
                None => (None, Some(self.placeholder(target, args.dirfd)?.1)),
            }
        };
        let from = base
            .as_deref()
            .or(placeholder.as_ref().map(|p| p.path.as_path()));
        let path = absolute_path(&raw_path, from).ok_or(Untouched)?;
        if !self
            .scope
            .covers_path(&path, wanted.mode, wanted.create.is_requested())
        {
            return Err(Untouched);
        }
        self.may_wait();
        let tgid = target.tgid_if_same_identity(&self.own).ok_or(Untouched)?;
        let within = match base {
            Some(base) => Some(Within::prove(target, tgid, args.dirfd, base).ok_or(Untouched)?),
            None => placeholder,
        };
        let call_path = OpenPath { path, within };
        let umask = if wanted.create.is_requested() {
            target.umask().ok_or(Untouched)?
        } else {
            0
        };
        // A file the server creates stays created: only ask when the fd
        // can be installed (the kernel itself checks the table before it
        // creates anything). Another thread sharing the table can still
        // fill it before the install, and the file then stays: ADDFD
        // cannot reserve a slot, since a placeholder could not be closed
        // again if the server refuses.
        if wanted.create.is_requested() && target.has_free_fd() != Some(true) {
            return Err(Untouched);
        }
        // Everything above was read from the task that trapped, not from
        // a recycled tid, only if its notification is still pending.
        if !self.listener.still_valid(call.id) {
            return Err(Untouched);
        }
        let mut options = wanted.options(umask);
        if let Some(within) = &call_path.within {
            options = options.within(client_within(within));
        }
        let file = match self.request_file(client, &call_path.path, &options) {
            Ok(file) => file,
            // A directory opened for reading gets a directory stream.
            Err(Some(libc::EISDIR)) if wanted.mode == crate::protocol::Mode::Read => {
                return self.open_directory(call, target, args.path_arg(), args.flags, client);
            }
            Err(errno) => return self.open_refused(call, &wanted, errno),
        };
        if wanted.status_flags != 0 {
            set_status_flags(&file, wanted.status_flags)?;
        }
        self.deliver(call, &file, wanted.cloexec, options.truncate)
    }

    /// The server's fd for `path`, or the errno of its refusal. Truncation cannot be undone, so it is
    /// never the server's: the server is asked whether it would
    /// truncate (`check`), then opens without, and [`Broker::deliver`]
    /// truncates once the fd is the program's.
    fn request_file(
        &self,
        client: &mut Option<Client>,
        path: &Path,
        options: &OpenOptions,
    ) -> Result<File, Option<i32>> {
        let truncation = if options.truncate {
            Some(ask_for_errno(client, &self.socket, |c| {
                c.check_with(path, options)
            })?)
        } else {
            None
        };
        let without_truncate = options.clone().truncate(false);
        let (file, grant) = ask_for_errno(client, &self.socket, |c| {
            c.open_with(path, &without_truncate)
        })?;
        // The server judged truncation for the same real path it opened
        // (a symlink changed in between could point elsewhere). Rules are
        // picked by path, then by the file's size and age: a file of
        // another size swapped in at that path between the two requests
        // is the window left.
        if truncation.is_some_and(|t| (t.path, t.path_b64) != (grant.path, grant.path_b64)) {
            return Err(None);
        }
        Ok(file)
    }

    /// Installs `file` as the result of the call, truncated first if the
    /// call asked: the syscall stays pending until then, so the program
    /// cannot write to the file before the truncation.
    fn deliver(
        &self,
        call: &Notification,
        file: &File,
        cloexec: bool,
        truncate: bool,
    ) -> Result<(), Untouched> {
        let how = if truncate {
            Install::Pending { cloexec }
        } else {
            Install::AsResult { cloexec }
        };
        let fd = match self.listener.install(call.id, file.as_raw_fd(), how) {
            Ok(fd) => fd,
            Err(e) if target_gone(&e) => return Ok(()),
            Err(_) => return Err(Untouched),
        };
        if truncate {
            match file.set_len(0) {
                Ok(()) => self.listener.answer(call.id, i64::from(fd)),
                // The fd is in the program's table already and cannot be
                // taken back; the open fails as a kernel open whose
                // O_TRUNC failed would, leaving the file as it was.
                Err(e) => self
                    .listener
                    .fail(call.id, e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
        Ok(())
    }

    /// A refused open: the server's errno where the open can fail with it
    /// (SPEC §8), else the open continues with the program's rights.
    fn open_refused(
        &self,
        call: &Notification,
        wanted: &Brokerable,
        errno: Option<i32>,
    ) -> Result<(), Untouched> {
        match errno {
            Some(errno) if wanted.can_fail_with(errno) => {
                self.listener.fail(call.id, errno);
                Ok(())
            }
            _ => Err(Untouched),
        }
    }

    fn bind(
        &self,
        call: &Notification,
        target: &Target,
        args: BindArgs,
        client: &mut Option<Client>,
    ) -> Result<(), Untouched> {
        let tgid = target.tgid_if_same_identity(&self.own).ok_or(Untouched)?;
        let theirs = target
            .duplicate_fd(tgid, args.sockfd)
            .map_err(|_| Untouched)?;
        let socket = ProgramSocket::inspect(theirs.as_fd(), &args.address).ok_or(Untouched)?;
        let address = socket.address(&args.address);
        let parsed = BindAddress::parse(&address).map_err(|_| Untouched)?;
        if !self.scope.covers_bind(&parsed) {
            return Err(Untouched);
        }
        self.may_wait();
        let cloexec = target.fd_flags(tgid, args.sockfd).ok_or(Untouched)? & libc::O_CLOEXEC != 0;
        if !self.listener.still_valid(call.id) {
            return Err(Untouched);
        }
        let options = BindOptions {
            reuseport: socket.reuseport,
            v6only: args.address.is_ipv6().then_some(socket.v6only),
            listen: false,
        };
        let (granted, _) = ask(client, &self.socket, |c| c.bind_with(&address, &options))?;
        copy_options(theirs.as_fd(), granted.as_fd(), socket.transport).map_err(|_| Untouched)?;
        socket
            .narrowing
            .apply(granted.as_fd())
            .map_err(|_| Untouched)?;
        let how = Install::At {
            fd: args.sockfd,
            cloexec,
        };
        match self.listener.install(call.id, granted.as_raw_fd(), how) {
            Ok(_) => {
                self.listener.answer(call.id, 0);
                Ok(())
            }
            Err(e) if target_gone(&e) => Ok(()),
            Err(_) => Err(Untouched),
        }
    }
}

/// One request on this thread's connection, made if needed. A refusal is
/// `Untouched`; so is a broken connection, which is dropped so that the
/// next call starts afresh.
fn ask<T>(
    client: &mut Option<Client>,
    socket: &PathBuf,
    request: impl FnOnce(&mut Client) -> Result<T, crate::client::Error>,
) -> Result<T, Untouched> {
    ask_for_errno(client, socket, request).map_err(|_| Untouched)
}

/// [`ask`], telling a refusal's errno (SPEC §4), if the server gave one.
pub(super) fn ask_for_errno<T>(
    client: &mut Option<Client>,
    socket: &PathBuf,
    request: impl FnOnce(&mut Client) -> Result<T, crate::client::Error>,
) -> Result<T, Option<i32>> {
    if client.is_none() {
        let mut fresh = Client::connect(socket).map_err(|_| None)?;
        fresh
            .stream()
            .set_read_timeout(Some(SERVER_PATIENCE))
            .map_err(|_| None)?;
        // The trapped task waits on this answer with its CPU idle: polling
        // for it saves the wake-up that dominates a brokered call.
        fresh.set_busy_poll(SERVER_BUSY_POLL);
        // Across an upgrade of the server, a call whose request may be
        // sent twice is asked again; any other is left to the program. A
        // server that is gone holds the traced call up for 2 s at most.
        let patient = crate::client::Reconnect {
            give_up_after: Duration::from_secs(2),
            ..Default::default()
        };
        // Cannot fail: a client made by connect knows its socket.
        let _ = fresh.set_reconnect(Some(patient));
        *client = Some(fresh);
    }
    let connection = client.as_mut().expect("connected above");
    match request(connection) {
        Ok(value) => Ok(value),
        Err(crate::client::Error::Refused(e)) => Err(e.raw_os_error()),
        Err(_) => {
            *client = None;
            Err(None)
        }
    }
}

/// Sets what the call asked with `O_NONBLOCK`, `O_DIRECT`, `O_NOATIME`.
/// A flag the file refuses (`O_DIRECT` on tmpfs) leaves the call to the
/// program, whose own open then fails or succeeds as it would anyway.
fn set_status_flags(file: &impl AsRawFd, flags: i32) -> Result<(), Untouched> {
    // SAFETY: fcntl on a descriptor we hold.
    let ok = unsafe {
        let current = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        current >= 0 && libc::fcntl(file.as_raw_fd(), libc::F_SETFL, current | flags) == 0
    };
    if ok { Ok(()) } else { Err(Untouched) }
}
