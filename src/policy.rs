//! Loading a policy (SPEC §5): one JSON file or a directory of `*.json`
//! files, parsed strictly, with every error located by file, rule and
//! line:column so an admin can fix it without guessing.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;

use crate::path_index::PathIndex;
use crate::protocol::PathMode;

/// Whether a rule grants or forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// Where something was written: file and, where known, line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// One problem found while loading a policy.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {}{kind}", rule.as_ref().map(|r| format!("rule {r:?}: ")).unwrap_or_default())]
pub struct PolicyError {
    pub location: Location,
    /// The rule it concerns, when the rule got far enough to have a name.
    pub rule: Option<String>,
    pub kind: PolicyErrorKind,
}

/// What is wrong, without the where.
#[derive(Debug, thiserror::Error)]
pub enum PolicyErrorKind {
    #[error("cannot read: {0}")]
    Io(#[source] std::io::Error),
    #[error("{0}")]
    Syntax(String),
    #[error("duplicate rule name (first defined at {first})")]
    DuplicateName { first: Location },
    #[error("path glob {0:?} is not absolute; to match it anywhere, write \"/**/{0}\"")]
    RelativeGlob(String),
    #[error("bad path glob {glob:?}: {reason}")]
    BadGlob { glob: String, reason: String },
    #[error("a rule needs at least one path, bind or name (\"paths\", \"binds\", \"names\")")]
    NoPaths,
    #[error("{0:?} applies to {1} only, and the rule has none")]
    DoesNotApply(&'static str, &'static str),
    #[error("{0}")]
    BadAddress(String),
    #[error("\"modes\" must not be empty")]
    NoModes,
    #[error("\"ops\" must not be empty")]
    NoOps,
    #[error("bad name glob {glob:?}: {reason}")]
    BadNameGlob { glob: String, reason: String },
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    #[error("{0}")]
    BadPermission(String),
    #[error("insecure permissions: {0}")]
    Exposed(crate::hygiene::Exposure),
}

/// Every problem found in a policy, in file order.
#[derive(Debug)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// A size in bytes: a JSON integer, or a string with a unit (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"10MiB"`, `"1 KB"`, `"512B"`. The unit is required in a string.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        if digits.is_empty() {
            return Err(format!("size {s:?} does not start with a number"));
        }
        if unit.starts_with(['.', ',']) {
            return Err(format!(
                "size {s:?}: fractions are not allowed; use a smaller unit (\"1536KiB\" for 1.5 MiB)"
            ));
        }
        let multiplier: u64 = match unit.trim_start() {
            "B" => 1,
            "KB" => 1000,
            "MB" => 1000 * 1000,
            "GB" => 1000 * 1000 * 1000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "" => {
                return Err(format!(
                    "size {s:?} needs a unit (B, KB, MB, GB, KiB, MiB, GiB) or must be a JSON integer"
                ));
            }
            other => {
                return Err(format!(
                    "size {s:?} has unknown unit {other:?} (expected B, KB, MB, GB, KiB, MiB or GiB)"
                ));
            }
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    /// Human form for messages: `12.5 MiB`, `300 B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64;
        let mut unit = "B";
        for u in UNITS {
            if value < 1024.0 {
                break;
            }
            value /= 1024.0;
            unit = u;
        }
        let text = format!("{value:.1}");
        write!(f, "{} {unit}", text.strip_suffix(".0").unwrap_or(&text))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: integer bytes or a string like \"10MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                Err(E::custom(format!("size {v} is negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                Err(E::custom(format!(
                    "size {v} is not a whole number of bytes"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

/// A humantime duration such as `"90s"` or `"7d"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Age(pub Duration);

impl fmt::Display for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Age {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AgeVisitor;
        impl Visitor<'_> for AgeVisitor {
            type Value = Age;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"90s\" or \"7d\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Age, E> {
                Err(E::custom(format!(
                    "an age is a duration string with a unit: write \"{v}s\" for {v} seconds"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Age, E> {
                Err(E::custom(format!("age {v} is negative")))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Age, E> {
                humantime::parse_duration(text)
                    .map(Age)
                    .map_err(|e| E::custom(format!("duration {text:?}: {e}")))
            }
        }
        d.deserialize_any(AgeVisitor)
    }
}

/// A user or group as written: a name or a numeric id.
#[derive(Clone, Debug, PartialEq, Eq)]
enum IdSpec {
    Id(u32),
    Name(String),
}

impl<'de> Deserialize<'de> for IdSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = IdSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name or a numeric id")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IdSpec, E> {
                u32::try_from(v)
                    .map(IdSpec::Id)
                    .map_err(|_| E::custom(format!("id {v} is out of range")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IdSpec, E> {
                Err(E::custom(format!("id {v} is negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IdSpec, E> {
                Ok(IdSpec::Name(v.to_owned()))
            }
        }
        d.deserialize_any(IdVisitor)
    }
}

/// A rule exactly as the admin wrote it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    #[serde(default)]
    effect: Effect,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    binds: Vec<String>,
    /// May a bind set `SO_REUSEPORT` (SPEC §3.3).
    reuseport: Option<bool>,
    /// Globs over held names, the ops they allow, and whose held fds
    /// (SPEC §3.4, §5).
    #[serde(default)]
    names: Vec<String>,
    ops: Option<Vec<crate::protocol::HeldOp>>,
    stored_by: Option<Vec<IdSpec>>,
    /// Absent: `["read"]` for an allow rule, every mode for a deny rule
    /// (deny rules fail closed, SPEC §5).
    modes: Option<Vec<PathMode>>,
    /// May the request create the file / truncate it (SPEC §3.2).
    create: Option<bool>,
    truncate: Option<bool>,
    create_perm: Option<String>,
    /// The most permission bits a directory made by `mkdir` gets.
    dir_perm: Option<String>,
    owner: Option<Owner>,
    users: Option<Vec<IdSpec>>,
    groups: Option<Vec<IdSpec>>,
    /// Globs over the client's cgroup v2 path, and over its systemd unit.
    cgroups: Option<Vec<String>>,
    units: Option<Vec<String>>,
    min_size: Option<ByteSize>,
    max_size: Option<ByteSize>,
    min_age: Option<Age>,
    max_age: Option<Age>,
}

/// The top level of a policy file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile<'a> {
    #[serde(borrow)]
    rules: Vec<&'a RawValue>,
}

/// Who owns a file the server creates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    /// The client: its uid, and its primary gid (or a set-group-ID
    /// directory's group).
    #[default]
    Client,
    /// The server, as the kernel makes it.
    Server,
}

/// Globs over a part of the client's identity, as written and compiled.
#[derive(Debug, Clone)]
pub struct IdentityGlobs {
    pub globs: Vec<String>,
    set: GlobSet,
}

impl IdentityGlobs {
    /// `separator`: `*` stops at `/` (cgroup paths) or not (unit names).
    fn compile(globs: Vec<String>, separator: bool) -> Result<IdentityGlobs, String> {
        let mut builder = GlobSetBuilder::new();
        for glob in &globs {
            let compiled = GlobBuilder::new(glob)
                .literal_separator(separator)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("bad glob {glob:?}: {}", e.kind()))?;
            builder.add(compiled);
        }
        let set = builder.build().map_err(|e| e.to_string())?;
        Ok(IdentityGlobs { globs, set })
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.set.is_match(text)
    }
}

/// Lower and upper bounds, both optional and inclusive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bounds<T> {
    pub min: Option<T>,
    pub max: Option<T>,
}

impl<T> Bounds<T> {
    pub fn is_unbounded(&self) -> bool {
        self.min.is_none() && self.max.is_none()
    }
}

/// Whose held fds a `names` rule covers besides the client's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredBy {
    /// An allow rule without `stored_by`: the client's own only.
    Own,
    /// `"*"`, or a deny rule without `stored_by` (it fails closed).
    Anyone,
    Users(Vec<u32>),
}

impl StoredBy {
    /// Does the rule cover fds stored by `storer`, for `client_uid`?
    pub fn covers(&self, storer: u32, client_uid: u32) -> bool {
        storer == client_uid
            || match self {
                StoredBy::Own => false,
                StoredBy::Anyone => true,
                StoredBy::Users(uids) => uids.contains(&storer),
            }
    }
}

/// A compiled, validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub effect: Effect,
    pub paths: Vec<String>,
    /// Sockets the rule lets clients bind (SPEC §3.3).
    pub binds: Vec<crate::address::BindPattern>,
    /// An allow rule's permission to set `SO_REUSEPORT`; on a deny rule,
    /// which binds it covers (`None`: all).
    pub reuseport: Option<bool>,
    /// Held names (SPEC §3.4): the globs as written and compiled, the ops
    /// (one bit per [`crate::protocol::HeldOp`]) and whose fds.
    pub names: Vec<String>,
    pub(crate) name_matcher: GlobSet,
    pub(crate) ops: u8,
    pub stored_by: StoredBy,
    /// The rule's own globs, for `explain`; the server uses the policy-wide set.
    pub(crate) matcher: GlobSet,
    /// One bit per [`PathMode`].
    pub(crate) modes: u8,
    /// Directories this rule implies `stat` on, from its globs' text alone
    /// (SPEC §5).
    pub(crate) implied: Vec<ImpliedStat>,
    /// Whether the rule covers requests that may create / truncate. An
    /// allow rule leaves them out unless it says so; a deny rule that says
    /// nothing covers both kinds of request (it fails closed).
    pub create: Option<bool>,
    pub truncate: Option<bool>,
    /// The most permission bits a file created under this rule gets.
    pub create_perm: u32,
    /// The most permission bits a directory made by `mkdir` gets.
    pub dir_perm: u32,
    pub owner: Owner,
    pub users: Option<Vec<u32>>,
    pub groups: Option<Vec<u32>>,
    /// The client's cgroup and unit, as globs (SPEC §1, §5).
    pub cgroups: Option<IdentityGlobs>,
    pub units: Option<IdentityGlobs>,
    pub size: Bounds<ByteSize>,
    pub age: Bounds<Age>,
    pub origin: Location,
}

impl Rule {
    pub fn modes(&self) -> impl Iterator<Item = PathMode> + '_ {
        PathMode::ALL
            .into_iter()
            .filter(|m| self.modes & m.bit() != 0)
    }

    /// The rule covers `mode` (as listed, or by default).
    pub fn has_mode(&self, mode: PathMode) -> bool {
        self.modes & mode.bit() != 0
    }

    /// `stat` on `path` is implied by a glob's literal prefix (SPEC §5):
    /// granted on a directory only, which the caller checks.
    pub fn implies_stat(&self, path: &Path) -> bool {
        let path = path.as_os_str().as_encoded_bytes();
        self.implied.iter().any(|i| i.covers(path))
    }

    pub fn ops(&self) -> impl Iterator<Item = crate::protocol::HeldOp> + '_ {
        crate::protocol::HeldOp::ALL
            .into_iter()
            .filter(|op| self.ops & op.bit() != 0)
    }

    /// The rule names `name` among its held-name globs.
    pub fn matches_name(&self, name: &str) -> bool {
        self.name_matcher.is_match(name)
    }

    /// Where the rule stands in its file, to report a pair of rules once.
    pub fn origin_order(&self) -> (&Path, Option<usize>, Option<usize>) {
        (&self.origin.file, self.origin.line, self.origin.column)
    }

    /// True when the rule has size or age conditions, which need the file.
    pub fn has_file_conditions(&self) -> bool {
        !self.size.is_unbounded() || !self.age.is_unbounded()
    }
}

/// Permission bits a directory made by `mkdir` gets at most, unless the
/// rule says otherwise (SPEC §5).
pub const DEFAULT_DIR_PERM: u32 = 0o700;

/// The directories one glob implies `stat` on (SPEC §5), from its text
/// alone: each directory of its literal prefix and, when `**` follows
/// that prefix at once, every directory below it. Never by looking at the
/// disk, so nothing a client creates can widen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImpliedStat {
    prefix: String,
    /// `**` follows the prefix: every directory below it too.
    below: bool,
}

impl ImpliedStat {
    fn of(glob: &str) -> ImpliedStat {
        let prefix = crate::path_index::literal_prefix(glob);
        let rest = &glob[prefix.len()..];
        let double_star = rest == "/**" || rest.starts_with("/**/");
        ImpliedStat {
            prefix: prefix.to_owned(),
            // A prefix of `/` alone implies nothing beyond `/`.
            below: double_star && prefix != "/",
        }
    }

    /// `path` (normalised, absolute) is a directory of the prefix, or
    /// below it where `**` follows.
    fn covers(&self, path: &[u8]) -> bool {
        let prefix = self.prefix.as_bytes();
        let is_ancestor_or_self = |above: &[u8], below: &[u8]| {
            above == below
                || above == b"/"
                || (below.starts_with(above) && below.get(above.len()) == Some(&b'/'))
        };
        is_ancestor_or_self(path, prefix) || (self.below && is_ancestor_or_self(prefix, path))
    }
}

/// A loaded policy: its rules and one matcher over all their globs.
#[derive(Debug, Clone)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// Every glob of every rule, indexed by literal prefix.
    pub(crate) index: PathIndex,
    pub source: PathBuf,
}

/// Compiles one glob with SPEC §5 semantics: `*`, `?` and `[...]` never
/// cross `/`; `**` does.
pub fn compile_glob(glob: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

impl Policy {
    /// Loads a policy file, or every `*.json` file of a directory in sorted
    /// order, reporting every error found rather than only the first.
    pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
        let files = policy_files(path).map_err(|e| {
            PolicyErrors(vec![PolicyError {
                location: Location {
                    file: path.to_owned(),
                    line: None,
                    column: None,
                },
                rule: None,
                kind: PolicyErrorKind::Io(e),
            }])
        })?;
        let mut errors = Vec::new();
        let mut rules: Vec<Rule> = Vec::new();
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => parse_file(&file, &text, &mut rules, &mut errors),
                Err(e) => errors.push(PolicyError {
                    location: Location {
                        file,
                        line: None,
                        column: None,
                    },
                    rule: None,
                    kind: PolicyErrorKind::Io(e),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        Ok(Policy::from_rules(rules, path.to_owned()))
    }

    /// Loads a policy the server can trust (SPEC §5): every file and
    /// directory it is read through must be safe from uids other than root
    /// and `server_uid` ([`crate::hygiene`]). With `insecure` such
    /// exposures do not refuse the policy; they come back to be warned about.
    pub fn load_trusted(
        path: &Path,
        server_uid: u32,
        insecure: bool,
    ) -> Result<(Policy, Vec<PolicyError>), PolicyErrors> {
        let exposures: Vec<PolicyError> = crate::hygiene::check(path, server_uid)
            .into_iter()
            .map(|exposure| PolicyError {
                location: Location {
                    file: path.to_owned(),
                    line: None,
                    column: None,
                },
                rule: None,
                kind: PolicyErrorKind::Exposed(exposure),
            })
            .collect();
        if !insecure && !exposures.is_empty() {
            return Err(PolicyErrors(exposures));
        }
        Ok((Policy::load(path)?, exposures))
    }

    /// Parses a policy held in memory, as if read from `name`.
    pub fn from_str(name: &Path, text: &str) -> Result<Policy, PolicyErrors> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        parse_file(name, text, &mut rules, &mut errors);
        if errors.is_empty() {
            Ok(Policy::from_rules(rules, name.to_owned()))
        } else {
            Err(PolicyErrors(errors))
        }
    }

    fn from_rules(rules: Vec<Rule>, source: PathBuf) -> Policy {
        let globs = rules
            .iter()
            .enumerate()
            .flat_map(|(index, rule)| rule.paths.iter().map(move |g| (g.as_str(), index)));
        let index = PathIndex::build(globs);
        Policy {
            rules,
            index,
            source,
        }
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}

fn policy_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !std::fs::metadata(path)?.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "json") && !entry.file_type()?.is_dir() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Line and column (1-based) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn parse_file(file: &Path, text: &str, rules: &mut Vec<Rule>, errors: &mut Vec<PolicyError>) {
    let at = |line: Option<usize>, column: Option<usize>| Location {
        file: file.to_owned(),
        line,
        column,
    };
    // serde's own words for it ("invalid type: map, expected a sequence")
    // name neither the policy's shape nor the fix.
    if text.trim_start().starts_with('[') {
        errors.push(PolicyError {
            location: at(Some(1), Some(1)),
            rule: None,
            kind: PolicyErrorKind::Syntax(
                "a policy is an object, not a bare array of rules: write {\"rules\": [...]}".into(),
            ),
        });
        return;
    }
    let top: PolicyFile<'_> = match serde_json::from_str(text) {
        Ok(top) => top,
        Err(e) => {
            errors.push(PolicyError {
                location: at(Some(e.line()), Some(e.column())),
                rule: None,
                kind: PolicyErrorKind::Syntax(strip_position(&e)),
            });
            return;
        }
    };
    for raw in top.rules {
        // The raw value borrows from `text`, so its offset locates the rule.
        let offset = raw.get().as_ptr() as usize - text.as_ptr() as usize;
        let (line, column) = line_column(text, offset);
        let spec = match serde_json::from_str::<RuleSpec>(raw.get()) {
            Ok(spec) => spec,
            Err(e) => {
                let (eline, ecol) = if e.line() <= 1 {
                    (line, column + e.column().saturating_sub(1))
                } else {
                    (line + e.line() - 1, e.column())
                };
                errors.push(PolicyError {
                    location: at(Some(eline), Some(ecol)),
                    rule: rule_name(raw),
                    kind: PolicyErrorKind::Syntax(strip_position(&e)),
                });
                continue;
            }
        };
        let origin = at(Some(line), Some(column));
        if let Some(first) = rules.iter().find(|r| r.name == spec.name) {
            errors.push(PolicyError {
                location: origin.clone(),
                rule: Some(spec.name.clone()),
                kind: PolicyErrorKind::DuplicateName {
                    first: first.origin.clone(),
                },
            });
            continue;
        }
        match compile_rule(spec, origin.clone()) {
            Ok(rule) => rules.push(rule),
            Err((name, kinds)) => errors.extend(kinds.into_iter().map(|kind| PolicyError {
                location: origin.clone(),
                rule: Some(name.clone()),
                kind,
            })),
        }
    }
}

/// The name of a rule that failed to parse, if it has one.
fn rule_name(raw: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct NameOnly {
        name: Option<String>,
    }
    serde_json::from_str::<NameOnly>(raw.get()).ok()?.name
}

/// serde_json appends "at line L column C"; we report the position ourselves.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

fn compile_rule(spec: RuleSpec, origin: Location) -> Result<Rule, (String, Vec<PolicyErrorKind>)> {
    let mut problems = Vec::new();
    if spec.paths.is_empty() && spec.binds.is_empty() && spec.names.is_empty() {
        problems.push(PolicyErrorKind::NoPaths);
    }
    if spec.names.is_empty() {
        for (field, set) in [
            ("ops", spec.ops.is_some()),
            ("stored_by", spec.stored_by.is_some()),
        ] {
            if set {
                problems.push(PolicyErrorKind::DoesNotApply(field, "names"));
            }
        }
    }
    if spec.ops.as_ref().is_some_and(Vec::is_empty) {
        problems.push(PolicyErrorKind::NoOps);
    }
    let mut name_matcher = GlobSetBuilder::new();
    for glob in &spec.names {
        match compile_glob(glob) {
            Ok(g) => {
                name_matcher.add(g);
            }
            Err(e) => problems.push(PolicyErrorKind::BadNameGlob {
                glob: glob.clone(),
                reason: e.kind().to_string(),
            }),
        }
    }
    let stored_by = match (spec.stored_by, spec.effect) {
        (None, Effect::Allow) => StoredBy::Own,
        (None, Effect::Deny) => StoredBy::Anyone,
        (Some(ids), _) if ids.iter().any(|id| *id == IdSpec::Name("*".into())) => StoredBy::Anyone,
        (Some(ids), _) => StoredBy::Users(resolve_ids(
            ids,
            lookup_user,
            PolicyErrorKind::UnknownUser,
            &mut problems,
        )),
    };
    if spec.paths.is_empty() && (!spec.binds.is_empty() || !spec.names.is_empty()) {
        let path_fields = [
            ("modes", spec.modes.is_some()),
            ("create", spec.create.is_some()),
            ("truncate", spec.truncate.is_some()),
            ("create_perm", spec.create_perm.is_some()),
            ("dir_perm", spec.dir_perm.is_some()),
            ("owner", spec.owner.is_some()),
            ("min_size", spec.min_size.is_some()),
            ("max_size", spec.max_size.is_some()),
            ("min_age", spec.min_age.is_some()),
            ("max_age", spec.max_age.is_some()),
        ];
        for (field, _) in path_fields.into_iter().filter(|(_, set)| *set) {
            problems.push(PolicyErrorKind::DoesNotApply(field, "paths"));
        }
    }
    if spec.binds.is_empty() && spec.reuseport.is_some() {
        problems.push(PolicyErrorKind::DoesNotApply("reuseport", "binds"));
    }
    let mut binds = Vec::new();
    for text in &spec.binds {
        match crate::address::BindPattern::parse(text) {
            Ok(pattern) => binds.push(pattern),
            Err(e) => problems.push(PolicyErrorKind::BadAddress(e.to_string())),
        }
    }
    if spec.modes.as_ref().is_some_and(Vec::is_empty) {
        problems.push(PolicyErrorKind::NoModes);
    }
    let mut matcher = GlobSetBuilder::new();
    for glob in &spec.paths {
        if !glob.starts_with('/') {
            problems.push(PolicyErrorKind::RelativeGlob(glob.clone()));
            continue;
        }
        match compile_glob(glob) {
            Ok(g) => {
                matcher.add(g);
            }
            Err(e) => problems.push(PolicyErrorKind::BadGlob {
                glob: glob.clone(),
                reason: e.kind().to_string(),
            }),
        }
    }
    let create_perm = match spec.create_perm.as_deref().map(crate::protocol::parse_perm) {
        None => crate::protocol::DEFAULT_PERM,
        Some(Ok(bits)) => bits,
        Some(Err(why)) => {
            problems.push(PolicyErrorKind::BadPermission(format!(
                "\"create_perm\": {why}"
            )));
            0
        }
    };
    let dir_perm = match spec.dir_perm.as_deref().map(crate::protocol::parse_perm) {
        None => DEFAULT_DIR_PERM,
        Some(Ok(bits)) => bits,
        Some(Err(why)) => {
            problems.push(PolicyErrorKind::BadPermission(format!(
                "\"dir_perm\": {why}"
            )));
            0
        }
    };
    let mut identity_globs = |globs: Option<Vec<String>>, separator: bool| {
        globs.and_then(|g| match IdentityGlobs::compile(g, separator) {
            Ok(compiled) => Some(compiled),
            Err(why) => {
                problems.push(PolicyErrorKind::BadAddress(why));
                None
            }
        })
    };
    let cgroups = identity_globs(spec.cgroups, true);
    let units = identity_globs(spec.units, false);
    let users = spec.users.map(|ids| {
        resolve_ids(
            ids,
            lookup_user,
            PolicyErrorKind::UnknownUser,
            &mut problems,
        )
    });
    let groups = spec.groups.map(|ids| {
        resolve_ids(
            ids,
            lookup_group,
            PolicyErrorKind::UnknownGroup,
            &mut problems,
        )
    });
    if !problems.is_empty() {
        return Err((spec.name, problems));
    }
    let implied = match spec.effect {
        Effect::Allow => spec.paths.iter().map(|g| ImpliedStat::of(g)).collect(),
        Effect::Deny => Vec::new(),
    };
    Ok(Rule {
        implied,
        name: spec.name,
        effect: spec.effect,
        paths: spec.paths,
        binds,
        reuseport: match spec.effect {
            Effect::Allow => Some(spec.reuseport.unwrap_or(false)),
            Effect::Deny => spec.reuseport,
        },
        matcher: matcher.build().expect("each glob compiled"),
        names: spec.names,
        name_matcher: name_matcher.build().expect("each glob compiled"),
        ops: match (&spec.ops, spec.effect) {
            (Some(ops), _) => ops.iter().fold(0, |bits, op| bits | op.bit()),
            (None, Effect::Allow) => crate::protocol::HeldOp::DEFAULT_ALLOWED
                .iter()
                .fold(0, |bits, op| bits | op.bit()),
            (None, Effect::Deny) => crate::protocol::HeldOp::ALL
                .iter()
                .fold(0, |bits, op| bits | op.bit()),
        },
        stored_by,
        modes: match (&spec.modes, spec.effect) {
            (Some(modes), _) => modes.iter().fold(0, |bits, m| bits | m.bit()),
            (None, Effect::Allow) => PathMode::Read.bit(),
            (None, Effect::Deny) => PathMode::ALL.iter().fold(0, |bits, m| bits | m.bit()),
        },
        create: match spec.effect {
            Effect::Allow => Some(spec.create.unwrap_or(false)),
            Effect::Deny => spec.create,
        },
        truncate: match spec.effect {
            Effect::Allow => Some(spec.truncate.unwrap_or(false)),
            Effect::Deny => spec.truncate,
        },
        create_perm,
        dir_perm,
        owner: spec.owner.unwrap_or_default(),
        users,
        groups,
        cgroups,
        units,
        size: Bounds {
            min: spec.min_size,
            max: spec.max_size,
        },
        age: Bounds {
            min: spec.min_age,
            max: spec.max_age,
        },
        origin,
    })
}

fn resolve_ids(
    ids: Vec<IdSpec>,
    lookup: fn(&str) -> Option<u32>,
    unknown: fn(String) -> PolicyErrorKind,
    problems: &mut Vec<PolicyErrorKind>,
) -> Vec<u32> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        match id {
            IdSpec::Id(n) => out.push(n),
            IdSpec::Name(name) => match lookup(&name) {
                Some(n) => out.push(n),
                None => problems.push(unknown(name)),
            },
        }
    }
    out
}

fn lookup_user(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

fn lookup_group(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Policy, PolicyErrors> {
        Policy::from_str(Path::new("p.json"), text)
    }

    fn error_text(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(ByteSize::parse("10MiB"), Ok(ByteSize(10 << 20)));
        assert_eq!(ByteSize::parse("1KB"), Ok(ByteSize(1000)));
        assert_eq!(ByteSize::parse("1 GB"), Ok(ByteSize(1_000_000_000)));
        assert_eq!(ByteSize::parse("7B"), Ok(ByteSize(7)));
        for bad in [
            "10",
            "MiB",
            "10 TB",
            "1.5MiB",
            "-1KB",
            "10mib",
            "99999999999999GiB",
        ] {
            assert!(ByteSize::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn admin_errors_say_the_fix() {
        let error = |text: &str| {
            Policy::from_str(Path::new("p.json"), text)
                .unwrap_err()
                .0
                .iter()
                .map(|e| e.kind.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        };
        let rule = |extra: &str| format!(r#"{{"rules":[{{"name":"a","paths":["/x"]{extra}}}]}}"#);
        assert!(error(&rule(r#","max_size":"1.5MiB""#)).contains("fractions are not allowed"));
        assert!(error(&rule(r#","max_age":3600"#)).contains(r#"write "3600s""#));
        let relative = error(r#"{"rules":[{"name":"a","paths":["*.log"]}]}"#);
        assert!(relative.contains(r#""/**/*.log""#), "{relative}");
    }

    #[test]
    fn formats_sizes_for_humans() {
        assert_eq!(ByteSize(300).to_string(), "300 B");
        assert_eq!(ByteSize(10 << 20).to_string(), "10 MiB");
        assert_eq!(ByteSize(12 * (1 << 20) + (1 << 19)).to_string(), "12.5 MiB");
    }

    #[test]
    fn loads_the_spec_example() {
        let p = load(
            r#"{"rules":[
              {"name":"recent-logs","effect":"allow","paths":["/var/log/app/**/*.log"],
               "modes":["read"],"users":["root",1001],"groups":["root"],
               "max_size":"10MiB","max_age":"7d"},
              {"name":"no-keys","effect":"deny","paths":["/**/*.key"]}]}"#,
        )
        .unwrap();
        let r = p.rule("recent-logs").unwrap();
        assert_eq!(r.users.as_deref(), Some(&[0, 1001][..]));
        assert_eq!(r.groups.as_deref(), Some(&[0][..]));
        assert_eq!(r.size.max, Some(ByteSize(10 << 20)));
        assert_eq!(r.age.max, Some(Age(Duration::from_secs(7 * 86400))));
        assert_eq!(p.rule("no-keys").unwrap().effect, Effect::Deny);
        assert_eq!(
            p.rule("no-keys").unwrap().modes().collect::<Vec<_>>(),
            PathMode::ALL.to_vec(),
            "a deny rule without modes covers every mode"
        );
        assert_eq!(
            p.rule("recent-logs").unwrap().modes().collect::<Vec<_>>(),
            vec![PathMode::Read]
        );
    }

    #[test]
    fn unknown_field_is_located_inside_the_rule() {
        let text = "{\"rules\": [\n  {\"name\": \"a\",\n   \"paths\": [\"/x\"], \"mdoes\": []}\n]}";
        let e = error_text(text);
        assert!(e.starts_with("p.json:3:"), "{e}");
        assert!(e.contains("rule \"a\""), "{e}");
        assert!(e.contains("unknown field `mdoes`"), "{e}");
    }

    #[test]
    fn semantic_errors_name_rule_and_position() {
        let text = "{\"rules\": [\n {\"name\": \"a\", \"paths\": [\"/x\"]},\n {\"name\": \"a\", \"paths\": [\"x/*\"]}\n]}";
        let e = error_text(text);
        assert!(
            e.contains("p.json:3:2: rule \"a\": duplicate rule name (first defined at p.json:2:2)"),
            "{e}"
        );
        let e = error_text(r#"{"rules":[{"name":"b","paths":["rel/*"]}]}"#);
        assert!(
            e.contains("p.json:1:11: rule \"b\": path glob \"rel/*\" is not absolute"),
            "{e}"
        );
    }

    #[test]
    fn rejects_bad_values() {
        for (text, needle) in [
            (
                r#"{"rules":[{"name":"a","paths":["/x"],"max_size":"10"}]}"#,
                "needs a unit",
            ),
            (
                r#"{"rules":[{"name":"a","paths":["/x"],"max_size":"1XB"}]}"#,
                "unknown unit",
            ),
            (
                r#"{"rules":[{"name":"a","paths":["/x"],"max_size":-5}]}"#,
                "negative",
            ),
            (
                r#"{"rules":[{"name":"a","paths":["/x"],"max_age":"7 fortnights"}]}"#,
                "duration",
            ),
            (
                r#"{"rules":[{"name":"a","paths":["/x"],"users":["no-such-user-xyz"]}]}"#,
                "unknown user",
            ),
            (
                r#"{"rules":[{"name":"a","paths":["/x"],"groups":["no-such-group-xyz"]}]}"#,
                "unknown group",
            ),
            (
                r#"{"rules":[{"name":"a","paths":["/x"],"effect":"maybe"}]}"#,
                "unknown variant",
            ),
            (
                r#"{"rules":[{"name":"a","paths":["/[x"]}]}"#,
                "bad path glob",
            ),
            (
                r#"{"rules":[{"name":"a","paths":[]}]}"#,
                "at least one path",
            ),
            (r#"{"rules":[{"paths":["/x"]}]}"#, "missing field `name`"),
            (r#"{"rules":[], "extra": 1}"#, "unknown field `extra`"),
            (r#"{"rules":[}"#, "p.json:1:"),
        ] {
            let e = error_text(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn reports_every_error_not_just_the_first() {
        let e = load(r#"{"rules":[{"name":"a","paths":["x"]},{"name":"b","paths":["y"]}]}"#)
            .unwrap_err();
        assert_eq!(e.0.len(), 2);
    }

    #[test]
    fn empty_policy_loads() {
        assert!(load(r#"{"rules":[]}"#).unwrap().rules.is_empty());
    }
}
