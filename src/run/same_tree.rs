//! Whether the server sees the program's tree (SPEC §8): a server in
//! another mount namespace or under another root (`PrivateTmp=`, a
//! program in a container) would answer every path about another tree,
//! so `run` then brokers nothing.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;

use crate::client::{Client, Error};

/// Where a process lives: its mount namespace's inode and the device and
/// inode of its `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub mnt_ns: u64,
    pub root: [u64; 2],
}

impl Place {
    /// Ours (the program's, which starts as our child).
    pub fn own() -> io::Result<Place> {
        let root = fs::metadata("/proc/self/root")?;
        Ok(Place {
            mnt_ns: fs::metadata("/proc/self/ns/mnt")?.ino(),
            root: [root.dev(), root.ino()],
        })
    }

    /// The server's, from its answer to a `hello` sent earlier (`run`
    /// sends it with `scope`); `None` from a server that does not say
    /// (before protocol 3), which is then taken to share ours.
    pub fn server_answer(client: &mut Client) -> Result<Option<Place>, Error> {
        let line = client.receive()?.line;
        if !line.ok {
            // A server at its limit answers `busy` before it closes: say so.
            return Err(match line.error {
                Some(refusal) => Error::Refused(refusal),
                None => Error::Protocol("hello refused".into()),
            });
        }
        Ok(match (line.mnt_ns, line.root) {
            (Some(mnt_ns), Some(root)) => Some(Place { mnt_ns, root }),
            _ => None,
        })
    }
}
