# fdopen — common tasks. `make run` and `make test` are the two set-up
# commands of the README; CI runs `make test` through .ci/run.

CARGO  ?= cargo
SOCKET ?= ./fdopen.sock
POLICY ?= policies/demo.json

.PHONY: all build run test test-tools lint install install-files uninstall deb deb-files fmt clean fuzz fuzz-build man bench

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
	$(CARGO) check --locked --lib --no-default-features
	$(CARGO) test --locked

# What the `run` tests drive besides our binaries: a C compiler with a
# static libc (tests/programs/*.c), /usr/bin/python3, and the real
# programs of tests/run_programs.rs (sqlite3, rsync, nginx, getfattr and
# setfattr from attr, getfacl and setfacl from acl). Installed from
# Debian's packages when missing and we are root; otherwise those tests
# skip with a printed reason.
test-tools:
	@if ! { command -v cc && test -e /usr/lib/$$(cc -print-multiarch 2>/dev/null)/libc.a && test -x /usr/bin/python3 \
	       && command -v sqlite3 && command -v rsync && test -x /usr/sbin/nginx && command -v setfattr && command -v setfacl; } >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev python3 \
	      sqlite3 rsync nginx attr acl >/dev/null; \
	  else echo "note: no cc/static libc/python3/sqlite3/rsync/nginx/attr/acl; the run tests that need them will skip"; fi; \
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
# generated from the command lines, man5/man7 from doc/),
# completions, systemd units, sysusers.d/tmpfiles.d, logrotate, and an
# example policy in /etc/fdopen/policy.d that never replaces one there.
# `install-files` takes already built binaries from $(BUILD).
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
UNITS        = fdopen.socket fdopen.service

install: build install-files

install-files:
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 \
	  $(DESTDIR)$(MANDIR)/man7 $(DESTDIR)$(BASHCOMPDIR) \
	  $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR) $(DESTDIR)$(UNITDIR) \
	  $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(LOGROTATEDIR) \
	  $(DESTDIR)$(POLICYDIR)
	install -m 0755 $(BUILD)/fdopen-server $(BUILD)/fdopen-client $(DESTDIR)$(BINDIR)/
	$(BUILD)/fdopen-server man $(DESTDIR)$(MANDIR)/man1 >/dev/null
	chmod 0644 $(DESTDIR)$(MANDIR)/man1/fdopen-*.1
	install -m 0644 doc/fdopen-policy.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 doc/fdopen-protocol.7 $(DESTDIR)$(MANDIR)/man7/
	for bin in fdopen-server fdopen-client; do \
	  $(BUILD)/$$bin completions bash > $(DESTDIR)$(BASHCOMPDIR)/$$bin; \
	  $(BUILD)/$$bin completions zsh > $(DESTDIR)$(ZSHCOMPDIR)/_$$bin; \
	  $(BUILD)/$$bin completions fish > $(DESTDIR)$(FISHCOMPDIR)/$$bin.fish; \
	done
	for unit in $(UNITS); do \
	  sed 's|/usr/local/bin/|$(BINDIR)/|g' examples/systemd/$$unit > $(DESTDIR)$(UNITDIR)/$$unit; \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$$unit; \
	done
	install -m 0644 packaging/sysusers.d/fdopen.conf $(DESTDIR)$(SYSUSERSDIR)/fdopen.conf
	install -m 0644 packaging/tmpfiles.d/fdopen.conf $(DESTDIR)$(TMPFILESDIR)/fdopen.conf
	install -m 0644 packaging/logrotate/fdopen $(DESTDIR)$(LOGROTATEDIR)/fdopen
	test -e $(DESTDIR)$(POLICYDIR)/00-example.json || \
	  install -m 0644 packaging/policy.d/00-example.json $(DESTDIR)$(POLICYDIR)/00-example.json

# Removes what install put there; the example policy only if unchanged
# (an edited policy is the admin's).
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/fdopen-server $(DESTDIR)$(BINDIR)/fdopen-client
	rm -f $(DESTDIR)$(MANDIR)/man1/fdopen-server*.1 $(DESTDIR)$(MANDIR)/man1/fdopen-client*.1
	rm -f $(DESTDIR)$(MANDIR)/man5/fdopen-policy.5 $(DESTDIR)$(MANDIR)/man7/fdopen-protocol.7
	rm -f $(DESTDIR)$(BASHCOMPDIR)/fdopen-server $(DESTDIR)$(BASHCOMPDIR)/fdopen-client
	rm -f $(DESTDIR)$(ZSHCOMPDIR)/_fdopen-server $(DESTDIR)$(ZSHCOMPDIR)/_fdopen-client
	rm -f $(DESTDIR)$(FISHCOMPDIR)/fdopen-server.fish $(DESTDIR)$(FISHCOMPDIR)/fdopen-client.fish
	for unit in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$unit; done
	rm -f $(DESTDIR)$(SYSUSERSDIR)/fdopen.conf $(DESTDIR)$(TMPFILESDIR)/fdopen.conf
	rm -f $(DESTDIR)$(LOGROTATEDIR)/fdopen
	if cmp -s packaging/policy.d/00-example.json $(DESTDIR)$(POLICYDIR)/00-example.json; then \
	  rm -f $(DESTDIR)$(POLICYDIR)/00-example.json; \
	  rmdir $(DESTDIR)$(POLICYDIR) $(DESTDIR)$(SYSCONFDIR)/fdopen 2>/dev/null || true; \
	fi

# A Debian package from the same install recipe: `make install-files`
# into a staging root with PREFIX=/usr, plus DEBIAN/ from packaging/debian
# (maintainer scripts create the fdopen-clients group and directories).
VERSION  = $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
HOMEPAGE = $(shell sed -n 's/^repository = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
DEB_ARCH = $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEBDIR  ?= $(BUILD)/deb
DEB_FLAGS ?=
DEBROOT  = $(DEBDIR)/root
DEB      = $(DEBDIR)/fdopen_$(VERSION)_$(DEB_ARCH).deb

deb: build deb-files

deb-files:
	@command -v dpkg-deb >/dev/null || { echo "make deb needs dpkg-deb (apt-get install dpkg)"; exit 1; }
	rm -rf $(DEBROOT)
	$(MAKE) -s install-files DESTDIR=$(abspath $(DEBROOT)) PREFIX=/usr SYSCONFDIR=/etc BUILD=$(BUILD)
	install -d $(DEBROOT)/DEBIAN
	sed -e 's|@VERSION@|$(VERSION)|' -e 's|@ARCH@|$(DEB_ARCH)|' -e 's|@HOMEPAGE@|$(HOMEPAGE)|' \
	  packaging/debian/control > $(DEBROOT)/DEBIAN/control
	install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm $(DEBROOT)/DEBIAN/
	printf '%s\n' /etc/fdopen/policy.d/00-example.json /etc/logrotate.d/fdopen > $(DEBROOT)/DEBIAN/conffiles
	dpkg-deb --root-owner-group $(DEB_FLAGS) --build $(DEBROOT) $(DEB) >/dev/null
	@echo $(DEB)
