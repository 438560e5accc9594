//! Any bytes as a request line: parsing never panics, a parsed path is
//! normalised, and a refusal is encodable with the echoed id as valid JSON.
//! Paths that parse are then matched against a fixed policy (no filesystem).
use std::path::Path;
use std::sync::LazyLock;

use fdopen::decision::Candidates;
use fdopen::peer::PeerIdentity;
use fdopen::policy::Policy;
use fdopen::protocol::{encode, normalize_path, parse_request, ErrorCode, Request};

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    Policy::from_str(
        Path::new("fuzz.json"),
        r#"{"rules":[
            {"name":"logs","paths":["/var/log/**/*.log","/srv/[a-c]?/*"],"modes":["read","append"],"max_size":"1MiB"},
            {"name":"uid","paths":["/home/*/x"],"users":[1000],"groups":[100]},
            {"name":"no","effect":"deny","paths":["/**/*.key","/var/log/secret/**"]}
        ]}"#,
    )
    .expect("fuzz policy loads")
});

fn main() {
    let client = PeerIdentity { pid: 1, uid: 1000, gid: 100, groups: vec![4, 27], cgroup: None };
    let mut candidates = Candidates::default();
    afl::fuzz!(|data: &[u8]| {
        // The server splits its input at newlines: a line never holds one.
        let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
        let parsed = parse_request(line);
        let mut out = Vec::new();
        match parsed.request {
            Ok(Request::Open(file) | Request::Check(file)) => {
                use std::os::unix::ffi::OsStrExt;
                let bytes = file.path.path.as_os_str().as_bytes();
                let again = normalize_path(bytes).expect("a normal path stays valid");
                assert_eq!(again.path, file.path.path, "normalisation is idempotent");
                assert!(!bytes.split(|&b| b == b'/').any(|c| c == b".." || c == b"."));
                let _ = POLICY.candidates(&file.path.path, &client, file.mode, &mut candidates);
            }
            Ok(Request::Hello(_)) => encode::hello(&mut out, parsed.id),
            Err(e) => encode::error(&mut out, parsed.id, ErrorCode::BadRequest, &e.to_string()),
        }
        if !out.is_empty() {
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
            serde_json::from_slice::<serde::de::IgnoredAny>(&out).expect("response is JSON");
        }
    });
}
