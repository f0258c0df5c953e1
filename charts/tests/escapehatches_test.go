package chart_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The escape hatches users of the prometheus-community and bitnami charts expect, as ci/extras-values.yaml
// uses them: each must reach the objects, and none may loosen what the chart sets itself.
func TestTheEscapeHatchesReachThePods(t *testing.T) {
	const file = "extras-values.yaml"
	m := render(t, file)
	d := appDeployment(t, m)
	spec := d.Spec.Template.Spec
	app := container(t, spec, "cacheside")

	t.Run("extraEnv reaches both of the service's containers, after the chart's own", func(t *testing.T) {
		for owner, c := range appContainers(t, m) {
			env := map[string]corev1.EnvVar{}
			var order []string
			for _, e := range c.Env {
				env[e.Name] = e
				order = append(order, e.Name)
			}
			if ref := env["OTEL_EXPORTER_OTLP_HEADERS"].ValueFrom; ref == nil || ref.SecretKeyRef == nil || ref.SecretKeyRef.Name != "otlp-vendor" || ref.SecretKeyRef.Key != "headers" {
				t.Errorf("%s: OTEL_EXPORTER_OTLP_HEADERS = %+v, want the otlp-vendor Secret's headers", owner, env["OTEL_EXPORTER_OTLP_HEADERS"])
			}
			for name, want := range map[string]string{"TZ": "Europe/Berlin", "HTTPS_PROXY": "http://proxy.example.internal:3128"} {
				if env[name].Value != want {
					t.Errorf("%s: %s = %q, want %q", owner, name, env[name].Value, want)
				}
			}
			if slices.Index(order, "TZ") < slices.Index(order, "DATABASE_URL") {
				t.Errorf("%s: extraEnv comes before the chart's variables: %v", owner, order)
			}
		}
	})

	t.Run("extraEnv replaces a variable the chart sets rather than setting it twice", func(t *testing.T) {
		m := render(t, "", "extraEnv[0].name=GOMEMLIMIT", "extraEnv[0].value=200MiB")
		for owner, c := range appContainers(t, m) {
			var values []string
			for _, e := range c.Env {
				if e.Name == "GOMEMLIMIT" {
					values = append(values, e.Value)
				}
			}
			if diff := cmp.Diff([]string{"200MiB"}, values); diff != "" {
				t.Errorf("%s: GOMEMLIMIT (-want +got):\n%s", owner, diff)
			}
		}
	})

	t.Run("extraEnvFrom comes after the chart's ConfigMap", func(t *testing.T) {
		if len(app.EnvFrom) != 2 || app.EnvFrom[1].ConfigMapRef == nil || app.EnvFrom[1].ConfigMapRef.Name != "platform-defaults" {
			t.Errorf("envFrom = %+v", app.EnvFrom)
		}
	})

	t.Run("extra volumes are mounted next to /tmp", func(t *testing.T) {
		if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == "ca-bundle" && v.ConfigMap != nil }) {
			t.Errorf("volumes = %+v", spec.Volumes)
		}
		var mounts []string
		for _, vm := range app.VolumeMounts {
			mounts = append(mounts, vm.MountPath)
		}
		if diff := cmp.Diff([]string{"/tmp", "/etc/ssl/certs/corporate"}, mounts); diff != "" {
			t.Errorf("mounts (-want +got):\n%s", diff)
		}
	})

	t.Run("init containers and sidecars run beside the service, names templated", func(t *testing.T) {
		var inits, containers []string
		for _, c := range spec.InitContainers {
			inits = append(inits, c.Name)
		}
		for _, c := range spec.Containers {
			containers = append(containers, c.Name)
		}
		// The user's first, so a native sidecar among them serves the chart's own migration.
		if diff := cmp.Diff([]string{"wait-for-proxy", "db-role", "migrate"}, inits); diff != "" {
			t.Errorf("init containers (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"cacheside", "cacheside-log-shipper"}, containers); diff != "" {
			t.Errorf("containers (-want +got):\n%s", diff)
		}
	})

	t.Run("priorityClassName, the startup probe and the Deployment's annotations are set", func(t *testing.T) {
		if spec.PriorityClassName != "business-critical" {
			t.Errorf("priorityClassName = %q", spec.PriorityClassName)
		}
		if p := app.StartupProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.FailureThreshold != 30 {
			t.Errorf("startupProbe = %+v", p)
		}
		if d.Annotations["reloader.stakater.com/auto"] != "true" {
			t.Errorf("Deployment annotations = %v", d.Annotations)
		}
		if p := container(t, appDeployment(t, render(t, "", "startupProbe=null")).Spec.Template.Spec, "cacheside").StartupProbe; p != nil {
			t.Errorf("startupProbe=null leaves a startup probe: %+v", p)
		}
	})

	t.Run("commonLabels are on every object and pod of the chart, never in a selector", func(t *testing.T) {
		for _, o := range m.Objects {
			obj, ok := o.Obj.(metav1.Object)
			if !ok || !strings.HasPrefix(o.Source, "cacheside/templates/") {
				continue // the bundled Redis and Postgres are charts of their own
			}
			if obj.GetLabels()["team"] != "storefront" {
				t.Errorf("%T %s (%s) lacks the common label", o.Obj, o.Name, o.Source)
			}
		}
		for _, p := range podTemplates(m) {
			if strings.Contains(p.Owner, "StatefulSet") {
				continue
			}
			if p.Labels["team"] != "storefront" {
				t.Errorf("%s's pods lack the common label", p.Owner)
			}
		}
		if _, ok := d.Spec.Selector.MatchLabels["team"]; ok {
			t.Error("the Deployment selects by a common label: changing it would orphan the pods")
		}
	})

	t.Run("the digest pins the app's image, under the global registry", func(t *testing.T) {
		want := "mirror.example.internal/cacheside:0.1.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
		for owner, c := range appContainers(t, m) {
			if c.Image != want {
				t.Errorf("%s image = %q, want %q", owner, c.Image, want)
			}
		}
	})

	t.Run("global.imageRegistry and global.imagePullSecrets reach every pod, the subcharts' included", func(t *testing.T) {
		for _, p := range podTemplates(m) {
			var secrets []string
			for _, s := range p.Spec.ImagePullSecrets {
				secrets = append(secrets, s.Name)
			}
			if !slices.Contains(secrets, "mirror-pull") {
				t.Errorf("%s: imagePullSecrets %v lack mirror-pull", p.Owner, secrets)
			}
			for _, c := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
				if c.Name == "cacheside-log-shipper" || c.Name == "wait-for-proxy" {
					continue // the user's own images, given whole
				}
				if !strings.HasPrefix(c.Image, "mirror.example.internal/") {
					t.Errorf("%s %s: image %q is not under the global registry", p.Owner, c.Name, c.Image)
				}
			}
		}
		if sets := all[*appsv1.StatefulSet](m, nil); len(sets) != 2 {
			t.Errorf("found %d StatefulSets, want the bundled Redis' and Postgres'", len(sets))
		}
	})
}
