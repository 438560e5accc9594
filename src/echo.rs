//! The line-echo demo this project grew from (SPEC §9), the seed's way
//! round: the server passes its standard output to each client as a
//! descriptor, and the client writes every line of its standard input
//! into it, so the lines show up wherever the server's output goes.
//!
//! Wire format, all of it: on connect the server sends one line,
//! `{"ok":true,"fd":true}\n`, with its standard output attached
//! (`SCM_RIGHTS`), and closes the connection. The client sends nothing.
//! Each line is written with a single `write`, so lines of clients writing
//! at once never mix within a line (on a pipe, for lines up to `PIPE_BUF`,
//! 4096 bytes; on a file or terminal, whatever their length).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crate::client::Error;
use crate::fdpass;

const HANDOVER: &[u8] = b"{\"ok\":true,\"fd\":true}\n";

/// Hands `output` to every client that connects to `listener`, forever.
pub fn serve(listener: UnixListener, output: BorrowedFd<'_>) -> io::Result<()> {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        // A client that went away already only costs this send.
        let _ = fdpass::send(stream.as_fd(), HANDOVER, Some(output));
    }
    Ok(())
}

/// Connects to the echo server at `socket` and writes each line of
/// `input` to the output it hands over. Returns the number of lines.
pub fn send_input(socket: &Path, input: impl io::Read) -> Result<u64, Error> {
    let stream = UnixStream::connect(socket).map_err(|source| Error::Connect {
        path: socket.to_owned(),
        source,
    })?;
    let mut buf = [0u8; 64];
    let received = fdpass::recv(stream.as_fd(), &mut buf)?;
    if &buf[..received.bytes] != HANDOVER || received.fds.len() != 1 {
        return Err(Error::Protocol(
            "the echo server did not hand over its output".into(),
        ));
    }
    let mut output = File::from(received.fds.into_iter().next().expect("one descriptor"));
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
        // One write per line: `write_all` only loops on a short write,
        // which a pipe makes only for lines longer than PIPE_BUF.
        output.write_all(&line)?;
        count += 1;
    }
}
