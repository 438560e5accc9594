//! The man pages: the daemon's in section 8 and the client's in section
//! 1, none for `help` nor named plain `fdopen` (libc's fdopen(3)), every
//! cross-reference to a page that exists, and every page, generated or
//! written by hand in doc/, rendered at 80 columns without a troff warning;
//! and no text a user reads cites the SPEC, which does not ship.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{SERVER, scratch};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `fdopen-server man DIR` and the pages of doc/: (section dir, file).
fn all_pages(dir: &Path) -> Vec<PathBuf> {
    let out = Command::new(SERVER).arg("man").arg(dir).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut pages = Vec::new();
    for section in fs::read_dir(dir).unwrap() {
        for page in fs::read_dir(section.unwrap().path()).unwrap() {
            pages.push(page.unwrap().path());
        }
    }
    for page in fs::read_dir(Path::new(ROOT).join("doc")).unwrap() {
        pages.push(page.unwrap().path());
    }
    pages.sort();
    pages
}

fn name_of(page: &Path) -> String {
    page.file_name().unwrap().to_str().unwrap().to_owned()
}

#[test]
fn the_daemon_is_in_section_8_and_every_reference_exists() {
    let dir = scratch();
    let pages = all_pages(dir.path());
    let names: Vec<String> = pages.iter().map(|p| name_of(p)).collect();
    for expected in [
        "fdopen-server.8",
        "fdopen-server-serve.8",
        "fdopen-client.1",
        "fdopen-client-open.1",
        "fdopen-policy.5",
        "fdopen-protocol.7",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
    }
    for name in &names {
        assert!(!name.starts_with("fdopen."), "{name} shadows fdopen(3)");
        assert!(!name.contains("-help."), "{name}: help has no page");
        let in_1 = name.starts_with("fdopen-client") && name.ends_with(".1");
        let in_8 = name.starts_with("fdopen-server") && name.ends_with(".8");
        let by_hand = name.ends_with(".5") || name.ends_with(".7");
        assert!(in_1 || in_8 || by_hand, "{name} in the wrong section");
    }
    // Every fdopen-*(N) a page names is a page that is there.
    let reference = |text: &str| -> Vec<String> {
        let text = text
            .replace("\\-", "-")
            .replace("\\fB", "")
            .replace("\\fR", "");
        let mut found = Vec::new();
        for (at, _) in text.match_indices("fdopen-") {
            let rest = &text[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(rest.len());
            // `fdopen-server(8)`, or `.BR fdopen-server (8)` in troff.
            if let Some(section) = rest[end..].trim_start_matches(' ').strip_prefix('(')
                && let Some(n) = section.chars().next().filter(char::is_ascii_digit)
            {
                found.push(format!("{}.{n}", &rest[..end]));
            }
        }
        found
    };
    for page in &pages {
        for named in reference(&fs::read_to_string(page).unwrap()) {
            assert!(names.contains(&named), "{} names {named}", name_of(page));
        }
    }
}

#[test]
fn every_page_renders_at_80_columns_without_a_troff_warning() {
    if Command::new("man").arg("--version").output().is_err() {
        eprintln!("skipped: no man here");
        return;
    }
    let dir = scratch();
    for page in all_pages(dir.path()) {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&page)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "1")
            .env_remove("MANPAGER")
            .env("PAGER", "cat")
            .output()
            .unwrap();
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && warnings.trim().is_empty(),
            "{}: {warnings}",
            page.display()
        );
        assert!(!out.stdout.is_empty(), "{}", page.display());
    }
}

/// No SPEC ships, so nothing a user reads cites one: not the man pages
/// (whose text is also `--help`'s), the README, nor the Python client.
#[test]
fn no_user_facing_text_cites_the_spec() {
    let dir = scratch();
    let mut texts = all_pages(dir.path());
    texts.push(Path::new(ROOT).join("README.md"));
    for entry in fs::read_dir(Path::new(ROOT).join("examples/python")).unwrap() {
        texts.push(entry.unwrap().path());
    }
    for path in texts.iter().filter(|p| p.is_file()) {
        let text = fs::read_to_string(path).unwrap();
        if let Some(line) = text.lines().find(|l| l.contains("SPEC")) {
            panic!("{}: {line}", path.display());
        }
    }
}
