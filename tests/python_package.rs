//! The Python client as a package a user installs with pip, instead of
//! setting PYTHONPATH by hand: built from a copy of examples/python (pip
//! leaves build files next to the sources) into a directory of its own,
//! then imported from there to open a file through a real server.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{TestServer, glob, scratch};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Debian's python3, whose pip builds without fetching anything.
const PYTHON: &str = "/usr/bin/python3";

#[test]
fn pip_installs_the_python_client_and_it_opens_a_file() {
    let pyproject =
        fs::read_to_string(Path::new(ROOT).join("examples/python/pyproject.toml")).unwrap();
    let version = format!("version = \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        pyproject.contains(&version),
        "pyproject.toml lacks {version}"
    );

    let work = scratch();
    let source = work.path().join("src");
    fs::create_dir(&source).unwrap();
    for entry in fs::read_dir(Path::new(ROOT).join("examples/python")).unwrap() {
        let from = entry.unwrap().path();
        if from.is_file() {
            fs::copy(&from, source.join(from.file_name().unwrap())).unwrap();
        }
    }
    let site = work.path().join("site");
    let pip = Command::new(PYTHON)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-build-isolation",
            "--no-index",
        ])
        .arg("--target")
        .arg(&site)
        .arg(&source)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .output();
    let pip = match pip {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: no {PYTHON}: {e}");
            return;
        }
    };
    let said = String::from_utf8_lossy(&pip.stderr);
    if !pip.status.success()
        && (said.contains("No module named pip") || said.contains("bdist_wheel"))
    {
        eprintln!("skipped: this python3 cannot build a wheel offline: {said}");
        return;
    }
    assert!(pip.status.success(), "{said}");
    assert!(site.join("fdopen_client.py").exists());

    let dir = scratch();
    fs::write(dir.path().join("hello.txt"), "hello from the broker\n").unwrap();
    let policy = format!(
        r#"{{"rules":[{{"name":"txt","paths":["{}/*.txt"]}}]}}"#,
        glob(dir.path())
    );
    let server = TestServer::start_in(dir, &policy, &[]);
    let program = "import sys\nfrom fdopen_client import FdopenClient\nwith FdopenClient(sys.argv[1]) as c:\n    with c.open(sys.argv[2]) as f:\n        sys.stdout.write(f.read().decode())";
    let out = Command::new(PYTHON)
        .args(["-c", program])
        .arg(&server.socket)
        .arg(server.path("hello.txt"))
        .env("PYTHONPATH", &site)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(work.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the broker\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
