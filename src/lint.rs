//! Warnings for a policy that loads but cannot mean what its author
//! thought: rules that can never match, or that another rule cancels.
//! `fdopen-server check` prints them; `--strict` makes them fatal.

use std::fmt;
use std::path::Path;

use crate::path_index::{is_literal, literal_prefix};
use crate::policy::{Effect, Policy, Rule, compile_glob};
use crate::protocol::{Mode, PathMode};

/// One suspicious rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub rule: String,
    pub location: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: rule {:?}: {}",
            self.location, self.rule, self.message
        )
    }
}

/// Warnings about the policy as a whole: a directory without any `*.json`
/// file, or no rules at all (an empty policy grants nothing, which is
/// rarely what was meant).
pub fn policy_warnings(policy: &Policy) -> Vec<String> {
    let source = policy.source.display();
    if policy.source.is_dir() {
        let has_json = std::fs::read_dir(&policy.source).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "json"))
        });
        if !has_json {
            return vec![format!(
                "{source}: no *.json file in this policy directory: nothing is granted"
            )];
        }
    }
    if policy.rules.is_empty() {
        return vec![format!(
            "{source}: the policy has no rules: nothing is granted"
        )];
    }
    Vec::new()
}

/// Looks for rules that can never match and allows cancelled by denies.
/// `fs_checks` also reports globs whose literal directory does not exist.
pub fn lint(policy: &Policy, fs_checks: bool) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for rule in &policy.rules {
        let mut warn = |message: String| {
            warnings.push(Warning {
                rule: rule.name.clone(),
                location: rule.origin.to_string(),
                message,
            });
        };
        if let (Some(min), Some(max)) = (rule.size.min, rule.size.max)
            && min > max
        {
            warn(format!(
                "min_size {min} is larger than max_size {max}: it can never match"
            ));
        }
        if let (Some(min), Some(max)) = (rule.age.min, rule.age.max)
            && min > max
        {
            warn(format!(
                "min_age {min} is longer than max_age {max}: it can never match"
            ));
        }
        if rule.effect == Effect::Allow
            && rule.create == Some(true)
            && rule
                .modes()
                .all(|m| m.open_mode().is_none_or(|m| m == Mode::Read))
        {
            warn(
                "\"create\" can never be used: a creating request needs mode write, readwrite or append"
                    .into(),
            );
        }
        if rule.effect == Effect::Allow
            && rule.truncate == Some(true)
            && !rule
                .modes()
                .any(|m| matches!(m, PathMode::Write | PathMode::ReadWrite))
        {
            warn("\"truncate\" can never be used: truncating needs mode write or readwrite".into());
        }
        if rule.effect == Effect::Deny && lists_only_open_modes(rule) {
            warn(
                "this deny rule lists read, write, readwrite and append, so it does not cover the v3 modes stat, list, mkdir and delete: add them to \"modes\", or leave \"modes\" out to deny every mode"
                    .into(),
            );
        }
        if rule.effect == Effect::Allow && rule.has_mode(PathMode::Delete) {
            for glob in rule
                .paths
                .iter()
                .filter(|g| reaches_sticky_dir(g, fs_checks))
            {
                warn(format!(
                    "\"delete\" on {glob:?} reaches into a world-writable sticky directory (such as /tmp): the server deletes and renames other users' files there when the policy says so"
                ));
            }
        }
        if rule.effect == Effect::Allow && rule.has_mode(PathMode::List) {
            for top in rule.paths.iter().filter_map(|g| g.strip_suffix("/**")) {
                let listed = |r: &Rule| {
                    r.effect == Effect::Allow
                        && r.has_mode(PathMode::List)
                        && r.matches_path(Path::new(top))
                };
                if is_literal(top) && !policy.rules.iter().any(listed) {
                    warn(format!(
                        "\"list\" on {top}/** covers every directory below {top} but not {top} itself: add {top:?} to \"paths\" to list it too"
                    ));
                }
            }
        }
        if rule.create_perm & !0o666 != 0 {
            warn(format!(
                "\"create_perm\" {:04o} lets clients create executable files; 0666 is the widest most policies need",
                rule.create_perm
            ));
        }
        for other in policy
            .rules
            .iter()
            .filter(|o| o.name != rule.name && o.effect == Effect::Allow)
        {
            if rule.effect != Effect::Allow || other.origin_order() <= rule.origin_order() {
                continue;
            }
            for mine in &rule.binds {
                for theirs in &other.binds {
                    if let Some(message) = bind_overlap(mine, theirs, &other.name) {
                        warn(message);
                    }
                }
            }
        }
        for glob in rule.cgroups.iter().flat_map(|c| c.globs.iter()) {
            if reaches_below_a_unit(glob) {
                warn(format!(
                    "cgroups glob {glob:?} reaches below a unit: with delegation (user@*.service, containers) the unit's own processes create and name those cgroups"
                ));
            }
        }
        if rule.users.as_ref().is_some_and(Vec::is_empty) {
            warn("\"users\" is empty: it can never match".into());
        }
        if rule.groups.as_ref().is_some_and(Vec::is_empty) {
            warn("\"groups\" is empty: it can never match".into());
        }
        for glob in &rule.paths {
            if glob.len() > 1
                && (glob.ends_with('/')
                    || glob.contains("//")
                    || glob.contains("/./")
                    || glob.ends_with("/."))
            {
                warn(format!(
                    "glob {glob:?} can never match: requested paths are normalised (no //, /./ or trailing /)"
                ));
            } else if glob.split('/').any(|c| c == "..") {
                warn(format!(
                    "glob {glob:?} can never match: paths with .. are refused"
                ));
            } else if fs_checks {
                let prefix = literal_prefix(glob);
                if !Path::new(prefix).exists() {
                    warn(format!("glob {glob:?}: {prefix} does not exist"));
                }
            }
        }
        if rule.effect == Effect::Deny {
            for allow in policy.rules.iter().filter(|a| a.effect == Effect::Allow) {
                let modes: Vec<&str> = allow
                    .modes()
                    .filter(|m| !rule.modes().any(|d| d == *m))
                    .map(PathMode::as_str)
                    .collect();
                if !modes.is_empty() && paths_may_overlap(rule, allow) {
                    warn(left_out("modes", "mode", "paths", &modes, allow));
                }
                if rule.names.is_empty() {
                    continue;
                }
                let ops: Vec<&str> = allow
                    .ops()
                    .filter(|op| !rule.ops().any(|d| d == *op))
                    .map(crate::protocol::HeldOp::as_str)
                    .collect();
                if !ops.is_empty() && names_may_overlap(rule, allow) {
                    warn(left_out("ops", "op", "names", &ops, allow));
                }
            }
        }
        if rule.effect == Effect::Allow
            && let Some(deny) = policy.rules.iter().find(|d| shadows(d, rule))
        {
            warn(format!(
                "every request it allows is denied by rule {:?}",
                deny.name
            ));
        }
    }
    warnings
}

/// True when a cgroups glob can match below the first unit component:
/// past the leading `*.slice` ones, a `.service`/`.scope` component (or a
/// wildcard that may stand for one) followed by anything more.
fn reaches_below_a_unit(glob: &str) -> bool {
    let mut components = glob.split('/').filter(|c| !c.is_empty());
    for component in components.by_ref() {
        if component == "**" {
            return true;
        }
        if !component.ends_with(".slice") {
            return components.next().is_some();
        }
    }
    false
}

/// Two allow rules' binds that meet: port ranges that overlap on the same
/// host, or the wildcard next to one host on a shared port (a socket on
/// `*` takes the port on every address, so the other rule's bind would be
/// `in_use` while it is held, and the other way round).
fn bind_overlap(
    mine: &crate::address::BindPattern,
    theirs: &crate::address::BindPattern,
    other: &str,
) -> Option<String> {
    use crate::address::HostPattern;
    if mine.transport != theirs.transport {
        return None;
    }
    let (low, high) = (
        mine.ports.0.max(theirs.ports.0),
        mine.ports.1.min(theirs.ports.1),
    );
    if low > high {
        return None;
    }
    let ports = if low == high {
        low.to_string()
    } else {
        format!("{low}-{high}")
    };
    let t = mine.transport.as_str();
    match (mine.host, theirs.host) {
        (HostPattern::Wildcard, HostPattern::Ip(_))
        | (HostPattern::Ip(_), HostPattern::Wildcard) => Some(format!(
            "binds {t} port(s) {ports} that rule {other:?} binds too, one on the wildcard address and the other on one host: while one holds the port, the other's bind is in_use"
        )),
        (a, b) if a == b || a == HostPattern::Any || b == HostPattern::Any => Some(format!(
            "its {t} port range overlaps rule {other:?} on ports {ports}: the same bind is granted twice, by whichever rule matches"
        )),
        _ => None,
    }
}

/// True unless the two rules' globs are clearly disjoint. Errs towards
/// "may overlap": it feeds a warning, never a decision.
fn paths_may_overlap(a: &Rule, b: &Rule) -> bool {
    a.paths
        .iter()
        .any(|x| b.paths.iter().any(|y| globs_may_overlap(x, y)))
}

/// The warning for a deny rule whose `field` (modes, ops) leaves out
/// `uncovered`, which `allow` grants on overlapping `resource`s.
fn left_out(field: &str, unit: &str, resource: &str, uncovered: &[&str], allow: &Rule) -> String {
    format!(
        "its \"{field}\" leave out {} which rule {:?} allows on overlapping {resource}; \
         drop \"{field}\" to deny every {unit}",
        uncovered.join(", "),
        allow.name
    )
}

/// Held-name globs: they may overlap unless their literal leading parts
/// (`web/`, `db/`) diverge.
fn names_may_overlap(a: &Rule, b: &Rule) -> bool {
    let literal =
        |glob: &str| glob[..glob.find(['*', '?', '[', '{']).unwrap_or(glob.len())].to_owned();
    a.names.iter().any(|x| {
        b.names.iter().any(|y| {
            let (x, y) = (literal(x), literal(y));
            x.starts_with(&y) || y.starts_with(&x)
        })
    })
}

fn globs_may_overlap(a: &str, b: &str) -> bool {
    let matches = |glob: &str, path: &str| {
        compile_glob(glob).is_ok_and(|g| g.compile_matcher().is_match(path))
    };
    match (is_literal(a), is_literal(b)) {
        (true, true) => return a == b,
        (true, false) => return matches(b, a),
        (false, true) => return matches(a, b),
        (false, false) => {}
    }
    let (pa, pb) = (literal_prefix(a), literal_prefix(b));
    let nested = |outer: &str, inner: &str| {
        outer == "/" || inner == outer || inner.starts_with(&format!("{outer}/"))
    };
    if !nested(pa, pb) && !nested(pb, pa) {
        return false;
    }
    // `*.log` and `*.key` never name the same file.
    match (literal_suffix(a), literal_suffix(b)) {
        (Some(x), Some(y)) => x.ends_with(y) || y.ends_with(x),
        _ => true,
    }
}

/// The literal text after a glob's last metacharacter, when it stays
/// within the last component (`".log"` for `/var/**/*.log`).
fn literal_suffix(glob: &str) -> Option<&str> {
    let tail = &glob[glob.rfind(['*', '?', ']', '}'])? + 1..];
    (!tail.is_empty() && !tail.contains('/')).then_some(tail)
}

/// A v2 deny rule: it names the four open modes and none of v3's.
fn lists_only_open_modes(rule: &Rule) -> bool {
    Mode::ALL.iter().all(|m| rule.has_mode((*m).into()))
        && !PathMode::TREE.iter().any(|m| rule.has_mode(*m))
}

/// World-writable sticky directories every system has.
const STICKY_DIRS: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];

/// A glob that can match paths in a world-writable sticky directory: it
/// lies in one of [`STICKY_DIRS`] or above them with a leading `**`, or
/// (with `fs_checks`) a directory on its literal prefix is one.
fn reaches_sticky_dir(glob: &str, fs_checks: bool) -> bool {
    let prefix = Path::new(literal_prefix(glob));
    let below_prefix = &glob[literal_prefix(glob).len()..];
    let open_below = below_prefix.starts_with("/**") || (prefix == Path::new("/") && glob != "/");
    let known = STICKY_DIRS.iter().any(|dir| {
        let dir = Path::new(dir);
        prefix.starts_with(dir) || (open_below && dir.starts_with(prefix))
    });
    known
        || (fs_checks
            && prefix.ancestors().any(|dir| {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.mode() & 0o1002 == 0o1002)
            }))
}

/// Errors `check` reports, and `serve` warns about: allow rules that would
/// grant more than read, stat and list on the policy's own files (SPEC
/// §3.6). The server refuses such grants whatever the policy says.
pub fn self_grants(policy: &Policy) -> Vec<Warning> {
    let source = &policy.source;
    let mut own: Vec<std::path::PathBuf> = source.ancestors().map(Path::to_owned).collect();
    if source.is_dir() {
        own.push(source.join("new.json"));
        if let Ok(entries) = std::fs::read_dir(source) {
            own.extend(entries.flatten().map(|e| e.path()));
        }
    }
    let changes = [
        PathMode::Write,
        PathMode::ReadWrite,
        PathMode::Append,
        PathMode::Mkdir,
        PathMode::Delete,
    ];
    policy
        .rules
        .iter()
        .filter(|r| r.effect == Effect::Allow && changes.iter().any(|m| r.has_mode(*m)))
        .filter_map(|rule| {
            let hit = own.iter().find(|p| rule.matches_path(p))?;
            Some(Warning {
                rule: rule.name.clone(),
                location: rule.origin.to_string(),
                message: format!(
                    "grants more than read, stat and list on the policy's own {} (the server refuses it whatever the policy says)",
                    hit.display()
                ),
            })
        })
        .collect()
}

/// True when `deny` refuses everything `allow` would grant. Conservative:
/// only claims it when the deny rule has no conditions of its own beyond
/// paths and modes, covers all the allow rule's modes, and each allow glob
/// is equal to a deny glob, lies under a deny glob of the form `DIR/**`,
/// or is a literal path a deny glob matches.
fn shadows(deny: &Rule, allow: &Rule) -> bool {
    // Only pure path rules are judged.
    if allow.paths.is_empty() || !allow.binds.is_empty() || !allow.names.is_empty() {
        return false;
    }
    if deny.effect != Effect::Deny
        || deny.has_file_conditions()
        || deny.users.is_some()
        || deny.groups.is_some()
        || allow.modes().any(|m| !deny.modes().any(|d| d == m))
    {
        return false;
    }
    allow.paths.iter().all(|a| {
        deny.paths.iter().any(|d| {
            if a == d {
                return true;
            }
            if let Some(dir) = d.strip_suffix("/**")
                && is_literal(dir)
            {
                let a_dir = literal_prefix(a);
                return a_dir == dir || a_dir.starts_with(&format!("{dir}/")) || dir.is_empty();
            }
            is_literal(a) && compile_glob(d).is_ok_and(|g| g.compile_matcher().is_match(a))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_ops_that_leave_out_an_allowed_op_are_flagged() {
        let w = warnings(
            r#"{"rules":[{"name":"parking","names":["web/**"],"ops":["park","wake"]},
                {"name":"db","names":["db/*"],"ops":["store"]},
                {"name":"no","effect":"deny","names":["web/admin/*","db/x"],"ops":["park"]}]}"#,
        );
        assert!(
            w.iter()
                .any(|w| w.contains("leave out wake") && w.contains("parking")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|w| w.contains("leave out store") && w.contains("\"db\"")),
            "{w:?}"
        );
        let quiet = warnings(
            r#"{"rules":[{"name":"parking","names":["web/**"],"ops":["park","wake"]},
                {"name":"no","effect":"deny","names":["db/**"],"ops":["park"]}]}"#,
        );
        assert!(quiet.iter().all(|w| !w.contains("leave out")), "{quiet:?}");
    }

    #[test]
    fn a_v2_deny_rule_listing_the_open_modes_is_told_it_misses_the_tree_modes() {
        let w = warnings(
            r#"{"rules":[{"name":"a","paths":["/srv/**"],"modes":["read","delete"]},
                {"name":"old","effect":"deny","paths":["/srv/x"],"modes":["read","write","readwrite","append"]}]}"#,
        );
        assert!(w.iter().any(|w| w.contains("v3 modes")), "{w:?}");
        for quiet in [
            r#"{"rules":[{"name":"new","effect":"deny","paths":["/srv/x"]}]}"#,
            r#"{"rules":[{"name":"new","effect":"deny","paths":["/srv/x"],"modes":["read","write","readwrite","append","delete"]}]}"#,
        ] {
            let w = warnings(quiet);
            assert!(w.iter().all(|w| !w.contains("v3 modes")), "{w:?}");
        }
    }

    #[test]
    fn delete_reaching_into_a_sticky_world_writable_directory_is_flagged() {
        for glob in ["/tmp/app/*", "/var/tmp/**", "/**/*.lock", "/*/x"] {
            let w = warnings(&format!(
                r#"{{"rules":[{{"name":"d","paths":["{glob}"],"modes":["delete"]}}]}}"#
            ));
            assert!(w.iter().any(|w| w.contains("sticky")), "{glob}: {w:?}");
        }
        for glob in ["/srv/app/*", "/srv/**"] {
            let w = warnings(&format!(
                r#"{{"rules":[{{"name":"d","paths":["{glob}"],"modes":["delete"]}}]}}"#
            ));
            assert!(w.iter().all(|w| !w.contains("sticky")), "{glob}: {w:?}");
        }
        // Only delete: reading /tmp is no such risk.
        let w = warnings(r#"{"rules":[{"name":"r","paths":["/tmp/*"]}]}"#);
        assert!(w.iter().all(|w| !w.contains("sticky")), "{w:?}");
    }

    #[test]
    fn list_on_a_tree_without_its_top_directory_is_flagged() {
        let w = warnings(r#"{"rules":[{"name":"l","paths":["/srv/data/**"],"modes":["list"]}]}"#);
        assert!(
            w.iter().any(|w| w.contains("not /srv/data itself")),
            "{w:?}"
        );
        for quiet in [
            r#"{"rules":[{"name":"l","paths":["/srv/data","/srv/data/**"],"modes":["list"]}]}"#,
            r#"{"rules":[{"name":"l","paths":["/srv/data/**"],"modes":["list"]},{"name":"top","paths":["/srv/data"],"modes":["list"]}]}"#,
        ] {
            let w = warnings(quiet);
            assert!(w.iter().all(|w| !w.contains("itself")), "{w:?}");
        }
    }

    #[test]
    fn rules_that_could_change_the_policy_itself_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        let d = globset::escape(dir.path().to_str().unwrap());
        std::fs::write(
            &file,
            format!(
                r#"{{"rules":[{{"name":"all","paths":["{d}/*"],"modes":["read","delete"]}},{{"name":"ro","paths":["{d}/*"],"modes":["read","stat","list"]}}]}}"#
            ),
        )
        .unwrap();
        let p = Policy::load(&file).unwrap();
        let own: Vec<String> = self_grants(&p).iter().map(|w| w.rule.clone()).collect();
        assert_eq!(own, vec!["all".to_owned()]);
    }

    #[test]
    fn rules_without_paths_are_never_called_shadowed() {
        let w = warnings(
            r#"{"rules":[{"name":"parking","names":["web/**"],"ops":["park","wake"]},
                {"name":"web","binds":["tcp:*:80"]},
                {"name":"no","effect":"deny","paths":["/x"]}]}"#,
        );
        assert!(w.iter().all(|w| !w.contains("denied by rule")), "{w:?}");
    }

    fn warnings(text: &str) -> Vec<String> {
        let p = Policy::from_str(Path::new("t.json"), text).unwrap();
        lint(&p, true).into_iter().map(|w| w.message).collect()
    }

    #[test]
    fn clean_policy_has_no_warnings() {
        assert!(
            warnings(
                r#"{"rules":[{"name":"a","paths":["/etc/**"],"max_size":"1MiB","min_size":1}]}"#
            )
            .is_empty()
        );
    }

    #[test]
    fn impossible_bounds_are_flagged() {
        let w = warnings(
            r#"{"rules":[{"name":"a","paths":["/etc/*"],"min_size":"2KiB","max_size":"1KiB","min_age":"2d","max_age":"1d"}]}"#,
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("min_size") && w[1].contains("min_age"));
    }

    #[test]
    fn unmatchable_globs_are_flagged() {
        let w = warnings(
            r#"{"rules":[{"name":"a","paths":["/etc//x","/etc/./x","/etc/","/no/such/dir/here/*.log"]}]}"#,
        );
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w[3].contains("/no/such/dir/here does not exist"), "{w:?}");
    }

    #[test]
    fn complete_shadowing_by_a_deny_is_flagged() {
        let w = warnings(
            r#"{"rules":[
                {"name":"logs","paths":["/var/log/app/*.log"]},
                {"name":"keys","paths":["/etc/ssl/a.key"]},
                {"name":"no-var","effect":"deny","paths":["/var/**"]},
                {"name":"no-keys","effect":"deny","paths":["/**/*.key"]}]}"#,
        );
        assert!(
            w.iter().any(|m| m.contains("denied by rule \"no-var\"")),
            "{w:?}"
        );
        assert!(
            w.iter().any(|m| m.contains("denied by rule \"no-keys\"")),
            "{w:?}"
        );
    }

    #[test]
    fn a_deny_that_leaves_out_modes_an_overlapping_allow_grants_is_flagged() {
        let w = warnings(
            r#"{"rules":[
                {"name":"logs","paths":["/var/log/**"],"modes":["read","append"]},
                {"name":"no-keys","effect":"deny","paths":["/**/*.key"],"modes":["read"]},
                {"name":"no-txt","effect":"deny","paths":["/var/log/*.txt"]},
                {"name":"elsewhere","effect":"deny","paths":["/etc/*.key"],"modes":["read"]}]}"#,
        );
        let flagged: Vec<&String> = w.iter().filter(|m| m.contains("leave out")).collect();
        assert_eq!(flagged.len(), 1, "{w:?}");
        assert!(flagged[0].contains("append which rule \"logs\""), "{w:?}");
    }

    #[test]
    fn create_that_cannot_be_used_and_wide_create_perm_are_flagged() {
        let w = warnings(
            r#"{"rules":[
                {"name":"ro","paths":["/etc/*"],"create":true},
                {"name":"wide","paths":["/etc/*"],"modes":["write"],"create":true,"create_perm":"0755"},
                {"name":"fine","paths":["/etc/*"],"modes":["write"],"create":true,"create_perm":"0640"},
                {"name":"trunc","paths":["/etc/*"],"modes":["append"],"truncate":true}]}"#,
        );
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("\"create\" can never be used"), "{w:?}");
        assert!(w[1].contains("0755"), "{w:?}");
        assert!(w[2].contains("\"truncate\" can never be used"), "{w:?}");
    }

    #[test]
    fn overlapping_binds_and_wildcard_next_to_one_host_are_flagged() {
        let w = warnings(
            r#"{"rules":[
                {"name":"web","binds":["tcp:*:8000-8099"]},
                {"name":"api","binds":["tcp:*:8050-8150"]},
                {"name":"local","binds":["tcp:127.0.0.1:80"]},
                {"name":"all","binds":["tcp:*:80", "udp:*:53"]},
                {"name":"dns","binds":["udp:127.0.0.1:5353"]}]}"#,
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("8050-8099") && w[0].contains("\"api\""),
            "{w:?}"
        );
        assert!(
            w[1].contains("wildcard") && w[1].contains("\"all\""),
            "{w:?}"
        );
    }

    #[test]
    fn cgroups_globs_below_a_unit_are_flagged() {
        assert!(reaches_below_a_unit(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/*"
        ));
        assert!(reaches_below_a_unit("/system.slice/**"));
        assert!(reaches_below_a_unit("/**/x.service"));
        assert!(!reaches_below_a_unit("/system.slice/nginx.service"));
        assert!(!reaches_below_a_unit("/system.slice/web@*.service"));
        let w = warnings(
            r#"{"rules":[{"name":"a","paths":["/etc/*"],"cgroups":["/user.slice/user-1000.slice/user@1000.service/**"]}]}"#,
        );
        assert!(
            w.iter().any(|m| m.contains("reaches below a unit")),
            "{w:?}"
        );
    }

    #[test]
    fn globs_that_cannot_name_the_same_file_do_not_overlap() {
        assert!(globs_may_overlap("/var/**", "/**/*.key"));
        assert!(globs_may_overlap("/var/log/*.log", "/var/**/*.log"));
        assert!(globs_may_overlap("/var/a.key", "/**/*.key"));
        assert!(!globs_may_overlap("/var/**", "/etc/**"));
        assert!(!globs_may_overlap("/var/*.log", "/var/*.key"));
        assert!(!globs_may_overlap("/var/a.txt", "/**/*.key"));
    }

    #[test]
    fn partial_or_conditional_denies_are_not_shadowing() {
        let w = warnings(
            r#"{"rules":[
                {"name":"logs","paths":["/var/log/*.log"],"modes":["read","append"]},
                {"name":"no-append","effect":"deny","paths":["/var/**"],"modes":["append"]},
                {"name":"no-big","effect":"deny","paths":["/var/**"],"min_size":"1GiB"},
                {"name":"no-bob","effect":"deny","paths":["/var/**"],"users":[1234]},
                {"name":"no-old","effect":"deny","paths":["/var/log/old*.log"]}]}"#,
        );
        assert!(!w.iter().any(|m| m.contains("denied by rule")), "{w:?}");
    }
}
