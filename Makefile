# vagent. "make test" is what CI runs: it installs the Debian packages the
# tests need (scripts/test-deps.sh, root, only what is missing), then lint,
# unit tests, the end-to-end suite, which boots throwaway systemd instances
# and so needs root, and the package install test, which installs the .deb
# into a clean Debian booted with systemd-nspawn (root too).

GO      ?= go
GOFMT   ?= gofmt
BIN     ?= bin
E2E_DIR ?= .e2e
E2E_LOG ?= $(E2E_DIR)/go-test.log
E2E_TIMEOUT ?= 20m

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

GO_FILES = $(shell find . -name '*.go' -not -path './.git/*' -not -path '*/testdata/*' -not -path './$(E2E_DIR)/*')

.PHONY: all build test test-deps unit e2e lint vet fmt-check vulncheck bench demo demo-keep docs clean

all: build

## build: compile the shipped commands into $(BIN)/ (cmd/mandoc-gen is a build tool packaging runs)
build:
	mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/vagentd ./cmd/vagentctl ./cmd/vllm-sim

## test: install what the tests need, then lint, the dependency check, unit tests, the e2e suite, the package install test and lintian (root); fails if e2e skipped
# The packages come first, before anything that needs them, even under -j.
test: test-deps
	$(MAKE) --no-print-directory lint vulncheck unit e2e install-test lintian

## test-deps: install the Debian packages the tests need, only those missing (root)
test-deps:
	scripts/test-deps.sh

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

## vulncheck: govulncheck offline against a database built from golang.org/x/vulndb; fails on a vulnerable module (standard-library findings are only reported)
vulncheck:
	GO=$(GO) scripts/vulncheck.sh

## bench: run the benchmarks present (no tests)
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## demo: vagentd and the shipped agents on vllm-sim in a throwaway systemd, three streamed answers (root)
# make demo DEMO_ARGS=-keep (or make demo-keep) leaves it serving on 127.0.0.1:8080 until Ctrl-C.
DEMO_ARGS ?=
demo:
	scripts/test-deps.sh demo
	GO=$(GO) scripts/demo.sh $(DEMO_ARGS)

demo-keep:
	scripts/test-deps.sh demo
	GO=$(GO) scripts/demo.sh -keep $(DEMO_ARGS)

## docs: regenerate docs/configuration.md from the config package
docs:
	VAGENT_UPDATE_DOCS=1 $(GO) test ./config -run TestConfigurationReferenceIsCurrent

clean:
	rm -rf $(BIN) dist $(E2E_DIR)

# ---- Packages ---------------------------------------------------------------
# make deb rpm builds both into $(DIST)/ from one staging directory
# (packaging/stage.sh: binaries, the template rendered from the packaged
# configuration, man pages and completions generated from the CLI); nfpm
# runs pinned through the Go module proxy, without touching go.mod.

VERSION     ?= 0.1.0
PKG_RELEASE ?= 1
DIST        ?= dist
# nfpm.yaml reads the staged files from here.
PKG_STAGE   := dist/stage
NFPM        ?= $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
PKG_ARCH    ?= $(shell $(GO) env GOARCH)
RPM_ARCH    := $(or $(if $(filter amd64,$(PKG_ARCH)),x86_64),$(if $(filter arm64,$(PKG_ARCH)),aarch64),$(PKG_ARCH))
DEB         := $(DIST)/vagent_$(VERSION)-$(PKG_RELEASE)_$(PKG_ARCH).deb
RPM         := $(DIST)/vagent-$(VERSION)-$(PKG_RELEASE).$(RPM_ARCH).rpm
NFPM_ENV     = VAGENT_VERSION=$(VERSION) VAGENT_RELEASE=$(PKG_RELEASE) GOARCH=$(PKG_ARCH)

.PHONY: pkg-stage deb rpm lintian security pkg-compare install-test

pkg-stage:
	GO=$(GO) packaging/stage.sh $(PKG_STAGE) $(VERSION) $(PKG_RELEASE)

## deb: build the Debian package into $(DIST)/
deb: pkg-stage
	mkdir -p $(DIST)
	$(NFPM_ENV) $(NFPM) pkg --packager deb --config nfpm.yaml --target $(DEB)

## rpm: build the RPM package into $(DIST)/
rpm: pkg-stage
	mkdir -p $(DIST)
	$(NFPM_ENV) $(NFPM) pkg --packager rpm --config nfpm.yaml --target $(RPM)

## lintian: Debian's checker on the .deb; any error or warning fails
lintian: deb
	lintian --fail-on error,warning --display-info $(DEB)

## security: systemd-analyze security of the packaged units (vagent@dev <= 2.5, vagentd <= 1.7)
security: deb
	packaging/security.sh $(DEB)

## pkg-compare: print both packages' files and scripts; fail if the file lists differ
pkg-compare: deb rpm
	packaging/compare.sh $(DEB) $(RPM)

## install-test: install the .deb into a clean Debian root, boot it, use it, upgrade while clients stream (0 refused, 0 cut), purge (root)
install-test:
	GO=$(GO) MAKE=$(MAKE) VERSION=$(VERSION) PKG_RELEASE=$(PKG_RELEASE) packaging/test/install-test.sh
