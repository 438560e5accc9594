# fdopen — common tasks. `make run` and `make test` are the two set-up
# commands of the README; CI runs `make test` through .ci/run.

CARGO  ?= cargo
SOCKET ?= ./fdopen.sock
POLICY ?= policies/demo.json

.PHONY: all build run test lint fmt clean

all: build

build:
	$(CARGO) build --release --locked

# Serve the demo policy (files shipped in demo/) on ./fdopen.sock; no root needed.
run: build
	mkdir -p demo/scratch && touch demo/scratch/notes.log
	./target/release/fdopen-server serve --socket $(SOCKET) --policy $(POLICY)

# Every test: unit tests of the policy engine, integration tests that start
# the real binaries on temporary sockets, and the doc tests.
test:
	$(CARGO) test --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -f $(SOCKET)
