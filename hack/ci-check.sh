#!/usr/bin/env bash
# hack/ci-check.sh: check what the Kubernetes dev loop and CI are made of, with no cluster, no Docker, no Tilt
# and nothing but Go, the Go module proxy and (for shellcheck) Debian's packages:
#
#   1. shellcheck on hack/*.sh, hack/cluster/*.sh and .ci/run (installed with apt-get when missing and root);
#   2. actionlint on .github/workflows (it runs shellcheck on their scripts too), every action pinned by a
#      full commit SHA with its version in a comment, and Dependabot's directories existing; then, on
#      actionlint's syntax tree (go test in hack/tools/workflows), that release.yml publishes only after calling
#      ci.yml and that no two CI jobs save the same cache, and that Dependabot proposes no Postgres or Redis
#      major and does not look up the image built here;
#   3. k8s/: `kustomize build k8s/observability`, k8s/namespace.yaml, and the chart rendered with
#      k8s/values/kind.yaml (CI's end-to-end install) and with tilt.yaml on top (the Tiltfile's), all through
#      kubeconform -strict against Kubernetes' own schemas, generated offline; helm lint --strict on both;
#   4. the Jaeger and OpenTelemetry Collector configs validated by the Jaeger that hack/jaeger.sh builds (a
#      collector distribution of the same release as the images), and the images kept in step with it;
#   5. k8s/kind/cluster.yaml decoded strictly with the types of the kind that hack/kind-up.sh builds (go test in
#      hack/tools/kindconfig);
#   6. hack/versions.env against hack/tools/go.mod: the kind node image is the pinned kind's default, kubectl
#      within one minor version of it.
#
# The Tiltfile itself is tested by running it: CI's `tilt ci` job on kind. What it renders, the chart with
# k8s/values/kind.yaml and tilt.yaml, is checked in 3 and in charts/tests (hack/chart-test.sh).
#
# Tools are built from hack/tools into .run/bin like hack/chart-test.sh does; on a warm Go cache this takes
# seconds. Every check runs; the script fails at the end if any did.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# Each nested module builds on its own go.mod, even if a go.work appears.
export GOWORK=off
bin=$root/.run/bin
# shellcheck source=hack/versions.env
source hack/versions.env

log() { printf '==> %s\n' "$*" >&2; }

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

failed=()
# check NAME COMMAND...: run a check, remember its failure and go on.
check() {
	local name=$1
	shift
	log "$name"
	if ! "$@"; then
		failed+=("$name")
		printf 'FAILED: %s\n' "$name" >&2
	fi
}

log "building actionlint, kubeconform, kustomize, helm and k8sjsonschema into .run/bin"
mkdir -p "$bin"
(cd hack/tools && go build -o "$bin/" \
	github.com/rhysd/actionlint/cmd/actionlint \
	github.com/yannh/kubeconform/cmd/kubeconform \
	sigs.k8s.io/kustomize/kustomize/v5 \
	helm.sh/helm/v4/cmd/helm \
	./k8sjsonschema)

# --- 1. shellcheck ---------------------------------------------------------------------------------------------

ensure_shellcheck() {
	command -v shellcheck >/dev/null 2>&1 && return 0
	# As hack/servers installs PostgreSQL and Redis: as root, or with passwordless sudo.
	local sudo=()
	((EUID == 0)) || sudo=(sudo -n)
	if command -v apt-get >/dev/null 2>&1 && { ((EUID == 0)) || sudo -n true 2>/dev/null; }; then
		log "installing shellcheck (apt-get)"
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 </dev/null || return 1
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends shellcheck >&2 </dev/null || return 1
		return 0
	fi
	echo "shellcheck is missing: sudo apt-get install shellcheck (or your package manager's)" >&2
	return 1
}

run_shellcheck() {
	ensure_shellcheck || return 1
	shellcheck -x hack/*.sh hack/cluster/*.sh .ci/run
}
check "shellcheck hack/*.sh hack/cluster/*.sh .ci/run" run_shellcheck

# --- 2. workflows ----------------------------------------------------------------------------------------------

# Every `uses:` of a remote action names a 40-hex commit and says which release in a comment.
actions_pinned() {
	local bad
	bad=$(grep -nE '^\s*-?\s*uses:' .github/workflows/*.yml |
		grep -vE 'uses:\s*\./' |
		grep -vE 'uses:\s*[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}\s+#\s*v[0-9]+(\.[0-9]+){0,2}\s*$' || true)
	if [[ -n $bad ]]; then
		echo "actions not pinned by full commit SHA with a '# vX.Y.Z' comment:" >&2
		echo "$bad" >&2
		return 1
	fi
}

# Every directory Dependabot watches exists (and, for gomod, holds a go.mod).
dependabot_dirs() {
	local ecosystem="" dir ok=0 line
	while IFS= read -r line; do
		if [[ $line =~ package-ecosystem:\ *([a-z-]+) ]]; then
			ecosystem=${BASH_REMATCH[1]}
		elif [[ $line =~ ^\ *(directory:|-)\ *(/[^ #]*)\ *$ ]]; then
			dir=${BASH_REMATCH[2]#/}
			dir=${dir:-.}
			if [[ ! -d $dir ]] || { [[ $ecosystem == gomod ]] && [[ ! -f $dir/go.mod ]]; }; then
				echo ".github/dependabot.yml: $ecosystem directory /${dir#.} does not exist or has no go.mod" >&2
				ok=1
			fi
		fi
	done <.github/dependabot.yml
	# Every Go module of the repository is watched.
	while IFS= read -r mod; do
		dir=$(dirname "$mod")
		if ! grep -qE "^\s*(directory:|-)\s*/${dir#.}/?\s*$" .github/dependabot.yml; then
			echo ".github/dependabot.yml: module $dir is not watched" >&2
			ok=1
		fi
	done < <(find . -name go.mod -not -path './.run/*' -not -path './build/*' | sed 's|^\./||; s|^go.mod$|./go.mod|')
	return "$ok"
}
check "actionlint .github/workflows" "$bin/actionlint"
check "actions pinned by commit SHA" actions_pinned
check "dependabot directories" dependabot_dirs
check "release gated on CI, one cache per job, Dependabot's ignores (go test in hack/tools/workflows)" \
	bash -c 'cd hack/tools && go vet ./workflows && go test -count=1 ./workflows'

# --- 3. manifests ----------------------------------------------------------------------------------------------

k8s_api=$(cd hack/tools && go list -m -f '{{.Version}}' k8s.io/api)
kube_version=v1${k8s_api#v0}
schemas=$root/.run/kubeconform/$kube_version-core
if [[ ! -s $schemas/deployment-apps-v1.json || $bin/k8sjsonschema -nt $schemas/deployment-apps-v1.json ]]; then
	log "writing Kubernetes $kube_version JSON schemas into ${schemas#"$root"/}"
	kubernetes=$(cd hack/tools && go mod download -json "k8s.io/kubernetes@$kube_version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[[ -n $kubernetes ]] || {
		log "could not download k8s.io/kubernetes@$kube_version"
		exit 1
	}
	rm -rf "$schemas"
	"$bin/k8sjsonschema" -swagger "$kubernetes/api/openapi-spec/swagger.json" -out "$schemas" >/dev/null
fi
kubeconform() {
	"$bin/kubeconform" -strict -summary -kubernetes-version "${kube_version#v}" \
		-schema-location "$schemas/{{ .ResourceKind }}{{ .KindSuffix }}.json" "$@"
}

# The node image's Kubernetes (kindest/node:v1.37.0@sha256:… -> v1.37.0), which the Tiltfile renders for.
node_version=${KIND_NODE_IMAGE#*:}
node_version=${node_version%%@*}

observability() {
	"$bin/kustomize" build k8s/observability >"$tmp/observability.yaml" && kubeconform "$tmp/observability.yaml"
}
chart_on_kind() {
	local values=(--values k8s/values/kind.yaml)
	[[ ${1:-} == tilt ]] && values+=(--values k8s/values/tilt.yaml)
	"$bin/helm" lint --strict --quiet charts/cacheside --kube-version "$node_version" "${values[@]}" &&
		"$bin/helm" template cacheside charts/cacheside --namespace cacheside --kube-version "$node_version" "${values[@]}" \
			>"$tmp/chart-$1.yaml" &&
		kubeconform "$tmp/chart-$1.yaml"
}
check "kubeconform: kustomize build k8s/observability" observability
check "kubeconform: k8s/namespace.yaml" kubeconform k8s/namespace.yaml
check "helm lint, kubeconform: chart with k8s/values/kind.yaml" chart_on_kind kind
check "helm lint, kubeconform: chart with k8s/values/kind.yaml + tilt.yaml" chart_on_kind tilt

# --- 4. observability configs ----------------------------------------------------------------------------------

# The image tag of a container in a manifest (first match).
image_tag() { sed -n "s|^ *image: $1:\([^ @]*\).*|\1|p" "$2" | head -n 1; }

observability_configs() {
	local jaeger ok=0 f out v2 tag otelcol
	jaeger=${JAEGER_BIN:-$(bash hack/jaeger.sh build)}
	if [[ ! -x $jaeger ]]; then
		echo "no Jaeger binary (hack/jaeger.sh build failed?)" >&2
		return 1
	fi
	for f in k8s/observability/config/*.yaml; do
		if ! out=$("$jaeger" validate --config "$f" 2>&1); then
			printf '%s: %s\n' "$f" "$out" >&2
			ok=1
		fi
	done
	# Jaeger in the cluster = Jaeger of the tests and `make run`.
	v2=$("$jaeger" version 2>/dev/null | sed -n 's/.*"gitVersion":"v\([^"]*\)".*/\1/p')
	tag=$(image_tag jaegertracing/jaeger k8s/observability/jaeger.yaml)
	if [[ -z $v2 || $tag != "$v2" ]]; then
		echo "k8s/observability/jaeger.yaml runs jaegertracing/jaeger:$tag, hack/jaeger/go.mod pins Jaeger ${v2:-?}: keep them in step" >&2
		ok=1
	fi
	# The collector image is of the collector release that Jaeger is built on (the validation above used it).
	otelcol=$(cd hack/jaeger && go list -m -f '{{.Version}}' go.opentelemetry.io/collector/otelcol)
	tag=$(image_tag otel/opentelemetry-collector-contrib k8s/observability/otel-collector.yaml)
	if [[ -z $tag || $(cut -d. -f1,2 <<<"$tag") != "$(cut -d. -f1,2 <<<"${otelcol#v}")" ]]; then
		echo "k8s/observability/otel-collector.yaml runs collector $tag, Jaeger is built on collector $otelcol: keep the minor versions equal" >&2
		ok=1
	fi
	return "$ok"
}
check "Jaeger and collector configs (jaeger validate), image versions" observability_configs

# --- 5. kind cluster config -----------------------------------------------------------------------------------

check "kind cluster config (go test in hack/tools/kindconfig)" \
	bash -c 'cd hack/tools && go vet ./kindconfig && go test -count=1 ./kindconfig'

# --- 6. versions -----------------------------------------------------------------------------------------------

versions() {
	local kind_dir default ok=0 node_minor kubectl_minor
	kind_dir=$(cd hack/tools && go list -m -f '{{.Dir}}' sigs.k8s.io/kind)
	default=$(sed -n 's/^const Image = "\(.*\)"$/\1/p' "$kind_dir/pkg/apis/config/defaults/image.go")
	if [[ $KIND_NODE_IMAGE != "$default" ]]; then
		echo "hack/versions.env: KIND_NODE_IMAGE=$KIND_NODE_IMAGE, but the kind of hack/tools/go.mod defaults to $default: use that (and move KUBECTL_VERSION along)" >&2
		ok=1
	fi
	node_minor=$(cut -d. -f2 <<<"$node_version")
	kubectl_minor=$(cut -d. -f2 <<<"$KUBECTL_VERSION")
	if ((kubectl_minor < node_minor - 1 || kubectl_minor > node_minor + 1)); then
		echo "hack/versions.env: KUBECTL_VERSION=$KUBECTL_VERSION is more than one minor version from the node's $node_version" >&2
		ok=1
	fi
	return "$ok"
}
check "hack/versions.env against hack/tools/go.mod" versions

if ((${#failed[@]} > 0)); then
	printf '\nci-check: %d check(s) failed:\n' "${#failed[@]}" >&2
	printf '  - %s\n' "${failed[@]}" >&2
	exit 1
fi
log "ci-check: all checks passed"
