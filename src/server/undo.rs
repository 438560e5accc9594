//! What a request did that its failure must undo (SPEC §2, §3.2, §3.4):
//! a file it created is removed, a held fd it took is put back, a parked
//! fd it unparked is parked again. Each happens when its guard is dropped
//! without being kept, so a refused audit record and a panic unwinding
//! through the request undo it alike.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::held::Key;
use super::holder::{Holder, Taken};
use crate::safe_open::CreatedFile;

/// A file this request created.
#[derive(Debug)]
pub(super) struct CreatedGuard(Option<CreatedFile>);

impl CreatedGuard {
    pub fn new(created: CreatedFile) -> CreatedGuard {
        CreatedGuard(Some(created))
    }

    /// The request stands: the file stays.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for CreatedGuard {
    fn drop(&mut self) {
        if let Some(created) = self.0.take() {
            created.remove();
        }
    }
}

/// What a `retrieve` did to a held fd.
pub(super) struct HeldGuard {
    holder: Arc<Holder>,
    undo: Option<HeldUndo>,
}

enum HeldUndo {
    /// With `remove`, it took the fd out of the holder.
    PutBack(Taken),
    /// It unparked a parked fd (the key and the entry's token).
    Repark(Key, u64),
}

impl HeldGuard {
    pub fn taken(holder: Arc<Holder>, taken: Taken) -> HeldGuard {
        let undo = Some(HeldUndo::PutBack(taken));
        HeldGuard { holder, undo }
    }

    pub fn unparked(holder: Arc<Holder>, key: Key, token: u64) -> HeldGuard {
        let undo = Some(HeldUndo::Repark(key, token));
        HeldGuard { holder, undo }
    }

    /// The fd it took, to send while the guard still puts it back if the
    /// answer never leaves (SPEC §3.4: a failed request leaves it as it was).
    pub fn taken_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match &self.undo {
            Some(HeldUndo::PutBack(taken)) => Some(taken.fd()),
            _ => None,
        }
    }

    /// The request stands. Returns the fd it took, the caller's to send.
    pub fn keep(mut self) -> Option<OwnedFd> {
        match self.undo.take() {
            Some(HeldUndo::PutBack(taken)) => Some(taken.into_fd()),
            Some(HeldUndo::Repark(..)) | None => None,
        }
    }
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        match self.undo.take() {
            Some(HeldUndo::PutBack(taken)) => self.holder.put_back(taken),
            Some(HeldUndo::Repark(key, token)) => self.holder.repark(&key, token),
            None => {}
        }
    }
}

impl std::fmt::Debug for HeldGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldGuard").finish_non_exhaustive()
    }
}
