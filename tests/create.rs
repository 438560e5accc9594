//! Creating files (SPEC §3.2): granted only by rules that say so, never
//! through a final symlink, judged by the real path of the parent, with the
//! mode the rule allows and the owner it names, whatever the umask.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use serde_json::{Value, json};

/// `uploads/` may be created in (0640 at most), `logs/` appended to and
/// truncated, `outside/` nothing.
fn upload_server() -> TestServer {
    let dir = scratch();
    for sub in ["uploads", "logs", "outside", "spool"] {
        fs::create_dir(dir.path().join(sub)).unwrap();
    }
    fs::write(dir.path().join("logs/a.log"), "old contents\n").unwrap();
    fs::write(dir.path().join("uploads/existing.txt"), "was here\n").unwrap();
    let d = glob(dir.path());
    let policy = json!({"rules": [
        {"name": "uploads", "paths": [format!("{d}/uploads/*")], "modes": ["write", "readwrite"],
         "create": true, "create_perm": "0640"},
        {"name": "logs", "paths": [format!("{d}/logs/*")], "modes": ["write", "append"],
         "truncate": true},
        {"name": "server-owned", "paths": [format!("{d}/spool/*")], "modes": ["write"],
         "create": true, "owner": "server"}
    ]})
    .to_string();
    TestServer::start_in(dir, &policy, &["--socket-mode", "0666"])
}

fn open_req(path: &Path, extra: Value) -> String {
    let mut v = json!({"op": "open", "path": path, "mode": "write"});
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v.to_string()
}

#[test]
fn create_exclusive_perm_and_truncate_end_to_end() {
    let s = upload_server();
    let new = s.path("uploads/new.txt");
    // check says what open would do, and creates nothing.
    let (v, fd) =
        s.ask(&json!({"op": "check", "path": new, "mode": "write", "create": true}).to_string());
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["created"], true, "{v}");
    assert!(fd.is_none());
    assert!(!new.exists(), "check created the file");

    let (v, fd) = s.ask(&open_req(
        &new,
        json!({"create": "exclusive", "perm": "0777"}),
    ));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["created"], true);
    assert_eq!(v["rule"], "uploads");
    fs::File::from(fd.unwrap()).write_all(b"uploaded").unwrap();
    assert_eq!(fs::read_to_string(&new).unwrap(), "uploaded");
    // perm 0777 under create_perm 0640: 0640, whatever the umask.
    assert_eq!(
        fs::metadata(&new).unwrap().permissions().mode() & 0o7777,
        0o640
    );

    // Exclusive again: the name is taken.
    let (v, _) = s.ask(&open_req(&new, json!({"create": "exclusive"})));
    assert_eq!(code(&v), "exists", "{v}");
    // create: true opens what exists, and says it did not create it.
    let (v, fd) = s.ask(&open_req(&new, json!({"create": true})));
    assert_eq!(v["ok"], true, "{v}");
    assert!(v.get("created").is_none(), "{v}");
    assert!(fd.is_some());

    // Truncation, granted by a truncate rule, after the record.
    let log = s.path("logs/a.log");
    let (v, fd) = s.ask(&open_req(&log, json!({"truncate": true})));
    assert_eq!(v["ok"], true, "{v}");
    drop(fd);
    assert_eq!(fs::read_to_string(&log).unwrap(), "");

    let audit = s.audit_lines();
    let creates: Vec<_> = audit
        .iter()
        .filter(|r| r["created"] == true && r["op"] == "open")
        .collect();
    assert_eq!(creates.len(), 1, "{audit:?}");
    assert_eq!(creates[0]["path"], new.to_str().unwrap());
}

#[test]
fn create_and_truncate_need_a_rule_that_says_so() {
    let s = upload_server();
    // logs/ may be written but not created in.
    let (v, _) = s.ask(&open_req(&s.path("logs/new.log"), json!({"create": true})));
    assert_eq!(code(&v), "denied", "{v}");
    assert!(!s.path("logs/new.log").exists());
    // uploads/ may be created in but not truncated.
    let (v, _) = s.ask(&open_req(
        &s.path("uploads/existing.txt"),
        json!({"truncate": true}),
    ));
    assert_eq!(code(&v), "denied", "{v}");
    assert_eq!(
        fs::read_to_string(s.path("uploads/existing.txt")).unwrap(),
        "was here\n"
    );
    // Nothing anywhere else.
    let (v, _) = s.ask(&open_req(&s.path("outside/x"), json!({"create": true})));
    assert_eq!(code(&v), "denied", "{v}");
    // create with read is malformed.
    let (v, _) =
        s.ask(&json!({"op": "open", "path": s.path("uploads/r"), "create": true}).to_string());
    assert_eq!(code(&v), "bad_request", "{v}");
}

#[test]
fn a_final_symlink_is_never_followed_by_a_creating_request() {
    let s = upload_server();
    fs::write(s.path("outside/target"), "secret").unwrap();
    symlink(s.path("outside/target"), s.path("uploads/to-outside")).unwrap();
    symlink(s.path("outside/missing"), s.path("uploads/dangling-out")).unwrap();
    symlink(s.path("uploads/existing.txt"), s.path("uploads/to-inside")).unwrap();
    symlink(s.path("uploads/missing-in"), s.path("uploads/dangling-in")).unwrap();
    for link in ["to-outside", "dangling-out", "to-inside", "dangling-in"] {
        for create in [json!(true), json!("exclusive")] {
            for op in ["open", "check"] {
                let mut line: Value = serde_json::from_str(&open_req(
                    &s.path(&format!("uploads/{link}")),
                    json!({"create": create}),
                ))
                .unwrap();
                line["op"] = op.into();
                let (v, fd) = s.ask(&line.to_string());
                assert_eq!(code(&v), "not_regular", "{op} {link} {create}: {v}");
                assert!(fd.is_none());
            }
        }
    }
    assert!(!s.path("outside/missing").exists());
    assert!(!s.path("uploads/missing-in").exists());
    assert_eq!(
        fs::read_to_string(s.path("outside/target")).unwrap(),
        "secret"
    );
}

#[test]
fn a_symlinked_parent_is_followed_only_as_far_as_its_real_path_is_granted() {
    let dir = scratch();
    for sub in ["links", "uploads", "outside"] {
        fs::create_dir(dir.path().join(sub)).unwrap();
    }
    symlink(dir.path().join("uploads"), dir.path().join("links/in")).unwrap();
    symlink(dir.path().join("outside"), dir.path().join("links/out")).unwrap();
    let d = glob(dir.path());
    // Anything may be asked for under links/; only uploads/ really may be
    // created in.
    let policy = json!({"rules": [
        {"name": "links", "paths": [format!("{d}/links/**")], "modes": ["write"], "create": true},
        {"name": "uploads", "paths": [format!("{d}/uploads/*")], "modes": ["write"], "create": true}
    ]})
    .to_string();
    let s = TestServer::start_in(dir, &policy, &[]);
    let (v, fd) = s.ask(&open_req(&s.path("links/in/x"), json!({"create": true})));
    assert_eq!(v["ok"], true, "{v}");
    assert!(fd.is_some());
    assert_eq!(v["path"], s.path("uploads/x").to_str().unwrap());
    assert_eq!(v["rule"], "uploads", "the rule of the real path");
    assert!(s.path("uploads/x").exists());
    let (v, fd) = s.ask(&open_req(&s.path("links/out/x"), json!({"create": true})));
    assert_eq!(code(&v), "denied", "{v}");
    assert!(fd.is_none());
    assert!(!s.path("outside/x").exists(), "created through the link");
}

#[test]
fn the_servers_umask_plays_no_part() {
    let dir = scratch();
    fs::create_dir(dir.path().join("uploads")).unwrap();
    let d = glob(dir.path());
    let policy = json!({"rules": [{"name": "u", "paths": [format!("{d}/uploads/*")],
        "modes": ["write"], "create": true, "create_perm": "0664"}]})
    .to_string();
    // The server runs under umask 077, which would strip 0664 to 0600.
    let s = TestServer::start_with_umask(dir, &policy, &[], 0o077);
    let mut c = s.client();
    let path = s.path("uploads/wide");
    let options = fdopen::OpenOptions::new(fdopen::Mode::Write)
        .create(fdopen::Create::Exclusive)
        .perm(0o664);
    let (_, grant) = c.open_with(&path, &options).unwrap();
    assert!(grant.created);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o664
    );
}

#[test]
fn an_exclusive_create_racing_a_planted_symlink_never_escapes() {
    let s = upload_server();
    let name = s.path("uploads/race");
    let target = s.path("outside/escaped");
    let stop = Arc::new(AtomicBool::new(false));
    let planter = {
        let (name, target, stop) = (name.clone(), target.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = symlink(&target, &name);
                let _ = fs::remove_file(&name);
            }
        })
    };
    let mut c = s.client();
    let (mut created, mut refused) = (0, 0);
    for _ in 0..3000 {
        let (v, fd) = ask(&mut c, &open_req(&name, json!({"create": "exclusive"})));
        if v["ok"] == true {
            created += 1;
            let file = fs::File::from(fd.unwrap());
            assert_eq!(v["path"], name.to_str().unwrap());
            // What was created is a regular file under uploads/.
            assert!(file.metadata().unwrap().is_file());
        } else {
            refused += 1;
            assert!(
                ["exists", "not_regular", "not_found"].contains(&code(&v)),
                "{v}"
            );
        }
        assert!(!target.exists(), "a file was created outside the grant");
    }
    stop.store(true, Ordering::Relaxed);
    planter.join().unwrap();
    assert!(created + refused == 3000);
}

#[test]
fn a_file_with_other_hard_links_is_only_ever_read() {
    let s = upload_server();
    fs::hard_link(s.path("logs/a.log"), s.path("outside/alias")).unwrap();
    let (v, _) = s.ask(&open_req(&s.path("logs/a.log"), json!({})));
    assert_eq!(code(&v), "denied", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hard link"),
        "{v}"
    );
}

#[test]
fn created_files_belong_to_the_client_or_to_the_server_as_the_rule_says() {
    if !is_root() {
        eprintln!("skipped: a client of another uid needs root");
        return;
    }
    let s = upload_server();
    // Creates `path` as uid 1000 with `stdin` as its contents.
    let create_as_1000 = |path: &Path, extra: &[&str], stdin: &[u8]| {
        let mut cmd = std::process::Command::new(client_under_test());
        cmd.arg("--socket").arg(&s.socket).arg("open").arg(path);
        cmd.args(["--mode", "write", "--create"]).args(extra);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = common::as_ids(&mut cmd, 1000, 1000, &[]).spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::metadata(path).unwrap()
    };
    let mine = s.path("uploads/mine.txt");
    let meta = create_as_1000(&mine, &["--perm", "0600"], b"from uid 1000\n");
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let mut text = String::new();
    fs::File::open(&mine)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "from uid 1000\n");

    let theirs = s.path("spool/by-server");
    assert_eq!(create_as_1000(&theirs, &[], b"x").uid(), 0);

    // In a set-group-ID directory the file takes the directory's group,
    // as the kernel would give it.
    let uploads = s.path("uploads");
    std::os::unix::fs::chown(&uploads, None, Some(4242)).unwrap();
    fs::set_permissions(&uploads, fs::Permissions::from_mode(0o2777)).unwrap();
    let meta = create_as_1000(&s.path("uploads/grouped.txt"), &[], b"x");
    assert_eq!((meta.uid(), meta.gid()), (1000, 4242));
}

#[test]
fn the_client_copies_stdin_into_a_file_it_may_create() {
    let s = upload_server();
    let path = s.path("uploads/from-stdin.txt");
    let p = path.to_str().unwrap();
    let out = run_client(
        &s.socket,
        &[
            "open",
            p,
            "--mode",
            "write",
            "--create=exclusive",
            "--perm",
            "0640",
        ],
        b"piped in\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "piped in\n");
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // Again, exclusively: refused, exit 1, the file untouched.
    let out = run_client(
        &s.socket,
        &["open", p, "--mode", "write", "--create=exclusive"],
        b"no",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    assert_eq!(fs::read_to_string(&path).unwrap(), "piped in\n");
    // --truncate on a log the policy lets us truncate.
    let log = s.path("logs/a.log");
    let out = run_client(
        &s.socket,
        &[
            "open",
            log.to_str().unwrap(),
            "--mode",
            "write",
            "--truncate",
        ],
        b"fresh\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_to_string(&log).unwrap(), "fresh\n");
    // check --json says created, and creates nothing.
    let new = s.path("uploads/not-yet");
    let out = run_client(
        &s.socket,
        &[
            "check",
            new.to_str().unwrap(),
            "--mode",
            "write",
            "--create",
            "--json",
        ],
        b"",
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["created"], true, "{v}");
    assert!(!new.exists());
}

#[test]
fn explain_shows_create_and_truncate_in_its_reasons() {
    let s = upload_server();
    let explain = |path: &Path, extra: &[&str]| {
        let request = [
            OsStr::new("--path"),
            path.as_os_str(),
            OsStr::new("--mode"),
            OsStr::new("write"),
        ];
        explain(
            &s.policy,
            request.into_iter().chain(extra.iter().map(OsStr::new)),
        )
    };
    let (code, text) = explain(&s.path("uploads/new"), &["--create"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("(create)") && text.contains("would be created"),
        "{text}"
    );
    let (code, text) = explain(&s.path("logs/new"), &["--create=exclusive"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("does not let the request create"), "{text}");
    let (code, text) = explain(&s.path("uploads/existing.txt"), &["--truncate"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("does not let the request truncate"), "{text}");
}

/// A flat FUSE filesystem whose files can be created and removed but never
/// chowned: `setattr` answers EPERM, as some network and FAT mounts do.
mod no_chown {
    use std::collections::HashMap;
    use std::ffi::{OsStr, OsString};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use fuser::{
        Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
        ReplyAttr, ReplyCreate, ReplyEmpty, ReplyEntry, Request,
    };

    /// Names of the files that exist, by inode.
    #[derive(Default)]
    pub struct Files {
        pub names: Mutex<HashMap<OsString, u64>>,
        next: Mutex<u64>,
    }

    pub struct NoChownFs(pub Arc<Files>);

    fn attr(ino: u64) -> FileAttr {
        if ino == 1 {
            crate::common::fuse::attr(ino, FileType::Directory, 0, 0o755)
        } else {
            crate::common::fuse::attr(ino, FileType::RegularFile, 0, 0o600)
        }
    }

    impl Filesystem for NoChownFs {
        fn lookup(&self, _req: &Request, _parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
            match self.0.names.lock().unwrap().get(name) {
                Some(&ino) => reply.entry(&Duration::ZERO, &attr(ino), Generation(0)),
                None => reply.error(Errno::ENOENT),
            }
        }

        fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
            reply.attr(&Duration::ZERO, &attr(ino.into()));
        }

        fn create(
            &self,
            _req: &Request,
            _parent: INodeNo,
            name: &OsStr,
            _mode: u32,
            _umask: u32,
            _flags: i32,
            reply: ReplyCreate,
        ) {
            let mut next = self.0.next.lock().unwrap();
            *next = (*next).max(1) + 1;
            self.0.names.lock().unwrap().insert(name.to_owned(), *next);
            reply.created(
                &Duration::ZERO,
                &attr(*next),
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            );
        }

        #[allow(clippy::too_many_arguments)]
        fn setattr(
            &self,
            _req: &Request,
            _ino: INodeNo,
            _mode: Option<u32>,
            _uid: Option<u32>,
            _gid: Option<u32>,
            _size: Option<u64>,
            _atime: Option<fuser::TimeOrNow>,
            _mtime: Option<fuser::TimeOrNow>,
            _ctime: Option<std::time::SystemTime>,
            _fh: Option<FileHandle>,
            _crtime: Option<std::time::SystemTime>,
            _chgtime: Option<std::time::SystemTime>,
            _bkuptime: Option<std::time::SystemTime>,
            _flags: Option<fuser::BsdFileFlags>,
            reply: ReplyAttr,
        ) {
            reply.error(Errno::EPERM);
        }

        fn unlink(&self, _req: &Request, _parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
            match self.0.names.lock().unwrap().remove(name) {
                Some(_) => reply.ok(),
                None => reply.error(Errno::ENOENT),
            }
        }
    }
}

#[test]
fn when_fchown_fails_the_new_file_is_removed_and_the_answer_is_io_error() {
    if let Err(why) = common::fuse::available() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = scratch();
    let files = Arc::new(no_chown::Files::default());
    let mounted = match common::fuse::Mounted::new(
        &dir.path().join("nochown"),
        no_chown::NoChownFs(files.clone()),
    ) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipped: cannot mount a FUSE filesystem here: {e}");
            return;
        }
    };
    let d = glob(dir.path());
    let policy = json!({"rules": [{"name": "up", "paths": [format!("{d}/nochown/*")],
        "modes": ["write"], "create": true}]})
    .to_string();
    let mut s = TestServer::start_in(dir, &policy, &[]);
    let path = mounted.point.join("new.txt");
    s.hold(mounted);
    let (v, fd) = s.ask(&open_req(&path, json!({"create": true})));
    assert_eq!(code(&v), "io_error", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("removed"),
        "{v}"
    );
    assert!(fd.is_none());
    assert!(
        files.names.lock().unwrap().is_empty(),
        "the new file was left behind: {:?}",
        files.names.lock().unwrap()
    );
    drop(s);
}
