//! The time zone `stat` and `ls -l` show times in, read as glibc (and so
//! stat(1) and ls(1)) reads `TZ`: a name that is both a zoneinfo file and
//! a POSIX zone string (`EST5EDT`, `PST8PDT`) is the file. musl, which
//! the shipped client links, takes the string, with no daylight rules of
//! its own, and shows a January time in daylight saving; a leading `:`
//! makes it read the file.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Where both libcs look for a zone named in `TZ`.
const ZONEINFO: &str = "/usr/share/zoneinfo";

/// Makes `TZ` name its zoneinfo file explicitly where musl would read it
/// otherwise than glibc; nothing under glibc.
///
/// # Safety
///
/// Changes the environment: no other thread may read or write it (the
/// client calls this before `stat` or `ls`, on its only thread, and
/// execs nothing afterwards).
pub unsafe fn read_tz_as_glibc_does() {
    if !cfg!(target_env = "musl") {
        return;
    }
    let Some(tz) = std::env::var_os("TZ") else {
        return;
    };
    if let Some(explicit) = explicit_zone(&tz, |file| file.is_file()) {
        // SAFETY: as the caller promised.
        unsafe { std::env::set_var("TZ", explicit) };
    }
}

/// `:NAME` for a `TZ` of `NAME` that names a file under [`ZONEINFO`]
/// (`is_file`) without being a path already: no `:` first, no `/`, no
/// `,` (a string with rules is a POSIX zone to both libcs).
fn explicit_zone(tz: &OsStr, is_file: impl Fn(&Path) -> bool) -> Option<OsString> {
    let name = tz.as_bytes();
    if name.is_empty() || name.starts_with(b":") || name.iter().any(|b| b"/,".contains(b)) {
        return None;
    }
    if !is_file(&Path::new(ZONEINFO).join(tz)) {
        return None;
    }
    let mut explicit = OsString::from(":");
    explicit.push(tz);
    Some(explicit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit(tz: &str) -> Option<String> {
        let zones = ["/usr/share/zoneinfo/EST5EDT", "/usr/share/zoneinfo/UTC"];
        explicit_zone(OsStr::new(tz), |p| zones.contains(&p.to_str().unwrap()))
            .map(|z| z.into_string().unwrap())
    }

    #[test]
    fn only_a_bare_name_of_a_zoneinfo_file_is_made_explicit() {
        assert_eq!(explicit("EST5EDT").as_deref(), Some(":EST5EDT"));
        assert_eq!(explicit("UTC").as_deref(), Some(":UTC"));
        assert_eq!(explicit(":EST5EDT"), None);
        assert_eq!(explicit("EST5EDT,M3.2.0,M11.1.0"), None);
        assert_eq!(explicit("CET-1CEST"), None);
        assert_eq!(explicit("../../../etc/EST5EDT"), None);
        assert_eq!(explicit(""), None);
    }
}
