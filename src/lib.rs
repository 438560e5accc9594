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

pub mod address;
pub mod audit;
pub mod cli;
pub mod client;
pub mod decision;
pub mod echo;
pub mod fdpass;
pub mod hygiene;
pub mod lint;
pub mod logging;
pub mod path_index;
pub mod peer;
pub mod policy;
pub mod protocol;
pub mod run;
pub mod safe_open;
pub mod server;
pub mod socket_path;
pub mod sockets;
pub mod systemd;

pub use client::{BindOptions, Client, Error, OpenOptions, WakeEvent, Wakeups, Woken};
pub use protocol::{Create, ErrorCode, Grant, Mode, ServerError, ServerInfo};
