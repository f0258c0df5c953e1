#!/usr/bin/env bash
# hack/helm.sh ARGS...: run the Helm pinned in hack/tools/go.mod (built into .run/bin on first use, and
# rebuilt when the pin changes), e.g.
#   hack/helm.sh template demo charts/cacheside -f k8s/values/kind.yaml   (offline: it sets the passwords)
#   kubectl create namespace demo && hack/helm.sh upgrade --install demo charts/cacheside -n demo
# (not --create-namespace: a render that cannot see the namespace refuses to generate passwords; chart README)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Each nested module builds on its own go.mod, even if a go.work appears.
export GOWORK=off
(cd "$root/hack/tools" && go build -o "$root/.run/bin/" helm.sh/helm/v4/cmd/helm)
exec "$root/.run/bin/helm" "$@"
