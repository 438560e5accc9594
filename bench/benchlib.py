"""What the bench scripts share: running commands, starting a server and
waiting for its socket."""
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def json_out(cmd):
    """Runs cmd and parses the JSON of its last line of output."""
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_release():
    """The binaries as `make build` links them (a static fdopen-client),
    then the examples the benchmarks drive."""
    sh("make", "-s", "build", cwd=ROOT)
    sh("cargo", "build", "--release", "--locked", "-q", "--examples", cwd=ROOT)


def wait_socket(path, proc, timeout=30):
    """Waits until something accepts on path; exits if proc dies first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited early with {proc.returncode}")
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{path}: server not ready")


def start_fdopen(sock, policy, audit, *extra):
    """fdopen-server (release) on sock, ready to serve."""
    proc = subprocess.Popen(
        [os.path.join(RELEASE, "fdopen-server"), "--log-level", "warn", "serve", "--socket", sock,
         "--policy", policy, "--audit-log", audit, *extra])
    wait_socket(sock, proc)
    return proc
