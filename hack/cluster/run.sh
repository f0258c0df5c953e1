#!/usr/bin/env bash
# hack/cluster/run.sh (make e2e-cluster): the chart on a real single-node Kubernetes on this machine, checked
# end to end, then torn down. Phases, each timed:
#
#   tools          helm and kustomize (hack/tools' pins) and the checks (hack/cluster/e2e) built into .run/bin
#   up             hack/cluster/up.sh: the cluster as local processes (Kubernetes, etcd, containerd, CoreDNS)
#   netpol         hack/cluster/netpol.sh start: NetworkPolicy enforcement (kube-network-policies), before any
#                  pod starts, so the chart's policies are enforced from its first pod on
#   images         hack/cluster/images.sh build + import: the service's image (tags e2e-1 and e2e-2) and the
#                  stand-ins for Postgres, Redis, curl, pause, Jaeger and the collector, into its containerd
#   observability  k8s/observability through the overlay hack/cluster/observability (local images), Ready
#   netpol-check   hack/cluster/netpol.sh check: policies of its own admit what they allow and drop the rest
#   checks         hack/cluster/e2e: helm install (values hack/cluster/values.yaml) and helm test, traces,
#                  faults, helm upgrade, helm uninstall (see hack/cluster/e2e/main.go)
#   down           hack/cluster/netpol.sh stop, then hack/cluster/down.sh, on EVERY exit once up.sh has
#                  started (success, failure, Ctrl-C):
#                  the host is left as it was found
#
# and a table of them all (phase or check, result, time) at the end. Everything the cluster sends stays on
# this machine (hack/cluster/up.sh drops what would leave it); the checks talk only to the cluster's Service
# and pod addresses and to port-forwards on loopback. Needs root (up.sh changes iptables, sysctls, mounts).
#
# Environment: CLUSTER_DIR (default .run/cluster; shared with up.sh and down.sh), E2E_ARGS (extra arguments
# of the checks, e.g. E2E_ARGS='-only install,uninstall'), KEEP_CLUSTER=1 (skip down.sh to look around
# after a failure; then run hack/cluster/down.sh yourself).

# The functions run through `phase` and the EXIT trap, which shellcheck 0.9 does not follow (SC2317).
# shellcheck disable=SC2317
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
# Each nested module builds on its own go.mod, even if a go.work appears.
export GOWORK=off
export CLUSTER_DIR=${CLUSTER_DIR:-$root/.run/cluster}
bin=$root/.run/bin
# The service's image tag the upgrade check moves to (hack/cluster/values.yaml installs e2e-1).
upgrade_tag=e2e-2

# Results, one "name<TAB>result<TAB>seconds" line each; the checks append theirs.
results=$(mktemp)
cluster_started=""
current=""

# phase NAME COMMAND...: run COMMAND as the phase NAME, timed; its row goes into the table. A failing
# phase ends the run (the EXIT trap tears down and prints the table). COMMAND runs where errexit does not
# apply (left of ||), so the functions below chain their steps with `|| return`.
phase() {
	local name=$1 start=$SECONDS rc=0
	shift
	current=$name
	printf '\n==> %s\n' "$name" >&2
	"$@" || rc=$?
	local took=$((SECONDS - start))
	if ((rc == 0)); then
		printf '%s\tPASS\t%d\n' "$name" "$took" >>"$results"
		printf '<== %s took %ds\n' "$name" "$took" >&2
	else
		printf '%s\tFAIL\t%d\n' "$name" "$took" >>"$results"
		printf '<== %s FAILED after %ds (exit %d)\n' "$name" "$took" "$rc" >&2
	fi
	current=""
	return "$rc"
}

finish() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ -n $current ]]; then # interrupted inside a phase
		printf '%s\tINTERRUPTED\t-\n' "$current" >>"$results"
	fi
	if [[ -n $cluster_started ]]; then
		if [[ ${KEEP_CLUSTER:-} == 1 ]]; then
			printf '\nKEEP_CLUSTER=1: the cluster stays up (%s); hack/cluster/down.sh tears it down.\n' "$CLUSTER_DIR" >&2
		else
			# The controller's queue rules go first: down.sh removes only what the cluster made.
			phase netpol-stop bash hack/cluster/netpol.sh stop || rc=1
			phase down bash hack/cluster/down.sh || rc=1
		fi
	fi
	printf '\n%-24s %-12s %s\n' 'phase or check' result time >&2
	while IFS=$'\t' read -r name result took; do
		[[ $took == - ]] || took=${took}s
		printf '%-24s %-12s %s\n' "$name" "$result" "$took" >&2
	done <"$results"
	rm -f "$results"
	exit "$rc"
}
trap finish EXIT
# A signal ends the run through the EXIT trap, which tears down.
trap 'exit 130' INT TERM

if [[ $(id -u) != 0 ]]; then
	echo "make e2e-cluster runs a cluster on this machine (iptables, sysctls, mounts): run it as root" >&2
	exit 1
fi

build_tools() {
	(cd hack/tools && go build -o "$bin/" helm.sh/helm/v4/cmd/helm sigs.k8s.io/kustomize/kustomize/v5) || return
	(cd hack/cluster/e2e && go build -o "$bin/cluster-e2e" .) || return
	bash hack/cluster/netpol.sh build
}
phase tools build_tools

# A cluster of this directory that is already up (or what is left of one: up.sh's record of the host) is
# someone's: neither reuse it nor tear it down.
if [[ -e $CLUSTER_DIR/env || -e $CLUSTER_DIR/host ]]; then
	echo "a cluster from $CLUSTER_DIR is up already (hack/cluster/down.sh tears it down); not touching it" >&2
	exit 1
fi
# From here on the cluster may exist, even half made: down.sh runs whatever happens.
cluster_started=1
phase up bash hack/cluster/up.sh
# KUBECONFIG, KUBECTL, CTR, CONTAINERD_ADDRESS, NODE_NAME (the contract with up.sh).
set -a
# shellcheck source=/dev/null
source "$CLUSTER_DIR/env"
set +a
phase netpol bash hack/cluster/netpol.sh start

# Every image (the service as e2e-1), then the service as e2e-2 for the upgrade check.
images() {
	bash hack/cluster/images.sh build || return
	bash hack/cluster/images.sh build "cacheside:$upgrade_tag" || return
	bash hack/cluster/images.sh import || return
	bash hack/cluster/images.sh import "cacheside:$upgrade_tag"
}
phase images images
phase netpol-check bash hack/cluster/netpol.sh check

observability() {
	"$bin/kustomize" build hack/cluster/observability | "$KUBECTL" apply -f - || return
	"$KUBECTL" -n observability rollout status deployment/jaeger deployment/otel-collector --timeout=180s
}
phase observability observability

# The checks append their own rows (check install, check traces, …); their failure fails the run.
read -ra e2e_args <<<"${E2E_ARGS:-}"
checks() {
	HELM=$bin/helm "$bin/cluster-e2e" -repo "$root" -values hack/cluster/values.yaml -summary "$results" \
		-upgrade-tag "$upgrade_tag" "${e2e_args[@]}"
}
# The checks' own rows go into the table; this phase's row would repeat their sum.
printf '\n==> checks\n' >&2
checks_start=$SECONDS
checks_rc=0
current=checks
checks || checks_rc=$?
current=""
printf '<== checks took %ds\n' $((SECONDS - checks_start)) >&2
exit "$checks_rc"
