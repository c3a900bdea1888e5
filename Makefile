# kvh — memory hygiene for multi-tenant LLM serving on GPU nodes.
# `make help` lists the targets.

SHELL := /bin/bash
GO    ?= go
BUILD := build
BIN   := $(BUILD)/bin
GOFILES := $(shell find . -name '*.go' -not -path './var/*' -not -path './build/*') go.mod go.sum
FUZZTIME ?= 10s
# go-nvml's cgo prolog trips deprecation warnings in nvml.h; they are NVIDIA's, not ours.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

CC ?= gcc
KVH_CFLAGS := -std=gnu11 -O2 -g -fPIC -fvisibility=hidden -Wall -Wextra -Werror
KVH_LDFLAGS := -shared -lpthread -ldl
# libkvh.so: one concept a file (interpose/kvh_internal.h lists them), linked
# with -flto so calls between the files inline as they did within one.
KVH_C := $(addprefix interpose/,config.c resolve.c table.c report.c verify.c hooks.c coop.c init.c)
KVH_SRC := $(KVH_C) interpose/kvh_internal.h interpose/hooks.def interpose/exports.map $(wildcard interpose/include/*.h)
KVH_BUILD := $(KVH_CFLAGS) -flto -Iinterpose/include -Iinterpose
KVH_LINK := $(KVH_LDFLAGS) -Wl,--version-script=interpose/exports.map
# make bench measures libkvh.so against the interposer at this commit (the
# last single-file kvh.c), built from git as it was built then.
KVH_BASE ?= 780b422
FAKE := $(BUILD)/fakecuda
WAYS := runtime driver dlopen entry vmm async host ipc stress fork edge deny bench churn register failclosed vmmalias table v1 ctx graph imports graphlaunch
CLIENT_CFLAGS := -O1 -g -Wall -Wextra -Werror -Iinterpose/include

.PHONY: help build test cover test-short fuzz bench lint demo clean interpose fakecuda gpu-check generate check-generate

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: $(BIN)/kvh-verify $(BIN)/kvh-agent ## build the Go binaries into build/bin

generate: ## regenerate the eBPF objects and bindings (bpf2go; needs clang, llvm, libbpf-dev)
	cd bpf && $(GO) generate ./...

check-generate: generate ## fail if regenerating the eBPF output changes what is committed
	@git diff --exit-code --stat -- bpf/kvh_x86_bpfel.go bpf/kvh_x86_bpfel.o bpf/kvh_arm64_bpfel.go bpf/kvh_arm64_bpfel.o || (echo "bpf/: committed bpf2go output is stale; run make generate and commit" && exit 1)

interpose: $(BUILD)/lib/libkvh.so $(BUILD)/lib/libkvh-asan.so ## build libkvh.so (and its ASan/UBSan twin) into build/lib

$(BUILD)/lib/libkvh.so: $(KVH_SRC)
	@mkdir -p $(@D)
	$(CC) $(KVH_BUILD) -Wl,-z,defs -o $@ $(KVH_C) $(KVH_LINK)

$(BUILD)/lib/libkvh-asan.so: $(KVH_SRC)
	@mkdir -p $(@D)
	$(CC) $(KVH_BUILD) -fsanitize=address,undefined -fno-omit-frame-pointer -o $@ $(KVH_C) $(KVH_LINK)

# The gcov twin for make cover: -O0 and no -flto so lines map one to one, one
# object a file so each .c gets its own .gcda beside its .o in build/gcov/.
KVH_GCOV_O := $(patsubst interpose/%.c,$(BUILD)/gcov/%.o,$(KVH_C))

$(BUILD)/gcov/%.o: interpose/%.c $(KVH_SRC)
	@mkdir -p $(@D)
	$(CC) $(filter-out -O2,$(KVH_CFLAGS)) -O0 --coverage -Iinterpose/include -Iinterpose -c -o $@ $<

$(BUILD)/gcov/libkvh.so: $(KVH_GCOV_O)
	$(CC) --coverage -Wl,-z,defs -o $@ $^ $(KVH_LINK)

# The baseline for make bench: interpose/ at $(KVH_BASE), taken from git into
# a temporary directory. The stamp names the commit, so another KVH_BASE
# rebuilds it.
$(BUILD)/lib/libkvh-base.so: $(BUILD)/lib/.kvh-base-$(KVH_BASE)
	@set -e -o pipefail; d=$$(mktemp -d); trap 'rm -rf "$$d"' EXIT; \
	git archive $(KVH_BASE) interpose | tar -x -C "$$d"; \
	test -f "$$d/interpose/kvh.c" || { echo "KVH_BASE=$(KVH_BASE) has no interpose/kvh.c: not the single-file interposer"; exit 1; }; \
	set -x; $(CC) $(KVH_CFLAGS) -I"$$d/interpose/include" -I"$$d/interpose" -Wl,-z,defs -o $@ "$$d/interpose/kvh.c" \
	  $(KVH_LDFLAGS) -Wl,--version-script="$$d/interpose/exports.map"; set +x

$(BUILD)/lib/.kvh-base-%:
	@mkdir -p $(@D) && rm -f $(@D)/.kvh-base-* && touch $@

fakecuda: $(FAKE)/libcuda.so.1 $(FAKE)/libcudart.so.12 $(FAKE)/client_runtime_now $(addprefix $(FAKE)/client_,$(WAYS)) $(FAKE)/kvh_demo ## build the fake CUDA libraries and the test clients

$(FAKE)/libcuda.so.1: testdata/fakecuda/fakecuda.c interpose/include/kvh_cuda.h
	@mkdir -p $(@D)
	$(CC) -O2 -g -fPIC -shared -fvisibility=hidden -Wall -Wextra -Werror -Iinterpose/include -Wl,-soname,libcuda.so.1 -o $@ $< -lpthread
	ln -sf libcuda.so.1 $(FAKE)/libcuda.so

$(FAKE)/libcudart.so.12: testdata/fakecuda/fakecudart.c interpose/include/kvh_cuda.h
	@mkdir -p $(@D)
	$(CC) -O2 -g -fPIC -shared -fvisibility=hidden -Wall -Wextra -Werror -Iinterpose/include -Wl,-soname,libcudart.so.12 -o $@ $< -ldl -lpthread
	ln -sf libcudart.so.12 $(FAKE)/libcudart.so

$(FAKE)/client_runtime $(FAKE)/client_entry: $(FAKE)/client_%: testdata/fakecuda/client.c $(FAKE)/libcudart.so.12 $(FAKE)/libcuda.so.1
	$(CC) $(CLIENT_CFLAGS) -DWAY_$* -o $@ $< -L$(FAKE) -lcudart -Wl,-rpath,'$$ORIGIN' -ldl -lpthread

$(FAKE)/client_runtime_now: testdata/fakecuda/client.c $(FAKE)/libcudart.so.12 $(FAKE)/libcuda.so.1
	$(CC) $(CLIENT_CFLAGS) -DWAY_runtime -o $@ $< -L$(FAKE) -lcudart -Wl,-z,now -Wl,-rpath,'$$ORIGIN' -ldl -lpthread

$(FAKE)/client_dlopen: testdata/fakecuda/client.c $(FAKE)/libcuda.so.1
	$(CC) $(CLIENT_CFLAGS) -DWAY_dlopen -o $@ $< -Wl,-rpath,'$$ORIGIN' -ldl -lpthread

$(FAKE)/kvh_demo: testdata/fakecuda/demo.c $(FAKE)/libcudart.so.12 $(FAKE)/libcuda.so.1
	$(CC) $(CLIENT_CFLAGS) -o $@ $< -L$(FAKE) -lcudart -lcuda -Wl,-rpath,'$$ORIGIN' -ldl

$(FAKE)/client_%: testdata/fakecuda/client.c $(FAKE)/libcuda.so.1
	$(CC) $(CLIENT_CFLAGS) -DWAY_$* -o $@ $< -L$(FAKE) -lcuda -Wl,-rpath,'$$ORIGIN' -ldl -lpthread

$(BIN)/%: $(GOFILES)
	@mkdir -p $(BIN)
	$(GO) build -trimpath -o $@ ./cmd/$*

# -p 1: packages take turns. As root the witness tests probe the fake driver
# every other package's clients also load, and a 16-thread stress test running
# beside them would flood their ring buffer.
test: deps ## install what the tests need (root), then every test with -race, then a short run of every fuzz target
	$(GO) vet ./...
	$(GO) test -race -count=1 -p 1 -timeout 30m ./...
	$(MAKE) --no-print-directory deploy-test
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZTIME)

# deploy/ is a module of its own, so that kustomize and the Kubernetes types
# stay out of the agent's. It replaces github.com/kvhygiene/kvh with this
# tree: -mod=mod lets a dependency added to the root go.mod enter its go.sum
# instead of failing the build. Its tests run make build interpose.
.PHONY: deploy-test
deploy-test: ## render the DaemonSet's overlays (deploy/daemonset) and check them and Dockerfile.cuda
	cd deploy && $(GO) vet -mod=mod ./... && $(GO) test -mod=mod -count=1 ./...

# One go test run with -coverpkg (unit tests count every kvh package they
# link) while the end-to-end tests run a kvh-agent built with -cover, and the
# libkvh.so tests run its gcov twin: scripts/cover.sh says how. Fails when a
# test fails.
cover: $(BUILD)/gcov/libkvh.so ## every test once with coverage: one table per package (unit and end-to-end merged) and libkvh.so's lines, in build/cover
	GO=$(GO) bash scripts/cover.sh

test-short: ## quick tests (no crash loop, no fuzzing)
	$(GO) test -short -count=1 ./...

fuzz: ## run each fuzz target for FUZZTIME (default 10s); scripts/fuzz.sh
	@GO=$(GO) FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

bench: interpose $(BUILD)/lib/libkvh-base.so fakecuda ## benchmarks, reported as throughput and ratios against references measured in the same run; summary in build/bench.md
	@mkdir -p $(BUILD)
	@# one producer waits a whole flush per record: fewer records, or this line alone takes minutes on a busy disk
	$(GO) test -run '^$$' -bench 'AppendDurable/producers=1/' -benchtime 5000x ./forensic/ | tee $(BUILD)/bench-forensic.txt
	$(GO) test -run '^$$' -bench 'AppendDurable/producers=(64|256)/' -benchtime 100000x ./forensic/ | tee -a $(BUILD)/bench-forensic.txt
	$(GO) test -run '^$$' -bench 'Verify$$' -benchtime 3x -cpu 1,2 ./forensic/ | tee -a $(BUILD)/bench-forensic.txt
	$(GO) test -run '^$$' -bench VerifySeed -benchtime 3x -cpu 1,2 ./forensic/ | tee -a $(BUILD)/bench-forensic.txt
	$(GO) test -run '^$$' -bench Report -benchtime 3x ./report/ | tee $(BUILD)/bench-report.txt
	$(GO) test -run '^$$' -bench Zeroize -benchtime 2s ./zeroize/ | tee $(BUILD)/bench-zeroize.txt
	$(GO) test -run '^$$' -bench LifecycleDurable -benchtime 200000x ./tracer/ | tee $(BUILD)/bench-tracer.txt
	$(GO) test -run '^$$' -bench RSSAfterLifecycles -benchtime 1000000x ./tracer/ | tee -a $(BUILD)/bench-tracer.txt
	$(GO) test -run '^$$' -bench Interposer -benchtime 5x ./internal/libkvhtest/ | tee $(BUILD)/bench-interposer.txt
	$(GO) test -run '^$$' -bench Agent -benchtime 1x ./cmd/kvh-agent/ | tee $(BUILD)/bench-agent.txt
	$(GO) test -run '^$$' -bench ConnMemory -benchtime 1x ./ingest/ | tee $(BUILD)/bench-ingest.txt
	$(GO) test -run '^$$' -bench Witness -benchtime 1x ./bpf/ | tee $(BUILD)/bench-witness.txt
	$(GO) test -run '^$$' -bench Ship -benchtime 3x ./ship/ | tee $(BUILD)/bench-ship.txt
	@# one page: each figure, its target, its reference in the same run, the ratio, a verdict
	$(GO) run ./internal/benchsum/cmd/benchsum -o $(BUILD)/bench.md -machine "$${BENCH_MACHINE:-$$(nproc)-core $$(systemd-detect-virt -q && echo VM || echo machine)}" $(BUILD)/bench-*.txt

lint: ## gofmt, go vet, staticcheck
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$'))" || (gofmt -l . ; exit 1)
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

demo: build interpose fakecuda ## run kvh end to end on the fake driver: leak without kvh, zeros with it, a verified trail
	@DEMO_DIR=$${DEMO_DIR:-./var/demo} bash scripts/demo.sh

# containerd v2.4.2, its runc shim and ctr, and crictl v1.37.0 are built once
# from the Go module proxy into the Go build cache (scripts/build-containerd.sh,
# about 4 minutes cold on 2 cores, seconds after); runc, busybox-static and
# umoci come from Debian.
.PHONY: e2e
e2e: build interpose fakecuda ## end to end on a real containerd with NRI (root): unmodified pods of two tenants injected with libkvh, a verified trail
	$(GO) test -count=1 -tags e2e -timeout 20m -v ./e2e/

.PHONY: deps
deps: ## install what the tests need when missing: clang, libbpf, sanitizers, chromium, NVIDIA's real libraries (root); versitygw from the Go module proxy
	GO=$(GO) bash scripts/install-test-deps.sh

# NVIDIA's real driver, runtime and toolkit, without a GPU: the tests in
# internal/realcudatest and the witness's tests hold kvh to them, and fail
# (naming this target) when they are missing.
.PHONY: real-cuda
real-cuda: ## install NVIDIA's real libcuda, libcudart 11.8, nvcc and ptxas from Debian non-free (root; no GPU needed)
	bash scripts/install-real-cuda.sh

.PHONY: ptx-check
ptx-check: ## assemble libkvh's embedded verify kernel with ptxas for sm_70, sm_80 and sm_90; fail on any warning (make real-cuda first)
	$(GO) test -count=1 -run '^TestVerifyKernelAssembles$$' ./internal/realcudatest/

# NVCC_CCBIN (default clang-14 on Debian) and NVCCFLAGS pick nvcc's host
# compiler and flags; scripts/gpu-check.sh says what it checks.
gpu-check: ## on a machine with an NVIDIA GPU and nvcc: libkvh against the real driver (build/gpu-check.txt; exits 2 when it built but found no device)
	bash scripts/gpu-check.sh

clean: ## remove build outputs
	rm -rf $(BUILD)
