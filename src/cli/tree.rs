//! `fdopen-client stat | readlink | ls | mkdir | rm | rmdir | mv` (SPEC v3
//! §3.6, §7): the tree operations, printed as coreutils users expect
//! (`stat(1)` fields, `ls -l` columns, `ls` order), silent on success
//! where coreutils is.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{Value, json};

use super::exit;
use crate::client::{
    Client, DirEntry, Error, FileType, Metadata, Timestamp, TreeReply, TreeRequest, major_minor,
};
use crate::protocol::{json_path, parse_perm};

#[derive(Debug, Subcommand)]
pub enum TreeCommand {
    /// Show a file's metadata in stat(1)'s layout; a final symlink is
    /// followed unless --nofollow (stat(1)'s default is the other way).
    Stat {
        path: PathBuf,
        /// Describe a final symlink itself, not the file it points to.
        #[arg(long)]
        nofollow: bool,
        /// Print the server's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the target of a symlink.
    Readlink { path: PathBuf },
    /// List a directory, sorted as ls sorts (by the locale's collation).
    Ls {
        dir: PathBuf,
        /// Long listing: mode, links, owner, group, size, mtime, name
        /// (`?` where `stat` is refused).
        #[arg(short = 'l')]
        long: bool,
        /// Include names starting with `.`, and `.` and `..`.
        #[arg(short = 'a')]
        all: bool,
        /// Print the listing as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Make a directory.
    Mkdir {
        path: PathBuf,
        /// Permission bits in octal (the rule's `dir_perm` masks them).
        #[arg(long, value_name = "MODE", value_parser = parse_perm, default_value = "0700")]
        perm: u32,
    },
    /// Remove a file or symlink (never what a symlink points to).
    Rm { path: PathBuf },
    /// Remove an empty directory.
    Rmdir { path: PathBuf },
    /// Rename a regular file within one filesystem; NEW is the new name
    /// (a directory there is not moved into).
    Mv {
        old: PathBuf,
        new: PathBuf,
        /// Never replace an existing NEW.
        #[arg(long)]
        no_replace: bool,
    },
}

/// Runs one tree command; a refusal comes back as `Err` for the caller
/// to report (exit 1), except with `--json`, which prints it.
///
/// # Safety
///
/// May change the environment (`TZ`, see `cli::zone`): only on a
/// single-threaded client that execs nothing afterwards.
pub unsafe fn run(client: &mut Client, command: TreeCommand) -> Result<i32, Error> {
    // SAFETY: as the caller promised.
    unsafe { super::zone::read_tz_as_glibc_does() };
    let mut out = io::stdout().lock();
    match command {
        TreeCommand::Stat {
            path,
            nofollow,
            json,
        } => {
            let request = TreeRequest::stat(absolute(&path)).nofollow(nofollow);
            let reply = client.tree(&request);
            if json {
                return print_json(&mut out, reply.map(|r| (reply_json(&r), exit::OK)));
            }
            let TreeReply::Stat { stat, .. } = reply? else {
                return Err(Error::Protocol("stat answered without metadata".into()));
            };
            let target = if stat.is_symlink() {
                client.read_link(absolute(&path)).ok()
            } else {
                None
            };
            let mut names = System::new();
            emit(
                &mut out,
                &stat_text(path.as_os_str(), target.as_deref(), &stat, &mut names),
            )?;
        }
        TreeCommand::Readlink { path } => {
            let mut target = client
                .read_link(absolute(&path))?
                .into_os_string()
                .into_vec();
            target.push(b'\n');
            emit(&mut out, &target)?;
        }
        TreeCommand::Ls {
            dir,
            long,
            all,
            json,
        } => {
            let dir = absolute(&dir);
            let listing = list(client, &dir, all, long);
            // Like ls: an entry that could not be looked at makes the exit
            // status 1 (and is said on stderr, or in the JSON).
            let code = |listing: &Listing| match listing.refused().next() {
                Some(_) => exit::REFUSED,
                None => exit::OK,
            };
            if json {
                return print_json(&mut out, listing.map(|l| (l.to_json(), code(&l))));
            }
            let listing = listing?;
            let text = if long {
                long_listing(&listing, &mut System::new())
            } else {
                listing.names()
            };
            emit(&mut out, &text)?;
            for (name, e) in listing.refused() {
                let path = dir.join(name);
                crate::logging::error(format_args!("cannot stat {}: {e}", path.display()));
            }
            return Ok(code(&listing));
        }
        TreeCommand::Mkdir { path, perm } => client.create_dir(absolute(&path), perm)?,
        TreeCommand::Rm { path } => client.remove_file(absolute(&path))?,
        TreeCommand::Rmdir { path } => client.remove_dir(absolute(&path))?,
        TreeCommand::Mv {
            old,
            new,
            no_replace,
        } => {
            let request = TreeRequest::rename(absolute(&old), absolute(&new)).noreplace(no_replace);
            client.tree(&request)?;
        }
    }
    Ok(exit::OK)
}

/// Writes all of `bytes`; `| head` closing the pipe early is not a
/// failure.
fn emit(out: &mut impl Write, bytes: &[u8]) -> Result<(), Error> {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(Error::Io(e)),
        _ => Ok(()),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// Prints an answer (with its exit code) or a refusal (exit 1) as JSON.
fn print_json(out: &mut impl Write, answer: Result<(Value, i32), Error>) -> Result<i32, Error> {
    let (value, code) = match answer {
        Ok(answer) => answer,
        Err(Error::Refused(e)) => (json!({"ok": false, "error": e}), exit::REFUSED),
        Err(e) => return Err(e),
    };
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    emit(out, &line)?;
    Ok(code)
}

/// A path as JSON fields: `key` (lossy) plus `key_b64` where not UTF-8.
fn put_path(value: &mut Value, key: &str, path: &OsStr) {
    let (text, b64) = json_path(Path::new(path));
    value[key] = text.into_owned().into();
    if let Some(b64) = b64 {
        value[format!("{key}_b64")] = b64.into();
    }
}

/// A tree answer as the server sent it (SPEC §3.6 table).
fn reply_json(reply: &TreeReply) -> Value {
    let mut value = json!({"ok": true});
    if let TreeReply::Stat { path, rule, stat } = reply {
        put_path(&mut value, "path", path.as_os_str());
        value["rule"] = rule.as_str().into();
        value["stat"] = serde_json::to_value(stat).expect("metadata serialises");
    }
    value
}

/// What the user and group ids are called here, and what time it is
/// where the user is: the system's answers, or fixed ones in tests.
trait Names {
    fn user(&mut self, uid: u32) -> Option<String>;
    fn group(&mut self, gid: u32) -> Option<String>;
    fn civil(&self, sec: i64) -> Civil;
    fn now(&self) -> i64;
}

/// The passwd and group databases, looked up once per id, and the
/// local time zone.
struct System {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl System {
    fn new() -> System {
        System {
            users: HashMap::new(),
            groups: HashMap::new(),
        }
    }
}

impl Names for System {
    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }

    fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }

    fn civil(&self, sec: i64) -> Civil {
        Civil::local(sec)
    }

    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }
}

/// A moment as a calendar shows it, with its offset from UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    /// 1 to 12.
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// Seconds east of UTC.
    offset: i64,
}

impl Civil {
    /// In the local time zone (`TZ`, else /etc/localtime), as `stat` and
    /// `ls` show times.
    fn local(sec: i64) -> Civil {
        // SAFETY: localtime_r writes only the tm we own; a zeroed tm is a
        // valid value of the plain C struct.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // time_t, inferred from localtime_r's argument: the libc crate
        // deprecates musl's alias (the static client is built for musl).
        let t = sec as _;
        // SAFETY: both pointers are to live locals.
        if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
            return Civil::utc(sec);
        }
        Civil {
            year: tm.tm_year as i64 + 1900,
            month: tm.tm_mon as u32 + 1,
            day: tm.tm_mday as u32,
            hour: tm.tm_hour as u32,
            minute: tm.tm_min as u32,
            second: tm.tm_sec as u32,
            offset: tm.tm_gmtoff,
        }
    }

    /// In UTC, by the civil-from-days algorithm (no libc, any year).
    fn utc(sec: i64) -> Civil {
        let days = sec.div_euclid(86_400);
        let rest = sec.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: (rest / 3600) as u32,
            minute: (rest / 60 % 60) as u32,
            second: (rest % 60) as u32,
            offset: 0,
        }
    }
}

/// `2026-11-26 12:54:44.481513029 +0000`, as `stat` prints times.
fn stat_time(ts: Timestamp, names: &impl Names) -> String {
    let c = names.civil(ts.sec);
    let sign = if c.offset < 0 { '-' } else { '+' };
    let offset = c.offset.abs();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:09} {sign}{:02}{:02}",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        ts.nsec,
        offset / 3600,
        offset / 60 % 60
    )
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Nov 26 13:00` within the last six months, else `May 20  2025`, as
/// `ls -l` prints an mtime.
fn ls_time(ts: Timestamp, names: &impl Names) -> String {
    const SIX_MONTHS: i64 = 31_556_952 / 2;
    let c = names.civil(ts.sec);
    let month = MONTHS[(c.month as usize - 1) % 12];
    let now = names.now();
    if ts.sec > now - SIX_MONTHS && ts.sec <= now {
        format!("{month} {:>2} {:02}:{:02}", c.day, c.hour, c.minute)
    } else {
        format!("{month} {:>2} {:>5}", c.day, c.year)
    }
}

/// `-rw-r--r--`, set-id and sticky bits included, as `ls -l` and `stat`
/// show a mode.
fn mode_string(mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(type_char(FileType::from_mode(mode)));
    let bit = |mask: u32, c: char| if mode & mask != 0 { c } else { '-' };
    let special = |x: bool, special: bool, set: char| match (x, special) {
        (true, true) => set,
        (false, true) => set.to_ascii_uppercase(),
        (true, false) => 'x',
        (false, false) => '-',
    };
    for (shift, special_bit, set) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        s.push(bit(0o4 << shift, 'r'));
        s.push(bit(0o2 << shift, 'w'));
        s.push(special(
            mode & (0o1 << shift) != 0,
            mode & special_bit != 0,
            set,
        ));
    }
    s
}

fn type_char(kind: FileType) -> char {
    match kind {
        FileType::File => '-',
        FileType::Dir => 'd',
        FileType::Symlink => 'l',
        FileType::Fifo => 'p',
        FileType::Socket => 's',
        FileType::Char => 'c',
        FileType::Block => 'b',
        FileType::Unknown => '?',
    }
}

/// What `stat` calls a file's type (`%F`).
fn type_name(stat: &Metadata) -> &'static str {
    match stat.file_type() {
        FileType::File if stat.size == 0 => "regular empty file",
        FileType::File => "regular file",
        FileType::Dir => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::Char => "character special file",
        FileType::Block => "block special file",
        FileType::Unknown => "weird file",
    }
}

/// `stat(1)`'s default output for `name` (as the user typed it).
fn stat_text(
    name: &OsStr,
    target: Option<&Path>,
    stat: &Metadata,
    names: &mut impl Names,
) -> Vec<u8> {
    let mut out = b"  File: ".to_vec();
    out.extend_from_slice(name.as_bytes());
    if let Some(target) = target {
        out.extend_from_slice(b" -> ");
        out.extend_from_slice(target.as_os_str().as_bytes());
    }
    let (major, minor) = major_minor(stat.dev);
    let device_type = match stat.file_type() {
        FileType::Char | FileType::Block => {
            let (rmajor, rminor) = major_minor(stat.rdev);
            format!(" Device type: {rmajor},{rminor}")
        }
        _ => String::new(),
    };
    let links = if device_type.is_empty() {
        stat.nlink.to_string()
    } else {
        format!("{:<5}", stat.nlink)
    };
    let user = names.user(stat.uid).unwrap_or_else(|| "UNKNOWN".into());
    let group = names.group(stat.gid).unwrap_or_else(|| "UNKNOWN".into());
    let birth = stat
        .btime
        .map_or_else(|| "-".into(), |t| stat_time(t, names));
    let text = format!(
        "\n  Size: {:<10}\tBlocks: {:<10} IO Block: {:<6} {}\n\
         Device: {major},{minor}\tInode: {:<11} Links: {links}{device_type}\n\
         Access: ({:04o}/{})  Uid: ({:>5}/{:>8})   Gid: ({:>5}/{:>8})\n\
         Access: {}\nModify: {}\nChange: {}\n Birth: {birth}\n",
        stat.size,
        stat.blocks,
        stat.blksize,
        type_name(stat),
        stat.ino,
        stat.permissions(),
        mode_string(stat.mode),
        stat.uid,
        user,
        stat.gid,
        group,
        stat_time(stat.atime, names),
        stat_time(stat.mtime, names),
        stat_time(stat.ctime, names),
    );
    out.extend_from_slice(text.as_bytes());
    out
}

/// One listed entry and, for `-l`, what `stat` and `readlink` said.
struct Listed {
    entry: DirEntry,
    stat: Option<Result<Metadata, Error>>,
    target: Option<PathBuf>,
}

/// A directory's entries in `ls` order.
struct Listing {
    path: PathBuf,
    entries: Vec<Listed>,
}

/// Pipelined `stat` requests on the way (bounded, so neither side's
/// socket buffer fills while the other waits).
const STAT_WINDOW: usize = 64;

/// Reads every page of `dir`; with `long`, `stat`s every entry (without
/// following symlinks, as `ls -l`) and reads each symlink's target.
fn list(client: &mut Client, dir: &Path, all: bool, long: bool) -> Result<Listing, Error> {
    let mut page = client.read_dir_page(dir, None)?;
    let path = page.path.clone();
    let mut entries = Vec::new();
    loop {
        entries.extend(
            page.entries
                .into_iter()
                .filter(|e| all || !e.name.as_bytes().starts_with(b"."))
                .map(|entry| Listed {
                    entry,
                    stat: None,
                    target: None,
                }),
        );
        let Some(cursor) = page.cursor else { break };
        page = client.read_dir_page(dir, Some(cursor))?;
    }
    let mut entries = sort_like_ls(entries);
    if long {
        // By the path asked, as ls lstats DIR/NAME.
        stat_all(client, dir, &mut entries)?;
    }
    Ok(Listing { path, entries })
}

/// Sorts by the locale's collation (`LC_COLLATE`), as `ls` does; bytes
/// break ties.
fn sort_like_ls(entries: Vec<Listed>) -> Vec<Listed> {
    // SAFETY: setlocale with a valid C string; the CLI is single-threaded
    // here and only collation is changed.
    unsafe { libc::setlocale(libc::LC_COLLATE, c"".as_ptr()) };
    let mut keyed: Vec<(CString, Listed)> = entries
        .into_iter()
        .map(|e| (CString::new(e.entry.name.as_bytes()).unwrap_or_default(), e))
        .collect();
    keyed.sort_by(|(a, x), (b, y)| {
        // SAFETY: both are NUL-terminated strings that live across the call.
        let c = unsafe { libc::strcoll(a.as_ptr(), b.as_ptr()) };
        c.cmp(&0).then_with(|| x.entry.name.cmp(&y.entry.name))
    });
    keyed.into_iter().map(|(_, e)| e).collect()
}

/// `stat` (nofollow) for every entry, pipelined; `readlink` for symlinks.
fn stat_all(client: &mut Client, dir: &Path, entries: &mut [Listed]) -> Result<(), Error> {
    let requests: Vec<TreeRequest> = entries
        .iter()
        .map(|e| TreeRequest::stat(dir.join(&e.entry.name)).nofollow(true))
        .collect();
    for (chunk, listed) in requests
        .chunks(STAT_WINDOW)
        .zip(entries.chunks_mut(STAT_WINDOW))
    {
        for request in chunk {
            client.send_tree(request)?;
        }
        for (request, listed) in chunk.iter().zip(listed.iter_mut()) {
            listed.stat = Some(match client.receive_tree(request) {
                Ok(TreeReply::Stat { stat, .. }) => Ok(stat),
                Ok(_) => Err(Error::Protocol("stat answered without metadata".into())),
                Err(e @ Error::Refused(_)) => Err(e),
                Err(e) => return Err(e),
            });
        }
    }
    for listed in entries.iter_mut() {
        if let Some(Ok(stat)) = &listed.stat
            && stat.is_symlink()
        {
            listed.target = client.read_link(dir.join(&listed.entry.name)).ok();
        }
    }
    Ok(())
}

impl Listing {
    /// The entries whose `stat` was refused, with the refusal.
    fn refused(&self) -> impl Iterator<Item = (&OsStr, &Error)> {
        self.entries.iter().filter_map(|l| match &l.stat {
            Some(Err(e)) => Some((l.entry.name.as_os_str(), e)),
            _ => None,
        })
    }

    /// One name a line, as `ls` writes to a pipe.
    fn names(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for listed in &self.entries {
            out.extend_from_slice(listed.entry.name.as_bytes());
            out.push(b'\n');
        }
        out
    }

    fn to_json(&self) -> Value {
        let mut value = json!({"ok": true});
        put_path(&mut value, "path", self.path.as_os_str());
        let entries: Vec<Value> = self
            .entries
            .iter()
            .map(|listed| {
                let e = &listed.entry;
                let mut v = json!({"type": e.file_type.as_str(), "ino": e.ino});
                put_path(&mut v, "name", &e.name);
                match &listed.stat {
                    Some(Ok(stat)) => v["stat"] = serde_json::to_value(stat).expect("serialises"),
                    Some(Err(Error::Refused(refusal))) => v["error"] = json!(refusal),
                    _ => {}
                }
                if let Some(target) = &listed.target {
                    put_path(&mut v, "target", target.as_os_str());
                }
                v
            })
            .collect();
        value["entries"] = entries.into();
        value
    }
}

/// The major and minor numbers of a character or block device.
fn device_numbers(stat: &Metadata) -> Option<(u32, u32)> {
    matches!(stat.file_type(), FileType::Char | FileType::Block).then(|| major_minor(stat.rdev))
}

/// `ls -l`: a `total` line, then one aligned row per entry.
fn long_listing(listing: &Listing, names: &mut impl Names) -> Vec<u8> {
    let mut rows: Vec<[String; 6]> = listing
        .entries
        .iter()
        .map(|listed| match &listed.stat {
            Some(Ok(stat)) => [
                mode_string(stat.mode),
                stat.nlink.to_string(),
                names.user(stat.uid).unwrap_or_else(|| stat.uid.to_string()),
                names
                    .group(stat.gid)
                    .unwrap_or_else(|| stat.gid.to_string()),
                // A device's numbers are filled in below, aligned.
                device_numbers(stat).map_or_else(|| stat.size.to_string(), |_| String::new()),
                ls_time(stat.mtime, names),
            ],
            _ => [
                format!("{}?????????", type_char(listed.entry.file_type)),
                "?".into(),
                "?".into(),
                "?".into(),
                "?".into(),
                "?".into(),
            ],
        })
        .collect();
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let mut widths: Vec<usize> = (0..6).map(width).collect();
    // A `?` date takes a date's width, as in ls.
    widths[5] = widths[5].max("Jan  1 00:00".len());
    // Devices show `MAJOR, MINOR` in the size column, each number aligned
    // in its own sub-column, as ls does.
    let devices: Vec<(usize, (u32, u32))> = listing
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, l)| Some((i, device_numbers(l.stat.as_ref()?.as_ref().ok()?)?)))
        .collect();
    let digits = |n: u32| n.to_string().len();
    let major_width = devices.iter().map(|(_, (m, _))| digits(*m)).max();
    let minor_width = devices.iter().map(|(_, (_, m))| digits(*m)).max();
    if let (Some(major_width), Some(minor_width)) = (major_width, minor_width) {
        widths[4] = widths[4].max(major_width + 2 + minor_width);
        let major_width = widths[4] - 2 - minor_width;
        for (i, (major, minor)) in devices {
            rows[i][4] = format!("{major:>major_width$}, {minor:>minor_width$}");
        }
    }
    let total: u64 = listing
        .entries
        .iter()
        .filter_map(|l| l.stat.as_ref()?.as_ref().ok())
        .map(|s| s.blocks)
        .sum();
    let mut out = format!("total {}\n", total.div_ceil(2)).into_bytes();
    for (row, listed) in rows.iter().zip(&listing.entries) {
        let line = format!(
            "{} {:>w1$} {:<w2$} {:<w3$} {:>w4$} {:>w5$} ",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
            w5 = widths[5],
        );
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(listed.entry.name.as_bytes());
        if let Some(target) = &listed.target {
            out.extend_from_slice(b" -> ");
            out.extend_from_slice(target.as_os_str().as_bytes());
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    /// Fixed names and UTC, for output that does not depend on the host.
    struct Fixed;

    impl Names for Fixed {
        fn user(&mut self, uid: u32) -> Option<String> {
            (uid == 0).then(|| "root".into())
        }
        fn group(&mut self, gid: u32) -> Option<String> {
            (gid == 0).then(|| "wheel".into())
        }
        fn civil(&self, sec: i64) -> Civil {
            Civil::utc(sec)
        }
        fn now(&self) -> i64 {
            1_795_000_000 // 2026-11-18
        }
    }

    fn ts(sec: i64, nsec: u32) -> Timestamp {
        Timestamp { sec, nsec }
    }

    /// What the server would say of `path`, from the kernel directly.
    fn metadata_of(path: &Path) -> Metadata {
        let m = std::fs::symlink_metadata(path).unwrap();
        let btime = m.created().ok().map(|t| {
            let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
            ts(d.as_secs() as i64, d.subsec_nanos())
        });
        Metadata {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            nlink: m.nlink(),
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev(),
            size: m.size(),
            blksize: m.blksize(),
            blocks: m.blocks(),
            atime: ts(m.atime(), m.atime_nsec() as u32),
            mtime: ts(m.mtime(), m.mtime_nsec() as u32),
            ctime: ts(m.ctime(), m.ctime_nsec() as u32),
            btime,
        }
    }

    /// The real tool's output, or `None` (with the reason) where it is
    /// missing.
    fn coreutils(program: &str, args: &[&OsStr]) -> Option<Vec<u8>> {
        match Command::new(program).env("LC_ALL", "C").args(args).output() {
            Ok(out) if out.status.success() => Some(out.stdout),
            other => {
                eprintln!("skipped: {program} unavailable ({other:?})");
                None
            }
        }
    }

    #[test]
    fn modes_read_as_ls_shows_them() {
        assert_eq!(mode_string(0o100644), "-rw-r--r--");
        assert_eq!(mode_string(0o040755), "drwxr-xr-x");
        assert_eq!(mode_string(0o041777), "drwxrwxrwt");
        assert_eq!(mode_string(0o041776), "drwxrwxrwT");
        assert_eq!(mode_string(0o104755), "-rwsr-xr-x");
        assert_eq!(mode_string(0o102644), "-rw-r-Sr--");
        assert_eq!(mode_string(0o120777), "lrwxrwxrwx");
        assert_eq!(mode_string(0o020666), "crw-rw-rw-");
    }

    #[test]
    fn utc_calendar_matches_known_dates() {
        let c = Civil::utc(1_732_400_000);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute, c.second),
            (2024, 11, 23, 22, 13, 20)
        );
        let c = Civil::utc(-1);
        assert_eq!((c.year, c.month, c.day, c.second), (1969, 12, 31, 59));
        let c = Civil::utc(951_782_400); // 2000-02-29
        assert_eq!((c.year, c.month, c.day), (2000, 2, 29));
    }

    #[test]
    fn ls_times_show_the_year_only_when_old_or_future() {
        assert_eq!(ls_time(ts(1_794_900_000, 0), &Fixed), "Nov 17 07:20");
        assert_eq!(ls_time(ts(1_732_400_000, 0), &Fixed), "Nov 23  2024");
        assert_eq!(ls_time(ts(1_795_100_000, 0), &Fixed), "Nov 19  2026");
    }

    #[test]
    fn stat_text_has_every_field_of_stat1() {
        let stat = Metadata {
            dev: libc::makedev(254, 0),
            ino: 737,
            mode: 0o100600,
            nlink: 1,
            uid: 0,
            gid: 42,
            rdev: 0,
            size: 1221,
            blksize: 4096,
            blocks: 8,
            atime: ts(1_732_400_000, 5),
            mtime: ts(1_732_400_000, 123_456_789),
            ctime: ts(1_732_400_001, 0),
            btime: None,
        };
        let text = stat_text(OsStr::new("key.pem"), None, &stat, &mut Fixed);
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "  File: key.pem\n  Size: 1221      \tBlocks: 8          IO Block: 4096   regular file\n\
             Device: 254,0\tInode: 737         Links: 1\n\
             Access: (0600/-rw-------)  Uid: (    0/    root)   Gid: (   42/ UNKNOWN)\n\
             Access: 2024-11-23 22:13:20.000000005 +0000\n\
             Modify: 2024-11-23 22:13:20.123456789 +0000\n\
             Change: 2024-11-23 22:13:21.000000000 +0000\n Birth: -\n"
        );
    }

    #[test]
    fn stat_text_matches_coreutils_stat() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("target name", &link).unwrap();
        let cases: [(&Path, Option<&Path>); 4] = [
            (Path::new("/etc/passwd"), None),
            (Path::new("/dev/null"), None),
            (dir.path(), None),
            (&link, Some(Path::new("target name"))),
        ];
        for (path, target) in cases {
            // Before stat(1), whose readlink of a symlink moves its atime.
            let meta = metadata_of(path);
            let Some(expected) = coreutils("stat", &[path.as_os_str()]) else {
                return;
            };
            let ours = stat_text(path.as_os_str(), target, &meta, &mut System::new());
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&expected),
                "{}",
                path.display()
            );
        }
    }

    fn listed(dir: &Path, name: &str, stat: Option<Metadata>) -> Listed {
        let path = dir.join(name);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        Listed {
            entry: DirEntry {
                name: name.into(),
                file_type: FileType::from_mode(meta.mode()),
                ino: meta.ino(),
            },
            target: stat
                .as_ref()
                .filter(|s| s.is_symlink())
                .map(|_| std::fs::read_link(&path).unwrap()),
            stat: stat.map(Ok),
        }
    }

    #[test]
    fn long_listing_matches_coreutils_ls() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alpha"), "some bytes").unwrap();
        std::fs::create_dir(dir.path().join("beta")).unwrap();
        std::os::unix::fs::symlink("alpha", dir.path().join("gamma")).unwrap();
        std::fs::write(dir.path().join("delta"), vec![7u8; 70_000]).unwrap();
        let names = ["alpha", "beta", "delta", "gamma"];
        let entries = names
            .iter()
            .map(|n| listed(dir.path(), n, Some(metadata_of(&dir.path().join(n)))))
            .collect();
        let listing = Listing {
            path: dir.path().into(),
            entries: sort_like_ls(entries),
        };
        let Some(expected) = coreutils("ls", &[OsStr::new("-l"), dir.path().as_os_str()]) else {
            return;
        };
        let ours = long_listing(&listing, &mut System::new());
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&expected)
        );
        assert_eq!(listing.names(), b"alpha\nbeta\ndelta\ngamma\n");
    }

    #[test]
    fn devices_align_like_coreutils_ls() {
        let dev = Path::new("/dev");
        let Ok(read) = std::fs::read_dir(dev) else {
            return;
        };
        let entries = read
            .map(|e| {
                let name = e.unwrap().file_name();
                let name = name.to_str().unwrap();
                listed(dev, name, Some(metadata_of(&dev.join(name))))
            })
            .filter(|l| !l.entry.name.as_bytes().starts_with(b"."))
            .collect();
        let listing = Listing {
            path: dev.into(),
            entries: sort_like_ls(entries),
        };
        let Some(expected) = coreutils("ls", &[OsStr::new("-l"), dev.as_os_str()]) else {
            return;
        };
        assert_eq!(
            String::from_utf8_lossy(&long_listing(&listing, &mut System::new())),
            String::from_utf8_lossy(&expected)
        );
    }

    #[test]
    fn refused_stats_show_question_marks_as_ls_does() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("hidden")).unwrap();
        std::fs::write(dir.path().join("shown"), "x").unwrap();
        let mut shown = metadata_of(&dir.path().join("shown"));
        shown.mtime = ts(1_794_900_000, 0);
        let listing = Listing {
            path: dir.path().into(),
            entries: vec![
                listed(dir.path(), "hidden", None),
                listed(dir.path(), "shown", Some(shown)),
            ],
        };
        let text = String::from_utf8(long_listing(&listing, &mut Fixed)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "d????????? ? ?    ?     ?            ? hidden");
        assert_eq!(lines[2], "-rw-r--r-- 1 root wheel 1 Nov 17 07:20 shown");
    }
}
