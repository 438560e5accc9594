//! `make install` / `make uninstall` into a temporary DESTDIR: the tree a
//! packager or admin gets, and systemd's view of the installed units.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// `make` in the repository as a user runs it, not as a sub-make of the
/// `make test` running this: a `make -C` there would have it print
/// "Entering directory" into the output read here.
fn make_in_repo() -> Command {
    let mut cmd = Command::new("make");
    cmd.current_dir(MANIFEST)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    cmd
}

/// `make TARGET` into `destdir`, as `sudo make install` runs it: with no
/// cargo to be found (sudo's secure_path has none).
fn make(target: &str, destdir: &Path) {
    // The binaries this test run built, not a release build of its own.
    let build = Path::new(common::SERVER).parent().unwrap();
    let out = make_in_repo()
        .args(["-s", target, "PREFIX=/usr/local", "CARGO=false"])
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("BUILD={}", build.display()))
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("make");
    assert!(
        out.status.success(),
        "make {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn files_under(root: &Path) -> Vec<String> {
    entries_under(root, false)
}

/// Everything under `root`, directories too (a directory as `dir/`).
fn entries_under(root: &Path, with_dirs: bool) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, with_dirs: bool, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() && !path.is_symlink() {
                if with_dirs {
                    out.push(format!("{name}/"));
                }
                walk(&path, root, with_dirs, out);
            } else {
                out.push(name);
            }
        }
    }
    let mut out = Vec::new();
    if root.exists() {
        walk(root, root, with_dirs, &mut out);
    }
    out.sort();
    out
}

#[test]
fn install_lays_out_a_daemon_and_uninstall_removes_it() {
    let dir = common::scratch();
    let dest = dir.path().join("dest");
    make("install", &dest);
    let files = files_under(&dest);
    for expected in [
        "usr/local/bin/fdopen-server",
        "usr/local/bin/fdopen-client",
        "usr/local/share/man/man8/fdopen-server.8",
        "usr/local/share/man/man8/fdopen-server-serve.8",
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
    common::assert_succeeded(&check);
    verify_units(&dest);

    // An admin's policy is never replaced, nor removed (nor its
    // directories); `systemctl enable`'s link goes with the units.
    let policy = dest.join("etc/fdopen/policy.d/00-example.json");
    std::fs::write(&policy, r#"{"rules":[]}"#).unwrap();
    make("install", &dest);
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), r#"{"rules":[]}"#);
    let wants = dest.join("etc/systemd/system/sockets.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    let link = wants.join("fdopen.socket");
    std::os::unix::fs::symlink("/usr/local/lib/systemd/system/fdopen.socket", &link).unwrap();
    make("uninstall", &dest);
    assert!(!link.is_symlink(), "the enable link is left");
    std::fs::remove_dir_all(dest.join("etc/systemd")).unwrap();
    assert_eq!(
        entries_under(&dest, true),
        [
            "etc/",
            "etc/fdopen/",
            "etc/fdopen/policy.d/",
            "etc/fdopen/policy.d/00-example.json"
        ]
    );

    // An untouched example goes with the rest, and so does every
    // directory install made; one that was there before stays.
    let clean = dir.path().join("clean");
    std::fs::create_dir_all(clean.join("usr/local/bin")).unwrap();
    make("install", &clean);
    make("uninstall", &clean);
    assert_eq!(
        entries_under(&clean, true),
        ["usr/", "usr/local/", "usr/local/bin/"]
    );
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

/// `make deb-files` into a new directory under `dir`; the path of the
/// .deb. Without SOURCE_DATE_EPOCH: the build must be reproducible as is.
fn build_deb(dir: &Path, name: &str) -> PathBuf {
    let build = Path::new(common::SERVER).parent().unwrap();
    let out = make_in_repo()
        .args(["-s", "deb-files"])
        .arg(format!("BUILD={}", build.display()))
        .arg(format!("DEBDIR={}", dir.join(name).display()))
        // Debug binaries are large: the fastest compression lintian takes.
        .arg("DEB_FLAGS=-Zgzip -z1")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    common::assert_succeeded(&out);
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The package as Debian builds one (debhelper): compressed man pages,
/// copyright and changelog, md5sums, Installed-Size, versioned Depends,
/// the units registered and restarted on upgrade, the group created; the
/// same bytes from two builds; no lintian error.
#[test]
fn the_debian_package_is_built_the_debian_way_and_reproducibly() {
    for tool in ["dpkg-deb", "dh"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            eprintln!("skipped: {tool} is not installed (make test-tools installs it as root)");
            return;
        }
    }
    let dir = common::scratch();
    let deb = build_deb(dir.path(), "one");
    let listing = dpkg_deb(&["-c"], &deb);
    for expected in [
        "./usr/bin/fdopen-server",
        "./usr/bin/fdopen-client",
        "./usr/share/man/man1/fdopen-client-run.1.gz",
        "./usr/share/man/man8/fdopen-server-serve.8.gz",
        "./usr/share/man/man5/fdopen-policy.5.gz",
        "./usr/share/doc/fdopen/copyright",
        "./usr/share/doc/fdopen/changelog.gz",
        "./usr/share/bash-completion/completions/fdopen-server",
        "/systemd/system/fdopen.socket",
        "./usr/lib/sysusers.d/fdopen.conf",
        "./usr/lib/python3/dist-packages/fdopen_client.py",
        "./etc/fdopen/policy.d/00-example.json",
    ] {
        assert!(listing.contains(expected), "{expected} missing:\n{listing}");
    }
    assert!(!listing.contains("installed-directories"), "{listing}");
    assert!(
        listing.lines().all(|l| l.contains("root/root")),
        "files belong to root:\n{listing}"
    );
    let info = dpkg_deb(&["-I"], &deb);
    let version = format!("Version: {}", env!("CARGO_PKG_VERSION"));
    for expected in [
        "Package: fdopen",
        &version,
        "Installed-Size:",
        "libc6 (>= ",
        "libgcc-s1",
        "md5sums",
        "conffiles",
    ] {
        assert!(info.contains(expected), "{expected} missing:\n{info}");
    }
    let control = dir.path().join("control");
    let out = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(&control)
        .status()
        .unwrap();
    assert!(out.success());
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    for expected in ["systemd-sysusers", "systemd-tmpfiles", "try-restart"] {
        assert!(postinst.contains(expected), "{expected}:\n{postinst}");
    }
    assert!(
        !postinst.contains("deb-systemd-invoke start"),
        "not started on installation:\n{postinst}"
    );

    let again = build_deb(dir.path(), "two");
    assert!(
        std::fs::read(&deb).unwrap() == std::fs::read(&again).unwrap(),
        "two builds differ"
    );

    if Command::new("lintian").arg("--version").output().is_err() {
        eprintln!("skipped lintian: not installed (make test-tools installs it as root)");
        return;
    }
    // Its temporary files (mldbm-elf-*) it leaves behind: in the scratch.
    let lintian = Command::new("lintian")
        .arg(&deb)
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&lintian.stdout);
    assert!(
        !said.lines().any(|l| l.starts_with("E:")),
        "lintian errors:\n{said}"
    );
}
