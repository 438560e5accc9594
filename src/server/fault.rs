//! Test-only fault injection, in debug builds alone: release builds
//! compile every [`point`] to nothing.
//!
//! `FDOPEN_TEST_FAULT=OP:POINT:ACTION` makes each request `OP` do
//! `ACTION` when its handling reaches `POINT`:
//! - `panic`: panics there (SPEC §2: the request alone fails);
//! - `gate=PATH`: opens the FIFO at `PATH` and reads it to its end, so
//!   the thread serving the request waits, with its lane locked, until
//!   the test (the FIFO's writer) lets it go: a server that is really
//!   busy, without timing.
//!
//! Points: `begin` (every op, once parsed), `taken` (`retrieve` with
//! `remove`, the fd out of the holder), `decided` (`open` and `check`,
//! once the filesystem answered).

/// Where a request's handling is; see the module documentation.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub(super) fn point(_op: &str, _point: &str) {}

#[cfg(debug_assertions)]
pub(super) fn point(op: &str, point: &str) {
    use std::sync::OnceLock;
    static FAULT: OnceLock<Option<(String, String, String)>> = OnceLock::new();
    let fault = FAULT.get_or_init(|| {
        let spec = std::env::var("FDOPEN_TEST_FAULT").ok()?;
        let mut parts = spec.splitn(3, ':').map(str::to_owned);
        Some((parts.next()?, parts.next()?, parts.next()?))
    });
    let Some((fault_op, fault_point, action)) = fault else {
        return;
    };
    if fault_op != op || fault_point != point {
        return;
    }
    if action == "panic" {
        panic!("injected fault: {op} at {point}");
    }
    if let Some(fifo) = action.strip_prefix("gate=") {
        use std::io::Read;
        let mut rest = Vec::new();
        if let Ok(mut gate) = std::fs::File::open(fifo) {
            let _ = gate.read_to_end(&mut rest);
        }
    }
}
