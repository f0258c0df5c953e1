#!/usr/bin/env bash
# hack/cluster/build.sh: build (once) the programs of the cluster that hack/cluster/up.sh runs, into
# .run/cluster-cache/<what>-<version>/ where they survive down.sh (`make clean` removes them):
#
#   kube-<KUBE_VERSION>/       Kubernetes from source: one multi-call binary `kube` (hack/cluster/kube) and
#                              a symlink per program (kube-apiserver, kube-controller-manager,
#                              kube-scheduler, kubelet, kube-proxy, kubectl). Cold: ~15-25 min on 2 cores.
#   coredns-<COREDNS_VERSION>/ CoreDNS with only the plugins hack/cluster/coredns links (no forward).
#   etcd-<debian version>/     etcd from Debian's etcd-server package, unpacked (never installed, so no
#                              system daemon is started).
#
# A cached build is used as long as it is newer than the module it came from. Run by up.sh; run it alone to
# warm the cache. Needs Go, the Go module proxy and apt (for the etcd package), not root.
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export GOWORK=off CGO_ENABLED=0

# fresh OUT INPUT...: whether OUT exists and is newer than every INPUT.
fresh() {
	local out=$1 in
	shift
	[[ -e $out ]] || return 1
	for in in "$@"; do
		[[ $out -nt $in ]] || return 1
	done
}

build_kube() {
	local mod=$root/hack/cluster/kube staging=v0.${KUBE_VERSION#v1.} bad
	# The module must build the release versions.env names: k8s.io/kubernetes itself, and the staging
	# modules at its v0.x twin.
	grep -qE "^require k8s.io/kubernetes $KUBE_VERSION\$|^[[:space:]]k8s.io/kubernetes $KUBE_VERSION\$" "$mod/go.mod" ||
		die "hack/cluster/kube/go.mod does not require k8s.io/kubernetes $KUBE_VERSION (hack/versions.env's KUBE_VERSION)"
	bad=$(grep -E '^[[:space:]]*k8s\.io/[^ ]+ => ' "$mod/go.mod" | grep -vE "=> k8s\.io/[^ ]+ $staging\$" || true)
	[[ -z $bad ]] || die "hack/cluster/kube/go.mod replaces staging modules with other versions than $staging:"$'\n'"$bad"

	if fresh "$kube_bin/kube" "$mod/go.mod" "$mod/go.sum" "$mod/main.go"; then
		log "Kubernetes $KUBE_VERSION: cached in ${kube_bin#"$root"/}"
	else
		log "building Kubernetes $KUBE_VERSION (one binary for all six programs; cold: 15-25 min on 2 cores)"
		local v=${KUBE_VERSION#v} ldflags=(-s -w) key val start=$SECONDS
		# The version every program reports (kubectl version, the node's kubeletVersion), set as upstream's
		# hack/lib/version.sh does.
		for key in gitVersion=$KUBE_VERSION gitMajor=${v%%.*} gitMinor=$(cut -d. -f2 <<<"$v") \
			gitTreeState=clean buildDate=1970-01-01T00:00:00Z; do
			val=${key#*=}
			key=${key%%=*}
			ldflags+=(-X "k8s.io/component-base/version.$key=$val" -X "k8s.io/client-go/pkg/version.$key=$val")
		done
		mkdir -p "$kube_bin.tmp"
		# Upstream's release tags, minus selinux (no SELinux here).
		(cd "$mod" && go build -trimpath -tags notest,grpcnotrace -ldflags "${ldflags[*]}" -o "$kube_bin.tmp/kube" .)
		rm -rf "$kube_bin"
		mv "$kube_bin.tmp" "$kube_bin"
		log "built Kubernetes $KUBE_VERSION in $((SECONDS - start)) s"
	fi
	local p
	for p in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
		ln -sfn kube "$kube_bin/$p"
	done
}

build_coredns() {
	local mod=$root/hack/cluster/coredns
	grep -qE "^require github.com/coredns/coredns $COREDNS_VERSION\$|^[[:space:]]github.com/coredns/coredns $COREDNS_VERSION\$" "$mod/go.mod" ||
		die "hack/cluster/coredns/go.mod does not require github.com/coredns/coredns $COREDNS_VERSION (hack/versions.env)"
	if fresh "$coredns_bin/coredns" "$mod/go.mod" "$mod/go.sum" "$mod/main.go"; then
		log "CoreDNS $COREDNS_VERSION: cached in ${coredns_bin#"$root"/}"
		return
	fi
	log "building CoreDNS $COREDNS_VERSION"
	local start=$SECONDS
	mkdir -p "$coredns_bin"
	(cd "$mod" && go build -trimpath -ldflags '-s -w' -o "$coredns_bin/coredns.tmp" .)
	mv "$coredns_bin/coredns.tmp" "$coredns_bin/coredns"
	log "built CoreDNS in $((SECONDS - start)) s"
}

# etcd_dir: the cache directory of the etcd-server package apt would install now (printed).
etcd_dir() {
	local version
	version=$(apt-cache policy etcd-server | sed -n 's/^ *Candidate: *//p')
	if [[ -z $version || $version == '(none)' ]]; then
		die "apt knows no etcd-server package (apt-get update?)"
	fi
	echo "$cache/etcd-${version//[:~+]/_}"
}

build_etcd() {
	local dir tmp
	dir=$(etcd_dir)
	if [[ -x $dir/usr/bin/etcd ]]; then
		log "etcd: cached in ${dir#"$root"/}"
		return
	fi
	log "unpacking Debian's etcd-server into ${dir#"$root"/}"
	tmp=$(mktemp -d)
	# Sandbox user root: the download directory is ours, not apt's.
	(cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root etcd-server)
	rm -rf "$dir.tmp"
	dpkg-deb -x "$tmp"/etcd-server_*.deb "$dir.tmp"
	rm -rf "$tmp" "$dir"
	mv "$dir.tmp" "$dir"
}

main() {
	mkdir -p "$cache"
	build_etcd
	build_coredns
	build_kube
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi
