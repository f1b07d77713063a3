# quorumproxy — the commands the README gives. Every target installs what it
# needs (as root, through internal/scripts/install-deps.sh) and starts its own
# servers, so each works on a clean Debian machine.

GO        ?= go
BIN       := bin/quorumproxy
COMMIT    ?= $(shell git describe --always --dirty --abbrev=12 2>/dev/null)
LDFLAGS   := -X main.commit=$(COMMIT) -X main.buildDate=$(shell date -u +%Y-%m-%dT%H:%M:%SZ)
# The suite's budget: the whole run stays well under 30 minutes on 2 cores.
TEST_TIMEOUT ?= 25m

.PHONY: all build deps test vet demo bench soak clean package

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/quorumproxy

deps:
	bash internal/scripts/install-deps.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) vet ./...

# QP_REQUIRE_SERVERS=1 turns a missing server binary into a failure instead of a skip.
test: deps vet
	QP_REQUIRE_SERVERS=1 $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

demo: deps build
	$(GO) run ./internal/demo -bin $(BIN)

bench: deps build
	$(GO) run ./internal/bench -bin $(BIN)
	$(GO) run ./internal/scalebench -bin $(BIN) -proxies 3,5 -interval 1s,2s -out bench-results-scale.md

# A .deb (dpkg-deb) of the binary, a hardened systemd unit, a starting
# config, the man page and bash and zsh completion, in dist/.
package: build
	bash packaging/build-deb.sh $(BIN) dist

# Long runs kept out of `make test`: many more simulation seeds, detection-time
# trials, and longer, lossier partition scenarios with more trials; and the
# default settings measured (kills and freezes of the primary, false failovers
# under pgbench and 5% loss; about 40 minutes) into defaults-results.md.
soak: deps
	QP_REQUIRE_SERVERS=1 QP_SIM_SEEDS=100000 QP_SIM_LONG=1 $(GO) test -timeout 80m -run 'TestSimulation$$' ./cluster/
	QP_SIM_TWIN_SEEDS=200 $(GO) test -timeout 30m -run 'TestSimulationManyServices$$' ./cluster/
	QP_REQUIRE_SERVERS=1 QP_DETECT_TRIALS=20 $(GO) test -timeout 20m -run Detection -v ./health/
	QP_REQUIRE_SERVERS=1 QP_CHAOS_TRIALS=10 QP_CHAOS_SECONDS=120 QP_CHAOS_LOSS=20 $(GO) test -timeout 60m -v ./internal/chaos/
	QP_REQUIRE_SERVERS=1 QP_PG_FAILOVERS=100 $(GO) test -timeout 60m -run 'TestFailoverPromotesTheMostUpToDateStandby$$' -v ./cmd/quorumproxy/
	QP_REQUIRE_SERVERS=1 QP_DEFAULTS_RUNS=30 QP_DEFAULTS_OUT=$(CURDIR)/defaults-results.md $(GO) test -timeout 90m -run 'TestDefaults$$' -v ./internal/defaultsbench/

clean:
	rm -rf bin
