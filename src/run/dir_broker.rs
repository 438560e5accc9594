//! Directory streams in the broker (SPEC §8, v3): a directory the
//! program opens gets a placeholder when the server lets it be stat'ed
//! and listed, and `fstat`, `getdents`, `lseek` and every call relative to
//! a placeholder are answered from the real directory. The placeholders
//! themselves are `dir_stream`'s.

use std::os::fd::AsRawFd;

use super::broker::{Broker, Untouched, ask_for_errno};
use super::listener::{Install, Notification, target_gone};
use super::target::Target;
use super::tree_broker::{Answer, client_within, laid_out, with, write};
use super::tree_call::{PathArg, StatLayout};
use super::within::Within;
use crate::client::{Client, DirEntry, TreeReply, TreeRequest};

impl Broker {
    /// The placeholder the task holds as `fd` (or as its cwd), with its
    /// real directory; only for a task with our identity.
    pub(super) fn placeholder(
        &self,
        target: &Target,
        fd: i32,
    ) -> Result<((u64, u64), Within), Untouched> {
        if !self.dir_streams.any() {
            return Err(Untouched);
        }
        let tgid = target.tgid_if_same_identity(&self.own).ok_or(Untouched)?;
        let key = self.dir_streams.key_of(target, tgid, fd).ok_or(Untouched)?;
        Ok((key, self.dir_streams.real(key).ok_or(Untouched)?))
    }

    /// `fstat` (or a stat call with an empty path and `AT_EMPTY_PATH`) of
    /// a placeholder: `stat` of the real directory, if it still is the
    /// one the placeholder stands for.
    pub(super) fn placeholder_stat(
        &self,
        call: &Notification,
        target: &Target,
        fd: i32,
        out: u64,
        layout: StatLayout,
        client: &mut Option<Client>,
    ) -> Result<Answer, Untouched> {
        let (_, real) = self.placeholder(target, fd)?;
        let memory = self.memory(call, target)?;
        let request = TreeRequest::stat(&real.path).within(client_within(&real));
        match ask_for_errno(client, &self.socket, |c| c.tree(&request)) {
            Ok(TreeReply::Stat { stat, .. }) if (stat.dev, stat.ino) == (real.dev, real.ino) => {
                write(Some(&memory), out, &laid_out(&stat, layout), 0).ok_or(Untouched)
            }
            _ => Err(Untouched),
        }
    }

    /// `getdents64`/`getdents` on a placeholder: the real directory's
    /// entries, listed (every page) on the first read or after a rewind.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn placeholder_read(
        &self,
        call: &Notification,
        target: &Target,
        fd: i32,
        buf: u64,
        count: u64,
        wide: bool,
        client: &mut Option<Client>,
    ) -> Result<Answer, Untouched> {
        let (key, real) = self.placeholder(target, fd)?;
        let memory = self.memory(call, target)?;
        let needs = self
            .dir_streams
            .with(key, |s| s.needs_listing())
            .ok_or(Untouched)?;
        if needs {
            let entries = self.listing(client, &real).ok_or(Untouched)?;
            self.dir_streams.with(key, |s| s.set_listing(entries));
        }
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        match self
            .dir_streams
            .with(key, |s| s.read(count, wide))
            .ok_or(Untouched)?
        {
            Ok(records) => {
                write(Some(&memory), buf, &records, records.len() as i64).ok_or(Untouched)
            }
            Err(errno) => Ok(Answer::Errno(errno)),
        }
    }

    /// Every entry of the real directory, page after page.
    fn listing(&self, client: &mut Option<Client>, real: &Within) -> Option<Vec<DirEntry>> {
        let mut entries = Vec::new();
        let mut cursor = None;
        loop {
            let request =
                TreeRequest::readdir(&real.path, cursor.take()).within(client_within(real));
            match ask_for_errno(client, &self.socket, |c| c.tree(&request)).ok()? {
                TreeReply::Dir(page) => {
                    entries.extend(page.entries);
                    match page.cursor {
                        Some(next) => cursor = Some(next),
                        None => return Some(entries),
                    }
                }
                _ => return None,
            }
        }
    }

    /// Opens a directory the program asked for with `O_DIRECTORY` (or a
    /// read-only open the server answered `EISDIR`): if the server lets it
    /// be stat'ed and listed, the program gets a placeholder for it.
    pub(super) fn open_directory(
        &self,
        call: &Notification,
        target: &Target,
        path: PathArg,
        flags: i32,
        client: &mut Option<Client>,
    ) -> Result<(), Untouched> {
        let (resolved, _) = self.prepare(call, target, path, false, true)?;
        let nofollow = flags & libc::O_NOFOLLOW != 0;
        let request = with(TreeRequest::stat(&resolved.path), &resolved).nofollow(nofollow);
        let (real_path, stat) = match ask_for_errno(client, &self.socket, |c| c.tree(&request)) {
            Ok(TreeReply::Stat { path, stat, .. }) if stat.is_dir() => (path, stat),
            _ => return Err(Untouched),
        };
        let real = Within {
            path: real_path,
            dev: stat.dev,
            ino: stat.ino,
        };
        // Listed now, so that a directory `list` does not grant is left
        // to the program, and the first read costs nothing more.
        let entries = self.listing(client, &real).ok_or(Untouched)?;
        let placeholder = self.dir_streams.make(real).map_err(|_| Untouched)?;
        if let Ok(meta) =
            std::fs::File::from(placeholder.try_clone().map_err(|_| Untouched)?).metadata()
        {
            use std::os::unix::fs::MetadataExt;
            self.dir_streams
                .with((meta.dev(), meta.ino()), |s| s.set_listing(entries));
        }
        let how = Install::AsResult {
            cloexec: flags & libc::O_CLOEXEC != 0,
        };
        match self.listener.install(call.id, placeholder.as_raw_fd(), how) {
            Ok(_) => Ok(()),
            Err(e) if target_gone(&e) => Ok(()),
            Err(_) => {
                self.dir_streams.forget(&placeholder);
                Err(Untouched)
            }
        }
    }

    /// `lseek` on a placeholder: rewinds, resumes or tells its position.
    pub(super) fn placeholder_seek(
        &self,
        call: &Notification,
        target: &Target,
        fd: i32,
        offset: i64,
        whence: i32,
    ) -> Result<Answer, Untouched> {
        let (key, _) = self.placeholder(target, fd)?;
        if !self.listener.still_valid(call.id) {
            return Err(Untouched);
        }
        let moved = self.dir_streams.with(key, |s| s.seek(offset, whence));
        Ok(Answer::Value(moved.flatten().ok_or(Untouched)?))
    }
}
