package config_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cacheside/cacheside/app/config"
)

// isolate unsets every variable the service reads, so a test sees only what it sets and never
// the shell's environment.
func isolate(t *testing.T) {
	t.Helper()
	for _, v := range config.Vars() {
		t.Setenv(v.Name, "") // registers the restore
		os.Unsetenv(v.Name)
	}
}

func TestLoadReportsEveryBadVariableAtOnce(t *testing.T) {
	isolate(t)
	t.Setenv("DATABASE_URL", "mysql://root:pw@db/x")
	t.Setenv("REDIS_URL", "")
	t.Setenv("CACHE_TTL", "five minutes")
	t.Setenv("CACHE_TTL_JITTER", "2")
	t.Setenv("SHUTDOWN_TIMEOUT", "-1s")
	t.Setenv("LOG_FORMAT", "xml")
	t.Setenv("CACHE_STALE_GRACE", "-1h")
	t.Setenv("CACHE_EARLY_REFRESH_BETA", "-1")
	t.Setenv("HTTP_CACHE_STALE_IF_ERROR", "-5s")
	_, err := config.Load()
	if err == nil {
		t.Fatal("Load accepted bad configuration")
	}
	for _, name := range []string{"DATABASE_URL", "REDIS_URL", "CACHE_TTL", "CACHE_TTL_JITTER", "SHUTDOWN_TIMEOUT", "LOG_FORMAT",
		"CACHE_STALE_GRACE", "CACHE_EARLY_REFRESH_BETA", "HTTP_CACHE_STALE_IF_ERROR"} {
		if !strings.Contains(err.Error(), name+":") {
			t.Errorf("error does not name %s:\n%v", name, err)
		}
	}
	if strings.Count(err.Error(), "CACHE_TTL:") != 1 {
		t.Errorf("an unparsable variable is reported more than once:\n%v", err)
	}
	if strings.Contains(err.Error(), ":pw@") {
		t.Errorf("the error echoes a password:\n%v", err)
	}
}

// TestLoadAppliesTheDocumentedDefaults: with nothing set but the two URLs, every variable takes
// the default its tag documents (and "cacheside env" prints): the same configuration as setting
// each one to that default explicitly.
func TestLoadAppliesTheDocumentedDefaults(t *testing.T) {
	isolate(t)
	t.Setenv("DATABASE_URL", "postgres://app@db/app")
	t.Setenv("REDIS_URL", "redis://cache:6379/0")
	t.Setenv("API_TOKENS", token)
	implicit, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range config.Vars() {
		if v.Default != "" {
			t.Setenv(v.Name, v.Default)
		}
	}
	explicit, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(explicit, implicit); diff != "" {
		t.Errorf("defaults differ from their documentation (-documented +applied):\n%s", diff)
	}
	if implicit.HTTPAddr != ":8080" || implicit.CacheTTL.String() != "5m0s" || implicit.CacheInvalidationTimeout.String() != "1s" {
		t.Errorf("defaults not applied: %+v", implicit)
	}
}

func TestANearCacheNeedsRoom(t *testing.T) {
	isolate(t)
	t.Setenv("DATABASE_URL", "postgres://app@db/app")
	t.Setenv("REDIS_URL", "redis://cache:6379/0")
	t.Setenv("API_TOKENS", token)
	t.Setenv("CACHE_LOCAL_ENABLED", "true")
	t.Setenv("CACHE_LOCAL_MAX_BYTES", "0")
	if _, err := config.Load(); err == nil || !strings.Contains(err.Error(), "CACHE_LOCAL_MAX_BYTES:") {
		t.Errorf("a near-cache of 0 bytes was accepted: %v", err)
	}
	t.Setenv("CACHE_LOCAL_ENABLED", "false")
	if _, err := config.Load(); err != nil {
		t.Errorf("0 bytes with the near-cache off was refused: %v", err)
	}
}

// TestALeaseOutlivesNoLoad: a lease longer than DATABASE_TIMEOUT would only hold the other
// replicas up longer when its holder dies, since no load outlives DATABASE_TIMEOUT.
func TestALeaseOutlivesNoLoad(t *testing.T) {
	for _, tc := range []struct {
		ttl string
		ok  bool
	}{{"0s", true}, {"1s", true}, {"5s", true}, {"6s", false}, {"-1s", false}, {"100us", false}} {
		t.Run("CACHE_LEASE_TTL="+tc.ttl, func(t *testing.T) {
			isolate(t)
			t.Setenv("DATABASE_URL", "postgres://app@db/app")
			t.Setenv("REDIS_URL", "redis://cache:6379/0")
			t.Setenv("DATABASE_TIMEOUT", "5s")
			t.Setenv("API_TOKENS", token)
			t.Setenv("CACHE_LEASE_TTL", tc.ttl)
			_, err := config.Load()
			if got := err == nil; got != tc.ok || (err != nil && !strings.Contains(err.Error(), "CACHE_LEASE_TTL:")) {
				t.Errorf("accepted = %v (%v), want %v", got, err, tc.ok)
			}
		})
	}
}

func TestRedactHidesPasswords(t *testing.T) {
	for _, raw := range []string{"postgres://app:s3cret@db/app", "rediss://default:s3cret@cache:6380/0", "postgres://app:s3cret@db:bad port/x"} {
		if got := config.Redact(raw); strings.Contains(got, "s3cret") {
			t.Errorf("Redact(%q) = %q", raw, got)
		}
	}
}

// TestREADMEDocumentsEveryVariable keeps the README's configuration table honest.
func TestREADMEDocumentsEveryVariable(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range config.Vars() {
		if !strings.Contains(string(readme), "| `"+v.Name+"` |") {
			t.Errorf("README.md's configuration table lacks %s", v.Name)
		}
	}
}

// token is a well-formed bearer token, as hack/dev makes them.
const token = "0123456789abcdef0123456789abcdef"

// TestServingNeedsATokenOrALoudOptOut: with writes served, no token is a configuration error
// naming API_TOKENS, reported with every other bad variable; only API_AUTH_DISABLED lifts it,
// and tokens that could not be sent or guessed in a moment are refused without being echoed.
func TestServingNeedsATokenOrALoudOptOut(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string // variables named in the error; none: it loads
	}{
		{"no token is an error, with the other bad variables", map[string]string{"LOG_FORMAT": "xml"}, []string{"API_TOKENS", "LOG_FORMAT"}},
		{"an empty list is no token", map[string]string{"API_TOKENS": " , ,"}, []string{"API_TOKENS"}},
		{"one token serves", map[string]string{"API_TOKENS": token}, nil},
		{"two tokens serve, spaces around them dropped", map[string]string{"API_TOKENS": token + " , " + strings.ToUpper(token)}, nil},
		{"a short token is refused", map[string]string{"API_TOKENS": token + ",short-s3cret"}, []string{"API_TOKENS"}},
		{"a token that cannot be sent is refused", map[string]string{"API_TOKENS": token + "\"s3cret\"" + token}, []string{"API_TOKENS"}},
		{"the opt-out serves without a token", map[string]string{"API_AUTH_DISABLED": "true"}, nil},
		{"the opt-out with tokens is ambiguous", map[string]string{"API_AUTH_DISABLED": "true", "API_TOKENS": token}, []string{"API_AUTH_DISABLED"}},
		{"guarded reads need tokens", map[string]string{"API_AUTH_DISABLED": "true", "API_AUTH_READS": "true"}, []string{"API_AUTH_READS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			t.Setenv("DATABASE_URL", "postgres://app@db/app")
			t.Setenv("REDIS_URL", "redis://cache:6379/0")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cfg, err := config.Load()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("loaded %+v, want an error naming %v", cfg, tc.want)
			}
			for _, name := range tc.want {
				if !strings.Contains(err.Error(), name+":") {
					t.Errorf("the error does not name %s:\n%v", name, err)
				}
			}
			if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), token) {
				t.Errorf("the error echoes a token:\n%v", err)
			}
		})
	}
}

// TestCommandsNeedNoToken: migrate and seed serve no requests, so the chart's migration Job is
// not handed the tokens; their configuration loads without them.
func TestCommandsNeedNoToken(t *testing.T) {
	isolate(t)
	t.Setenv("DATABASE_URL", "postgres://app@db/app")
	t.Setenv("REDIS_URL", "redis://cache:6379/0")
	if _, err := config.LoadForCommand(); err != nil {
		t.Errorf("a command's configuration without a token: %v", err)
	}
}

// TestTokensAreNeverPrinted: however the configuration is printed or logged, the tokens are not.
func TestTokensAreNeverPrinted(t *testing.T) {
	isolate(t)
	t.Setenv("DATABASE_URL", "postgres://app@db/app")
	t.Setenv("REDIS_URL", "redis://cache:6379/0")
	t.Setenv("API_TOKENS", token+","+strings.ToUpper(token))
	cfg, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.APITokens) != 2 || cfg.APITokens[1] != strings.ToUpper(token) {
		t.Fatalf("tokens read as %d, want both", len(cfg.APITokens))
	}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("starting", "config", cfg)
	slog.New(slog.NewTextHandler(&logged, nil)).Info("starting", "config", cfg, "tokens", cfg.APITokens)
	for _, out := range []string{fmt.Sprintf("%v %+v %#v %s %q", cfg, cfg, cfg, cfg.APITokens, cfg.APITokens), logged.String()} {
		if strings.Contains(strings.ToLower(out), token) {
			t.Errorf("a token was printed: %s", out)
		}
	}
	if !strings.Contains(logged.String(), "(2 tokens withheld)") {
		t.Errorf("the log does not say how many tokens there are: %s", logged.String())
	}
}

// TestMetricsCannotShareTheAPIPort: the admin port exists so that a Service or Ingress for
// clients can leave metrics out; the same address for both would put them back.
func TestMetricsCannotShareTheAPIPort(t *testing.T) {
	isolate(t)
	t.Setenv("DATABASE_URL", "postgres://app@db/app")
	t.Setenv("REDIS_URL", "redis://cache:6379/0")
	t.Setenv("API_TOKENS", token)
	cfg, err := config.Load()
	if err != nil || cfg.AdminAddr != ":9090" {
		t.Fatalf("default ADMIN_ADDR = %q, %v; want :9090", cfg.AdminAddr, err)
	}
	for _, addr := range []string{":8080", ""} {
		t.Setenv("ADMIN_ADDR", addr)
		if _, err := config.Load(); err == nil || !strings.Contains(err.Error(), "ADMIN_ADDR:") {
			t.Errorf("ADMIN_ADDR=%q was accepted: %v", addr, err)
		}
	}
}
