//! fdopen: a policy-gated file-open broker.
//!
//! A server ([`server`]) listens on a Unix socket, decides each request
//! against a [`policy::Policy`] ([`decision`]), opens approved files without
//! being tricked ([`safe_open`]) and hands the open descriptor back with
//! `SCM_RIGHTS` ([`fdpass`]). [`client::Client`] is the library side: a Rust
//! program gets a [`std::fs::File`] from one call.
//!
//! ```no_run
//! use fdopen::{Client, Mode};
//! let mut client = Client::connect("/run/fdopen/fdopen.sock")?;
//! let file = client.open("/var/log/app/today.log", Mode::Read)?;
//! # Ok::<(), fdopen::Error>(())
//! ```
#![cfg(target_os = "linux")]

// The client: what `default-features = false` builds.
pub mod address;
pub mod client;
pub mod fdpass;
pub mod protocol;
pub mod socket_path;

// The daemon.
#[cfg(feature = "server")]
pub mod audit;
#[cfg(feature = "server")]
pub mod decision;
#[cfg(feature = "server")]
pub mod hygiene;
#[cfg(feature = "server")]
pub mod lint;
#[cfg(feature = "server")]
pub mod logging;
#[cfg(feature = "server")]
pub mod path_index;
#[cfg(feature = "server")]
pub mod peer;
#[cfg(feature = "server")]
pub mod policy;
#[cfg(feature = "server")]
pub mod resources;
#[cfg(feature = "server")]
pub mod safe_open;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod sockets;
#[cfg(feature = "server")]
pub mod systemd;

// The command lines and what only they use.
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod echo;
#[cfg(feature = "cli")]
pub mod run;

pub use client::{
    BindOptions, Client, DirEntry, DirPage, Error, FileType, Metadata, OpenOptions, ReadDir,
    Reconnect, Timestamp, TreeReply, TreeRequest, WakeEvent, Wakeups, Within, Woken,
};
pub use protocol::{Create, ErrorCode, Grant, Mode, ServerError, ServerInfo};
