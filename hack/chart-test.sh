#!/usr/bin/env bash
# hack/chart-test.sh: check the Helm chart (charts/cacheside) and the Dockerfile, with no cluster, no
# Docker and nothing but Go and the Go module proxy.
#
#   1. build helm, kubeconform, helm-docs and k8sjsonschema from hack/tools, and kube-score from
#      hack/tools/kubescore, into .run/bin (versions pinned in their go.mod; go build relinks only what changed);
#   2. write kubeconform's JSON schemas offline into .run/kubeconform/: Kubernetes' from the OpenAPI spec
#      in the k8s.io/kubernetes module matching hack/tools' k8s.io/api (v0.X.Y is Kubernetes v1.X.Y), the
#      ServiceMonitor's from the prometheus-operator module's CRD;
#   3. helm lint --strict, and helm template | kubeconform -strict, for the defaults and each
#      ci/*-values.yaml; and kube-score on each (rendered as an upgrade, so the pre-upgrade migration Job is
#      scored too): it fails on a CRITICAL that is neither fixed nor ignored on its object with a reason (the
#      kube-score/ignore annotation); helm dependency build on a copy (offline, lock in sync);
#   4. the chart READMEs are what helm-docs makes of values.yaml (run `hack/chart-test.sh docs` to
#      regenerate them);
#   5. go vet and go test in charts/tests: the chart rendered with the Helm SDK and decoded strictly,
#      its contract with the service, and the Dockerfile's build command.
#
# Usage: hack/chart-test.sh [docs]          (docs: regenerate the READMEs and stop)
#        hack/chart-test.sh [go test flags]  (passed to go test, e.g. -run TestSchema -v)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# Each nested module builds on its own go.mod, even if a go.work appears.
export GOWORK=off
bin=$root/.run/bin
chart=charts/cacheside
# The ServiceMonitor CRD's source. The newest prometheus-operator release the Go module proxy serves;
# its monitoring/v1 API is stable, and charts/tests decodes ServiceMonitors with the operator's own types.
prometheus_operator=v0.85.0

log() { printf '==> %s\n' "$*" >&2; }

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

# module_dir prints where the Go module cache holds module@version, downloading it if needed.
module_dir() {
	local dir
	dir=$(cd hack/tools && go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	if [[ -z $dir ]]; then
		log "could not download $1"
		return 1
	fi
	printf '%s\n' "$dir"
}

# charts/tests reaches the service's go.mod through its replace directive: a dependency the service adds
# can change what charts/tests needs, and a stale go.sum would fail below with a less helpful message.
for module in hack/tools hack/tools/kubescore charts/tests; do
	if ! (cd "$module" && go mod tidy -diff >"$tmp/tidy.diff" 2>&1); then
		cat "$tmp/tidy.diff" >&2
		log "$module/go.mod or go.sum is out of date: run (cd $module && go mod tidy)"
		exit 1
	fi
done

log "building tools from hack/tools into .run/bin"
mkdir -p "$bin"
(cd hack/tools && go build -o "$bin/" tool ./k8sjsonschema)
(cd hack/tools/kubescore && go build -o "$bin/" tool)

if [[ ${1:-} == docs ]]; then
	log "regenerating the chart READMEs with helm-docs"
	"$bin/helm-docs" --chart-search-root "$chart" --skip-version-footer --log-level warning
	exit 0
fi

k8s_api=$(cd hack/tools && go list -m -f '{{.Version}}' k8s.io/api)
kube_version=v1${k8s_api#v0}
schemas=$root/.run/kubeconform/$kube_version-prometheus-operator-$prometheus_operator
if [[ ! -s $schemas/deployment-apps-v1.json || $bin/k8sjsonschema -nt $schemas/deployment-apps-v1.json ]]; then
	log "writing Kubernetes $kube_version JSON schemas into ${schemas#"$root"/}"
	kubernetes=$(module_dir "k8s.io/kubernetes@$kube_version")
	operator=$(module_dir "github.com/prometheus-operator/prometheus-operator@$prometheus_operator")
	rm -rf "$schemas"
	"$bin/k8sjsonschema" -swagger "$kubernetes/api/openapi-spec/swagger.json" \
		-crd "$operator/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
		-out "$schemas"
fi

# kube_score NAME HELM_ARGS...: kube-score on the chart rendered as an upgrade (the pre-upgrade migration Job
# included), printing what is not OK; fails on any CRITICAL. Each one is fixed in the chart, or ignored on its
# object by a kube-score/ignore annotation next to a comment saying why. One check is off for the whole run:
# --ignore-container-cpu-limit. A CPU limit is a CFS quota that throttles a container even on an idle node (Postgres
# mid-query, Redis's single thread, which the cache's 250 ms budget per call turns into bypasses); requests already
# share the CPU under contention. Only the app keeps a limit, because GOMAXPROCS follows it. Ignoring
# container-resources on the objects instead would also silence missing memory and ephemeral-storage limits.
kube_score() {
	local name=$1
	shift
	log "$name: kube-score"
	"$bin/helm" template demo "$chart" --namespace demo --is-upgrade "$@" \
		--set postgresql.auth.password=offline-render,redis.auth.password=offline-render \
		--set 'auth.tokens={offline-render-api-token}' >"$tmp/upgrade.yaml"
	local status=0
	"$bin/kube-score" score --output-format ci --kubernetes-version "${kube_version%.*}" \
		--ignore-container-cpu-limit "$tmp/upgrade.yaml" >"$tmp/kube-score.txt" || status=$?
	grep -E '^\[(CRITICAL|WARNING)\]' "$tmp/kube-score.txt" || true
	if ((status != 0)); then
		log "$name: kube-score found a CRITICAL above (exit $status): fix it, or ignore it on the object with kube-score/ignore and a comment saying why"
		return 1
	fi
}

log "helm lint --strict"
"$bin/helm" lint --strict --quiet --with-subcharts "$chart"

values_files=("$chart"/ci/*-values.yaml)
for values in "" "${values_files[@]}"; do
	args=(--kube-version "$kube_version")
	name=defaults
	if [[ -n $values ]]; then
		args+=(--values "$values")
		name=${values#"$chart"/}
	fi
	log "$name: helm lint --strict, helm template | kubeconform -strict"
	"$bin/helm" lint --strict --quiet "$chart" "${args[@]}"
	# helm template cannot look up the bundled services' Secrets or the chart's, so the chart stops unless their
	# passwords and the API tokens are given (the chart README, Installing with Argo CD and Flux); helm lint checks
	# the templates without them.
	"$bin/helm" template demo "$chart" --namespace demo "${args[@]}" \
		--set postgresql.auth.password=offline-render,redis.auth.password=offline-render \
		--set 'auth.tokens={offline-render-api-token}' >"$tmp/manifest.yaml"
	"$bin/kubeconform" -strict -summary \
		-kubernetes-version "${kube_version#v}" \
		-schema-location "$schemas/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
		"$tmp/manifest.yaml"
	kube_score "$name" "${args[@]}"
done

log "helm dependency build, offline, on a copy"
cp -R "$chart" "$tmp/chart"
"$bin/helm" dependency build "$tmp/chart" >/dev/null

log "chart READMEs are up to date with values.yaml (helm-docs)"
"$bin/helm-docs" --chart-search-root "$tmp/chart" --skip-version-footer --log-level warning
stale=0
while IFS= read -r readme; do
	rel=${readme#"$tmp/chart/"}
	if ! diff -u "$chart/$rel" "$readme" >"$tmp/readme.diff"; then
		cat "$tmp/readme.diff" >&2
		stale=1
	fi
done < <(find "$tmp/chart" -name README.md)
if ((stale)); then
	log "the READMEs above are stale: run hack/chart-test.sh docs"
	exit 1
fi

log "go vet, go test in charts/tests"
cd charts/tests
go vet ./...
# -count=1: go test caches results by the files inside this module only; the chart and the Dockerfile
# live outside it, and an edit there must re-run the tests.
go test -count=1 "$@" ./...
