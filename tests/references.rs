//! doc/fdopen-policy.5 and doc/fdopen-protocol.7 against the code, where a
//! machine can tell: every rule field the loader accepts is documented and
//! nothing else is; every op and error code is in the protocol page; the
//! worked examples load; the pages render without complaint.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use fdopen::ErrorCode;
use fdopen::protocol::Op;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn page(name: &str) -> String {
    fs::read_to_string(Path::new(ROOT).join("doc").join(name)).unwrap()
}

/// The text of section `name` (from `.SH NAME` to the next `.SH`).
fn section<'a>(page: &'a str, name: &str) -> &'a str {
    let start = page
        .find(&format!("\n.SH {name}\n"))
        .unwrap_or_else(|| panic!("no .SH {name}"));
    let body = &page[start + name.len() + 5..];
    &body[..body.find("\n.SH ").unwrap_or(body.len())]
}

/// The terms of a section's `.TP` entries: the words of the line after
/// each `.TP` (`.B name`, `.BR a ", " b`).
fn terms(text: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = BTreeSet::new();
    for pair in lines.windows(2) {
        if pair[0] != ".TP" {
            continue;
        }
        let words = pair[1].trim_start_matches(".BR ").trim_start_matches(".B ");
        for word in words.split(['"', ',', ' ']).filter(|w| !w.is_empty()) {
            out.insert(word.to_owned());
        }
    }
    out
}

/// The rule fields the loader accepts, as its own error lists them.
fn loader_fields() -> BTreeSet<String> {
    let err = fdopen::policy::Policy::from_str(
        Path::new("p.json"),
        r#"{"rules":[{"name":"x","no_such_field":1}]}"#,
    )
    .unwrap_err()
    .to_string();
    let list = &err[err.find("expected one of").expect(&err)..];
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_rule_field_is_documented_and_nothing_else() {
    let documented = terms(section(&page("fdopen-policy.5"), "RULES"));
    let accepted = loader_fields();
    assert!(accepted.len() > 15, "{accepted:?}");
    assert_eq!(documented, accepted);
}

#[test]
fn every_op_and_error_code_is_in_the_protocol_page() {
    let text = page("fdopen-protocol.7");
    let ops = terms(section(&text, "REQUESTS"));
    for op in Op::ALL {
        assert!(ops.contains(op.as_str()), "op {} undocumented", op.as_str());
    }
    let codes = terms(section(&text, "ERRORS"));
    let known: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(codes, known);
}

#[test]
fn the_worked_examples_pass_check() {
    let text = page("fdopen-policy.5");
    let dir = common::scratch();
    let mut count = 0;
    for block in text.split(".EX\n").skip(1) {
        let body = &block[..block.find(".EE").unwrap()];
        if !body.trim_start().starts_with('{') {
            continue;
        }
        count += 1;
        let path = dir.path().join(format!("example{count}.json"));
        fs::write(&path, body.replace("\\-", "-")).unwrap();
        let out = Command::new(common::SERVER)
            .args(["check", "--policy"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "example {count}:\n{body}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(count, 3, "one example for each of the three uses");
}

#[test]
fn the_pages_render_without_warnings() {
    if Command::new("groff").arg("--version").output().is_err() {
        eprintln!("skipped: groff is not installed");
        return;
    }
    for name in ["fdopen-policy.5", "fdopen-protocol.7"] {
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(Path::new(ROOT).join("doc").join(name))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Long JSON lines cannot be broken; anything else is a mistake.
        let real: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.contains("can't break line") && !l.contains("cannot adjust line"))
            .collect();
        assert!(real.is_empty(), "{name}: {real:#?}");
    }
}

#[test]
fn both_binaries_point_at_the_references() {
    for binary in [common::SERVER, common::CLIENT] {
        let help = Command::new(binary).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.contains("fdopen-policy(5)") && help.contains("fdopen-protocol(7)"),
            "{binary}: {help}"
        );
    }
}

#[test]
fn the_python_client_of_the_protocol_page_works_as_typed() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: no python3");
        return;
    }
    let text = page("fdopen-protocol.7");
    let example = section(&text, "EXAMPLE");
    let start = example.find(".EX\n").unwrap() + 4;
    let script = &example[start..example.find(".EE").unwrap()];
    let script = script.replace("\\e", "\\").replace("\\-", "-");
    let dir = common::scratch();
    fs::write(dir.path().join("a.log"), "typed in\n").unwrap();
    let policy = format!(
        r#"{{"rules":[{{"name":"a","paths":["{}/*.log"]}}]}}"#,
        common::glob(dir.path())
    );
    let server = common::TestServer::start_in(dir, &policy, &[]);
    let script = script.replace("/var/log/app/a.log", server.path("a.log").to_str().unwrap());
    let out = Command::new("python3")
        .args(["-c", &script])
        .env("FDOPEN_SOCKET", &server.socket)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "typed in\n\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
