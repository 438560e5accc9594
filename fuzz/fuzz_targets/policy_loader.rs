//! Any text as a policy file: loading never panics, and every error it
//! reports carries a location inside the text.
use std::path::Path;

use fdopen::policy::Policy;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        if let Err(errors) = Policy::from_str(Path::new("fuzz.json"), text) {
            let lines = text.lines().count().max(1);
            for e in &errors.0 {
                if let Some(line) = e.location.line {
                    assert!(line >= 1 && line <= lines + 1, "line {line} of {lines}: {e}");
                }
                let _ = e.to_string();
            }
        }
    });
}
