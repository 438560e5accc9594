//! What a request did that its failure must undo (SPEC §2, §3.2, §3.4):
//! a file it created is removed, a held fd it took is put back. Both
//! happen when the guard is dropped without [`kept`](CreatedGuard::keep),
//! so a refused audit record and a panic unwinding through the request
//! undo them alike.

use std::os::fd::OwnedFd;
use std::sync::Arc;

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

/// A held fd this request took out of the holder (`retrieve` with
/// `remove`).
pub(super) struct TakenGuard {
    holder: Arc<Holder>,
    taken: Option<Taken>,
}

impl TakenGuard {
    pub fn new(holder: Arc<Holder>, taken: Taken) -> TakenGuard {
        TakenGuard {
            holder,
            taken: Some(taken),
        }
    }

    /// The request stands: the fd is the caller's to send.
    pub fn keep(mut self) -> OwnedFd {
        self.taken.take().expect("kept once").into_fd()
    }
}

impl Drop for TakenGuard {
    fn drop(&mut self) {
        if let Some(taken) = self.taken.take() {
            self.holder.put_back(taken);
        }
    }
}

impl std::fmt::Debug for TakenGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TakenGuard").finish_non_exhaustive()
    }
}
