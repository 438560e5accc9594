//! The `stats` op (SPEC §3.5) and `fdopen-client stats --prometheus`:
//! counters after a known mix of requests.

mod common;

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use common::{TestServer, glob, is_root};
use fdopen::{Error, ErrorCode, Mode};

fn policy(dir: &std::path::Path) -> String {
    format!(
        r#"{{"rules":[
          {{"name":"files","paths":["{d}/*.txt"]}},
          {{"name":"no","effect":"deny","paths":["{d}/secret.txt"]}},
          {{"name":"held","names":["**"],"ops":["store","park","list"]}}]}}"#,
        d = glob(dir)
    )
}

#[test]
fn counters_follow_a_known_mix_of_requests() {
    let dir = common::scratch();
    for name in ["a.txt", "b.txt", "secret.txt"] {
        fs::write(dir.path().join(name), "x").unwrap();
    }
    let text = policy(dir.path());
    let s = TestServer::start_in(dir, &text, &[]);
    let mut c = s.client();
    for name in ["a.txt", "b.txt", "a.txt"] {
        c.open(s.path(name), Mode::Read).unwrap();
    }
    let refused = |r: Result<std::fs::File, Error>| match r {
        Err(Error::Refused(e)) => e.code,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refused(c.open(s.path("secret.txt"), Mode::Read)),
        ErrorCode::Denied
    );
    assert_eq!(
        refused(c.open(s.path("gone.txt"), Mode::Read)),
        ErrorCode::NotFound
    );
    c.hello().unwrap();
    c.scope().unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    c.store("one", a.as_fd(), None).unwrap();
    c.park("two", a.as_fd(), None).unwrap();
    // On the same connection: the only client the server has is `c`.
    let (v, _) = common::ask(&mut c, "{\"op\":\"nonsense\"}");
    assert_eq!(v["error"]["code"], "bad_request");
    s.reload();
    fs::write(&s.policy, "{ not json").unwrap();
    s.reload();

    let stats = c.stats().unwrap();
    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    assert_eq!(n(&stats["requests"]["open"]), 5);
    assert_eq!(n(&stats["requests"]["hello"]), 1);
    assert_eq!(n(&stats["requests"]["scope"]), 1);
    assert_eq!(n(&stats["requests"]["store"]), 1);
    assert_eq!(n(&stats["requests"]["park"]), 1);
    assert_eq!(n(&stats["requests"]["stats"]), 1);
    assert_eq!(n(&stats["requests"]["malformed"]), 1);
    assert_eq!(n(&stats["grants"]), 5, "three opens, a store, a park");
    assert_eq!(n(&stats["refusals"]["denied"]), 1);
    assert_eq!(n(&stats["refusals"]["not_found"]), 1);
    assert_eq!(n(&stats["refusals"]["bad_request"]), 1);
    assert_eq!((n(&stats["held"]), n(&stats["parked"])), (1, 1));
    assert_eq!(n(&stats["policy_rules"]), 3);
    assert_eq!(
        (n(&stats["reloads"]["ok"]), n(&stats["reloads"]["failed"])),
        (1, 1)
    );
    assert_eq!(n(&stats["clients"]), 1);
    assert_eq!(n(&stats["audit_write_errors"]), 0);
    assert_eq!(n(&stats["fs_timeouts"]), 0);

    let out = common::run_client(&s.socket, &["stats", "--prometheus"], b"");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("fdopen_requests_total{op=\"open\"} 5\n"),
        "{text}"
    );
    assert!(
        text.contains("fdopen_refusals_total{code=\"denied\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("fdopen_parked_fds 1\n"), "{text}");
}

#[test]
fn stats_are_for_root_the_server_user_and_the_stats_group() {
    if !is_root() {
        eprintln!("skipped: needs root to ask as other users");
        return;
    }
    let s = TestServer::start(
        r#"{"rules":[{"name":"x","paths":["/nowhere"]}]}"#,
        &["--socket-mode", "0666", "--stats-group", "33"],
    );
    // `fdopen-client stats` as uid:gid; its exit code (1: refused).
    let ask_as = |uid: u32, gid: u32| {
        let mut cmd = std::process::Command::new(common::client_under_test());
        cmd.arg("--socket").arg(&s.socket).arg("stats");
        common::as_ids(&mut cmd, uid, gid, &[])
            .output()
            .unwrap()
            .status
            .code()
            .unwrap()
    };
    assert_eq!(ask_as(65534, 65534), 1, "nobody is denied");
    assert_eq!(ask_as(65534, 33), 0, "a member of --stats-group is not");
    assert!(s.client().stats().is_ok(), "root");
}
