//! Replacing a process with a command as POSIX `execvp` does: a name
//! without `/` is looked for in `PATH`, and a file the kernel cannot run
//! (`ENOEXEC`: a script without `#!`) is run by `/bin/sh`. glibc's
//! `execvp` falls back to `sh`, musl's does not, and `fdopen-client` is
//! built against either (`make build` links musl): so the fallback is
//! ours, with glibc's rules.
//!
//! [`ExecPlan`] is for `run`'s child, which may only make system calls
//! after its fork: everything is made before it. [`replace_process`] is
//! for the subcommands that become CMD (`exec`, `bind`, `retrieve`).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

unsafe extern "C" {
    /// The process's environment, which the program inherits.
    static environ: *const *const libc::c_char;
}

/// glibc's `PATH` when none is set (`confstr(_CS_PATH)`).
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";
const SHELL: &std::ffi::CStr = c"/bin/sh";

/// What the child execs: the files to try in order, with the arguments.
pub struct ExecPlan {
    /// Each file to try: the command itself if it names a path, else one
    /// per `PATH` entry.
    candidates: Vec<CString>,
    /// Kept alive for the pointers below.
    _argv: Vec<CString>,
    /// The command's arguments, NULL-terminated.
    argv: Vec<*const libc::c_char>,
    /// `/bin/sh FILE ARGS...`, NULL-terminated; the child sets `FILE`.
    shell_argv: Vec<*const libc::c_char>,
}

impl ExecPlan {
    /// The plan for `command` (its first word is the program), with
    /// `PATH` as it is now; `None` if an argument holds a NUL byte.
    pub fn new(command: &[OsString]) -> Option<ExecPlan> {
        let argv: Vec<CString> = command
            .iter()
            .map(|arg| CString::new(arg.as_bytes()).ok())
            .collect::<Option<_>>()?;
        let candidates = candidates_on_path(command.first()?);
        let mut pointers: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        pointers.push(std::ptr::null());
        let mut shell_argv = vec![SHELL.as_ptr(), std::ptr::null()];
        shell_argv.extend_from_slice(&pointers[1..]);
        Some(ExecPlan {
            candidates,
            _argv: argv,
            argv: pointers,
            shell_argv,
        })
    }

    /// In the child: execs the command and does not return if that
    /// works; otherwise returns the `errno` to report, as `execvp` would
    /// leave it (`EACCES` if a file was found but could not be run, else
    /// the last error).
    ///
    /// # Safety
    ///
    /// Only after `fork`, in the child: the environment is read as it is.
    pub unsafe fn exec(&mut self) -> i32 {
        let mut search = Search::default();
        for file in &self.candidates {
            // SAFETY: NUL-terminated strings and arrays made before the
            // fork, alive until the exec replaces them.
            unsafe { libc::execve(file.as_ptr(), self.argv.as_ptr(), environ) };
            let mut errno = last_errno();
            if errno == libc::ENOEXEC {
                self.shell_argv[1] = file.as_ptr();
                // SAFETY: as above.
                unsafe { libc::execve(SHELL.as_ptr(), self.shell_argv.as_ptr(), environ) };
                errno = last_errno();
            }
            if let Some(errno) = search.failed(errno) {
                return errno;
            }
        }
        search.result()
    }
}

/// How `execvp` goes on after a candidate fails: on to the next where
/// the file is missing (or denied, remembered), else it stops there.
/// It allocates nothing: `run`'s child uses it between fork and exec.
struct Search {
    denied: bool,
    last: i32,
}

impl Default for Search {
    fn default() -> Search {
        Search {
            denied: false,
            last: libc::ENOENT,
        }
    }
}

impl Search {
    /// Notes a candidate's `errno`; `Some` if the search ends with it.
    fn failed(&mut self, errno: i32) -> Option<i32> {
        match errno {
            libc::EACCES => self.denied = true,
            libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
            other => return Some(other),
        }
        self.last = errno;
        None
    }

    /// The `errno` once every candidate failed: `EACCES` if a file was
    /// found but could not be run, else the last error.
    fn result(&self) -> i32 {
        if self.denied { libc::EACCES } else { self.last }
    }
}

/// Replaces this process with `command`, set up by `build` (stdio, the
/// environment), as glibc's `execvp` runs it: looked for in `PATH`, or
/// in glibc's default where there is none (musl's `execvp` would try
/// `/usr/local/bin` first), and a file the kernel cannot run is run
/// again, by `/bin/sh`. `build` is called for each attempt. Returns only
/// on failure, with the error to report.
pub fn replace_process(command: &[OsString], mut build: impl FnMut(&mut Command)) -> io::Error {
    let mut search = Search::default();
    for file in candidates_on_path(&command[0]) {
        let file = OsStr::from_bytes(file.to_bytes());
        // A path, so that std's exec goes straight to `execve`.
        let mut cmd = Command::new(file);
        cmd.arg0(&command[0]).args(&command[1..]);
        build(&mut cmd);
        let mut error = cmd.exec();
        if error.raw_os_error() == Some(libc::ENOEXEC) {
            let mut shell = Command::new(OsStr::from_bytes(SHELL.to_bytes()));
            shell.arg(file).args(&command[1..]);
            build(&mut shell);
            error = shell.exec();
        }
        if search
            .failed(error.raw_os_error().unwrap_or(libc::EIO))
            .is_some()
        {
            return error;
        }
    }
    io::Error::from_raw_os_error(search.result())
}

/// The files [`ExecPlan`] and [`replace_process`] try for `program`, with
/// `PATH` as it is now (glibc's default where there is none): for `run`
/// to tell a command not found from one found but not runnable.
pub fn search(program: &OsStr) -> Vec<std::path::PathBuf> {
    candidates_on_path(program)
        .into_iter()
        .map(|file| OsStr::from_bytes(file.to_bytes()).into())
        .collect()
}

/// [`candidates`] with `PATH` as it is now, or glibc's default where
/// there is none.
fn candidates_on_path(program: &OsStr) -> Vec<CString> {
    let path = std::env::var_os("PATH");
    candidates(
        program,
        path.as_deref().map_or(DEFAULT_PATH, OsStr::as_bytes),
    )
}

/// The files `execvp` tries for `program`: itself if it holds a `/`, else
/// `DIR/program` for each `DIR` of `path` (an empty entry is the current
/// directory). None for an empty name.
fn candidates(program: &OsStr, path: &[u8]) -> Vec<CString> {
    let name = program.as_bytes();
    if name.is_empty() {
        return Vec::new();
    }
    if name.contains(&b'/') {
        return CString::new(name).into_iter().collect();
    }
    path.split(|&b| b == b':')
        .filter_map(|dir| {
            let mut file = if dir.is_empty() {
                b".".to_vec()
            } else {
                dir.to_vec()
            };
            file.push(b'/');
            file.extend_from_slice(name);
            CString::new(file).ok()
        })
        .collect()
}

/// This thread's `errno` after a failed call (`EIO` if it has none).
pub(crate) fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(program: &str, path: &str) -> Vec<String> {
        candidates(OsStr::new(program), path.as_bytes())
            .into_iter()
            .map(|c| c.into_string().unwrap())
            .collect()
    }

    #[test]
    fn a_name_is_looked_for_in_each_path_entry_in_order() {
        assert_eq!(
            names("ls", "/usr/local/bin::/bin"),
            ["/usr/local/bin/ls", "./ls", "/bin/ls"]
        );
    }

    #[test]
    fn a_path_is_tried_as_it_is_and_an_empty_name_never() {
        assert_eq!(names("./x", "/bin"), ["./x"]);
        assert_eq!(names("/bin/true", "/nowhere"), ["/bin/true"]);
        assert!(names("", "/bin").is_empty());
    }
}
