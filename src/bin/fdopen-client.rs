//! `fdopen-client`, started without std's runtime set-up (`no_main`):
//! that set-up reads `/proc/self/maps` to find the main thread's stack,
//! for the message a stack overflow prints, which costs ~45 µs of every
//! start, and `fdopen-client run` adds its whole start to the start of
//! the program it runs (BENCHMARKS.md). What else it does is done here.
#![no_main]

use std::ffi::{c_char, c_int};

#[unsafe(no_mangle)]
extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    fdopen::cli::start_without_runtime();
    // SAFETY: the C runtime passes `argc` valid, NUL-terminated strings.
    let args = unsafe { fdopen::cli::args_from_c(argc, argv) };
    // A panic must not unwind into C (that aborts, with a core file): it
    // ends the client with 101, as std's runtime ends it.
    // SAFETY: nothing has started a thread yet.
    let code =
        std::panic::catch_unwind(|| unsafe { fdopen::cli::client::main(args) }).unwrap_or(101);
    // `exit` flushes stdout, as returning from std's `main` would.
    std::process::exit(code);
}
