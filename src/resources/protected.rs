//! The server's own files (SPEC §3.6, self-protection): whatever the
//! policy says, nothing but `read`, `stat` and `list` is granted on the
//! policy files, anything in or above the policy directory, the audit log,
//! the socket and the server's binary. A policy that granted `delete` on
//! `/etc/**` must not let a client remove the policy, the log of what it
//! did, or the binary the next upgrade re-executes.

use std::path::{Path, PathBuf};

/// The paths a running server protects.
#[derive(Debug, Clone, Default)]
pub struct Protected {
    /// The policy file or directory: it, everything in it, and every
    /// directory above it.
    policy: Option<PathBuf>,
    /// Single files: the audit log, the socket, the binary.
    files: Vec<PathBuf>,
}

impl Protected {
    /// Protects `policy` (and what it contains and lies in) and `files`,
    /// each both as given and as its real path, where that can be read.
    pub fn new(policy: &Path, files: impl IntoIterator<Item = PathBuf>) -> Protected {
        let real = |p: &Path| std::fs::canonicalize(p).ok();
        let mut all: Vec<PathBuf> = Vec::new();
        for file in files {
            all.extend(real(&file));
            all.extend(symlink_hops(&file));
            all.push(file);
        }
        let mut protected = Protected {
            policy: Some(real(policy).unwrap_or_else(|| policy.to_owned())),
            files: all,
        };
        if real(policy).as_deref() != Some(policy) {
            // The path as given, too: a symlink to the policy lies above it.
            protected.files.push(policy.to_owned());
            protected.files.extend(symlink_hops(policy));
            protected
                .files
                .extend(policy.ancestors().map(Path::to_owned));
        }
        protected
    }

    /// The refusal of a change to one of them.
    pub fn refusal() -> crate::decision::Refusal {
        crate::decision::Refusal::new(
            crate::protocol::ErrorCode::Denied,
            "the server's own files (policy, audit log, socket, binary) are never changed",
        )
    }

    /// True when changing `path` (an absolute, normalised path, requested
    /// or real) could change the server's own files.
    pub fn covers(&self, path: &Path) -> bool {
        if self.files.iter().any(|f| f == path) {
            return true;
        }
        self.policy
            .as_deref()
            .is_some_and(|policy| path.starts_with(policy) || policy.starts_with(path))
    }
}

/// Each symlink that `path` leads through as its final name (a link to
/// a link to the file), by its real path (its directory's real path and
/// its name, as requests are judged): replacing any of them changes what
/// `path` names.
fn symlink_hops(path: &Path) -> Vec<PathBuf> {
    let mut hops = Vec::new();
    let mut at = path.to_owned();
    // As many as the kernel follows.
    for _ in 0..40 {
        let (Ok(target), Some(dir), Some(name)) =
            (std::fs::read_link(&at), at.parent(), at.file_name())
        else {
            break;
        };
        let Ok(dir) = std::fs::canonicalize(dir) else {
            break;
        };
        hops.push(dir.join(name));
        at = dir.join(target);
    }
    hops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_symlink_hop_to_a_protected_file_is_protected() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(real.join("safe")).unwrap();
        std::fs::write(real.join("safe/p.json"), "{}").unwrap();
        std::fs::create_dir(real.join("open")).unwrap();
        std::os::unix::fs::symlink(real.join("safe/p.json"), real.join("open/hop")).unwrap();
        std::os::unix::fs::symlink("open/hop", real.join("p.json")).unwrap();
        std::os::unix::fs::symlink("../safe/p.json", real.join("open/log")).unwrap();
        let p = Protected::new(&real.join("p.json"), [real.join("open/log")]);
        for yes in ["p.json", "open/hop", "open/log", "safe/p.json"] {
            assert!(p.covers(&real.join(yes)), "{yes}");
        }
        assert!(!p.covers(&real.join("open/other")));
    }

    #[test]
    fn the_policy_what_is_in_it_and_above_it_and_the_named_files() {
        let p = Protected::new(
            Path::new("/nonexistent/fdopen/policy.d"),
            [PathBuf::from("/var/log/fdopen.log")],
        );
        for yes in [
            "/nonexistent/fdopen/policy.d",
            "/nonexistent/fdopen/policy.d/new.json",
            "/nonexistent/fdopen",
            "/nonexistent",
            "/",
            "/var/log/fdopen.log",
        ] {
            assert!(p.covers(Path::new(yes)), "{yes}");
        }
        for no in [
            "/nonexistent/fdopen/other",
            "/nonexistent/fdopen/policy.d2",
            "/var/log/other.log",
            "/var/log",
        ] {
            assert!(!p.covers(Path::new(no)), "{no}");
        }
    }
}
