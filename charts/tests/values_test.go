package chart_test

import (
	"encoding/base64"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
)

func TestTheSchemaRejectsMistakesAndAcceptsGlobal(t *testing.T) {
	cases := []struct {
		name    string
		set     []string
		wantErr string // empty: must render
	}{
		{"a misspelt key is rejected", []string{"replicaCont=2"}, "additional properties 'replicaCont' not allowed"},
		{"a string where a number belongs is rejected", []string{"replicaCount=two"}, "/replicaCount"},
		{"an unknown service setting is rejected", []string{"config.CACHE_TTLL=5m"}, "'CACHE_TTLL' not allowed"},
		{"a number where a duration belongs is rejected", []string{"config.CACHE_TTL=300"}, "/config/CACHE_TTL"},
		{"a log level the service does not know is rejected", []string{"config.LOG_LEVEL=verbose"}, "/config/LOG_LEVEL"},
		{"a setting the chart owns is rejected in config", []string{"config.DATABASE_URL=postgres://x"}, "'DATABASE_URL' not allowed"},
		{"a misspelt subchart key is rejected by the subchart's schema", []string{"redis.maxmemry=1gb"}, "'maxmemry' not allowed"},
		{"a wrong type in externalDatabase is rejected", []string{"externalDatabase.port=fivefourthreetwo"}, "/externalDatabase/port"},
		{"an OTLP protocol outside the spec is rejected", []string{"otel.protocol=thrift"}, "/otel/protocol"},
		{"global values are accepted, as a parent chart would pass them", []string{"global.imageRegistry=mirror.internal", "global.labels.team=x"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := renderWith(renderOptions{}, "", tc.set...)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("render failed: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("render succeeded, want an error mentioning %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("error %q does not mention %q", err, tc.wantErr)
			}
		})
	}
}

func TestRenderingStopsWithAClearMessageWhenAServiceIsMissing(t *testing.T) {
	cases := []struct {
		name    string
		set     []string
		wantErr string
	}{
		{
			"without the bundled Redis nor an external one",
			[]string{"redis.enabled=false"},
			"redis.enabled=false needs an external Redis: set externalRedis.url, externalRedis.existingSecret with externalRedis.existingSecretUrlKey, or externalRedis.host",
		},
		{
			"without the bundled Postgres nor an external one",
			[]string{"postgresql.enabled=false"},
			"postgresql.enabled=false needs an external Postgres: set externalDatabase.url",
		},
		{
			"with two ways to reach the external Redis",
			[]string{"redis.enabled=false", "externalRedis.url=redis://r:6379/0", "externalRedis.host=r"},
			"externalRedis: set only one of url, existingSecretUrlKey or host",
		},
		{
			"with an external Postgres host but no password",
			[]string{"postgresql.enabled=false", "externalDatabase.host=db"},
			"externalDatabase.host needs the password",
		},
		{
			"with an external Redis while the bundled one is on",
			[]string{"externalRedis.url=redis://r:6379/0"},
			"externalRedis is only used with redis.enabled=false",
		},
		{
			"with tracing on but nowhere to send traces",
			[]string{"otel.enabled=true"},
			"otel.enabled=true needs otel.endpoint",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := renderWith(renderOptions{}, "", tc.set...)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want one saying %q", err, tc.wantErr)
			}
		})
	}
}

var generated = regexp.MustCompile(`^[A-Za-z0-9]{32}$`)

func TestBundledPasswordsAreGeneratedOnceAndKeptAcrossUpgrades(t *testing.T) {
	secretNames := []string{"demo-redis", "demo-postgresql"}
	passwords := func(t *testing.T, m manifest) map[string]string {
		t.Helper()
		out := map[string]string{}
		for _, name := range secretNames {
			s := only(t, m, func(s *corev1.Secret) bool { return s.Name == name })
			out[name] = string(s.Data["password"])
		}
		return out
	}

	t.Run("a first install generates a random password for each", func(t *testing.T) {
		first := passwords(t, render(t, ""))
		second := passwords(t, render(t, ""))
		for _, name := range secretNames {
			if !generated.MatchString(first[name]) {
				t.Errorf("%s: generated password %q is not 32 alphanumerics", name, first[name])
			}
			if first[name] == second[name] {
				t.Errorf("%s: two installs got the same password", name)
			}
		}
	})

	t.Run("an upgrade reuses the password found in the cluster", func(t *testing.T) {
		var lookedUp []string
		lookup := func(apiVersion, kind, ns, name string) (map[string]any, error) {
			lookedUp = append(lookedUp, kind+" "+ns+"/"+name)
			if apiVersion != "v1" || kind != "Secret" || ns != namespace {
				return map[string]any{}, nil
			}
			return map[string]any{"data": map[string]any{
				"password": base64.StdEncoding.EncodeToString([]byte("kept-" + name)),
			}}, nil
		}
		m, err := renderWith(renderOptions{upgrade: true, lookup: lookup}, "", "auth.tokens={"+apiToken+"}")
		if err != nil {
			t.Fatal(err)
		}
		got := passwords(t, m)
		for _, name := range secretNames {
			if got[name] != "kept-"+name {
				t.Errorf("%s: password %q, want the existing one (lookups: %v)", name, got[name], lookedUp)
			}
		}
	})

	t.Run("an explicit password wins", func(t *testing.T) {
		got := passwords(t, render(t, "", "redis.auth.password=chosen-r", "postgresql.auth.password=chosen-p"))
		if got["demo-redis"] != "chosen-r" || got["demo-postgresql"] != "chosen-p" {
			t.Errorf("passwords = %v", got)
		}
	})

	t.Run("the Postgres Secret outlives helm uninstall, like its volume", func(t *testing.T) {
		s := only(t, render(t, ""), func(s *corev1.Secret) bool { return s.Name == "demo-postgresql" })
		if got := s.Annotations["helm.sh/resource-policy"]; got != "keep" {
			t.Errorf("helm.sh/resource-policy = %q, want keep", got)
		}
	})
}

func TestEveryValueIsDocumentedForHelmDocs(t *testing.T) {
	for _, file := range []string{"values.yaml", "charts/redis/values.yaml", "charts/postgresql/values.yaml"} {
		t.Run(file+" documents every key with a # -- comment", func(t *testing.T) {
			var doc yaml.Node
			if err := yaml.Unmarshal(mustRead(t, filepath.Join(chartDir, file)), &doc); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string(nil), undocumented(doc.Content[0], "")); diff != "" {
				t.Errorf("keys without a helm-docs comment (-want +got):\n%s", diff)
			}
		})
	}
}

// undocumented lists the keys helm-docs would show without a description: a key is documented by a
// "# --" comment above it, which also covers everything under it; a mapping without one is fine when
// each of its keys is documented (helm-docs then lists those instead).
func undocumented(n *yaml.Node, prefix string) []string {
	var out []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, value := n.Content[i], n.Content[i+1]
		path := strings.TrimPrefix(prefix+"."+key.Value, ".")
		switch {
		case strings.Contains(key.HeadComment, "# --"):
		case value.Kind == yaml.MappingNode && len(value.Content) > 0:
			out = append(out, undocumented(value, path)...)
		default:
			out = append(out, path)
		}
	}
	return out
}
