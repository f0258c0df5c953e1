# hack/cluster/lib.sh: what up.sh, down.sh and build.sh share: paths, the cluster's fixed addresses, logging
# and the helpers that start, find and stop the processes they own. Sourced, not run.
#
# Everything the cluster writes lives under CLUSTER_DIR (default <repo>/.run/cluster), except what Linux
# keeps globally (sysctls, iptables, the bridge, cgroups, network namespaces, a few files the kubelet and
# the CNI plugins write under /var and /run): up.sh records those in $CLUSTER_DIR/host before it changes
# anything, and down.sh puts them back from there.
# shellcheck shell=bash
# The variables are for the scripts that source this file.
# shellcheck disable=SC2034

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=hack/versions.env
source "$root/hack/versions.env"

CLUSTER_DIR=$(realpath -m "${CLUSTER_DIR:-$root/.run/cluster}")
cache=$root/.run/cluster-cache

# The network (shared with the other hack/cluster scripts and the checks: see the README).
bridge=cside0
bridge_ip=10.244.0.1
pod_cidr=10.244.0.0/24
service_cidr=10.96.0.0/16
api_service_ip=10.96.0.1
dns_ip=10.96.0.10
# The node's name, not the machine's: nothing about the host leaks into the cluster's objects.
node_name=cside-node
# The CNI network's name: also the prefix of what the plugins leave in /var/lib/cni.
cni_network=cside

# Where the cached builds live (build.sh writes them, up.sh runs them).
kube_bin=$cache/kube-$KUBE_VERSION
coredns_bin=$cache/coredns-$COREDNS_VERSION

# The directories of one cluster.
pki=$CLUSTER_DIR/pki
pids=$CLUSTER_DIR/pids
logs=$CLUSTER_DIR/logs
host_state=$CLUSTER_DIR/host
containerd_sock=$CLUSTER_DIR/containerd/containerd.sock

# The sysctls the kubelet (vm.*, kernel.*: its "kernel tunables"), kube-proxy (route_localnet, conntrack),
# the bridge CNI plugin (ip_forward) and up.sh (bridge-nf-call-*) may change. up.sh saves them, down.sh
# writes back those that differ.
sysctls=(
	vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes
	net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.ipv4.conf.default.forwarding
	net.ipv4.conf.all.accept_redirects net.ipv6.conf.all.forwarding
	net.ipv4.conf.all.route_localnet
	net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables net.bridge.bridge-nf-call-arptables
	net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
	net.netfilter.nf_conntrack_tcp_timeout_close_wait
)

# The prefixes of the iptables chains of the kubelet and kube-proxy (KUBE-), the CNI plugins (CNI-) and
# up.sh (CSIDE-). down.sh deletes every chain so named and every rule that jumps to one.
chain_prefixes='KUBE-|CNI-|CSIDE-'

log() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'ERROR: %s\n' "$*" >&2
	exit 1
}

need_root() {
	[[ $(id -u) == 0 ]] || die "$(basename "$0") changes iptables, sysctls and mounts: run it as root"
}

# owned PID: whether PID is alive and one of ours: every process up.sh starts has CLUSTER_DIR in its
# command line, so a pid file outliving its process cannot make us signal a stranger that reused the pid.
owned() {
	local pid=$1
	[[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$CLUSTER_DIR/"
}

# start NAME COMMAND...: run COMMAND in the background with its output in $logs/NAME.log and its pid in
# $pids/NAME.pid. setsid: a Ctrl-C in up.sh's terminal does not reach the cluster (down.sh stops it).
start() {
	local name=$1
	shift
	log "starting $name (log: ${logs#"$root"/}/$name.log)"
	setsid "$@" >>"$logs/$name.log" 2>&1 </dev/null &
	echo $! >"$pids/$name.pid"
}

# stop NAME [SECONDS]: SIGTERM the process of $pids/NAME.pid if it is still ours, SIGKILL after SECONDS
# (default 10). A throwaway cluster needs no long grace: kube-apiserver, for one, can sit in its shutdown
# for minutes.
stop() {
	local name=$1 grace=${2:-10} pid
	[[ -f $pids/$name.pid ]] || return 0
	pid=$(<"$pids/$name.pid")
	if owned "$pid"; then
		log "stopping $name (pid $pid)"
		local t0=$SECONDS
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq $((grace * 5))); do
			owned "$pid" || break
			sleep 0.2
		done
		if owned "$pid"; then
			log "$name did not stop in $grace s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		log "stopped $name in $((SECONDS - t0)) s"
	fi
	rm -f "$pids/$name.pid"
}

# wait_for WHAT SECONDS COMMAND...: poll COMMAND until it succeeds; fail after SECONDS (up.sh then shows
# the logs of the processes that died meanwhile).
wait_for() {
	local what=$1 timeout=$2 deadline
	shift 2
	deadline=$((SECONDS + timeout))
	log "waiting for $what"
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			die "$what: not after ${timeout}s"
		fi
		sleep 0.5
	done
}

# dead_logs: the last lines of the log of every process up.sh started that is no longer running.
dead_logs() {
	local f name
	for f in "$pids"/*.pid; do
		[[ -e $f ]] || continue
		name=$(basename "$f" .pid)
		if ! owned "$(<"$f")"; then
			printf -- '--- %s exited; last lines of its log:\n' "$name" >&2
			tail -n 30 "$logs/$name.log" >&2 || true
		fi
	done
}
