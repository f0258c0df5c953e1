package chart_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Volume types the "restricted" Pod Security Standard allows.
var restrictedVolumeTypes = []string{"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}

func TestEveryPodMeetsTheRestrictedPodSecurityStandard(t *testing.T) {
	for _, file := range ciValuesFiles(t) {
		m := renderUpgrade(t, file)
		pods := podTemplates(m)
		// The app, the migration Job (on upgrade), the test pod and both StatefulSets.
		if len(pods) < 3 {
			t.Fatalf("%s: found %d pod templates", file, len(pods))
		}
		for _, p := range pods {
			t.Run(fmt.Sprintf("%s: %s runs restricted", file, p.Owner), func(t *testing.T) {
				for _, problem := range restrictedProblems(p.Spec) {
					t.Error(problem)
				}
			})
		}
	}
}

// restrictedProblems lists how a pod spec falls short of the "restricted" Pod Security Standard, plus
// this project's read-only root filesystem and no service account token.
func restrictedProblems(spec corev1.PodSpec) []string {
	var p []string
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		p = append(p, "uses a host namespace")
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		p = append(p, "mounts a service account token it does not need")
	}
	if psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		p = append(p, "pod runs as uid 0")
	}
	for _, v := range spec.Volumes {
		b, _ := json.Marshal(v.VolumeSource)
		var src map[string]any
		_ = json.Unmarshal(b, &src)
		for typ := range src {
			if !slices.Contains(restrictedVolumeTypes, typ) {
				p = append(p, fmt.Sprintf("volume %s is a %s", v.Name, typ))
			}
		}
	}
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		sc := c.SecurityContext
		if sc == nil {
			p = append(p, c.Name+": no securityContext")
			continue
		}
		if !isTrue(sc.RunAsNonRoot) && !isTrue(psc.RunAsNonRoot) {
			p = append(p, c.Name+": runAsNonRoot is not true")
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			p = append(p, c.Name+": runs as uid 0")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			p = append(p, c.Name+": allowPrivilegeEscalation is not false")
		}
		if isTrue(sc.Privileged) {
			p = append(p, c.Name+": privileged")
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			p = append(p, c.Name+": capabilities do not drop ALL")
		} else if slices.ContainsFunc(sc.Capabilities.Add, func(c corev1.Capability) bool { return c != "NET_BIND_SERVICE" }) {
			p = append(p, c.Name+": adds capabilities")
		}
		seccomp := psc.SeccompProfile
		if sc.SeccompProfile != nil {
			seccomp = sc.SeccompProfile
		}
		if seccomp == nil || (seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault && seccomp.Type != corev1.SeccompProfileTypeLocalhost) {
			p = append(p, c.Name+": seccompProfile is not RuntimeDefault")
		}
		if !isTrue(sc.ReadOnlyRootFilesystem) {
			p = append(p, c.Name+": root filesystem is writable")
		}
		for _, port := range c.Ports {
			if port.HostPort != 0 {
				p = append(p, c.Name+": uses a host port")
			}
		}
		if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			p = append(p, c.Name+": no memory request and limit")
		}
		if i := strings.LastIndex(c.Image, ":"); i < 0 || strings.Contains(c.Image[i:], "/") || strings.HasSuffix(c.Image, ":latest") {
			p = append(p, c.Name+": image "+c.Image+" is not pinned to a tag")
		}
	}
	return p
}

func isTrue(b *bool) bool { return b != nil && *b }

func selects(t *testing.T, sel *metav1.LabelSelector, lbls map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatal(err)
	}
	return !s.Empty() && s.Matches(labels.Set(lbls))
}

func TestSelectorsPickExactlyTheirPods(t *testing.T) {
	for _, file := range ciValuesFiles(t) {
		m := renderUpgrade(t, file) // with the pre-upgrade Job
		pods := podTemplates(m)
		podsSelectedBy := func(sel *metav1.LabelSelector) []string {
			var out []string
			for _, p := range pods {
				if selects(t, sel, p.Labels) {
					out = append(out, p.Owner)
				}
			}
			return out
		}
		app := appDeployment(t, m)
		appOwner := fmt.Sprintf("%T %s", app, app.Name)

		t.Run(file+": every Deployment and StatefulSet selects its own pods only", func(t *testing.T) {
			for _, d := range all[*appsv1.Deployment](m, nil) {
				if diff := cmp.Diff([]string{fmt.Sprintf("%T %s", d, d.Name)}, podsSelectedBy(d.Spec.Selector)); diff != "" {
					t.Errorf("Deployment %s selects (-want +got):\n%s", d.Name, diff)
				}
			}
			for _, s := range all[*appsv1.StatefulSet](m, nil) {
				if diff := cmp.Diff([]string{fmt.Sprintf("%T %s", s, s.Name)}, podsSelectedBy(s.Spec.Selector)); diff != "" {
					t.Errorf("StatefulSet %s selects (-want +got):\n%s", s.Name, diff)
				}
			}
		})

		t.Run(file+": every Service's targetPort is a named port of the pods it selects", func(t *testing.T) {
			for _, svc := range all[*corev1.Service](m, nil) {
				sel := &metav1.LabelSelector{MatchLabels: svc.Spec.Selector}
				var matched int
				for _, p := range pods {
					if !selects(t, sel, p.Labels) {
						continue
					}
					matched++
					if strings.Contains(p.Owner, "Job") || strings.Contains(p.Owner, "Pod ") {
						t.Errorf("Service %s routes to %s", svc.Name, p.Owner)
					}
					for _, sp := range svc.Spec.Ports {
						if sp.TargetPort.StrVal == "" {
							t.Errorf("Service %s port %s: targetPort should name a container port", svc.Name, sp.Name)
						}
						if !slices.ContainsFunc(p.Spec.Containers, func(c corev1.Container) bool {
							return slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == sp.TargetPort.StrVal })
						}) {
							t.Errorf("Service %s: %s has no container port named %q", svc.Name, p.Owner, sp.TargetPort.StrVal)
						}
					}
				}
				if matched == 0 {
					t.Errorf("Service %s selects no pods", svc.Name)
				}
			}
		})

		t.Run(file+": the PodDisruptionBudget, HPA and topology spread act on the app's Deployment", func(t *testing.T) {
			for _, c := range app.Spec.Template.Spec.TopologySpreadConstraints {
				if diff := cmp.Diff([]string{appOwner}, podsSelectedBy(c.LabelSelector)); diff != "" {
					t.Errorf("topology spread over %s selects (-want +got):\n%s", c.TopologyKey, diff)
				}
			}
			for _, pdb := range all[*policyv1.PodDisruptionBudget](m, nil) {
				if diff := cmp.Diff([]string{appOwner}, podsSelectedBy(pdb.Spec.Selector)); diff != "" {
					t.Errorf("PDB selects (-want +got):\n%s", diff)
				}
			}
			for _, hpa := range all[*autoscalingv2.HorizontalPodAutoscaler](m, nil) {
				want := autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: app.Name}
				if diff := cmp.Diff(want, hpa.Spec.ScaleTargetRef); diff != "" {
					t.Errorf("HPA target (-want +got):\n%s", diff)
				}
				if app.Spec.Replicas != nil {
					t.Error("with an HPA the Deployment must not set replicas (each upgrade would reset the scale)")
				}
			}
		})

		t.Run(file+": each NetworkPolicy covers its own pods: the app's the app and migration pods, the others one workload each, and every pod has one", func(t *testing.T) {
			want := map[string][]string{}
			if policies := all[*networkingv1.NetworkPolicy](m, nil); len(policies) > 0 {
				want[releaseName+"-cacheside"] = []string{appOwner}
				for _, j := range all(m, func(j *batchv1.Job) bool { return component("migration")(j) }) {
					want[releaseName+"-cacheside"] = append(want[releaseName+"-cacheside"], fmt.Sprintf("%T %s", j, j.Name))
				}
				want[releaseName+"-cacheside-test"] = []string{"*v1.Pod " + releaseName + "-cacheside-test"}
				for _, sts := range all[*appsv1.StatefulSet](m, nil) {
					want[sts.Name] = []string{fmt.Sprintf("%T %s", sts, sts.Name)}
				}
			}
			got := map[string][]string{}
			covered := map[string]bool{}
			for _, np := range all[*networkingv1.NetworkPolicy](m, nil) {
				got[np.Name] = podsSelectedBy(&np.Spec.PodSelector)
				for _, p := range got[np.Name] {
					covered[p] = true
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("NetworkPolicies select (-want +got):\n%s", diff)
			}
			if len(got) > 0 {
				for _, p := range pods {
					if !covered[p.Owner] {
						t.Errorf("%s is covered by no NetworkPolicy", p.Owner)
					}
				}
			}
		})

		t.Run(file+": the Ingress points at the client Service's port; the ServiceMonitor at the admin port", func(t *testing.T) {
			svc := only(t, m, func(s *corev1.Service) bool { return component("server")(s) })
			for _, sm := range all[*monitoringv1.ServiceMonitor](m, nil) {
				metrics := only(t, m, func(s *corev1.Service) bool { return component("metrics")(s) })
				if !selects(t, &sm.Spec.Selector, metrics.Labels) {
					t.Errorf("ServiceMonitor does not select Service %s", metrics.Name)
				}
				if selects(t, &sm.Spec.Selector, svc.Labels) {
					t.Errorf("ServiceMonitor selects the client Service %s", svc.Name)
				}
				want := []monitoringv1.Endpoint{{Port: "admin", Path: "/metrics"}}
				var got []monitoringv1.Endpoint
				for _, e := range sm.Spec.Endpoints {
					got = append(got, monitoringv1.Endpoint{Port: e.Port, Path: e.Path})
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("ServiceMonitor endpoints (-want +got):\n%s", diff)
				}
			}
			for _, ing := range all[*networkingv1.Ingress](m, nil) {
				for _, r := range ing.Spec.Rules {
					for _, p := range r.HTTP.Paths {
						if p.Backend.Service.Name != svc.Name || p.Backend.Service.Port.Name != svc.Spec.Ports[0].Name {
							t.Errorf("Ingress path %s goes to %+v, want Service %s port %s", p.Path, p.Backend.Service, svc.Name, svc.Spec.Ports[0].Name)
						}
					}
				}
			}
		})
	}
}

// TestMetricsAreOnlyOnTheAdminPort: clients reach the service through the client Service and the
// Ingress; neither may carry the admin port, which only the metrics Service exposes, for the
// ServiceMonitor.
func TestMetricsAreOnlyOnTheAdminPort(t *testing.T) {
	m := render(t, "", "serviceMonitor.enabled=true", "ingress.enabled=true")
	pod := appDeployment(t, m).Spec.Template.Spec
	c := container(t, pod, "cacheside")
	var admin int32
	for _, p := range c.Ports {
		if p.Name == "admin" {
			admin = p.ContainerPort
		}
	}
	if admin == 0 {
		t.Fatalf("the container has no port named admin: %+v", c.Ports)
	}
	exposesAdmin := func(p corev1.ServicePort) bool {
		return p.TargetPort.StrVal == "admin" || p.TargetPort.IntVal == admin || (p.TargetPort.StrVal == "" && p.TargetPort.IntVal == 0 && p.Port == admin)
	}

	client := only(t, m, func(s *corev1.Service) bool { return component("server")(s) })
	for _, p := range client.Spec.Ports {
		if exposesAdmin(p) {
			t.Errorf("the client Service %s exposes the admin port: %+v", client.Name, p)
		}
	}
	for _, ing := range all[*networkingv1.Ingress](m, nil) {
		for _, r := range ing.Spec.Rules {
			for _, p := range r.HTTP.Paths {
				b := p.Backend.Service
				if b.Name != client.Name {
					t.Errorf("Ingress path %s goes to Service %s, not the client Service", p.Path, b.Name)
				}
				if b.Port.Name == "admin" || b.Port.Number == admin {
					t.Errorf("Ingress path %s goes to the admin port", p.Path)
				}
			}
		}
	}

	metrics := only(t, m, func(s *corev1.Service) bool { return component("metrics")(s) })
	if len(metrics.Spec.Ports) != 1 || !exposesAdmin(metrics.Spec.Ports[0]) {
		t.Errorf("the metrics Service %s should expose the admin port alone: %+v", metrics.Name, metrics.Spec.Ports)
	}
	sm := only(t, m, func(*monitoringv1.ServiceMonitor) bool { return true })
	if !selects(t, &sm.Spec.Selector, metrics.Labels) || selects(t, &sm.Spec.Selector, client.Labels) {
		t.Errorf("the ServiceMonitor should select the metrics Service only: %+v", sm.Spec.Selector)
	}
	for _, e := range sm.Spec.Endpoints {
		if e.Port != metrics.Spec.Ports[0].Name || e.Path != "/metrics" {
			t.Errorf("the ServiceMonitor scrapes %s on port %q, want /metrics on %q", e.Path, e.Port, metrics.Spec.Ports[0].Name)
		}
	}

	t.Run("without a ServiceMonitor there is no metrics Service", func(t *testing.T) {
		if got := all(render(t, ""), func(s *corev1.Service) bool { return component("metrics")(s) }); len(got) != 0 {
			t.Errorf("metrics Services: %d", len(got))
		}
	})
}

// Credentials: a Secret's values, and passwords inside URLs.
var (
	credentialKey = regexp.MustCompile(`(?i)PASSWORD|SECRET|TOKEN|URL|DSN|CREDENTIAL`)
	userinfoPass  = regexp.MustCompile(`://[^/@\s:]*:([^@\s]+)@`)
)

func TestCredentialsNeverLeaveSecrets(t *testing.T) {
	for _, file := range ciValuesFiles(t) {
		m := render(t, file)
		var secrets []string
		for _, s := range all[*corev1.Secret](m, nil) {
			for _, v := range s.Data {
				secrets = append(secrets, string(v))
				if u, err := url.Parse(string(v)); err == nil {
					if pw, ok := u.User.Password(); ok {
						secrets = append(secrets, pw)
					}
				}
			}
		}

		t.Run(file+": no ConfigMap key is named like a credential", func(t *testing.T) {
			for _, cm := range all[*corev1.ConfigMap](m, nil) {
				for k := range cm.Data {
					if credentialKey.MatchString(k) {
						t.Errorf("ConfigMap %s has key %s", cm.Name, k)
					}
				}
			}
		})

		t.Run(file+": no Secret value appears outside a Secret", func(t *testing.T) {
			if len(secrets) == 0 && strings.HasSuffix(file, "/default-values.yaml") {
				t.Fatal("the defaults render no Secret: the bundled passwords went missing")
			}
			for _, o := range m.Objects {
				if _, ok := o.Obj.(*corev1.Secret); ok {
					continue
				}
				b, err := json.Marshal(o.Obj)
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range secrets {
					if len(s) >= 6 && strings.Contains(string(b), s) {
						t.Errorf("%s (%s) contains a Secret's value", o.Name, o.Source)
					}
				}
			}
		})

		t.Run(file+": no env value or ConfigMap holds a URL with a literal password", func(t *testing.T) {
			check := func(where, v string) {
				for _, match := range userinfoPass.FindAllStringSubmatch(v, -1) {
					if !varRef.MatchString(match[1]) || varRef.ReplaceAllString(match[1], "") != "" {
						t.Errorf("%s: URL with a literal password", where)
					}
				}
			}
			for _, p := range podTemplates(m) {
				for _, c := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
					for _, e := range c.Env {
						check(fmt.Sprintf("%s %s %s", p.Owner, c.Name, e.Name), e.Value)
					}
				}
			}
			for _, cm := range all[*corev1.ConfigMap](m, nil) {
				for k, v := range cm.Data {
					check(fmt.Sprintf("ConfigMap %s %s", cm.Name, k), v)
				}
			}
		})
	}
}
