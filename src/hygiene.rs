//! Policy-file hygiene (SPEC §5), in the spirit of sshd's StrictModes:
//! whoever can change the policy decides what the server hands out as
//! root, so every file and directory it is read through must be owned by
//! root or the server's own uid and writable by no one else.
//!
//! Checked along the path as given, along every symlink's target on the
//! way, and along its real path (a symlink anywhere on the way is only as
//! safe as what it leads to). A group- or
//! world-writable *parent* is accepted when it is sticky (`/tmp`): others
//! can then add entries beside ours but not replace ours. The policy
//! directory itself gets no such pass, since every `*.json` in it is read.

use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A path on the way to the policy that someone else could change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    pub path: PathBuf,
    pub owner: u32,
    pub mode: u32,
    pub problem: Problem,
}

/// Why someone other than root or the server could change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Owned by a uid other than root's or the server's.
    Owner,
    /// Writable by its group or by others.
    Writable,
}

impl fmt::Display for Exposure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        let (owner, mode) = (self.owner, self.mode & 0o7777);
        match self.problem {
            Problem::Owner => write!(
                f,
                "{path} belongs to another user (owner uid {owner}, mode {mode:04o}), who could \
                 rewrite the policy; fix: chown root {path} (or to the server's user)"
            ),
            Problem::Writable => write!(
                f,
                "{path} is writable by its group or others (owner uid {owner}, mode {mode:04o}), \
                 who could rewrite the policy; fix: chmod go-w {path}"
            ),
        }
    }
}

/// Every exposure of the policy at `policy` (a file or a directory of
/// `*.json` files) to a uid other than 0 and `server_uid`.
pub fn check(policy: &Path, server_uid: u32) -> Vec<Exposure> {
    let policy = std::path::absolute(policy).unwrap_or_else(|_| policy.to_owned());
    let mut checker = Checker {
        server_uid,
        seen: Vec::new(),
        found: Vec::new(),
    };
    checker.chain(&policy, true);
    if policy.is_dir()
        && let Ok(entries) = std::fs::read_dir(&policy)
    {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                checker.chain(&path, true);
            }
        }
    }
    checker.found
}

struct Checker {
    server_uid: u32,
    seen: Vec<PathBuf>,
    found: Vec<Exposure>,
}

impl Checker {
    /// `path` itself (`own`: no sticky pass) and every directory above
    /// it, as written and then as really reached.
    fn chain(&mut self, path: &Path, own: bool) {
        for (i, step) in path.ancestors().enumerate() {
            self.one(step, own && i == 0);
        }
        if let Ok(real) = std::fs::canonicalize(path)
            && real != path
        {
            for (i, step) in real.ancestors().enumerate() {
                self.one(step, own && i == 0);
            }
        }
    }

    fn one(&mut self, path: &Path, own: bool) {
        if path.as_os_str().is_empty() || self.seen.iter().any(|p| p == path) {
            return;
        }
        self.seen.push(path.to_owned());
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return; // a missing policy is the loader's error to report
        };
        // A symlink's own bits mean nothing; who may replace it is its
        // directory, and what it leads to is checked hop by hop: a link
        // to a link in a writable directory is only as safe as that
        // directory, which the real path alone never shows.
        if meta.file_type().is_symlink() {
            if let Ok(target) = std::fs::read_link(path) {
                let from = path.parent().unwrap_or(Path::new("/"));
                self.chain(&from.join(target), own);
            }
            return;
        }
        let mode = meta.permissions().mode();
        let exposure = |problem| Exposure {
            path: path.to_owned(),
            owner: meta.uid(),
            mode,
            problem,
        };
        if meta.uid() != 0 && meta.uid() != self.server_uid {
            self.found.push(exposure(Problem::Owner));
        }
        let sticky_parent = !own && meta.is_dir() && mode & 0o1000 != 0;
        if mode & 0o022 != 0 && !sticky_parent {
            self.found.push(exposure(Problem::Writable));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn dir() -> tempfile::TempDir {
        let d = tempfile::Builder::new()
            .prefix("hygiene")
            .tempdir()
            .unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_private_policy_in_a_sticky_tmp_passes() {
        let d = dir();
        let p = d.path().join("p.json");
        fs::write(&p, "{}").unwrap();
        chmod(&p, 0o644);
        assert_eq!(check(&p, me()), vec![]);
    }

    #[test]
    fn writable_files_and_directories_are_exposures() {
        let d = dir();
        let p = d.path().join("p.json");
        fs::write(&p, "{}").unwrap();
        for mode in [0o664, 0o646] {
            chmod(&p, mode);
            let found = check(&p, me());
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].problem, Problem::Writable);
            assert!(found[0].to_string().contains("chmod go-w"), "{}", found[0]);
        }
        chmod(&p, 0o644);
        chmod(d.path(), 0o777);
        assert_eq!(check(&p, me())[0].path, d.path());
        // A sticky parent is fine; a sticky policy directory is not.
        chmod(d.path(), 0o1777);
        assert_eq!(check(&p, me()), vec![]);
        assert_eq!(check(d.path(), me()).len(), 1);
    }

    #[test]
    fn every_json_of_a_policy_directory_is_checked_but_nothing_else() {
        let d = dir();
        let pd = d.path().join("policy.d");
        fs::create_dir(&pd).unwrap();
        chmod(&pd, 0o755);
        for (name, mode) in [("a.json", 0o644), ("b.json", 0o666), ("notes.txt", 0o666)] {
            fs::write(pd.join(name), "{}").unwrap();
            chmod(&pd.join(name), mode);
        }
        let found = check(&pd, me());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, pd.join("b.json"));
    }

    #[test]
    fn the_real_path_behind_a_symlink_is_checked_too() {
        let d = dir();
        let open_dir = d.path().join("open");
        fs::create_dir(&open_dir).unwrap();
        chmod(&open_dir, 0o777);
        let real = open_dir.join("p.json");
        fs::write(&real, "{}").unwrap();
        chmod(&real, 0o644);
        let link = d.path().join("p.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let found = check(&link, me());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, open_dir);
    }

    #[test]
    fn a_link_on_the_way_through_a_writable_directory_is_an_exposure() {
        // p.json -> open/hop -> safe/p.json: the real path is safe, but
        // anyone may point open/hop elsewhere.
        let d = dir();
        let (open_dir, safe) = (d.path().join("open"), d.path().join("safe"));
        for (at, mode) in [(&open_dir, 0o777), (&safe, 0o755)] {
            fs::create_dir(at).unwrap();
            chmod(at, mode);
        }
        let real = safe.join("p.json");
        fs::write(&real, "{}").unwrap();
        chmod(&real, 0o644);
        std::os::unix::fs::symlink(&real, open_dir.join("hop")).unwrap();
        let link = d.path().join("p.json");
        std::os::unix::fs::symlink("open/hop", &link).unwrap();
        let found = check(&link, me());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, open_dir);
    }

    #[test]
    fn another_owner_is_an_exposure() {
        let d = dir();
        let p = d.path().join("p.json");
        fs::write(&p, "{}").unwrap();
        chmod(&p, 0o644);
        // Pretend the server runs as someone else: our own files then
        // belong to "another" uid, unless we are root.
        let found = check(&p, me().wrapping_add(1));
        if me() == 0 {
            assert_eq!(found, vec![]);
        } else {
            assert!(
                found.iter().any(|e| e.problem == Problem::Owner),
                "{found:?}"
            );
            assert!(found[0].to_string().contains("chown root"), "{}", found[0]);
        }
    }
}
