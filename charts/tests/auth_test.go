package chart_test

import (
	"encoding/base64"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// apiToken is a well-formed API token for renders that must not generate one.
const apiToken = "chosen-api-token-0123456789abcdef"

// generatedToken is what the chart generates: 40 random alphanumerics.
var generatedToken = regexp.MustCompile(`^[A-Za-z0-9]{40}$`)

// serverTokenRef returns where the server container reads API_TOKENS, failing if it does not read
// it from a Secret.
func serverTokenRef(t *testing.T, m manifest) *corev1.SecretKeySelector {
	t.Helper()
	c := container(t, appDeployment(t, m).Spec.Template.Spec, "cacheside")
	for _, e := range c.Env {
		if e.Name == "API_TOKENS" {
			if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				t.Fatalf("API_TOKENS is not read from a Secret: %+v", e)
			}
			return e.ValueFrom.SecretKeyRef
		}
	}
	t.Fatalf("the server container gets no API_TOKENS: %+v", c.Env)
	return nil
}

// The API's tokens reach the server from a Secret (the chart's, or the user's existingSecret), are kept
// across upgrades like the bundled services' passwords, and never appear in a ConfigMap, the migration
// containers, or any value of a rendered object other than the chart's Secret.
func TestAPITokensReachTheServerFromASecretOnly(t *testing.T) {
	t.Run("given tokens are stored comma-separated in the chart's Secret and read from it", func(t *testing.T) {
		other := "second-api-token-0123456789abcdef"
		m := render(t, "", "auth.tokens={"+apiToken+","+other+"}")
		ref := serverTokenRef(t, m)
		s := only(t, m, func(s *corev1.Secret) bool { return s.Name == ref.Name })
		if s.Name != "demo-cacheside" || ref.Key != "API_TOKENS" || string(s.Data["API_TOKENS"]) != apiToken+","+other {
			t.Errorf("API_TOKENS from %s/%s = %q, want both tokens from the chart's Secret", ref.Name, ref.Key, s.Data[ref.Key])
		}
	})

	t.Run("a first install generates one token", func(t *testing.T) {
		m := render(t, "")
		ref := serverTokenRef(t, m)
		s := only(t, m, func(s *corev1.Secret) bool { return s.Name == ref.Name })
		if !generatedToken.Match(s.Data["API_TOKENS"]) {
			t.Errorf("generated token %q, want 40 random alphanumerics", s.Data["API_TOKENS"])
		}
	})

	t.Run("an upgrade keeps the stored tokens", func(t *testing.T) {
		stored := "stored-old-token-0123456789,stored-new-token-0123456789"
		lookup := func(apiVersion, kind, ns, name string) (map[string]any, error) {
			if kind == "Secret" && ns == namespace && name == "demo-cacheside" {
				return map[string]any{"data": map[string]any{"API_TOKENS": base64.StdEncoding.EncodeToString([]byte(stored))}}, nil
			}
			return clusterWithNamespace(apiVersion, kind, ns, name)
		}
		m, err := renderWith(renderOptions{upgrade: true, lookup: lookup}, "")
		if err != nil {
			t.Fatal(err)
		}
		s := only(t, m, func(s *corev1.Secret) bool { return s.Name == "demo-cacheside" })
		if got := string(s.Data["API_TOKENS"]); got != stored {
			t.Errorf("API_TOKENS %q after an upgrade, want the stored %q", got, stored)
		}
	})

	t.Run("an existingSecret is read as it is, and the chart stores no token", func(t *testing.T) {
		m := render(t, "", "auth.existingSecret=my-tokens", "auth.existingSecretTokensKey=tokens")
		if ref := serverTokenRef(t, m); ref.Name != "my-tokens" || ref.Key != "tokens" {
			t.Errorf("API_TOKENS from %s/%s, want my-tokens/tokens", ref.Name, ref.Key)
		}
		for _, s := range all[*corev1.Secret](m, nil) {
			if _, ok := s.Data["API_TOKENS"]; ok {
				t.Errorf("Secret %s holds API_TOKENS though existingSecret is set", s.Name)
			}
		}
	})

	t.Run("an existingSecret wins over tokens, as it does over the bundled services' passwords", func(t *testing.T) {
		m := render(t, "", "auth.existingSecret=my-tokens", "auth.tokens={"+apiToken+"}")
		if ref := serverTokenRef(t, m); ref.Name != "my-tokens" {
			t.Errorf("API_TOKENS from %s, want my-tokens", ref.Name)
		}
		for _, s := range all[*corev1.Secret](m, nil) {
			if strings.Contains(string(s.Data["API_TOKENS"]), apiToken) {
				t.Errorf("Secret %s stores the ignored tokens", s.Name)
			}
		}
	})

	t.Run("a short token is refused by the schema", func(t *testing.T) {
		if _, err := renderWith(renderOptions{}, "", "auth.tokens={short}"); err == nil {
			t.Error("rendered with a 5-character token")
		}
	})

	t.Run("tokens cannot be put in config, so never in the ConfigMap", func(t *testing.T) {
		for _, name := range []string{"API_TOKENS", "API_AUTH_DISABLED"} {
			if _, err := renderWith(renderOptions{}, "", "auth.tokens={"+apiToken+"}", "config."+name+"="+apiToken); err == nil {
				t.Errorf("config.%s was accepted", name)
			}
		}
	})

	for _, file := range append(ciValuesFiles(t), "") {
		t.Run("with "+cmpOr(file, "the defaults")+", no token outside the chart's Secret, no opt-out, migrations without tokens", func(t *testing.T) {
			m := render(t, file, "auth.tokens={"+apiToken+"}")
			for _, cm := range all[*corev1.ConfigMap](m, nil) {
				for k, v := range cm.Data {
					if strings.HasPrefix(k, "API_TOKENS") || strings.Contains(v, apiToken) || strings.Contains(v, "s3cr3t-api-token") {
						t.Errorf("ConfigMap %s holds a token under %s", cm.Name, k)
					}
				}
			}
			for name, c := range appContainers(t, m) {
				for _, e := range c.Env {
					if e.Name == "API_AUTH_DISABLED" {
						t.Errorf("%s gets API_AUTH_DISABLED", name)
					}
					if strings.Contains(e.Value, apiToken) || strings.Contains(e.Value, "s3cr3t-api-token") {
						t.Errorf("%s has a token inline in %s", name, e.Name)
					}
					if e.Name == "API_TOKENS" && name != "Deployment" {
						t.Errorf("%s, which only migrates, gets the API tokens", name)
					}
				}
			}
			serverTokenRef(t, m)
		})
	}

	t.Run("auth.reads sets API_AUTH_READS on the server", func(t *testing.T) {
		m := render(t, "", "auth.tokens={"+apiToken+"}", "auth.reads=true")
		c := container(t, appDeployment(t, m).Spec.Template.Spec, "cacheside")
		found := false
		for _, e := range c.Env {
			found = found || e.Name == "API_AUTH_READS" && e.Value == "true"
		}
		if !found {
			t.Errorf("no API_AUTH_READS=true in %+v", c.Env)
		}
	})
}

// `helm test` refuses a write without a token and writes with the first of the server's tokens, read
// from the same Secret key as the server's.
func TestHelmTestWritesWithTheServersToken(t *testing.T) {
	for _, set := range [][]string{nil, {"auth.existingSecret=my-tokens"}} {
		m := render(t, "", set...)
		ref := serverTokenRef(t, m)
		pod := only(t, m, func(p *corev1.Pod) bool { return component("test")(p) })
		c := pod.Spec.Containers[0]
		var got *corev1.SecretKeySelector
		for _, e := range c.Env {
			if e.Name == "API_TOKENS" && e.ValueFrom != nil {
				got = e.ValueFrom.SecretKeyRef
			}
		}
		if got == nil || got.Name != ref.Name || got.Key != ref.Key {
			t.Errorf("the test pod reads API_TOKENS from %+v, want the server's %+v", got, ref)
		}
		script := strings.Join(c.Args, "\n")
		for _, want := range []string{`Authorization: Bearer $token`, `"$status" = 401`, `-X DELETE -H "$auth"`} {
			if !strings.Contains(script, want) {
				t.Errorf("the test script lacks %q", want)
			}
		}
	}
}
