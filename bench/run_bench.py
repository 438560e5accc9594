#!/usr/bin/env python3
"""What `fdopen-client run` costs (SPEC §8), measured in one run:

- an open `run` leaves alone (outside the scope): median open+close under
  `run` minus the same bare (target <= 25 µs);
- trapped calls it leaves alone (v3): a `stat` outside the scope and an
  `fstat` of a file (one `fstat` of the fd in the supervisor once a
  placeholder exists; none before), each against bare (target <= +8 µs);
- a brokered open under `run` against a direct `Client::open` of the same
  file (target <= 2x), and a brokered `stat` against a direct
  `Client::stat` (target <= 2x);
- `true` under `run` against bare (target <= +1 ms), and `python3 -c pass`
  (target <= 1.5x).

    python3 bench/run_bench.py [--count 20000] [--starts 30] [--record]
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from benchlib import RELEASE, ROOT, build_release, json_out, sh, start_fdopen



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--starts", type=int, default=30)
    ap.add_argument("--record", action="store_true")
    # `make bench` passes BENCH_ARGS to bench.py too: take what is ours.
    args, _ = ap.parse_known_args()
    if shutil.which("cc") is None:
        sys.exit("run_bench: no C compiler (cc) to build bench/openloop.c; install gcc")
    work = tempfile.mkdtemp(prefix="fdopen-run-bench-")
    os.chmod(work, 0o755)
    try:
        openloop = os.path.join(work, "openloop")
        sh("cc", "-O2", "-o", openloop, os.path.join(ROOT, "bench", "openloop.c"))
        build_release()
        brokered = os.path.join(work, "brokered.txt")
        untouched = os.path.join(work, "untouched.txt")
        for p in (brokered, untouched):
            with open(p, "w") as f:
                f.write("data\n")
        policy = os.path.join(work, "policy.json")
        with open(policy, "w") as f:
            json.dump({"rules": [{"name": "bench", "paths": [brokered],
                                  "modes": ["read", "stat"]}]}, f)
        sock = os.path.join(work, "fdopen.sock")
        server = start_fdopen(sock, policy, os.path.join(work, "audit.log"))
        run = [os.path.join(RELEASE, "fdopen-client"), "--socket", sock, "run", "--"]
        count = str(args.count)
        bare = json_out([openloop, untouched, count])
        under_run = json_out(run + [openloop, untouched, count])
        via_run = json_out(run + [openloop, brokered, count])
        latency = os.path.join(RELEASE, "examples", "open_latency")
        direct = json_out([latency, sock, brokered, count])
        left_alone = {}
        for op in ("stat", "fstat"):
            left_alone[op] = (json_out([openloop, untouched, count, op]),
                              json_out(run + [openloop, untouched, count, op]))
        stat_via_run = json_out(run + [openloop, brokered, count, "stat"])
        stat_direct = json_out([latency, sock, brokered, count, "stat"])
        starts = {"bare": [], "run": [], "true": [], "true_run": []}
        python = shutil.which("python3") or "/usr/bin/python3"
        true = shutil.which("true") or "/bin/true"
        for _ in range(args.starts):
            for name, command in (("bare", [python, "-c", "pass"]),
                                  ("run", run + [python, "-c", "pass"]),
                                  ("true", [true]), ("true_run", run + [true])):
                t = time.perf_counter()
                sh(*command)
                starts[name].append(time.perf_counter() - t)
        server.terminate()
        server.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    overhead_us = (under_run["median_ns"] - bare["median_ns"]) / 1000
    brokered_ratio = via_run["median_ns"] / direct["median_ns"]
    py_bare, py_run = statistics.median(starts["bare"]), statistics.median(starts["run"])
    true_bare, true_run = statistics.median(starts["true"]), statistics.median(starts["true_run"])
    true_ms = (true_run - true_bare) * 1000
    call_us = {op: (r["median_ns"] - b["median_ns"]) / 1000 for op, (b, r) in left_alone.items()}
    stat_ratio = stat_via_run["median_ns"] / stat_direct["median_ns"]
    lines = [
        "| fdopen-client run | median | p99 | against | target |",
        "| --- | ---: | ---: | --- | --- |",
        f"| open left alone, bare | {bare['median_ns'] / 1000:.1f} µs | {bare['p99_ns'] / 1000:.1f} µs | | |",
        f"| open left alone, under run | {under_run['median_ns'] / 1000:.1f} µs | {under_run['p99_ns'] / 1000:.1f} µs | "
        f"+{overhead_us:.1f} µs | <= +25 µs |",
        f"| direct Client::open | {direct['median_ns'] / 1000:.1f} µs | {direct['p99_ns'] / 1000:.1f} µs | | |",
        f"| brokered open under run | {via_run['median_ns'] / 1000:.1f} µs | {via_run['p99_ns'] / 1000:.1f} µs | "
        f"{brokered_ratio:.2f}x | <= 2x |",
        f"| python3 -c pass, bare / under run | {py_bare * 1000:.1f} ms / {py_run * 1000:.1f} ms | | "
        f"{py_run / py_bare:.2f}x | <= 1.5x |",
    ]
    for op, (b, r) in left_alone.items():
        lines.append(f"| {op} left alone, bare / under run | {b['median_ns'] / 1000:.1f} µs / "
                     f"{r['median_ns'] / 1000:.1f} µs | {r['p99_ns'] / 1000:.1f} µs | "
                     f"+{call_us[op]:.1f} µs | <= +8 µs |")
    lines += [
        f"| direct Client::stat / brokered stat under run | {stat_direct['median_ns'] / 1000:.1f} µs / "
        f"{stat_via_run['median_ns'] / 1000:.1f} µs | {stat_via_run['p99_ns'] / 1000:.1f} µs | "
        f"{stat_ratio:.2f}x | <= 2x |",
        f"| true, bare / under run | {true_bare * 1000:.2f} ms / {true_run * 1000:.2f} ms | | "
        f"+{true_ms:.2f} ms | <= +1 ms |",
    ]
    table = "\n".join(lines)
    print(table)
    if args.record:
        with open(os.path.join(ROOT, "BENCHMARKS.md"), "a") as f:
            f.write(f"\n### fdopen-client run ({args.count} opens, {args.starts} starts)\n\n{table}\n")
    missed = [name for name, ok in (("open left alone", overhead_us <= 25),
                                    ("stat left alone", call_us["stat"] <= 8),
                                    ("fstat left alone", call_us["fstat"] <= 8),
                                    ("brokered open", brokered_ratio <= 2),
                                    ("brokered stat", stat_ratio <= 2),
                                    ("run -- true", true_ms <= 1),
                                    ("python start", py_run / py_bare <= 1.5)) if not ok]
    print("run targets: " + ("all met" if not missed else "MISSED: " + ", ".join(missed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
