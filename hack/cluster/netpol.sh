#!/usr/bin/env bash
# hack/cluster/netpol.sh: NetworkPolicy enforcement for the test cluster of hack/cluster/up.sh.
#
# The bridge CNI plugin enforces no NetworkPolicy, so the chart's policies would be decoration. This runs SIG
# Network's reference controller, sigs.k8s.io/kube-network-policies (KUBE_NETWORK_POLICIES_VERSION in
# hack/versions.env), as a root process on the host: it watches pods, namespaces and NetworkPolicies, reads the
# first packet of every new connection from nfqueue 100 and accepts or drops it as the policies say (later
# packets ride conntrack). It works with any CNI and needs root and the kernel's nfnetlink_queue.
#
# Upstream sends packets to the queue with an nftables table of its own, `inet kube-network-policies`, whose
# rules use nft's `queue` expression. This machine's kernel lacks it (CONFIG_NFT_QUEUE is not set; it has
# the iptables NFQUEUE target, CONFIG_NETFILTER_XT_TARGET_NFQUEUE, and no loadable modules), so the
# controller's table cannot be created and this script queues the packets itself, with iptables rules in
# the mangle table equivalent to upstream's, but for every pod rather than only those a policy selects:
#   POSTROUTING (after kube-proxy's DNAT, before SNAT) -> CSIDE-NETPOL: established/related and the node's
#     root processes (the kubelet's probes) pass; a new connection from or to the pod network is queued;
#   INPUT -> CSIDE-NETPOL-DNS: DNS over UDP from pods to the node (CoreDNS runs on it) is queued, as upstream
#     judges DNS in PREROUTING.
# A pod no policy selects is judged "allowed" at once. Where the kernel has nft's queue, the controller's
# table appears too (the log says so) and packets are judged twice, with the same verdict.
#
#   hack/cluster/netpol.sh build   build the controller into .run/cluster-cache/netpol-<version>/ (cached)
#   hack/cluster/netpol.sh start   run it against the cluster of $CLUSTER_DIR/env; wait until it has synced
#   hack/cluster/netpol.sh stop    remove the rules, stop it: the host's ruleset is as it was
#   hack/cluster/netpol.sh check   prove enforcement with pods and policies of its own, in namespace netpol-check
#
# run.sh calls `start` right after up.sh (before the chart is installed, or its pods start unguarded) and
# `stop` before down.sh. The controller's pid and log are $CLUSTER_DIR/netpol.pid and netpol.log.
#
# What it judges, and what it does not (see the README's cluster section):
#   - Traffic between pods, also through a Service (the hook sits in POSTROUTING, after kube-proxy's DNAT),
#     and bridged pod-to-pod traffic (net.bridge.bridge-nf-call-iptables=1, which up.sh sets).
#   - DNS (UDP 53) from pods also to the node, so an egress policy without DNS breaks lookups.
#   - Not: other traffic from pods to the node itself (the API server and CoreDNS over TCP run on
#     10.244.0.1 as host processes: that is input, not forwarded), nor from root processes of the node (the
#     kubelet's probes): both pass whatever the policies say, as in the upstream DaemonSet.
#
# The binary is upstream's controller package with a main of our own (hack/cluster/netpol/main.go): upstream's
# command only runs in a pod (in-cluster config, SIGINT only). Knobs: CLUSTER_DIR (default <repo>/.run/cluster),
# NETPOL_STATE_DIR (pid and log; default $CLUSTER_DIR), NETPOL_START_TIMEOUT (s, 60), NETPOL_KEEP=1 (check
# leaves its namespace for a look), NETPOL_NAMESPACE (start guards that namespace only: set it to netpol-check
# to run `check` beside a cluster someone else is testing, whose pods then stay unjudged).
set -euo pipefail
shopt -s inherit_errexit

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=hack/versions.env
source "$root/hack/versions.env"
CLUSTER_DIR=$(realpath -m "${CLUSTER_DIR:-$root/.run/cluster}")

version=$KUBE_NETWORK_POLICIES_VERSION
module=$root/hack/cluster/netpol
bin_dir=$root/.run/cluster-cache/netpol-$version
bin=$bin_dir/kube-network-policies
# Beside the cluster's own state by default; NETPOL_STATE_DIR puts them elsewhere (say, to check a cluster
# that another worktree's up.sh started without writing into it).
state_dir=${NETPOL_STATE_DIR:-$CLUSTER_DIR}
pid_file=$state_dir/netpol.pid
log_file=$state_dir/netpol.log
# The controller's nfqueue (its default), and what this script adds to iptables to feed it.
queue=100
pod_cidr=10.244.0.0/24
chain=CSIDE-NETPOL
dns_chain=CSIDE-NETPOL-DNS
ns=netpol-check

log() { echo "netpol.sh: $*" >&2; }
die() {
	log "$@"
	exit 1
}

usage() {
	sed -n 's/^#   \(hack\/cluster\/netpol.sh .*\)/\1/p' "${BASH_SOURCE[0]}" >&2
	exit 2
}

# --- build --------------------------------------------------------------------------------------------------

# The cache is keyed by version (the directory) and by the module's files (a stamp beside the binary), so a
# change to main.go or go.sum rebuilds too.
inputs_key() { cat "$module/go.mod" "$module/go.sum" "$module/main.go" | sha256sum | cut -d' ' -f1; }

cmd_build() {
	# go.mod is where `go` checks the sums; versions.env is where the versions are read. They must agree.
	local required
	required=$(sed -n 's|^[[:space:]]*sigs.k8s.io/kube-network-policies \(v[^ ]*\).*|\1|p' "$module/go.mod" | head -n 1)
	[[ $required == "$version" ]] ||
		die "hack/versions.env pins kube-network-policies $version but hack/cluster/netpol/go.mod requires ${required:-nothing}: bump both"
	local key
	key=$(inputs_key)
	if [[ -x $bin && $(cat "$bin.key" 2>/dev/null) == "$key" ]]; then
		log "kube-network-policies $version up to date (${bin#"$root"/})"
		echo "$bin"
		return
	fi
	log "building kube-network-policies $version from hack/cluster/netpol into ${bin_dir#"$root"/} (a few minutes cold)"
	local started=$SECONDS
	mkdir -p "$bin_dir"
	# -trimpath: no local paths in the binary; CGO off: a static binary with no C toolchain needed.
	(cd "$module" && GOWORK=off CGO_ENABLED=0 go build -trimpath -o "$bin.tmp" .)
	mv "$bin.tmp" "$bin"
	echo "$key" >"$bin.key"
	log "built in $((SECONDS - started)) s"
	echo "$bin"
}

# --- start / stop -------------------------------------------------------------------------------------------

load_env() {
	[[ -r $CLUSTER_DIR/env ]] || die "no $CLUSTER_DIR/env: start the cluster first (hack/cluster/up.sh)"
	set -a
	# shellcheck source=/dev/null
	source "$CLUSTER_DIR/env"
	set +a
	: "${KUBECONFIG:?not in $CLUSTER_DIR/env}" "${NODE_NAME:?not in $CLUSTER_DIR/env}" "${KUBECTL:?not in $CLUSTER_DIR/env}"
}

# The pid in the pid file, if that process is alive and is our binary (a pid may be reused).
running_pid() {
	local pid
	pid=$(cat "$pid_file" 2>/dev/null) || return 1
	local exe
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
	# " (deleted)": the binary was rebuilt under it.
	[[ $exe == "$bin" || $exe == "$bin (deleted)" ]] || return 1
	echo "$pid"
}

ipt() { iptables -w 5 -t mangle "$@"; }

# The chains, with what passes unjudged; queue_rules then sends an address range to the queue. Added only
# once the controller listens: a queue nobody reads drops every packet.
add_chains() {
	remove_rules
	ipt -N "$chain"
	ipt -A "$chain" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
	ipt -A "$chain" -m owner --uid-owner 0 -j RETURN
	ipt -I POSTROUTING -j "$chain"
	ipt -N "$dns_chain"
	ipt -I INPUT -j "$dns_chain"
}

# queue_rules ADDR: new connections from or to ADDR (the pod network, or one pod) go to the controller.
queue_rules() {
	local target=(-j NFQUEUE --queue-num "$queue")
	# Beside someone else's cluster (NETPOL_NAMESPACE): if this controller dies, nothing waits on it.
	[[ -n ${NETPOL_NAMESPACE:-} ]] && target+=(--queue-bypass)
	ipt -A "$chain" -s "$1" "${target[@]}"
	ipt -A "$chain" -d "$1" "${target[@]}"
	ipt -A "$dns_chain" -s "$1" -p udp --dport 53 "${target[@]}"
	log "iptables (mangle): new connections from/to $1 -> nfqueue $queue (POSTROUTING via $chain, DNS to the node via INPUT, $dns_chain)"
}

# Idempotent: removes whichever of the jumps and chains exist.
remove_rules() {
	local c hook
	for c in "$chain:POSTROUTING" "$dns_chain:INPUT"; do
		hook=${c#*:}
		c=${c%%:*}
		while ipt -C "$hook" -j "$c" 2>/dev/null; do ipt -D "$hook" -j "$c"; done
		if ipt -S "$c" >/dev/null 2>&1; then
			ipt -F "$c"
			ipt -X "$c"
			log "removed iptables chain mangle/$c"
		fi
	done
}

cmd_start() {
	[[ $EUID -eq 0 ]] || die "start needs root (nftables and nfqueue in the host's network namespace)"
	load_env
	if pid=$(running_pid); then
		log "already running (pid $pid, log ${log_file#"$root"/})"
		return
	fi
	cmd_build >/dev/null
	[[ -r /proc/net/netfilter/nfnetlink_queue ]] ||
		die "this kernel has no nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE): NetworkPolicy cannot be enforced here"
	[[ $(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null) == 1 ]] ||
		die "net.bridge.bridge-nf-call-iptables is not 1: traffic between pods on the bridge would skip netfilter (up.sh sets it)"
	local started=$SECONDS timeout=${NETPOL_START_TIMEOUT:-60}
	mkdir -p "$state_dir"
	log "starting kube-network-policies $version for node $NODE_NAME (log ${log_file#"$root"/})"
	# setsid: its own session, so a Ctrl-C meant for the caller does not tear the rules down halfway.
	local scope=()
	if [[ -n ${NETPOL_NAMESPACE:-} ]]; then
		log "guarding namespace $NETPOL_NAMESPACE only (NETPOL_NAMESPACE)"
		scope=(-namespace "$NETPOL_NAMESPACE")
	fi
	setsid "$bin" -kubeconfig "$KUBECONFIG" -hostname-override "$NODE_NAME" "${scope[@]}" \
		-metrics-bind-address 127.0.0.1:9080 </dev/null >"$log_file" 2>&1 &
	echo $! >"$pid_file"
	until grep -q 'ready: informers synced' "$log_file"; do
		if ! running_pid >/dev/null; then
			tail -n 20 "$log_file" >&2
			rm -f "$pid_file"
			die "kube-network-policies exited during start (above: the end of its log)"
		fi
		((SECONDS - started < timeout)) || {
			tail -n 20 "$log_file" >&2
			cmd_stop
			die "kube-network-policies not ready after ${timeout}s (above: the end of its log)"
		}
		sleep 0.5
	done
	add_chains
	if [[ -n ${NETPOL_NAMESPACE:-} ]]; then
		# Its pods are not known yet; `check` queues their addresses. Nobody else's traffic is queued.
		log "NETPOL_NAMESPACE: no address queued yet (check adds its pods')"
	else
		queue_rules "$pod_cidr"
	fi
	log "running (pid $(cat "$pid_file")), synced, nfqueue $queue bound, in $((SECONDS - started)) s"
}

cmd_stop() {
	local pid
	# The rules first: once they are gone no packet waits on the queue, so stopping drops nothing.
	remove_rules
	if pid=$(running_pid); then
		log "stopping kube-network-policies (pid $pid): SIGTERM, it deletes its table on the way out"
		kill -TERM "$pid"
		for _ in $(seq 1 40); do
			[[ -d /proc/$pid ]] || break
			sleep 0.25
		done
		if [[ -d /proc/$pid ]]; then
			log "still running after 10 s: SIGKILL"
			kill -KILL "$pid"
		fi
	else
		log "not running"
	fi
	rm -f "$pid_file"
	# Where the kernel let the controller create its nftables table, it deletes it when it stops; after a
	# crash or a SIGKILL the table would stay, queueing to nobody. Delete it whatever happened (a no-op here).
	if [[ -x $bin ]]; then
		"$bin" -cleanup | sed 's/^/netpol.sh: /' >&2
	fi
}

# --- check --------------------------------------------------------------------------------------------------

k() { "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }

# probe CLIENT ADDRESS: "open" when CLIENT's redis-cli gets PONG from ADDRESS:6379 within 3 s, "blocked" when
# it times out (the policy drops the SYN), anything else verbatim.
probe() {
	local out rc=0
	out=$(k -n "$ns" exec "$1" -- timeout 3 redis-cli -h "$2" -p 6379 ping 2>&1) || rc=$?
	if [[ $out == PONG ]]; then
		echo open
	elif ((rc == 124)); then
		echo blocked
	else
		echo "error(rc=$rc): ${out//$'\n'/ }"
	fi
}

# probe_dns CLIENT: "open" when CLIENT resolves the server's Service name (UDP to 10.96.0.10, DNAT'd to
# CoreDNS on the host) within 3 s, "blocked" when the lookup times out.
probe_dns() {
	local out rc=0
	out=$(k -n "$ns" exec "$1" -- timeout 3 getent hosts "server.$ns.svc.cluster.local" 2>&1) || rc=$?
	if ((rc == 0)) && [[ -n $out ]]; then
		echo open
	elif ((rc == 124)); then
		echo blocked
	else
		echo "error(rc=$rc): ${out//$'\n'/ }"
	fi
}

results=()
# expect WHAT CLIENT ADDRESS WANT: poll until the probe answers WANT (ADDRESS "dns": probe_dns) (policies take effect within a second or
# two of the API server's answer: the controller's watch, then a new nftables set), 30 s at most.
expect() {
	local what=$1 client=$2 addr=$3 want=$4 got started=$SECONDS
	while :; do
		if [[ $addr == dns ]]; then got=$(probe_dns "$client"); else got=$(probe "$client" "$addr"); fi
		[[ $got == "$want" ]] && break
		[[ $got == *"connection to the server"* ]] && die "the API server went away: $got"
		((SECONDS - started < 30)) || break
	done
	local verdict=PASS
	[[ $got == "$want" ]] || verdict=FAIL
	results+=("$(printf '%-4s  %-58s want %-7s got %s (%ss)' "$verdict" "$what" "$want" "$got" $((SECONDS - started)))")
	log "$verdict: $what: $got"
	[[ $verdict == PASS ]]
}

# Three pods of the Redis image the chart uses (redis-server, redis-cli, and coreutils' timeout): a server and
# two clients, set up as the restricted Pod Security Standard demands, like the chart's namespace.
pods_yaml() {
	local name role
	cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: server, namespace: $ns}
spec:
  selector: {role: server}
  ports: [{name: redis, port: 6379, targetPort: redis}]
EOF
	for name in server allowed denied; do
		role=$name
		local cmd='["sleep", "3600"]'
		[[ $name == server ]] && cmd='["redis-server", "--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no"]'
		cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: $ns, labels: {role: $role}}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 999, runAsGroup: 999, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: main
      image: localhost/standin/redis:7
      imagePullPolicy: Never
      command: $cmd
      ports: [{name: redis, containerPort: 6379}]
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      resources: {requests: {cpu: 10m, memory: 16Mi, ephemeral-storage: 1Mi}, limits: {memory: 64Mi, ephemeral-storage: 16Mi}}
EOF
	done
}

# Default deny of ingress for every pod of the namespace, and the one allowance: role=allowed to the server's
# port redis (named, as the chart's subcharts name theirs).
ingress_policies_yaml() {
	cat <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: $ns}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-redis-from-allowed, namespace: $ns}
spec:
  podSelector: {matchLabels: {role: server}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {role: allowed}}}]
      ports: [{port: redis, protocol: TCP}]
EOF
}

# Egress: the allowed client may talk to DNS only (as a pod whose policy forgot its Redis would).
egress_policy_yaml() {
	cat <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allowed-egress-dns-only, namespace: $ns}
spec:
  podSelector: {matchLabels: {role: allowed}}
  policyTypes: [Egress]
  egress:
    - ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
EOF
}

cmd_check() {
	load_env
	local pid
	pid=$(running_pid) || die "kube-network-policies is not running: hack/cluster/netpol.sh start"
	local started=$SECONDS
	log "check: namespace $ns (deleted first if left over), pods of localhost/standin/redis:7"
	k delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
	k create namespace "$ns" >/dev/null
	k label namespace "$ns" pod-security.kubernetes.io/enforce=restricted >/dev/null
	if [[ ${NETPOL_KEEP:-} != 1 ]]; then
		trap 'k delete namespace "$ns" --ignore-not-found --wait=false >/dev/null || true' EXIT
	fi
	pods_yaml | k apply -f - >/dev/null
	k -n "$ns" wait --for=condition=Ready pod --all --timeout=120s >/dev/null ||
		die "the check's pods did not become Ready: k -n $ns describe pods"
	local pod_ip svc_ip
	pod_ip=$(k -n "$ns" get pod server -o 'jsonpath={.status.podIP}')
	svc_ip=$(k -n "$ns" get service server -o 'jsonpath={.spec.clusterIP}')
	log "server pod $pod_ip, Service $svc_ip"
	if [[ -n ${NETPOL_NAMESPACE:-} ]]; then
		[[ $NETPOL_NAMESPACE == "$ns" ]] || die "NETPOL_NAMESPACE is $NETPOL_NAMESPACE: the controller does not see $ns"
		local ip
		for ip in $(k -n "$ns" get pods -o 'jsonpath={.items[*].status.podIP}'); do
			queue_rules "$ip"
		done
	fi

	local failed=0
	# Both paths: through the Service (routed, after kube-proxy's DNAT) and straight to the pod (bridged).
	local path addr
	for path in "Service $svc_ip" "pod $pod_ip"; do
		addr=${path#* }
		expect "no policy: allowed -> server ($path)" allowed "$addr" open || failed=1
		expect "no policy: denied -> server ($path)" denied "$addr" open || failed=1
	done

	ingress_policies_yaml | k apply -f - >/dev/null
	for path in "Service $svc_ip" "pod $pod_ip"; do
		addr=${path#* }
		expect "deny-all + allow: denied -> server ($path)" denied "$addr" blocked || failed=1
		expect "deny-all + allow: allowed -> server ($path)" allowed "$addr" open || failed=1
	done

	egress_policy_yaml | k apply -f - >/dev/null
	expect "allowed's egress DNS-only: allowed -> server (Service)" allowed "$svc_ip" blocked || failed=1
	expect "allowed's egress DNS-only: allowed resolves the Service" allowed dns open || failed=1
	# The same policy without its DNS rule: what a chart's egress policy forgetting port 53 gets.
	egress_policy_yaml | sed '/^  egress:/,$d' | k apply -f - >/dev/null
	expect "allowed's egress none: allowed resolves the Service" allowed dns blocked || failed=1
	k -n "$ns" delete networkpolicy allowed-egress-dns-only >/dev/null
	expect "egress policy removed: allowed resolves the Service" allowed dns open || failed=1
	expect "egress policy removed: allowed -> server (Service)" allowed "$svc_ip" open || failed=1

	k -n "$ns" delete networkpolicy --all >/dev/null
	for path in "Service $svc_ip" "pod $pod_ip"; do
		addr=${path#* }
		expect "policies removed: denied -> server ($path)" denied "$addr" open || failed=1
	done

	echo "NetworkPolicy enforcement (kube-network-policies $version, pid $pid), $((SECONDS - started)) s:"
	printf '  %s\n' "${results[@]}"
	((failed == 0)) || die "NetworkPolicy enforcement check FAILED (controller log: ${log_file#"$root"/})"
	echo "  => enforced: the allowed connection passes, the denied one is dropped, removal restores it"
}

case ${1:-} in
build) cmd_build ;;
start) cmd_start ;;
stop) cmd_stop ;;
check) cmd_check ;;
*) usage ;;
esac
