//! `fdopen-client store | retrieve | list | drop` (SPEC §3.4, §7).

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use clap::Subcommand;

use super::exit;
use crate::client::{Client, Error};
use crate::protocol::Storer;

#[derive(Debug, Subcommand)]
pub enum HeldCommand {
    /// Hold standard input's descriptor under NAME (`store NAME < file`).
    Store {
        name: String,
        /// Close it after this long (humantime: "90s", "1h").
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DUR")]
        expires: Option<Duration>,
    },
    /// Get the descriptor held under NAME: copied to stdout, or given to
    /// CMD as its standard input.
    Retrieve {
        name: String,
        /// Stop holding it.
        #[arg(long)]
        remove: bool,
        /// Whose: a user name or uid (a rule's stored_by must allow it).
        #[arg(long, value_name = "USER")]
        storer: Option<String>,
        #[arg(last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// List held names (under PREFIX) that the policy lets you see.
    List {
        prefix: Option<String>,
        #[arg(long, value_name = "USER")]
        storer: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Stop holding NAME.
    Drop {
        name: String,
        #[arg(long, value_name = "USER")]
        storer: Option<String>,
    },
}

fn storer(text: Option<String>) -> Option<Storer> {
    text.map(|t| match t.parse() {
        Ok(uid) => Storer::Uid(uid),
        Err(_) => Storer::Name(t),
    })
}

pub fn run(client: &mut Client, command: HeldCommand) -> Result<i32, Error> {
    match command {
        HeldCommand::Store { name, expires } => {
            client.store(&name, io::stdin().as_fd(), expires)?;
            Ok(exit::OK)
        }
        HeldCommand::Retrieve {
            name,
            remove,
            storer: who,
            command,
        } => {
            let fd = client.retrieve(&name, remove, storer(who))?;
            if command.is_empty() {
                copy_out(fd)
            } else {
                super::client::make_stdio(fd, &[0])?;
                let e = crate::exec::replace_process(&command, |_| {});
                Ok(super::client::exec_failed(e, &command[0]))
            }
        }
        HeldCommand::List {
            prefix,
            storer: who,
            json,
        } => {
            let names = client.list(prefix.as_deref(), storer(who))?;
            let mut out = io::stdout().lock();
            for entry in names {
                let _ = if json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::to_string(&entry).expect("serialises")
                    )
                } else {
                    let expires = entry.expires.as_deref().unwrap_or("-");
                    writeln!(out, "{}\t{}\t{expires}", entry.name, entry.kind)
                };
            }
            Ok(exit::OK)
        }
        HeldCommand::Drop { name, storer: who } => {
            client.drop_name(&name, storer(who))?;
            Ok(exit::OK)
        }
    }
}

fn copy_out(fd: OwnedFd) -> Result<i32, Error> {
    let mut from = std::fs::File::from(fd);
    io::copy(&mut from, &mut io::stdout().lock())?;
    Ok(exit::OK)
}
