# vagent. "make test" is what CI runs: lint, unit tests and the end-to-end
# suite, which boots throwaway systemd instances and so needs root.

GO      ?= go
GOFMT   ?= gofmt
BIN     ?= bin
E2E_DIR ?= .e2e
E2E_LOG ?= $(E2E_DIR)/go-test.log
E2E_TIMEOUT ?= 20m

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

GO_FILES = $(shell find . -name '*.go' -not -path './.git/*' -not -path '*/testdata/*' -not -path './$(E2E_DIR)/*')

.PHONY: all build test unit e2e lint vet fmt-check bench demo docs clean

all: build

## build: compile every command into $(BIN)/
build:
	mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

## test: lint, unit tests, then the e2e suite (root); fails if e2e skipped
test: lint unit e2e

## unit: tests of every package but the e2e suite (no root needed)
unit:
	$(GO) test $$($(GO) list ./... | grep -v '/e2e$$' | grep -v '/e2e/')

## e2e: the end-to-end suite against real systemd sandboxes (root)
e2e:
	mkdir -p $(E2E_DIR)
	$(GO) test -count=1 -v -timeout $(E2E_TIMEOUT) ./e2e/... 2>&1 | tee $(E2E_LOG)
	scripts/check-e2e.sh $(E2E_LOG)

## lint: go vet, and gofmt must have nothing to say
lint: vet fmt-check

vet:
	$(GO) vet ./...

fmt-check:
	@out="$$($(GOFMT) -l $(GO_FILES))"; \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

## bench: run the benchmarks present (no tests)
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## demo: boot a throwaway systemd, run the shipped configs on vllm-sim (root)
demo:
	GO=$(GO) scripts/demo.sh

## docs: regenerate docs/configuration.md from the config package
docs:
	VAGENT_UPDATE_DOCS=1 $(GO) test ./config -run TestConfigurationReferenceIsCurrent

clean:
	rm -rf $(BIN) dist $(E2E_DIR)
