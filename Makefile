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
# How long each step of a target took, after it (bash's time keyword).
export TIMEFORMAT := <== that step took %1lR
# Newest staticcheck release at the time of writing; supports Go 1.26.
# `go run pkg@version` builds it into the Go cache: nothing to install.
STATICCHECK_VERSION := v0.8.2
# Extra arguments for the scripts, e.g. make test ARGS='-run TestCache -v'
ARGS ?=
# Every Go module of the repository: the service's, and the tools' that keep their dependencies
# out of it. Not hack/cluster/kube and hack/cluster/coredns: they only assemble a main from
# Kubernetes' and CoreDNS' packages, and tidying and vetting them would download and type-check all
# of Kubernetes (~2700 packages) on every lint; hack/cluster/build.sh compiles them when the cluster
# is needed, and fails if their pins disagree with hack/versions.env.
GO_MODULES := . charts/tests hack/jaeger hack/loadtest hack/soak hack/tools hack/tools/kubescore hack/cluster/imagebuild hack/cluster/otelcol hack/cluster/netpol hack/cluster/e2e

.PHONY: help run test test-go soak chart-test ci-check e2e-cluster kind-up kind-down lint build tidy clean loadtest bench

help: ## Show this help
	@echo 'Usage: make <target> [ARGS=...]'
	@echo
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z0-9_-]+:.*## / { printf "  %-12s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

run: ## Run everything locally: dev Postgres + Redis + Jaeger, migrate, seed, serve (hack/dev)
	$(GO) run ./hack/dev run

test: test-go ## Every test: test-go, then the chart, image, workflow, kind and k8s/ checks (chart-test, ci-check)
	time bash hack/chart-test.sh
	time bash hack/ci-check.sh

# CI runs the two halves of make test as separate jobs.
test-go: ## The Go tests: the service's (-race) against throwaway Postgres, Redis and Jaeger, short checked soaks, the load test's (ARGS go to the first)
	time $(GO) run ./hack/dev test $(ARGS)
	time (cd hack/soak && GOWORK=off $(GO) test -count=1 -timeout 20m ./...)
	time (cd hack/loadtest && GOWORK=off $(GO) test -count=1 ./...)
	time (cd hack/cluster/imagebuild && GOWORK=off $(GO) test -count=1 ./...)

soak: ## The checked soak under faults: two services, chaos, porcupine (ARGS e.g. -d 10m -near-cache -seed N)
	cd hack/soak && GOWORK=off $(GO) run . $(ARGS)

chart-test: ## Helm chart and Dockerfile checks (helm lint, kubeconform, kube-score, charts/tests), no cluster or Docker needed (ARGS go to go test)
	bash hack/chart-test.sh $(ARGS)

ci-check: ## Workflows (actionlint), scripts (shellcheck), k8s/ manifests, the kind config and versions; no cluster needed
	bash hack/ci-check.sh

e2e-cluster: ## The chart on a local single-node Kubernetes (root): install, helm test, traces, faults, upgrade, uninstall; torn down after (hack/cluster/run.sh)
	bash hack/cluster/run.sh

kind-up: ## Local kind cluster and registry for Tilt (needs Docker)
	bash hack/kind-up.sh

kind-down: ## Delete the kind cluster and its registry
	bash hack/kind-down.sh

lint: ## gofmt, go mod tidy -diff in every module, go vet, staticcheck, shellcheck, govulncheck
	@echo '==> gofmt -l'
	@# Every Go file in the tree (also nested modules), minus local state.
	@unformatted=$$(find . \( -path ./.git -o -path ./.run -o -path ./build -o -name vendor -o -name testdata \) -prune \
		-o -type f -name '*.go' -print0 | xargs -0 -r gofmt -l); \
	if [[ -n $$unformatted ]]; then \
		echo 'These files need gofmt -w:'; echo "$$unformatted"; exit 1; \
	fi
	@echo '==> go mod tidy -diff (every module)'
	@for m in $(GO_MODULES); do \
		(cd $$m && GOWORK=off $(GO) mod tidy -diff) || { echo "$$m: go.mod or go.sum is not tidy: run go mod tidy there"; exit 1; }; \
	done
	@echo '==> go vet ./...'
	@$(GO) vet ./...
	@echo '==> staticcheck@$(STATICCHECK_VERSION) ./...'
	@$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	@echo '==> go vet and staticcheck in the tool modules'
	@(cd charts/tests && $(GO) vet ./... && $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...)
	@(cd hack/tools && $(GO) vet ./... && $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...)
	@for m in hack/soak hack/loadtest hack/cluster/imagebuild hack/cluster/otelcol hack/cluster/e2e; do \
		(cd $$m && GOWORK=off $(GO) vet ./... && GOWORK=off $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...) || exit 1; \
	done
	@echo '==> shellcheck hack/*.sh hack/cluster/'
	@shellcheck -x hack/*.sh hack/cluster/*.sh
	@shellcheck -s sh hack/cluster/images/*/*.sh
	@echo '==> govulncheck ./... (fails on a reachable vulnerability; see hack/vulncheck.sh)'
	@bash hack/vulncheck.sh

build: ## Build the service binary into .run/bin/cacheside
	$(GO) build -o $(BIN) ./app

tidy: ## go mod tidy
	$(GO) mod tidy

clean: ## Stop every server under .run (dev, test, load test, soak) and delete .run (dev data included)
	$(GO) run ./hack/dev clean

loadtest: ## Benchmark report: ceiling, /sample, /cache per tier -> hack/loadtest/report/ (ARGS go to the generator, e.g. -help)
	cd hack/loadtest && GOWORK=off $(GO) run . $(ARGS)

bench: ## Go benchmarks of the hot paths (hack/dev provides Postgres + Redis)
	GO_TEST_FLAGS=-count=1 $(GO) run ./hack/dev test -run '^$$' -bench . -benchmem $(ARGS)
