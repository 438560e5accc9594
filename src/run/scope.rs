//! Which trapped calls are worth asking the server about: the client's
//! `scope` answer (SPEC §3.5), narrowed by `--broker` globs. Anything
//! outside it continues untouched without a round trip.

use std::path::Path;

use globset::{GlobSet, GlobSetBuilder};

use crate::address::{BindAddress, BindPattern};
use crate::policy::compile_glob;
use crate::protocol::{Mode, Scope};

struct PathGrant {
    /// The glob's text up to its first wildcard: the directories on the
    /// way there may be `stat`ed (SPEC §5, implied stat).
    literal: String,
    modes: Vec<crate::protocol::PathMode>,
    create: bool,
}

pub struct BrokerScope {
    /// The grants' globs as one set, so a scope of literal paths needs no
    /// regex at all (globset matches those by hash): compiling one regex
    /// per grant was most of what `run` did while its program started.
    globs: GlobSet,
    /// What each glob of `globs` grants, by index.
    paths: Vec<PathGrant>,
    /// `--broker` globs; `None` when none were given.
    narrowed_to: Option<GlobSet>,
    binds: Vec<BindPattern>,
}

impl BrokerScope {
    /// The `--broker` globs, compiled before anything starts: a bad one is
    /// a usage error. `None` when none were given.
    pub fn narrowing(brokers: &[String]) -> Result<Option<GlobSet>, globset::Error> {
        if brokers.is_empty() {
            return Ok(None);
        }
        let mut set = GlobSetBuilder::new();
        for glob in brokers {
            set.add(compile_glob(glob)?);
        }
        Ok(Some(set.build()?))
    }

    /// Globs or bind patterns the server sent that do not compile are
    /// skipped: they can only make `run` broker less.
    pub fn new(scope: &Scope, narrowed_to: Option<GlobSet>) -> BrokerScope {
        let mut globs = GlobSetBuilder::new();
        let mut paths = Vec::new();
        for p in &scope.paths {
            if let Ok(glob) = compile_glob(&p.glob) {
                globs.add(glob);
                paths.push(PathGrant {
                    literal: literal_prefix(&p.glob).to_owned(),
                    modes: p.modes.clone(),
                    create: p.create,
                });
            }
        }
        let (globs, paths) = match globs.build() {
            Ok(globs) => (globs, paths),
            Err(_) => (GlobSet::empty(), Vec::new()),
        };
        let binds = scope
            .binds
            .iter()
            .filter_map(|b| BindPattern::parse(b).ok())
            .collect();
        BrokerScope {
            globs,
            paths,
            narrowed_to,
            binds,
        }
    }

    pub fn covers_path(&self, path: &Path, mode: Mode, create: bool) -> bool {
        if let Some(set) = &self.narrowed_to
            && !set.is_match(path)
        {
            return false;
        }
        self.globs.matches(path).into_iter().any(|i| {
            let p = &self.paths[i];
            p.modes.contains(&mode.into()) && (p.create || !create)
        })
    }

    /// Whether a tree call on `path` is worth asking: some grant's glob
    /// matches it, or it is a directory on the way to one (implied stat).
    /// Which of `stat`, `list`, `mkdir`, `delete` the call needs is left to
    /// the server: asking too much costs a round trip, never a right.
    pub fn covers_tree_path(&self, path: &Path) -> bool {
        if let Some(set) = &self.narrowed_to
            && !set.is_match(path)
        {
            return false;
        }
        let text = path.as_os_str().as_encoded_bytes();
        self.globs.is_match(path)
            || self
                .paths
                .iter()
                .any(|p| on_the_way(text, p.literal.as_bytes()))
    }

    pub fn covers_bind(&self, address: &BindAddress) -> bool {
        self.binds.iter().any(|b| b.matches(address))
    }
}

/// A glob's text before its first wildcard or escape.
fn literal_prefix(glob: &str) -> &str {
    let end = glob.find(['*', '?', '[', '{', '\\']).unwrap_or(glob.len());
    &glob[..end]
}

/// `path` is `/` or a directory whose text, with a `/` after it, begins
/// `literal`: every grant below it passes through it.
fn on_the_way(path: &[u8], literal: &[u8]) -> bool {
    path == b"/" || (literal.starts_with(path) && literal.get(path.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ScopePath;

    fn scope() -> Scope {
        Scope {
            paths: vec![ScopePath {
                glob: "/srv/**".into(),
                modes: vec![Mode::Read.into(), Mode::Append.into()],
                create: false,
            }],
            binds: vec!["tcp:*:80".into()],
            names: vec![],
        }
    }

    #[test]
    fn a_path_needs_a_glob_its_mode_and_create() {
        let s = BrokerScope::new(&scope(), None);
        assert!(s.covers_path(Path::new("/srv/a/b"), Mode::Read, false));
        assert!(!s.covers_path(Path::new("/srv/a/b"), Mode::Write, false));
        assert!(!s.covers_path(Path::new("/srv/a/b"), Mode::Append, true));
        assert!(!s.covers_path(Path::new("/etc/passwd"), Mode::Read, false));
    }

    /// Each glob keeps its own grant, also past one that does not compile.
    #[test]
    fn each_glob_grants_what_its_own_grant_says() {
        let grant = |glob: &str, modes: &[Mode], create| ScopePath {
            glob: glob.into(),
            modes: modes.iter().map(|&m| m.into()).collect(),
            create,
        };
        let scope = Scope {
            paths: vec![
                grant("/bad/[", &[Mode::Write], true),
                grant("/srv/a.txt", &[Mode::Read], false),
                grant("/srv/*.log", &[Mode::Append], true),
            ],
            ..Scope::default()
        };
        let s = BrokerScope::new(&scope, None);
        assert!(s.covers_path(Path::new("/srv/a.txt"), Mode::Read, false));
        assert!(!s.covers_path(Path::new("/srv/a.txt"), Mode::Append, false));
        assert!(s.covers_path(Path::new("/srv/x.log"), Mode::Append, true));
        assert!(!s.covers_path(Path::new("/srv/x.log"), Mode::Read, false));
        assert!(!s.covers_path(Path::new("/bad/["), Mode::Write, false));
    }

    #[test]
    fn broker_globs_narrow_the_scope() {
        let s = BrokerScope::new(
            &scope(),
            BrokerScope::narrowing(&["/srv/logs/*".into()]).unwrap(),
        );
        assert!(s.covers_path(Path::new("/srv/logs/a"), Mode::Read, false));
        assert!(!s.covers_path(Path::new("/srv/data/a"), Mode::Read, false));
    }

    #[test]
    fn tree_calls_cover_granted_paths_and_the_directories_on_the_way() {
        let s = BrokerScope::new(&scope(), None);
        for path in ["/", "/srv", "/srv/a", "/srv/a/b/c"] {
            assert!(s.covers_tree_path(Path::new(path)), "{path}");
        }
        for path in ["/sr", "/srvx", "/etc", "/etc/passwd"] {
            assert!(!s.covers_tree_path(Path::new(path)), "{path}");
        }
        assert_eq!(literal_prefix("/srv/app/*.log"), "/srv/app/");
        assert_eq!(literal_prefix("/srv/app"), "/srv/app");
    }

    #[test]
    fn binds_follow_the_scope_patterns() {
        let s = BrokerScope::new(&scope(), None);
        assert!(s.covers_bind(&BindAddress::parse("tcp:[::]:80").unwrap()));
        assert!(!s.covers_bind(&BindAddress::parse("tcp:0.0.0.0:81").unwrap()));
    }
}
