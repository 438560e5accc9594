//! examples/heavy_server.rs against the real server: many mostly-idle
//! clients are all answered, and the heavy server keeps state only for
//! the active ones, the rest parked with fdopen (SPEC §3.4).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};

use common::TestServer;

const POLICY: &str = r#"{"rules":[
  {"name":"heavy","names":["heavy/**"],"ops":["park","wake"]}]}"#;

/// The example, built by `cargo test` next to the binaries.
fn example() -> PathBuf {
    let bin_dir = PathBuf::from(common::SERVER);
    bin_dir
        .parent()
        .unwrap()
        .join("examples")
        .join("heavy_server")
}

struct Heavy {
    child: Child,
    out: std::io::Lines<BufReader<ChildStdout>>,
    port: u16,
}

impl Drop for Heavy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Heavy {
    fn start(server: &TestServer, idle: &str) -> Heavy {
        let mut child = Command::new(example())
            .arg(&server.socket)
            .args(["0", idle])
            .stdout(Stdio::piped())
            .spawn()
            .expect("examples/heavy_server is built by cargo test");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = out.next().unwrap().unwrap();
        let port = first
            .strip_prefix("listening on ")
            .unwrap()
            .parse()
            .unwrap();
        Heavy { child, out, port }
    }

    /// Waits for `count` lines of the heavy server's log that start with
    /// `prefix`.
    fn await_events(&mut self, prefix: &str, count: usize) {
        let mut seen = 0;
        while seen < count {
            let line = self
                .out
                .next()
                .expect("heavy server still running")
                .unwrap();
            if line.starts_with(prefix) {
                seen += 1;
            }
        }
    }
}

fn ask(conn: &mut BufReader<TcpStream>, line: &str) -> String {
    conn.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let mut answer = String::new();
    conn.read_line(&mut answer).unwrap();
    answer.trim_end().to_owned()
}

/// `n` clients of the heavy server, each answered once.
fn greeted(heavy: &Heavy, n: usize) -> Vec<BufReader<TcpStream>> {
    let mut clients: Vec<BufReader<TcpStream>> = (0..n)
        .map(|_| BufReader::new(TcpStream::connect(("127.0.0.1", heavy.port)).unwrap()))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(ask(c, &format!("hello {i}")), format!("1: hello {i}"));
    }
    clients
}

#[test]
fn idle_clients_are_parked_and_every_client_is_answered() {
    let server = TestServer::start(POLICY, &[]);
    // Idle long enough that the few round trips after the wake-ups cannot
    // let an answered client fall idle again before `stats`.
    let mut heavy = Heavy::start(&server, "2s");
    let mut clients = greeted(&heavy, 60);
    // All of them fall idle and are parked.
    heavy.await_events("parked heavy/", 60);
    let mut stats = BufReader::new(TcpStream::connect(("127.0.0.1", heavy.port)).unwrap());
    assert_eq!(
        ask(&mut stats, "stats"),
        "active=1",
        "only the stats connection"
    );

    // A few speak again: each is woken, answered, and holds state again.
    for i in [7, 31, 59, 0, 44] {
        let answer = ask(&mut clients[i], &format!("again {i}"));
        assert_eq!(
            answer,
            format!("1: again {i}"),
            "fresh state after the wake-up"
        );
    }
    assert_eq!(ask(&mut stats, "stats"), "active=6");
    let woken: Vec<String> = server
        .audit_lines()
        .into_iter()
        .filter(|r| r["op"] == "wake" && r["event"] == "readable")
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(woken.len(), 5, "{woken:?}");
}

#[test]
fn parked_clients_come_back_across_an_upgrade_of_fdopen() {
    use common::upgrade::{Adopted, main_pid, start_from_copy, upgrade};
    let Some((server, _)) = start_from_copy(POLICY, &[]) else {
        return;
    };
    let mut heavy = Heavy::start(&server, "300ms");
    let mut clients = greeted(&heavy, 20);
    heavy.await_events("parked heavy/", 20);

    let successor = Adopted(main_pid(&upgrade(&server)));
    // Parked through the upgrade; woken by the subscription that came
    // back by itself.
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(ask(c, &format!("again {i}")), format!("1: again {i}"));
    }
    // And parked again, by the parking client that reconnected.
    heavy.await_events("parked heavy/", 20);
    assert_eq!(ask(&mut clients[3], "once more"), "1: once more");
    successor.stop();
}
