//! The line-echo demo this project grew from: a client hands its standard
//! input to the server as a descriptor, and the server prints every line
//! it reads from it.
//!
//! Its wire protocol is its own and tiny: the client sends
//! `{"op":"echo"}\n` with one descriptor attached; when that descriptor
//! reaches end of file the server answers `{"ok":true,"lines":N}\n`, and
//! the client, knowing its input has been consumed, exits.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use crate::client::Error;
use crate::fdpass;

const ECHO_REQUEST: &[u8] = b"{\"op\":\"echo\"}\n";

#[derive(Deserialize)]
struct EchoReply {
    ok: bool,
    #[serde(default)]
    lines: u64,
    #[serde(default)]
    error: Option<String>,
}

/// Serves echo clients on `listener` forever, one thread per client,
/// printing their lines to `out` whole (lines of different clients never
/// mix within a line).
pub fn serve<W: Write + Send + 'static>(listener: UnixListener, out: W) -> io::Result<()> {
    let out = Arc::new(Mutex::new(out));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let out = out.clone();
        std::thread::spawn(move || {
            let _ = serve_one(stream, &out);
        });
    }
    Ok(())
}

fn serve_one<W: Write>(stream: UnixStream, out: &Mutex<W>) -> io::Result<()> {
    let mut buf = [0u8; 256];
    let received = fdpass::recv(stream.as_fd(), &mut buf)?;
    let reply = match (&buf[..received.bytes], received.fds.len()) {
        (ECHO_REQUEST, 1) => {
            let input = File::from(received.fds.into_iter().next().expect("one descriptor"));
            match echo_lines(input, out) {
                Ok(lines) => format!("{{\"ok\":true,\"lines\":{lines}}}\n"),
                Err(e) => error_reply(&format!("reading the descriptor failed: {e}")),
            }
        }
        _ => error_reply("expected {\"op\":\"echo\"} with exactly one descriptor"),
    };
    fdpass::send(stream.as_fd(), reply.as_bytes(), None).map(drop)
}

fn error_reply(message: &str) -> String {
    let body = serde_json::json!({ "ok": false, "error": message });
    format!("{body}\n")
}

/// Copies every line of `input` to `out`, each under the lock.
fn echo_lines<W: Write>(input: impl Read, out: &Mutex<W>) -> io::Result<u64> {
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    let mut count = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(count);
        }
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
        out.write_all(&line)?;
        out.flush()?;
        count += 1;
    }
}

/// Passes `input` to the echo server at `socket` and waits until the server
/// has read all of it. Returns the number of lines it printed.
pub fn send_input(socket: &Path, input: BorrowedFd<'_>) -> Result<u64, Error> {
    let stream = UnixStream::connect(socket).map_err(|source| Error::Connect {
        path: socket.to_owned(),
        source,
    })?;
    fdpass::send(stream.as_fd(), ECHO_REQUEST, Some(input))?;
    let mut reply = Vec::new();
    (&stream).read_to_end(&mut reply)?;
    let reply: EchoReply = serde_json::from_slice(&reply)
        .map_err(|e| Error::Protocol(format!("bad echo reply: {e}")))?;
    if reply.ok {
        Ok(reply.lines)
    } else {
        Err(Error::Protocol(
            reply.error.unwrap_or_else(|| "echo refused".into()),
        ))
    }
}
