# Run `make` (or `make help`) for the list of targets.
#
# Recipes run in bash with errexit/pipefail so a failure in the middle of a
# pipeline or command substitution fails the target.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

GO ?= go
BIN := .run/bin/cacheside
# Newest staticcheck release at the time of writing; supports Go 1.26.
# `go run pkg@version` builds it into the Go cache: nothing to install.
STATICCHECK_VERSION := v0.8.2
# Extra arguments for the scripts, e.g. make test ARGS='-run TestCache -v'
ARGS ?=

.PHONY: help run test soak chart-test ci-check kind-up kind-down lint build tidy clean loadtest bench

help: ## Show this help
	@echo 'Usage: make <target> [ARGS=...]'
	@echo
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z0-9_-]+:.*## / { printf "  %-10s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

run: ## Run everything locally: dev Postgres + Redis, migrate, seed, serve
	bash hack/run.sh

test: ## Every test: Go (-race) against throwaway Postgres, Redis and Jaeger, short checked soaks, then chart, image, workflow, Tiltfile and k8s/ checks
	bash hack/test.sh $(ARGS)
	cd hack/soak && GOWORK=off $(GO) test -count=1 -timeout 20m ./...
	bash hack/chart-test.sh
	bash hack/ci-check.sh

soak: ## The checked soak under faults: two services, chaos, porcupine (ARGS e.g. -d 10m -near-cache -seed N)
	cd hack/soak && GOWORK=off $(GO) run . $(ARGS)

chart-test: ## Helm chart and Dockerfile checks, no cluster or Docker needed (ARGS go to go test)
	bash hack/chart-test.sh $(ARGS)

ci-check: ## Workflows (actionlint), scripts (shellcheck), Tiltfile, k8s/ manifests and versions; no cluster needed
	bash hack/ci-check.sh

kind-up: ## Local kind cluster and registry for Tilt (needs Docker)
	bash hack/kind-up.sh

kind-down: ## Delete the kind cluster and its registry
	bash hack/kind-down.sh

lint: ## gofmt check, go vet, staticcheck
	@echo '==> gofmt -l'
	@# Every Go file in the tree (also nested modules), minus local state.
	@unformatted=$$(find . \( -path ./.git -o -path ./.run -o -path ./build -o -name vendor -o -name testdata \) -prune \
		-o -type f -name '*.go' -print0 | xargs -0 -r gofmt -l); \
	if [[ -n $$unformatted ]]; then \
		echo 'These files need gofmt -w:'; echo "$$unformatted"; exit 1; \
	fi
	@# Both fail on a module without packages (yet); -e still lists broken ones.
	@if [[ -z $$($(GO) list -e ./... 2>/dev/null) ]]; then echo 'no Go packages yet: skipping go vet and staticcheck'; exit 0; fi; \
	echo '==> go vet ./...'; \
	$(GO) vet ./...; \
	echo '==> staticcheck@$(STATICCHECK_VERSION) ./...'; \
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...; \
	echo '==> staticcheck charts/tests hack/tools hack/tiltcheck hack/soak'; \
	(cd charts/tests && $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...); \
	(cd hack/tools && $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./k8sjsonschema); \
	(cd hack/tiltcheck && $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...); \
	(cd hack/soak && $(GO) vet ./... && $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...)
	@echo '==> shellcheck hack/*.sh hack/lib/*.sh'
	@shellcheck -x hack/*.sh hack/lib/*.sh

build: ## Build the service binary into .run/bin/cacheside
	$(GO) build -o $(BIN) ./app

tidy: ## go mod tidy
	$(GO) mod tidy

clean: ## Stop local dev/test servers and delete .run (dev data included)
	@# Deleting the data of a running server would leave it running blind.
	@. hack/lib/local.sh; \
	for d in .run/*/; do local::redis_stop "$${d}redis"; local::pg_destroy "$${d}pg"; done
	rm -rf .run

loadtest: ## Benchmark report: ceiling, /sample, /cache per tier -> hack/loadtest/report/ (ARGS go to the generator, e.g. -help)
	cd hack/loadtest && GOWORK=off $(GO) run . $(ARGS)

bench: ## Go benchmarks of the hot paths (hack/test.sh provides Postgres + Redis)
	GO_TEST_FLAGS=-count=1 bash hack/test.sh -run '^$$' -bench . -benchmem $(ARGS)
