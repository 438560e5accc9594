//! `fdopen-client run` with real programs (SPEC v3 §8): each runs as
//! `nobody` under `run` against a root server on a fresh root-only tree,
//! and must get what root gets without `run`; and `run`'s own process
//! behaviour (exit codes, signals). Root only; each test says why it skips.

mod common;
#[allow(dead_code)]
#[path = "common/supervised.rs"]
mod supervised;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{is_root, wait_timeout};
use supervised::{NOBODY, Supervised};

const PYTHON: &str = "/usr/bin/python3";

const EMPTY_POLICY: &str = r#"{"rules":[]}"#;

#[test]
fn a_command_not_found_is_127_and_one_not_executable_is_126() {
    let Some(s) = Supervised::start(common::scratch(), EMPTY_POLICY) else {
        return;
    };
    let status = |program: &str| {
        let out = s.run(&[program]);
        assert!(!out.stderr.is_empty(), "{program}: run says why");
        out.status.code()
    };
    assert_eq!(status("/nonexistent/program"), Some(127));
    assert_eq!(status("no-such-program-on-path"), Some(127));
    // Not executable for nobody: a 0644 file, and a directory.
    assert_eq!(status("/etc/passwd"), Some(126));
    assert_eq!(status("/"), Some(126));
}

#[test]
fn a_script_without_a_shebang_runs_with_sh_found_by_path_or_named() {
    let Some(s) = Supervised::start(common::scratch(), EMPTY_POLICY) else {
        return;
    };
    // execvp runs a file the kernel cannot (ENOEXEC) with /bin/sh, as
    // POSIX says: glibc's does, musl's does not, and the client is built
    // against either (`make test` runs this against both).
    let script = s.server.path("plain-script");
    fs::write(&script, "echo \"ran by sh: $0 $1\"\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let named = script.to_str().unwrap();
    let out = s.run(&[named, "one"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        supervised::stdout(&out),
        format!("ran by sh: {named} one\n")
    );
    let dir = script.parent().unwrap();
    let out = s
        .run_command(&[], &["plain-script", "two"])
        .env("PATH", format!("/nonexistent:{}", dir.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        supervised::stdout(&out),
        format!("ran by sh: {named} two\n")
    );
}

#[test]
fn sigterm_to_run_reaches_every_supervised_process() {
    let Some(s) = Supervised::start(common::scratch(), EMPTY_POLICY) else {
        return;
    };
    for signal in [libc::SIGTERM, libc::SIGHUP] {
        // The shell forks a sleeper, says its pid, and waits for it: the
        // shell dies of the signal, and the sleeper must too, or `run`
        // (which stays while any supervised process is left) would wait
        // five minutes.
        let mut run = s
            .run_command(&[], &["/bin/sh", "-c", "sleep 300 & echo $!; wait"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(run.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.trim().parse::<u32>().is_ok(), "{line:?}");
        // SAFETY: kill with integer arguments, to our own child.
        unsafe { libc::kill(run.id() as i32, signal) };
        let status = wait_timeout(&mut run, Duration::from_secs(30))
            .expect("run ended with the processes it supervises");
        assert_eq!(status.signal(), Some(signal));
    }
}

/// A fresh root-only tree in the server's scratch directory: `data/`
/// (0700: `secret` 0600, `sub/` 0700 with `inner`, `link` -> `secret`)
/// that the policy lets be read, stat'ed and listed, and `work/` (0700)
/// where directories and files may also be made, renamed and removed.
struct Tree {
    setup: Supervised,
    data: PathBuf,
    work: PathBuf,
}

impl Tree {
    fn new() -> Option<Tree> {
        let scratch = common::scratch();
        let data = scratch.path().join("data");
        let work = scratch.path().join("work");
        let d = common::glob(&data);
        let w = common::glob(&work);
        let policy = format!(
            r#"{{"rules":[
              {{"name":"data","effect":"allow","paths":["{d}","{d}/**"],"modes":["read","stat","list"]}},
              {{"name":"work","effect":"allow","paths":["{w}","{w}/**"],
                "modes":["read","write","readwrite","stat","list","mkdir","delete"],"create":true,"truncate":true}}]}}"#
        );
        if !is_root() {
            eprintln!("skipped: run tests need root (a root server, a nobody client)");
            return None;
        }
        fs::create_dir(&data).unwrap();
        fs::write(data.join("secret"), "secret-data\n").unwrap();
        fs::create_dir(data.join("sub")).unwrap();
        fs::write(data.join("sub/inner"), "inner-data\n").unwrap();
        std::os::unix::fs::symlink("secret", data.join("link")).unwrap();
        fs::create_dir(&work).unwrap();
        fs::write(work.join("file"), "work-data\n").unwrap();
        for (path, mode) in [
            (data.join("secret"), 0o600),
            (data.join("sub/inner"), 0o600),
            (data.join("sub"), 0o700),
            (data.clone(), 0o700),
            (work.join("file"), 0o600),
            (work.clone(), 0o700),
        ] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        let setup = Supervised::start(scratch, &policy)?;
        Some(Tree { setup, data, work })
    }

    fn data(&self, name: &str) -> String {
        self.data.join(name).to_str().unwrap().to_owned()
    }

    fn work(&self, name: &str) -> String {
        self.work.join(name).to_str().unwrap().to_owned()
    }

    /// `program(into)` run twice, each time into a fresh directory of
    /// nobody's: as nobody under `run` and as root without. Returns what
    /// `describe` (a shell line run in `into`) says of each directory:
    /// nobody's, then root's.
    fn both_ways(&self, program: impl Fn(&str) -> Vec<String>, describe: &str) -> [String; 2] {
        [("by-nobody", true), ("by-root", false)].map(|(name, under_run)| {
            let into = self.setup.server.path(name);
            fs::create_dir(&into).unwrap();
            std::os::unix::fs::chown(&into, Some(NOBODY), Some(NOBODY)).unwrap();
            let args = program(into.to_str().unwrap());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = if under_run {
                self.setup.run(&args)
            } else {
                Command::new(args[0]).args(&args[1..]).output().unwrap()
            };
            assert!(out.status.success(), "{name}: {out:?}");
            let described = Command::new("/bin/sh")
                .args(["-c", describe])
                .current_dir(&into)
                .output()
                .unwrap();
            String::from_utf8_lossy(&described.stdout).into_owned()
        })
    }

    /// The program as nobody under `run`; its output, which must equal
    /// what root gets without `run`, and which nobody alone does not get.
    #[track_caller]
    fn same_as_root(&self, program: &[&str]) -> String {
        let root = Command::new(program[0])
            .args(&program[1..])
            .output()
            .unwrap();
        assert!(root.status.success(), "as root: {root:?}");
        let with = self.setup.run(program);
        assert_eq!(
            String::from_utf8_lossy(&with.stdout),
            String::from_utf8_lossy(&root.stdout),
            "{program:?} under run; stderr: {}",
            String::from_utf8_lossy(&with.stderr)
        );
        assert_eq!(with.status.code(), root.status.code(), "{program:?}");
        // And the tree is really out of nobody's reach without `run`.
        let alone = supervised::direct(program);
        assert!(
            alone.stdout != root.stdout || alone.status.code() != root.status.code(),
            "{program:?} as nobody alone got what root gets"
        );
        String::from_utf8_lossy(&root.stdout).into_owned()
    }
}

#[test]
fn stat_readlink_and_the_stat_family_see_what_root_sees() {
    let Some(t) = Tree::new() else { return };
    let (secret, sub, link) = (t.data("secret"), t.data("sub"), t.data("link"));
    // stat(1) uses statx, without following the link.
    let format = "%n|%s|%a|%u|%g|%i|%h|%F|%Y|%W|%d|%t";
    let out = t.same_as_root(&["/usr/bin/stat", "-c", format, &secret, &sub, &link]);
    assert!(out.contains("symbolic link"), "{out}");
    // And following it; and the plain struct stat of `ls -l`.
    t.same_as_root(&["/usr/bin/stat", "-L", "-c", format, &link]);
    t.same_as_root(&[
        "/usr/bin/ls",
        "-ldn",
        "--time-style=+%s",
        &secret,
        &sub,
        &link,
    ]);
    t.same_as_root(&["/usr/bin/readlink", &link]);
    // Nobody alone can do none of it.
    let alone = Command::new("/usr/bin/stat")
        .arg(&secret)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(!alone.status.success());
}

#[test]
fn python_exists_access_and_a_missing_name_in_a_0700_directory() {
    let Some(t) = Tree::new() else { return };
    let script = format!(
        r#"
import os, errno
print(os.path.exists({secret:?}), os.path.exists({missing:?}), os.path.isdir({sub:?}))
print(os.access({secret:?}, os.R_OK), os.access({missing:?}, os.F_OK), os.access({file:?}, os.W_OK),
      os.access({sub:?}, os.R_OK))
for call in (os.stat, open):
    try:
        call({missing:?})
    except OSError as e:
        print(errno.errorcode[e.errno])
print(os.lstat({link:?}).st_size, os.readlink({link:?}))
"#,
        secret = t.data("secret"),
        missing = t.data("missing"),
        sub = t.data("sub"),
        link = t.data("link"),
        file = t.work("file"),
    );
    let out = t.same_as_root(&[PYTHON, "-c", &script]);
    assert_eq!(
        out,
        "True False True\nTrue False True True\nENOENT\nENOENT\n6 secret\n"
    );
}

#[test]
fn o_nofollow_opens_are_asked_as_nofollow() {
    let Some(t) = Tree::new() else { return };
    // As tar opens: a 0600 file with O_NOFOLLOW; and a final symlink,
    // which the kernel refuses with ELOOP.
    let script = format!(
        r#"
import os
fd = os.open({secret:?}, os.O_RDONLY | os.O_NOFOLLOW)
print(os.read(fd, 64).decode(), end="")
try:
    os.open({link:?}, os.O_RDONLY | os.O_NOFOLLOW)
except OSError as e:
    print(os.strerror(e.errno))
"#,
        secret = t.data("secret"),
        link = t.data("link"),
    );
    let out = t.same_as_root(&[PYTHON, "-c", &script]);
    assert_eq!(out, format!("secret-data\n{}\n", io_error(libc::ELOOP)));
}

fn io_error(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    text[..text.find(" (os error").unwrap()].to_owned()
}

#[test]
fn mkdir_mv_rm_and_rmdir_change_a_root_only_tree() {
    let Some(t) = Tree::new() else { return };
    let (a, b) = (t.work("a"), t.work("a/b"));
    let (file, moved) = (t.work("file"), t.work("a/moved"));
    let script = format!(
        "set -e; mkdir {a}; mkdir {b}; mv {file} {moved}; rmdir {b}; \
         mkdir {b}; rm {moved}; echo done"
    );
    let out = t.setup.run(&["/bin/sh", "-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "done\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |p: &str| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!((mode(&a), mode(&b)), (0o700, 0o700));
    assert!(!Path::new(&file).exists() && !Path::new(&moved).exists());
    // A name that is taken: EEXIST, as the kernel says it.
    let again = t.setup.run(&["/bin/mkdir", &a]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("File exists"),
        "{again:?}"
    );
}

#[test]
fn tree_walkers_list_a_0700_tree_as_root_does() {
    let Some(t) = Tree::new() else { return };
    let data = t.data("");
    let data = data.trim_end_matches('/');
    t.same_as_root(&["/usr/bin/ls", "-la", "--time-style=+%s", data]);
    t.same_as_root(&["/usr/bin/ls", "-lRn", "--time-style=+%s", data]);
    let found = t.same_as_root(&["/usr/bin/find", data, "-printf", "%p %y %m %s\n"]);
    assert!(found.contains("/sub/inner f 600"), "{found}");
    t.same_as_root(&["/usr/bin/du", "-a", data]);
    let grep = t.same_as_root(&["/usr/bin/grep", "-r", "data", data]);
    assert!(grep.contains("inner-data"), "{grep}");
    t.same_as_root(&["/usr/bin/grep", "-R", "data", data]);
    let script = format!(
        "import os\nprint(sorted(os.listdir({data:?})), sorted(os.listdir({data:?} + '/sub')))\n\
         print(open({data:?} + '/sub/inner').read(), end='')"
    );
    t.same_as_root(&[PYTHON, "-c", &script]);
}

#[test]
fn the_readme_tar_example_backs_up_a_0600_file_and_a_0700_directory() {
    let Some(t) = Tree::new() else { return };
    // README: tar czf /backup/etc.tgz /etc/shadow /etc/ssl/private
    let backup = t.setup.server.path("backup");
    fs::create_dir(&backup).unwrap();
    std::os::unix::fs::chown(&backup, Some(NOBODY), Some(NOBODY)).unwrap();
    let archive = backup.join("etc.tgz");
    let archive = archive.to_str().unwrap();
    let (file, dir) = (t.data("secret"), t.data("sub"));
    let out = t.setup.run(&["/usr/bin/tar", "czf", archive, &file, &dir]);
    assert!(out.status.success(), "{out:?}");
    let listed = Command::new("/usr/bin/tar")
        .args(["tzf", archive])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let strip = |p: &str| p.trim_start_matches('/').to_owned();
    assert_eq!(
        listed,
        format!(
            "{}\n{}/\n{}/inner\n",
            strip(&file),
            strip(&dir),
            strip(&dir)
        )
    );
}

#[test]
fn tar_czf_of_a_0700_tree_and_tar_xzf_of_it_match_roots() {
    let Some(t) = Tree::new() else { return };
    let parent = t.data.parent().unwrap().to_str().unwrap().to_owned();
    // Listed from the archive, so gzip's timestamps do not matter.
    let archive = t.work("backup.tgz");
    let out = t
        .setup
        .run(&["/usr/bin/tar", "czf", &archive, "-C", &parent, "data"]);
    assert!(out.status.success(), "{out:?}");
    let list = |archive: &str| {
        let out = Command::new("/usr/bin/tar")
            .args(["tzvf", archive, "--numeric-owner"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let root_archive = t.work("root.tgz");
    let root_archive = Path::new(&root_archive);
    let root = Command::new("/usr/bin/tar")
        .args(["czf"])
        .arg(root_archive)
        .args(["-C", &parent, "data"])
        .status()
        .unwrap();
    assert!(root.success());
    let ours = list(&archive);
    assert_eq!(
        ours,
        list(root_archive.to_str().unwrap()).replace("root.tgz", "backup.tgz")
    );
    assert!(ours.contains("data/sub/inner"), "{ours}");
    // And root's archive (root-only, in a 0700 directory) back out into
    // a directory of nobody's: the same files as root extracts.
    let [ours, roots] = t.both_ways(
        |into| {
            [
                "/usr/bin/tar",
                "xzf",
                root_archive.to_str().unwrap(),
                "-C",
                into,
            ]
            .map(String::from)
            .to_vec()
        },
        "find . -printf '%P %y %m %s %l\\n' | sort",
    );
    assert_eq!(ours, roots);
    assert!(ours.contains("data/sub/inner f 600 11"), "{ours}");
}

#[test]
fn a_server_in_another_mount_namespace_brokers_nothing_and_says_so() {
    let Some(t) = Tree::new() else { return };
    // The supervisor (and so the program) in a mount namespace of its
    // own: the same files, but not the server's tree.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(&t.setup.client)
        .arg("--socket")
        .arg(&t.setup.server.socket)
        .args(["run", "--", "/bin/cat"])
        .arg(t.data("secret"))
        .output()
        .unwrap();
    if String::from_utf8_lossy(&out.stderr).contains("unshare failed") {
        eprintln!("skipped: cannot make a mount namespace here");
        return;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another mount namespace"), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(!out.status.success());
    // The same, sharing the server's namespace, is brokered.
    assert_eq!(
        t.same_as_root(&["/bin/cat", &t.data("secret")]),
        "secret-data\n"
    );
}

/// Whether `program` is installed; says so when not (`make test-tools`
/// installs it where it can).
fn have(program: &str) -> bool {
    let found = Path::new(program).exists();
    if !found {
        eprintln!("skipped: {program} is not installed (make test-tools installs it)");
    }
    found
}

#[test]
fn sqlite3_inserts_into_a_root_owned_database_in_a_0700_directory() {
    let Some(t) = Tree::new() else { return };
    if !have("/usr/bin/sqlite3") {
        return;
    }
    let (db, copy) = (t.work("app.db"), t.work("copy.db"));
    for path in [&db, &copy] {
        let made = Command::new("/usr/bin/sqlite3")
            .args([path, "create table t(x); insert into t values('root');"])
            .status()
            .unwrap();
        assert!(made.success());
    }
    // Root's result, on the copy; then nobody's under run, on the
    // original: a journal beside it, created and unlinked.
    let sql = "insert into t values('more'); select * from t;";
    let root = Command::new("/usr/bin/sqlite3")
        .args([&copy, sql])
        .output()
        .unwrap();
    let ours = t.setup.run(&["/usr/bin/sqlite3", &db, sql]);
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&root.stdout),
        "{ours:?}"
    );
    assert_eq!(String::from_utf8_lossy(&ours.stdout), "root\nmore\n");
    assert!(!Path::new(&t.work("app.db-journal")).exists());
    let meta = fs::metadata(&db).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
}

#[test]
fn mkdir_p_makes_every_missing_directory() {
    let Some(t) = Tree::new() else { return };
    // mkdir -p walks by chdir, which no broker can do for a directory the
    // program cannot search (README): `work` is searchable, not writable,
    // and what mkdir makes for nobody is nobody's.
    fs::set_permissions(&t.work, fs::Permissions::from_mode(0o711)).unwrap();
    let deep = t.work("p/q/r");
    let out = t.setup.run(&["/bin/mkdir", "-p", &deep]);
    assert!(out.status.success(), "{out:?}");
    assert!(fs::metadata(&deep).unwrap().is_dir());
}

#[test]
fn cp_a_keeps_modes_xattrs_and_acls_of_a_0700_tree() {
    let Some(t) = Tree::new() else { return };
    if !have("/usr/bin/setfattr") || !have("/usr/bin/setfacl") {
        return;
    }
    let inner = t.data("sub/inner");
    let tagged = Command::new("/usr/bin/setfattr")
        .args(["-n", "user.origin", "-v", "fdopen", &inner])
        .status()
        .unwrap();
    let acl = Command::new("/usr/bin/setfacl")
        .args(["-m", "u:65534:r", &t.data("secret")])
        .status()
        .unwrap();
    if !tagged.success() || !acl.success() {
        eprintln!("skipped: this filesystem takes no user xattrs or ACLs");
        return;
    }
    fs::set_permissions(t.data("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    let [ours, roots] = t.both_ways(
        |into| {
            let to = format!("{into}/data");
            ["/usr/bin/cp", "-a", &t.data(""), &to]
                .map(String::from)
                .to_vec()
        },
        "cd data && find . -printf '%P %y %m %s %l\\n' | sort; getfattr -R -d . ; \
         getfacl -R -p . | grep -v '^# owner\\|^# group\\|^user::\\|^group::'",
    );
    assert_eq!(ours, roots);
    assert!(ours.contains("sub d 750"), "{ours}");
    assert!(ours.contains("user.origin=\"fdopen\""), "{ours}");
    assert!(ours.contains("user:nobody:r--"), "{ours}");
}

#[test]
fn rsync_a_copies_a_world_searchable_tree_of_root_only_files() {
    let Some(t) = Tree::new() else { return };
    if !have("/usr/bin/rsync") {
        return;
    }
    // World-searchable directories, root-only files.
    for dir in [t.data(""), t.data("sub")] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o711)).unwrap();
    }
    let [ours, roots] = t.both_ways(
        |into| {
            ["/usr/bin/rsync", "-a", &t.data(""), into]
                .map(String::from)
                .to_vec()
        },
        // Files keep their mtimes; a directory's and a link's are the
        // copy's own (rsync sets them as it goes), for root too.
        "find . -printf '%P %y %m %s %l\\n' | sort; find . -type f -printf '%P %T@\\n' | sort",
    );
    assert_eq!(ours, roots);
    assert!(ours.contains("sub/inner f 600 11"), "{ours}");
}

/// A privileged port on 127.0.0.1 that nobody holds now.
fn free_privileged_port() -> Option<u16> {
    (600..1000).find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// One HTTP/1.0 GET: the status line and the body.
fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

#[test]
fn nginx_serves_a_0700_docroot_with_index_and_autoindex_on_a_privileged_port() {
    if !is_root() {
        eprintln!("skipped: run tests need root (a root server, a nobody client)");
        return;
    }
    if !have("/usr/sbin/nginx") {
        return;
    }
    let Some(port) = free_privileged_port() else {
        eprintln!("skipped: no free privileged port on 127.0.0.1");
        return;
    };
    let scratch = common::scratch();
    let docroot = scratch.path().join("www");
    fs::create_dir_all(docroot.join("files")).unwrap();
    fs::write(docroot.join("index.html"), "<p>welcome</p>\n").unwrap();
    fs::write(docroot.join("files/report.txt"), "numbers\n").unwrap();
    for (path, mode) in [
        (docroot.join("index.html"), 0o600),
        (docroot.join("files/report.txt"), 0o600),
        (docroot.join("files"), 0o700),
        (docroot.clone(), 0o700),
    ] {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }
    // nginx's own files: nobody's.
    let prefix = scratch.path().join("nginx");
    fs::create_dir(&prefix).unwrap();
    std::os::unix::fs::chown(&prefix, Some(NOBODY), Some(NOBODY)).unwrap();
    let conf = prefix.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off; master_process off; pid {p}/nginx.pid; error_log {p}/error.log;\n\
             events {{ worker_connections 16; }}\n\
             http {{ access_log off; client_body_temp_path {p}/body; proxy_temp_path {p}/proxy;\n\
               fastcgi_temp_path {p}/fcgi; uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n\
               server {{ listen 127.0.0.1:{port}; root {root};\n\
                 location / {{ index missing.html index.html; }}\n\
                 location /files/ {{ autoindex on; }} }} }}\n",
            p = prefix.display(),
            root = docroot.display(),
        ),
    )
    .unwrap();
    let d = common::glob(&docroot);
    let policy = format!(
        r#"{{"rules":[
          {{"name":"www","effect":"allow","paths":["{d}","{d}/**"],"modes":["read","stat","list"]}},
          {{"name":"web","effect":"allow","binds":["tcp:127.0.0.1:{port}"]}}]}}"#
    );
    let Some(s) = Supervised::start(scratch, &policy) else {
        return;
    };
    let mut nginx = s
        .run_command(
            &[],
            &[
                "/usr/sbin/nginx",
                "-p",
                prefix.to_str().unwrap(),
                "-c",
                conf.to_str().unwrap(),
            ],
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Ready once it accepts: nginx says so nowhere else.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline || nginx.try_wait().unwrap().is_some() {
            let _ = nginx.kill();
            let log = fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
            panic!(
                "nginx never listened: {:?}\n{log}",
                nginx.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let index = http_get(port, "/");
    let listing = http_get(port, "/files/");
    let file = http_get(port, "/files/report.txt");
    let missing = http_get(port, "/nothing-here");
    // SAFETY: kill with integer arguments, to our own child.
    unsafe { libc::kill(nginx.id() as i32, libc::SIGTERM) };
    assert!(wait_timeout(&mut nginx, Duration::from_secs(20)).is_some());
    let log = fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
    assert_eq!(
        index,
        ("HTTP/1.1 200 OK".into(), "<p>welcome</p>\n".into()),
        "{log}"
    );
    assert!(listing.0.contains("200"), "{listing:?} {log}");
    assert!(listing.1.contains("report.txt"), "{listing:?}");
    assert_eq!(file.1, "numbers\n", "{file:?} {log}");
    // A missing name is 404, not the 403 of a directory nginx cannot search.
    assert!(missing.0.contains("404"), "{missing:?} {log}");
}

#[test]
fn fchdir_to_a_directory_stream_then_relative_calls() {
    let Some(t) = Tree::new() else { return };
    let script = format!(
        r#"
import os
fd = os.open({sub:?}, os.O_RDONLY | os.O_DIRECTORY)
os.fchdir(fd)
print(sorted(os.listdir(".")), os.stat("inner").st_size, open("inner").read(), end="")
print(os.path.samestat(os.fstat(fd), os.stat({sub:?})))
"#,
        sub = t.data("sub"),
    );
    let out = t.same_as_root(&[PYTHON, "-c", &script]);
    assert_eq!(out, "['inner'] 11 inner-data\nTrue\n");
}

#[test]
fn tree_changes_fail_with_the_errno_the_kernel_gives_root() {
    let Some(t) = Tree::new() else { return };
    fs::create_dir(t.work.join("full")).unwrap();
    fs::write(t.work.join("full/x"), "").unwrap();
    fs::write(t.work.join("other"), "").unwrap();
    let script = format!(
        r#"
import errno, os
def name(call, *args):
    try:
        call(*args)
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
print(name(os.rmdir, {full:?}), name(os.unlink, {full:?}), name(os.mkdir, {full:?}),
      name(os.rmdir, {missing:?}), name(os.unlink, {missing:?}))
"#,
        full = t.work("full"),
        missing = t.work("missing"),
    );
    let out = t.same_as_root(&[PYTHON, "-c", &script]);
    assert_eq!(out, "ENOTEMPTY EISDIR EEXIST ENOENT ENOENT\n");
}

#[test]
fn a_directory_stream_rewinds_and_resumes_where_telldir_said() {
    let Some(t) = Tree::new() else { return };
    let Some(rewinder) = t.setup.build("rewinder", &[]) else {
        return;
    };
    let out = t.same_as_root(&[&rewinder, &t.data("")]);
    assert_eq!(
        out,
        "first: . .. link secret sub\nafter the third: 2\nafter a rewind: 5\n"
    );
}

#[test]
fn a_directory_of_more_entries_than_one_answer_holds_lists_whole() {
    let Some(t) = Tree::new() else { return };
    let many = t.data.join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..2500 {
        fs::write(many.join(format!("f{i:04}")), "").unwrap();
    }
    fs::set_permissions(&many, fs::Permissions::from_mode(0o700)).unwrap();
    let out = t.same_as_root(&["/usr/bin/ls", "-1", many.to_str().unwrap()]);
    assert_eq!(out.lines().count(), 2500);
}

#[test]
fn with_no_path_a_command_found_in_usr_bin_but_not_executable_is_126() {
    // With no PATH, `run` looks for CMD in /bin:/usr/bin (as glibc's
    // execvp does); its exit code must judge "found" by the same places,
    // not by the current directory: a 0644 file at /usr/bin/yes, bound
    // over it in a private mount namespace, is found and cannot run (126).
    if !is_root() || !Path::new("/usr/bin/yes").is_file() {
        eprintln!("skipped: needs root and /usr/bin/yes to bind a file over it");
        return;
    }
    let s = common::TestServer::start(EMPTY_POLICY, &[]);
    let plain = s.path("not-executable");
    fs::write(&plain, "not a program\n").unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
    let script = r#"plain=$1; shift
mount --bind "$plain" /usr/bin/yes || exit 99
exec env -u PATH "$@""#;
    let out = common::in_a_private_mount_namespace(script)
        .arg(&plain)
        .arg(common::client_under_test())
        .arg("--socket")
        .arg(&s.socket)
        .args(["run", "--", "yes"])
        .current_dir(s.path(""))
        .output()
        .unwrap();
    if out.status.code() == Some(common::CANNOT_MOUNT) {
        eprintln!(
            "skipped: cannot bind-mount here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
}
