//! Tree operations (SPEC v3 §3.6): metadata, links, extended attributes,
//! directory listings as data, and the changes `mkdir`, `unlink`, `rmdir`
//! and `rename`.
//!
//! One [`TreeRequest`] builds any of them and [`Client::tree`] sends it;
//! the conveniences ([`Client::stat`], [`Client::read_dir`], ...) mirror
//! `std::fs`. Answers are parsed leniently (unknown fields ignored, so a
//! newer server keeps working) but exactly: where a name, path or link
//! target is not UTF-8 the server adds its bytes as a `_b64` twin, and
//! those bytes are what the caller gets.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Client, Error, absolute};
use crate::protocol::tree::{WireEntry, WireWithin};
use crate::protocol::{ServerError, TreeOp, json_path};

/// A directory the client holds open (SPEC §3.1 `within`): the server
/// checks that `path` still is that very directory (`st_dev`, `st_ino`)
/// and resolves the rest of the request's path below it, so a directory
/// renamed or swapped since the client looked it up cannot redirect the
/// request.
///
/// ```no_run
/// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
/// use fdopen::{TreeRequest, Within};
/// let dir = std::fs::File::open("/srv/app")?;
/// let within = Within::of_file("/srv/app", &dir)?;
/// client.tree(&TreeRequest::stat("/srv/app/db.sqlite").within(within))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Within {
    /// Absolute path of the directory, a leading part of the request's path.
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

impl Within {
    /// The directory open as `dir`, which the caller reached at `path`.
    pub fn of_file(path: impl Into<PathBuf>, dir: &std::fs::File) -> std::io::Result<Within> {
        use std::os::unix::fs::MetadataExt;
        let meta = dir.metadata()?;
        Ok(Within {
            path: path.into(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The wire form: `{"path":..,"id":[DEV,INO]}` (`path_b64` for bytes
    /// that are not UTF-8).
    pub(super) fn to_wire(&self) -> Result<WireWithin, Error> {
        Ok(WireWithin::new(absolute(&self.path)?, self.dev, self.ino))
    }
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

/// The major and minor numbers of a `makedev` encoded device.
pub fn major_minor(dev: u64) -> (u32, u32) {
    (libc::major(dev), libc::minor(dev))
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

    /// The type a `readdir` entry names; one this version does not know
    /// is [`FileType::Unknown`].
    pub fn from_name(name: &str) -> FileType {
        serde_json::from_value(Value::String(name.to_owned())).unwrap_or(FileType::Unknown)
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

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's exact name (`.` and `..` included in raw pages).
    pub name: OsString,
    pub file_type: FileType,
    pub ino: u64,
}

/// One `readdir` answer: at most 1000 entries
/// ([`crate::protocol::tree::MAX_ENTRIES`]), in the kernel's order, and the cursor for the next page while more remain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirPage {
    /// The directory's real path.
    pub path: PathBuf,
    pub entries: Vec<DirEntry>,
    pub cursor: Option<String>,
}

/// One tree request (SPEC §3.6), built then sent with [`Client::tree`].
///
/// ```no_run
/// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
/// use fdopen::{TreeReply, TreeRequest};
/// let request = TreeRequest::rename("/srv/app/db.tmp", "/srv/app/db").noreplace(true);
/// if let TreeReply::Done { rule, .. } = client.tree(&request)? {
///     println!("renamed, granted by {rule}");
/// }
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeRequest {
    op: TreeOp,
    path: PathBuf,
    to: Option<PathBuf>,
    name: Option<OsString>,
    cursor: Option<String>,
    perm: Option<u32>,
    nofollow: bool,
    noreplace: bool,
    within: Option<Within>,
}

impl TreeRequest {
    fn new(op: TreeOp, path: impl Into<PathBuf>) -> TreeRequest {
        TreeRequest {
            op,
            path: path.into(),
            to: None,
            name: None,
            cursor: None,
            perm: None,
            nofollow: false,
            noreplace: false,
            within: None,
        }
    }

    /// Metadata of `path` (of the file a final symlink leads to, unless
    /// [`TreeRequest::nofollow`]).
    pub fn stat(path: impl Into<PathBuf>) -> TreeRequest {
        TreeRequest::new(TreeOp::Stat, path)
    }

    /// The target of the symlink at `path`.
    pub fn readlink(path: impl Into<PathBuf>) -> TreeRequest {
        TreeRequest::new(TreeOp::Readlink, path)
    }

    /// The names of the extended attributes of `path`.
    pub fn xattr_names(path: impl Into<PathBuf>) -> TreeRequest {
        TreeRequest::new(TreeOp::Xattr, path)
    }

    /// The value of the extended attribute `name` of `path`.
    pub fn xattr(path: impl Into<PathBuf>, name: &OsStr) -> TreeRequest {
        TreeRequest {
            name: Some(name.to_owned()),
            ..TreeRequest::new(TreeOp::Xattr, path)
        }
    }

    /// One page of the directory `path`: the first with `cursor` `None`,
    /// then each with the cursor the previous page gave.
    pub fn readdir(path: impl Into<PathBuf>, cursor: Option<String>) -> TreeRequest {
        TreeRequest {
            cursor,
            ..TreeRequest::new(TreeOp::Readdir, path)
        }
    }

    /// Make the directory `path` with at most `perm` (the rule's
    /// `dir_perm` masks it).
    pub fn mkdir(path: impl Into<PathBuf>, perm: u32) -> TreeRequest {
        TreeRequest {
            perm: Some(perm),
            ..TreeRequest::new(TreeOp::Mkdir, path)
        }
    }

    /// Remove the name `path` (a symlink itself, never what it points to).
    pub fn unlink(path: impl Into<PathBuf>) -> TreeRequest {
        TreeRequest::new(TreeOp::Unlink, path)
    }

    /// Remove the empty directory `path`.
    pub fn rmdir(path: impl Into<PathBuf>) -> TreeRequest {
        TreeRequest::new(TreeOp::Rmdir, path)
    }

    /// Move the regular file `from` to `to` on the same filesystem.
    pub fn rename(from: impl Into<PathBuf>, to: impl Into<PathBuf>) -> TreeRequest {
        TreeRequest {
            to: Some(to.into()),
            ..TreeRequest::new(TreeOp::Rename, from)
        }
    }

    /// Do not follow a final symlink (`stat`, `xattr`): answer about the
    /// link itself.
    pub fn nofollow(mut self, nofollow: bool) -> TreeRequest {
        self.nofollow = nofollow;
        self
    }

    /// Never replace an existing `to` (`rename`), even where the policy
    /// would allow it.
    pub fn noreplace(mut self, noreplace: bool) -> TreeRequest {
        self.noreplace = noreplace;
        self
    }

    /// Resolve the path below a directory the caller holds (SPEC §3.1).
    pub fn within(mut self, within: Within) -> TreeRequest {
        self.within = Some(within);
        self
    }

    pub fn op(&self) -> TreeOp {
        self.op
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The request line, newline included. Relative paths never leave the
    /// client; fields travel only when set, so every line is one the
    /// server accepts for its op.
    pub fn to_line(&self) -> Result<Vec<u8>, Error> {
        let mut object = Map::new();
        object.insert("op".into(), self.op.op().as_str().into());
        put_path(&mut object, "path", absolute(&self.path)?);
        if let Some(to) = &self.to {
            put_path(&mut object, "to", absolute(to)?);
        }
        if let Some(name) = &self.name {
            put_path(&mut object, "name", Path::new(name));
        }
        if let Some(cursor) = &self.cursor {
            object.insert("cursor".into(), cursor.as_str().into());
        }
        if let Some(perm) = self.perm {
            object.insert("perm".into(), format!("{perm:04o}").into());
        }
        if self.nofollow {
            object.insert("nofollow".into(), true.into());
        }
        if self.noreplace {
            object.insert("noreplace".into(), true.into());
        }
        if let Some(within) = &self.within {
            let within = serde_json::to_value(within.to_wire()?)
                .map_err(|e| Error::Protocol(e.to_string()))?;
            object.insert("within".into(), within);
        }
        let mut line = serde_json::to_vec(&object).map_err(|e| Error::Protocol(e.to_string()))?;
        line.push(b'\n');
        Ok(line)
    }
}

/// `key` (text) or `key_b64` (exact bytes, when not UTF-8) into `object`.
fn put_path(object: &mut Map<String, Value>, key: &str, path: &Path) {
    match json_path(path) {
        (text, None) => object.insert(key.into(), text.into_owned().into()),
        (_, Some(b64)) => object.insert(format!("{key}_b64"), b64.into()),
    };
}

/// What the server answered a [`TreeRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeReply {
    /// `stat`: the real path, the granting rule and the metadata.
    Stat {
        path: PathBuf,
        rule: String,
        stat: Metadata,
    },
    /// `readlink`: the link's real path and its target, byte for byte.
    Link { path: PathBuf, target: PathBuf },
    /// `xattr` without a name.
    XattrNames(Vec<OsString>),
    /// `xattr` with a name.
    XattrValue(Vec<u8>),
    /// `readdir`: one page.
    Dir(DirPage),
    /// `mkdir`, `unlink`, `rmdir`, `rename`: done; `to` for `rename`,
    /// whose `rule` is the one that granted `to`.
    Done {
        path: PathBuf,
        to: Option<PathBuf>,
        rule: String,
    },
}

/// A tree answer as it travels; every field this client does not know
/// is ignored.
#[derive(Debug, Deserialize)]
struct WireReply {
    ok: bool,
    #[serde(default)]
    fd: bool,
    error: Option<ServerError>,
    path: Option<String>,
    path_b64: Option<String>,
    to: Option<String>,
    to_b64: Option<String>,
    rule: Option<String>,
    stat: Option<Metadata>,
    target: Option<String>,
    target_b64: Option<String>,
    names: Option<Vec<String>>,
    /// Every name's exact bytes, sent when any name is not UTF-8.
    names_b64: Option<Vec<String>>,
    value_b64: Option<String>,
    entries: Option<Vec<WireEntry>>,
    cursor: Option<String>,
}

/// The exact bytes of a text field and its `_b64` twin: the twin wins.
fn exact(what: &str, text: Option<String>, b64: Option<String>) -> Result<OsString, Error> {
    match (b64, text) {
        (Some(b64), _) => decode_b64(&format!("{what}_b64"), &b64).map(OsString::from_vec),
        (None, Some(text)) => Ok(text.into()),
        (None, None) => Err(Error::Protocol(format!("answer without {what}"))),
    }
}

fn decode_b64(field: &str, b64: &str) -> Result<Vec<u8>, Error> {
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| Error::Protocol(format!("{field} is not base64: {e}")))
}

fn required<T>(what: &str, value: Option<T>) -> Result<T, Error> {
    value.ok_or_else(|| Error::Protocol(format!("answer without {what}")))
}

impl TreeReply {
    /// Parses the answer line to `request`: a refusal is
    /// [`Error::Refused`], anything malformed [`Error::Protocol`].
    pub fn parse(request: &TreeRequest, line: &[u8]) -> Result<TreeReply, Error> {
        let wire: WireReply = serde_json::from_slice(line)
            .map_err(|e| Error::Protocol(format!("bad response line: {e}")))?;
        // First: whatever else it says, a descriptor must be taken off the
        // FIFO (Client::receive_tree does, on this error).
        if wire.fd {
            return Err(Error::Protocol("a tree answer carried a descriptor".into()));
        }
        if !wire.ok {
            return Err(Error::Refused(required("error", wire.error)?));
        }
        let path = || exact("path", wire.path.clone(), wire.path_b64.clone()).map(PathBuf::from);
        Ok(match request.op {
            TreeOp::Stat => TreeReply::Stat {
                path: path()?,
                rule: required("rule", wire.rule)?,
                stat: required("stat", wire.stat)?,
            },
            TreeOp::Readlink => TreeReply::Link {
                path: path()?,
                target: exact("target", wire.target, wire.target_b64)?.into(),
            },
            TreeOp::Xattr if request.name.is_some() => {
                let b64 = required("value_b64", wire.value_b64)?;
                TreeReply::XattrValue(decode_b64("value_b64", &b64)?)
            }
            TreeOp::Xattr => TreeReply::XattrNames(match wire.names_b64 {
                Some(exact) => exact
                    .iter()
                    .map(|b64| decode_b64("names_b64", b64).map(OsString::from_vec))
                    .collect::<Result<_, _>>()?,
                None => required("names", wire.names)?
                    .into_iter()
                    .map(OsString::from)
                    .collect(),
            }),
            TreeOp::Readdir => TreeReply::Dir(DirPage {
                path: path()?,
                entries: required("entries", wire.entries)?
                    .into_iter()
                    .map(|e| {
                        Ok(DirEntry {
                            name: exact("name", Some(e.name), e.name_b64)?,
                            file_type: FileType::from_name(&e.kind),
                            ino: e.ino,
                        })
                    })
                    .collect::<Result<_, Error>>()?,
                cursor: wire.cursor,
            }),
            TreeOp::Mkdir | TreeOp::Unlink | TreeOp::Rmdir | TreeOp::Rename => TreeReply::Done {
                path: path()?,
                to: match (wire.to, wire.to_b64) {
                    (None, None) => None,
                    (to, to_b64) => Some(exact("to", to, to_b64)?.into()),
                },
                rule: required("rule", wire.rule)?,
            },
        })
    }
}

impl Client {
    /// Sends one tree request and returns the server's answer.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// use fdopen::{TreeReply, TreeRequest};
    /// match client.tree(&TreeRequest::stat("/srv/spool").nofollow(true))? {
    ///     TreeReply::Stat { stat, .. } => println!("inode {}", stat.ino),
    ///     other => unreachable!("{other:?}"),
    /// }
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn tree(&mut self, request: &TreeRequest) -> Result<TreeReply, Error> {
        self.send_tree(request)?;
        self.receive_tree(request)
    }

    /// Sends a tree request without waiting (pipelining); its answer comes
    /// from [`Client::receive_tree`], in request order.
    pub fn send_tree(&mut self, request: &TreeRequest) -> Result<(), Error> {
        let line = request.to_line()?;
        self.send_raw(&line)
    }

    /// The answer to `request`, sent earlier with [`Client::send_tree`].
    pub fn receive_tree(&mut self, request: &TreeRequest) -> Result<TreeReply, Error> {
        let line = self.receive_line()?;
        let reply = TreeReply::parse(request, &line);
        if let Err(Error::Protocol(_)) = reply
            && line_claims_fd(&line)
        {
            // Keep the descriptor FIFO in step with the responses.
            drop(self.fds.pop_front());
        }
        reply
    }

    /// Metadata of `path`, following a final symlink, like
    /// [`std::fs::metadata`].
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// let meta = client.stat("/etc/ssl/private")?;
    /// assert!(meta.is_dir());
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn stat(&mut self, path: impl AsRef<Path>) -> Result<Metadata, Error> {
        self.stat_with(TreeRequest::stat(path.as_ref()))
    }

    /// Metadata of `path` itself, a symlink included, like
    /// [`std::fs::symlink_metadata`].
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// let meta = client.symlink_metadata("/srv/app/current")?;
    /// println!("symlink: {}", meta.is_symlink());
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn symlink_metadata(&mut self, path: impl AsRef<Path>) -> Result<Metadata, Error> {
        self.stat_with(TreeRequest::stat(path.as_ref()).nofollow(true))
    }

    fn stat_with(&mut self, request: TreeRequest) -> Result<Metadata, Error> {
        match self.tree(&request)? {
            TreeReply::Stat { stat, .. } => Ok(stat),
            other => Err(unexpected(&other)),
        }
    }

    /// The target of the symlink at `path`, byte for byte.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// let target = client.read_link("/srv/app/current")?;
    /// println!("-> {}", target.display());
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn read_link(&mut self, path: impl AsRef<Path>) -> Result<PathBuf, Error> {
        match self.tree(&TreeRequest::readlink(path.as_ref()))? {
            TreeReply::Link { target, .. } => Ok(target),
            other => Err(unexpected(&other)),
        }
    }

    /// The names of the extended attributes of `path` (`user.`,
    /// `security.` and `system.` only).
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// for name in client.xattr_names("/srv/app/db.sqlite")? {
    ///     println!("{}", name.to_string_lossy());
    /// }
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn xattr_names(&mut self, path: impl AsRef<Path>) -> Result<Vec<OsString>, Error> {
        match self.tree(&TreeRequest::xattr_names(path.as_ref()))? {
            TreeReply::XattrNames(names) => Ok(names),
            other => Err(unexpected(&other)),
        }
    }

    /// The value of the extended attribute `name` of `path`; a missing
    /// one is refused `not_found` (`ENODATA`).
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// let value = client.xattr("/srv/app/db.sqlite", "user.origin".as_ref())?;
    /// # drop(value);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn xattr(&mut self, path: impl AsRef<Path>, name: &OsStr) -> Result<Vec<u8>, Error> {
        match self.tree(&TreeRequest::xattr(path.as_ref(), name))? {
            TreeReply::XattrValue(value) => Ok(value),
            other => Err(unexpected(&other)),
        }
    }

    /// The entries of the directory `path`, page after page, without `.`
    /// and `..` (as [`std::fs::read_dir`]). The first page is asked for
    /// here, so a refusal comes from this call; later pages are asked for
    /// as the iterator reaches them.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// for entry in client.read_dir("/var/spool/app")? {
    ///     let entry = entry?;
    ///     println!("{} ({})", entry.name.to_string_lossy(), entry.file_type.as_str());
    /// }
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn read_dir(&mut self, path: impl AsRef<Path>) -> Result<ReadDir<'_>, Error> {
        let asked = path.as_ref().to_owned();
        let page = self.read_dir_page(&asked, None)?;
        Ok(ReadDir {
            asked,
            path: page.path,
            cursor: page.cursor,
            entries: page.entries.into_iter(),
            client: self,
        })
    }

    /// One page of the directory `path` (`.` and `..` included); the next
    /// is asked for with the same `path` and this page's cursor.
    pub fn read_dir_page(&mut self, path: &Path, cursor: Option<String>) -> Result<DirPage, Error> {
        match self.tree(&TreeRequest::readdir(path, cursor))? {
            TreeReply::Dir(page) => Ok(page),
            other => Err(unexpected(&other)),
        }
    }

    /// Makes the directory `path` with at most `perm` (the rule's
    /// `dir_perm` masks it), like [`std::fs::DirBuilder`] with a mode.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// client.create_dir("/var/spool/app/outgoing", 0o750)?;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn create_dir(&mut self, path: impl AsRef<Path>, perm: u32) -> Result<(), Error> {
        self.change(&TreeRequest::mkdir(path.as_ref(), perm))
    }

    /// Removes the name `path`; a symlink is removed, not what it points
    /// to.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// client.remove_file("/srv/app/db.sqlite-journal")?;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn remove_file(&mut self, path: impl AsRef<Path>) -> Result<(), Error> {
        self.change(&TreeRequest::unlink(path.as_ref()))
    }

    /// Removes the empty directory `path`.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// client.remove_dir("/var/spool/app/outgoing")?;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn remove_dir(&mut self, path: impl AsRef<Path>) -> Result<(), Error> {
        self.change(&TreeRequest::rmdir(path.as_ref()))
    }

    /// Moves the regular file `from` to `to`, replacing an existing `to`
    /// only where the policy grants `delete` on it. A directory, or a
    /// move across filesystems, is refused `io_error` (`EXDEV`), as the
    /// kernel answers `rename(2)` across filesystems: copy and delete
    /// instead.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// client.rename("/srv/app/config.tmp", "/srv/app/config")?;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn rename(&mut self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<(), Error> {
        self.change(&TreeRequest::rename(from.as_ref(), to.as_ref()))
    }

    fn change(&mut self, request: &TreeRequest) -> Result<(), Error> {
        match self.tree(request)? {
            TreeReply::Done { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

/// Cannot happen: [`TreeReply::parse`] answers each op with its kind.
fn unexpected(reply: &TreeReply) -> Error {
    Error::Protocol(format!("unexpected answer {reply:?}"))
}

/// Whether a response line says `"fd": true`.
fn line_claims_fd(line: &[u8]) -> bool {
    serde_json::from_slice::<Value>(line).is_ok_and(|v| v["fd"] == true)
}

/// The entries of a directory, following the server's cursor page after
/// page; `.` and `..` are left out. Ends after the first error.
#[derive(Debug)]
pub struct ReadDir<'a> {
    client: &'a mut Client,
    /// The path as asked: each later page is asked for by it too, so the
    /// cursor goes back with the request it came from.
    asked: PathBuf,
    /// The directory's real path, as the first page reported it.
    path: PathBuf,
    entries: std::vec::IntoIter<DirEntry>,
    cursor: Option<String>,
}

impl ReadDir<'_> {
    /// The directory's real path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for ReadDir<'_> {
    type Item = Result<DirEntry, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.entries.next() {
                if is_dot(&entry.name) {
                    continue;
                }
                return Some(Ok(entry));
            }
            let cursor = self.cursor.take()?;
            match self.client.read_dir_page(&self.asked, Some(cursor)) {
                Ok(page) => {
                    self.cursor = page.cursor;
                    self.entries = page.entries.into_iter();
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// `.` or `..`.
pub fn is_dot(name: &OsStr) -> bool {
    matches!(name.as_bytes(), b"." | b"..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;
    use serde_json::json;

    fn line(request: &TreeRequest) -> Value {
        serde_json::from_slice(&request.to_line().unwrap()).unwrap()
    }

    #[test]
    fn requests_carry_exactly_their_fields() {
        assert_eq!(
            line(&TreeRequest::stat("/x").nofollow(true)),
            json!({"op":"stat","path":"/x","nofollow":true})
        );
        assert_eq!(
            line(&TreeRequest::stat("/x")),
            json!({"op":"stat","path":"/x"})
        );
        assert_eq!(
            line(&TreeRequest::mkdir("/s/d", 0o750)),
            json!({"op":"mkdir","path":"/s/d","perm":"0750"})
        );
        assert_eq!(
            line(&TreeRequest::rename("/a", "/b").noreplace(true)),
            json!({"op":"rename","path":"/a","to":"/b","noreplace":true})
        );
        assert_eq!(
            line(&TreeRequest::readdir("/d", Some("c1".into()))),
            json!({"op":"readdir","path":"/d","cursor":"c1"})
        );
        assert_eq!(
            line(&TreeRequest::xattr("/f", OsStr::new("user.a"))),
            json!({"op":"xattr","path":"/f","name":"user.a"})
        );
        for (request, op) in [
            (TreeRequest::unlink("/f"), "unlink"),
            (TreeRequest::rmdir("/f"), "rmdir"),
            (TreeRequest::readlink("/f"), "readlink"),
            (TreeRequest::xattr_names("/f"), "xattr"),
        ] {
            assert_eq!(line(&request), json!({"op": op, "path": "/f"}));
        }
    }

    #[test]
    fn within_and_bytes_that_are_not_utf8() {
        let odd = PathBuf::from(OsString::from_vec(b"/d/\xff".to_vec()));
        let within = Within {
            path: PathBuf::from(OsString::from_vec(b"/d".to_vec())),
            dev: 2049,
            ino: 77,
        };
        let request = TreeRequest::rename(&odd, "/d/ok").within(within);
        assert_eq!(
            line(&request),
            json!({"op":"rename","path_b64":"L2Qv/w==","to":"/d/ok",
                   "within":{"path":"/d","id":[2049,77]}})
        );
    }

    #[test]
    fn relative_paths_never_leave_the_client() {
        for request in [
            TreeRequest::stat("x"),
            TreeRequest::rename("/a", "b"),
            TreeRequest::stat("/a/b").within(Within {
                path: "a".into(),
                dev: 1,
                ino: 2,
            }),
        ] {
            assert!(matches!(request.to_line(), Err(Error::RelativePath(_))));
        }
    }

    const STAT: &str = r#"{"dev":2049,"ino":12,"mode":33188,"nlink":1,"uid":0,"gid":0,"rdev":0,"size":5,"blksize":4096,"blocks":8,"atime":[1,2],"mtime":[3,4],"ctime":[5,6]}"#;

    #[test]
    fn stat_answers_parse_with_unknown_fields_ignored() {
        let text =
            format!(r#"{{"id":1,"ok":true,"path":"/x","rule":"r","stat":{STAT},"later":[1]}}"#);
        let reply = TreeReply::parse(&TreeRequest::stat("/x"), text.as_bytes()).unwrap();
        let TreeReply::Stat { path, rule, stat } = reply else {
            panic!("{reply:?}")
        };
        assert_eq!((path.as_os_str(), rule.as_str()), (OsStr::new("/x"), "r"));
        assert!(stat.is_file() && !stat.is_dir());
        assert_eq!(stat.permissions(), 0o644);
        assert_eq!(stat.mtime, Timestamp { sec: 3, nsec: 4 });
        assert_eq!(stat.btime, None);
        // The wire form round-trips, for `stat --json`.
        assert_eq!(
            serde_json::to_value(&stat).unwrap(),
            serde_json::from_str::<Value>(STAT).unwrap()
        );
    }

    #[test]
    fn b64_twins_win_over_lossy_text() {
        let text = r#"{"ok":true,"path":"/d/\ufffd","path_b64":"L2Qv/w==","target":"x\ufffd","target_b64":"eP4="}"#;
        let reply = TreeReply::parse(&TreeRequest::readlink("/d/x"), text.as_bytes()).unwrap();
        assert_eq!(
            reply,
            TreeReply::Link {
                path: OsString::from_vec(b"/d/\xff".to_vec()).into(),
                target: OsString::from_vec(b"x\xfe".to_vec()).into(),
            }
        );
    }

    #[test]
    fn dir_pages_keep_order_types_and_cursor() {
        let text = r#"{"ok":true,"path":"/d","rule":"r","entries":[
            {"name":".","type":"dir","ino":2},{"name":"a","type":"file","ino":3},
            {"name":"\ufffd","name_b64":"/w==","type":"whiteout","ino":4}],"cursor":"k"}"#
            .replace('\n', "");
        let reply = TreeReply::parse(&TreeRequest::readdir("/d", None), text.as_bytes()).unwrap();
        let TreeReply::Dir(page) = reply else {
            panic!()
        };
        assert_eq!(page.cursor.as_deref(), Some("k"));
        let names: Vec<&[u8]> = page.entries.iter().map(|e| e.name.as_bytes()).collect();
        assert_eq!(names, [&b"."[..], b"a", b"\xff"]);
        let types: Vec<FileType> = page.entries.iter().map(|e| e.file_type).collect();
        assert_eq!(types, [FileType::Dir, FileType::File, FileType::Unknown]);
    }

    #[test]
    fn xattr_names_and_values() {
        let names = TreeReply::parse(
            &TreeRequest::xattr_names("/f"),
            br#"{"ok":true,"path":"/f","rule":"r","names":["user.a","user.\ufffd"],"names_b64":["dXNlci5h","dXNlci7/"]}"#,
        )
        .unwrap();
        assert_eq!(
            names,
            TreeReply::XattrNames(vec![
                "user.a".into(),
                OsString::from_vec(b"user.\xff".to_vec())
            ])
        );
        let value = TreeReply::parse(
            &TreeRequest::xattr("/f", OsStr::new("user.a")),
            br#"{"ok":true,"path":"/f","value_b64":"AAE="}"#,
        )
        .unwrap();
        assert_eq!(value, TreeReply::XattrValue(vec![0, 1]));
    }

    #[test]
    fn changes_report_path_to_and_rule() {
        let reply = TreeReply::parse(
            &TreeRequest::rename("/a", "/b"),
            br#"{"ok":true,"path":"/a","to":"/b","rule":"spool"}"#,
        )
        .unwrap();
        assert_eq!(
            reply,
            TreeReply::Done {
                path: "/a".into(),
                to: Some("/b".into()),
                rule: "spool".into()
            }
        );
        let made = TreeReply::parse(
            &TreeRequest::mkdir("/d", 0o700),
            br#"{"ok":true,"path":"/d","rule":"r","created":true}"#,
        )
        .unwrap();
        assert!(matches!(made, TreeReply::Done { to: None, .. }));
    }

    #[test]
    fn refusals_carry_code_and_errno() {
        let err = TreeReply::parse(
            &TreeRequest::rmdir("/d"),
            br#"{"ok":false,"error":{"code":"io_error","errno":"ENOTEMPTY","message":"not empty"}}"#,
        )
        .unwrap_err();
        let Error::Refused(refusal) = err else {
            panic!("{err:?}")
        };
        assert_eq!(refusal.code, ErrorCode::IoError);
        assert_eq!(refusal.raw_os_error(), Some(libc::ENOTEMPTY));
    }

    #[test]
    fn malformed_answers_are_protocol_errors() {
        for text in [
            &br#"{"ok":true,"path":"/x","rule":"r"}"#[..],
            br#"{"ok":true,"path":"/x","rule":"r","stat":{"dev":1}}"#,
            br#"{"ok":true,"path_b64":"!!","rule":"r"}"#,
            br#"{"ok":false}"#,
            b"not json",
        ] {
            let err = TreeReply::parse(&TreeRequest::stat("/x"), text).unwrap_err();
            assert!(matches!(err, Error::Protocol(_)), "{err:?}");
        }
    }

    #[test]
    fn file_types_from_mode() {
        assert_eq!(FileType::from_mode(0o040755), FileType::Dir);
        assert_eq!(FileType::from_mode(0o120777), FileType::Symlink);
        assert_eq!(FileType::from_mode(0o020620), FileType::Char);
        assert_eq!(FileType::from_mode(0), FileType::Unknown);
    }
}
