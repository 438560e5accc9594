//! Raw protocol connections made as another user (root only): the
//! server learns a client's uid from the kernel at `connect`, so the
//! connecting thread alone takes the user's ids for that one call.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// `nobody`'s uid and gid.
pub fn nobody() -> (u32, u32) {
    let user = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    (user.uid.as_raw(), user.gid.as_raw())
}

/// A connection that reads and writes whole lines.
pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    /// Connects to `socket` with effective ids `uid`/`gid`, changed for
    /// the connecting thread only (raw `setresuid`, not glibc's, which
    /// would change every thread of the test process).
    pub fn connect_as(socket: &Path, uid: u32, gid: u32) -> Conn {
        let socket = socket.to_owned();
        let stream = std::thread::spawn(move || {
            // SAFETY: plain system calls on this thread's credentials.
            unsafe {
                assert_eq!(libc::syscall(libc::SYS_setresgid, -1, gid, -1), 0);
                assert_eq!(libc::syscall(libc::SYS_setresuid, -1, uid, -1), 0);
            }
            UnixStream::connect(&socket).unwrap()
        })
        .join()
        .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// Connects as `nobody`.
    pub fn nobody(socket: &Path) -> Conn {
        let (uid, gid) = nobody();
        Conn::connect_as(socket, uid, gid)
    }

    /// Sends one request and reads its answer.
    pub fn ask(&mut self, request: &Value) -> Value {
        self.send(request);
        self.read()
    }

    pub fn send(&mut self, request: &Value) {
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).unwrap();
    }

    pub fn read(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}
