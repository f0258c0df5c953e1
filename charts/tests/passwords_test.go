package chart_test

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v4/pkg/action"
	corev1 "k8s.io/api/core/v1"
)

// Argo CD renders the chart with `helm template` on every refresh, where every `lookup` answers nothing.
// A password generated there would differ on each render: the app would never be in sync, and every sync
// would move the Secret away from the password that Postgres' data directory keeps, so the pods would fail
// to log in at their next restart. Such a render must either be the same every time or stop with a message
// that says what to set.
func TestRenderersWithoutTheClusterGetTheSameSecretsOrAClearMessage(t *testing.T) {
	offline := renderOptions{offline: true}

	t.Run("the defaults stop with a message asking for the password or an existing Secret", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			set  []string
			want []string
		}{
			{"for Postgres", []string{"redis.auth.password=chosen", "auth.tokens={" + apiToken + "}"}, []string{
				"postgresql.auth.password is empty and this render cannot see the cluster",
				"postgresql.auth.existingSecret", "Argo CD", "create namespace demo-ns first",
			}},
			{"for Redis", []string{"postgresql.auth.password=chosen", "auth.tokens={" + apiToken + "}"}, []string{
				"redis.auth.password is empty and this render cannot see the cluster", "redis.auth.existingSecret",
			}},
			{"for the API tokens", []string{"postgresql.auth.password=chosen", "redis.auth.password=chosen"}, []string{
				"auth.tokens is empty and this render cannot see the cluster", "auth.existingSecret", "Argo CD", "create namespace demo-ns first",
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := renderWith(offline, "", tc.set...)
				if err == nil {
					t.Fatal("rendered without the cluster and with a generated password")
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
			})
		}
	})

	stable := []struct {
		name, file string
		set        []string
	}{
		{"explicit passwords", "", []string{"postgresql.auth.password=chosen-p", "redis.auth.password=chosen-r", "auth.tokens={" + apiToken + "}"}},
		{"existing Secrets for the bundled services", "bundled-existing-secrets-values.yaml", nil},
		{"external services", "existing-secrets-values.yaml", nil},
		{"external services by URL", "external-values.yaml", nil},
		{"Redis without a password", "", []string{"postgresql.auth.password=chosen-p", "redis.auth.enabled=false", "auth.tokens={" + apiToken + "}"}},
	}
	for _, tc := range stable {
		t.Run("with "+tc.name+", two renders are the same", func(t *testing.T) {
			first, err := install(offline, tc.file, tc.set...)
			if err != nil {
				t.Fatal(err)
			}
			second, err := install(offline, tc.file, tc.set...)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(first.Manifest, second.Manifest); diff != "" {
				t.Errorf("two renders differ (-first +second):\n%s", diff)
			}
		})
	}

	t.Run("an explicit password lands in the Secret", func(t *testing.T) {
		m, err := renderWith(offline, "", "postgresql.auth.password=chosen-p", "redis.auth.password=chosen-r", "auth.tokens={"+apiToken+"}")
		if err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]string{"demo-postgresql": "chosen-p", "demo-redis": "chosen-r"} {
			s := only(t, m, func(s *corev1.Secret) bool { return s.Name == name })
			if got := string(s.Data["password"]); got != want {
				t.Errorf("%s: password %q, want %q", name, got, want)
			}
		}
	})
}

// `helm install` sees the cluster: a first install into an existing namespace generates the passwords, and an
// upgrade (or a reinstall, the Postgres Secret being kept) reuses the ones stored in the Secrets.
func TestHelmKeepsGeneratingAndKeepingPasswordsWhereItSeesTheCluster(t *testing.T) {
	t.Run("a first install into an existing namespace generates them", func(t *testing.T) {
		m := render(t, "")
		for _, name := range []string{"demo-postgresql", "demo-redis"} {
			s := only(t, m, func(s *corev1.Secret) bool { return s.Name == name })
			if !generated.MatchString(string(s.Data["password"])) {
				t.Errorf("%s: password %q is not 32 generated alphanumerics", name, s.Data["password"])
			}
		}
	})
	t.Run("an upgrade keeps the stored ones, whatever else the cluster answers", func(t *testing.T) {
		stored := map[string]string{"demo-postgresql": "stored-in-initdb", "demo-redis": "stored-for-redis"}
		for _, answersConfigMap := range []bool{true, false} {
			lookup := func(apiVersion, kind, ns, name string) (map[string]any, error) {
				if kind == "Secret" && ns == namespace && stored[name] != "" {
					return map[string]any{"data": map[string]any{"password": base64.StdEncoding.EncodeToString([]byte(stored[name]))}}, nil
				}
				if answersConfigMap {
					return clusterWithNamespace(apiVersion, kind, ns, name)
				}
				return map[string]any{}, nil
			}
			m, err := renderWith(renderOptions{upgrade: true, lookup: lookup}, "", "auth.tokens={"+apiToken+"}")
			if err != nil {
				t.Fatal(err)
			}
			for name, want := range stored {
				s := only(t, m, func(s *corev1.Secret) bool { return s.Name == name })
				if got := string(s.Data["password"]); got != want {
					t.Errorf("%s: password %q, want the stored %q", name, got, want)
				}
			}
		}
	})
}

// `helm lint` renders neither an install nor an upgrade, without the cluster: it checks the templates and
// must pass on the defaults (the release workflow lints the packaged chart).
func TestHelmLintPassesOnTheDefaults(t *testing.T) {
	lint := action.NewLint()
	lint.Strict = true
	lint.WithSubcharts = true
	res := lint.Run([]string{chartDir}, map[string]any{})
	for _, err := range res.Errors {
		t.Error(err)
	}
	for _, msg := range res.Messages {
		t.Log(msg)
	}
}
