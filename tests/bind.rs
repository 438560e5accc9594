//! Sockets on privileged ports (SPEC §3.3): an unprivileged client gets a
//! listening TCP socket or a bound UDP socket on a port below 1024 that it
//! could not bind itself, owned by its own uid, and nothing outside its
//! rule. Needs root (the server binds what `nobody` may not).

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::json;

const NOBODY: u32 = 65534;

/// Runs `fdopen-client ARGS` as `nobody`.
fn client_as_nobody(socket: &std::path::Path, args: &[&str]) -> std::process::Child {
    let mut cmd = Command::new(client_under_test());
    cmd.arg("--socket").arg(socket).args(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    common::as_ids(&mut cmd, NOBODY, NOBODY, &[])
        .spawn()
        .unwrap()
}

fn finished(child: std::process::Child) -> Output {
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whoever owns the TCP socket listening on `port`, per /proc/net/tcp.
fn tcp_listener_uid(port: u16) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let local_port = u16::from_str_radix(cols[1].rsplit(':').next()?, 16).ok()?;
        (local_port == port && cols[3] == "0A").then(|| cols[7].parse().ok())?
    })
}

fn bind_server(port: u16) -> TestServer {
    let policy = json!({"rules": [
        {"name": "web", "binds": [format!("tcp:127.0.0.1:{port}"), format!("udp:127.0.0.1:{port}")],
         "users": ["nobody", "root"]}
    ]})
    .to_string();
    TestServer::start(&policy, &["--socket-mode", "0666"])
}

#[test]
fn nobody_serves_tcp_on_a_privileged_port_through_socket_activation() {
    if !is_root() {
        eprintln!("skipped: binding a privileged port for another user needs a root server");
        return;
    }
    let port = free_privileged_port(700);
    let s = bind_server(port);
    // A real program that speaks systemd socket activation: fd 3, LISTEN_*.
    let program = r#"
import os, socket, sys
assert os.environ["LISTEN_FDS"] == "1", os.environ
assert os.environ["LISTEN_PID"] == str(os.getpid())
print(os.environ["LISTEN_FDNAMES"], os.getuid(), flush=True)
listener = socket.socket(fileno=3)
conn, _ = listener.accept()
conn.sendall(b"hello from " + str(os.getuid()).encode())
conn.close()
"#;
    let address = format!("tcp:127.0.0.1:{port}");
    let mut child = client_as_nobody(
        &s.socket,
        &["bind", &address, "--", "python3", "-c", program],
    );
    // The program's first line says it runs with the socket.
    let first = first_line(&mut child);
    assert_eq!(
        first,
        format!("tcp_127.0.0.1_{port} {NOBODY}"),
        "socket named after its address"
    );
    // The program now waits in accept, so its listener is there to see.
    assert_eq!(
        tcp_listener_uid(port),
        Some(NOBODY),
        "the socket is the client's"
    );
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("listening on the port");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    let out = finished(child);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(reply, format!("hello from {NOBODY}"));
    let audit = s.audit_lines();
    let record = audit.iter().find(|r| r["op"] == "bind").unwrap();
    assert_eq!(record["address"], address);
    assert_eq!(record["uid"], NOBODY);
    assert_eq!(record["rule"], "web");
}

#[test]
fn nobody_gets_a_udp_socket_that_receives_a_datagram() {
    if !is_root() {
        eprintln!("skipped: binding a privileged port for another user needs a root server");
        return;
    }
    let port = free_privileged_port(800);
    let s = bind_server(port);
    let program = r#"
import os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, fileno=3)
print(os.environ["LISTEN_FDNAMES"], flush=True)
data, _ = s.recvfrom(100)
print(data.decode(), flush=True)
"#;
    let address = format!("dns=udp:127.0.0.1:{port}");
    let mut child = client_as_nobody(
        &s.socket,
        &["bind", &address, "--", "python3", "-c", program],
    );
    assert_eq!(first_line(&mut child), "dns", "named as asked");
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(b"a datagram", ("127.0.0.1", port)).unwrap();
    let out = finished(child);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "a datagram");
}

/// The first line `child` prints (it has then started with its sockets);
/// the rest of its output is left for `wait_with_output`.
fn first_line(child: &mut std::process::Child) -> String {
    let mut stdout = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    child.stdout = Some(stdout);
    text(&line)
}

#[test]
fn ports_outside_the_rule_are_denied_and_taken_ports_are_in_use() {
    if !is_root() {
        eprintln!("skipped: binding a privileged port for another user needs a root server");
        return;
    }
    let port = free_privileged_port(900);
    let s = bind_server(port);
    let other = format!("tcp:127.0.0.1:{}", port + 1);
    let out = finished(client_as_nobody(&s.socket, &["bind", &other, "--", "true"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("denied"),
        "{}",
        text(&out.stderr)
    );
    let wildcard = format!("tcp:*:{port}");
    let out = finished(client_as_nobody(
        &s.socket,
        &["bind", &wildcard, "--", "true"],
    ));
    assert!(
        text(&out.stderr).contains("denied"),
        "{}",
        text(&out.stderr)
    );

    // Taken: in_use.
    let _holder = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut c = s.client();
    let (v, fd) = ask(
        &mut c,
        &json!({"op": "bind", "address": format!("tcp:127.0.0.1:{port}")}).to_string(),
    );
    assert_eq!(code(&v), "in_use", "{v}");
    assert!(fd.is_none());
    // Malformed: bad_request.
    for address in ["tcp:127.0.0.1:0", "tcp:010.0.0.1:80", "tcp:localhost:80"] {
        let (v, _) = ask(
            &mut c,
            &json!({"op": "bind", "address": address}).to_string(),
        );
        assert_eq!(code(&v), "bad_request", "{address}: {v}");
    }
    let (v, _) = ask(
        &mut c,
        &json!({"op": "bind", "address": format!("tcp:127.0.0.1:{port}"), "path": "/x"})
            .to_string(),
    );
    assert_eq!(code(&v), "bad_request", "{v}");
    // reuseport needs a rule that allows it.
    let (v, _) = ask(
        &mut c,
        &json!({"op": "bind", "address": format!("udp:127.0.0.1:{port}"), "reuseport": true})
            .to_string(),
    );
    assert_eq!(code(&v), "denied", "{v}");
}

#[test]
fn explain_covers_bind_rules() {
    let dir = scratch();
    let policy = dir.path().join("p.json");
    std::fs::write(
        &policy,
        json!({"rules": [
            {"name": "web", "binds": ["tcp:*:443", "tcp:*:80"], "users": [0]},
            {"name": "dev", "binds": ["tcp:127.0.0.1:8000-8099"], "reuseport": true},
            {"name": "no-dev-81", "effect": "deny", "binds": ["tcp:any:8081"]}
        ]})
        .to_string(),
    )
    .unwrap();
    let explain = |args: &[&str]| explain(&policy, args);
    let (code, out) = explain(&["--bind", "tcp:*:443", "--uid", "0"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("granted by rule web"), "{out}");
    let (code, out) = explain(&["--bind", "tcp:*:443", "--uid", "1000"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("uid 1000 is not among its users"), "{out}");
    let (code, out) = explain(&["--bind", "tcp:127.0.0.1:8081", "--reuseport"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("denied by rule no-dev-81"), "{out}");
    let (code, out) = explain(&["--bind", "tcp:127.0.0.1:8050", "--reuseport"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("none of its binds covers"), "{out}");
}

#[test]
fn the_wildcard_binds_every_family_and_ipv6_hosts_are_bracketed() {
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (any_port, v6_port) = (free(), free());
    let has_ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let policy = json!({"rules": [{"name": "socks", "binds": [
        format!("tcp:*:{any_port}"), format!("tcp:[::1]:{v6_port}"), format!("udp:any:{v6_port}")
    ]}]})
    .to_string();
    let s = TestServer::start(&policy, &[]);
    let mut c = s.client();
    let (fd, bound) = c.bind(&format!("tcp:*:{any_port}"), false).unwrap();
    let listener = TcpListener::from(fd);
    if has_ipv6 {
        assert_eq!(bound, format!("tcp:[::]:{any_port}"));
        // IPV6_V6ONLY is off for `*`: IPv4 clients reach it too.
        TcpStream::connect(("::1", any_port)).unwrap();
    } else {
        assert_eq!(bound, format!("tcp:0.0.0.0:{any_port}"));
    }
    TcpStream::connect(("127.0.0.1", any_port)).unwrap();
    assert!(listener.accept().is_ok());
    if has_ipv6 {
        let (_, bound) = c.bind(&format!("tcp:[::1]:{v6_port}"), false).unwrap();
        assert_eq!(bound, format!("tcp:[::1]:{v6_port}"));
        // An IPv4-mapped address is IPv4, and says so.
        let (v, _) = ask(
            &mut c,
            &json!({"op": "bind", "address": format!("udp:[::ffff:127.0.0.1]:{v6_port}")})
                .to_string(),
        );
        assert_eq!(v["address"], format!("udp:127.0.0.1:{v6_port}"), "{v}");
    } else {
        eprintln!("skipped the [::1] half: no IPv6 on this machine");
    }
    // A bound but unlistened TCP socket, and a backlog.
    let (v, fd) = ask(
        &mut c,
        &json!({"op": "bind", "address": format!("tcp:*:{any_port}"), "listen": false}).to_string(),
    );
    // The first socket still holds the port.
    assert_eq!(code(&v), "in_use", "{v}");
    assert!(fd.is_none());
    drop(listener);
    let (v, fd) = ask(
        &mut c,
        &json!({"op": "bind", "address": format!("tcp:*:{any_port}"), "listen": false, "backlog": 5}).to_string(),
    );
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        TcpStream::connect(("127.0.0.1", any_port)).is_err(),
        "not listening"
    );
    drop(fd);
}
