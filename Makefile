# fdopen — common tasks. `make run` and `make test` are the two set-up
# commands of the README; CI runs `make test` through .ci/run.

CARGO  ?= cargo
SOCKET ?= ./fdopen.sock
POLICY ?= policies/demo.json

.PHONY: all build run test test-tools lint install install-files uninstall deb deb-files fmt clean fuzz fuzz-build man bench

all: build

# fdopen-client is linked statically (static-pie, so still ASLR), so that
# `fdopen-client run -- CMD` adds less to CMD's start (BENCHMARKS.md):
# against musl where rustup has or can add the target (glibc's start-up
# asks the CPU about its caches with dozens of `cpuid`s, each a VM exit of
# ~4 µs on a virtual machine: ~0.3 ms), else against glibc where the toolchain
# has a static libc (`cargo rustc` passes the flag to that binary alone),
# else dynamically; `make` says which. The server stays dynamic, for NSS.
MUSL ?= $(shell uname -m)-unknown-linux-musl
# True when rustup has the musl target or can add it (in time).
HAVE_MUSL = { rustup target list --installed 2>/dev/null | grep -qx '$(MUSL)' \
  || timeout 300 rustup target add '$(MUSL)'; }
build:
	$(CARGO) build --release --locked --bin fdopen-server
	@if $(HAVE_MUSL) && $(CARGO) build --release --locked --bin fdopen-client --target '$(MUSL)'; then \
	  rm -f target/release/fdopen-client && cp target/$(MUSL)/release/fdopen-client target/release/; \
	  echo "fdopen-client: linked statically against musl"; \
	elif $(CARGO) rustc --release --locked --bin fdopen-client -- -C target-feature=+crt-static; then \
	  echo "note: no $(MUSL) target: fdopen-client linked statically against glibc"; \
	else \
	  echo "note: the static links failed (no static libc?): linking fdopen-client dynamically"; \
	  $(CARGO) build --release --locked --bin fdopen-client; \
	fi

# Serve the demo policy (files shipped in demo/) on ./fdopen.sock; no root needed.
run: build
	mkdir -p demo/scratch demo/uploads && touch demo/scratch/notes.log
	./target/release/fdopen-server serve --socket $(SOCKET) --policy $(POLICY)

# Every test: unit tests of the policy engine, integration tests that start
# the real binaries on temporary sockets, and the doc tests.
test: test-tools
	$(CARGO) check --locked --lib --no-default-features
	$(CARGO) test --locked
	# The tests that drive fdopen-client again, against it built for musl, as
	# `make build` ships it: its libc differs (std masks O_PATH on musl;
	# execvp's default PATH and TZ differ too); and `run`'s directory
	# streams' unit tests (std's Metadata::created fails on musl) and fdpass's
	# (musl's sendmmsg is a loop of sendmsg that we replace).
	@if $(HAVE_MUSL) >/dev/null 2>&1; then \
	  $(CARGO) build --locked --bin fdopen-client --target '$(MUSL)' && \
	  FDOPEN_TEST_CLIENT='$(CURDIR)/target/$(MUSL)/debug/fdopen-client' \
	    $(CARGO) test --locked --test run --test run_hardening --test run_programs --test cli \
	      --test tree_cli --test bind --test create --test held --test identity --test stats && \
	  $(CARGO) test --locked --lib --target '$(MUSL)' -- run::dir_stream fdpass; \
	else echo "note: no $(MUSL) target (rustup): the client tests ran against the glibc client only"; fi

# What the tests drive besides our binaries: a C compiler with a static
# libc (tests/programs/*.c), /usr/bin/python3 and the real programs of
# tests/run_programs.rs (sqlite3, rsync, nginx, getfattr and setfattr from
# attr, getfacl and setfacl from acl) for `run`; debhelper and lintian for
# the package, logrotate for the audit log's rotation. Installed from
# Debian's packages when missing and we are root; otherwise those tests
# skip with a printed reason.
# Packages are installed with a policy-rc.d that keeps their services
# (nginx) from starting: the tests start what they need on free ports.
test-tools:
	@if ! { command -v cc && test -e /usr/lib/$$(cc -print-multiarch 2>/dev/null)/libc.a && test -x /usr/bin/python3 \
	    && command -v dh && command -v lintian && command -v logrotate \
	    && command -v sqlite3 && command -v rsync && test -x /usr/sbin/nginx && command -v setfattr && command -v setfacl; } >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1; fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      gcc libc6-dev python3 debhelper lintian logrotate sqlite3 rsync nginx attr acl >/dev/null; \
	    status=$$?; if [ -n "$$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; [ $$status = 0 ]; \
	  else echo "note: no cc/static libc/python3/debhelper/lintian/logrotate/sqlite3/rsync/nginx/attr/acl; the tests that need them will skip"; fi; \
	fi

# fdopen-server against the C floor (../shared/bench/refserver.c), with
# ../shared/bench/loadgen.c, interleaved in one run; then the decision
# micro-benchmark; then what `fdopen-client run` costs (bench/run_bench.py)
# and what parked connections cost (bench/park_bench.py).
# BENCH_ARGS=--record appends the tables to BENCHMARKS.md.
BENCH_ARGS ?=
# A failing step (say, no C compiler: one line says so) does not stop the
# others. BENCH_ARGS=--shared measures against ../shared/bench instead of
# the floor and load generator in bench/.
bench:
	-python3 bench/bench.py $(BENCH_ARGS)
	-python3 bench/run_bench.py $(BENCH_ARGS)
	-python3 bench/park_bench.py $(BENCH_ARGS)
	$(CARGO) bench --locked --bench decision

# Man pages for both binaries (and each subcommand), generated from the
# clap definitions into target/man.
man: build
	./target/release/fdopen-server man target/man
	@ls target/man

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) clippy --locked --lib --no-default-features -- -D warnings
	# The static client's target (`make build`): the library builds for musl.
	@if $(HAVE_MUSL) >/dev/null 2>&1; then \
	  $(CARGO) clippy --locked --target '$(MUSL)' --lib --bin fdopen-client -- -D warnings; \
	else echo "note: no $(MUSL) target (rustup): the musl build of fdopen-client is not linted"; fi
	# The API's documentation, with and without the server: no broken links.
	RUSTDOCFLAGS='-D warnings' $(CARGO) doc --locked --no-deps --no-default-features
	RUSTDOCFLAGS='-D warnings' $(CARGO) doc --locked --no-deps

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

# Install like a daemon (README "Installing"): binaries, man pages (man1
# for the client and man8 for the daemon, generated from the command
# lines; man5/man7 from doc/), completions, systemd units,
# sysusers.d/tmpfiles.d, logrotate, the Python client where python3 finds
# it, and an example policy in /etc/fdopen/policy.d that never replaces one
# there. Takes the binaries from $(BUILD) and never runs cargo when they
# are there: `make && sudo make install` works although sudo's PATH has no
# cargo. Every directory it creates is recorded in $(DIRS_RECORD), so
# `make uninstall` removes exactly those again.
PREFIX      ?= /usr/local
DESTDIR     ?=
BUILD       ?= target/release
SYSCONFDIR  ?= /etc
BINDIR       = $(PREFIX)/bin
MANDIR       = $(PREFIX)/share/man
BASHCOMPDIR  = $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR   = $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR  = $(PREFIX)/share/fish/vendor_completions.d
UNITDIR      = $(PREFIX)/lib/systemd/system
SYSUSERSDIR  = $(PREFIX)/lib/sysusers.d
TMPFILESDIR  = $(PREFIX)/lib/tmpfiles.d
LOGROTATEDIR = $(SYSCONFDIR)/logrotate.d
POLICYDIR    = $(SYSCONFDIR)/fdopen/policy.d
# Debian's python3 reads /usr/lib/python3/dist-packages and, for /usr/local,
# /usr/local/lib/python3.N/dist-packages; empty (no module) without python3.
PYTHONDIR   ?= $(if $(filter /usr,$(PREFIX)),$(PREFIX)/lib/python3/dist-packages,$(shell python3 -c 'import sys; print("$(PREFIX)/lib/python3.%d/dist-packages" % sys.version_info[1])' 2>/dev/null))
DIRS_RECORD  = $(PREFIX)/share/fdopen/installed-directories
UNITS        = fdopen.socket fdopen.service
INSTALL_DIRS = $(BINDIR) $(MANDIR)/man1 $(MANDIR)/man5 $(MANDIR)/man7 $(MANDIR)/man8 \
  $(BASHCOMPDIR) $(ZSHCOMPDIR) $(FISHCOMPDIR) $(UNITDIR) $(SYSUSERSDIR) $(TMPFILESDIR) \
  $(LOGROTATEDIR) $(POLICYDIR) $(PYTHONDIR) $(patsubst %/,%,$(dir $(DIRS_RECORD)))

install: install-files

# Only when there is nothing built yet.
$(BUILD)/fdopen-server $(BUILD)/fdopen-client:
	$(MAKE) build

install-files: $(BUILD)/fdopen-server $(BUILD)/fdopen-client
	@created=; for dir in $(INSTALL_DIRS); do \
	  missing=; d=$$dir; \
	  while [ "$$d" != / ] && [ ! -d "$(DESTDIR)$$d" ]; do missing="$$d $$missing"; d=$$(dirname "$$d"); done; \
	  for d in $$missing; do install -d -m 0755 "$(DESTDIR)$$d"; created="$$created $$d"; done; \
	done; \
	for d in $$created; do echo "$$d"; done | cat - "$(DESTDIR)$(DIRS_RECORD)" 2>/dev/null | sort -u > "$(DESTDIR)$(DIRS_RECORD).new"; \
	mv "$(DESTDIR)$(DIRS_RECORD).new" "$(DESTDIR)$(DIRS_RECORD)"; chmod 0644 "$(DESTDIR)$(DIRS_RECORD)"
	install -m 0755 $(BUILD)/fdopen-server $(BUILD)/fdopen-client $(DESTDIR)$(BINDIR)/
	$(BUILD)/fdopen-server man $(DESTDIR)$(MANDIR) >/dev/null
	chmod 0644 $(DESTDIR)$(MANDIR)/man1/fdopen-client*.1 $(DESTDIR)$(MANDIR)/man8/fdopen-server*.8
	install -m 0644 doc/fdopen-policy.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 doc/fdopen-protocol.7 $(DESTDIR)$(MANDIR)/man7/
	for bin in fdopen-server fdopen-client; do \
	  $(BUILD)/$$bin completions bash > $(DESTDIR)$(BASHCOMPDIR)/$$bin; \
	  $(BUILD)/$$bin completions zsh > $(DESTDIR)$(ZSHCOMPDIR)/_$$bin; \
	  $(BUILD)/$$bin completions fish > $(DESTDIR)$(FISHCOMPDIR)/$$bin.fish; \
	  chmod 0644 $(DESTDIR)$(BASHCOMPDIR)/$$bin $(DESTDIR)$(ZSHCOMPDIR)/_$$bin $(DESTDIR)$(FISHCOMPDIR)/$$bin.fish; \
	done
	for unit in $(UNITS); do \
	  sed 's|/usr/local/bin/|$(BINDIR)/|g' examples/systemd/$$unit > $(DESTDIR)$(UNITDIR)/$$unit; \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$$unit; \
	done
	install -m 0644 packaging/sysusers.d/fdopen.conf $(DESTDIR)$(SYSUSERSDIR)/fdopen.conf
	install -m 0644 packaging/tmpfiles.d/fdopen.conf $(DESTDIR)$(TMPFILESDIR)/fdopen.conf
	install -m 0644 packaging/logrotate/fdopen $(DESTDIR)$(LOGROTATEDIR)/fdopen
	$(if $(PYTHONDIR),install -m 0644 examples/python/fdopen_client.py $(DESTDIR)$(PYTHONDIR)/fdopen_client.py)
	test -e $(DESTDIR)$(POLICYDIR)/00-example.json || \
	  install -m 0644 packaging/policy.d/00-example.json $(DESTDIR)$(POLICYDIR)/00-example.json

# Removes what install put there: the files, the `systemctl enable`
# links to the units, and then the directories install created (those
# still empty). The example policy goes only if unchanged: an edited
# policy is the admin's, and so is its directory.
uninstall:
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
	  systemctl disable --now $(UNITS) 2>/dev/null || true; \
	fi
	for unit in $(UNITS); do \
	  for link in $(DESTDIR)$(SYSCONFDIR)/systemd/system/*.wants/$$unit; do \
	    if [ -L "$$link" ]; then rm -f "$$link"; fi; \
	  done; \
	  rm -f $(DESTDIR)$(UNITDIR)/$$unit; \
	done
	rm -f $(DESTDIR)$(BINDIR)/fdopen-server $(DESTDIR)$(BINDIR)/fdopen-client
	rm -f $(DESTDIR)$(MANDIR)/man8/fdopen-server*.8 $(DESTDIR)$(MANDIR)/man1/fdopen-client*.1
	rm -f $(DESTDIR)$(MANDIR)/man5/fdopen-policy.5 $(DESTDIR)$(MANDIR)/man7/fdopen-protocol.7
	rm -f $(DESTDIR)$(BASHCOMPDIR)/fdopen-server $(DESTDIR)$(BASHCOMPDIR)/fdopen-client
	rm -f $(DESTDIR)$(ZSHCOMPDIR)/_fdopen-server $(DESTDIR)$(ZSHCOMPDIR)/_fdopen-client
	rm -f $(DESTDIR)$(FISHCOMPDIR)/fdopen-server.fish $(DESTDIR)$(FISHCOMPDIR)/fdopen-client.fish
	rm -f $(DESTDIR)$(SYSUSERSDIR)/fdopen.conf $(DESTDIR)$(TMPFILESDIR)/fdopen.conf
	rm -f $(DESTDIR)$(LOGROTATEDIR)/fdopen
	$(if $(PYTHONDIR),rm -f $(DESTDIR)$(PYTHONDIR)/fdopen_client.py)
	if cmp -s packaging/policy.d/00-example.json $(DESTDIR)$(POLICYDIR)/00-example.json; then \
	  rm -f $(DESTDIR)$(POLICYDIR)/00-example.json; \
	fi
	if [ -f "$(DESTDIR)$(DIRS_RECORD)" ]; then \
	  dirs=$$(sort -r "$(DESTDIR)$(DIRS_RECORD)"); rm -f "$(DESTDIR)$(DIRS_RECORD)"; \
	  for d in $$dirs; do rmdir "$(DESTDIR)$$d" 2>/dev/null || true; done; \
	fi

# The Debian package, built the Debian way: debian/rules (debhelper,
# dh_installsystemd) around `make install-files`, on a copy of the
# sources in $(DEBDIR)/src so the checkout gets no build files and two
# builds never share one. Binaries from $(BUILD), built first if absent.
# Reproducible without SOURCE_DATE_EPOCH: debhelper takes it from
# debian/changelog. Needs debhelper (`apt-get install debhelper`).
VERSION  = $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
DEB_ARCH = $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEBDIR  ?= $(BUILD)/deb
DEB      = $(DEBDIR)/fdopen_$(VERSION)_$(DEB_ARCH).deb
DEB_FLAGS ?=
DEB_SOURCES = Cargo.toml Makefile debian doc examples/systemd examples/python packaging

deb: deb-files

deb-files: $(BUILD)/fdopen-server $(BUILD)/fdopen-client
	@command -v dh >/dev/null || { echo "make deb needs debhelper (apt-get install debhelper)"; exit 1; }
	rm -rf $(DEBDIR)/src && mkdir -p $(DEBDIR)/src
	cp -a --parents $(DEB_SOURCES) $(DEBDIR)/src/
	cd $(DEBDIR)/src && debian/rules binary BUILD=$(abspath $(BUILD)) DEBDIR=$(abspath $(DEBDIR)) \
	  DEB_FLAGS='$(DEB_FLAGS)' >/dev/null
	rm -rf $(DEBDIR)/src
	@echo $(DEB)
