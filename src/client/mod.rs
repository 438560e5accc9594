//! The client library: connect, ask, and get a [`File`].
//!
//! Responses may arrive several to one `recvmsg`, each grant's descriptor
//! with its own bytes, so received descriptors wait in a FIFO and each
//! response with `"fd": true` takes the oldest. That keeps pipelining
//! ([`Client::send`] many, then [`Client::receive`] as many) correct.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

mod errno;
mod held;
mod tree;
pub use crate::protocol::TreeOp;
pub use errno::errno_number;
pub use held::{WakeEvent, Wakeups, Woken};
pub use tree::{
    DirEntry, DirPage, FileType, Metadata, ReadDir, Timestamp, TreeReply, TreeRequest, Within,
    is_dot, major_minor,
};
mod reconnect;
pub use reconnect::Reconnect;

use crate::fdpass;
use crate::protocol::{
    Create, Grant, Mode, Op, ResponseLine, Scope, ServerError, ServerInfo, WireRequest, json_path,
};

/// Everything that can go wrong for a client.
///
/// ```no_run
/// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
/// match client.open("/etc/shadow", fdopen::Mode::Read) {
///     Ok(file) => drop(file),
///     Err(fdopen::Error::Refused(e)) => eprintln!("refused: {} ({})", e.message, e.code),
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    /// The connection broke after it was made.
    #[error("connection to the server failed: {0}")]
    Io(#[from] io::Error),
    /// The server said something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused the request.
    #[error("{0}")]
    Refused(#[from] ServerError),
    /// A relative path: the server would refuse it, so it is not sent.
    #[error("{0:?} is relative; the server takes absolute paths only")]
    RelativePath(PathBuf),
    /// No socket was given and none of the defaults applies.
    #[error(transparent)]
    NoSocket(#[from] crate::socket_path::SocketError),
    /// An earlier request timed out: its answer may still come, so the
    /// connection is out of step and must be replaced.
    #[error("an earlier request on this connection timed out; connect again")]
    OutOfStep,
    /// The connection broke before this request was answered, and it is
    /// not one that may be sent twice: the server may have carried it out
    /// (SPEC §3.4). Look before asking again.
    #[error(
        "the connection to the server was lost before it answered; the request may have been carried out"
    )]
    Lost,
    /// [`Client::set_reconnect`] on a client made with
    /// [`Client::from_stream`]: it knows no socket to connect to.
    #[error("this client was made from a stream and knows no socket to reconnect to")]
    NoSocketToReconnect,
}

/// One response, with the descriptor of a grant.
///
/// ```no_run
/// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
/// client.send(fdopen::protocol::Op::Open, Some("/srv/a.log".as_ref()), None)?;
/// let response = client.receive()?;
/// let (grant, fd) = response.into_result()?;
/// println!("{} ({} bytes), fd: {}", grant.path, grant.size, fd.is_some());
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Debug)]
pub struct Response {
    pub line: ResponseLine,
    pub fd: Option<OwnedFd>,
}

impl Response {
    /// The grant this response reports, or the server's refusal.
    pub fn into_result(self) -> Result<(Grant, Option<OwnedFd>), Error> {
        let line = self.line;
        if !line.ok {
            return Err(Error::Refused(line.error.ok_or_else(|| {
                Error::Protocol("refusal without an error".into())
            })?));
        }
        let missing = |what| Error::Protocol(format!("grant without {what}"));
        let grant = Grant {
            path: line.path.ok_or_else(|| missing("path"))?,
            path_b64: line.path_b64,
            size: line.size.ok_or_else(|| missing("size"))?,
            mtime: line.mtime.ok_or_else(|| missing("mtime"))?,
            rule: line.rule.ok_or_else(|| missing("rule"))?,
            created: line.created,
        };
        Ok((grant, self.fd))
    }
}

/// A connection to an fdopen server.
///
/// ```no_run
/// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
/// let file = client.open("/var/log/app/today.log", fdopen::Mode::Read)?;
/// # drop(file);
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    inbuf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    /// A timeout broke the request/response order.
    out_of_step: bool,
    /// How long to poll for an answer before sleeping on it.
    busy_poll: std::time::Duration,
    /// Where it connected, for reconnecting.
    socket: Option<PathBuf>,
    /// With a reconnect policy: what was sent and not yet answered.
    unanswered: Option<reconnect::Unanswered>,
}

impl Client {
    /// Connects to the server listening at `socket`.
    ///
    /// ```no_run
    /// let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn connect(socket: impl AsRef<Path>) -> Result<Client, Error> {
        let path = socket.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
        let mut client = Client::from_stream(stream);
        client.socket = Some(path.to_owned());
        Ok(client)
    }

    /// Connects where a client should (SPEC §1): `FDOPEN_SOCKET`, else the
    /// system server's `/run/fdopen/fdopen.sock` if it exists, else
    /// `$XDG_RUNTIME_DIR/fdopen.sock`.
    ///
    /// ```no_run
    /// let mut client = fdopen::Client::connect_default()?;
    /// println!("{}", client.hello()?.version);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn connect_default() -> Result<Client, Error> {
        Client::connect(crate::socket_path::client_default()?)
    }

    /// Wraps an already connected stream.
    ///
    /// ```no_run
    /// let stream = std::os::unix::net::UnixStream::connect("/run/fdopen/fdopen.sock")?;
    /// let client = fdopen::Client::from_stream(stream);
    /// # drop(client);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn from_stream(stream: UnixStream) -> Client {
        Client {
            stream,
            inbuf: Vec::new(),
            fds: VecDeque::new(),
            out_of_step: false,
            busy_poll: std::time::Duration::ZERO,
            socket: None,
            unanswered: None,
        }
    }

    /// Reconnects by itself when the server restarts or upgrades (SPEC
    /// §3.4), sending again what was unanswered where that is harmless;
    /// other unanswered requests fail with [`Error::Lost`]. `None` (the
    /// default) reports a broken connection as it is.
    ///
    /// ```no_run
    /// let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// client.set_reconnect(Some(fdopen::Reconnect::default()))?;
    /// let names = client.list(Some("web/"), None)?; // survives an upgrade
    /// # drop(names);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn set_reconnect(&mut self, policy: Option<Reconnect>) -> Result<(), Error> {
        self.unanswered = match policy {
            None => None,
            Some(policy) => {
                let socket = self.socket.clone().ok_or(Error::NoSocketToReconnect)?;
                Some(reconnect::Unanswered::new(policy, socket))
            }
        };
        Ok(())
    }

    /// Polls for each answer for up to `spin` before sleeping on it: a
    /// quick answer then costs no wake-up, at the price of a busy CPU
    /// meanwhile. Each poll yields the CPU, so a server that shares the
    /// core still runs (spinning instead doubled `run`'s brokered calls
    /// on a loaded 2-core VM). For latency-critical callers
    /// (`fdopen-client run` uses 50 µs); the default is zero.
    ///
    /// ```no_run
    /// let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// client.set_busy_poll(std::time::Duration::from_micros(50));
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn set_busy_poll(&mut self, spin: std::time::Duration) {
        self.busy_poll = spin;
    }

    /// Gives up on a request whose answer takes longer than `timeout`
    /// (`None`, the default: wait as long as it takes). After a timeout
    /// the connection is out of step, and further requests on it fail
    /// with [`Error::OutOfStep`].
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// client.set_timeout(Some(Duration::from_secs(5)))?;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn set_timeout(&mut self, timeout: Option<std::time::Duration>) -> Result<(), Error> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)?;
        Ok(())
    }

    /// Asks the server who it is.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// let info = client.hello()?;
    /// assert_eq!(info.protocol, 2);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn hello(&mut self) -> Result<ServerInfo, Error> {
        self.greet(WireRequest::new(Op::Hello))
    }

    /// Says `hello` and lets the server coalesce several answers into one
    /// message with up to `fds_per_message` descriptors (2 to 253, SPEC
    /// §2): fewer system calls for a client that pipelines. This client
    /// always receives with room for 253.
    ///
    /// ```no_run
    /// let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// client.hello_coalescing(64)?;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn hello_coalescing(&mut self, fds_per_message: u8) -> Result<ServerInfo, Error> {
        self.greet(WireRequest {
            fds_per_message: Some(fds_per_message),
            ..WireRequest::new(Op::Hello)
        })
    }

    fn greet(&mut self, hello: WireRequest<'_>) -> Result<ServerInfo, Error> {
        self.send_request(&hello)?;
        let line = self.receive()?.line;
        if !line.ok {
            return Err(line
                .error
                .map_or_else(|| Error::Protocol("bad hello".into()), Error::Refused));
        }
        match (line.server, line.version, line.protocol) {
            (Some(server), Some(version), Some(protocol)) => Ok(ServerInfo {
                server,
                version,
                protocol,
            }),
            _ => Err(Error::Protocol(
                "hello response lacks server, version or protocol".into(),
            )),
        }
    }

    /// Opens `path` through the server.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// use std::io::Read;
    /// let mut text = String::new();
    /// client.open("/srv/logs/a.log", fdopen::Mode::Read)?.read_to_string(&mut text)?;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn open(&mut self, path: impl AsRef<Path>, mode: Mode) -> Result<File, Error> {
        self.open_with_grant(path, mode).map(|(file, _)| file)
    }

    /// Opens `path` and also returns what the server reported about it.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// let (file, grant) = client.open_with_grant("/srv/logs/a.log", fdopen::Mode::Read)?;
    /// println!("{} is {} bytes, granted by rule {}", grant.path, grant.size, grant.rule);
    /// # drop(file);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn open_with_grant(
        &mut self,
        path: impl AsRef<Path>,
        mode: Mode,
    ) -> Result<(File, Grant), Error> {
        self.send(Op::Open, Some(path.as_ref()), Some(mode))?;
        match self.receive()?.into_result()? {
            (grant, Some(fd)) => Ok((File::from(fd), grant)),
            (_, None) => Err(Error::Protocol("grant without a descriptor".into())),
        }
    }

    /// Asks whether `path` would be granted, without opening it for us.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// let grant = client.check("/srv/logs/a.log", fdopen::Mode::Append)?;
    /// println!("would be granted by {}", grant.rule);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn check(&mut self, path: impl AsRef<Path>, mode: Mode) -> Result<Grant, Error> {
        self.send(Op::Check, Some(path.as_ref()), Some(mode))?;
        self.receive()?.into_result().map(|(grant, _)| grant)
    }

    /// Opens (and, as `options` allow, creates or truncates) `path`.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// use fdopen::{Create, Mode, OpenOptions};
    /// let options = OpenOptions::new(Mode::Write).create(Create::Exclusive).perm(0o640);
    /// let (file, grant) = client.open_with("/srv/uploads/report.csv", &options)?;
    /// assert!(grant.created);
    /// # drop(file);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn open_with(
        &mut self,
        path: impl AsRef<Path>,
        options: &OpenOptions,
    ) -> Result<(File, Grant), Error> {
        self.send_file(Op::Open, path.as_ref(), options)?;
        match self.receive()?.into_result()? {
            (grant, Some(fd)) => Ok((File::from(fd), grant)),
            (_, None) => Err(Error::Protocol("grant without a descriptor".into())),
        }
    }

    /// What [`Client::open_with`] would be answered, without opening,
    /// creating or truncating anything.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// use fdopen::{Create, Mode, OpenOptions};
    /// let options = OpenOptions::new(Mode::Write).create(Create::Yes).truncate(true);
    /// client.check_with("/srv/reports/today.csv", &options)?;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn check_with(
        &mut self,
        path: impl AsRef<Path>,
        options: &OpenOptions,
    ) -> Result<Grant, Error> {
        self.send_file(Op::Check, path.as_ref(), options)?;
        self.receive()?.into_result().map(|(grant, _)| grant)
    }

    /// Sends an `open` or `check` with every option, without waiting.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// use fdopen::{Mode, OpenOptions, protocol::Op};
    /// for path in ["/srv/a.log", "/srv/b.log"] {
    ///     client.send_file(Op::Open, path.as_ref(), &OpenOptions::new(Mode::Read))?;
    /// }
    /// let first = client.receive()?;
    /// let second = client.receive()?;
    /// # drop((first, second));
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn send_file(&mut self, op: Op, path: &Path, options: &OpenOptions) -> Result<(), Error> {
        let (path, path_b64) = wire_path(absolute(path)?);
        let request = WireRequest {
            path,
            path_b64,
            mode: Some(options.mode),
            create: options.create.is_requested().then_some(options.create),
            perm: options.perm.map(|p| format!("{p:04o}")),
            truncate: options.truncate.then_some(true),
            nofollow: options.nofollow.then_some(true),
            within: options.within.as_ref().map(Within::to_wire).transpose()?,
            ..WireRequest::new(op)
        };
        self.send_request(&request)
    }

    /// What the server's allow rules could grant this client (SPEC §3.5).
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// for path in client.scope()?.paths {
    ///     println!("{} ({:?})", path.glob, path.modes);
    /// }
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn scope(&mut self) -> Result<Scope, Error> {
        self.send_request(&WireRequest::new(Op::Scope))?;
        self.scope_answer()
    }

    /// Reads the answer to a `scope` sent earlier (`run` asks it together
    /// with `hello`).
    pub(crate) fn scope_answer(&mut self) -> Result<Scope, Error> {
        let line = self.receive()?.line;
        if !line.ok {
            return Err(Error::Refused(line.error.ok_or_else(|| {
                Error::Protocol("refusal without an error".into())
            })?));
        }
        Ok(Scope {
            paths: line.paths.unwrap_or_default(),
            binds: line.binds.unwrap_or_default(),
            names: line.names.unwrap_or_default(),
        })
    }

    /// Asks for a socket bound to `address` (`tcp:HOST:PORT`, SPEC §3.3);
    /// returns it with its bound address as the server reports it.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// let (socket, bound) = client.bind("tcp:*:443", false)?;
    /// println!("listening on {bound}");
    /// let listener = std::net::TcpListener::from(socket);
    /// # drop(listener);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn bind(&mut self, address: &str, reuseport: bool) -> Result<(OwnedFd, String), Error> {
        let options = BindOptions {
            reuseport,
            ..BindOptions::default()
        };
        self.bind_with(address, &options)
    }

    /// [`Client::bind`] with every field of SPEC §3.3.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// let options = fdopen::BindOptions { listen: false, ..Default::default() };
    /// let (socket, _) = client.bind_with("udp:[::1]:53", &options)?;
    /// # drop(socket);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn bind_with(
        &mut self,
        address: &str,
        options: &BindOptions,
    ) -> Result<(OwnedFd, String), Error> {
        let request = WireRequest {
            address: Some(address.to_owned()),
            reuseport: options.reuseport.then_some(true),
            v6only: options.v6only,
            listen: (!options.listen).then_some(false),
            ..WireRequest::new(Op::Bind)
        };
        self.send_request(&request)?;
        let response = self.receive()?;
        let line = response.line;
        if !line.ok {
            return Err(Error::Refused(line.error.ok_or_else(|| {
                Error::Protocol("refusal without an error".into())
            })?));
        }
        match (response.fd, line.address) {
            (Some(fd), Some(bound)) => Ok((fd, bound)),
            _ => Err(Error::Protocol(
                "bind granted without a socket or address".into(),
            )),
        }
    }

    /// Sends one request without waiting for its response (pipelining).
    /// A path that is not UTF-8 travels as `path_b64`.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// use fdopen::{Mode, protocol::Op};
    /// client.send(Op::Check, Some("/srv/a.log".as_ref()), Some(Mode::Read))?;
    /// let answer = client.receive()?;
    /// # drop(answer);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn send(&mut self, op: Op, path: Option<&Path>, mode: Option<Mode>) -> Result<(), Error> {
        let (path, path_b64) = match path {
            Some(path) => wire_path(absolute(path)?),
            None => (None, None),
        };
        let request = WireRequest {
            path,
            path_b64,
            mode,
            ..WireRequest::new(op)
        };
        self.send_request(&request)
    }

    fn send_request(&mut self, request: &WireRequest<'_>) -> Result<(), Error> {
        let mut line = serde_json::to_vec(&request).map_err(|e| Error::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.send_raw(&line)
    }

    /// Sends bytes as they are: for tests and tools that speak raw JSON.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// client.send_raw(b"{\"op\":\"hello\",\"id\":1}\n")?;
    /// let answer = client.receive()?;
    /// assert!(answer.line.ok);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.out_of_step {
            return Err(Error::OutOfStep);
        }
        if let Some(unanswered) = &mut self.unanswered {
            unanswered.sending(bytes);
        }
        self.write_bytes(bytes)
    }

    /// Writes bytes already noted as sent; a broken connection is
    /// replaced, and the new one is sent what the old one left.
    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), Error> {
        match self.stream.write_all(bytes) {
            Ok(()) => Ok(()),
            Err(e) if self.unanswered.is_some() && reconnect::broken(&e) => self.come_back(),
            Err(e) => Err(self.note_timeout(e)),
        }
    }

    /// Sends `line` with `fd` attached to its first byte (SPEC §2).
    fn send_with_fd(&mut self, line: &[u8], fd: BorrowedFd<'_>) -> Result<(), Error> {
        if self.out_of_step {
            return Err(Error::OutOfStep);
        }
        if let Some(unanswered) = &mut self.unanswered {
            unanswered.sending(line);
        }
        match fdpass::send(self.stream.as_fd(), line, Some(fd)) {
            Ok(sent) => self.write_bytes(&line[sent..]),
            Err(e) if self.unanswered.is_some() && reconnect::broken(&e) => self.come_back(),
            Err(e) => Err(self.note_timeout(e)),
        }
    }

    /// Connects again (see [`Client::set_reconnect`]).
    fn come_back(&mut self) -> Result<(), Error> {
        let Some(unanswered) = &mut self.unanswered else {
            return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()));
        };
        // Whole answers already here stay: their requests are done.
        let kept = reconnect::keep_whole_lines(&mut self.inbuf, &mut self.fds);
        let again = unanswered.resend(kept);
        let stream = unanswered
            .policy
            .connect(&unanswered.socket)
            .map_err(|source| Error::Connect {
                path: unanswered.socket.clone(),
                source,
            })?;
        stream.set_read_timeout(self.stream.read_timeout()?)?;
        stream.set_write_timeout(self.stream.write_timeout()?)?;
        self.stream = stream;
        self.stream
            .write_all(&again)
            .map_err(|e| self.note_timeout(e))
    }

    /// One `recvmsg`: polled for up to the busy-poll time, then blocking.
    fn receive_some(&mut self, buf: &mut [u8]) -> Result<fdpass::Received, Error> {
        if !self.busy_poll.is_zero() {
            let until = std::time::Instant::now() + self.busy_poll;
            loop {
                match fdpass::recv_now(self.stream.as_fd(), buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    other => return other.map_err(|e| self.note_timeout(e)),
                }
                if std::time::Instant::now() >= until {
                    break;
                }
                std::thread::yield_now();
            }
        }
        fdpass::recv(self.stream.as_fd(), buf).map_err(|e| self.note_timeout(e))
    }

    /// A timed-out read or write leaves the connection out of step.
    fn note_timeout(&mut self, e: io::Error) -> Error {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            self.out_of_step = true;
        }
        Error::Io(e)
    }

    /// Receives the next response, in request order.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// client.send(fdopen::protocol::Op::Hello, None, None)?;
    /// let answer = client.receive()?;
    /// assert!(answer.line.ok);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn receive(&mut self) -> Result<Response, Error> {
        let line = self.receive_line()?;
        let parsed: ResponseLine = serde_json::from_slice(&line)
            .map_err(|e| Error::Protocol(format!("bad response line: {e}")))?;
        let fd = if parsed.fd {
            Some(
                self.fds
                    .pop_front()
                    .ok_or_else(|| Error::Protocol("\"fd\":true but no descriptor came".into()))?,
            )
        } else {
            None
        };
        Ok(Response { line: parsed, fd })
    }

    /// The server's counters (SPEC §3.5), as the JSON object it sent, so
    /// counters a newer server adds are kept.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// let stats = client.stats()?;
    /// println!("{} requests to open", stats["requests"]["open"]);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn stats(&mut self) -> Result<serde_json::Value, Error> {
        self.send_request(&WireRequest::new(Op::Stats))?;
        let line = self.receive_line()?;
        let value: serde_json::Value = serde_json::from_slice(&line)
            .map_err(|e| Error::Protocol(format!("bad response line: {e}")))?;
        if value["ok"] == true {
            return Ok(value);
        }
        let error = serde_json::from_value(value["error"].clone())
            .map_err(|e| Error::Protocol(format!("bad refusal: {e}")))?;
        Err(Error::Refused(error))
    }

    /// The next response line, without its newline.
    fn receive_line(&mut self) -> Result<Vec<u8>, Error> {
        if self.out_of_step {
            return Err(Error::OutOfStep);
        }
        loop {
            // In request order: a request lost with its connection is
            // reported in its turn, before the answers to later ones.
            if self.unanswered.as_mut().is_some_and(|u| u.take_lost()) {
                return Err(Error::Lost);
            }
            if let Some(newline) = self.inbuf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.inbuf.drain(..=newline).collect();
                line.pop();
                if let Some(unanswered) = &mut self.unanswered {
                    unanswered.answered();
                }
                return Ok(line);
            }
            let mut buf = [0u8; 16 * 1024];
            let received = match self.receive_some(&mut buf) {
                Err(Error::Io(e)) if self.unanswered.is_some() && reconnect::broken(&e) => {
                    self.come_back()?;
                    continue;
                }
                other => other?,
            };
            if received.bytes == 0 && self.unanswered.is_some() {
                self.come_back()?;
                continue;
            }
            if received.bytes == 0 {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                )));
            }
            self.keep(&buf, received)?;
        }
    }

    /// Keeps what one receive brought: its bytes, and its descriptors for
    /// the lines that claim them.
    fn keep(&mut self, buf: &[u8], received: fdpass::Received) -> Result<(), Error> {
        if received.truncated {
            return Err(Error::Protocol(
                "descriptors were truncated (MSG_CTRUNC)".into(),
            ));
        }
        self.inbuf.extend_from_slice(&buf[..received.bytes]);
        self.fds.extend(received.fds);
        Ok(())
    }

    /// Reads what the server has sent so far, without waiting, so that a
    /// caller polling [`Client::stream`] alongside other things never
    /// blocks on half a line. False once the server has closed.
    #[cfg(feature = "cli")]
    pub(crate) fn read_available(&mut self) -> Result<bool, Error> {
        let mut buf = [0u8; 16 * 1024];
        let received = match fdpass::recv_now(self.stream.as_fd(), &mut buf) {
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(Error::Io(e)),
        };
        let more = received.bytes > 0;
        self.keep(&buf, received)?;
        Ok(more)
    }

    /// Whole response lines already buffered.
    #[cfg(feature = "cli")]
    pub(crate) fn buffered_lines(&self) -> usize {
        self.inbuf.iter().filter(|&&b| b == b'\n').count()
    }

    /// A whole response line is already buffered.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// client.send(fdopen::protocol::Op::Hello, None, None)?;
    /// while !client.has_buffered_line() {
    ///     // poll client.stream() alongside other work, then:
    ///     break;
    /// }
    /// # let _ = client.receive()?;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn has_buffered_line(&self) -> bool {
        self.inbuf.contains(&b'\n')
    }

    /// Descriptors received and not yet claimed by a response.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// let file = client.open("/srv/a.log", fdopen::Mode::Read)?;
    /// assert_eq!(client.unclaimed_fds(), 0);
    /// # drop(file);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn unclaimed_fds(&self) -> usize {
        self.fds.len()
    }

    /// The underlying socket.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// client.stream().set_nonblocking(false)?;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

/// `path` if it is absolute; a relative one never leaves the client.
fn absolute(path: &Path) -> Result<&Path, Error> {
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(Error::RelativePath(path.to_owned()))
    }
}

/// `path`, or `path_b64` for a path that is not UTF-8.
fn wire_path(path: &Path) -> (Option<String>, Option<String>) {
    match json_path(path) {
        (text, None) => (Some(text.into_owned()), None),
        (_, b64) => (None, b64),
    }
}

/// How to open a file: mode, and whether the server may create or
/// truncate it (SPEC §3.2).
///
/// ```no_run
/// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
/// use fdopen::{Create, Mode, OpenOptions};
/// let options = OpenOptions::new(Mode::Append).create(Create::Yes).perm(0o640);
/// client.open_with("/var/log/app/events.log", &options)?;
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    pub mode: Mode,
    pub create: Create,
    /// Permission bits for a created file (the server's default is 0600;
    /// the rule's `create_perm` masks them).
    pub perm: Option<u32>,
    pub truncate: bool,
    /// A final symlink is refused (`not_regular`, `ELOOP`), not followed
    /// (`O_NOFOLLOW`, SPEC §3.6).
    pub nofollow: bool,
    /// The path lies below this directory the caller holds (SPEC §3.1).
    pub within: Option<Within>,
}

impl OpenOptions {
    ///
    /// ```no_run
    /// let options = fdopen::OpenOptions::new(fdopen::Mode::ReadWrite);
    /// assert_eq!(options.mode, fdopen::Mode::ReadWrite);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn new(mode: Mode) -> OpenOptions {
        OpenOptions {
            mode,
            ..OpenOptions::default()
        }
    }

    ///
    /// ```no_run
    /// let options = fdopen::OpenOptions::new(fdopen::Mode::Write).create(fdopen::Create::Exclusive);
    /// assert!(options.create.is_requested());
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn create(mut self, create: Create) -> OpenOptions {
        self.create = create;
        self
    }

    ///
    /// ```no_run
    /// let options = fdopen::OpenOptions::new(fdopen::Mode::Write).perm(0o644);
    /// assert_eq!(options.perm, Some(0o644));
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn perm(mut self, perm: u32) -> OpenOptions {
        self.perm = Some(perm);
        self
    }

    ///
    /// ```no_run
    /// let options = fdopen::OpenOptions::new(fdopen::Mode::Write).truncate(true);
    /// assert!(options.truncate);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn truncate(mut self, truncate: bool) -> OpenOptions {
        self.truncate = truncate;
        self
    }

    ///
    /// ```no_run
    /// let options = fdopen::OpenOptions::new(fdopen::Mode::Read).nofollow(true);
    /// assert!(options.nofollow);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn nofollow(mut self, nofollow: bool) -> OpenOptions {
        self.nofollow = nofollow;
        self
    }

    ///
    /// ```no_run
    /// let dir = std::fs::File::open("/srv/app")?;
    /// let within = fdopen::Within::of_file("/srv/app", &dir)?;
    /// let options = fdopen::OpenOptions::new(fdopen::Mode::Read).within(within);
    /// assert!(options.within.is_some());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn within(mut self, within: Within) -> OpenOptions {
        self.within = Some(within);
        self
    }
}

/// How to bind a socket (SPEC §3.3); the default is the server's: listen,
/// no `SO_REUSEPORT`, `IPV6_V6ONLY` on.
///
/// ```no_run
/// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
/// let options = fdopen::BindOptions { reuseport: true, ..Default::default() };
/// let (socket, _) = client.bind_with("tcp:*:80", &options)?;
/// # drop(socket);
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindOptions {
    pub reuseport: bool,
    /// For an IPv6 host; `None` leaves the server's default (on).
    pub v6only: Option<bool>,
    /// TCP: call `listen`; false hands back a bound, unlistened socket.
    pub listen: bool,
}

impl Default for BindOptions {
    fn default() -> BindOptions {
        BindOptions {
            reuseport: false,
            v6only: None,
            listen: true,
        }
    }
}
