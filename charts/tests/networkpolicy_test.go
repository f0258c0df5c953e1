package chart_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// source is who opens a connection to the app: a pod (its namespace and labels) or a bare address
// (a node forwarding a LoadBalancer's traffic, after SNAT).
type source struct {
	namespace string
	podLabels map[string]string
	ip        string // set for a bare address
}

func podIn(ns string, podLabels map[string]string) source {
	return source{namespace: ns, podLabels: podLabels}
}

// admits reports whether the NetworkPolicy's ingress rules let src reach the app's port http.
func admits(t *testing.T, np *networkingv1.NetworkPolicy, src source) bool {
	t.Helper()
	return admitsOn(t, np, "http", src)
}

// admitsOn reports whether the NetworkPolicy's ingress rules let src reach the named port.
func admitsOn(t *testing.T, np *networkingv1.NetworkPolicy, port string, src source) bool {
	t.Helper()
	for _, rule := range np.Spec.Ingress {
		if !rulePortsInclude(rule.Ports, port) {
			continue
		}
		if len(rule.From) == 0 {
			return true // no from: every source
		}
		for _, peer := range rule.From {
			if peerMatches(t, np.Namespace, peer, src) {
				return true
			}
		}
	}
	return false
}

func rulePortsInclude(ports []networkingv1.NetworkPolicyPort, name string) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.Port != nil && p.Port.String() == name && (p.Protocol == nil || *p.Protocol == corev1.ProtocolTCP) {
			return true
		}
	}
	return false
}

// peerMatches follows the NetworkPolicyPeer rules: podSelector alone means the policy's namespace,
// namespaceSelector picks namespaces (by their kubernetes.io/metadata.name label here), ipBlock addresses.
func peerMatches(t *testing.T, policyNS string, peer networkingv1.NetworkPolicyPeer, src source) bool {
	t.Helper()
	if peer.IPBlock != nil {
		if src.ip == "" {
			return false
		}
		prefix := netip.MustParsePrefix(peer.IPBlock.CIDR)
		addr := netip.MustParseAddr(src.ip)
		if !prefix.Contains(addr) {
			return false
		}
		for _, ex := range peer.IPBlock.Except {
			if netip.MustParsePrefix(ex).Contains(addr) {
				return false
			}
		}
		return true
	}
	if src.ip != "" {
		return false // selectors pick pods, never a node's address
	}
	if peer.NamespaceSelector == nil && src.namespace != policyNS {
		return false
	}
	if peer.NamespaceSelector != nil && !peerSelects(t, peer.NamespaceSelector, map[string]string{"kubernetes.io/metadata.name": src.namespace}) {
		return false
	}
	return peer.PodSelector == nil || peerSelects(t, peer.PodSelector, src.podLabels)
}

// peerSelects is a peer's selector: unlike a workload's, an empty one selects everything.
func peerSelects(t *testing.T, sel *metav1.LabelSelector, lbls map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatal(err)
	}
	return s.Matches(labels.Set(lbls))
}

// networkPolicy is the app's NetworkPolicy (the bundled Postgres and Redis and the test pod have their own).
func networkPolicy(t *testing.T, m manifest) *networkingv1.NetworkPolicy {
	t.Helper()
	return only(t, m, func(np *networkingv1.NetworkPolicy) bool { return np.Name == releaseName+"-cacheside" })
}

var (
	traefik         = podIn("traefik", map[string]string{"app.kubernetes.io/name": "traefik"})
	ingressNginx    = podIn("ingress-nginx", map[string]string{"app.kubernetes.io/name": "ingress-nginx"})
	envoyGateway    = podIn("envoy-gateway-system", map[string]string{"gateway.envoyproxy.io/owning-gateway-name": "eg"})
	nodeAddress     = source{ip: "10.0.12.7"}
	operatorProm    = podIn("monitoring", map[string]string{"app.kubernetes.io/name": "prometheus", "prometheus": "kube-prometheus"})
	unrelatedPod    = podIn("other-team", map[string]string{"app": "curl"})
	restrictIngress = []string{
		"networkPolicy.ingressFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=ingress-nginx",
	}
)

func TestTheNetworkPolicyLetsEveryIngressPathInByDefault(t *testing.T) {
	np := networkPolicy(t, render(t, ""))
	for name, src := range map[string]source{
		"Traefik":                          traefik,
		"ingress-nginx":                    ingressNginx,
		"a Gateway API controller":         envoyGateway,
		"a LoadBalancer's node traffic":    nodeAddress,
		"Prometheus":                       operatorProm,
		"a pod of the release's namespace": podIn(namespace, map[string]string{"app": "client"}),
	} {
		t.Run(name+" reaches the app's port", func(t *testing.T) {
			if !admits(t, np, src) {
				t.Errorf("the default NetworkPolicy cuts off %s", name)
			}
		})
	}
	t.Run("ingress is on the http and admin ports only", func(t *testing.T) {
		for _, rule := range np.Spec.Ingress {
			if len(rule.Ports) == 0 {
				t.Error("an ingress rule opens every port")
			}
			for _, p := range rule.Ports {
				if p.Port == nil || (p.Port.String() != "http" && p.Port.String() != "admin") {
					t.Errorf("ingress opens port %v", p.Port)
				}
			}
		}
	})
	t.Run("only Prometheus reaches the admin port", func(t *testing.T) {
		if !admitsOn(t, np, "admin", operatorProm) {
			t.Error("Prometheus cannot scrape the admin port")
		}
		for name, src := range map[string]source{
			"ingress-nginx": ingressNginx, "a LoadBalancer's node traffic": nodeAddress,
			"a pod of the release's namespace": podIn(namespace, map[string]string{"app": "client"}), "a pod of another namespace": unrelatedPod,
		} {
			if admitsOn(t, np, "admin", src) {
				t.Errorf("%s reaches the admin port", name)
			}
		}
	})
	t.Run("egress stays restricted to named ports", func(t *testing.T) {
		for i, rule := range np.Spec.Egress {
			if len(rule.Ports) == 0 {
				t.Errorf("egress rule %d opens every port", i)
			}
		}
	})
}

func TestARestrictedNetworkPolicyStillAdmitsTheTestPodAndTheScraper(t *testing.T) {
	cases := []struct {
		name  string
		set   []string
		admit map[string]source
		deny  map[string]source
	}{
		{
			"with ingressFrom set, only those peers and the test pod",
			restrictIngress,
			map[string]source{
				"ingress-nginx":   ingressNginx,
				"helm test's pod": podIn(namespace, map[string]string{"app.kubernetes.io/name": "cacheside", "app.kubernetes.io/instance": releaseName, "app.kubernetes.io/component": "test"}),
			},
			map[string]source{"Traefik": traefik, "a pod of another namespace": unrelatedPod, "Prometheus (metrics are not on this port)": operatorProm},
		},
		{
			"with ingressFrom set and the ServiceMonitor on, still only those peers: Prometheus scrapes the admin port",
			append([]string{"serviceMonitor.enabled=true"}, restrictIngress...),
			map[string]source{"ingress-nginx": ingressNginx},
			map[string]source{"a pod of another namespace": unrelatedPod, "Prometheus": operatorProm},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			np := networkPolicy(t, render(t, "", tc.set...))
			if !admitsOn(t, np, "admin", operatorProm) || admitsOn(t, np, "admin", ingressNginx) {
				t.Error("the admin port should admit Prometheus alone")
			}
			for name, src := range tc.admit {
				if !admits(t, np, src) {
					t.Errorf("%s is cut off", name)
				}
			}
			for name, src := range tc.deny {
				if admits(t, np, src) {
					t.Errorf("%s is let in", name)
				}
			}
		})
	}
}

// The OTel SDK dials the endpoint's port, else for grpc the gRPC resolver's default 443 (whatever the
// scheme: otlptracegrpc passes the URL's host to grpc.NewClient), and for http/protobuf the scheme's
// (80 for http, 443 for https). The egress must open that port, not the collector's usual 4317/4318.
func TestTheNetworkPolicyOpensThePortTheOTLPExporterDials(t *testing.T) {
	cases := []struct {
		endpoint, protocol string
		want               int
	}{
		{"http://otel-collector.observability.svc:4317", "grpc", 4317},
		{"http://otel-collector.observability.svc:4318", "http/protobuf", 4318},
		{"https://otlp.vendor.example", "grpc", 443},
		{"http://otel-collector.observability.svc", "grpc", 443},
		{"https://otlp.vendor.example", "http/protobuf", 443},
		{"http://otel-collector.observability.svc", "http/protobuf", 80},
		{"https://otlp.vendor.example/otlp", "http/protobuf", 443},
		{"https://otlp.vendor.example:8443/otlp", "http/protobuf", 8443},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s over %s: port %d", tc.endpoint, tc.protocol, tc.want), func(t *testing.T) {
			np := networkPolicy(t, render(t, "", "otel.enabled=true", "otel.endpoint="+tc.endpoint, "otel.protocol="+tc.protocol))
			var ports []string
			for _, rule := range np.Spec.Egress {
				for _, p := range rule.Ports {
					ports = append(ports, p.Port.String())
				}
			}
			found := false
			for _, p := range ports {
				if p == strconv.Itoa(tc.want) {
					found = true
				}
			}
			if !found {
				t.Errorf("egress ports %v lack %d", ports, tc.want)
			}
		})
	}
}

// The bundled Postgres and Redis admit their clients alone: the app's pods (whose init containers also migrate
// and keep the app's role in step) and the pre-upgrade migration Job's, of this release; not the helm test pod,
// another workload of the namespace, another release's app, nor the same labels in another namespace. Neither
// opens a connection of its own, so neither may send any.
func TestTheBundledPostgresAndRedisAdmitOnlyTheAppAndTheMigration(t *testing.T) {
	m := renderUpgrade(t, "", "postgresql.networkPolicy.extraIngressFrom[0].podSelector.matchLabels.app=pg-backup")
	app := appDeployment(t, m).Spec.Template.Labels
	job := only(t, m, func(j *batchv1.Job) bool { return component("migration")(j) }).Spec.Template.Labels
	test := only(t, m, func(p *corev1.Pod) bool { return component("test")(p) }).Labels
	otherRelease := map[string]string{}
	for k, v := range app {
		otherRelease[k] = strings.ReplaceAll(v, releaseName, "other")
	}
	for _, tc := range []struct {
		policy, port string
		extra        map[string]source
	}{
		{releaseName + "-postgresql", "postgres", map[string]source{"the backup job given in extraIngressFrom": podIn(namespace, map[string]string{"app": "pg-backup"})}},
		{releaseName + "-redis", "redis", nil},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			np := only(t, m, func(np *networkingv1.NetworkPolicy) bool { return np.Name == tc.policy })
			admitted := map[string]source{
				"the app's pods":           podIn(namespace, app),
				"the migration Job's pods": podIn(namespace, job),
			}
			for name, src := range tc.extra {
				admitted[name] = src
			}
			for name, src := range admitted {
				if !admitsOn(t, np, tc.port, src) {
					t.Errorf("%s cannot reach port %s", name, tc.port)
				}
			}
			for name, src := range map[string]source{
				"helm test's pod":                       podIn(namespace, test),
				"another pod of the namespace":          podIn(namespace, map[string]string{"app": "curl"}),
				"another release's app":                 podIn(namespace, otherRelease),
				"the app's labels in another namespace": podIn("other-team", app),
				"a node's address":                      nodeAddress,
			} {
				if admitsOn(t, np, tc.port, src) {
					t.Errorf("%s reaches port %s", name, tc.port)
				}
			}
			if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) || len(np.Spec.Egress) != 0 {
				t.Errorf("egress: policyTypes %v, rules %v; want Egress with no rule (nothing goes out)", np.Spec.PolicyTypes, np.Spec.Egress)
			}
		})
	}
	if np := all(m, func(np *networkingv1.NetworkPolicy) bool {
		return np.Name == releaseName+"-postgresql" || np.Name == releaseName+"-redis"
	}); len(np) != 2 {
		t.Fatalf("%d NetworkPolicies of the bundled services, want 2", len(np))
	}
	off := render(t, "", "postgresql.networkPolicy.enabled=false", "redis.networkPolicy.enabled=false")
	if np := all(off, func(np *networkingv1.NetworkPolicy) bool {
		return np.Name == releaseName+"-postgresql" || np.Name == releaseName+"-redis"
	}); len(np) != 0 {
		t.Errorf("networkPolicy.enabled=false in the subcharts still renders %d of their policies", len(np))
	}
}
