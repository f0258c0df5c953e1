#!/usr/bin/env bash
# hack/kind-down.sh: delete what hack/kind-up.sh created: the kind cluster (its nodes, volumes and kubeconfig
# entry) and the local registry container (with the images pushed to it). Safe to run when either is gone.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/versions.env
source "$root/hack/versions.env"

log() { printf '==> %s\n' "$*" >&2; }

command -v docker >/dev/null 2>&1 || {
	echo "kind-down: docker is not installed" >&2
	exit 1
}

(cd "$root/hack/tools" && GOWORK=off go build -o "$root/.run/bin/" sigs.k8s.io/kind)
kind=$root/.run/bin/kind

clusters=$("$kind" get clusters 2>/dev/null || true)
if grep -qx "$KIND_CLUSTER_NAME" <<<"$clusters"; then
	log "deleting cluster $KIND_CLUSTER_NAME"
	"$kind" delete cluster --name "$KIND_CLUSTER_NAME"
else
	log "no cluster $KIND_CLUSTER_NAME"
fi

if docker inspect "$REGISTRY_NAME" >/dev/null 2>&1; then
	log "removing registry container $REGISTRY_NAME"
	docker rm -f "$REGISTRY_NAME" >/dev/null
else
	log "no registry container $REGISTRY_NAME"
fi
