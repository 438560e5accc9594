//! The client side of held descriptors and parked connections (SPEC §3.4).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use super::{Client, Error, Reconnect, Response};
use crate::protocol::{ListedName, Op, ResponseLine, Storer, WireRequest};

/// What woke a parked connection.
///
/// ```no_run
/// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
/// for woken in client.wake("web/", None)? {
///     match woken?.event {
///         fdopen::WakeEvent::Readable(fd) => drop(fd), // serve it
///         fdopen::WakeEvent::Hangup => {}
///     }
/// }
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Debug)]
pub enum WakeEvent {
    /// Input arrived: here is the connection, its data unread.
    Readable(OwnedFd),
    /// The peer hung up; the server closed the connection.
    Hangup,
}

/// One wake-up from a [`Wakeups`] subscription.
///
/// ```no_run
/// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
/// let woken = client.wake("web/", None)?.next().expect("a wake-up")?;
/// println!("{} (stored by uid {}) woke", woken.name, woken.storer);
/// # Ok::<(), fdopen::Error>(())
/// ```
#[derive(Debug)]
pub struct Woken {
    pub name: String,
    pub storer: u32,
    pub event: WakeEvent,
}

/// A `wake` subscription: each item is a parked name that woke, in the
/// order they became readable. When the server closes it (it restarts or
/// upgrades), a subscription whose client connected by socket path
/// subscribes again by itself (SPEC §3.4), with the client's reconnect
/// policy or [`Reconnect::default`], and an error comes only once that
/// gives up; one made from a stream ends (`None`).
///
/// ```no_run
/// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
/// let mut wakeups = client.wake("web/", None)?;
/// if let Some(woken) = wakeups.next() {
///     println!("{}", woken?.name);
/// }
/// # Ok::<(), fdopen::Error>(())
/// ```
pub struct Wakeups {
    client: Client,
    prefix: String,
    storer: Option<Storer>,
    /// How to subscribe again when the server restarts or upgrades.
    resubscribe: Option<Reconnect>,
}

impl Iterator for Wakeups {
    type Item = Result<Woken, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let response = loop {
            match self.client.receive() {
                Ok(r) => break r,
                Err(Error::Io(e)) if super::reconnect::broken(&e) => {
                    let policy = self.resubscribe?;
                    if let Err(e) = self.subscribe_again(policy) {
                        return Some(Err(e));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        };
        let line = response.line;
        if !line.ok {
            return Some(Err(refused(line)));
        }
        let (Some(name), Some(storer), Some(event)) = (line.name, line.storer, line.event) else {
            return Some(Err(Error::Protocol(
                "wake-up without name, storer or event".into(),
            )));
        };
        let event = match (event.as_str(), response.fd) {
            ("readable", Some(fd)) => WakeEvent::Readable(fd),
            ("hangup", None) => WakeEvent::Hangup,
            (other, _) => {
                return Some(Err(Error::Protocol(format!(
                    "unexpected wake-up {other:?}"
                ))));
            }
        };
        Some(Ok(Woken {
            name,
            storer,
            event,
        }))
    }
}

impl Wakeups {
    /// The server closed the subscription (it restarts or upgrades):
    /// subscribes again on a new connection (SPEC §3.4). What became
    /// readable meanwhile then comes, once.
    fn subscribe_again(&mut self, policy: Reconnect) -> Result<(), Error> {
        let socket = self
            .client
            .socket
            .clone()
            .ok_or(Error::NoSocketToReconnect)?;
        let stream = policy.connect(&socket).map_err(|source| Error::Connect {
            path: socket.clone(),
            source,
        })?;
        stream.set_read_timeout(self.client.stream.read_timeout()?)?;
        let mut client = Client::from_stream(stream);
        client.socket = Some(socket);
        client.ask_held(&wake_request(&self.prefix, self.storer.clone()), None)?;
        self.client = client;
        Ok(())
    }

    /// The connection, to poll it for readiness alongside other work.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// let wakeups = client.wake("web/", None)?;
    /// let fd = wakeups.as_fd(); // register it with poll or epoll
    /// # let _ = fd;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.client.stream().as_fd()
    }

    /// Wake-ups already received and not yet taken: poll the fd only when
    /// this is false.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// let mut wakeups = client.wake("web/", None)?;
    /// while wakeups.has_buffered() {
    ///     let _ = wakeups.next();
    /// }
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn has_buffered(&self) -> bool {
        self.client.has_buffered_line()
    }
}

fn refused(line: ResponseLine) -> Error {
    match line.error {
        Some(e) => Error::Refused(e),
        None => Error::Protocol("refusal without an error".into()),
    }
}

fn expiry(expires: Option<Duration>) -> Option<String> {
    expires.map(|d| humantime::format_duration(d).to_string())
}

impl Client {
    fn ask_held(
        &mut self,
        request: &WireRequest<'_>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Response, Error> {
        let mut line = serde_json::to_vec(request).map_err(|e| Error::Protocol(e.to_string()))?;
        line.push(b'\n');
        match fd {
            Some(fd) => self.send_with_fd(&line, fd)?,
            None => self.send_raw(&line)?,
        }
        let response = self.receive()?;
        if !response.line.ok {
            return Err(refused(response.line));
        }
        Ok(response)
    }

    /// Holds `fd` under `name` until it is retrieved with `remove`,
    /// dropped, or `expires` passes.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// use std::os::fd::AsFd;
    /// let file = std::fs::File::open("/etc/hostname")?;
    /// client.store("jobs/input", file.as_fd(), Some(std::time::Duration::from_secs(3600)))?;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn store(
        &mut self,
        name: &str,
        fd: BorrowedFd<'_>,
        expires: Option<Duration>,
    ) -> Result<(), Error> {
        self.hold(Op::Store, name, fd, expires)
    }

    /// Parks a connected socket under `name`: the server watches it and
    /// hands it to a [`Client::wake`] subscriber when input arrives.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// use std::os::fd::AsFd;
    /// let (idle, _peer) = std::os::unix::net::UnixStream::pair()?;
    /// client.park("web/c17", idle.as_fd(), None)?;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn park(
        &mut self,
        name: &str,
        socket: BorrowedFd<'_>,
        expires: Option<Duration>,
    ) -> Result<(), Error> {
        self.hold(Op::Park, name, socket, expires)
    }

    /// `store` or `park`: the two differ only in what the server does.
    fn hold(
        &mut self,
        op: Op,
        name: &str,
        fd: BorrowedFd<'_>,
        expires: Option<Duration>,
    ) -> Result<(), Error> {
        let request = WireRequest {
            name: Some(name.to_owned()),
            expires: expiry(expires),
            ..WireRequest::new(op)
        };
        self.ask_held(&request, Some(fd)).map(drop)
    }

    /// A duplicate of the fd held under `name` (by `storer`, default us);
    /// with `remove`, the server stops holding it.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// let fd = client.retrieve("jobs/input", true, None)?;
    /// let file = std::fs::File::from(fd);
    /// # drop(file);
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn retrieve(
        &mut self,
        name: &str,
        remove: bool,
        storer: Option<Storer>,
    ) -> Result<OwnedFd, Error> {
        let request = WireRequest {
            name: Some(name.to_owned()),
            remove: remove.then_some(true),
            storer,
            ..WireRequest::new(Op::Retrieve)
        };
        self.ask_held(&request, None)?
            .fd
            .ok_or_else(|| Error::Protocol("retrieve granted without a descriptor".into()))
    }

    /// The held names under `prefix` that the policy lets us see.
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// for held in client.list(Some("jobs/"), None)? {
    ///     println!("{} {} {:?}", held.name, held.kind, held.expires);
    /// }
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn list(
        &mut self,
        prefix: Option<&str>,
        storer: Option<Storer>,
    ) -> Result<Vec<ListedName>, Error> {
        let request = WireRequest {
            prefix: prefix.map(str::to_owned),
            storer,
            ..WireRequest::new(Op::List)
        };
        let names = self
            .ask_held(&request, None)?
            .line
            .names
            .unwrap_or_default();
        names
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(|e| Error::Protocol(e.to_string())))
            .collect()
    }

    /// Stops holding `name` (the server closes its copy).
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// client.drop_name("jobs/input", None)?;
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn drop_name(&mut self, name: &str, storer: Option<Storer>) -> Result<(), Error> {
        let request = WireRequest {
            name: Some(name.to_owned()),
            storer,
            ..WireRequest::new(Op::Drop)
        };
        self.ask_held(&request, None).map(drop)
    }

    /// Subscribes to parked names under `prefix`: the connection carries
    /// nothing else from now on, so it is consumed. The subscription comes
    /// back by itself after a restart or upgrade (see [`Wakeups`]).
    ///
    /// ```no_run
    /// # let mut client = fdopen::Client::connect("/run/fdopen/fdopen.sock")?;
    /// for woken in client.wake("web/", None)? {
    ///     println!("{} woke", woken?.name);
    /// }
    /// # Ok::<(), fdopen::Error>(())
    /// ```
    pub fn wake(mut self, prefix: &str, storer: Option<Storer>) -> Result<Wakeups, Error> {
        // A subscription comes back by itself unless told otherwise.
        let resubscribe = match self.unanswered.take() {
            Some(unanswered) => Some(unanswered.policy),
            None => self.socket.is_some().then(Reconnect::default),
        };
        self.ask_held(&wake_request(prefix, storer.clone()), None)?;
        Ok(Wakeups {
            client: self,
            prefix: prefix.to_owned(),
            storer,
            resubscribe,
        })
    }
}

fn wake_request(prefix: &str, storer: Option<Storer>) -> WireRequest<'static> {
    WireRequest {
        prefix: Some(prefix.to_owned()),
        storer,
        ..WireRequest::new(Op::Wake)
    }
}
