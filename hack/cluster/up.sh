#!/usr/bin/env bash
# hack/cluster/up.sh: a real single-node Kubernetes (KUBE_VERSION in hack/versions.env) as local processes
# on this machine: no Docker, no kind, no registry, nothing fetched at run time but Debian packages (when
# missing) and Go modules (for the first build). Root only (it changes iptables, sysctls and mounts).
#
#   etcd                    Debian's etcd-server, unpacked         127.0.0.1:2379
#   containerd (its own)    Debian's containerd + runc             $CLUSTER_DIR/containerd/containerd.sock
#   kube-apiserver          built by build.sh                      10.244.0.1:6443 (the bridge address)
#   kube-controller-manager, kube-scheduler                        127.0.0.1 only
#   kubelet                 cgroupfs, cgroup v1 allowed            10.244.0.1:10250 (the node's address)
#   kube-proxy              iptables mode                          127.0.0.1 only
#   CoreDNS                 host process, no forward plugin        10.244.0.1:53, behind the kube-dns
#                                                                  Service 10.96.0.10 (the pods' DNS)
#
# Pods sit on the bridge cside0 (10.244.0.1/24, bridge + host-local + portmap CNI plugins); Services in
# 10.96.0.0/16. Every packet forwarded from the bridge to any other address is dropped (iptables chain
# CSIDE-EGRESS): nothing in the cluster can reach beyond this machine. A default StorageClass `local` with a
# few hostPath PersistentVolumes under $CLUSTER_DIR/volumes serves PersistentVolumeClaims.
#
# Before changing anything, it records in $CLUSTER_DIR/host what hack/cluster/down.sh needs to leave the
# machine as it was (sysctls, whether the bridge, cgroups and directories existed, the mounts and network
# namespaces). If a step fails, up.sh runs down.sh itself (CLUSTER_KEEP_ON_FAILURE=1 keeps the wreck to look
# at; down.sh removes it later). When it succeeds it writes $CLUSTER_DIR/env:
#
#   KUBECONFIG, CONTAINERD_ADDRESS, KUBECTL, CTR, NODE_NAME (and CLUSTER_DIR, DNS_IP, BRIDGE_IP)
#
# Usage: hack/cluster/up.sh     (CLUSTER_DIR defaults to <repo>/.run/cluster)
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/cluster/build.sh
source "$root/hack/cluster/build.sh"

need_root
started=$SECONDS
api=https://$bridge_ip:6443
pause_image=localhost/standin/pause:3.10

# --- 0. refuse to start over an existing cluster ---------------------------------------------------------

if [[ -e $host_state ]]; then
	die "$CLUSTER_DIR holds a cluster (or what is left of one): run hack/cluster/down.sh first"
fi
if ip link show "$bridge" >/dev/null 2>&1; then
	die "a network interface named $bridge exists and up.sh did not record creating it: delete it (ip link del $bridge) or find out who made it"
fi
for d in /sys/fs/cgroup/*/kubepods; do
	if [[ -d $d ]]; then
		die "$d exists: another kubelet runs (or ran) on this machine"
	fi
done

on_exit() {
	local rc=$?
	((rc == 0)) && return
	dead_logs
	if [[ ${CLUSTER_KEEP_ON_FAILURE:-} == 1 ]]; then
		log "up.sh failed; CLUSTER_KEEP_ON_FAILURE=1: leaving it as it is (logs in ${logs#"$root"/}); hack/cluster/down.sh removes it"
	else
		log "up.sh failed: tearing down what it started (logs are kept in .run/cluster-logs)"
		bash "$root/hack/cluster/down.sh" || true
	fi
}
trap on_exit EXIT

# --- 1. packages and builds ------------------------------------------------------------------------------

# command -> the Debian package that provides it.
declare -A packages=(
	[containerd]=containerd [ctr]=containerd [runc]=runc [iptables]=iptables [ip6tables]=iptables
	[conntrack]=conntrack [openssl]=openssl [ip]=iproute2 [ss]=iproute2 [dig]=bind9-dnsutils [nft]=nftables
	[apt-get]=apt [dpkg-deb]=dpkg [go]=golang
)
missing=()
for c in "${!packages[@]}"; do
	command -v "$c" >/dev/null || missing+=("${packages[$c]}")
done
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/portmap && -x /usr/lib/cni/loopback ]] ||
	missing+=(containernetworking-plugins)
if ((${#missing[@]})); then
	[[ " ${missing[*]} " != *" golang "* ]] || die "Go is missing: install the Go of the root go.mod"
	log "installing Debian packages: ${missing[*]} (apt starts no daemon here: up.sh runs its own containerd)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" ||
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; }
fi

mkdir -p "$cache"
build_etcd
build_coredns
build_kube
etcd=$(etcd_dir)/usr/bin/etcd
kubectl=$kube_bin/kubectl
k() { "$kubectl" --kubeconfig "$CLUSTER_DIR/admin.kubeconfig" "$@"; }

# --- 2. record the host, then change it --------------------------------------------------------------------

mkdir -p "$host_state" "$pids" "$logs"
log "recording the host's state in ${host_state#"$root"/}"
for s in "${sysctls[@]}"; do
	if v=$(sysctl -n "$s" 2>/dev/null); then
		printf '%s=%s\n' "$s" "$v"
	fi
done >"$host_state/sysctls"
# Which of the directories the kubelet, containerd and the CNI plugins write into outside CLUSTER_DIR
# existed: down.sh removes the ones that did not.
for d in /var/log/containers /var/lib/cni/results /var/lib/cni /var/lib/kubelet/device-plugins /var/lib/kubelet \
	/run/containerd/s /run/containerd/fifo /run/containerd/runc /run/containerd; do
	if [[ -e $d ]]; then
		echo "$d"
	fi
done >"$host_state/dirs"
cp /proc/self/mountinfo "$host_state/mountinfo"
# The netfilter tables that exist: iptables (nf_tables backend) creates a table on first use, and down.sh
# deletes, once empty again, those that did not.
nft list tables >"$host_state/nft-tables"
iptables-save >"$host_state/iptables.save" 2>/dev/null || true
ip6tables-save >"$host_state/ip6tables.save" 2>/dev/null || true

log "sysctls: net.ipv4.ip_forward=1, net.bridge.bridge-nf-call-iptables=1 (pods' traffic through the bridge meets kube-proxy's rules)"
[[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] || modprobe br_netfilter ||
	die "br_netfilter is not loaded and cannot be: kube-proxy's Services need it"
sysctl -q -w net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1

log "bridge $bridge with $bridge_ip/24"
ip link add "$bridge" type bridge
# Its interface index tells down.sh whether the cside0 it finds is still this one.
cat "/sys/class/net/$bridge/ifindex" >"$host_state/bridge-created"
ip addr add "$bridge_ip/24" dev "$bridge"
ip link set "$bridge" up

# Nothing from the pods leaves the machine: in mangle/FORWARD (after Service DNAT, before filter, where
# kube-proxy and the CNI plugins insert their own rules) a packet that came in from the bridge and goes
# anywhere but the pod or Service ranges is dropped. Its counters show what was dropped
# (iptables -t mangle -L CSIDE-EGRESS -v). IPv6: the pods have none, forward none.
log "iptables: CSIDE-EGRESS drops every packet forwarded from $bridge to outside $pod_cidr and $service_cidr"
iptables -t mangle -N CSIDE-EGRESS
iptables -t mangle -A CSIDE-EGRESS -d "$pod_cidr" -j RETURN
iptables -t mangle -A CSIDE-EGRESS -d "$service_cidr" -j RETURN
iptables -t mangle -A CSIDE-EGRESS -m comment --comment "cacheside cluster: nothing leaves the machine" -j DROP
iptables -t mangle -I FORWARD 1 -i "$bridge" -j CSIDE-EGRESS
ip6tables -t mangle -N CSIDE-EGRESS
ip6tables -t mangle -A CSIDE-EGRESS -m comment --comment "cacheside cluster: no IPv6 out of the bridge" -j DROP
ip6tables -t mangle -I FORWARD 1 -i "$bridge" -j CSIDE-EGRESS

# --- 3. certificates and kubeconfigs ---------------------------------------------------------------------

mkdir -p "$pki"
log "certificates (openssl; ECDSA P-256, valid 30 days) in ${pki#"$root"/}"
# cert NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]: a key and a certificate signed by the CA.
cert() {
	local name=$1 subject=$2 usage=$3 sans=${4:-}
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subject" \
		-keyout "$pki/$name.key" -out "$pki/$name.csr" 2>/dev/null
	openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
		-days 30 -out "$pki/$name.crt" -extfile <(
			echo "basicConstraints=critical,CA:FALSE"
			echo "keyUsage=critical,digitalSignature,keyEncipherment"
			echo "extendedKeyUsage=$usage"
			[[ -z $sans ]] || echo "subjectAltName=$sans"
		) 2>/dev/null
	rm -f "$pki/$name.csr"
}
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=cside-ca -days 30 \
	-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature \
	-keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
cert apiserver /CN=kube-apiserver serverAuth \
	"IP:$bridge_ip,IP:$api_service_ip,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
cert admin "/O=system:masters/CN=cside-admin" clientAuth
cert kubelet "/O=system:nodes/CN=system:node:$node_name" clientAuth
cert kubelet-serving "/O=system:nodes/CN=system:node:$node_name" serverAuth "IP:$bridge_ip,DNS:$node_name"
cert controller-manager /CN=system:kube-controller-manager clientAuth
cert scheduler /CN=system:kube-scheduler clientAuth
cert kube-proxy /CN=system:kube-proxy clientAuth
cert coredns /CN=system:coredns clientAuth
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

# kubeconfig NAME: $CLUSTER_DIR/NAME.kubeconfig with the client certificate pki/NAME.
kubeconfig() {
	local name=$1
	cat >"$CLUSTER_DIR/$name.kubeconfig" <<-EOF
		apiVersion: v1
		kind: Config
		clusters:
		- name: cside
		  cluster:
		    server: $api
		    certificate-authority: $pki/ca.crt
		users:
		- name: $name
		  user:
		    client-certificate: $pki/$name.crt
		    client-key: $pki/$name.key
		contexts:
		- name: cside
		  context: {cluster: cside, user: $name}
		current-context: cside
	EOF
}
for n in admin kubelet controller-manager scheduler kube-proxy coredns; do
	kubeconfig "$n"
done

# --- 4. containerd (its own instance) ----------------------------------------------------------------------

mkdir -p "$CLUSTER_DIR/containerd" "$CLUSTER_DIR/cni/net.d" "$CLUSTER_DIR/cni/networks"
# The CRI plugin: cgroupfs (no systemd here), restrict_oom_score_adj (this machine lacks CAP_SYS_RESOURCE:
# without it runc cannot lower a container's OOM score and every sandbox fails with "can't get final
# child's PID from pipe"), the pause stand-in as sandbox image, our CNI config, and the pods' network
# namespaces and runc's state under CLUSTER_DIR. The opt plugin would create /opt/containerd: off.
# containerd still makes /run/containerd (fifos, the shims' sockets): down.sh removes it if it was not there.
cat >"$CLUSTER_DIR/containerd/config.toml" <<EOF
version = 2
root = "$CLUSTER_DIR/containerd/root"
state = "$CLUSTER_DIR/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$containerd_sock"

[ttrpc]
  address = "$containerd_sock.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$CLUSTER_DIR/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CLUSTER_DIR/cni/net.d"
EOF
# The pod network: the bridge made above (the plugin finds it and its address), addresses from host-local
# (its state under CLUSTER_DIR), hostPort through portmap. No ipMasq: nothing is to leave anyway.
cat >"$CLUSTER_DIR/cni/net.d/10-$cni_network.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$cni_network",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CLUSTER_DIR/cni/networks",
        "ranges": [[{"subnet": "$pod_cidr", "gateway": "$bridge_ip"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
start containerd containerd --config "$CLUSTER_DIR/containerd/config.toml"
wait_for "containerd" 60 ctr -a "$containerd_sock" version

# The sandbox image: an archive from hack/cluster/images.sh if it built one, else built here with the same
# tool (hack/cluster/imagebuild) from its tiny static pause program.
pause_archive=$cache/images/pause-3.10.tar
if [[ ! -s $pause_archive ]]; then
	[[ -d $root/hack/cluster/imagebuild/pause ]] ||
		die "no $pause_archive and no hack/cluster/imagebuild to build it: run hack/cluster/images.sh build"
	log "building the pause image into ${pause_archive#"$root"/} (hack/cluster/imagebuild)"
	tmp=$(mktemp -d)
	mkdir -p "$tmp/layer" "$(dirname "$pause_archive")"
	(cd "$root/hack/cluster/imagebuild" && go build -trimpath -o "$tmp/imagebuild" . && go build -trimpath -ldflags '-s -w' -o "$tmp/layer/pause" ./pause)
	"$tmp/imagebuild" build -ref "$pause_image" -o "$pause_archive.tmp" -user 65535:65535 -entrypoint /pause -layer "$tmp/layer"
	mv "$pause_archive.tmp" "$pause_archive"
	rm -rf "$tmp"
fi
log "importing $pause_image"
ctr -a "$containerd_sock" -n k8s.io images import --all-platforms "$pause_archive" >/dev/null

# --- 5. etcd and the control plane -------------------------------------------------------------------------

start etcd "$etcd" --name cside --data-dir "$CLUSTER_DIR/etcd" \
	--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster cside=http://127.0.0.1:2380 --logger zap --log-level warn
wait_for "etcd" 60 curl -fsS http://127.0.0.1:2379/health

# The apiserver listens on the bridge address only: the host reaches it there, and so do pods, through the
# `kubernetes` Service (kube-proxy DNATs 10.96.0.1:443 to the advertised 10.244.0.1:6443).
start kube-apiserver "$kube_bin/kube-apiserver" \
	--etcd-servers=http://127.0.0.1:2379 \
	--bind-address="$bridge_ip" --advertise-address="$bridge_ip" --secure-port=6443 \
	--cert-dir="$CLUSTER_DIR/apiserver" \
	--tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
	--client-ca-file="$pki/ca.crt" \
	--kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
	--kubelet-client-key="$pki/apiserver-kubelet-client.key" \
	--kubelet-certificate-authority="$pki/ca.crt" \
	--kubelet-preferred-address-types=InternalIP \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
	--service-cluster-ip-range="$service_cidr" \
	--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
	--allow-privileged=true --profiling=false
wait_for "kube-apiserver" 120 k get --raw /readyz

for c in controller-manager scheduler; do
	common=(--kubeconfig="$CLUSTER_DIR/$c.kubeconfig" --authentication-kubeconfig="$CLUSTER_DIR/$c.kubeconfig"
		--authorization-kubeconfig="$CLUSTER_DIR/$c.kubeconfig" --bind-address=127.0.0.1 --leader-elect=false
		--profiling=false)
	if [[ $c == controller-manager ]]; then
		start kube-controller-manager "$kube_bin/kube-controller-manager" "${common[@]}" \
			--cert-dir="$CLUSTER_DIR/controller-manager" \
			--service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
			--cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
			--use-service-account-credentials=true --service-cluster-ip-range="$service_cidr"
	else
		start kube-scheduler "$kube_bin/kube-scheduler" "${common[@]}" --cert-dir="$CLUSTER_DIR/scheduler"
	fi
done

# --- 6. the node: kubelet and kube-proxy -------------------------------------------------------------------

mkdir -p "$CLUSTER_DIR/kubelet" "$CLUSTER_DIR/pod-logs"
# Pods get no resolver of the host: their DNS is the cluster's only (ClusterFirst), and pods with
# dnsPolicy Default get this empty file.
: >"$CLUSTER_DIR/resolv.conf"
# Authentication and authorization as in a real cluster (client certificates, webhook to the apiserver);
# protectKernelDefaults off, so the kubelet sets its kernel tunables (down.sh restores them). Disk-pressure
# eviction at 2% free: a test machine with a full-ish disk should still run pods.
cat >"$CLUSTER_DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $bridge_ip
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
containerRuntimeEndpoint: unix://$containerd_sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDNS: [$dns_ip]
clusterDomain: cluster.local
resolvConf: $CLUSTER_DIR/resolv.conf
podLogsDir: $CLUSTER_DIR/pod-logs
volumePluginDir: $CLUSTER_DIR/kubelet/volume-plugins
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 100
EOF
start kubelet "$kube_bin/kubelet" --config="$CLUSTER_DIR/kubelet/config.yaml" \
	--kubeconfig="$CLUSTER_DIR/kubelet.kubeconfig" --root-dir="$CLUSTER_DIR/kubelet" \
	--cert-dir="$CLUSTER_DIR/kubelet/pki" --hostname-override="$node_name" --node-ip="$bridge_ip"

# kube-proxy: iptables mode; its ports on 127.0.0.1, NodePorts on the node address only (no route_localnet);
# conntrack limits and timeouts left as the machine has them.
cat >"$CLUSTER_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CLUSTER_DIR/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $pod_cidr
hostnameOverride: $node_name
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [$bridge_ip/32]
iptables: {localhostNodePorts: false}
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
start kube-proxy "$kube_bin/kube-proxy" --config="$CLUSTER_DIR/kube-proxy.yaml"

# --- 7. cluster objects: DNS Service, CoreDNS' RBAC, storage -----------------------------------------------

mkdir -p "$CLUSTER_DIR/volumes"
for i in 1 2 3 4; do
	mkdir -p "$CLUSTER_DIR/volumes/pv-$i"
	# Any uid the chart's pods run as (Postgres 70, Redis 999, ...) may write: hostPath ignores fsGroup.
	chmod 1777 "$CLUSTER_DIR/volumes/pv-$i"
done
log "cluster objects: kube-dns Service -> CoreDNS on $bridge_ip, CoreDNS' RBAC, StorageClass local + 4 hostPath PVs"
{
	cat <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}]
---
# The pods' DNS address; its one endpoint is CoreDNS on the host, at the bridge address (no selector:
# this slice, managed by up.sh, is the endpoint).
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $dns_ip
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: hack.cluster.up.sh}
addressType: IPv4
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
endpoints:
- addresses: [$bridge_ip]
  conditions: {ready: true}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
EOF
	for i in 1 2 3 4; do
		cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: local-pv-$i}
spec:
  storageClassName: local
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: $CLUSTER_DIR/volumes/pv-$i, type: Directory}
EOF
	done
} | k apply -f - >/dev/null

# --- 8. CoreDNS ----------------------------------------------------------------------------------------
# A host process rather than a pod: a pod needs an image, and the binary runs here as it is. It listens on
# the bridge address, where pods reach it (through the kube-dns Service, or directly), and answers
# cluster.local only: no forward plugin is linked in, so names outside the cluster get SERVFAIL.
cat >"$CLUSTER_DIR/Corefile" <<EOF
.:53 {
    bind $bridge_ip
    errors
    log . {
        class denial error
    }
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $CLUSTER_DIR/coredns.kubeconfig cside
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    cache 30
    loop
    reload
    loadbalance
}
EOF
start coredns "$coredns_bin/coredns" -conf "$CLUSTER_DIR/Corefile"

# --- 9. ready? ---------------------------------------------------------------------------------------------

node_ready() { [[ $(k get node "$node_name" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]; }
wait_for "node $node_name Ready" 180 node_ready
wait_for "CoreDNS ready" 60 curl -fsS http://127.0.0.1:18181/ready
# The answer through the Service address proves kube-proxy's rules, the Service and CoreDNS together.
dns_answers() { [[ $(dig +short +time=2 +tries=1 @"$dns_ip" kubernetes.default.svc.cluster.local A) == "$api_service_ip" ]]; }
wait_for "kubernetes.default.svc.cluster.local -> $api_service_ip from $dns_ip" 60 dns_answers
wait_for "the default ServiceAccount" 60 k -n default get serviceaccount default

{
	printf '%s=%q\n' KUBECONFIG "$CLUSTER_DIR/admin.kubeconfig" CONTAINERD_ADDRESS "$containerd_sock" \
		KUBECTL "$kubectl" CTR "$(command -v ctr)" NODE_NAME "$node_name" CLUSTER_DIR "$CLUSTER_DIR" \
		DNS_IP "$dns_ip" BRIDGE_IP "$bridge_ip"
} >"$CLUSTER_DIR/env"
log "cluster up in $((SECONDS - started)) s: source ${CLUSTER_DIR#"$root"/}/env; tear down with hack/cluster/down.sh"
