//! Tree operations on the wire (SPEC §3.6): `stat`, `readlink`, `xattr`,
//! `readdir`, `mkdir`, `unlink`, `rmdir`, `rename`, the `within` field
//! every path-taking op accepts (§3.1), and the lines that answer them.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Op, RequestError, RequestPath, WireRequest, json_path, normalize_owned, parse_perm};

/// Permission bits of a directory `mkdir` makes when the request names none.
pub const DEFAULT_DIR_PERM: u32 = 0o700;

/// Most entries one `readdir` answer carries (SPEC §3.6).
pub const MAX_ENTRIES: usize = 1000;

/// The tree ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeOp {
    Stat,
    Readlink,
    Xattr,
    Readdir,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
}

impl TreeOp {
    pub fn op(self) -> Op {
        match self {
            TreeOp::Stat => Op::Stat,
            TreeOp::Readlink => Op::Readlink,
            TreeOp::Xattr => Op::Xattr,
            TreeOp::Readdir => Op::Readdir,
            TreeOp::Mkdir => Op::Mkdir,
            TreeOp::Unlink => Op::Unlink,
            TreeOp::Rmdir => Op::Rmdir,
            TreeOp::Rename => Op::Rename,
        }
    }

    pub fn of(op: Op) -> Option<TreeOp> {
        Some(match op {
            Op::Stat => TreeOp::Stat,
            Op::Readlink => TreeOp::Readlink,
            Op::Xattr => TreeOp::Xattr,
            Op::Readdir => TreeOp::Readdir,
            Op::Mkdir => TreeOp::Mkdir,
            Op::Unlink => TreeOp::Unlink,
            Op::Rmdir => TreeOp::Rmdir,
            Op::Rename => TreeOp::Rename,
            _ => return None,
        })
    }

    /// It changes the tree: recorded before it is made, never resent.
    pub fn changes(self) -> bool {
        matches!(
            self,
            TreeOp::Mkdir | TreeOp::Unlink | TreeOp::Rmdir | TreeOp::Rename
        )
    }

    /// The fields this op takes besides `path` (or `path_b64`), `within`
    /// and `id`.
    fn fields(self) -> &'static [&'static str] {
        match self {
            TreeOp::Stat => &["nofollow"],
            TreeOp::Readlink | TreeOp::Unlink | TreeOp::Rmdir => &[],
            TreeOp::Xattr => &["nofollow", "name"],
            TreeOp::Readdir => &["cursor"],
            TreeOp::Mkdir => &["perm"],
            TreeOp::Rename => &["to", "noreplace"],
        }
    }
}

/// `within` (SPEC §3.1): the request's paths lie below this directory,
/// which the client holds open with this `st_dev` and `st_ino`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Within {
    pub path: RequestPath,
    pub dev: u64,
    pub ino: u64,
}

/// `within` as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireWithin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    pub id: [u64; 2],
}

impl WireWithin {
    /// `within` for a directory at `path` with `dev` and `ino`.
    pub fn new(path: &Path, dev: u64, ino: u64) -> WireWithin {
        let (text, b64) = json_path(path);
        WireWithin {
            path: b64.is_none().then(|| text.into_owned()),
            path_b64: b64,
            id: [dev, ino],
        }
    }
}

/// A checked tree request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeRequest {
    pub op: TreeOp,
    pub path: RequestPath,
    /// `rename`'s destination.
    pub to: Option<RequestPath>,
    /// `stat`, `xattr`: do not follow a final symlink.
    pub nofollow: bool,
    /// `rename`: never replace an existing `to`.
    pub noreplace: bool,
    /// `mkdir`: permission bits, before the rule's `dir_perm`.
    pub perm: u32,
    /// `xattr`: the attribute to read; none lists them.
    pub name: Option<Vec<u8>>,
    /// `readdir`: where the last answer stopped.
    pub cursor: Option<String>,
    pub within: Option<Within>,
}

impl TreeRequest {
    /// A request for `op` on `path` with every option at its default.
    pub fn new(op: TreeOp, path: RequestPath) -> TreeRequest {
        TreeRequest {
            op,
            path,
            to: None,
            nofollow: false,
            noreplace: false,
            perm: DEFAULT_DIR_PERM,
            name: None,
            cursor: None,
            within: None,
        }
    }
}

/// Decodes one of a `path`/`path_b64` pair: exactly one must be given.
pub(super) fn path_bytes(
    text: Option<String>,
    b64: Option<String>,
    field: &'static str,
) -> Result<Option<Vec<u8>>, RequestError> {
    match (text, b64) {
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Some)
            .map_err(|_| RequestError::BadBase64),
        (Some(_), Some(_)) => Err(RequestError::BadOption(format!(
            "give \"{field}\" or \"{field}_b64\", not both"
        ))),
        (None, None) => Ok(None),
    }
}

/// Checks `within` against the request's paths: it must be a leading part
/// of each (SPEC §3.6), else `bad_request`.
pub(super) fn parse_within(
    wire: Option<WireWithin>,
    paths: &[&RequestPath],
) -> Result<Option<Within>, RequestError> {
    let Some(wire) = wire else {
        return Ok(None);
    };
    let raw = path_bytes(wire.path, wire.path_b64, "within.path")?
        .ok_or_else(|| RequestError::BadOption("\"within\" needs a \"path\"".into()))?;
    let path = normalize_owned(raw)?;
    for requested in paths {
        if !requested.path.starts_with(&path.path) {
            return Err(RequestError::BadOption(
                "\"within\" must be a leading part of the request's path (and \"to\")".into(),
            ));
        }
    }
    Ok(Some(Within {
        path,
        dev: wire.id[0],
        ino: wire.id[1],
    }))
}

/// Checks the fields of a tree op.
pub(super) fn validate(wire: WireRequest<'_>, op: TreeOp) -> Result<TreeRequest, RequestError> {
    let present = [
        ("nofollow", wire.nofollow.is_some()),
        ("name", wire.name.is_some()),
        ("cursor", wire.cursor.is_some()),
        ("perm", wire.perm.is_some()),
        ("to", wire.to.is_some() || wire.to_b64.is_some()),
        ("noreplace", wire.noreplace.is_some()),
        ("mode", wire.mode.is_some()),
        ("create", wire.create.is_some()),
        ("truncate", wire.truncate.is_some()),
    ];
    let allowed = op.fields();
    if let Some((field, _)) = present
        .iter()
        .find(|(field, set)| *set && !allowed.contains(field))
    {
        return Err(RequestError::BadOption(format!(
            "{} takes no \"{field}\"",
            op.op().as_str()
        )));
    }
    let raw = path_bytes(wire.path, wire.path_b64, "path")?
        .ok_or(RequestError::MissingPath(op.op().as_str()))?;
    let mut request = TreeRequest::new(op, normalize_owned(raw)?);
    if let Some(to) = path_bytes(wire.to, wire.to_b64, "to")? {
        request.to = Some(normalize_owned(to)?);
    } else if op == TreeOp::Rename {
        return Err(RequestError::BadOption(
            "rename needs a \"to\" (or \"to_b64\")".into(),
        ));
    }
    request.nofollow = wire.nofollow.unwrap_or(false);
    request.noreplace = wire.noreplace.unwrap_or(false);
    if let Some(perm) = wire.perm.as_deref() {
        request.perm = parse_perm(perm).map_err(RequestError::BadOption)?;
    }
    request.name = wire.name.map(String::into_bytes);
    if request.name.as_ref().is_some_and(|n| n.is_empty()) {
        return Err(RequestError::BadOption("\"name\" is empty".into()));
    }
    request.cursor = wire.cursor;
    let mut paths = vec![&request.path];
    paths.extend(request.to.as_ref());
    request.within = parse_within(wire.within, &paths)?;
    Ok(request)
}

/// A point in time as `statx` gives it: seconds since the epoch and
/// nanoseconds; on the wire `[s, ns]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.sec, self.nsec).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (sec, nsec) = <(i64, u32)>::deserialize(d)?;
        if nsec >= 1_000_000_000 {
            return Err(serde::de::Error::custom("nanoseconds out of range"));
        }
        Ok(Timestamp { sec, nsec })
    }
}

/// What `stat` answers about an inode (SPEC §3.6), as `statx` says it.
/// `mode` includes the file type bits; `dev` and `rdev` are the kernel's
/// `makedev` encoding.
///
/// ```no_run
/// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
/// let meta = client.stat("/srv/app/db.sqlite")?;
/// println!("{} bytes, mode {:o}, dir: {}", meta.size, meta.permissions(), meta.is_dir());
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blksize: u64,
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Only where the filesystem records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub btime: Option<Timestamp>,
}

impl Metadata {
    /// The type, from the mode's type bits.
    pub fn file_type(&self) -> FileType {
        FileType::from_mode(self.mode)
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == FileType::Dir
    }

    pub fn is_file(&self) -> bool {
        self.file_type() == FileType::File
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type() == FileType::Symlink
    }

    /// The permission bits, set-id and sticky bits included (`mode & 07777`).
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// The type of a file, as `readdir` names it (SPEC §3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
    /// The filesystem did not say, or a newer server sent a type this
    /// version does not know.
    #[serde(other)]
    Unknown,
}

impl FileType {
    /// The type the `S_IFMT` bits of `mode` say.
    pub fn from_mode(mode: u32) -> FileType {
        match mode & libc::S_IFMT {
            libc::S_IFREG => FileType::File,
            libc::S_IFDIR => FileType::Dir,
            libc::S_IFLNK => FileType::Symlink,
            libc::S_IFIFO => FileType::Fifo,
            libc::S_IFSOCK => FileType::Socket,
            libc::S_IFCHR => FileType::Char,
            libc::S_IFBLK => FileType::Block,
            _ => FileType::Unknown,
        }
    }

    /// The type a `getdents64` entry's `d_type` says; `DT_UNKNOWN` (the
    /// filesystem did not say) is [`FileType::Unknown`].
    pub fn from_d_type(d_type: u8) -> FileType {
        match d_type {
            libc::DT_REG => FileType::File,
            libc::DT_DIR => FileType::Dir,
            libc::DT_LNK => FileType::Symlink,
            libc::DT_FIFO => FileType::Fifo,
            libc::DT_SOCK => FileType::Socket,
            libc::DT_CHR => FileType::Char,
            libc::DT_BLK => FileType::Block,
            _ => FileType::Unknown,
        }
    }

    /// The type a `readdir` entry names; one this version does not know
    /// is [`FileType::Unknown`].
    pub fn from_name(name: &str) -> FileType {
        serde_json::from_value(serde_json::Value::String(name.to_owned()))
            .unwrap_or(FileType::Unknown)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::File => "file",
            FileType::Dir => "dir",
            FileType::Symlink => "symlink",
            FileType::Fifo => "fifo",
            FileType::Socket => "socket",
            FileType::Char => "char",
            FileType::Block => "block",
            FileType::Unknown => "unknown",
        }
    }
}

/// One `readdir` entry as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_b64: Option<String>,
    /// `file dir symlink fifo socket char block unknown`.
    #[serde(rename = "type")]
    pub kind: String,
    pub ino: u64,
}

impl WireEntry {
    pub fn new(name: &[u8], kind: &str, ino: u64) -> WireEntry {
        let (text, b64) = json_path(Path::new(OsStr::from_bytes(name)));
        WireEntry {
            name: text.into_owned(),
            name_b64: b64,
            kind: kind.to_owned(),
            ino,
        }
    }
}

/// What a granted tree request answers besides `path` and `rule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeAnswer {
    Stat(Metadata),
    Link(Vec<u8>),
    XattrNames(Vec<Vec<u8>>),
    XattrValue(Vec<u8>),
    Dir {
        entries: Vec<WireEntry>,
        cursor: Option<String>,
    },
    /// `mkdir`.
    Created,
    /// `unlink`, `rmdir`, `rename` (with its real `to`).
    Done {
        to: Option<std::path::PathBuf>,
    },
}

/// Writes the answer line of a granted tree request, serialised straight
/// into `out` (a `stat` answer is the hot one: no map is built for it).
pub fn encode_answer(
    out: &mut Vec<u8>,
    id: Option<&RawValue>,
    path: &Path,
    rule: &str,
    answer: &TreeAnswer,
) {
    let start = out.len();
    let line = AnswerLine { path, rule, answer };
    serde_json::to_writer(&mut *out, &line).expect("answer serialises");
    // The id goes first, byte for byte as the client sent it.
    if let Some(id) = id {
        let id = id.get().as_bytes();
        let at = start + 1;
        out.splice(at..at, [b"\"id\":".as_slice(), id, b","].concat());
    }
    out.push(b'\n');
}

/// The fields of a granted tree answer, in the order they go out.
struct AnswerLine<'a> {
    path: &'a Path,
    rule: &'a str,
    answer: &'a TreeAnswer,
}

impl Serialize for AnswerLine<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut line = serializer.serialize_map(None)?;
        line.serialize_entry("ok", &true)?;
        bytes_field(&mut line, "path", self.path.as_os_str().as_bytes())?;
        match self.answer {
            TreeAnswer::Stat(stat) => line.serialize_entry("stat", stat)?,
            TreeAnswer::Link(target) => bytes_field(&mut line, "target", target)?,
            TreeAnswer::XattrNames(names) => {
                let text: Vec<_> = names.iter().map(|n| String::from_utf8_lossy(n)).collect();
                line.serialize_entry("names", &text)?;
                // Any name that is not UTF-8: every name's exact bytes too.
                if names.iter().any(|n| std::str::from_utf8(n).is_err()) {
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let exact: Vec<String> = names.iter().map(|n| b64.encode(n)).collect();
                    line.serialize_entry("names_b64", &exact)?;
                }
            }
            TreeAnswer::XattrValue(value) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(value);
                line.serialize_entry("value_b64", &b64)?;
            }
            TreeAnswer::Dir { entries, cursor } => {
                line.serialize_entry("entries", entries)?;
                if let Some(cursor) = cursor {
                    line.serialize_entry("cursor", cursor)?;
                }
            }
            TreeAnswer::Created => line.serialize_entry("created", &true)?,
            TreeAnswer::Done { to } => {
                if let Some(to) = to {
                    bytes_field(&mut line, "to", to.as_os_str().as_bytes())?;
                }
            }
        }
        line.serialize_entry("rule", self.rule)?;
        line.end()
    }
}

/// `field` as text, and where the bytes are not UTF-8, `field_b64` with
/// them exactly (SPEC §4).
fn bytes_field<M: serde::ser::SerializeMap>(
    line: &mut M,
    field: &'static str,
    bytes: &[u8],
) -> Result<(), M::Error> {
    let (text, b64) = json_path(Path::new(OsStr::from_bytes(bytes)));
    line.serialize_entry(field, &text)?;
    if let Some(b64) = b64 {
        line.serialize_entry(&format!("{field}_b64"), &b64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Request, parse_request};

    fn parse(line: &str) -> Result<TreeRequest, String> {
        match parse_request(line.as_bytes()).request {
            Ok(Request::Tree(tree)) => Ok(tree),
            Ok(other) => Err(format!("not a tree request: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn each_op_takes_its_own_fields_only() {
        let stat = parse(r#"{"op":"stat","path":"/a/b","nofollow":true}"#).unwrap();
        assert!(stat.nofollow);
        let mkdir = parse(r#"{"op":"mkdir","path":"/a/b","perm":"750"}"#).unwrap();
        assert_eq!(mkdir.perm, 0o750);
        assert_eq!(parse(r#"{"op":"mkdir","path":"/a"}"#).unwrap().perm, 0o700);
        let xattr = parse(r#"{"op":"xattr","path":"/a","name":"user.x"}"#).unwrap();
        assert_eq!(xattr.name.as_deref(), Some(&b"user.x"[..]));
        let rename =
            parse(r#"{"op":"rename","path":"/a/x","to_b64":"L2IveQ==","noreplace":true}"#).unwrap();
        assert_eq!(rename.to.unwrap().path, Path::new("/b/y"));
        assert!(rename.noreplace);
        for bad in [
            r#"{"op":"readlink","path":"/a","nofollow":true}"#,
            r#"{"op":"unlink","path":"/a","mode":"write"}"#,
            r#"{"op":"rmdir","path":"/a","perm":"0700"}"#,
            r#"{"op":"readdir","path":"/a","to":"/b"}"#,
            r#"{"op":"stat","path":"/a","cursor":"x"}"#,
            r#"{"op":"rename","path":"/a"}"#,
            r#"{"op":"rename","path":"/a","to":"/b","to_b64":"L2I="}"#,
            r#"{"op":"rename","path":"/a","to":"b"}"#,
            r#"{"op":"rename","path":"/a","to":"/b/../c"}"#,
            r#"{"op":"mkdir","path":"/a","perm":"4750"}"#,
            r#"{"op":"xattr","path":"/a","name":""}"#,
            r#"{"op":"xattr","path":"/a","storer":1}"#,
            r#"{"op":"stat"}"#,
            r#"{"op":"stat","path":"/a","nofollow":null}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn d_types_take_the_wire_names_of_their_modes() {
        for (d_type, mode) in [
            (libc::DT_REG, libc::S_IFREG),
            (libc::DT_DIR, libc::S_IFDIR),
            (libc::DT_LNK, libc::S_IFLNK),
            (libc::DT_FIFO, libc::S_IFIFO),
            (libc::DT_SOCK, libc::S_IFSOCK),
            (libc::DT_CHR, libc::S_IFCHR),
            (libc::DT_BLK, libc::S_IFBLK),
        ] {
            assert_eq!(FileType::from_d_type(d_type), FileType::from_mode(mode));
            assert_ne!(FileType::from_d_type(d_type), FileType::Unknown);
        }
        assert_eq!(FileType::from_d_type(libc::DT_UNKNOWN), FileType::Unknown);
        assert_eq!(FileType::from_d_type(libc::DT_DIR).as_str(), "dir");
    }

    #[test]
    fn within_must_lead_every_path() {
        let ok = parse(
            r#"{"op":"rename","path":"/d/a","to":"/d/e/b","within":{"path":"/d","id":[1,2]}}"#,
        )
        .unwrap();
        let within = ok.within.unwrap();
        assert_eq!(
            (within.path.path.as_path(), within.dev, within.ino),
            (Path::new("/d"), 1, 2)
        );
        // The directory itself may be asked about.
        assert!(parse(r#"{"op":"stat","path":"/d","within":{"path":"/d","id":[1,2]}}"#).is_ok());
        for bad in [
            r#"{"op":"stat","path":"/dx/a","within":{"path":"/d","id":[1,2]}}"#,
            r#"{"op":"rename","path":"/d/a","to":"/e/b","within":{"path":"/d","id":[1,2]}}"#,
            r#"{"op":"stat","path":"/d/a","within":{"path":"/d","id":[1]}}"#,
            r#"{"op":"stat","path":"/d/a","within":{"path":"/d"}}"#,
            r#"{"op":"stat","path":"/d/a","within":{"path":"d","id":[1,2]}}"#,
            r#"{"op":"stat","path":"/d/a","within":{"path":"/d","id":[1,2],"x":1}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        // open and check take within and nofollow; other ops do not.
        let open = parse_request(
            br#"{"op":"open","path":"/d/a","nofollow":true,"within":{"path":"/d","id":[1,2]}}"#,
        );
        match open.request {
            Ok(Request::Open(file)) => assert!(file.nofollow && file.within.is_some()),
            other => panic!("{other:?}"),
        }
        for bad in [
            r#"{"op":"hello","nofollow":true}"#,
            r#"{"op":"bind","address":"tcp:*:80","within":{"path":"/d","id":[1,2]}}"#,
            r#"{"op":"store","name":"x","nofollow":true}"#,
            r#"{"op":"open","path":"/d/a","cursor":"c"}"#,
            r#"{"op":"check","path":"/e/a","within":{"path":"/d","id":[1,2]}}"#,
        ] {
            assert!(parse_request(bad.as_bytes()).request.is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_echo_the_id_verbatim_and_give_bytes_that_are_not_utf8() {
        let mut out = Vec::new();
        let id = RawValue::from_string("123456789012345678901234567890".into()).unwrap();
        encode_answer(
            &mut out,
            Some(&id),
            Path::new("/d"),
            "r",
            &TreeAnswer::Link(b"\xff/x".to_vec()),
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(r#"{"id":123456789012345678901234567890,"#),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["target_b64"], "/y94", "{v}");
        assert_eq!(v["rule"], "r");
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn a_stat_answer_appends_one_line_whose_metadata_reads_back_whole() {
        let time = |sec| Timestamp { sec, nsec: 5 };
        let stat = Metadata {
            dev: 1,
            ino: 2,
            mode: 0o100644,
            nlink: 3,
            uid: 4,
            gid: 5,
            rdev: 0,
            size: 6,
            blksize: 4096,
            blocks: 8,
            atime: time(7),
            mtime: time(8),
            ctime: time(9),
            btime: None,
        };
        // What the buffer held before stays as it was.
        let mut out = b"earlier\n".to_vec();
        let id = RawValue::from_string("\"x\"".into()).unwrap();
        let answer = TreeAnswer::Stat(stat.clone());
        encode_answer(&mut out, Some(&id), Path::new("/d/f"), "r", &answer);
        let text = std::str::from_utf8(&out).unwrap();
        let line = text.strip_prefix("earlier\n").expect("appended");
        assert!(line.starts_with(r#"{"id":"x","ok":true,"#), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["path"], "/d/f");
        assert_eq!(v["rule"], "r");
        assert!(v.get("path_b64").is_none() && v["stat"].get("btime").is_none());
        let back: Metadata = serde_json::from_value(v["stat"].clone()).unwrap();
        assert_eq!(back, stat);
    }
}
