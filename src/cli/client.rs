//! `fdopen-client`: ask a server by hand or from scripts (SPEC §7).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use super::{CreateFlags, SEE_ALSO, absolute, exit, mode_parser};
use crate::client::OpenOptions;
use crate::client::{Client, Error};
use crate::protocol::{Mode, parse_perm};
use crate::run::{RunError, RunOptions};
use crate::socket_path;

/// Ask an fdopen server to open files on your behalf.
///
/// Exit codes: 0 success; 1 the request was refused (code and message on
/// stderr); 2 usage or configuration error; 3 the server could not be reached.
#[derive(Debug, Parser)]
#[command(after_help = SEE_ALSO)]
#[command(name = "fdopen-client", version, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// The options every subcommand takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Socket of the server [default: /run/fdopen/fdopen.sock if it
    /// exists, else $XDG_RUNTIME_DIR/fdopen.sock]
    #[arg(long, env = "FDOPEN_SOCKET", global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl Cli {
    /// Parses the command line. A plain `run` line is read by hand first:
    /// clap's parse, definitions of every subcommand included, costs
    /// ~0.2 ms, a fifth of what `run` may add to the start of the program it
    /// runs (BENCHMARKS.md). Whatever that reading does not take, help and
    /// errors included, goes to clap, which answers it; a unit test holds
    /// the two to the same result.
    pub fn from_args(args: Vec<OsString>) -> Cli {
        Cli::parse_run(&args).unwrap_or_else(|| Cli::parse_from(args))
    }

    /// `[--socket PATH] run [--broker GLOB]... [--no-bind] -- CMD...`,
    /// `--socket` also after `run`, values also after `=`; nothing else.
    fn parse_run(args: &[OsString]) -> Option<Cli> {
        let (mut socket, mut brokers, mut no_bind, mut run) = (None, Vec::new(), false, false);
        let mut args = args.iter().skip(1);
        while let Some(arg) = args.next() {
            let arg = arg.to_str()?;
            let (flag, joined) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
                _ => (arg, None),
            };
            // A value as clap takes it: not empty, and not a flag.
            let mut value = || match joined {
                Some(value) => Some(value).filter(|v| !v.is_empty()),
                None => args
                    .next()?
                    .to_str()
                    .filter(|v| !v.is_empty() && !v.starts_with('-')),
            };
            match flag {
                "--socket" if socket.is_none() => socket = Some(PathBuf::from(value()?)),
                "run" if !run && joined.is_none() => run = true,
                "--broker" if run => brokers.push(value()?.to_owned()),
                "--no-bind" if run && !no_bind && joined.is_none() => no_bind = true,
                "--" if run && joined.is_none() => {
                    let command: Vec<OsString> = args.cloned().collect();
                    if command.is_empty() {
                        return None;
                    }
                    if socket.is_none() {
                        // clap's `env`: set and not empty, or left to clap.
                        match std::env::var_os("FDOPEN_SOCKET") {
                            Some(path) if path.is_empty() => return None,
                            path => socket = path.map(PathBuf::from),
                        }
                    }
                    return Some(Cli {
                        global: Global { socket },
                        command: ClientCommand::Run(RunArgs {
                            brokers,
                            no_bind,
                            command,
                        }),
                    });
                }
                _ => return None,
            }
        }
        None
    }
}

/// `run`'s arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Broker only paths matching GLOB (repeatable); the default is
    /// everything `scope` lists.
    #[arg(long = "broker", value_name = "GLOB")]
    pub brokers: Vec<String>,
    /// Leave every `bind` to CMD itself.
    #[arg(long)]
    pub no_bind: bool,
    /// Command to run, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Ask the server who it is.
    Hello,
    /// Open a file through the server.
    ///
    /// Without CMD, a file opened for read (or readwrite) is copied to
    /// stdout; for write or append, stdin is copied into it. With CMD, CMD
    /// is executed with the file as its stdin (read), its stdout (write,
    /// append) or both (readwrite).
    Open {
        /// File to open; a relative path is taken from the current directory.
        path: PathBuf,
        #[arg(long, default_value = "read", value_parser = mode_parser())]
        mode: Mode,
        #[command(flatten)]
        creating: CreateArgs,
        /// Command to run with the file, after `--`.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Ask whether a file would be granted, without opening it.
    Check {
        path: PathBuf,
        #[arg(long, default_value = "read", value_parser = mode_parser())]
        mode: Mode,
        #[command(flatten)]
        creating: CreateArgs,
        /// Print the server's answer as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Get sockets on privileged ports and run CMD with them as fds 3..,
    /// with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES set (systemd socket
    /// activation), so a server that supports it needs no change.
    Bind {
        /// `tcp:HOST:PORT` or `udp:HOST:PORT`, optionally named `NAME=ADDR`
        /// (the default name is ADDR with every ':' made '_').
        #[arg(required = true, value_name = "[NAME=]ADDR")]
        addresses: Vec<String>,
        /// Set SO_REUSEPORT (the rule must allow it).
        #[arg(long)]
        reuseport: bool,
        /// Command to run with the sockets, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Run CMD with granted files and sockets at chosen descriptor
    /// numbers; "{N}" in its arguments becomes /dev/fd/N.
    Exec {
        /// A file at descriptor N: `N=PATH[:MODE]` (mode defaults to read).
        #[arg(long = "fd", value_name = "N=PATH[:MODE]", value_parser = parse_fd_spec)]
        files: Vec<(i32, PathBuf, Mode)>,
        /// A socket at descriptor N: `N=tcp:HOST:PORT`.
        #[arg(long = "bind", value_name = "N=ADDR", value_parser = parse_bind_spec)]
        binds: Vec<(i32, String)>,
        /// Command to run, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Run CMD so that its opens and privileged binds go through the
    /// server, unchanged (seccomp user notification; see
    /// fdopen-client-run(1)).
    ///
    /// Whatever the server does not grant, CMD does with its own rights,
    /// exactly as without `run`. This is a convenience, not a sandbox.
    Run(RunArgs),
    /// The server's counters since start (root, the server's user and
    /// --stats-group only).
    Stats {
        /// Prometheus text format, for node_exporter's textfile collector.
        #[arg(long)]
        prometheus: bool,
    },
    /// What the policy could grant you: paths with modes, binds.
    Scope {
        /// Print the server's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Tree(super::tree::TreeCommand),
    #[command(flatten)]
    Held(super::held::HeldCommand),
    /// Line-echo demo: the server passes you its standard output; each
    /// line of your standard input is written to it (fdopen-protocol(7),
    /// THE ECHO DEMO).
    Echo,
    /// Print a shell completion script for fdopen-client.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Runs the client on its command line (program name first); returns
/// the exit code.
///
/// # Safety
///
/// Only on the process's only thread: `stat` and `ls` may set `TZ`
/// (see `zone`).
pub unsafe fn main(args: Vec<OsString>) -> i32 {
    crate::logging::set_program("fdopen-client");
    let cli = Cli::from_args(args);
    if let ClientCommand::Completions { shell } = cli.command {
        super::completions::print::<Cli>(shell, "fdopen-client");
        return exit::OK;
    }
    let defaulted = cli.global.socket.is_none();
    let socket = match socket_path::resolve_for_client(cli.global.socket) {
        Ok(path) => path,
        Err(e) => return fail(exit::UNREACHABLE, &e),
    };
    let outcome = match cli.command {
        ClientCommand::Echo => {
            crate::echo::send_input(&socket, io::stdin().lock()).map(|_| exit::OK)
        }
        ClientCommand::Run(RunArgs {
            brokers,
            no_bind,
            command,
        }) => {
            let options = RunOptions {
                brokers,
                no_bind,
                command,
            };
            return match crate::run::run(&socket, &options) {
                Ok(code) => code,
                Err(RunError::Client(e)) => report(e, defaulted),
                Err(e) => fail(e.command_exit_code().unwrap_or(exit::USAGE), &e),
            };
        }
        command => Client::connect(&socket).and_then(|mut client| run(&mut client, command)),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => report(e, defaulted),
    }
}

/// Says what failed and returns the exit code; a server nobody answered
/// for is named with every path tried and how to start one (SPEC §1).
fn report(e: Error, defaulted: bool) -> i32 {
    match e {
        Error::Connect { path, source } => fail(
            exit::UNREACHABLE,
            &socket_path::no_server(path, source, defaulted),
        ),
        e => fail(error_exit_code(&e), &e),
    }
}

fn run(client: &mut Client, command: ClientCommand) -> Result<i32, Error> {
    match command {
        ClientCommand::Hello => {
            let info = client.hello()?;
            println!(
                "{} {} (protocol {})",
                info.server, info.version, info.protocol
            );
            Ok(exit::OK)
        }
        ClientCommand::Check {
            path,
            mode,
            creating,
            json,
        } => check(client, &absolute(path), &creating.options(mode), json),
        ClientCommand::Open {
            path,
            mode,
            creating,
            command,
        } => {
            let path = absolute(path);
            let (file, _) = client.open_with(&path, &creating.options(mode))?;
            if command.is_empty() {
                Ok(copy(file, mode, &path))
            } else {
                run_with(file, mode, &command)
            }
        }
        ClientCommand::Bind {
            addresses,
            reuseport,
            command,
        } => {
            let mut sockets = Vec::new();
            for spec in &addresses {
                let (name, address) = match spec.split_once('=') {
                    Some((name, address)) => (name.to_owned(), address),
                    None => (spec.replace(':', "_"), spec.as_str()),
                };
                let (fd, _) = client.bind(address, reuseport)?;
                sockets.push((name, fd));
            }
            Ok(exec_with_sockets(sockets, &command))
        }
        ClientCommand::Exec {
            files,
            binds,
            command,
        } => exec_with_fds(client, &files, &binds, &command),
        ClientCommand::Scope { json } => {
            let scope = client.scope()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&scope).expect("a scope serialises")
                );
            } else {
                for p in &scope.paths {
                    let modes: Vec<&str> = p.modes.iter().map(|m| m.as_str()).collect();
                    let create = if p.create { ", may create" } else { "" };
                    println!("path {}  ({}{create})", p.glob, modes.join(", "));
                }
                for b in &scope.binds {
                    println!("bind {b}");
                }
                if scope.paths.is_empty() && scope.binds.is_empty() {
                    println!("nothing: no allow rule applies to you");
                }
            }
            Ok(exit::OK)
        }
        // SAFETY: `main`'s caller promised a single thread, and a tree
        // command execs nothing.
        ClientCommand::Tree(tree) => unsafe { super::tree::run(client, tree) },
        ClientCommand::Held(held) => super::held::run(client, held),
        ClientCommand::Stats { prometheus } => {
            let stats = client.stats()?;
            if prometheus {
                print!("{}", super::prometheus::render(&stats));
            } else {
                println!("{stats}");
            }
            Ok(exit::OK)
        }
        ClientCommand::Echo | ClientCommand::Run(_) | ClientCommand::Completions { .. } => {
            unreachable!("handled without a Client")
        }
    }
}

fn check(
    client: &mut Client,
    path: &std::path::Path,
    options: &OpenOptions,
    json: bool,
) -> Result<i32, Error> {
    let result = client.check_with(path, options);
    if json {
        let value = match &result {
            Ok(grant) => {
                let mut value = serde_json::to_value(grant).expect("a grant serialises");
                value["ok"] = true.into();
                value["fd"] = false.into();
                value
            }
            Err(Error::Refused(e)) => json!({"ok": false, "error": e}),
            Err(_) => return result.map(|_| exit::OK),
        };
        println!("{value}");
        return Ok(if result.is_ok() {
            exit::OK
        } else {
            exit::REFUSED
        });
    }
    let grant = result?;
    println!(
        "granted: {} ({} bytes, rule {})",
        grant.path, grant.size, grant.rule
    );
    Ok(exit::OK)
}

/// Copies the file to stdout, or stdin into it for write and append.
/// Copies the granted file to stdout, or stdin into it. A failure is the
/// file's or the pipe's, not the server's: it is said so, and exits 1 as
/// a server's `io_error` would, not 3 (the server answered).
fn copy(mut file: File, mode: Mode, path: &std::path::Path) -> i32 {
    let copied = match mode {
        Mode::Read | Mode::ReadWrite => {
            io::copy(&mut file, &mut io::stdout().lock()).and_then(|_| io::stdout().flush())
        }
        Mode::Write | Mode::Append => io::copy(&mut io::stdin().lock(), &mut file).map(drop),
    };
    match copied {
        // `| head` closing the pipe early is not a failure.
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => fail(
            exit::REFUSED,
            &format_args!("granted, but copying {} failed: {e}", path.display()),
        ),
        _ => exit::OK,
    }
}

/// Replaces this process with CMD, the granted file as stdin and/or stdout.
fn run_with(file: File, mode: Mode, command: &[OsString]) -> Result<i32, Error> {
    let onto: &[RawFd] = match mode {
        Mode::Read => &[0],
        Mode::Write | Mode::Append => &[1],
        Mode::ReadWrite => &[0, 1],
    };
    make_stdio(file.into(), onto)?;
    Ok(exec_failed(
        crate::exec::replace_process(command, |_| {}),
        &command[0],
    ))
}

/// Puts `fd` at each of `onto` (0, 1) for the command that replaces us,
/// and closes it unless it already is one of them. Not through `Stdio`:
/// [`crate::exec::replace_process`] may build the command more than once.
pub(super) fn make_stdio(fd: OwnedFd, onto: &[RawFd]) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    for &target in onto {
        // SAFETY: fcntl and dup2 on a descriptor we hold; dup2 onto a
        // standard one closes that first if open.
        let done = if raw == target {
            // dup2 onto itself would change nothing: the received file
            // would stay close-on-exec and the command would lose it.
            unsafe { libc::fcntl(raw, libc::F_SETFD, 0) }
        } else {
            unsafe { libc::dup2(raw, target) }
        };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if onto.contains(&raw) {
        // It is the command's now.
        let _ = fd.into_raw_fd();
    }
    Ok(())
}

/// Replaces this process with `command`, the sockets at fds 3.. and the
/// socket-activation variables naming them; returns only on failure.
fn exec_with_sockets(sockets: Vec<(String, OwnedFd)>, command: &[OsString]) -> i32 {
    let names: Vec<&str> = sockets.iter().map(|(name, _)| name.as_str()).collect();
    let names = names.join(":");
    let count = sockets.len();
    let placed: Vec<(i32, OwnedFd)> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, (_, fd))| (3 + i as i32, fd))
        .collect();
    if let Err(e) = place_fds(placed) {
        return fail(exit::USAGE, &format!("cannot place the sockets: {e}"));
    }
    let exec = crate::exec::replace_process(command, |cmd| {
        cmd.env("LISTEN_FDS", count.to_string())
            .env("LISTEN_PID", std::process::id().to_string())
            .env("LISTEN_FDNAMES", &names);
    });
    exec_failed(exec, &command[0])
}

/// Puts each descriptor at its number, inheritable: first out of the way
/// of every target number, then into place (dup2 clears `FD_CLOEXEC`).
fn place_fds(fds: Vec<(i32, OwnedFd)>) -> nix::Result<()> {
    let above = fds.iter().map(|(n, _)| *n).max().unwrap_or(2) + 1;
    let mut moved = Vec::new();
    for (number, fd) in &fds {
        let high = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(above))?;
        moved.push((*number, high));
    }
    drop(fds);
    for (number, high) in moved {
        // SAFETY: plain descriptor syscalls on descriptors this process
        // owns; what sat at `number` before is replaced on purpose.
        if unsafe { libc::dup2(high, number) } < 0 {
            return Err(nix::errno::Errno::last());
        }
        // SAFETY: as above; `high` is ours and no longer needed.
        unsafe { libc::close(high) };
    }
    Ok(())
}

pub(super) fn exec_failed(e: std::io::Error, program: &OsString) -> i32 {
    fail(
        exit::USAGE,
        &format!("cannot run {}: {e}", program.to_string_lossy()),
    )
}

/// `exec --fd N=PATH[:MODE]... --bind N=ADDR... -- CMD ARGS` (SPEC §7):
/// every granted descriptor at its number, `{N}` in ARGS made `/dev/fd/N`.
fn exec_with_fds(
    client: &mut Client,
    files: &[(i32, PathBuf, Mode)],
    binds: &[(i32, String)],
    command: &[OsString],
) -> Result<i32, Error> {
    let mut numbers: Vec<i32> = files
        .iter()
        .map(|f| f.0)
        .chain(binds.iter().map(|b| b.0))
        .collect();
    numbers.sort_unstable();
    if numbers.windows(2).any(|w| w[0] == w[1]) {
        return Ok(fail(
            exit::USAGE,
            &"each N must be a different descriptor number",
        ));
    }
    let mut placed: Vec<(i32, OwnedFd)> = Vec::new();
    for (n, path, mode) in files {
        let file = client.open(absolute(path.clone()), *mode)?;
        placed.push((*n, OwnedFd::from(file)));
    }
    for (n, address) in binds {
        let (fd, _) = client.bind(address, false)?;
        placed.push((*n, fd));
    }
    let substituted: Vec<OsString> = std::iter::once(command[0].clone())
        .chain(command[1..].iter().map(|arg| {
            let mut text = arg.to_string_lossy().into_owned();
            if text.contains('{') {
                for n in &numbers {
                    text = text.replace(&format!("{{{n}}}"), &format!("/dev/fd/{n}"));
                }
                OsString::from(text)
            } else {
                arg.clone()
            }
        }))
        .collect();
    if let Err(e) = place_fds(placed) {
        return Ok(fail(
            exit::USAGE,
            &format!("cannot place the descriptors: {e}"),
        ));
    }
    Ok(exec_failed(
        crate::exec::replace_process(&substituted, |_| {}),
        &command[0],
    ))
}

/// `N=PATH[:MODE]`.
fn parse_fd_spec(spec: &str) -> Result<(i32, PathBuf, Mode), String> {
    let (n, rest) = split_number(spec)?;
    Ok(match rest.rsplit_once(':') {
        Some((path, mode)) if mode.parse::<Mode>().is_ok() => {
            (n, PathBuf::from(path), mode.parse::<Mode>()?)
        }
        _ => (n, PathBuf::from(rest), Mode::Read),
    })
}

/// `N=ADDR`.
fn parse_bind_spec(spec: &str) -> Result<(i32, String), String> {
    split_number(spec).map(|(n, rest)| (n, rest.to_owned()))
}

fn split_number(spec: &str) -> Result<(i32, &str), String> {
    let (n, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?}: expected N=..."))?;
    let n = n
        .parse::<i32>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("{spec:?}: N must be a descriptor number"))?;
    Ok((n, rest))
}

fn error_exit_code(e: &Error) -> i32 {
    match e {
        Error::Refused(_) => exit::REFUSED,
        Error::Connect { .. }
        | Error::Io(_)
        | Error::Protocol(_)
        | Error::OutOfStep
        | Error::Lost => exit::UNREACHABLE,
        Error::RelativePath(_) | Error::NoSocket(_) | Error::NoSocketToReconnect => exit::USAGE,
    }
}

fn fail(code: i32, e: &dyn std::fmt::Display) -> i32 {
    crate::logging::error(format_args!("{e}"));
    code
}

/// `--create[=exclusive] [--perm 0640] [--truncate]` (SPEC §3.2, §7).
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    flags: CreateFlags,
    /// Permission bits for a created file, in octal (the rule's
    /// `create_perm` masks them).
    #[arg(long, value_name = "MODE", value_parser = parse_perm, requires = "create")]
    perm: Option<u32>,
}

impl CreateArgs {
    fn options(&self, mode: Mode) -> OpenOptions {
        OpenOptions {
            mode,
            create: self.flags.create.unwrap_or_default(),
            perm: self.perm,
            truncate: self.flags.truncate,
            ..OpenOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<OsString> {
        line.split(' ').map(OsString::from).collect()
    }

    /// The `run`-only parser must read every `run` line as the full parser
    /// does, or the two would drift apart unseen.
    #[test]
    fn run_alone_parses_as_the_full_parser_does() {
        for line in [
            "fdopen-client run -- true",
            "fdopen-client --socket /s run --broker /a/** --broker=/b --no-bind -- cat -n x",
            "fdopen-client run --socket=/s -- ls -- -l",
            "fdopen-client --socket=/t run --no-bind --broker /c -- --help",
            "fdopen-client run --broker=/a=b --broker /c -- env A=B",
            "fdopen-client run -- --",
            "fdopen-client run --broker=-x -- y",
            "fdopen-client run --socket=-x -- y",
            "fdopen-client run --broker=-- -- y",
            "fdopen-client run --broker==x -- y",
            "fdopen-client --socket run run -- y",
            "fdopen-client run -- ",
            "fdopen-client run --broker=/a --socket=/s --broker /b -- x",
        ] {
            let fast = Cli::parse_run(&argv(line)).expect(line);
            let full = Cli::try_parse_from(argv(line)).expect(line);
            assert_eq!(format!("{fast:?}"), format!("{full:?}"), "{line}");
        }
    }

    /// Help, versions, errors and other subcommands go to the full parser.
    #[test]
    fn anything_else_goes_to_the_full_parser() {
        for line in [
            "fdopen-client run --help",
            "fdopen-client run -h",
            "fdopen-client --version",
            "fdopen-client run",
            "fdopen-client run --bogus -- x",
            "fdopen-client hello",
            "fdopen-client open /etc/hosts",
            "fdopen-client",
            "fdopen-client run --socket /a --socket /b -- x",
            "fdopen-client run --no-bind --no-bind -- x",
            "fdopen-client run --no-bind=true -- x",
            "fdopen-client run --broker -- x",
            "fdopen-client run --broker= -- x",
            "fdopen-client run --socket= -- x",
            "fdopen-client run -x -- y",
            "fdopen-client --broker /a run -- x",
            "fdopen-client run run -- x",
            "fdopen-client run x",
        ] {
            assert!(Cli::parse_run(&argv(line)).is_none(), "{line}");
        }
    }
}
