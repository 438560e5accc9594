//! The README's own commands, run as written (with the binaries of this
//! test run and a temporary socket in place of ./fdopen.sock), so the
//! walkthrough, the echo demo and the Python example cannot drift from
//! what the programs do. What each walkthrough line promises in its
//! comment is checked: "exit 1", "denied", "exists", printed output.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{CLIENT, SERVER, TestServer};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The lines of the first ```sh block after `marker`.
fn sh_block_after(marker: &str) -> Vec<String> {
    let readme = fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let from = readme
        .find(marker)
        .unwrap_or_else(|| panic!("README lost {marker:?}"));
    let rest = &readme[from..];
    let start = rest.find("```sh\n").expect("a sh block") + 6;
    let end = rest[start..].find("```").unwrap() + start;
    rest[start..end].lines().map(str::to_owned).collect()
}

/// `command  # comment` → (command, comment).
fn split_comment(line: &str) -> (String, String) {
    match line.find("  #") {
        Some(i) => (line[..i].trim().to_owned(), line[i + 3..].trim().to_owned()),
        None => (line.trim().to_owned(), String::new()),
    }
}

fn bin_dir() -> PathBuf {
    Path::new(SERVER).parent().unwrap().to_owned()
}

/// The README says ./target/release/ and ./fdopen.sock; the test run has
/// its own binaries and socket.
fn localise(command: &str, socket: &Path) -> String {
    command
        .replace("./target/release/", &format!("{}/", bin_dir().display()))
        .replace("./fdopen.sock", socket.to_str().unwrap())
}

/// Runs `command` in `dir`, a copy of the repository's demo files (see
/// [`demo_server`]), never in the checkout itself.
fn sh(command: &str, dir: &Path) -> std::process::Output {
    Command::new("sh")
        .args(["-c", command])
        .current_dir(dir)
        .env_remove("FDOPEN_SOCKET")
        .output()
        .unwrap()
}

/// A server on the demo policy, as `make run` starts it, and where its
/// commands run: `repo/` in its directory, a copy of what the README's
/// commands touch (demo/files, the Python client) with the empty
/// `demo/scratch/notes.log` and `demo/uploads/` that `make run` makes. The
/// checkout stays as it was: a user's own upload or notes are never
/// touched by a test.
fn demo_server() -> (TestServer, PathBuf) {
    let dir = common::scratch();
    let repo = dir.path().join("repo");
    for part in ["demo/files", "examples/python"] {
        let to = repo.join(part);
        fs::create_dir_all(&to).unwrap();
        for entry in fs::read_dir(Path::new(ROOT).join(part)).unwrap() {
            let from = entry.unwrap().path();
            if from.is_file() {
                fs::copy(&from, to.join(from.file_name().unwrap())).unwrap();
            }
        }
    }
    fs::create_dir_all(repo.join("demo/scratch")).unwrap();
    fs::create_dir_all(repo.join("demo/uploads")).unwrap();
    fs::write(repo.join("demo/scratch/notes.log"), "").unwrap();
    let policy = fs::read_to_string(Path::new(ROOT).join("policies/demo.json")).unwrap();
    (TestServer::start_in(dir, &policy, &[]), repo)
}

/// The `fc` alias of the walkthrough, pointed at `server`.
fn fc_alias(server: &TestServer) -> String {
    let lines = sh_block_after("Terminal 2 (in the repository):");
    let (alias, _) = split_comment(&lines[0]);
    let target = alias
        .strip_prefix("alias fc='")
        .and_then(|a| a.strip_suffix('\''))
        .expect("the walkthrough starts by defining fc");
    let fc = localise(target, &server.socket);
    assert!(fc.starts_with(CLIENT), "{fc}");
    fc
}

/// Runs each line in `dir` with `fc` expanded and checks what its comment
/// says.
fn run_lines(lines: &[String], fc: &str, dir: &Path) {
    for line in lines {
        let (command, comment) = split_comment(line);
        if command.starts_with("alias ") {
            continue;
        }
        let command = command.replace("fc ", &format!("{fc} "));
        let out = sh(&command, dir);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let what = format!("{line}\nstdout: {stdout}\nstderr: {stderr}");
        let exits_1 = comment.contains("exit 1") || comment.starts_with("denied");
        if command.ends_with("echo $?") {
            assert_eq!(stdout.lines().last(), Some("1"), "{what}");
        } else if exits_1 {
            assert_eq!(out.status.code(), Some(1), "{what}");
        } else {
            assert_eq!(out.status.code(), Some(0), "{what}");
        }
        for word in ["denied", "exists"] {
            if comment.contains(word) {
                assert!(stderr.contains(word) || stdout.contains(word), "{what}");
            }
        }
        if comment.starts_with("prints ") {
            assert!(!stdout.is_empty(), "{what}");
        }
        if let Some(name) = comment
            .strip_prefix("prints ")
            .and_then(|c| c.split(',').next())
            && name.contains('/')
        {
            assert!(stdout.contains(name), "{what}");
        }
        if comment.starts_with("fdopen ") {
            let version = format!("fdopen {}", env!("CARGO_PKG_VERSION"));
            assert!(
                stdout.starts_with(&version) && comment.starts_with(&version),
                "{what}"
            );
        }
        if comment.starts_with("wc ") {
            assert!(stdout.trim().parse::<u64>().is_ok(), "{what}");
        }
        if command.starts_with("ls -l") {
            let mode = comment.split_whitespace().next().unwrap();
            assert!(stdout.starts_with(mode), "{what}");
        }
        if comment.starts_with('{') {
            let code = "\"code\":\"denied\"";
            assert!(stdout.contains(code) && comment.contains(code), "{what}");
        }
    }
}

#[test]
fn the_walkthrough_does_what_its_comments_say() {
    let (server, repo) = demo_server();
    let fc = fc_alias(&server);
    run_lines(
        &sh_block_after("Terminal 2 (in the repository):"),
        &fc,
        &repo,
    );
    // What the walkthrough wrote, it wrote in the copy.
    assert!(repo.join("demo/uploads/a.txt").exists());
    assert_eq!(
        fs::read_to_string(repo.join("demo/scratch/notes.log")).unwrap(),
        "a note\n"
    );
}

#[test]
fn the_held_descriptor_commands_do_what_they_say() {
    let (server, repo) = demo_server();
    let fc = fc_alias(&server);
    run_lines(
        &sh_block_after("With the demo server and the `fc` alias"),
        &fc,
        &repo,
    );
}

#[test]
fn the_python_example_prints_the_file() {
    let (server, repo) = demo_server();
    let lines = sh_block_after("### Any language can be a client");
    let command = localise(&split_comment(&lines[0]).0, &server.socket);
    let out = sh(&command, &repo);
    let hello = fs::read_to_string(Path::new(ROOT).join("demo/files/hello.txt")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        hello,
        "{command}: {out:?}"
    );
}

#[test]
fn the_echo_demo_runs_as_shown() {
    let lines = sh_block_after("### The echo demo");
    let dir = common::scratch();
    let socket = dir.path().join("echo.sock");
    let local = |line: &str| {
        split_comment(line)
            .0
            .replace("./target/release/", &format!("{}/", bin_dir().display()))
            .replace("./echo.sock", socket.to_str().unwrap())
    };
    let mut server = Command::new("sh")
        .args(["-c", &format!("exec {}", local(&lines[0]))])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its first line on stderr says it listens.
    let mut said = String::new();
    BufReader::new(server.stderr.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert!(said.contains("listening"), "{said}");
    let client = sh(&local(&lines[1]), dir.path());
    assert!(client.status.success(), "{client:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = server.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
}

/// Every ```sh line of the README that cannot run here (sudo, systemd, a
/// real deployment) still names subcommands and flags the binaries
/// accept, make targets the Makefile has, and files the repo holds.
#[test]
fn every_command_line_in_the_readme_names_real_things() {
    let readme = fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let makefile = fs::read_to_string(Path::new(ROOT).join("Makefile")).unwrap();
    let mut in_sh = false;
    let mut checked = 0;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let (command, _) = split_comment(line);
        if command.starts_with("alias ") {
            continue;
        }
        for part in command.split(['|', ';']).flat_map(|p| p.split("&&")) {
            let words: Vec<&str> = part.split_whitespace().collect();
            let Some(at) = words.iter().position(|w| {
                w.ends_with("fdopen-client")
                    || w.ends_with("fdopen-server")
                    || *w == "fc"
                    || *w == "make"
            }) else {
                continue;
            };
            let program = words[at];
            let args: Vec<&str> = words[at + 1..]
                .iter()
                .copied()
                .take_while(|w| *w != "--")
                .collect();
            if program == "make" {
                for target in args.iter().filter(|a| !a.contains('=')) {
                    assert!(
                        makefile.contains(&format!("\n{target}:")),
                        "make {target}: {line}"
                    );
                }
                checked += 1;
                continue;
            }
            let binary = if program.ends_with("fdopen-server") {
                SERVER
            } else {
                CLIENT
            };
            // The subcommand: the first word that is not an option or the
            // value of --socket.
            let mut words = args.iter().copied();
            let mut subcommand = None;
            while let Some(w) = words.next() {
                if w == "--socket" {
                    words.next();
                } else if !w.starts_with('-') {
                    subcommand = Some(w);
                    break;
                }
            }
            let subcommand = subcommand.unwrap_or_else(|| panic!("no subcommand: {line}"));
            let help = Command::new(binary)
                .args([subcommand, "--help"])
                .output()
                .unwrap();
            assert!(help.status.success(), "{program} {subcommand}: {line}");
            let help = String::from_utf8_lossy(&help.stdout);
            for flag in args
                .iter()
                .filter(|a| a.starts_with("--") && **a != "--socket")
            {
                let flag = flag.split('=').next().unwrap();
                assert!(
                    help.contains(flag),
                    "{program} {subcommand} has no {flag}: {line}"
                );
            }
            checked += 1;
        }
        for word in command.split_whitespace() {
            if word.starts_with("examples/") || word.starts_with("policies/") {
                let path = word.trim_matches(['"', '\'']);
                let path = path.split('{').next().unwrap();
                assert!(
                    Path::new(ROOT).join(path).exists(),
                    "{path} missing: {line}"
                );
            }
        }
    }
    assert!(checked > 20, "only {checked} command lines found");
}

#[test]
fn make_run_says_what_the_readme_shows() {
    let (server, _) = demo_server();
    let lines = sh_block_after("Terminal 1:");
    assert_eq!(lines[0], "make run");
    let shown = lines[1].trim_start_matches("# ");
    let rules = &shown[shown.find('(').unwrap()..shown.find(',').unwrap()];
    let said = server.stderr_text();
    assert!(
        said.contains("listening on") && said.contains(rules),
        "{rules} vs {said}"
    );
}
