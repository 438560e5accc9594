//! The decision of SPEC §5: deny overrides allow, nothing is allowed
//! implicitly, and the path is matched both as requested (before the
//! filesystem is touched) and as really opened.
//!
//! The server, `check` and `explain` all go through [`decide`] and the
//! per-rule predicates here, so what `explain` says is what the server does.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::address::BindAddress;
use crate::peer::PeerIdentity;
use crate::policy::{Age, ByteSize, Effect, Owner, Policy, Rule};
use crate::protocol::{Create, ErrorCode, FileRequest, Grant, HeldOp, Mode, PathMode, json_path};
use crate::safe_open::{self, CreatedFile, FileFacts, FileKind, Located, OpenError};

pub mod tree;
pub use tree::PathGrant;

/// Why a rule does not apply to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    Path,
    Mode(PathMode),
    /// The request may create the file; the rule does not cover that.
    Create,
    /// The request truncates; the rule does not cover that.
    Truncate,
    User(u32),
    Group,
    Cgroup,
    Unit,
    /// The rule names cgroups or units and the client's are unknown.
    IdentityUnknown,
    /// The path matches, but the file it leads to (through symlinks) does not.
    RealPath,
    /// The rule has no `paths` at all (a `binds` or `names` rule).
    NoPaths,
    File(FileMismatch),
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Path => f.write_str("path matches none of its globs"),
            Mismatch::Mode(m) => write!(f, "does not cover mode {m}"),
            Mismatch::Create => f.write_str("does not let the request create the file (create)"),
            Mismatch::Truncate => {
                f.write_str("does not let the request truncate the file (truncate)")
            }
            Mismatch::User(uid) => write!(f, "uid {uid} is not among its users"),
            Mismatch::Group => f.write_str("none of the client's groups is among its groups"),
            Mismatch::Cgroup => f.write_str("the client's cgroup matches none of its cgroups"),
            Mismatch::Unit => f.write_str("the client's unit matches none of its units"),
            Mismatch::IdentityUnknown => {
                f.write_str("it names cgroups or units and the client's are unknown")
            }
            Mismatch::RealPath => {
                f.write_str("the real path (after symlinks) matches none of its globs")
            }
            Mismatch::File(m) => write!(f, "{}", m.describe()),
            Mismatch::NoPaths => f.write_str("it has no paths (only binds or names)"),
        }
    }
}

/// A size or age condition the file fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileMismatch {
    TooLarge { limit: ByteSize, size: ByteSize },
    TooSmall { limit: ByteSize, size: ByteSize },
    TooOld { limit: Age, age: Age },
    TooNew { limit: Age, age: Age },
}

impl FileMismatch {
    pub fn code(&self) -> ErrorCode {
        match self {
            FileMismatch::TooLarge { .. } => ErrorCode::TooLarge,
            FileMismatch::TooSmall { .. } => ErrorCode::TooSmall,
            FileMismatch::TooOld { .. } => ErrorCode::TooOld,
            FileMismatch::TooNew { .. } => ErrorCode::TooNew,
        }
    }

    /// "allows at most 10 MiB; file is 12.5 MiB"
    pub fn describe(&self) -> String {
        match self {
            FileMismatch::TooLarge { limit, size } => {
                format!("allows at most {limit}; file is {size}")
            }
            FileMismatch::TooSmall { limit, size } => {
                format!("allows at least {limit}; file is {size}")
            }
            FileMismatch::TooOld { limit, age } => {
                format!("allows files at most {limit} old; file is {age} old")
            }
            FileMismatch::TooNew { limit, age } => {
                format!("allows files at least {limit} old; file is {age} old")
            }
        }
    }
}

impl Rule {
    /// Does a glob of this rule match `path`?
    pub fn matches_path(&self, path: &Path) -> bool {
        self.matcher.is_match(path)
    }

    /// Mode, create, truncate, users and groups: everything that needs
    /// no file.
    pub fn check_request(&self, client: &PeerIdentity, request: &Wants) -> Result<(), Mismatch> {
        let mode = request.mode;
        // Metadata comes with access (SPEC §5): an allow rule that grants
        // any mode on a path grants `stat` on it.
        let covered =
            (self.effect == Effect::Allow && mode == PathMode::Stat) || self.has_mode(mode);
        if !covered {
            return Err(Mismatch::Mode(mode));
        }
        // An allow rule's `create`/`truncate` permits them (and does not
        // demand them); a deny rule's names which requests it covers.
        let covers = |rule: Option<bool>, asked: bool| match (self.effect, rule) {
            (Effect::Allow, Some(permitted)) => permitted || !asked,
            (Effect::Deny, Some(kind)) => kind == asked,
            (_, None) => true,
        };
        if !covers(self.create, request.create) {
            return Err(Mismatch::Create);
        }
        if !covers(self.truncate, request.truncate) {
            return Err(Mismatch::Truncate);
        }
        self.check_client(client)
    }

    /// Users and groups: who the client is.
    pub fn check_client(&self, client: &PeerIdentity) -> Result<(), Mismatch> {
        if self
            .users
            .as_ref()
            .is_some_and(|users| !users.contains(&client.uid))
        {
            return Err(Mismatch::User(client.uid));
        }
        if self
            .groups
            .as_ref()
            .is_some_and(|groups| !groups.iter().any(|&g| client.in_group(g)))
        {
            return Err(Mismatch::Group);
        }
        // Allow rules need a known identity; deny rules fail closed and
        // cover a client whose cgroup is unknown (SPEC §5).
        let unknown = |mismatch| match self.effect {
            Effect::Allow => Err(mismatch),
            Effect::Deny => Ok(()),
        };
        if let Some(cgroups) = &self.cgroups {
            match client.cgroup.as_deref() {
                Some(cgroup) if cgroups.is_match(cgroup) => {}
                Some(_) => return Err(Mismatch::Cgroup),
                None => unknown(Mismatch::IdentityUnknown)?,
            }
        }
        if let Some(units) = &self.units {
            match (client.cgroup.as_deref(), client.unit()) {
                (_, Some(unit)) if units.is_match(unit) => {}
                (Some(_), _) => return Err(Mismatch::Unit),
                (None, _) => unknown(Mismatch::IdentityUnknown)?,
            }
        }
        Ok(())
    }

    /// Size, then age, of the opened file.
    pub fn check_file(&self, facts: &FileFacts, now: SystemTime) -> Result<(), FileMismatch> {
        let size = ByteSize(facts.size);
        if let Some(limit) = self.size.max.filter(|&l| size > l) {
            return Err(FileMismatch::TooLarge { limit, size });
        }
        if let Some(limit) = self.size.min.filter(|&l| size < l) {
            return Err(FileMismatch::TooSmall { limit, size });
        }
        // Whole seconds read better in messages and lose nothing that matters.
        let age = Age(std::time::Duration::from_secs(facts.age(now).as_secs()));
        if let Some(limit) = self.age.max.filter(|&l| facts.age(now) > l.0) {
            return Err(FileMismatch::TooOld { limit, age });
        }
        if let Some(limit) = self.age.min.filter(|&l| facts.age(now) < l.0) {
            return Err(FileMismatch::TooNew { limit, age });
        }
        Ok(())
    }
}

/// What a file request asks for, as rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wants {
    pub mode: PathMode,
    /// It may create the file (`create` true or exclusive).
    pub create: bool,
    pub truncate: bool,
}

impl From<Mode> for Wants {
    fn from(mode: Mode) -> Wants {
        Wants::mode(mode)
    }
}

impl From<PathMode> for Wants {
    fn from(mode: PathMode) -> Wants {
        Wants::mode(mode)
    }
}

impl Wants {
    pub fn of(request: &FileRequest) -> Wants {
        Wants {
            mode: request.mode.into(),
            create: request.create.is_requested(),
            truncate: request.truncate,
        }
    }

    /// A plain read, write, ... with no create or truncate.
    pub fn mode(mode: impl Into<PathMode>) -> Wants {
        Wants {
            mode: mode.into(),
            create: false,
            truncate: false,
        }
    }
}

/// A refused request: the code and message for the client, and the deny
/// rule that decided, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub rule: Option<String>,
    /// The kernel's error that decided it, for the client (SPEC §4).
    pub errno: Option<nix::errno::Errno>,
    /// Its audit record is written already (a tree change that failed
    /// after it was recorded, SPEC §6).
    pub recorded: bool,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            rule: None,
            errno: None,
            recorded: false,
        }
    }

    /// The server is at a limit; the client should try later.
    pub fn busy(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::Busy, message)
    }

    pub(crate) fn denied_by(rule: &Rule) -> Refusal {
        Refusal {
            code: ErrorCode::Denied,
            message: format!("denied by rule {}", rule.name),
            rule: Some(rule.name.clone()),
            errno: None,
            recorded: false,
        }
    }

    /// `within` names another directory than the client holds (SPEC §3.1).
    pub fn within_mismatch() -> Refusal {
        Refusal::new(
            ErrorCode::Denied,
            "\"within\" does not name the directory the client holds",
        )
    }

    /// A refusal the kernel's `errno` decided.
    pub fn with_errno(
        code: ErrorCode,
        errno: nix::errno::Errno,
        message: impl Into<String>,
    ) -> Refusal {
        Refusal {
            errno: Some(errno),
            ..Refusal::new(code, message)
        }
    }

    /// The kernel's name for its errno (`"ENOENT"`), as responses carry it.
    pub fn errno_name(&self) -> Option<String> {
        self.errno.map(|e| format!("{e:?}"))
    }
}

impl From<OpenError> for Refusal {
    fn from(e: OpenError) -> Refusal {
        let code = match e {
            OpenError::NotFound => ErrorCode::NotFound,
            // Callers resolve a dangling path first; should one slip by,
            // it is refused as a link out of the grant, in the same words,
            // so not even the message tells that something is missing.
            OpenError::Dangling => return leads_elsewhere(Refusal::new(ErrorCode::Denied, "")),
            OpenError::OutOfFds => ErrorCode::Busy,
            OpenError::Io { errno, .. } => {
                return Refusal::with_errno(ErrorCode::IoError, errno, e.to_string());
            }
        };
        match code {
            ErrorCode::NotFound => {
                Refusal::with_errno(code, nix::errno::Errno::ENOENT, e.to_string())
            }
            _ => Refusal::new(code, e.to_string()),
        }
    }
}

/// The rules that apply to one path, client and mode before the file is
/// looked at; the server keeps one per worker to avoid allocating.
#[derive(Default, Debug)]
pub struct Candidates {
    glob_scratch: Vec<usize>,
    rule_hits: Vec<usize>,
    allow: Vec<usize>,
    deny: Vec<usize>,
}

impl Policy {
    /// Stage one, before any filesystem access: the allow and deny rules
    /// whose path, mode and client conditions hold. Refuses when no allow
    /// rule is left, or when a deny rule with no file conditions applies.
    pub fn candidates(
        &self,
        path: &Path,
        client: &PeerIdentity,
        wants: impl Into<Wants>,
        out: &mut Candidates,
    ) -> Result<(), Refusal> {
        let wants = wants.into();
        let mode = wants.mode;
        out.rule_hits.clear();
        self.index
            .matching_rules(path, &mut out.glob_scratch, &mut out.rule_hits);
        // Sorted, the hits visit rules in policy order.
        out.rule_hits.sort_unstable();
        out.allow.clear();
        out.deny.clear();
        for &index in &out.rule_hits {
            let rule = &self.rules[index];
            if rule.check_request(client, &wants).is_err() {
                continue;
            }
            let list = match rule.effect {
                Effect::Allow => &mut out.allow,
                Effect::Deny => &mut out.deny,
            };
            // A rule with several matching globs is listed once.
            if list.last() != Some(&index) {
                list.push(index);
            }
        }
        if let Some(&deny) = out
            .deny
            .iter()
            .find(|&&i| !self.rules[i].has_file_conditions())
        {
            return Err(Refusal::denied_by(&self.rules[deny]));
        }
        if out.allow.is_empty() {
            return Err(Refusal::new(
                ErrorCode::Denied,
                format!("no rule allows {mode} of this path for uid {}", client.uid),
            ));
        }
        Ok(())
    }

    /// Stage two, on the opened file: deny rules with file conditions, then
    /// the first allow rule whose size and age conditions hold.
    pub fn judge(
        &self,
        candidates: &Candidates,
        facts: &FileFacts,
        now: SystemTime,
    ) -> Result<&Rule, Refusal> {
        for &i in &candidates.deny {
            if self.rules[i].check_file(facts, now).is_ok() {
                return Err(Refusal::denied_by(&self.rules[i]));
            }
        }
        let mut first_failure = None;
        for &i in &candidates.allow {
            let rule = &self.rules[i];
            match rule.check_file(facts, now) {
                Ok(()) => return Ok(rule),
                Err(why) => {
                    first_failure.get_or_insert((rule, why));
                }
            }
        }
        let (rule, why) = first_failure.expect("candidates always hold an allow rule");
        Err(Refusal::new(
            why.code(),
            format!("rule {} {}", rule.name, why.describe()),
        ))
    }
}

impl Policy {
    /// Decides a bind (SPEC §3.3, §5): granted when an allow rule covers
    /// the address, the client and `reuseport`, and no deny rule does.
    pub fn decide_bind(
        &self,
        address: &BindAddress,
        reuseport: bool,
        client: &PeerIdentity,
    ) -> Result<&Rule, Refusal> {
        let applies = |rule: &Rule| {
            let reuse = match (rule.effect, rule.reuseport) {
                (Effect::Allow, Some(permitted)) => permitted || !reuseport,
                (Effect::Deny, Some(kind)) => kind == reuseport,
                (_, None) => true,
            };
            reuse
                && rule.binds.iter().any(|b| b.matches(address))
                && rule.check_client(client).is_ok()
        };
        self.deny_then_allow(applies, || {
            format!("no rule allows binding {address} for uid {}", client.uid)
        })
    }

    /// SPEC §5 for a request whose every condition `applies` checks: a
    /// deny rule that matches refuses it, else the first allow rule that
    /// matches grants it, else `denied` with `why`.
    fn deny_then_allow(
        &self,
        applies: impl Fn(&Rule) -> bool,
        why: impl FnOnce() -> String,
    ) -> Result<&Rule, Refusal> {
        if let Some(deny) = self
            .rules
            .iter()
            .find(|r| r.effect == Effect::Deny && applies(r))
        {
            return Err(Refusal::denied_by(deny));
        }
        self.rules
            .iter()
            .find(|r| r.effect == Effect::Allow && applies(r))
            .ok_or_else(|| Refusal::new(ErrorCode::Denied, why()))
    }
}

impl Policy {
    /// Decides a held-fd op on `name`, stored by `storer` (SPEC §3.4, §5):
    /// the allow rule that grants it, or why not.
    pub fn decide_held(
        &self,
        op: HeldOp,
        name: &str,
        storer: u32,
        client: &PeerIdentity,
    ) -> Result<&Rule, Refusal> {
        let applies = |rule: &Rule| {
            rule.ops & op.bit() != 0
                && rule.stored_by.covers(storer, client.uid)
                && rule.matches_name(name)
                && rule.check_client(client).is_ok()
        };
        self.deny_then_allow(applies, || {
            format!(
                "no rule allows {} of {name:?} (stored by uid {storer}) for uid {}",
                op.as_str(),
                client.uid
            )
        })
    }

    /// Some allow rule gives `client` `op` on fds stored by `storer`, on
    /// some name: what `wake` and `list` need before any name is known.
    pub fn allows_held_op(&self, op: HeldOp, storer: u32, client: &PeerIdentity) -> bool {
        self.rules.iter().any(|r| {
            r.effect == Effect::Allow
                && r.ops & op.bit() != 0
                && !r.names.is_empty()
                && r.stored_by.covers(storer, client.uid)
                && r.check_client(client).is_ok()
        })
    }

    /// What the allow rules that apply to `client` could grant (SPEC §3.5).
    pub fn scope(&self, client: &PeerIdentity) -> crate::protocol::Scope {
        let mut scope = crate::protocol::Scope::default();
        let applying = self
            .rules
            .iter()
            .filter(|r| r.effect == Effect::Allow && r.check_client(client).is_ok());
        for rule in applying {
            for glob in &rule.paths {
                scope.paths.push(crate::protocol::ScopePath {
                    glob: glob.clone(),
                    // Metadata comes with any access (SPEC §5).
                    modes: PathMode::ALL
                        .into_iter()
                        .filter(|m| rule.has_mode(*m) || *m == PathMode::Stat)
                        .collect(),
                    create: rule.create == Some(true),
                });
            }
            scope.binds.extend(rule.binds.iter().map(|b| b.to_string()));
            let ops: Vec<&str> = rule.ops().map(HeldOp::as_str).collect();
            for glob in &rule.names {
                scope
                    .names
                    .push(serde_json::json!({"glob": glob, "ops": ops}));
            }
        }
        scope
    }
}

/// Scratch space for [`decide`], reused across requests.
#[derive(Default, Debug)]
pub struct Scratch {
    requested: Candidates,
    real: Candidates,
}

impl Scratch {
    /// Where [`Policy::candidates`] of the requested path goes before
    /// [`decide_on_filesystem`] is called.
    pub fn requested(&mut self) -> &mut Candidates {
        &mut self.requested
    }

    /// Room for the rules of the requested path and of the real one.
    pub fn both(&mut self) -> (&mut Candidates, &mut Candidates) {
        (&mut self.requested, &mut self.real)
    }
}

/// What a granted request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// `open`: the file is opened for I/O, to be sent.
    Open,
    /// `check`: decided on the `O_PATH` handle alone; nothing is opened,
    /// so the file sees no access at all (not even an inotify event).
    Check,
}

/// A granted request: the open file (for [`Intent::Open`]) and what to
/// report about it.
#[derive(Debug)]
pub struct Decision {
    pub file: Option<File>,
    pub grant: Grant,
    /// The real path, when a symlink made it differ from the request.
    pub real_path: Option<PathBuf>,
    /// Truncate the file once its grant is recorded (SPEC §3.2).
    pub truncate: bool,
    /// The file this request created, to remove if its grant cannot be
    /// recorded.
    pub created: Option<CreatedFile>,
    /// The `O_PATH` handle the decision was made on, left open so that the
    /// server can close it in one batch with the file it sends.
    pub pinned: Option<std::os::fd::OwnedFd>,
}

/// Decides a request end to end and, if granted, returns the open file.
pub fn decide(
    policy: &Policy,
    request: &FileRequest,
    client: &PeerIdentity,
    intent: Intent,
    scratch: &mut Scratch,
) -> Result<Decision, Refusal> {
    policy.candidates(
        &request.path.path,
        client,
        Wants::of(request),
        &mut scratch.requested,
    )?;
    decide_on_filesystem(policy, request, client, intent, scratch)
}

/// The second half of [`decide`], once [`Policy::candidates`] has accepted
/// the requested path into `scratch`: everything that touches the
/// filesystem, and so everything that can hang on it.
pub fn decide_on_filesystem(
    policy: &Policy,
    request: &FileRequest,
    client: &PeerIdentity,
    intent: Intent,
    scratch: &mut Scratch,
) -> Result<Decision, Refusal> {
    let base = base_of(request)?;
    if request.create.is_requested() {
        return decide_create(policy, request, client, intent, scratch, &base);
    }
    let path = request.path.path.as_path();
    // Split only when asked: parsing a path's components costs on every grant.
    let final_name = if request.nofollow {
        path.parent().zip(path.file_name())
    } else {
        None
    };
    let located = match final_name {
        // O_NOFOLLOW: the final name itself, pinned, never followed.
        Some((parent, name)) => match base.locate(parent) {
            // Missing, or below no directory: said only where the client
            // may see (SPEC §4), since a symlinked parent may lead anywhere.
            Ok(dir) => match dir.entry(name) {
                Err(OpenError::NotFound) => {
                    let real = dir.real_path.join(name);
                    if real != path {
                        policy
                            .candidates(&real, client, Wants::of(request), &mut scratch.real)
                            .map_err(leads_elsewhere)?;
                    }
                    Err(OpenError::NotFound)
                }
                other => other,
            },
            Err(e) => Err(e),
        },
        None => base.locate(path),
    };
    let located = match located {
        Ok(located) => located,
        Err(OpenError::Dangling) => {
            return Err(refuse_missing(policy, request, client, scratch));
        }
        Err(e) => return Err(e.into()),
    };
    decide_existing(policy, request, client, intent, scratch, located)
}

/// Where the request's path is looked up from: `/`, or its `within`
/// directory if that is the one the client holds (SPEC §3.1).
fn base_of(request: &FileRequest) -> Result<safe_open::Base, Refusal> {
    match &request.within {
        None => Ok(safe_open::Base::Root),
        Some(w) => {
            safe_open::Base::within(&w.path.path, w.dev, w.ino).ok_or_else(Refusal::within_mismatch)
        }
    }
}

/// The decision on a file that exists, located (SPEC §5).
fn decide_existing(
    policy: &Policy,
    request: &FileRequest,
    client: &PeerIdentity,
    intent: Intent,
    scratch: &mut Scratch,
    located: Located,
) -> Result<Decision, Refusal> {
    let wants = Wants::of(request);
    // Both are normal paths, so equal bytes are equal paths (Path's own
    // comparison parses components); a difference can only cost a
    // second, redundant match.
    let symlinked = located.real_path.as_os_str() != request.path.path.as_os_str();
    if symlinked {
        policy
            .candidates(&located.real_path, client, wants, &mut scratch.real)
            .map_err(leads_elsewhere)?;
    }
    if located.facts.kind != FileKind::Regular {
        let message = format!("not a regular file: a {}", located.facts.kind.describe());
        // Only a final symlink with nofollow gets here as a symlink.
        return Err(match located.facts.kind {
            FileKind::Symlink => {
                Refusal::with_errno(ErrorCode::NotRegular, nix::errno::Errno::ELOOP, message)
            }
            FileKind::Directory => {
                Refusal::with_errno(ErrorCode::NotRegular, nix::errno::Errno::EISDIR, message)
            }
            _ => Refusal::new(ErrorCode::NotRegular, message),
        });
    }
    if request.path.directory {
        return Err(Refusal::new(
            ErrorCode::NotRegular,
            "not a directory: the path ends in / but names a regular file",
        ));
    }
    let facts = located.facts;
    // A link in a writable directory can point anywhere: only read is
    // granted on a file with other names (SPEC §3.2).
    if (request.mode != Mode::Read || request.truncate) && facts.links > 1 {
        return Err(Refusal::new(
            ErrorCode::Denied,
            "the file has other hard links; only read is granted on such a file",
        ));
    }
    let now = SystemTime::now();
    let requested_rule = policy.judge(&scratch.requested, &facts, now)?;
    // The rule reported is the one that granted the file actually sent.
    let rule = if symlinked {
        policy.judge(&scratch.real, &facts, now)?
    } else {
        requested_rule
    };
    let file = match intent {
        Intent::Open => Some(located.reopen(request.mode)?),
        Intent::Check => None,
    };
    let grant = grant_of(&located.real_path, &facts, rule, false);
    let (real_path, pinned) = located.into_parts();
    Ok(Decision {
        file,
        grant,
        real_path: symlinked.then_some(real_path),
        truncate: request.truncate && intent == Intent::Open,
        created: None,
        pinned: Some(pinned),
    })
}

/// A request that may create the file (SPEC §3.2): the parent directory is
/// resolved as safely as any path, the full real path is judged, and the
/// file is made with `O_CREAT|O_EXCL|O_NOFOLLOW`; a name that is taken is
/// opened as an existing file, but never through a final symlink.
fn decide_create(
    policy: &Policy,
    request: &FileRequest,
    client: &PeerIdentity,
    intent: Intent,
    scratch: &mut Scratch,
    base: &safe_open::Base,
) -> Result<Decision, Refusal> {
    let path = request.path.path.as_path();
    let (Some(parent_path), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Refusal::new(
            ErrorCode::NotRegular,
            "a directory cannot be created",
        ));
    };
    if request.path.directory {
        return Err(Refusal::new(
            ErrorCode::NotRegular,
            "the path ends in /: a directory cannot be created",
        ));
    }
    let parent = match base.locate(parent_path) {
        Ok(parent) => parent,
        Err(OpenError::Dangling) => {
            return Err(refuse_missing(policy, request, client, scratch));
        }
        Err(e) => return Err(e.into()),
    };
    let real_path = parent.real_path.join(name);
    let symlinked = real_path.as_os_str() != path.as_os_str();
    if symlinked {
        policy
            .candidates(&real_path, client, Wants::of(request), &mut scratch.real)
            .map_err(leads_elsewhere)?;
    }
    if parent.facts.kind != FileKind::Directory {
        return Err(OpenError::NotFound.into());
    }
    let rules = if symlinked {
        &scratch.real
    } else {
        &scratch.requested
    };
    let rule = &policy.rules[*rules.allow.first().expect("candidates hold an allow rule")];
    let existing = match intent {
        Intent::Check => match parent.entry(name) {
            // Nothing is created by a check: it says what open would do.
            Err(OpenError::NotFound) => {
                let facts = FileFacts::new_empty(SystemTime::now());
                return Ok(Decision {
                    file: None,
                    grant: grant_of(&real_path, &facts, rule, true),
                    real_path: symlinked.then_some(real_path),
                    truncate: false,
                    created: None,
                    pinned: None,
                });
            }
            other => other?,
        },
        Intent::Open => match parent.create(name, request.mode)? {
            Some((file, created)) => {
                let facts = match finish_created(&parent, &file, rule, request, client) {
                    Ok(facts) => facts,
                    Err(refusal) => {
                        created.remove();
                        return Err(refusal);
                    }
                };
                return Ok(Decision {
                    file: Some(file),
                    grant: grant_of(&real_path, &facts, rule, true),
                    real_path: symlinked.then_some(real_path),
                    truncate: false,
                    created: Some(created),
                    pinned: None,
                });
            }
            None => parent.entry(name)?,
        },
    };
    if existing.facts.kind == FileKind::Symlink {
        return Err(Refusal::new(
            ErrorCode::NotRegular,
            "the name is a symbolic link, which a creating request never follows",
        ));
    }
    if request.create == Create::Exclusive {
        return Err(Refusal::new(ErrorCode::Exists, "the file already exists"));
    }
    decide_existing(policy, request, client, intent, scratch, existing)
}

/// Owner and mode of a file just created: `fchown` to the client (unless
/// the rule says the server owns it), then `fchmod` to the requested bits
/// masked by the rule's, whatever the umask.
fn finish_created(
    parent: &Located,
    file: &File,
    rule: &Rule,
    request: &FileRequest,
    client: &PeerIdentity,
) -> Result<FileFacts, Refusal> {
    let failed = |what: &str, e: nix::errno::Errno| {
        Refusal::new(
            ErrorCode::IoError,
            format!(
                "{what} of the new file failed ({}); it was removed",
                e.desc()
            ),
        )
    };
    if rule.owner == Owner::Client {
        let gid = parent.group_for_new(client.gid)?;
        nix::unistd::fchown(
            file,
            Some(nix::unistd::Uid::from_raw(client.uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| failed("fchown", e))?;
    }
    let bits = request.perm & rule.create_perm;
    nix::sys::stat::fchmod(file, nix::sys::stat::Mode::from_bits_truncate(bits))
        .map_err(|e| failed("fchmod", e))?;
    Ok(FileFacts::of(file)?)
}

fn grant_of(real_path: &Path, facts: &FileFacts, rule: &Rule, created: bool) -> Grant {
    let (text, b64) = json_path(real_path);
    Grant {
        path: text.into_owned(),
        path_b64: b64,
        size: facts.size,
        mtime: facts.mtime_secs(),
        rule: rule.name.clone(),
        created,
    }
}

/// A symlink led to a real path the policy does not grant this client.
pub(crate) fn leads_elsewhere(refusal: Refusal) -> Refusal {
    Refusal {
        code: ErrorCode::Denied,
        message: "the path leads to a file the policy does not allow".into(),
        rule: refusal.rule,
        errno: None,
        recorded: false,
    }
}

/// A path that broke off after a symlink: `not_found` only if the client
/// may see where the missing part would lie, else `denied`, so a symlink
/// never tells anyone whether a forbidden file exists (SPEC §4).
fn refuse_missing(
    policy: &Policy,
    request: &FileRequest,
    client: &PeerIdentity,
    scratch: &mut Scratch,
) -> Refusal {
    let where_missing = match safe_open::missing_real_path(&request.path.path) {
        Ok(real) => real,
        Err(_) => return leads_elsewhere(Refusal::new(ErrorCode::Denied, "")),
    };
    match policy.candidates(
        &where_missing,
        client,
        Wants::of(request),
        &mut scratch.real,
    ) {
        Ok(()) => OpenError::NotFound.into(),
        Err(refusal) => leads_elsewhere(refusal),
    }
}

/// How one rule relates to a request, for `explain`.
#[derive(Debug)]
pub struct RuleVerdict<'a> {
    pub rule: &'a Rule,
    /// `None` when the rule matches the request completely.
    pub mismatch: Option<Mismatch>,
}

/// Everything `explain` reports: each rule's verdict, then the decision
/// exactly as the server would make it.
#[derive(Debug)]
pub struct Explanation<'a> {
    pub path: PathBuf,
    pub real_path: Option<PathBuf>,
    pub file: Option<FileFacts>,
    pub rules: Vec<RuleVerdict<'a>>,
    pub outcome: Result<Grant, Refusal>,
}

/// Explains the decision for `path` rule by rule. The outcome comes from
/// [`decide`] itself; the per-rule verdicts use the same predicates.
pub fn explain<'a>(
    policy: &'a Policy,
    request: &FileRequest,
    client: &PeerIdentity,
) -> Explanation<'a> {
    let path = request.path.path.as_path();
    let located = safe_open::locate(path).ok();
    let real = located
        .as_ref()
        .map(|l| l.real_path.clone())
        .filter(|r| r != path);
    let file = located.as_ref().map(|l| l.facts);
    let now = SystemTime::now();
    let rules = policy
        .rules
        .iter()
        .map(|rule| {
            let mismatch = if rule.paths.is_empty() {
                Some(Mismatch::NoPaths)
            } else if !rule.matches_path(path) {
                Some(Mismatch::Path)
            } else if let Err(m) = rule.check_request(client, &Wants::of(request)) {
                Some(m)
            } else if real.as_deref().is_some_and(|r| !rule.matches_path(r)) {
                Some(Mismatch::RealPath)
            } else {
                file.filter(|f| f.kind == FileKind::Regular)
                    .and_then(|f| rule.check_file(&f, now).err())
                    .map(Mismatch::File)
            };
            RuleVerdict { rule, mismatch }
        })
        .collect();
    let outcome = decide(
        policy,
        request,
        client,
        Intent::Check,
        &mut Scratch::default(),
    )
    .map(|d| d.grant);
    Explanation {
        path: path.to_owned(),
        real_path: real,
        file,
        rules,
        outcome,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) fn policy(text: &str) -> Policy {
        Policy::from_str(Path::new("t.json"), text).unwrap()
    }

    fn client(uid: u32, gid: u32, groups: &[u32]) -> PeerIdentity {
        PeerIdentity {
            pid: 1,
            uid,
            gid,
            groups: groups.to_vec(),
            cgroup: None,
            foreign_net: false,
            connection: 0,
        }
    }

    fn facts(size: u64, age_secs: u64, now: SystemTime) -> FileFacts {
        FileFacts {
            kind: FileKind::Regular,
            size,
            mtime: now - Duration::from_secs(age_secs),
            dev: 1,
            ino: 1,
            links: 1,
        }
    }

    /// Both stages, on made-up file facts.
    fn verdict(
        p: &Policy,
        path: &str,
        who: &PeerIdentity,
        mode: Mode,
        f: Option<FileFacts>,
    ) -> Result<String, ErrorCode> {
        let now = SystemTime::now();
        let mut c = Candidates::default();
        p.candidates(Path::new(path), who, mode, &mut c)
            .map_err(|r| r.code)?;
        let f = f.unwrap_or_else(|| facts(10, 10, now));
        p.judge(&c, &f, now)
            .map(|r| r.name.clone())
            .map_err(|r| r.code)
    }

    pub(crate) const ROOT: fn() -> PeerIdentity = || client(0, 0, &[]);

    #[test]
    fn held_ops_follow_names_ops_and_stored_by() {
        let p = policy(
            r#"{"rules":[
              {"name":"own","names":["jobs/*"]},
              {"name":"park","names":["web/**"],"ops":["park","wake"]},
              {"name":"ops-team","names":["web/**"],"ops":["retrieve","list"],"stored_by":[1000]},
              {"name":"anyone","names":["pub/*"],"ops":["retrieve"],"stored_by":["*"]},
              {"name":"no","effect":"deny","names":["web/secret"]}]}"#,
        );
        let me = client(1000, 1000, &[]);
        let ops = client(2000, 2000, &[]);
        let ok = |op, name, storer, c: &PeerIdentity| {
            p.decide_held(op, name, storer, c).map(|r| r.name.clone())
        };
        // Default ops: store, retrieve, list, drop, on the client's own.
        assert_eq!(ok(HeldOp::Store, "jobs/a", 1000, &me).unwrap(), "own");
        assert!(ok(HeldOp::Park, "jobs/a", 1000, &me).is_err());
        assert!(
            ok(HeldOp::Retrieve, "jobs/a", 2000, &me).is_err(),
            "not another's"
        );
        assert!(
            ok(HeldOp::Store, "jobs/a/b", 1000, &me).is_err(),
            "* stays in a component"
        );
        // stored_by lets one uid reach another's.
        assert_eq!(
            ok(HeldOp::Retrieve, "web/c1", 1000, &ops).unwrap(),
            "ops-team"
        );
        assert!(ok(HeldOp::Retrieve, "web/c1", 3000, &ops).is_err());
        assert_eq!(ok(HeldOp::Retrieve, "pub/x", 4242, &ops).unwrap(), "anyone");
        // A deny rule without ops or stored_by covers every op, everyone's.
        let denied = p
            .decide_held(HeldOp::Wake, "web/secret", 1000, &me)
            .unwrap_err();
        assert_eq!(denied.rule.as_deref(), Some("no"));
        assert!(ok(HeldOp::Retrieve, "web/secret", 1000, &ops).is_err());
        // wake and list need some rule before any name is known.
        assert!(p.allows_held_op(HeldOp::Wake, 1000, &me));
        assert!(!p.allows_held_op(HeldOp::Wake, 1000, &ops));
        assert!(p.allows_held_op(HeldOp::List, 1000, &ops));
        assert!(!p.allows_held_op(HeldOp::List, 3000, &ops));
    }

    #[test]
    fn empty_policy_grants_nothing() {
        let p = policy(r#"{"rules":[]}"#);
        assert_eq!(
            verdict(&p, "/etc/passwd", &ROOT(), Mode::Read, None),
            Err(ErrorCode::Denied)
        );
    }

    #[test]
    fn star_stays_within_a_component_and_double_star_crosses() {
        let p = policy(
            r#"{"rules":[{"name":"one","paths":["/d/*.txt"]},{"name":"deep","paths":["/e/**/*.txt"]}]}"#,
        );
        assert_eq!(
            verdict(&p, "/d/a.txt", &ROOT(), Mode::Read, None),
            Ok("one".into())
        );
        assert_eq!(
            verdict(&p, "/d/sub/a.txt", &ROOT(), Mode::Read, None),
            Err(ErrorCode::Denied)
        );
        assert_eq!(
            verdict(&p, "/e/a.txt", &ROOT(), Mode::Read, None),
            Ok("deep".into())
        );
        assert_eq!(
            verdict(&p, "/e/x/y/a.txt", &ROOT(), Mode::Read, None),
            Ok("deep".into())
        );
        let q = policy(r#"{"rules":[{"name":"q","paths":["/d/?.txt","/d/[ab]c"]}]}"#);
        assert_eq!(
            verdict(&q, "/d/a.txt", &ROOT(), Mode::Read, None),
            Ok("q".into())
        );
        assert_eq!(
            verdict(&q, "/d//.txt", &ROOT(), Mode::Read, None),
            Err(ErrorCode::Denied)
        );
        assert_eq!(
            verdict(&q, "/d/bc", &ROOT(), Mode::Read, None),
            Ok("q".into())
        );
        assert_eq!(
            verdict(&q, "/d/cc", &ROOT(), Mode::Read, None),
            Err(ErrorCode::Denied)
        );
    }

    #[test]
    fn deny_overrides_allow_whatever_the_order() {
        for text in [
            r#"{"rules":[{"name":"a","paths":["/d/**"]},{"name":"n","effect":"deny","paths":["/**/*.key"]}]}"#,
            r#"{"rules":[{"name":"n","effect":"deny","paths":["/**/*.key"]},{"name":"a","paths":["/d/**"]}]}"#,
        ] {
            let p = policy(text);
            assert_eq!(
                verdict(&p, "/d/x.key", &ROOT(), Mode::Read, None),
                Err(ErrorCode::Denied)
            );
            assert_eq!(
                verdict(&p, "/d/x.txt", &ROOT(), Mode::Read, None),
                Ok("a".into())
            );
        }
    }

    #[test]
    fn a_dangling_path_that_slips_through_says_nothing_of_what_is_missing() {
        let r = Refusal::from(OpenError::Dangling);
        assert_eq!(r.code, ErrorCode::Denied);
        assert!(!r.message.contains("no such"), "{}", r.message);
        assert_eq!(
            r.message,
            leads_elsewhere(Refusal::new(ErrorCode::Denied, "")).message
        );
    }

    #[test]
    fn a_deny_rule_without_modes_denies_every_mode() {
        let p = policy(
            r#"{"rules":[{"name":"a","paths":["/d/**"],"modes":["read","write","readwrite","append"]},{"name":"no-keys","effect":"deny","paths":["/**/*.key"]}]}"#,
        );
        for mode in Mode::ALL {
            assert_eq!(
                verdict(&p, "/d/x.key", &ROOT(), mode, None),
                Err(ErrorCode::Denied),
                "{mode}"
            );
            assert_eq!(
                verdict(&p, "/d/x.txt", &ROOT(), mode, None),
                Ok("a".into()),
                "{mode}"
            );
        }
    }

    #[test]
    fn a_deny_rule_with_modes_denies_only_those() {
        let p = policy(
            r#"{"rules":[{"name":"a","paths":["/d/**"],"modes":["read","append"]},{"name":"no-append","effect":"deny","paths":["/d/*.log"],"modes":["append"]}]}"#,
        );
        assert_eq!(
            verdict(&p, "/d/x.log", &ROOT(), Mode::Append, None),
            Err(ErrorCode::Denied)
        );
        assert_eq!(
            verdict(&p, "/d/x.log", &ROOT(), Mode::Read, None),
            Ok("a".into())
        );
    }

    #[test]
    fn deny_refusal_names_its_rule_before_any_file_access() {
        let p = policy(
            r#"{"rules":[{"name":"a","paths":["/d/**"]},{"name":"n","effect":"deny","paths":["/d/secret"]}]}"#,
        );
        let mut c = Candidates::default();
        let r = p
            .candidates(Path::new("/d/secret"), &ROOT(), Mode::Read, &mut c)
            .unwrap_err();
        assert_eq!(r.rule.as_deref(), Some("n"));
    }

    #[test]
    fn modes_default_to_read_only() {
        let p = policy(
            r#"{"rules":[{"name":"a","paths":["/d/*"]},{"name":"w","paths":["/w/*"],"modes":["write","append"]}]}"#,
        );
        assert_eq!(
            verdict(&p, "/d/x", &ROOT(), Mode::Read, None),
            Ok("a".into())
        );
        for m in [Mode::Write, Mode::ReadWrite, Mode::Append] {
            assert_eq!(
                verdict(&p, "/d/x", &ROOT(), m, None),
                Err(ErrorCode::Denied)
            );
        }
        assert_eq!(
            verdict(&p, "/w/x", &ROOT(), Mode::Append, None),
            Ok("w".into())
        );
        assert_eq!(
            verdict(&p, "/w/x", &ROOT(), Mode::Read, None),
            Err(ErrorCode::Denied)
        );
        assert_eq!(
            verdict(&p, "/w/x", &ROOT(), Mode::ReadWrite, None),
            Err(ErrorCode::Denied)
        );
    }

    #[test]
    fn users_and_groups_match_primary_and_supplementary() {
        let p = policy(
            r#"{"rules":[{"name":"u","paths":["/u"],"users":[1001]},{"name":"g","paths":["/g"],"groups":[50]}]}"#,
        );
        assert_eq!(
            verdict(&p, "/u", &client(1001, 1, &[]), Mode::Read, None),
            Ok("u".into())
        );
        assert_eq!(
            verdict(&p, "/u", &client(1002, 1, &[]), Mode::Read, None),
            Err(ErrorCode::Denied)
        );
        assert_eq!(
            verdict(&p, "/g", &client(5, 50, &[]), Mode::Read, None),
            Ok("g".into())
        );
        assert_eq!(
            verdict(&p, "/g", &client(5, 1, &[7, 50]), Mode::Read, None),
            Ok("g".into())
        );
        assert_eq!(
            verdict(&p, "/g", &client(5, 1, &[7]), Mode::Read, None),
            Err(ErrorCode::Denied)
        );
    }

    #[test]
    fn size_and_age_conditions_give_their_codes() {
        let p = policy(
            r#"{"rules":[{"name":"r","paths":["/f"],"min_size":10,"max_size":"1KiB","min_age":"1m","max_age":"1h"}]}"#,
        );
        let now = SystemTime::now();
        let who = ROOT();
        let check = |size, age| verdict(&p, "/f", &who, Mode::Read, Some(facts(size, age, now)));
        assert_eq!(check(100, 600), Ok("r".into()));
        assert_eq!(check(1025, 600), Err(ErrorCode::TooLarge));
        assert_eq!(check(9, 600), Err(ErrorCode::TooSmall));
        assert_eq!(check(100, 7200), Err(ErrorCode::TooOld));
        assert_eq!(check(100, 5), Err(ErrorCode::TooNew));
        // Bounds are inclusive.
        assert_eq!(check(1024, 600), Ok("r".into()));
        assert_eq!(check(10, 600), Ok("r".into()));
    }

    #[test]
    fn any_allow_rule_whose_conditions_hold_grants() {
        let p = policy(
            r#"{"rules":[{"name":"small","paths":["/f"],"max_size":10},{"name":"big","paths":["/f"],"min_size":100}]}"#,
        );
        let now = SystemTime::now();
        assert_eq!(
            verdict(&p, "/f", &ROOT(), Mode::Read, Some(facts(5, 1, now))),
            Ok("small".into())
        );
        assert_eq!(
            verdict(&p, "/f", &ROOT(), Mode::Read, Some(facts(500, 1, now))),
            Ok("big".into())
        );
        assert_eq!(
            verdict(&p, "/f", &ROOT(), Mode::Read, Some(facts(50, 1, now))),
            Err(ErrorCode::TooLarge)
        );
    }

    #[test]
    fn deny_with_conditions_only_denies_when_they_hold() {
        let p = policy(
            r#"{"rules":[{"name":"a","paths":["/f"]},{"name":"nobig","effect":"deny","paths":["/f"],"min_size":"1MB"}]}"#,
        );
        let now = SystemTime::now();
        assert_eq!(
            verdict(&p, "/f", &ROOT(), Mode::Read, Some(facts(5, 1, now))),
            Ok("a".into())
        );
        assert_eq!(
            verdict(
                &p,
                "/f",
                &ROOT(),
                Mode::Read,
                Some(facts(2_000_000, 1, now))
            ),
            Err(ErrorCode::Denied)
        );
    }

    #[test]
    fn deny_rule_for_another_user_does_not_apply() {
        let p = policy(
            r#"{"rules":[{"name":"a","paths":["/f"]},{"name":"n","effect":"deny","paths":["/f"],"users":[1234]}]}"#,
        );
        assert_eq!(verdict(&p, "/f", &ROOT(), Mode::Read, None), Ok("a".into()));
        assert_eq!(
            verdict(&p, "/f", &client(1234, 1, &[]), Mode::Read, None),
            Err(ErrorCode::Denied)
        );
    }

    #[test]
    fn too_large_message_names_rule_limit_and_size() {
        let p = policy(r#"{"rules":[{"name":"recent-logs","paths":["/f"],"max_size":"10MiB"}]}"#);
        let now = SystemTime::now();
        let mut c = Candidates::default();
        p.candidates(Path::new("/f"), &ROOT(), Mode::Read, &mut c)
            .unwrap();
        let r = p
            .judge(&c, &facts(12 * (1 << 20) + (1 << 19), 1, now), now)
            .unwrap_err();
        assert_eq!(
            r.message,
            "rule recent-logs allows at most 10 MiB; file is 12.5 MiB"
        );
    }
}
