# fdopen — common tasks. `make run` and `make test` are the two set-up
# commands of the README; CI runs `make test` through .ci/run.

CARGO  ?= cargo
SOCKET ?= ./fdopen.sock
POLICY ?= policies/demo.json

.PHONY: all build run test test-tools lint fmt clean fuzz fuzz-build man bench

all: build

build:
	$(CARGO) build --release --locked

# Serve the demo policy (files shipped in demo/) on ./fdopen.sock; no root needed.
run: build
	mkdir -p demo/scratch demo/uploads && touch demo/scratch/notes.log
	./target/release/fdopen-server serve --socket $(SOCKET) --policy $(POLICY)

# Every test: unit tests of the policy engine, integration tests that start
# the real binaries on temporary sockets, and the doc tests.
test: test-tools
	$(CARGO) test --locked

# What the `run` tests drive besides our binaries: a C compiler with a
# static libc (tests/programs/*.c) and /usr/bin/python3. Installed from
# Debian's packages when missing and we are root; otherwise those tests
# skip with a printed reason.
test-tools:
	@if ! { command -v cc && test -e /usr/lib/$$(cc -print-multiarch 2>/dev/null)/libc.a && test -x /usr/bin/python3; } >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev python3 >/dev/null; \
	  else echo "note: no cc/static libc/python3; the run tests that need them will skip"; fi; \
	fi

# fdopen-server against the C floor (../shared/bench/refserver.c), with
# ../shared/bench/loadgen.c, interleaved in one run; then the decision
# micro-benchmark; then what `fdopen-client run` costs (bench/run_bench.py)
# and what parked connections cost (bench/park_bench.py).
# BENCH_ARGS=--record appends the tables to BENCHMARKS.md.
BENCH_ARGS ?=
bench:
	python3 bench/bench.py $(BENCH_ARGS)
	python3 bench/run_bench.py $(BENCH_ARGS)
	python3 bench/park_bench.py $(BENCH_ARGS)
	$(CARGO) bench --locked --bench decision

# Man pages for both binaries (and each subcommand), generated from the
# clap definitions into target/man.
man: build
	./target/release/fdopen-server man target/man
	@ls target/man

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# Coverage-guided fuzzing with afl.rs on the stable toolchain: both targets
# side by side for FUZZ_SECONDS (default 10 minutes), then a summary.
# Needs `cargo install cargo-afl` once.
FUZZ_SECONDS ?= 600
FUZZ_ENV = AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1

fuzz-build:
	command -v cargo-afl >/dev/null || $(CARGO) install --locked cargo-afl
	cd fuzz && $(CARGO) afl build --release

fuzz: fuzz-build
	cd fuzz && for t in request_parser policy_loader; do \
	  seeds=seeds/$${t%%_*}; mkdir -p out; \
	  $(FUZZ_ENV) $(CARGO) afl fuzz -i $$seeds -o out/$$t -V $(FUZZ_SECONDS) target/release/$$t > out-$$t.log 2>&1 & \
	done; wait
	cd fuzz && for t in request_parser policy_loader; do \
	  echo "== $$t"; grep -E 'execs_done|saved_crashes|saved_hangs|corpus_count' out/$$t/default/fuzzer_stats; \
	done

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -f $(SOCKET)
