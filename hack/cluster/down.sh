#!/usr/bin/env bash
# hack/cluster/down.sh: tear down the cluster of hack/cluster/up.sh and leave the machine as up.sh found it.
# Works after a partial up.sh (each step undoes only what is there) and is safe to run twice (the second
# run finds nothing). In order:
#
#   1. stop the processes up.sh started (their pid files; a pid is only signalled while its command line
#      still names CLUSTER_DIR; SIGKILL after a few seconds), the kubelet first so it restarts nothing;
#   2. kill the pods' containers through the cluster's containerd, then stop it; kill what is left in the
#      kubelet's cgroups and the shims of this containerd;
#   3. unmount what appeared under CLUSTER_DIR (container rootfs, volumes, the pods' network namespaces),
#      remove the kubelet's cgroups;
#   4. delete every iptables chain named KUBE-*, CNI-* or CSIDE-* and the rules jumping to them (IPv4 and
#      IPv6), then the netfilter tables that only existed for them, the conntrack entries of the pod and
#      Service ranges, and the bridge;
#   5. write back the sysctls up.sh recorded that now differ;
#   6. remove the files the kubelet, containerd and the CNI library left under /var and /run (and their
#      directories, if up.sh found none), keep the logs in .run/cluster-logs, and delete CLUSTER_DIR (the
#      build cache in .run/cluster-cache stays).
#
# Steps 3 (cgroups) to 6 act machine-wide. If the cside0 bridge it finds is not the one this CLUSTER_DIR's
# up.sh made (another cluster came up since), down.sh stops only its own processes and mounts and says so.
#
# Usage: hack/cluster/down.sh     (the same CLUSTER_DIR as up.sh)
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

if [[ ! -d $CLUSTER_DIR ]]; then
	log "no cluster in ${CLUSTER_DIR#"$root"/}: nothing to do"
	exit 0
fi
if [[ ! -d $host_state ]]; then
	# up.sh records the host before it changes anything: without a record it changed nothing.
	log "${CLUSTER_DIR#"$root"/} has no record of the host (up.sh stopped before changing it): deleting it"
	rm -rf -- "$CLUSTER_DIR"
	exit 0
fi
# existed DIR: whether DIR existed before up.sh.
existed() { grep -qxF -- "$1" "$host_state/dirs" 2>/dev/null; }

# The machine-wide steps (cgroups, iptables, conntrack, the bridge, sysctls, files under /var and /run)
# assume this cluster is the machine's only one. If a cside0 exists that is not the bridge this up.sh made
# (another CLUSTER_DIR's cluster came up since: ours is long gone), they would wreck that one: skip them.
ours=true
if [[ -e /sys/class/net/$bridge/ifindex && $(<"/sys/class/net/$bridge/ifindex") != "$(cat "$host_state/bridge-created" 2>/dev/null)" ]]; then
	ours=false
	log "$bridge belongs to another cluster now: stopping only what ${CLUSTER_DIR#"$root"/} started, leaving cgroups, iptables, sysctls and /var alone"
fi

# --- 1. the cluster's processes ----------------------------------------------------------------------------

for p in kubelet kube-proxy coredns kube-scheduler kube-controller-manager; do
	stop "$p"
done
stop kube-apiserver 5
stop etcd

# --- 2. the containers -------------------------------------------------------------------------------------

c() { ctr -a "$containerd_sock" -n k8s.io "$@"; }
if [[ -f $pids/containerd.pid ]] && owned "$(<"$pids/containerd.pid")" && c version >/dev/null 2>&1; then
	tasks=$(c tasks ls -q 2>/dev/null || true)
	if [[ -n $tasks ]]; then
		log "killing the containers' tasks: $(wc -w <<<"$tasks")"
		for t in $tasks; do
			c tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1 || true
		done
		for t in $tasks; do
			c tasks delete -f "$t" >/dev/null 2>&1 || true
		done
	fi
	for id in $(c containers ls -q 2>/dev/null || true); do
		c containers delete "$id" >/dev/null 2>&1 || true
	done
fi
stop containerd

shopt -s globstar nullglob
# Whatever still runs in the kubelet's cgroups is a container of ours that outlived the steps above.
kubepods_procs() {
	local f
	for f in /sys/fs/cgroup/*/kubepods/**/cgroup.procs; do
		cat "$f" 2>/dev/null || true
	done | sort -u
}
for pid in $($ours && kubepods_procs); do
	log "killing process $pid, left in the kubepods cgroups"
	kill -KILL "$pid" 2>/dev/null || true
done
# The shims of this containerd (one per pod) exit with their last container; any left is named by its
# -address, our socket.
for proc in /proc/[0-9]*; do
	pid=${proc#/proc/}
	if [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == */containerd-shim* ]] &&
		tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-address $containerd_sock "; then
		log "killing containerd shim $pid"
		kill -KILL "$pid" 2>/dev/null || true
	fi
done
for _ in $(seq 50); do
	if ! $ours || [[ -z $(kubepods_procs) ]]; then
		break
	fi
	sleep 0.2
done

# --- 3. mounts, network namespaces, cgroups ----------------------------------------------------------------

# Mount points that were not there before up.sh, under CLUSTER_DIR (where containerd keeps the pods'
# network namespaces too: netns_mounts_under_state_dir): deepest first.
new_mounts() {
	awk '{print $5}' /proc/self/mountinfo | grep -F "$CLUSTER_DIR/" |
		grep -vxFf <(awk '{print $5}' "$host_state/mountinfo") | sort -ru || true
}
for _ in 1 2 3; do
	mounts=$(new_mounts)
	[[ -z $mounts ]] && break
	log "unmounting $(wc -l <<<"$mounts") mounts (container rootfs, volumes, network namespaces)"
	while IFS= read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
	done <<<"$mounts"
done
[[ -z $(new_mounts) ]] || die "still mounted (see /proc/self/mountinfo), not deleting ${CLUSTER_DIR#"$root"/}:"$'\n'"$(new_mounts)"

# The kubelet's cgroups (pods and QoS classes), in every hierarchy, children first. up.sh refused to start
# if kubepods existed, so all of them are ours.
for d in /sys/fs/cgroup/*/kubepods; do
	$ours || break
	find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
	[[ ! -d $d ]] || log "could not remove cgroup $d (a process still in it?)"
done

if ! $ours; then
	rm -rf -- "$root/.run/cluster-logs"
	cp -r "$logs" "$root/.run/cluster-logs" 2>/dev/null || true
	rm -rf -- "$CLUSTER_DIR"
	log "${CLUSTER_DIR#"$root"/} removed; the machine-wide state is the other cluster's"
	exit 0
fi

# --- 4. iptables, conntrack, the bridge ---------------------------------------------------------------------

# clean_iptables CMD: delete in every table the rules that jump to our prefixes' chains, then the chains.
clean_iptables() {
	local cmd=$1 table rules chains rule chain
	for table in raw mangle nat filter; do
		rules=$("$cmd" -t "$table" -S 2>/dev/null) || continue
		while IFS= read -r rule; do
			# `-S` prints rules as arguments to give back, quoting comments: eval undoes the quoting.
			eval "$cmd -t $table -D ${rule#-A }"
		done < <(grep -E -- "^-A .* -[jg] ($chain_prefixes)" <<<"$rules" | grep -vE -- "^-A ($chain_prefixes)" || true)
		chains=$(grep -oE -- "^-N ($chain_prefixes)[^ ]*" <<<"$rules" | cut -d' ' -f2 || true)
		[[ -n $chains ]] || continue
		log "$cmd -t $table: deleting $(wc -l <<<"$chains") chains (KUBE-*, CNI-*, CSIDE-*)"
		for chain in $chains; do "$cmd" -t "$table" -F "$chain"; done
		for chain in $chains; do "$cmd" -t "$table" -X "$chain"; done
	done
}
clean_iptables iptables
clean_iptables ip6tables

# Tables our commands created (iptables-nft makes a table on first use) go if nothing is left in them: no
# rule, no chain of anyone's, every built-in chain's policy ACCEPT, as if they had never been made.
if command -v nft >/dev/null && [[ -f $host_state/nft-tables ]]; then
	for family in ip ip6; do
		save=iptables-save
		[[ $family == ip ]] || save=ip6tables-save
		for table in raw mangle nat filter; do
			grep -qxF "table $family $table" "$host_state/nft-tables" && continue
			nft list table "$family" "$table" >/dev/null 2>&1 || continue
			if ! "$save" -t "$table" 2>/dev/null | grep -vE '^(#|\*|COMMIT$|:[A-Z]+ ACCEPT )' | grep -q .; then
				log "deleting the empty netfilter table $family $table (made by iptables for the cluster)"
				nft delete table "$family" "$table"
			fi
		done
	done
fi

for sel in "-s $pod_cidr" "-d $pod_cidr" "-d $service_cidr"; do
	# shellcheck disable=SC2086 # two words on purpose
	conntrack -D $sel >/dev/null 2>&1 || true
done

if [[ -s $host_state/bridge-created ]] && ip link show "$bridge" >/dev/null 2>&1; then
	log "deleting the bridge $bridge"
	ip link del "$bridge"
fi

# --- 5. sysctls --------------------------------------------------------------------------------------------

while IFS='=' read -r key value; do
	now=$(sysctl -n "$key" 2>/dev/null) || continue
	if [[ $now != "$value" ]]; then
		log "sysctl $key: $now -> $value (as before up.sh)"
		sysctl -q -w "$key=$value"
	fi
done <"$host_state/sysctls"

# --- 6. files outside CLUSTER_DIR, then CLUSTER_DIR ----------------------------------------------------------

# What the cluster leaves under /var and /run, where its programs do not let us choose: the kubelet's links
# to container logs (/var/log/containers) and its device-plugin socket (/var/lib/kubelet/device-plugins),
# the CNI library's result cache (/var/lib/cni/results: <network>-<container>-<interface>), the sockets of
# containerd's shims (/run/containerd/s). Only our files go; a directory goes only if it is then empty and
# did not exist before up.sh (another containerd may share /run/containerd).
for l in /var/log/containers/*; do
	if [[ -L $l && $(readlink "$l") == "$CLUSTER_DIR/"* ]]; then
		rm -f -- "$l"
	fi
done
for r in /var/lib/cni/results/"$cni_network"-*; do
	id=${r#/var/lib/cni/results/"$cni_network"-}
	id=${id%-*}
	rm -f -- "$r" "/var/lib/cni/results/cni-loopback-$id-lo"
done
rm -f /var/lib/kubelet/device-plugins/kubelet.sock
# A shim's socket that nothing listens on any more is a leftover (ours: only our shims were killed).
listening=$(ss -xlH 2>/dev/null | awk '{print $5}')
for sock in /run/containerd/s/*; do
	if [[ -S $sock ]] && ! grep -qxF -- "$sock" <<<"$listening"; then
		rm -f -- "$sock"
	fi
done
for d in /var/log/containers /var/lib/cni/results /var/lib/cni /var/lib/kubelet/device-plugins /var/lib/kubelet \
	/run/containerd/s /run/containerd/fifo /run/containerd/runc /run/containerd; do
	if [[ -d $d ]] && ! existed "$d" && rmdir -- "$d" 2>/dev/null; then
		log "removed $d (made by the cluster)"
	fi
done

rm -rf -- "$root/.run/cluster-logs"
cp -r "$logs" "$root/.run/cluster-logs" 2>/dev/null || true
rm -rf -- "$CLUSTER_DIR"
log "cluster down; its logs are in .run/cluster-logs"
