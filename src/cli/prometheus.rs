//! `fdopen-client stats --prometheus`: the `stats` answer in Prometheus
//! text format, ready for node_exporter's textfile collector (write it to
//! a `*.prom` file there from a timer).

use std::fmt::Write;

use serde_json::Value;

/// How each counter of the `stats` answer is exported: the metric's name,
/// type, help, and the label of its per-key values (for objects).
const METRICS: &[(&str, &str, &str, &str, Option<&str>)] = &[
    (
        "uptime_s",
        "fdopen_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        None,
    ),
    (
        "clients",
        "fdopen_clients",
        "gauge",
        "Clients connected now.",
        None,
    ),
    (
        "requests",
        "fdopen_requests_total",
        "counter",
        "Requests, by op.",
        Some("op"),
    ),
    (
        "grants",
        "fdopen_grants_total",
        "counter",
        "Requests granted.",
        None,
    ),
    (
        "refusals",
        "fdopen_refusals_total",
        "counter",
        "Requests refused, by error code.",
        Some("code"),
    ),
    (
        "held",
        "fdopen_held_fds",
        "gauge",
        "Descriptors held (not parked) now.",
        None,
    ),
    (
        "parked",
        "fdopen_parked_fds",
        "gauge",
        "Connections parked now.",
        None,
    ),
    (
        "policy_rules",
        "fdopen_policy_rules",
        "gauge",
        "Rules of the policy in force.",
        None,
    ),
    (
        "reloads",
        "fdopen_policy_reloads_total",
        "counter",
        "Policy reloads, by result.",
        Some("result"),
    ),
    (
        "audit_write_errors",
        "fdopen_audit_write_errors_total",
        "counter",
        "Audit log writes that failed.",
        None,
    ),
    (
        "fs_timeouts",
        "fdopen_fs_timeouts_total",
        "counter",
        "Requests answered io_error after --fs-timeout.",
        None,
    ),
];

pub fn render(stats: &Value) -> String {
    let mut out = String::new();
    for (field, name, kind, help, label) in METRICS {
        let Some(value) = stats.get(*field) else {
            continue;
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        match (label, value) {
            (Some(label), Value::Object(map)) => {
                for (key, v) in map {
                    if let Some(n) = v.as_u64() {
                        let _ = writeln!(out, "{name}{{{label}=\"{key}\"}} {n}");
                    }
                }
            }
            (_, v) => {
                if let Some(n) = v.as_u64() {
                    let _ = writeln!(out, "{name} {n}");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_with_keys_become_labels() {
        let stats = serde_json::json!({
            "ok": true, "uptime_s": 5, "requests": {"open": 3, "stats": 1},
            "refusals": {"denied": 2}, "reloads": {"ok": 1, "failed": 0}
        });
        let text = render(&stats);
        assert!(text.contains("fdopen_uptime_seconds 5\n"));
        assert!(text.contains("fdopen_requests_total{op=\"open\"} 3\n"));
        assert!(text.contains("fdopen_refusals_total{code=\"denied\"} 2\n"));
        assert!(text.contains("# TYPE fdopen_policy_reloads_total counter\n"));
        assert!(
            !text.contains("fdopen_clients"),
            "absent fields are left out"
        );
    }
}
