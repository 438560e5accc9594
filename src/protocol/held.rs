//! Held descriptors and parked connections on the wire (SPEC §3.4): the
//! six ops, their fields, names, and the lines that answer them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{RequestError, WireRequest};

/// The ops on held names; also what a rule's `ops` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeldOp {
    Store,
    Retrieve,
    List,
    Drop,
    Park,
    Wake,
}

impl HeldOp {
    pub const ALL: [HeldOp; 6] = [
        HeldOp::Store,
        HeldOp::Retrieve,
        HeldOp::List,
        HeldOp::Drop,
        HeldOp::Park,
        HeldOp::Wake,
    ];
    /// An allow rule without `ops` (SPEC §5).
    pub const DEFAULT_ALLOWED: [HeldOp; 4] =
        [HeldOp::Store, HeldOp::Retrieve, HeldOp::List, HeldOp::Drop];

    pub fn as_str(self) -> &'static str {
        match self {
            HeldOp::Store => "store",
            HeldOp::Retrieve => "retrieve",
            HeldOp::List => "list",
            HeldOp::Drop => "drop",
            HeldOp::Park => "park",
            HeldOp::Wake => "wake",
        }
    }

    pub fn bit(self) -> u8 {
        1 << self as u8
    }

    pub fn parse(text: &str) -> Option<HeldOp> {
        HeldOp::ALL.into_iter().find(|op| op.as_str() == text)
    }

    /// Store and park bring a descriptor with them.
    pub fn takes_fd(self) -> bool {
        matches!(self, HeldOp::Store | HeldOp::Park)
    }
}

/// Whose held fds a request means: a user name or a uid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Storer {
    Uid(u32),
    Name(String),
}

/// A checked held-fd request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldRequest {
    pub op: HeldOp,
    /// store, retrieve, drop, park.
    pub name: Option<String>,
    /// list (optional), wake (required).
    pub prefix: Option<String>,
    pub expires: Option<Duration>,
    pub remove: bool,
    pub storer: Option<Storer>,
}

/// Longest held name.
pub const MAX_HELD_NAME: usize = 255;

/// Longest `expires` (SPEC §3.4): ten years of 365.25 days. Anything
/// longer would reach the clock's limits (`Instant` overflow, dates past
/// year 9999 that RFC 3339 cannot write), so it is `bad_request`.
pub const MAX_EXPIRES: Duration = Duration::from_secs(10 * 31_557_600);

/// Why a held name (or prefix) is refused, if it is.
pub fn check_name(name: &str, prefix: bool) -> Result<(), String> {
    if name.is_empty() && !prefix {
        return Err("a name is 1 to 255 bytes".into());
    }
    if name.len() > MAX_HELD_NAME {
        return Err(format!("a name is at most {MAX_HELD_NAME} bytes"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._:/@-".contains(*c)))
    {
        return Err(format!(
            "{c:?} is not allowed in a name ([A-Za-z0-9._:/@-])"
        ));
    }
    if name.contains("..") {
        return Err("a name may not contain \"..\"".into());
    }
    Ok(())
}

pub(super) fn validate(wire: WireRequest<'_>, op: HeldOp) -> Result<HeldRequest, RequestError> {
    let bad = |why: String| Err(RequestError::BadOption(why));
    let allowed: &[&str] = match op {
        HeldOp::Store | HeldOp::Park => &["name", "expires"],
        HeldOp::Retrieve => &["name", "remove", "storer"],
        HeldOp::List => &["prefix", "storer"],
        HeldOp::Drop => &["name", "storer"],
        HeldOp::Wake => &["prefix", "storer"],
    };
    let given = [
        ("name", wire.name.is_some()),
        ("prefix", wire.prefix.is_some()),
        ("expires", wire.expires.is_some()),
        ("remove", wire.remove.is_some()),
        ("storer", wire.storer.is_some()),
    ];
    if let Some((field, _)) = given.iter().find(|(f, set)| *set && !allowed.contains(f)) {
        return bad(format!("{} takes no \"{field}\"", op.as_str()));
    }
    if wire.has_file_or_bind_fields() {
        return bad(format!("{} takes {} only", op.as_str(), allowed.join(", ")));
    }
    let needs_name = !matches!(op, HeldOp::List | HeldOp::Wake);
    if needs_name && wire.name.is_none() {
        return bad(format!("{} needs a \"name\"", op.as_str()));
    }
    if op == HeldOp::Wake && wire.prefix.is_none() {
        return bad("wake needs a \"prefix\"".into());
    }
    if let Some(name) = &wire.name {
        check_name(name, false).map_err(RequestError::BadOption)?;
    }
    if let Some(prefix) = &wire.prefix {
        check_name(prefix, true).map_err(RequestError::BadOption)?;
    }
    let expires = match &wire.expires {
        None => None,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if d > MAX_EXPIRES => {
                return bad(format!("\"expires\": {text:?} is more than 10 years"));
            }
            Ok(d) if !d.is_zero() => Some(d),
            _ => return bad(format!("\"expires\": {text:?} is not a positive duration")),
        },
    };
    Ok(HeldRequest {
        op,
        name: wire.name,
        prefix: wire.prefix,
        expires,
        remove: wire.remove.unwrap_or(false),
        storer: wire.storer,
    })
}

/// One entry of a `list` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedName {
    pub name: String,
    /// `"held"` or `"parked"`.
    pub kind: String,
    /// RFC 3339, UTC; absent when the fd never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Whose it is (SPEC §3.4: every entry carries it); optional only so
    /// that a v2 server's answers still parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storer: Option<u32>,
}

/// A held-fd answer line; which fields appear depends on the op.
#[derive(Serialize, Default)]
pub struct HeldLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a RawValue>,
    pub ok: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fd: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storer: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<&'a [ListedName]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
}

impl HeldLine<'_> {
    pub fn write(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, self).expect("a held line serialises");
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_strict() {
        assert!(check_name("web/c17", false).is_ok());
        assert!(check_name("a@b:c-d_e.f", false).is_ok());
        assert!(check_name("a+b", false).is_err());
        assert!(check_name("", false).is_err());
        assert!(check_name("", true).is_ok(), "an empty prefix covers all");
        assert!(check_name("web/../x", false).is_err());
        assert!(check_name("a b", false).is_err());
        assert!(check_name(&"x".repeat(256), false).is_err());
        assert!(check_name(&"x".repeat(255), false).is_ok());
    }

    #[test]
    fn expires_is_at_most_ten_years() {
        let parse = |expires: &str| {
            let line = format!(r#"{{"op":"store","name":"a","expires":"{expires}"}}"#);
            crate::protocol::parse_request(line.as_bytes()).request
        };
        assert!(parse("10y").is_ok());
        assert!(parse("1s").is_ok());
        for bad in ["10y 1s", "20000y", "300000000000y", "0s"] {
            assert!(
                matches!(parse(bad), Err(RequestError::BadOption(_))),
                "{bad}"
            );
        }
    }
}
