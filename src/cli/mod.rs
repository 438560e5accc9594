//! The command-line front ends of the two binaries, kept in the library so
//! the binaries stay one line each and the definitions can feed man pages
//! and completions.

pub mod client;
pub mod completions;
pub mod held;
pub mod man;
pub mod prometheus;
pub mod server;
pub mod tree;
mod zone;

use clap::builder::{PossibleValuesParser, TypedValueParser};

use crate::protocol::{Create, Mode};

/// What std's runtime would have done before `main` in a binary started
/// without it (`no_main`, see `src/bin/fdopen-client.rs`): descriptors
/// 0, 1 and 2 open, to `/dev/null` where they were closed, so that no
/// socket or granted file we open lands on them and gets our output; and
/// `SIGPIPE` ignored, so a closed pipe is an error, not death.
pub fn start_without_runtime() {
    let mut stdio = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: poll on our own array; open, fcntl and signal with constant
    // arguments.
    unsafe {
        while libc::poll(stdio.as_mut_ptr(), 3, 0) < 0
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {}
        for entry in &stdio {
            if entry.revents & libc::POLLNVAL != 0
                && libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) < 0
            {
                libc::abort();
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// The command line as C's `main` gets it. std's `args_os` is filled by
/// std's runtime set-up (and by glibc's, not musl's), which a `no_main`
/// binary does not run.
///
/// # Safety
///
/// `argv` holds `argc` pointers to NUL-terminated strings.
pub unsafe fn args_from_c(
    argc: std::ffi::c_int,
    argv: *const *const std::ffi::c_char,
) -> Vec<std::ffi::OsString> {
    use std::os::unix::ffi::OsStrExt;
    (0..usize::try_from(argc).unwrap_or(0))
        // SAFETY: as the caller promised.
        .map(|i| unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) })
        .map(|arg| std::ffi::OsStr::from_bytes(arg.to_bytes()).to_owned())
        .collect()
}

/// `--mode` with its possible values listed in `--help`.
fn mode_parser() -> impl TypedValueParser<Value = Mode> {
    PossibleValuesParser::new(Mode::ALL.map(Mode::as_str))
        .map(|s| s.parse::<Mode>().expect("listed value"))
}

/// `--create[=exclusive]` and `--truncate`: what a file request may do
/// besides opening (SPEC §3.2), for `open`, `check` and `explain` alike.
#[derive(Debug, clap::Args)]
pub struct CreateFlags {
    /// Let the server create the file if it does not exist; with
    /// `=exclusive`, only create it (the answer is `exists` if it does).
    #[arg(
        long,
        value_name = "exclusive",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = create_parser()
    )]
    pub create: Option<Create>,
    /// Truncate the file (write or readwrite).
    #[arg(long)]
    pub truncate: bool,
}

/// `--create[=exclusive]`, typed.
fn create_parser() -> impl TypedValueParser<Value = Create> {
    PossibleValuesParser::new(["true", "exclusive"]).map(|s| match s.as_str() {
        "exclusive" => Create::Exclusive,
        _ => Create::Yes,
    })
}

/// A path as the user means it: relative to the current directory, as
/// the protocol takes absolute paths only. Both `fdopen-client` and
/// `fdopen-server explain` take them so.
fn absolute(path: std::path::PathBuf) -> std::path::PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// Exit codes of SPEC §7.
pub mod exit {
    pub const OK: i32 = 0;
    /// The request was refused.
    pub const REFUSED: i32 = 1;
    /// Usage or configuration error.
    pub const USAGE: i32 = 2;
    /// The server could not be reached.
    pub const UNREACHABLE: i32 = 3;
}

/// The end of `--help` for both binaries, as man pages end.
pub const SEE_ALSO: &str = "See also: fdopen-policy(5) for the policy format, \
fdopen-protocol(7) for the wire protocol; the README for a walkthrough.";
