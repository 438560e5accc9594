//! fdopen: a policy-gated file-open broker.
//!
//! A server listens on a Unix socket, decides each request against an
//! admin's policy, opens approved files without being tricked and hands the
//! open descriptor back with `SCM_RIGHTS`. [`Client`] is the library side:
//! a Rust program gets a [`std::fs::File`] from one call. The wire types
//! are in [`protocol`], where a client finds the socket in [`socket_path`].
//!
//! ```no_run
//! use fdopen::{Client, Mode};
//! let mut client = Client::connect("/run/fdopen/fdopen.sock")?;
//! let file = client.open("/var/log/app/today.log", Mode::Read)?;
//! # Ok::<(), fdopen::Error>(())
//! ```
//!
//! With the `server` feature (on by default), a program can embed the
//! daemon: `server::Server::start` serves a listening socket with a
//! `policy::Policy`, writing to an `audit::AuditLog`. Without default
//! features the library is the client alone.
//!
//! Only those modules are the library's API. The rest is public only so
//! that the two binaries, the benchmarks and the fuzz targets (separate
//! crates) can reach it: hidden from the documentation and free to change
//! in any release.
#![cfg(target_os = "linux")]

// The client: what `default-features = false` builds.
pub mod address;
pub mod client;
#[doc(hidden)]
pub mod fdpass;
pub mod protocol;
pub mod socket_path;

// The daemon, for embedders: a server, its policy and its audit log.
#[cfg(feature = "server")]
pub mod audit;
#[cfg(feature = "server")]
pub mod policy;
#[cfg(feature = "server")]
pub mod server;

// The daemon's internals.
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod decision;
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod hygiene;
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod lint;
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod logging;
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod path_index;
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod peer;
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod resources;
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod safe_open;
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod sockets;
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod systemd;

// The command lines and what only they use.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod echo;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod exec;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod run;

pub use client::{
    BindOptions, Client, DirEntry, DirPage, Error, FileType, Metadata, OpenOptions, ReadDir,
    Reconnect, Timestamp, TreeReply, TreeRequest, WakeEvent, Wakeups, Within, Woken,
};
pub use protocol::{Create, ErrorCode, Grant, Mode, ServerError, ServerInfo};
