# kvh — memory hygiene for multi-tenant LLM serving on GPU nodes.
# `make help` lists the targets.

SHELL := /bin/bash
GO    ?= go
BUILD := build
BIN   := $(BUILD)/bin
GOFILES := $(shell find . -name '*.go' -not -path './var/*' -not -path './build/*') go.mod go.sum
FUZZTIME ?= 10s

.PHONY: help build test test-short fuzz bench lint demo clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: $(BIN)/kvh-verify ## build the Go binaries into build/bin

$(BIN)/%: $(GOFILES)
	@mkdir -p $(BIN)
	$(GO) build -trimpath -o $@ ./cmd/$*

test: ## run every test with -race, then a short run of every fuzz target
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZTIME)

test-short: ## quick tests (no crash loop, no fuzzing)
	$(GO) test -short -count=1 ./...

fuzz: ## run each fuzz target for FUZZTIME (default 10s)
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg >/dev/null; \
	  done; done

bench: ## benchmarks, reported as throughput and ratios against references measured in the same run
	@mkdir -p $(BUILD)
	$(GO) test -run '^$$' -bench . -benchtime 100000x ./forensic/ | tee $(BUILD)/bench-forensic.txt
	$(GO) test -run '^$$' -bench Zeroize -benchtime 2s ./zeroize/ | tee $(BUILD)/bench-zeroize.txt
	$(GO) test -run '^$$' -bench LifecycleDurable -benchtime 200000x ./tracer/ | tee $(BUILD)/bench-tracer.txt
	$(GO) test -run '^$$' -bench RSSAfterLifecycles -benchtime 1000000x ./tracer/ | tee -a $(BUILD)/bench-tracer.txt

lint: ## gofmt, go vet, staticcheck
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$'))" || (gofmt -l . ; exit 1)
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

demo: ## run the main job on an embedded default (needs the agent: see README)
	@echo "make demo: not yet available — the agent (kvh-agent) and interposer are not built yet."
	@echo "What exists today: 'make test' and build/bin/kvh-verify (log | gate | prune | keygen)."

clean: ## remove build outputs
	rm -rf $(BUILD)
