//! The decision of SPEC §5 for one path of a tree operation (§3.6): the
//! modes `stat`, `list`, `mkdir` and `delete`, metadata that comes with
//! access, and `stat` implied on directories by a glob's literal prefix.
//!
//! Tree operations judge no file content, so deny rules apply whatever
//! their size and age conditions (they fail closed), and allow rules' size
//! and age conditions are left to the caller where a file is concerned.

use std::path::Path;

use super::{Candidates, Refusal, Wants};
use crate::peer::PeerIdentity;
use crate::policy::{Effect, Policy, Rule};
use crate::protocol::{ErrorCode, PathMode};

/// How the policy grants one path of a tree op.
#[derive(Clone, Copy, Debug)]
pub enum PathGrant<'p> {
    /// A rule's glob matches the path and the rule covers the mode.
    Rule(&'p Rule),
    /// `stat` implied by the rule's glob text (SPEC §5): granted only if
    /// the path is a directory, which the caller checks on the inode.
    Implied(&'p Rule),
}

impl<'p> PathGrant<'p> {
    pub fn rule(self) -> &'p Rule {
        match self {
            PathGrant::Rule(rule) | PathGrant::Implied(rule) => rule,
        }
    }

    /// Granted only on a directory.
    pub fn directories_only(self) -> bool {
        matches!(self, PathGrant::Implied(_))
    }
}

impl Policy {
    /// Decides `wants` on `path` for `client`, before or after the
    /// filesystem is looked at (the requested and the real path each go
    /// through here). `out` holds the matching rules afterwards.
    pub fn decide_tree_path(
        &self,
        path: &Path,
        client: &PeerIdentity,
        wants: Wants,
        out: &mut Candidates,
    ) -> Result<PathGrant<'_>, Refusal> {
        let first = self.candidates(path, client, wants, out);
        if let Some(&deny) = out.deny.first() {
            return Err(Refusal::denied_by(&self.rules[deny]));
        }
        match first {
            Ok(()) => Ok(PathGrant::Rule(&self.rules[out.allow[0]])),
            Err(refusal) if wants.mode == PathMode::Stat => self
                .implying_stat(path, client)
                .map(PathGrant::Implied)
                .ok_or(refusal),
            Err(refusal) => Err(refusal),
        }
    }

    /// The first allow rule of `client` whose glob text implies `stat` on
    /// `path` (SPEC §5).
    pub fn implying_stat(&self, path: &Path, client: &PeerIdentity) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            r.effect == Effect::Allow && r.implies_stat(path) && r.check_client(client).is_ok()
        })
    }
}

/// The refusal for a path granted only as a directory when it is not one
/// (or is missing): the same words as no grant at all, so that nothing is
/// learnt of what lies there (SPEC §5).
pub fn not_a_granted_directory(client: &PeerIdentity) -> Refusal {
    Refusal::new(
        ErrorCode::Denied,
        format!("no rule allows stat of this path for uid {}", client.uid),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::tests::{ROOT, policy};

    fn decide(p: &Policy, path: &str, mode: PathMode) -> Result<(String, bool), ErrorCode> {
        p.decide_tree_path(
            Path::new(path),
            &ROOT(),
            mode.into(),
            &mut Candidates::default(),
        )
        .map(|g| (g.rule().name.clone(), g.directories_only()))
        .map_err(|r| r.code)
    }

    #[test]
    fn any_mode_grants_stat_and_list_is_never_implied() {
        let p = policy(r#"{"rules":[{"name":"logs","paths":["/srv/app/**/*.log"]}]}"#);
        assert_eq!(
            decide(&p, "/srv/app/x/a.log", PathMode::Stat),
            Ok(("logs".into(), false))
        );
        assert_eq!(
            decide(&p, "/srv/app/x/a.log", PathMode::List),
            Err(ErrorCode::Denied)
        );
        assert_eq!(
            decide(&p, "/srv/app/x/a.log", PathMode::Delete),
            Err(ErrorCode::Denied)
        );
        assert_eq!(
            decide(&p, "/srv/app", PathMode::List),
            Err(ErrorCode::Denied)
        );
    }

    #[test]
    fn stat_is_implied_on_the_literal_prefix_and_below_a_double_star() {
        let p = policy(
            r#"{"rules":[{"name":"logs","paths":["/srv/app/**/*.log"]},{"name":"one","paths":["/etc/ssl/private/*.pem"]},{"name":"anywhere","paths":["/**/x","/*/y"]}]}"#,
        );
        for dir in ["/", "/srv", "/srv/app", "/srv/app/2026", "/srv/app/2026/11"] {
            assert_eq!(
                decide(&p, dir, PathMode::Stat),
                Ok(("logs".into(), true)),
                "{dir}"
            );
        }
        for dir in ["/etc", "/etc/ssl", "/etc/ssl/private"] {
            assert_eq!(
                decide(&p, dir, PathMode::Stat),
                Ok(("one".into(), true)),
                "{dir}"
            );
        }
        // No `**` right after the prefix: nothing below it; `/` alone as
        // prefix implies nothing beyond `/`; siblings get nothing.
        for not in [
            "/etc/ssl/private/sub",
            "/home",
            "/srv/other",
            "/srv/apple",
            "/srvx",
        ] {
            assert_eq!(
                decide(&p, not, PathMode::Stat),
                Err(ErrorCode::Denied),
                "{not}"
            );
        }
        // Never a mode other than stat.
        assert_eq!(
            decide(&p, "/srv/app", PathMode::List),
            Err(ErrorCode::Denied)
        );
    }

    #[test]
    fn deny_rules_cover_the_tree_modes_unless_they_list_only_open_modes() {
        let p = policy(
            r#"{"rules":[{"name":"all","paths":["/d/**"],"modes":["read","stat","list","mkdir","delete"]},
              {"name":"no-keys","effect":"deny","paths":["/d/*.key"]},
              {"name":"v2","effect":"deny","paths":["/d/*.old"],"modes":["read","write","readwrite","append"]},
              {"name":"big","effect":"deny","paths":["/d/*.big"],"min_size":"1MB"}]}"#,
        );
        for mode in PathMode::TREE {
            assert_eq!(
                decide(&p, "/d/a.key", mode),
                Err(ErrorCode::Denied),
                "{mode}"
            );
            assert_eq!(
                decide(&p, "/d/a.old", mode),
                Ok(("all".into(), false)),
                "{mode}"
            );
            // Tree ops judge no content: a deny rule's size condition counts as met.
            assert_eq!(
                decide(&p, "/d/a.big", mode),
                Err(ErrorCode::Denied),
                "{mode}"
            );
        }
        // A deny rule's glob denies stat only where it matches, never on
        // the directories above (which stay implied).
        assert_eq!(decide(&p, "/d", PathMode::Stat), Ok(("all".into(), true)));
    }

    #[test]
    fn implied_stat_follows_the_rules_identity() {
        let p = policy(r#"{"rules":[{"name":"u","paths":["/srv/x/*"],"users":[1001]}]}"#);
        assert_eq!(decide(&p, "/srv", PathMode::Stat), Err(ErrorCode::Denied));
    }
}
