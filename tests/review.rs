//! An adversarial review of issues 19 and 22 against SPEC v3, against the
//! real server: edge values and races an outside suite tries, each a hole
//! found in what had landed.

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use common::upgrade::{start_from_copy, upgrade};

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
