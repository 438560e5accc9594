//! The wire protocol of SPEC §2–4: newline-delimited JSON requests and
//! responses, the open modes, the error codes, and request-path hygiene.
//!
//! Parsing is strict on purpose: unknown fields, unknown ops and malformed
//! paths are `bad_request`, so a typo in a client never silently changes
//! what it asked for.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub mod held;
pub mod tree;
pub use held::{HeldOp, HeldRequest, ListedName, Storer};
pub use tree::{TreeOp, TreeRequest, Within};

/// The protocol version announced by `hello`.
pub const PROTOCOL_VERSION: u32 = 3;

/// Longest path a request may name; the kernel refuses longer ones anyway.
pub const MAX_PATH_LEN: usize = 4095;
/// Longest name of one path component (`NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// How a client wants the file opened.
///
/// ```
/// let mode: fdopen::Mode = serde_json::from_str("\"append\"").unwrap();
/// assert_eq!(mode, fdopen::Mode::Append);
/// assert_eq!(mode.as_str(), "append");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Read,
    Write,
    #[serde(rename = "readwrite")]
    ReadWrite,
    Append,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Read, Mode::Write, Mode::ReadWrite, Mode::Append];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Read => "read",
            Mode::Write => "write",
            Mode::ReadWrite => "readwrite",
            Mode::Append => "append",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!("unknown mode {s:?} (expected read, write, readwrite or append)")
            })
    }
}

/// What a policy rule's `modes` can name (SPEC §5): the four ways of
/// opening a file, and the tree operations of SPEC §3.6.
///
/// ```
/// let m: fdopen::protocol::PathMode = serde_json::from_str("\"delete\"").unwrap();
/// assert_eq!(m, fdopen::protocol::PathMode::Delete);
/// assert_eq!(fdopen::protocol::PathMode::from(fdopen::Mode::Append).as_str(), "append");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMode {
    Read,
    Write,
    #[serde(rename = "readwrite")]
    ReadWrite,
    Append,
    /// Metadata: `stat`, `readlink`, `xattr`.
    Stat,
    /// `readdir`.
    List,
    Mkdir,
    /// `unlink`, `rmdir`, a `rename`'s source and a replaced `to`.
    Delete,
}

impl PathMode {
    pub const ALL: [PathMode; 8] = [
        PathMode::Read,
        PathMode::Write,
        PathMode::ReadWrite,
        PathMode::Append,
        PathMode::Stat,
        PathMode::List,
        PathMode::Mkdir,
        PathMode::Delete,
    ];

    /// The modes v3 added: a v2 deny rule that lists the four open modes
    /// does not cover them.
    pub const TREE: [PathMode; 4] = [
        PathMode::Stat,
        PathMode::List,
        PathMode::Mkdir,
        PathMode::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PathMode::Read => "read",
            PathMode::Write => "write",
            PathMode::ReadWrite => "readwrite",
            PathMode::Append => "append",
            PathMode::Stat => "stat",
            PathMode::List => "list",
            PathMode::Mkdir => "mkdir",
            PathMode::Delete => "delete",
        }
    }

    /// The open mode this is, if it is one.
    pub fn open_mode(self) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| PathMode::from(*m) == self)
    }

    /// A bit of its own, so a rule's set of modes is one `u8`.
    #[cfg(feature = "server")]
    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl From<Mode> for PathMode {
    fn from(mode: Mode) -> PathMode {
        match mode {
            Mode::Read => PathMode::Read,
            Mode::Write => PathMode::Write,
            Mode::ReadWrite => PathMode::ReadWrite,
            Mode::Append => PathMode::Append,
        }
    }
}

impl fmt::Display for PathMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PathMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PathMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown mode {s:?} (expected read, write, readwrite, append, stat, list, mkdir or delete)"
                )
            })
    }
}

/// The error codes of SPEC §4.
///
/// ```
/// let code: fdopen::ErrorCode = serde_json::from_str("\"too_large\"").unwrap();
/// assert_eq!(code, fdopen::ErrorCode::TooLarge);
/// // A code from a newer server is kept as Unknown, not an error.
/// let newer: fdopen::ErrorCode = serde_json::from_str("\"rate_limited\"").unwrap();
/// assert_eq!(newer, fdopen::ErrorCode::Unknown);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Denied,
    NotFound,
    NotRegular,
    TooLarge,
    TooSmall,
    TooOld,
    TooNew,
    Exists,
    InUse,
    IoError,
    Busy,
    /// A code this version does not know (a newer server); clients keep going.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code a server sends.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::Denied,
        ErrorCode::NotFound,
        ErrorCode::NotRegular,
        ErrorCode::TooLarge,
        ErrorCode::TooSmall,
        ErrorCode::TooOld,
        ErrorCode::TooNew,
        ErrorCode::Exists,
        ErrorCode::InUse,
        ErrorCode::IoError,
        ErrorCode::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Denied => "denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotRegular => "not_regular",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::TooSmall => "too_small",
            ErrorCode::TooOld => "too_old",
            ErrorCode::TooNew => "too_new",
            ErrorCode::Exists => "exists",
            ErrorCode::InUse => "in_use",
            ErrorCode::IoError => "io_error",
            ErrorCode::Busy => "busy",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operations of SPEC §3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Open,
    Check,
    Stat,
    Readlink,
    Xattr,
    Readdir,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
    Hello,
    Bind,
    Scope,
    Store,
    Retrieve,
    List,
    Drop,
    Park,
    Wake,
    Stats,
}

impl Op {
    pub const ALL: [Op; 20] = [
        Op::Open,
        Op::Check,
        Op::Stat,
        Op::Readlink,
        Op::Xattr,
        Op::Readdir,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Rename,
        Op::Hello,
        Op::Bind,
        Op::Scope,
        Op::Store,
        Op::Retrieve,
        Op::List,
        Op::Drop,
        Op::Park,
        Op::Wake,
        Op::Stats,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Check => "check",
            Op::Stat => "stat",
            Op::Readlink => "readlink",
            Op::Xattr => "xattr",
            Op::Readdir => "readdir",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Rename => "rename",
            Op::Hello => "hello",
            Op::Bind => "bind",
            Op::Scope => "scope",
            Op::Store => "store",
            Op::Retrieve => "retrieve",
            Op::List => "list",
            Op::Drop => "drop",
            Op::Park => "park",
            Op::Wake => "wake",
            Op::Stats => "stats",
        }
    }

    /// The held-fd op this is, if it is one (SPEC §3.4).
    pub fn held(self) -> Option<HeldOp> {
        Some(match self {
            Op::Store => HeldOp::Store,
            Op::Retrieve => HeldOp::Retrieve,
            Op::List => HeldOp::List,
            Op::Drop => HeldOp::Drop,
            Op::Park => HeldOp::Park,
            Op::Wake => HeldOp::Wake,
            _ => return None,
        })
    }
}

/// A request as it travels on the wire (SPEC §3).
///
/// Every optional field is "absent or a value of its type": `null` is a
/// type error like any other (`"mode": null` must not quietly mean read).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireRequest<'a> {
    pub op: Op,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub path: Option<String>,
    /// The path's exact bytes in base64, for paths that are not UTF-8.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub path_b64: Option<String>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub mode: Option<Mode>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub create: Option<Create>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub perm: Option<String>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub truncate: Option<bool>,
    /// `bind` (SPEC §3.3).
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub address: Option<String>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub backlog: Option<u16>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub reuseport: Option<bool>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub v6only: Option<bool>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub listen: Option<bool>,
    /// Held descriptors (SPEC §3.4).
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub prefix: Option<String>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires: Option<String>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub remove: Option<bool>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub storer: Option<Storer>,
    /// Tree operations (SPEC §3.6) and `within` (§3.1).
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub to: Option<String>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub to_b64: Option<String>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub nofollow: Option<bool>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub noreplace: Option<bool>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub cursor: Option<String>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub within: Option<tree::WireWithin>,
    /// `hello` (v3, SPEC §2): how many descriptors one message may carry.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub fds_per_message: Option<u8>,
    /// Kept as raw JSON so it is echoed byte for byte, `null` included.
    #[serde(
        default,
        borrow,
        deserialize_with = "present_raw",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<&'a RawValue>,
}

impl WireRequest<'_> {
    /// A request for `op` with no other field.
    pub fn new(op: Op) -> Self {
        WireRequest {
            op,
            path: None,
            path_b64: None,
            mode: None,
            create: None,
            perm: None,
            truncate: None,
            address: None,
            backlog: None,
            reuseport: None,
            v6only: None,
            listen: None,
            name: None,
            prefix: None,
            expires: None,
            remove: None,
            storer: None,
            to: None,
            to_b64: None,
            nofollow: None,
            noreplace: None,
            cursor: None,
            within: None,
            fds_per_message: None,
            id: None,
        }
    }
}

/// A field that, when present, must hold a `T`: `null` is refused.
fn non_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Distinguishes `"id": null` (echoed) from no `id` at all (not echoed).
fn present_raw<'de, D>(d: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(d).map(Some)
}

/// A normalised request path (SPEC §3): absolute, no `.` or `..`
/// components, no repeated or trailing `/`; any bytes but NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath {
    pub path: PathBuf,
    /// It ended in `/` or `/.`: it asks for a directory, so a file there
    /// is `not_regular` (as `open("file/")` fails in the kernel).
    pub directory: bool,
}

impl RequestPath {
    /// A path that needs no normalising (tests, `explain`).
    pub fn plain(path: impl Into<PathBuf>) -> RequestPath {
        RequestPath {
            path: path.into(),
            directory: false,
        }
    }
}

/// An `open` or `check` of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRequest {
    pub path: RequestPath,
    pub mode: Mode,
    pub create: Create,
    /// Permission bits for a created file, before the rule's mask.
    pub perm: u32,
    /// Truncate the file (after its grant is recorded).
    pub truncate: bool,
    /// Refuse a final symlink (`O_NOFOLLOW`, SPEC §3.6).
    pub nofollow: bool,
    /// The directory the client holds that the path lies below (§3.1).
    pub within: Option<Within>,
}

impl FileRequest {
    /// A plain open or check: no create, no truncate.
    pub fn plain(path: RequestPath, mode: Mode) -> FileRequest {
        FileRequest {
            path,
            mode,
            create: Create::No,
            perm: DEFAULT_PERM,
            truncate: false,
            nofollow: false,
            within: None,
        }
    }
}

/// Permission bits of a created file when the request names none.
pub const DEFAULT_PERM: u32 = 0o600;

/// Whether an open may create the file (SPEC §3.2).
///
/// ```
/// use fdopen::Create;
/// assert!(Create::Exclusive.is_requested());
/// assert!(!Create::No.is_requested());
/// assert_eq!(serde_json::to_string(&Create::Exclusive).unwrap(), "\"exclusive\"");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Create {
    #[default]
    No,
    /// Open it if it exists, create it if not (`O_CREAT`).
    Yes,
    /// Create it; `exists` if the name is taken (`O_CREAT|O_EXCL`).
    Exclusive,
}

impl Create {
    pub fn is_requested(self) -> bool {
        self != Create::No
    }
}

impl Serialize for Create {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Create::No => s.serialize_bool(false),
            Create::Yes => s.serialize_bool(true),
            Create::Exclusive => s.serialize_str("exclusive"),
        }
    }
}

impl<'de> Deserialize<'de> for Create {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CreateVisitor;
        impl serde::de::Visitor<'_> for CreateVisitor {
            type Value = Create;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or \"exclusive\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Create, E> {
                Ok(if v { Create::Yes } else { Create::No })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Create, E> {
                match v {
                    "exclusive" => Ok(Create::Exclusive),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        d.deserialize_any(CreateVisitor)
    }
}

/// Parses `"0640"`: three or four octal digits and nothing else (no
/// `0o`, no sign: SPEC §3.2), at most `0777` (no set-user-ID,
/// set-group-ID or sticky bit).
pub fn parse_perm(text: &str) -> Result<u32, String> {
    let digits_only =
        (3..=4).contains(&text.len()) && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(text, 8) {
        Ok(bits) if digits_only && bits <= 0o777 => Ok(bits),
        Ok(_) if digits_only => Err(format!(
            "permission {text:?} has bits beyond 0777 (set-user-ID, set-group-ID and sticky are not allowed)"
        )),
        _ => Err(format!(
            "permission {text:?} is not three or four octal digits such as \"0640\""
        )),
    }
}

/// The fewest and most descriptors a client may ask to receive per
/// message (SPEC §2): 253 is the kernel's `SCM_MAX_FD`; 1 is the default.
pub const FDS_PER_MESSAGE: std::ops::RangeInclusive<u8> = 2..=253;

/// A `hello` (SPEC §3.5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hello {
    /// The client receives with room for this many descriptors, so the
    /// server may coalesce responses (SPEC §2); `None`: one per message.
    pub fds_per_message: Option<u8>,
}

impl Hello {
    fn new(fds_per_message: Option<u8>) -> Result<Hello, RequestError> {
        match fds_per_message {
            Some(n) if !FDS_PER_MESSAGE.contains(&n) => Err(RequestError::BadOption(format!(
                "fds_per_message is an integer from {} to {}, not {n}",
                FDS_PER_MESSAGE.start(),
                FDS_PER_MESSAGE.end()
            ))),
            fds_per_message => Ok(Hello { fds_per_message }),
        }
    }
}

/// A request the server can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Hello(Hello),
    Open(FileRequest),
    Check(FileRequest),
    Bind(crate::address::BindRequest),
    Scope,
    Held(HeldRequest),
    Tree(TreeRequest),
    Stats,
}

impl Request {
    pub fn op(&self) -> Op {
        match self {
            Request::Hello(_) => Op::Hello,
            Request::Open(_) => Op::Open,
            Request::Check(_) => Op::Check,
            Request::Bind(_) => Op::Bind,
            Request::Scope => Op::Scope,
            Request::Stats => Op::Stats,
            Request::Tree(tree) => tree.op.op(),
            Request::Held(held) => match held.op {
                HeldOp::Store => Op::Store,
                HeldOp::Retrieve => Op::Retrieve,
                HeldOp::List => Op::List,
                HeldOp::Drop => Op::Drop,
                HeldOp::Park => Op::Park,
                HeldOp::Wake => Op::Wake,
            },
        }
    }
}

/// Why a request line was refused before any policy was consulted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request is not valid UTF-8")]
    NotUtf8,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("{0} needs a \"path\" (or \"path_b64\")")]
    MissingPath(&'static str),
    #[error("give \"path\" or \"path_b64\", not both")]
    TwoPaths,
    #[error("\"path_b64\" is not valid base64")]
    BadBase64,
    #[error("hello takes no fields but id and fds_per_message")]
    HelloWithArguments,
    #[error("{0}")]
    BadOption(String),
    #[error("bad path: {0}")]
    BadPath(#[from] PathError),
}

/// What is wrong with a requested path (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path must be absolute")]
    Relative,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path contains a \"..\" component")]
    DotDot,
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("a path component is longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
}

/// A parsed request line: the `id` to echo (when one could be read) and the
/// request or the reason it is refused.
pub struct ParsedLine<'a> {
    pub id: Option<&'a RawValue>,
    pub request: Result<Request, RequestError>,
}

/// Parses one request line (without its `\n`).
pub fn parse_request(line: &[u8]) -> ParsedLine<'_> {
    let Ok(text) = std::str::from_utf8(line) else {
        return ParsedLine {
            id: None,
            request: Err(RequestError::NotUtf8),
        };
    };
    match serde_json::from_str::<WireRequest<'_>>(text) {
        Ok(wire) => ParsedLine {
            id: wire.id,
            request: validate(wire),
        },
        Err(e) => ParsedLine {
            id: salvage_id(text),
            request: Err(RequestError::Malformed(e.to_string())),
        },
    }
}

/// Finds the `id` of a request that failed to parse, so even a refusal can
/// be matched by the client.
fn salvage_id(text: &str) -> Option<&RawValue> {
    #[derive(Deserialize)]
    struct OnlyId<'a> {
        #[serde(default, borrow, deserialize_with = "present_raw")]
        id: Option<&'a RawValue>,
    }
    serde_json::from_str::<OnlyId<'_>>(text).ok()?.id
}

impl WireRequest<'_> {
    fn has_file_or_bind_fields(&self) -> bool {
        self.path.is_some()
            || self.path_b64.is_some()
            || self.mode.is_some()
            || self.create.is_some()
            || self.perm.is_some()
            || self.truncate.is_some()
            || self.address.is_some()
            || self.backlog.is_some()
            || self.reuseport.is_some()
            || self.v6only.is_some()
            || self.listen.is_some()
            || self.has_tree_fields()
    }

    fn has_tree_fields(&self) -> bool {
        self.to.is_some()
            || self.to_b64.is_some()
            || self.nofollow.is_some()
            || self.noreplace.is_some()
            || self.cursor.is_some()
            || self.within.is_some()
    }

    fn has_held_fields(&self) -> bool {
        self.name.is_some()
            || self.prefix.is_some()
            || self.expires.is_some()
            || self.remove.is_some()
            || self.storer.is_some()
    }
}

fn validate(wire: WireRequest<'_>) -> Result<Request, RequestError> {
    let op = wire.op;
    if wire.fds_per_message.is_some() && op != Op::Hello {
        return Err(RequestError::BadOption(format!(
            "{} takes no fds_per_message (only hello does)",
            op.as_str()
        )));
    }
    if let Some(held) = op.held() {
        return held::validate(wire, held).map(Request::Held);
    }
    if let Some(tree) = TreeOp::of(op) {
        if wire.has_held_fields() && !(tree == TreeOp::Xattr && only_name(&wire)) {
            return Err(RequestError::BadOption(format!(
                "{} takes no prefix, expires, remove or storer",
                op.as_str()
            )));
        }
        return tree::validate(wire, tree).map(Request::Tree);
    }
    let tree_fields = wire.to.is_some()
        || wire.to_b64.is_some()
        || wire.noreplace.is_some()
        || wire.cursor.is_some();
    let open_fields = wire.nofollow.is_some() || wire.within.is_some();
    if tree_fields || (open_fields && !matches!(op, Op::Open | Op::Check)) {
        return Err(RequestError::BadOption(format!(
            "{} takes no to, noreplace, cursor, nofollow or within",
            op.as_str()
        )));
    }
    if wire.has_held_fields() {
        return Err(RequestError::BadOption(format!(
            "{} takes no name, prefix, expires, remove or storer",
            op.as_str()
        )));
    }
    let bind_fields = wire.address.is_some()
        || wire.backlog.is_some()
        || wire.reuseport.is_some()
        || wire.v6only.is_some()
        || wire.listen.is_some();
    let file_fields = wire.path.is_some()
        || wire.path_b64.is_some()
        || wire.mode.is_some()
        || wire.create.is_some()
        || wire.perm.is_some()
        || wire.truncate.is_some();
    if op == Op::Bind {
        if file_fields {
            return Err(RequestError::BadOption(
                "bind takes address, backlog, reuseport, v6only and listen only".into(),
            ));
        }
        let text = wire
            .address
            .ok_or_else(|| RequestError::BadOption("bind needs an \"address\"".into()))?;
        let address = crate::address::BindAddress::parse(&text)
            .map_err(|e| RequestError::BadOption(e.to_string()))?;
        let mut request = crate::address::BindRequest::new(address);
        request.backlog = wire.backlog.map_or(request.backlog, i32::from);
        request.reuseport = wire.reuseport.unwrap_or(false);
        request.v6only = wire.v6only.unwrap_or(true);
        request.listen = wire.listen.unwrap_or(true);
        return Ok(Request::Bind(request));
    }
    if bind_fields {
        return Err(RequestError::BadOption(format!(
            "{} takes no address, backlog, reuseport, v6only or listen",
            op.as_str()
        )));
    }
    match op {
        Op::Hello
            if wire.path.is_some()
                || wire.path_b64.is_some()
                || wire.mode.is_some()
                || wire.create.is_some()
                || wire.perm.is_some()
                || wire.truncate.is_some() =>
        {
            Err(RequestError::HelloWithArguments)
        }
        Op::Hello if bind_fields => Err(RequestError::HelloWithArguments),
        Op::Hello => Hello::new(wire.fds_per_message).map(Request::Hello),
        Op::Scope if file_fields || bind_fields => Err(RequestError::BadOption(
            "scope takes no fields but id".into(),
        )),
        Op::Scope => Ok(Request::Scope),
        Op::Stats if file_fields || bind_fields => Err(RequestError::BadOption(
            "stats takes no fields but id".into(),
        )),
        Op::Stats => Ok(Request::Stats),
        Op::Bind
        | Op::Store
        | Op::Retrieve
        | Op::List
        | Op::Drop
        | Op::Park
        | Op::Wake
        | Op::Stat
        | Op::Readlink
        | Op::Xattr
        | Op::Readdir
        | Op::Mkdir
        | Op::Unlink
        | Op::Rmdir
        | Op::Rename => {
            unreachable!("handled above")
        }
        Op::Open | Op::Check => {
            let raw = match (wire.path, wire.path_b64) {
                (Some(text), None) => text.into_bytes(),
                (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| RequestError::BadBase64)?,
                (Some(_), Some(_)) => return Err(RequestError::TwoPaths),
                (None, None) => return Err(RequestError::MissingPath(op.as_str())),
            };
            let mode = wire.mode.unwrap_or_default();
            let create = wire.create.unwrap_or_default();
            let truncate = wire.truncate.unwrap_or(false);
            let bad = |why: &str| Err(RequestError::BadOption(why.to_owned()));
            if create.is_requested() && mode == Mode::Read {
                return bad("\"create\" needs mode write, readwrite or append");
            }
            if truncate && !matches!(mode, Mode::Write | Mode::ReadWrite) {
                return bad("\"truncate\" needs mode write or readwrite");
            }
            if wire.perm.is_some() && !create.is_requested() {
                return bad("\"perm\" only applies to a file the request may create");
            }
            let perm = match wire.perm.as_deref().map(parse_perm) {
                None => DEFAULT_PERM,
                Some(Ok(perm)) => perm,
                Some(Err(why)) => return bad(&why),
            };
            let path = normalize_owned(raw)?;
            let within = tree::parse_within(wire.within, &[&path])?;
            let file = FileRequest {
                path,
                mode,
                create,
                perm,
                truncate,
                nofollow: wire.nofollow.unwrap_or(false),
                within,
            };
            Ok(if op == Op::Open {
                Request::Open(file)
            } else {
                Request::Check(file)
            })
        }
    }
}

/// Of the held fields, only `name` is set (an `xattr` name).
fn only_name(wire: &WireRequest<'_>) -> bool {
    wire.prefix.is_none()
        && wire.expires.is_none()
        && wire.remove.is_none()
        && wire.storer.is_none()
}

/// [`normalize_path`] that keeps the bytes when they are already normal,
/// as nearly every request's path is.
fn normalize_owned(raw: Vec<u8>) -> Result<RequestPath, PathError> {
    let normal = raw.len() > 1
        && raw.len() <= MAX_PATH_LEN
        && raw[0] == b'/'
        && raw[1..].split(|&b| b == b'/').all(|c| {
            !matches!(c, b"" | b"." | b"..") && c.len() <= MAX_NAME_LEN && !c.contains(&0)
        });
    if normal {
        Ok(RequestPath::plain(OsString::from_vec(raw)))
    } else {
        normalize_path(&raw)
    }
}

/// Normalises a requested path: absolute, no NUL, no `..`, no name over
/// 255 bytes; `.` components and repeated `/` are dropped, and a trailing
/// `/` or `/.` is remembered as asking for a directory.
pub fn normalize_path(raw: &[u8]) -> Result<RequestPath, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.contains(&0) {
        return Err(PathError::Nul);
    }
    if raw[0] != b'/' {
        return Err(PathError::Relative);
    }
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut last = &b""[..];
    for component in raw.split(|&b| b == b'/') {
        last = component;
        match component {
            b"" | b"." => {}
            b".." => return Err(PathError::DotDot),
            name if name.len() > MAX_NAME_LEN => return Err(PathError::NameTooLong),
            name => {
                out.push(b'/');
                out.extend_from_slice(name);
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Ok(RequestPath {
        path: PathBuf::from(OsString::from_vec(out)),
        directory: matches!(last, b"" | b"."),
    })
}

/// A path for JSON: the text itself when it is UTF-8; otherwise a lossy
/// text and the exact bytes in base64 (SPEC §6), so that two files never
/// share a record.
pub fn json_path(path: &Path) -> (std::borrow::Cow<'_, str>, Option<String>) {
    let bytes = path.as_os_str().as_bytes();
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.into(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes),
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

/// What a successful `open` or `check` reports about the file.
///
/// ```no_run
/// let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
/// let grant: fdopen::Grant = client.check("/srv/logs/a.log", fdopen::Mode::Read)?;
/// println!("{}: {} bytes, mtime {}, rule {}", grant.path, grant.size, grant.mtime, grant.rule);
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Real path of the opened file (lossy when not UTF-8).
    pub path: String,
    /// The real path's exact bytes, when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    pub size: u64,
    pub mtime: i64,
    /// The allow rule that granted it.
    pub rule: String,
    /// This request created the file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
}

/// A refusal: a code of SPEC §4 and a message for humans.
///
/// ```no_run
/// let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
/// if let Err(fdopen::Error::Refused(refusal)) = client.open("/etc/shadow", fdopen::Mode::Read) {
///     eprintln!("{}: {}", refusal.code, refusal.message);
/// }
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServerError {
    pub code: ErrorCode,
    pub message: String,
    /// The kernel's name for the error that decided the answer (`"ENOENT"`,
    /// `"ELOOP"`, ...), given only with `not_found`, `not_regular`, `exists`
    /// and `io_error` (SPEC §4), so that `run` can hand the program the errno
    /// the kernel would have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
}

impl ServerError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerError {
            code,
            message: message.into(),
            errno: None,
        }
    }
}

/// What `hello` answers.
///
/// ```no_run
/// let info: fdopen::ServerInfo = fdopen::Client::connect("/run/fdopen/fdopen.sock")?.hello()?;
/// println!("{} {} speaks protocol {}", info.server, info.version, info.protocol);
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub server: String,
    pub version: String,
    pub protocol: u32,
}

/// Writes the response lines of SPEC §4, `\n` included.
pub mod encode {
    use super::*;

    #[derive(Serialize)]
    struct GrantLine<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        ok: bool,
        fd: bool,
        path: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        path_b64: Option<&'a str>,
        size: u64,
        mtime: i64,
        rule: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        created: bool,
    }

    #[derive(Serialize)]
    struct ErrorBody<'a> {
        code: ErrorCode,
        #[serde(skip_serializing_if = "Option::is_none")]
        errno: Option<&'a str>,
        message: &'a str,
    }

    #[derive(Serialize)]
    struct ErrorLine<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        ok: bool,
        error: ErrorBody<'a>,
    }

    #[derive(Serialize)]
    struct HelloLine<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        ok: bool,
        server: &'a str,
        version: &'a str,
        protocol: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        mnt_ns: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        root: Option<[u64; 2]>,
    }

    fn finish(out: &mut Vec<u8>, line: &impl Serialize) {
        // Serialising these plain structs into memory cannot fail.
        serde_json::to_writer(&mut *out, line).expect("response serialises");
        out.push(b'\n');
    }

    pub fn grant(out: &mut Vec<u8>, id: Option<&RawValue>, grant: &Grant, fd: bool) {
        let line = GrantLine {
            id,
            ok: true,
            fd,
            path: &grant.path,
            path_b64: grant.path_b64.as_deref(),
            size: grant.size,
            mtime: grant.mtime,
            rule: &grant.rule,
            created: grant.created,
        };
        finish(out, &line);
    }

    #[derive(Serialize)]
    struct BoundLine<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        ok: bool,
        fd: bool,
        address: &'a str,
        rule: &'a str,
    }

    #[derive(Serialize)]
    struct ScopeLine<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        ok: bool,
        #[serde(flatten)]
        scope: &'a Scope,
    }

    pub fn scope(out: &mut Vec<u8>, id: Option<&RawValue>, scope: &Scope) {
        finish(
            out,
            &ScopeLine {
                id,
                ok: true,
                scope,
            },
        );
    }

    /// A granted bind: the socket goes with it.
    pub fn bound(out: &mut Vec<u8>, id: Option<&RawValue>, address: &str, rule: &str) {
        let line = BoundLine {
            id,
            ok: true,
            fd: true,
            address,
            rule,
        };
        finish(out, &line);
    }

    pub fn error(out: &mut Vec<u8>, id: Option<&RawValue>, code: ErrorCode, message: &str) {
        error_with_errno(out, id, code, None, message);
    }

    /// An error that carries the kernel's name for what decided it (SPEC
    /// §4): only with `not_found`, `not_regular`, `exists` and `io_error`.
    pub fn error_with_errno(
        out: &mut Vec<u8>,
        id: Option<&RawValue>,
        code: ErrorCode,
        errno: Option<&str>,
        message: &str,
    ) {
        let errno = errno.filter(|_| {
            matches!(
                code,
                ErrorCode::NotFound
                    | ErrorCode::NotRegular
                    | ErrorCode::Exists
                    | ErrorCode::IoError
            )
        });
        let line = ErrorLine {
            id,
            ok: false,
            error: ErrorBody {
                code,
                errno,
                message,
            },
        };
        finish(out, &line);
    }

    /// `hello` (SPEC §3.5), with the server's mount namespace inode and
    /// the `st_dev`/`st_ino` of its `/` where known.
    pub fn hello(
        out: &mut Vec<u8>,
        id: Option<&RawValue>,
        mnt_ns: Option<u64>,
        root: Option<[u64; 2]>,
    ) {
        let line = HelloLine {
            id,
            ok: true,
            server: "fdopen",
            version: env!("CARGO_PKG_VERSION"),
            protocol: PROTOCOL_VERSION,
            mnt_ns,
            root,
        };
        finish(out, &line);
    }
}

/// One path entry of a `scope` answer.
///
/// ```no_run
/// let scope = fdopen::Client::connect("/run/fdopen/fdopen.sock")?.scope()?;
/// for path in &scope.paths {
///     println!("{} {:?} create: {}", path.glob, path.modes, path.create);
/// }
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopePath {
    pub glob: String,
    pub modes: Vec<PathMode>,
    pub create: bool,
}

/// What `scope` answers (SPEC §3.5): what the allow rules that apply to
/// this client could grant; no rule names, conditions or deny rules.
///
/// ```no_run
/// let scope = fdopen::Client::connect("/run/fdopen/fdopen.sock")?.scope()?;
/// println!("{} path globs, binds: {:?}", scope.paths.len(), scope.binds);
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub paths: Vec<ScopePath>,
    pub binds: Vec<String>,
    /// Held-descriptor names: none until that op exists.
    pub names: Vec<serde_json::Value>,
}

/// A response line as a client reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseLine {
    /// Raw, so any id comes back exactly (even numbers too big for `f64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Box<RawValue>>,
    pub ok: bool,
    #[serde(default)]
    pub fd: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
    /// The bound address of a `bind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A `scope` answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<ScopePath>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binds: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// `hello` (v3): the server's mount namespace and its `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mnt_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<[u64; 2]>,
    /// Held descriptors (SPEC §3.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storer: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ServerError>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn parse(line: &str) -> (Option<String>, Result<Request, RequestError>) {
        let p = parse_request(line.as_bytes());
        (p.id.map(|r| r.get().to_owned()), p.request)
    }

    fn normal(raw: &str) -> (String, bool) {
        let p = normalize_path(raw.as_bytes()).unwrap();
        (p.path.to_str().unwrap().to_owned(), p.directory)
    }

    #[test]
    fn normalises_dots_and_slashes() {
        assert_eq!(normal("/a//b/./c"), ("/a/b/c".into(), false));
        assert_eq!(normal("/"), ("/".into(), true));
        assert_eq!(normal("//.//"), ("/".into(), true));
    }

    #[test]
    fn a_trailing_slash_or_dot_asks_for_a_directory() {
        assert_eq!(normal("/a/b/"), ("/a/b".into(), true));
        assert_eq!(normal("/a/b/."), ("/a/b".into(), true));
        assert_eq!(normal("/a/b/./"), ("/a/b".into(), true));
        assert_eq!(normal("/a/./b"), ("/a/b".into(), false));
    }

    #[test]
    fn the_fast_path_agrees_with_the_slow_one() {
        let long = format!("/a/{}", "n".repeat(256));
        for p in [
            "/a/b", "/", "/a//b", "/a/./b", "/a/", "/a/..", "/..a/b.", "a", "", "/a\0", "/.", &long,
        ] {
            assert_eq!(
                normalize_owned(p.as_bytes().to_vec()),
                normalize_path(p.as_bytes()),
                "{p:?}"
            );
        }
    }

    #[test]
    fn rejects_hostile_paths() {
        let bad = |p: &str| normalize_path(p.as_bytes()).unwrap_err();
        assert_eq!(bad(""), PathError::Empty);
        assert_eq!(bad("a/b"), PathError::Relative);
        assert_eq!(bad("/a/../b"), PathError::DotDot);
        assert_eq!(bad("/a/.."), PathError::DotDot);
        assert_eq!(bad("/a\0b"), PathError::Nul);
        assert_eq!(bad(&format!("/{}", "a".repeat(5000))), PathError::TooLong);
        assert_eq!(
            bad(&format!("/a/{}", "n".repeat(256))),
            PathError::NameTooLong
        );
        // 255 bytes is the longest name; 4095 the longest path.
        assert!(normalize_path(format!("/a/{}", "n".repeat(255)).as_bytes()).is_ok());
        let longest = format!(
            "/{}/{}",
            vec!["n".repeat(255); 15].join("/"),
            "n".repeat(254)
        );
        assert_eq!(longest.len(), 4095);
        assert!(normalize_path(longest.as_bytes()).is_ok());
        // `..` inside a name is just a name.
        assert_eq!(normal("/a/..b/c.."), ("/a/..b/c..".into(), false));
    }

    fn file(path: &str, mode: Mode) -> FileRequest {
        FileRequest::plain(RequestPath::plain(path), mode)
    }

    #[test]
    fn create_perm_and_truncate_are_checked_against_the_mode() {
        let (_, req) = parse(
            r#"{"op":"open","path":"/x","mode":"write","create":"exclusive","perm":"0640","truncate":true}"#,
        );
        let Ok(Request::Open(f)) = req else {
            panic!("{req:?}")
        };
        assert_eq!(
            (f.create, f.perm, f.truncate),
            (Create::Exclusive, 0o640, true)
        );
        let (_, req) = parse(r#"{"op":"check","path":"/x","mode":"append","create":true}"#);
        let Ok(Request::Check(f)) = req else {
            panic!("{req:?}")
        };
        assert_eq!((f.create, f.perm), (Create::Yes, 0o600));
        for line in [
            r#"{"op":"open","path":"/x","create":true}"#,
            r#"{"op":"open","path":"/x","mode":"append","truncate":true}"#,
            r#"{"op":"open","path":"/x","mode":"write","perm":"0600"}"#,
            r#"{"op":"open","path":"/x","mode":"write","create":true,"perm":"4755"}"#,
            r#"{"op":"open","path":"/x","mode":"write","create":true,"perm":"rw"}"#,
            r#"{"op":"open","path":"/x","mode":"write","create":true,"perm":"0o644"}"#,
            r#"{"op":"open","path":"/x","mode":"write","create":true,"perm":"+644"}"#,
            r#"{"op":"open","path":"/x","mode":"write","create":true,"perm":"64"}"#,
            r#"{"op":"open","path":"/x","mode":"write","create":true,"perm":"00644"}"#,
            r#"{"op":"open","path":"/x","mode":"write","create":true,"perm":"-644"}"#,
            r#"{"op":"open","path":"/x","mode":"write","create":"yes"}"#,
            r#"{"op":"open","path":"/x","mode":"write","create":null}"#,
            r#"{"op":"open","path":"/x","mode":"write","truncate":null}"#,
            r#"{"op":"hello","create":false}"#,
        ] {
            assert!(parse(line).1.is_err(), "{line}");
        }
    }

    #[test]
    fn hello_takes_fds_per_message_from_2_to_253() {
        for n in [2u8, 64, 253] {
            let line = format!(r#"{{"op":"hello","fds_per_message":{n}}}"#);
            let want = Hello {
                fds_per_message: Some(n),
            };
            assert_eq!(parse(&line).1, Ok(Request::Hello(want)), "{line}");
        }
        for bad in [
            "1", "0", "254", "-1", "\"4\"", "null", "2.5", "1e1", "true", "[4]",
        ] {
            let line = format!(r#"{{"op":"hello","fds_per_message":{bad}}}"#);
            assert!(parse(&line).1.is_err(), "{line}");
        }
        let line = r#"{"op":"open","path":"/x","fds_per_message":4}"#;
        assert!(parse(line).1.is_err(), "{line}");
    }

    #[test]
    fn parses_requests_with_defaults() {
        assert_eq!(
            parse(r#"{"op":"open","path":"/x"}"#).1,
            Ok(Request::Open(file("/x", Mode::Read)))
        );
        assert_eq!(
            parse(r#"{"op":"check","path":"/x","mode":"append"}"#).1,
            Ok(Request::Check(file("/x", Mode::Append)))
        );
        assert_eq!(
            parse(r#"{"op":"hello"}"#).1,
            Ok(Request::Hello(Hello::default()))
        );
    }

    #[test]
    fn null_is_not_a_default() {
        for line in [
            r#"{"op":"open","path":"/x","mode":null}"#,
            r#"{"op":"open","path":null}"#,
            r#"{"op":"open","path_b64":null}"#,
            r#"{"op":null,"path":"/x"}"#,
        ] {
            assert!(
                matches!(parse(line).1, Err(RequestError::Malformed(_))),
                "{line}"
            );
        }
    }

    #[test]
    fn path_b64_carries_any_bytes() {
        let (_, req) = parse(r#"{"op":"open","path_b64":"L3RtcC9h/w=="}"#);
        let Ok(Request::Open(f)) = req else {
            panic!("{req:?}")
        };
        assert_eq!(f.path.path.as_os_str().as_bytes(), b"/tmp/a\xff");
        assert_eq!(
            parse(r#"{"op":"open","path_b64":"!!"}"#).1,
            Err(RequestError::BadBase64)
        );
        assert_eq!(
            parse(r#"{"op":"open","path":"/a","path_b64":"L2E="}"#).1,
            Err(RequestError::TwoPaths)
        );
        assert_eq!(
            parse(r#"{"op":"open","path_b64":"YQ=="}"#).1,
            Err(RequestError::BadPath(PathError::Relative))
        );
    }

    #[test]
    fn json_paths_are_exact_for_any_bytes() {
        let p = Path::new(OsStr::from_bytes(b"/a\xff"));
        let (text, b64) = json_path(p);
        assert_eq!(text, "/a\u{fffd}");
        assert_eq!(b64.as_deref(), Some("L2H/"));
        assert_eq!(json_path(Path::new("/a")), ("/a".into(), None));
    }

    #[test]
    fn echoes_any_id_verbatim_even_on_errors() {
        assert_eq!(
            parse(r#"{"op":"hello","id":{"a":[1,2]}}"#).0.as_deref(),
            Some(r#"{"a":[1,2]}"#)
        );
        assert_eq!(
            parse(r#"{"op":"hello","id":null}"#).0.as_deref(),
            Some("null")
        );
        assert_eq!(parse(r#"{"op":"hello"}"#).0, None);
        let (id, req) = parse(r#"{"op":"opne","id":7}"#);
        assert_eq!(id.as_deref(), Some("7"));
        assert!(matches!(req, Err(RequestError::Malformed(_))));
    }

    #[test]
    fn rejects_unknown_fields_ops_and_modes() {
        for line in [
            r#"{"op":"open","path":"/x","mdoe":"read"}"#,
            r#"{"op":"delete","path":"/x"}"#,
            r#"{"op":"open","path":"/x","mode":"exec"}"#,
            r#"{"op":"open","path":7}"#,
            r#"[1,2]"#,
            r#"{"op":"open","path":"/x","path":"/y"}"#,
            "not json",
        ] {
            assert!(
                matches!(parse(line).1, Err(RequestError::Malformed(_))),
                "{line}"
            );
        }
        assert_eq!(
            parse(r#"{"op":"open"}"#).1,
            Err(RequestError::MissingPath("open"))
        );
        assert_eq!(
            parse(r#"{"op":"hello","path":"/x"}"#).1,
            Err(RequestError::HelloWithArguments)
        );
        assert_eq!(
            parse_request(b"{\"op\":\"\xff\"}").request,
            Err(RequestError::NotUtf8)
        );
    }

    #[test]
    fn deeply_nested_json_neither_crashes_nor_recurses() {
        // An id is skipped over without recursion, and echoed.
        let deep = format!(
            r#"{{"op":"hello","id":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(parse(&deep).1, Ok(Request::Hello(Hello::default())));
        // Elsewhere, serde_json's depth limit turns it into an error.
        let deep = format!(
            r#"{{"op":"open","path":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(matches!(parse(&deep).1, Err(RequestError::Malformed(_))));
    }

    #[test]
    fn encodes_responses_per_spec() {
        let id = RawValue::from_string("7".into()).unwrap();
        let mut out = Vec::new();
        let grant = Grant {
            path: "/a".into(),
            path_b64: None,
            size: 3,
            mtime: 9,
            rule: "r".into(),
            created: false,
        };
        encode::grant(&mut out, Some(&id), &grant, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\":7,\"ok\":true,\"fd\":true,\"path\":\"/a\",\"size\":3,\"mtime\":9,\"rule\":\"r\"}\n"
        );
        let mut out = Vec::new();
        encode::error(&mut out, None, ErrorCode::TooLarge, "big");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"ok\":false,\"error\":{\"code\":\"too_large\",\"message\":\"big\"}}\n"
        );
    }
}
