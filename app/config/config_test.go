package config_test

import (
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
	_, err := config.Load()
	if err == nil {
		t.Fatal("Load accepted bad configuration")
	}
	for _, name := range []string{"DATABASE_URL", "REDIS_URL", "CACHE_TTL", "CACHE_TTL_JITTER", "SHUTDOWN_TIMEOUT", "LOG_FORMAT"} {
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
