//! An adversarial review of issues 19 and 22 against SPEC v3, against the
//! real server: edge values and races an outside suite tries, each a hole
//! found in what had landed.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::upgrade::{main_pid, start_from_copy, stop_adopted, upgrade};
use nix::sys::signal::Signal;
use serde_json::Value;

const HELD_POLICY: &str = r#"{"rules":[
  {"name":"own","names":["**"],"ops":["store","retrieve","list","drop","park","wake"]}
]}"#;

/// `--fs-timeout` too long for the clock (SPEC §2: no duration may panic
/// the clock arithmetic) also reaches the upgrade's wait for the lanes:
/// `SIGUSR2` must fail or succeed, never take the server down with it.
#[test]
fn an_upgrade_with_an_fs_timeout_too_long_for_the_clock_keeps_serving() {
    let flags = ["--fs-timeout", "300000000000y"];
    let Some((server, copy)) = start_from_copy(HELD_POLICY, &flags) else {
        return;
    };
    let mut client = server.client();
    let (kept, _far) = UnixStream::pair().unwrap();
    client.store("kept", kept.as_fd(), None).unwrap();
    // The new binary is missing: the upgrade fails and the old server
    // serves on, with what it held.
    std::fs::remove_file(&copy).unwrap();
    let said = upgrade(&server);
    assert!(said.starts_with("STATUS=upgrade failed"), "{said}");
    let names: Vec<String> = server
        .client()
        .list(None, None)
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, ["kept"]);
    let log = server.stderr_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// A client that does not read its answers has read lines the old server
/// could not answer before the upgrade (its queue full). Once the holder
/// is handed over, the old server may answer none of them: a `store` it
/// answered then went into a holder nobody serves any more, and the fd
/// was lost with an `ok` (SPEC §3.4: clients are closed after their
/// answered requests; anything unanswered is theirs to resend).
#[test]
fn an_upgraded_server_answers_nothing_more_that_the_successor_would_not_have() {
    let Some((mut server, _)) = start_from_copy(HELD_POLICY, &["--workers", "1"]) else {
        return;
    };
    let stream = server.connect();
    let (kept, _far) = UnixStream::pair().unwrap();
    // Stopped, so that one read takes both messages: many lines whose
    // answers fill the socket and the queue, then a `store` with its fd.
    server.signal(Signal::SIGSTOP);
    let hellos = "{\"op\":\"hello\"}\n".repeat(3000);
    let sent = fdopen::fdpass::send(stream.as_fd(), hellos.as_bytes(), None).unwrap();
    assert_eq!(sent, hellos.len());
    let store = "{\"op\":\"store\",\"name\":\"late\"}\n";
    fdopen::fdpass::send(stream.as_fd(), store.as_bytes(), Some(kept.as_fd())).unwrap();
    drop(kept);
    server.signal(Signal::SIGCONT);
    // The first answer comes once the server has read everything.
    let mut answers = BufReader::new(stream.try_clone().unwrap());
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut first = String::new();
    answers.read_line(&mut first).unwrap();

    let said = upgrade(&server);
    let new_pid = main_pid(&said);
    let mut store_answer = None;
    for line in answers.lines() {
        let Ok(line) = line else { break };
        let v: Value = serde_json::from_str(&line).unwrap();
        if v.get("server").is_none() {
            store_answer = Some(v);
        }
    }
    let old_exit = common::wait_timeout(server.child.as_mut().unwrap(), Duration::from_secs(30));
    assert!(old_exit.is_some_and(|s| s.success()), "{old_exit:?}");
    let listed = server.client().list(None, None).unwrap();
    stop_adopted(new_pid);
    if let Some(answer) = store_answer {
        assert!(
            answer["ok"] != true || listed.iter().any(|l| l.name == "late"),
            "the old server said {answer} but the successor holds {listed:?}"
        );
    }
}
