# vigil — see README.md. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
BIN := bin/vigil
DEMO_DIR ?= $(or $(TMPDIR),/tmp)/vigil-demo

.PHONY: all build deps test vet fmt-check demo demo-replay bench bench-speed bench-quality fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/vigil

## deps: what the tests need beyond Go, all Debian packages: kcat (a third-party Kafka client),
## ClickHouse server and client, Alertmanager (with amtool) and Prometheus (for promtool).
DEB_TOOLS := kcat:kcat clickhouse-server:clickhouse-server clickhouse-client:clickhouse-client \
	prometheus-alertmanager:prometheus-alertmanager amtool:prometheus-alertmanager promtool:prometheus
deps:
	@missing=$$(for t in $(DEB_TOOLS); do command -v $${t%%:*} >/dev/null 2>&1 || \
		[ -x /usr/sbin/$${t%%:*} ] || [ -x /usr/bin/$${t%%:*} ] || echo $${t##*:}; done | sort -u); \
	if [ -n "$$missing" ]; then echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi

## test: everything CI checks (formatting, vet, unit + integration tests, race detector).
test: deps fmt-check vet
	$(GO) test -count=1 ./...
	$(GO) test -count=1 -race ./detector/...

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

## demo: stream a simulated fleet with incidents through an in-process Kafka-protocol broker
## into two vigil instances (one consumer group), live; score what they caught. About a minute.
demo: build
	$(BIN) demo

## demo-replay: the offline path: simulate a fleet to files, replay it through the detector, score the result.
demo-replay: build
	@mkdir -p $(DEMO_DIR)
	@echo "== simulating a fleet (events and labelled incidents in $(DEMO_DIR))"
	$(BIN) simulate --out $(DEMO_DIR)/events.jsonl --truth $(DEMO_DIR)/truth.jsonl
	@echo "== replaying it through vigil (alerts in $(DEMO_DIR)/alerts.jsonl)"
	$(BIN) replay --input $(DEMO_DIR)/events.jsonl --show-bad 5 > $(DEMO_DIR)/alerts.jsonl
	@echo "== the first alerts"
	@head -n 3 $(DEMO_DIR)/alerts.jsonl
	@echo "== detection quality against the labelled incidents"
	$(GO) run ./bench/quality --truth $(DEMO_DIR)/truth.jsonl --alerts $(DEMO_DIR)/alerts.jsonl --events $(DEMO_DIR)/events.jsonl

## bench: speed and memory benchmarks, then the detection-quality benchmark.
bench: bench-speed bench-quality

bench-speed: deps
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./features ./models
	$(GO) test -run '^$$' -bench 'Replay|Pipeline' -benchmem -count 5 ./bench
	$(GO) test -run '^$$' -bench EventToAlertmanager -benchtime 10x -count 3 ./bench

bench-quality:
	$(GO) run ./bench/quality

## fuzz: every fuzz target (a decoder of outside data), one after another, FUZZTIME each.
## A crash's input lands in the package's testdata/fuzz/, which `make test` then replays.
FUZZTIME ?= 20s
FUZZ_TARGETS := features:FuzzDecode features:FuzzParseRFC3339 features:FuzzVerifyEvent \
	features:FuzzParseKeyring features:FuzzSeenSet features:FuzzDedupRestore models:FuzzSnapshot \
	detector:FuzzRestoreAgent detector:FuzzRestoreClass detector:FuzzRestorePartitionState \
	detector:FuzzCheckpointRecords detector:FuzzRevokerState detector:FuzzRestoreState \
	detector:FuzzParseInventory cmd/vigil:FuzzParseConfig
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do echo "== $$t"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./$${t%%:*}; done

clean:
	rm -rf bin
