//! The wire protocol of SPEC §2–4: newline-delimited JSON requests and
//! responses, the open modes, the error codes, and request-path hygiene.
//!
//! Parsing is strict on purpose: unknown fields, unknown ops and malformed
//! paths are `bad_request`, so a typo in a client never silently changes
//! what it asked for.

use std::fmt;
use std::str::FromStr;

use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The protocol version announced by `hello`.
pub const PROTOCOL_VERSION: u32 = 2;

/// Longest path a request may name; the kernel refuses longer ones anyway.
pub const MAX_PATH_LEN: usize = 4095;

/// How a client wants the file opened.
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

    /// Access flags for `open(2)`: never `O_CREAT` or `O_TRUNC` (SPEC §3).
    pub fn open_flags(self) -> OFlag {
        match self {
            Mode::Read => OFlag::O_RDONLY,
            Mode::Write => OFlag::O_WRONLY,
            Mode::ReadWrite => OFlag::O_RDWR,
            Mode::Append => OFlag::O_WRONLY | OFlag::O_APPEND,
        }
    }

    /// A bit of its own, so a rule's set of modes is one `u8`.
    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
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

/// The error codes of SPEC §4.
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
    IoError,
    Busy,
    /// A code this version does not know (a newer server); clients keep going.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
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
    Hello,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Check => "check",
            Op::Hello => "hello",
        }
    }
}

/// A request as it travels on the wire (SPEC §3).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireRequest<'a> {
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Kept as raw JSON so it is echoed byte for byte, `null` included.
    #[serde(
        default,
        borrow,
        deserialize_with = "present_raw",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<&'a RawValue>,
}

/// Distinguishes `"id": null` (echoed) from no `id` at all (not echoed).
fn present_raw<'de, D>(d: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(d).map(Some)
}

/// A request the server can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Hello,
    Open { path: String, mode: Mode },
    Check { path: String, mode: Mode },
}

impl Request {
    pub fn op(&self) -> Op {
        match self {
            Request::Hello => Op::Hello,
            Request::Open { .. } => Op::Open,
            Request::Check { .. } => Op::Check,
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
    #[error("{0} needs a \"path\"")]
    MissingPath(&'static str),
    #[error("hello takes no \"path\" or \"mode\"")]
    HelloWithArguments,
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
            request: validate(wire.op, wire.path, wire.mode),
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

fn validate(op: Op, path: Option<String>, mode: Option<Mode>) -> Result<Request, RequestError> {
    match op {
        Op::Hello if path.is_some() || mode.is_some() => Err(RequestError::HelloWithArguments),
        Op::Hello => Ok(Request::Hello),
        Op::Open | Op::Check => {
            let raw = path.ok_or(RequestError::MissingPath(op.as_str()))?;
            let path = normalize_owned(raw)?;
            let mode = mode.unwrap_or_default();
            Ok(if op == Op::Open {
                Request::Open { path, mode }
            } else {
                Request::Check { path, mode }
            })
        }
    }
}

/// [`normalize_path`] that keeps the string when it is already normal, as
/// nearly every request's path is.
fn normalize_owned(raw: String) -> Result<String, PathError> {
    let normal = raw.len() > 1
        && raw.len() <= MAX_PATH_LEN
        && raw.starts_with('/')
        && !raw.ends_with('/')
        && !raw.contains('\0')
        && raw[1..].split('/').all(|c| !matches!(c, "" | "." | ".."));
    if normal {
        Ok(raw)
    } else {
        normalize_path(&raw)
    }
}

/// Normalises a requested path: absolute, no NUL, no `..`; `.` components
/// and repeated or trailing `/` are dropped.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.contains('\0') {
        return Err(PathError::Nul);
    }
    if !raw.starts_with('/') {
        return Err(PathError::Relative);
    }
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let mut out = String::with_capacity(raw.len());
    for component in raw.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(PathError::DotDot),
            name => {
                out.push('/');
                out.push_str(name);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// What a successful `open` or `check` reports about the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Real path of the opened file.
    pub path: String,
    pub size: u64,
    pub mtime: i64,
    /// The allow rule that granted it.
    pub rule: String,
}

/// A refusal: a code of SPEC §4 and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServerError {
    pub code: ErrorCode,
    pub message: String,
}

impl ServerError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerError {
            code,
            message: message.into(),
        }
    }
}

/// What `hello` answers.
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
        size: u64,
        mtime: i64,
        rule: &'a str,
    }

    #[derive(Serialize)]
    struct ErrorBody<'a> {
        code: ErrorCode,
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
            size: grant.size,
            mtime: grant.mtime,
            rule: &grant.rule,
        };
        finish(out, &line);
    }

    pub fn error(out: &mut Vec<u8>, id: Option<&RawValue>, code: ErrorCode, message: &str) {
        let line = ErrorLine {
            id,
            ok: false,
            error: ErrorBody { code, message },
        };
        finish(out, &line);
    }

    pub fn hello(out: &mut Vec<u8>, id: Option<&RawValue>) {
        let line = HelloLine {
            id,
            ok: true,
            server: "fdopen",
            version: env!("CARGO_PKG_VERSION"),
            protocol: PROTOCOL_VERSION,
        };
        finish(out, &line);
    }
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
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ServerError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> (Option<String>, Result<Request, RequestError>) {
        let p = parse_request(line.as_bytes());
        (p.id.map(|r| r.get().to_owned()), p.request)
    }

    #[test]
    fn normalises_dots_and_slashes() {
        assert_eq!(normalize_path("/a//b/./c/").unwrap(), "/a/b/c");
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("//.//").unwrap(), "/");
    }

    #[test]
    fn the_fast_path_agrees_with_the_slow_one() {
        for p in [
            "/a/b", "/", "/a//b", "/a/./b", "/a/", "/a/..", "/..a/b.", "a", "", "/a\0", "/.",
        ] {
            assert_eq!(normalize_owned(p.to_owned()), normalize_path(p), "{p:?}");
        }
    }

    #[test]
    fn rejects_hostile_paths() {
        assert_eq!(normalize_path(""), Err(PathError::Empty));
        assert_eq!(normalize_path("a/b"), Err(PathError::Relative));
        assert_eq!(normalize_path("/a/../b"), Err(PathError::DotDot));
        assert_eq!(normalize_path("/a/.."), Err(PathError::DotDot));
        assert_eq!(normalize_path("/a\0b"), Err(PathError::Nul));
        assert_eq!(
            normalize_path(&format!("/{}", "a".repeat(5000))),
            Err(PathError::TooLong)
        );
        // `..` inside a name is just a name.
        assert_eq!(normalize_path("/a/..b/c..").unwrap(), "/a/..b/c..");
    }

    #[test]
    fn parses_requests_with_defaults() {
        assert_eq!(
            parse(r#"{"op":"open","path":"/x"}"#).1,
            Ok(Request::Open {
                path: "/x".into(),
                mode: Mode::Read
            })
        );
        assert_eq!(
            parse(r#"{"op":"check","path":"/x","mode":"append"}"#).1,
            Ok(Request::Check {
                path: "/x".into(),
                mode: Mode::Append
            })
        );
        assert_eq!(parse(r#"{"op":"hello"}"#).1, Ok(Request::Hello));
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
        assert_eq!(parse(&deep).1, Ok(Request::Hello));
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
            size: 3,
            mtime: 9,
            rule: "r".into(),
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
