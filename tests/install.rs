//! `make install` / `make uninstall` into a temporary DESTDIR: the tree a
//! packager or admin gets, and systemd's view of the installed units.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

fn make(target: &str, destdir: &Path) {
    // The binaries this test run built, not a release build of its own.
    let build = Path::new(common::SERVER).parent().unwrap();
    let out = Command::new("make")
        .current_dir(MANIFEST)
        .args(["-s", target, "PREFIX=/usr/local"])
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("BUILD={}", build.display()))
        .output()
        .expect("make");
    assert!(
        out.status.success(),
        "make {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn files_under(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out.sort();
    out
}

#[test]
fn install_lays_out_a_daemon_and_uninstall_removes_it() {
    let dir = common::scratch();
    let dest = dir.path().join("dest");
    make("install-files", &dest);
    let files = files_under(&dest);
    for expected in [
        "usr/local/bin/fdopen-server",
        "usr/local/bin/fdopen-client",
        "usr/local/share/man/man1/fdopen-server.1",
        "usr/local/share/man/man1/fdopen-server-serve.1",
        "usr/local/share/man/man1/fdopen-client-run.1",
        "usr/local/share/man/man5/fdopen-policy.5",
        "usr/local/share/man/man7/fdopen-protocol.7",
        "usr/local/share/bash-completion/completions/fdopen-client",
        "usr/local/share/zsh/site-functions/_fdopen-server",
        "usr/local/share/fish/vendor_completions.d/fdopen-client.fish",
        "usr/local/lib/systemd/system/fdopen.service",
        "usr/local/lib/systemd/system/fdopen.socket",
        "usr/local/lib/sysusers.d/fdopen.conf",
        "usr/local/lib/tmpfiles.d/fdopen.conf",
        "etc/logrotate.d/fdopen",
        "etc/fdopen/policy.d/00-example.json",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "{expected} missing from {files:#?}"
        );
    }
    let service =
        std::fs::read_to_string(dest.join("usr/local/lib/systemd/system/fdopen.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/local/bin/fdopen-server serve"));
    // The shipped example policy passes check.
    let check = Command::new(common::SERVER)
        .args(["check", "--policy"])
        .arg(dest.join("etc/fdopen/policy.d"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    verify_units(&dest);

    // An admin's policy is never replaced, nor removed.
    let policy = dest.join("etc/fdopen/policy.d/00-example.json");
    std::fs::write(&policy, r#"{"rules":[]}"#).unwrap();
    make("install-files", &dest);
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), r#"{"rules":[]}"#);
    make("uninstall", &dest);
    assert_eq!(files_under(&dest), ["etc/fdopen/policy.d/00-example.json"]);

    // An untouched example goes with the rest.
    let clean = dir.path().join("clean");
    make("install-files", &clean);
    make("uninstall", &clean);
    assert_eq!(files_under(&clean), Vec::<String>::new());
}

/// `systemd-analyze verify` on the installed units, their binaries taken
/// from DESTDIR.
fn verify_units(dest: &Path) {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let staged = dest.parent().unwrap().join("units");
    std::fs::create_dir_all(&staged).unwrap();
    let bin = dest.join("usr/local/bin/");
    let mut units: Vec<PathBuf> = Vec::new();
    for unit in ["fdopen.service", "fdopen.socket"] {
        let text =
            std::fs::read_to_string(dest.join("usr/local/lib/systemd/system").join(unit)).unwrap();
        let path = staged.join(unit);
        std::fs::write(
            &path,
            text.replace("/usr/local/bin/", bin.to_str().unwrap()),
        )
        .unwrap();
        units.push(path);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_debian_package_holds_the_install_tree_and_its_scripts() {
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        eprintln!("skipped: dpkg-deb is not installed");
        return;
    }
    let dir = common::scratch();
    let build = Path::new(common::SERVER).parent().unwrap();
    let out = Command::new("make")
        .current_dir(MANIFEST)
        .args(["-s", "deb-files"])
        .arg(format!("BUILD={}", build.display()))
        .arg(format!("DEBDIR={}", dir.path().display()))
        // Debug binaries are large; compressing them would only cost time.
        .arg("DEB_FLAGS=-Znone")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let listing = Command::new("dpkg-deb")
        .args(["-c", &deb])
        .output()
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    for expected in [
        "./usr/bin/fdopen-server",
        "./usr/bin/fdopen-client",
        "./usr/share/man/man1/fdopen-client-run.1",
        "./usr/share/man/man5/fdopen-policy.5",
        "./usr/share/bash-completion/completions/fdopen-server",
        "./usr/lib/systemd/system/fdopen.socket",
        "./usr/lib/sysusers.d/fdopen.conf",
        "./etc/fdopen/policy.d/00-example.json",
    ] {
        assert!(listing.contains(expected), "{expected} missing:\n{listing}");
    }
    assert!(
        listing.contains("root/root"),
        "files belong to root:\n{listing}"
    );
    let info = Command::new("dpkg-deb")
        .args(["-I", &deb])
        .output()
        .unwrap();
    let info = String::from_utf8(info.stdout).unwrap();
    let version = format!("Version: {}", env!("CARGO_PKG_VERSION"));
    for expected in ["Package: fdopen", "postinst", "conffiles", &version] {
        assert!(info.contains(expected), "{expected} missing:\n{info}");
    }
}
