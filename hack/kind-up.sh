#!/usr/bin/env bash
# hack/kind-up.sh: create the kind cluster for Tilt and CI, wired to a local image registry, or bring an
# existing one back in line (safe to run again). It follows kind's "Local Registry" guide:
#
#   1. a registry container (REGISTRY_IMAGE) published on 127.0.0.1:REGISTRY_PORT;
#   2. the cluster (k8s/kind/cluster.yaml: containerd reads registry settings from /etc/containerd/certs.d);
#   3. on every node, certs.d/localhost:REGISTRY_PORT/hosts.toml sending that name to the registry container,
#      so `localhost:5001/cacheside` means the same registry on your machine and on the nodes;
#   4. the registry container attached to the `kind` Docker network, where the nodes resolve its name;
#   5. the local-registry-hosting ConfigMap in kube-public (KEP-1755), which tells Tilt where to push.
#
# Names and versions: hack/versions.env (KIND_NODE_IMAGE may be overridden from the environment). kind is the
# one pinned in hack/tools/go.mod, built into .run/bin; the only other requirement is a running Docker. kubectl
# is not needed here: the ConfigMap is applied with the control plane's own kubectl.
#
# Usage: hack/kind-up.sh        (then: tilt up; remove everything with hack/kind-down.sh)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
node_image_override=${KIND_NODE_IMAGE:-}
# shellcheck source=hack/versions.env
source "$root/hack/versions.env"
KIND_NODE_IMAGE=${node_image_override:-$KIND_NODE_IMAGE}
cluster=$KIND_CLUSTER_NAME
registry=$REGISTRY_NAME
port=$REGISTRY_PORT

log() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'kind-up: %s\n' "$*" >&2
	exit 1
}

command -v docker >/dev/null 2>&1 || die "docker is not installed (kind runs its nodes as Docker containers)"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon: is Docker running?"

log "building kind from hack/tools into .run/bin"
mkdir -p "$root/.run/bin"
(cd "$root/hack/tools" && GOWORK=off go build -o "$root/.run/bin/" sigs.k8s.io/kind)
kind=$root/.run/bin/kind

# 1. The registry, published on the loopback interface only.
case $(docker inspect -f '{{.State.Running}}' "$registry" 2>/dev/null || true) in
true) log "registry $registry is running" ;;
false)
	log "starting the existing registry container $registry"
	docker start "$registry" >/dev/null
	;;
*)
	log "starting registry $registry ($REGISTRY_IMAGE) on 127.0.0.1:$port"
	docker run -d --restart=always -p "127.0.0.1:$port:5000" --network bridge --name "$registry" "$REGISTRY_IMAGE" >/dev/null
	;;
esac

# 2. The cluster.
clusters=$("$kind" get clusters 2>/dev/null || true)
if grep -qx "$cluster" <<<"$clusters"; then
	log "cluster $cluster exists; refreshing its kubeconfig entry (context kind-$cluster)"
	"$kind" export kubeconfig --name "$cluster" >/dev/null
	running=$(docker inspect -f '{{.Config.Image}}' "$cluster-control-plane" 2>/dev/null || true)
	if [[ -n $running && $running != "$KIND_NODE_IMAGE" ]]; then
		log "note: the cluster runs $running, not $KIND_NODE_IMAGE; recreate it to change: hack/kind-down.sh && hack/kind-up.sh"
	fi
else
	log "creating cluster $cluster ($KIND_NODE_IMAGE)"
	"$kind" create cluster --name "$cluster" --image "$KIND_NODE_IMAGE" --config "$root/k8s/kind/cluster.yaml" --wait 120s
fi

# 3. localhost:$port on the nodes is the registry container.
registry_dir="/etc/containerd/certs.d/localhost:$port"
for node in $("$kind" get nodes --name "$cluster"); do
	docker exec "$node" mkdir -p "$registry_dir"
	printf '[host."http://%s:5000"]\n' "$registry" | docker exec -i "$node" cp /dev/stdin "$registry_dir/hosts.toml"
done

# 4. The nodes reach the registry by its container name on the kind network.
if [[ $(docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "$registry") == null ]]; then
	log "connecting $registry to the kind network"
	docker network connect kind "$registry"
fi

# 5. Document the registry for tools (Tilt pushes its images there).
docker exec -i "$cluster-control-plane" kubectl --kubeconfig=/etc/kubernetes/admin.conf apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "localhost:$port"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
EOF

log "ready: kubectl context kind-$cluster, registry localhost:$port"
log "next: tilt up  (or push an image: docker tag cacheside localhost:$port/cacheside && docker push localhost:$port/cacheside)"
