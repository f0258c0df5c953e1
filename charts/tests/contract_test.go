package chart_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cacheside/cacheside/app/config"
	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v4/pkg/chart/common"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
)

// The chart must set exactly the variables the service reads (STYLE.md: ardanlabs' chart set
// SALES_DB_HOST_PORT while its config read SALES_DB_HOST, and nothing noticed). These are the only
// other names the app's containers may carry, each with the reason.
var (
	// Read by the Go runtime, not by the service's config.
	runtimeVars = map[string]string{
		"GOMAXPROCS": "Go runtime, from limits.cpu",
		"GOMEMLIMIT": "Go runtime, from limits.memory",
	}
	// Helper variables whose only use is $(VAR) expansion into a later variable.
	expansionHelpers = map[string]string{
		"K8S_POD_NAME":       "downward API, into OTEL_RESOURCE_ATTRIBUTES",
		"K8S_NAMESPACE_NAME": "downward API, into OTEL_RESOURCE_ATTRIBUTES",
		"K8S_NODE_NAME":      "downward API, into OTEL_RESOURCE_ATTRIBUTES",
		"DATABASE_PASSWORD":  "a Secret's password, into DATABASE_URL",
		"REDIS_PASSWORD":     "a Secret's password, into REDIS_URL",
	}
	// Service variables the chart derives from its own values instead of passing through `config`.
	chartManagedVars = []string{"DATABASE_URL", "REDIS_URL", "HTTP_ADDR", "ADMIN_ADDR", "SHUTDOWN_TIMEOUT", "REDIS_MODE", "API_TOKENS", "API_AUTH_READS"}
	// Service variables a deployment must never get: neither a config key nor set by the chart.
	neverSetVars = map[string]string{
		"API_AUTH_DISABLED": "serves writes to anyone: local development only (README, Security)",
	}
)

// appContainers are the containers running the service's binary: the server, the pods' migration init
// container, and the pre-upgrade migration Job's (in upgrade renders).
func appContainers(t *testing.T, m manifest) map[string]corev1.Container {
	t.Helper()
	spec := appDeployment(t, m).Spec.Template.Spec
	out := map[string]corev1.Container{
		"Deployment": container(t, spec, "cacheside"),
	}
	if c, ok := migrateInitContainer(spec); ok {
		out["Deployment's init container"] = c
	}
	if has(m, func(j *batchv1.Job) bool { return component("migration")(j) }) {
		out["migration Job"] = container(t, migrationJob(t, m).Spec.Template.Spec, "migrate")
	}
	return out
}

// userEnv is what a values file adds to the containers' environment through the escape hatches
// (extraEnv, extraEnvFrom): the user's business, outside the chart's contract with the service.
type userEnv struct {
	names   map[string]bool // extraEnv names
	sources map[string]bool // extraEnvFrom ConfigMap and Secret names
}

func userEnvOf(t *testing.T, file string) userEnv {
	t.Helper()
	u := userEnv{names: map[string]bool{}, sources: map[string]bool{}}
	if file == "" {
		return u
	}
	vals, err := common.ReadValuesFile(valuesPath(file))
	if err != nil {
		t.Fatal(err)
	}
	if list, ok := vals["extraEnv"].([]any); ok {
		for _, e := range list {
			if e, ok := e.(map[string]any); ok {
				u.names[fmt.Sprint(e["name"])] = true
			}
		}
	}
	if list, ok := vals["extraEnvFrom"].([]any); ok {
		for _, e := range list {
			e, _ := e.(map[string]any)
			for _, kind := range []string{"configMapRef", "secretRef"} {
				if ref, ok := e[kind].(map[string]any); ok {
					u.sources[fmt.Sprint(ref["name"])] = true
				}
			}
		}
	}
	return u
}

// envNames returns the names the chart sets in a container, envFrom's first, in the order the kubelet
// resolves them; what the values add through extraEnv and extraEnvFrom is left out.
func envNames(t *testing.T, m manifest, c corev1.Container, user userEnv) []string {
	t.Helper()
	names := envFromNames(t, m, c, user)
	for _, e := range c.Env {
		if !user.names[e.Name] {
			names = append(names, e.Name)
		}
	}
	return names
}

// envFromNames resolves a container's envFrom against the rendered ConfigMaps, leaving out the values' extraEnvFrom.
func envFromNames(t *testing.T, m manifest, c corev1.Container, user userEnv) []string {
	t.Helper()
	var names []string
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil && user.sources[ef.ConfigMapRef.Name], ef.SecretRef != nil && user.sources[ef.SecretRef.Name]:
		case ef.ConfigMapRef != nil:
			cm := only(t, m, func(o *corev1.ConfigMap) bool { return o.Name == ef.ConfigMapRef.Name })
			names = append(names, slices.Sorted(maps.Keys(cm.Data))...)
		case ef.SecretRef != nil:
			t.Errorf("%s reads a whole Secret (%s) through envFrom: its keys cannot be checked", c.Name, ef.SecretRef.Name)
		}
	}
	return names
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

func TestAppContainersSetOnlyVariablesTheServiceReads(t *testing.T) {
	known := map[string]bool{}
	var required []string
	for _, v := range config.Vars() {
		known[v.Name] = true
		if v.Required {
			required = append(required, v.Name)
		}
	}

	for _, file := range ciValuesFiles(t) {
		m := renderUpgrade(t, file) // with the pre-upgrade Job
		user := userEnvOf(t, file)
		for owner, c := range appContainers(t, m) {
			t.Run(fmt.Sprintf("%s: the %s sets no variable the service does not read", file, owner), func(t *testing.T) {
				var unknown []string
				for _, name := range envNames(t, m, c, user) {
					if !known[name] && !strings.HasPrefix(name, "OTEL_") && runtimeVars[name] == "" && expansionHelpers[name] == "" {
						unknown = append(unknown, name)
					}
				}
				if diff := cmp.Diff([]string(nil), unknown); diff != "" {
					t.Errorf("variables no one reads (-want +got):\n%s", diff)
				}
			})
			t.Run(fmt.Sprintf("%s: the %s sets every required variable once", file, owner), func(t *testing.T) {
				names := envNames(t, m, c, user)
				for _, name := range required {
					if !slices.Contains(names, name) {
						t.Errorf("required %s is not set", name)
					}
				}
				// Server-side apply (Helm 4's default) rejects duplicate keys of a list-map.
				seen := map[string]bool{}
				for _, name := range names {
					if seen[name] {
						t.Errorf("%s is set twice", name)
					}
					seen[name] = true
				}
			})
			t.Run(fmt.Sprintf("%s: the %s expands only variables defined before, and helpers only through expansion", file, owner), func(t *testing.T) {
				defined := map[string]bool{}
				for _, name := range envFromNames(t, m, c, user) {
					defined[name] = true
				}
				used := map[string]bool{}
				for _, e := range c.Env {
					for _, ref := range varRef.FindAllStringSubmatch(e.Value, -1) {
						if !defined[ref[1]] {
							t.Errorf("%s expands $(%s) before it is defined: the kubelet would leave it as is", e.Name, ref[1])
						}
						used[ref[1]] = true
					}
					defined[e.Name] = true
				}
				for _, e := range c.Env {
					if expansionHelpers[e.Name] != "" && !used[e.Name] {
						t.Errorf("helper %s (%s) is never expanded: drop it", e.Name, expansionHelpers[e.Name])
					}
				}
			})
		}
	}
}

func TestOTelResourceAttributesComeFromTheDownwardAPI(t *testing.T) {
	m := render(t, "external-values.yaml")
	c := container(t, appDeployment(t, m).Spec.Template.Spec, "cacheside")
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	fields := map[string]string{}
	for name, e := range env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			fields[name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	want := map[string]string{
		"K8S_POD_NAME":       "metadata.name",
		"K8S_NAMESPACE_NAME": "metadata.namespace",
		"K8S_NODE_NAME":      "spec.nodeName",
	}
	if diff := cmp.Diff(want, fields); diff != "" {
		t.Errorf("downward API variables (-want +got):\n%s", diff)
	}
	attrs := map[string]string{}
	for kv := range strings.SplitSeq(env["OTEL_RESOURCE_ATTRIBUTES"].Value, ",") {
		k, v, _ := strings.Cut(kv, "=")
		attrs[k] = v
	}
	wantAttrs := map[string]string{
		"k8s.pod.name":                "$(K8S_POD_NAME)",
		"k8s.namespace.name":          "$(K8S_NAMESPACE_NAME)",
		"k8s.node.name":               "$(K8S_NODE_NAME)",
		"deployment.environment.name": "staging",
	}
	if diff := cmp.Diff(wantAttrs, attrs); diff != "" {
		t.Errorf("OTEL_RESOURCE_ATTRIBUTES (-want +got):\n%s", diff)
	}
	cm := appConfigMap(t, m)
	wantOTel := map[string]string{
		"OTEL_SERVICE_NAME":           "cacheside",
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger-collector.observability.svc:4317",
		"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
		"OTEL_TRACES_SAMPLER":         "parentbased_traceidratio",
		"OTEL_TRACES_SAMPLER_ARG":     "0.25",
	}
	gotOTel := map[string]string{}
	for k, v := range cm.Data {
		if strings.HasPrefix(k, "OTEL_") {
			gotOTel[k] = v
		}
	}
	if diff := cmp.Diff(wantOTel, gotOTel); diff != "" {
		t.Errorf("OTEL_* settings (-want +got):\n%s", diff)
	}
}

func TestTheGoRuntimeFollowsTheContainerLimits(t *testing.T) {
	for _, file := range append([]string{""}, ciValuesFiles(t)...) {
		m := render(t, file)
		for owner, c := range appContainers(t, m) {
			t.Run(fmt.Sprintf("%s: the %s's GOMAXPROCS is its CPU limit", cmpOr(file, "defaults"), owner), func(t *testing.T) {
				got := map[string]string{}
				for _, e := range c.Env {
					if e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil {
						got[e.Name] = e.ValueFrom.ResourceFieldRef.Resource
					}
				}
				if diff := cmp.Diff(map[string]string{"GOMAXPROCS": "limits.cpu"}, got); diff != "" {
					t.Errorf("resourceFieldRef variables (-want +got):\n%s", diff)
				}
				if c.Resources.Limits.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
					t.Errorf("without limits GOMAXPROCS/GOMEMLIMIT would be the node's capacity")
				}
			})
			// The Go heap is not all of a process's memory (goroutine stacks, the runtime's own
			// structures): a soft limit at 100 % of the container's leaves the GC no room
			// before the OOM killer.
			t.Run(fmt.Sprintf("%s: the %s's GOMEMLIMIT leaves about 10 %% of its memory limit to non-heap memory", cmpOr(file, "defaults"), owner), func(t *testing.T) {
				limit := c.Resources.Limits.Memory().Value()
				var value string
				for _, e := range c.Env {
					if e.Name == "GOMEMLIMIT" {
						value = e.Value
					}
				}
				got, err := goMemLimitBytes(value)
				if err != nil {
					t.Fatalf("GOMEMLIMIT %q: %v", value, err)
				}
				if ratio := float64(got) / float64(limit); ratio < 0.85 || ratio > 0.92 {
					t.Errorf("GOMEMLIMIT = %d bytes, %.0f%% of the %d-byte limit, want about 90%%", got, ratio*100, limit)
				}
			})
		}
	}
}

func TestGOMEMLIMITReadsEveryFormOfMemoryLimit(t *testing.T) {
	for limit, want := range map[string]int64{
		"256Mi":     241591910,  // 0.9 × 268435456
		"1.5Gi":     1449551462, // 0.9 × 1610612736
		"500M":      450000000,
		"268435456": 241591910,
	} {
		t.Run(limit, func(t *testing.T) {
			m := render(t, "", "resources.limits.memory="+limit)
			for _, e := range container(t, appDeployment(t, m).Spec.Template.Spec, "cacheside").Env {
				if e.Name == "GOMEMLIMIT" {
					if got, err := goMemLimitBytes(e.Value); err != nil || got != want {
						t.Errorf("GOMEMLIMIT = %q, want %d", e.Value, want)
					}
					return
				}
			}
			t.Error("no GOMEMLIMIT")
		})
	}
	t.Run("no memory limit, no GOMEMLIMIT", func(t *testing.T) {
		m := render(t, "", "resources.limits.memory=null")
		for _, e := range container(t, appDeployment(t, m).Spec.Template.Spec, "cacheside").Env {
			if e.Name == "GOMEMLIMIT" {
				t.Errorf("GOMEMLIMIT = %q without a memory limit", e.Value)
			}
		}
	})
}

// goMemLimitBytes parses GOMEMLIMIT as the Go runtime does: a number of bytes with an optional B, KiB,
// MiB, GiB or TiB suffix.
func goMemLimitBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		factor int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	factor := int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, factor = n, u.factor
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("not a positive number of bytes")
	}
	return n * factor, nil
}

func TestTheSchemaCoversExactlyTheServiceSettingsTheChartDoesNotSetItself(t *testing.T) {
	var schema struct {
		Properties struct {
			Config struct {
				AdditionalProperties bool                       `json:"additionalProperties"`
				Properties           map[string]json.RawMessage `json:"properties"`
			} `json:"config"`
		} `json:"properties"`
		Definitions map[string]struct {
			Type string `json:"type"`
		} `json:"definitions"`
	}
	if err := json.Unmarshal(mustRead(t, chartDir+"/values.schema.json"), &schema); err != nil {
		t.Fatal(err)
	}
	cfg := schema.Properties.Config
	if cfg.AdditionalProperties {
		t.Error("config must reject unknown keys (additionalProperties: false)")
	}

	t.Run("every service variable is either a config key or set by the chart", func(t *testing.T) {
		var fromVars []string
		for _, v := range config.Vars() {
			fromVars = append(fromVars, v.Name)
		}
		got := append(append(slices.Collect(maps.Keys(cfg.Properties)), chartManagedVars...), slices.Collect(maps.Keys(neverSetVars))...)
		slices.Sort(got)
		slices.Sort(fromVars)
		if diff := cmp.Diff(fromVars, got); diff != "" {
			t.Errorf("schema config keys + chart-managed variables vs config.Vars() (-service +chart):\n%s", diff)
		}
	})

	t.Run("every config key has the JSON type of the service variable", func(t *testing.T) {
		jsonType := map[string]string{
			"duration": "string", "integer": "integer", "float": "number", "bool": "boolean", "string": "string",
			"list": "string", // comma-separated, as envconfig reads a slice
		}
		for _, v := range config.Vars() {
			raw, ok := cfg.Properties[v.Name]
			if !ok {
				continue
			}
			var p struct {
				Type string `json:"type"`
				Ref  string `json:"$ref"`
			}
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatal(err)
			}
			got := p.Type
			if p.Ref != "" {
				got = schema.Definitions[strings.TrimPrefix(p.Ref, "#/definitions/")].Type
			}
			if got != jsonType[v.Type] {
				t.Errorf("%s is a %s in the service, %q in the schema", v.Name, v.Type, got)
			}
			if v.Type == "duration" && p.Ref != "#/definitions/duration" {
				t.Errorf("%s is a duration: use #/definitions/duration", v.Name)
			}
		}
	})
}

func TestConfigValuesReachTheConfigMapAsTheServiceParsesThem(t *testing.T) {
	m := render(t, "ha-values.yaml")
	data := appConfigMap(t, m).Data
	want := map[string]string{
		"LOG_LEVEL":                   "warn",
		"CACHE_TTL":                   "10m",
		"CACHE_TTL_JITTER":            "0.2",
		"HTTP_MAX_BODY_BYTES":         "2097152", // not 2.097152e+06
		"DATABASE_MAX_CONNS":          "20",
		"DATABASE_MIGRATE_ON_START":   "false",
		"CACHE_LOCAL_ENABLED":         "true",
		"CACHE_LOCAL_MAX_BYTES":       "33554432",
		"REPLICATION_SLOT":            "cacheside_prod",
		"REPLICATION_STATUS_INTERVAL": "5s",
		"SHUTDOWN_TIMEOUT":            "30s",
		"REDIS_MODE":                  "standalone",
		"HTTP_TRUSTED_PROXIES":        "10.0.0.0/8,fd00::/8",
		"HTTP_MAX_IN_FLIGHT":          "512",
		"RATE_LIMIT_READS_PER_SECOND": "100",
	}
	got := map[string]string{}
	for k := range want {
		got[k] = data[k]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ConfigMap data (-want +got):\n%s", diff)
	}
}

func TestTheContainerListensWhereTheServiceDoes(t *testing.T) {
	port := map[string]string{}
	for _, v := range config.Vars() {
		if v.Name == "HTTP_ADDR" || v.Name == "ADMIN_ADDR" {
			_, p, err := net.SplitHostPort(v.Default)
			if err != nil {
				t.Fatalf("%s default %q: %v", v.Name, v.Default, err)
			}
			port[v.Name] = p
		}
	}
	m := render(t, "")
	c := container(t, appDeployment(t, m).Spec.Template.Spec, "cacheside")
	want := []corev1.ContainerPort{
		{Name: "http", ContainerPort: int32(mustAtoi(t, port["HTTP_ADDR"])), Protocol: corev1.ProtocolTCP},
		{Name: "admin", ContainerPort: int32(mustAtoi(t, port["ADMIN_ADDR"])), Protocol: corev1.ProtocolTCP},
	}
	if diff := cmp.Diff(want, c.Ports); diff != "" {
		t.Errorf("container ports (-want +got):\n%s", diff)
	}
	// Readiness on /readyz (ready once Postgres answered, through outages after); liveness and the startup probe
	// on /healthz, which never depends on Postgres or Redis, so an outage restarts nothing.
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
		wantPath := map[string]string{"liveness": "/healthz", "readiness": "/readyz", "startup": "/healthz"}[name]
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != wantPath || p.HTTPGet.Port.String() != "http" {
			t.Errorf("%s probe = %+v, want GET %s on port http", name, p, wantPath)
		}
	}
}

func TestPodsGetLongerToStopThanTheServiceTakesToDrain(t *testing.T) {
	cases := []struct {
		name, file, kube string
		wantPreStop      int64
	}{
		{"with the defaults, a preStop sleep then SHUTDOWN_TIMEOUT fit in the grace period", "", "", 5},
		{"with the HA values, the longer timeouts still fit", "ha-values.yaml", "", 10},
		{"on Kubernetes 1.29, which lacks the sleep action, there is no preStop", "", "v1.29.5", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := renderWith(renderOptions{kubeVersion: tc.kube}, tc.file)
			if err != nil {
				t.Fatal(err)
			}
			d := appDeployment(t, m)
			shutdown, err := time.ParseDuration(appConfigMap(t, m).Data["SHUTDOWN_TIMEOUT"])
			if err != nil {
				t.Fatal(err)
			}
			c := container(t, d.Spec.Template.Spec, "cacheside")
			var preStop int64
			if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
				preStop = c.Lifecycle.PreStop.Sleep.Seconds
			}
			if preStop != tc.wantPreStop {
				t.Errorf("preStop sleep = %ds, want %ds", preStop, tc.wantPreStop)
			}
			grace := time.Duration(*d.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
			if need := time.Duration(preStop)*time.Second + shutdown; grace <= need {
				t.Errorf("terminationGracePeriodSeconds = %s, want more than preStop + SHUTDOWN_TIMEOUT = %s", grace, need)
			}
		})
	}
}

func TestHelmTestChecksReadinessAndACacheRoundTrip(t *testing.T) {
	m := render(t, "")
	pod := only(t, m, func(p *corev1.Pod) bool { return component("test")(p) })
	if got := pod.Annotations["helm.sh/hook"]; got != "test" {
		t.Errorf("helm.sh/hook = %q, want test", got)
	}
	script := strings.Join(pod.Spec.Containers[0].Args, "\n")
	for _, want := range []string{"/readyz", "POST", "/samples", "X-Cache", "HIT"} {
		if !strings.Contains(script, want) {
			t.Errorf("the test script does not mention %q", want)
		}
	}
	svc := only(t, m, func(s *corev1.Service) bool { return component("server")(s) })
	if want := fmt.Sprintf("http://%s:%d", svc.Name, svc.Spec.Ports[0].Port); pod.Spec.Containers[0].Env[0].Value != want {
		t.Errorf("BASE_URL = %q, want %q", pod.Spec.Containers[0].Env[0].Value, want)
	}
}

func TestNotesSayHowToReachTheServiceAndJaeger(t *testing.T) {
	cases := []struct {
		name, file string
		want       []string
	}{
		{"by default, a port-forward and how to turn tracing on", "", []string{
			"kubectl -n demo-ns port-forward svc/demo-cacheside 8080:80",
			"helm test demo -n demo-ns",
			"Tracing is off",
		}},
		{"with tracing on, the Jaeger UI's port-forward", "external-values.yaml", []string{
			"kubectl -n observability port-forward svc/jaeger-collector 16686:16686",
		}},
		{"with an Ingress, its URL", "ha-values.yaml", []string{"https://cacheside.example.com/"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			notes := render(t, tc.file).Notes
			for _, w := range tc.want {
				if !strings.Contains(notes, w) {
					t.Errorf("NOTES lack %q:\n%s", w, notes)
				}
			}
		})
	}
}

func TestTheAppConnectsToTheBundledServicesByTheirRenderedNames(t *testing.T) {
	cases := []struct {
		name, file string
		set        []string
	}{
		{"with the defaults", "", nil},
		{"with Valkey and passwords from existing Secrets", "bundled-existing-secrets-values.yaml", nil},
		{"with renamed subcharts", "", []string{"redis.fullnameOverride=cache", "postgresql.fullnameOverride=db"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := render(t, tc.file, tc.set...)
			env := map[string]string{}
			for _, e := range container(t, appDeployment(t, m).Spec.Template.Spec, "cacheside").Env {
				env[e.Name] = e.Value
			}
			for _, v := range []struct{ name, portName string }{{"DATABASE_URL", "postgres"}, {"REDIS_URL", "redis"}} {
				u, err := url.Parse(varRef.ReplaceAllString(env[v.name], "x"))
				if err != nil {
					t.Fatalf("%s: %v", v.name, err)
				}
				svc := all(m, func(s *corev1.Service) bool {
					return s.Name == u.Hostname() && s.Spec.ClusterIP != corev1.ClusterIPNone
				})
				if len(svc) != 1 {
					t.Fatalf("%s points at %s, which is not a rendered Service", v.name, u.Host)
				}
				if got := strconv.Itoa(int(svc[0].Spec.Ports[0].Port)); got != u.Port() || svc[0].Spec.Ports[0].Name != v.portName {
					t.Errorf("%s uses port %s, the Service %s serves %s on %s", v.name, u.Port(), svc[0].Name, v.portName, got)
				}
			}
		})
	}
}

func TestEverySecretAPodReadsIsRenderedOrNamedInTheValues(t *testing.T) {
	for _, file := range ciValuesFiles(t) {
		t.Run(file, func(t *testing.T) {
			vals, err := common.ReadValuesFile(ciPath(file))
			if err != nil {
				t.Fatal(err)
			}
			external := map[string]bool{}
			collectExistingSecrets(vals, external)
			m := render(t, file)
			rendered := map[string]*corev1.Secret{}
			for _, s := range all[*corev1.Secret](m, nil) {
				rendered[s.Name] = s
			}
			for _, p := range podTemplates(m) {
				for _, c := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
					for _, e := range c.Env {
						if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
							continue
						}
						ref := e.ValueFrom.SecretKeyRef
						if s, ok := rendered[ref.Name]; ok {
							if _, ok := s.Data[ref.Key]; !ok {
								t.Errorf("%s %s: Secret %s has no key %s", p.Owner, e.Name, ref.Name, ref.Key)
							}
						} else if !external[ref.Name] {
							t.Errorf("%s %s: Secret %s is neither rendered nor an existingSecret of the values", p.Owner, e.Name, ref.Name)
						}
					}
				}
			}
		})
	}
}

func collectExistingSecrets(v any, into map[string]bool) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && k == "existingSecret" && s != "" {
				into[s] = true
			}
			// A Secret the values reference themselves (extraEnv's secretKeyRef, extraEnvFrom's secretRef).
			if ref, ok := x.(map[string]any); ok && (k == "secretKeyRef" || k == "secretRef") {
				if s, ok := ref["name"].(string); ok && s != "" {
					into[s] = true
				}
			}
			collectExistingSecrets(x, into)
		}
	case common.Values:
		collectExistingSecrets(map[string]any(v), into)
	case []any:
		for _, x := range v {
			collectExistingSecrets(x, into)
		}
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
