# Entry points for building, testing and running understudy. Run `make` for the list.
BUILD_DIR  ?= build
JOBS       ?= 2
GENERATOR  ?= Ninja
CMAKE      ?= cmake
CTEST      ?= ctest
CMAKE_ARGS ?=

CLI  := $(BUILD_DIR)/cli/understudy
# The main job: a 4-node cluster on localhost training the digits MLP while an
# actor crashes (the job's faults), a node is SIGKILLed and another frozen.
DEMO_CONFIG ?= examples/cluster/local.toml
DEMO_CHAOS  ?= --kill n1@1000 --freeze n3@2000:3s

.DEFAULT_GOAL := help
.PHONY: help deps test-deps configure build test demo bench clean

help:
	@echo "understudy — make targets:"
	@echo "  make demo       install dependencies, build, run the cluster demo (examples/cluster/local.toml)"
	@echo "  make test       install dependencies, build, run the whole test suite (ctest)"
	@echo "  make bench      install dependencies, build in Release, run every benchmark"
	@echo "  make deps       install the Debian packages understudy needs (scripts/install-deps.sh)"
	@echo "  make test-deps  the same and what only the tests use (Prometheus, Slurm, munge, Chromium)"
	@echo "  make configure  configure $(BUILD_DIR)/ with CMake and $(GENERATOR) (only if not configured yet)"
	@echo "  make build      configure if needed, then build everything in $(BUILD_DIR)/"
	@echo "  make clean      remove $(BUILD_DIR)/"
	@echo "Variables: BUILD_DIR=$(BUILD_DIR) JOBS=$(JOBS) CMAKE_ARGS='$(CMAKE_ARGS)'"

deps:
	bash scripts/install-deps.sh

test-deps:
	bash scripts/install-deps.sh --test

# True (exit 0) when $(BUILD_DIR) holds a completed CMake configuration.
CONFIGURED = { [ -f "$(BUILD_DIR)/CMakeCache.txt" ] && [ -f "$(BUILD_DIR)/cmake_install.cmake" ]; }

configure: deps
	@if ! $(CONFIGURED); then \
	  echo "$(CMAKE) -S . -B $(BUILD_DIR) -G $(GENERATOR) $(CMAKE_ARGS)"; \
	  $(CMAKE) -S . -B "$(BUILD_DIR)" -G "$(GENERATOR)" $(CMAKE_ARGS); \
	fi

build: configure
	$(CMAKE) --build "$(BUILD_DIR)" -j $(JOBS)

test: build test-deps
	$(CTEST) --test-dir "$(BUILD_DIR)" --output-on-failure -j $(JOBS)

demo: build
	@if [ ! -x "$(CLI)" ]; then \
	  echo "make demo: $(CLI) was not built" >&2; \
	  exit 1; \
	fi
	rm -rf .understudy/local
	"$(CLI)" launch $(DEMO_CONFIG) $(DEMO_CHAOS)

bench: deps
	@set --; if ! $(CONFIGURED); then set -- -G "$(GENERATOR)"; fi; \
	echo "$(CMAKE) -S . -B $(BUILD_DIR) $$* $(CMAKE_ARGS) -DCMAKE_BUILD_TYPE=Release -DUNDERSTUDY_ENABLE_BENCH=ON"; \
	$(CMAKE) -S . -B "$(BUILD_DIR)" "$$@" $(CMAKE_ARGS) -DCMAKE_BUILD_TYPE=Release -DUNDERSTUDY_ENABLE_BENCH=ON
	$(CMAKE) --build "$(BUILD_DIR)" -j $(JOBS)
	@found=0; failed=""; \
	for b in "$(BUILD_DIR)"/bench/bench_*; do \
	  [ -f "$$b" ] && [ -x "$$b" ] || continue; \
	  found=1; \
	  echo "== $$b"; \
	  "$$b" || failed="$$failed $$b"; \
	done; \
	if [ $$found -eq 0 ]; then echo "make bench: no benchmarks under bench/ yet"; fi; \
	if [ -n "$$failed" ]; then echo "make bench: failed:$$failed" >&2; exit 1; fi

clean:
	rm -rf "$(BUILD_DIR)"
