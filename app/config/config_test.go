package config_test

import (
	"os"
	"strings"
	"testing"

	"github.com/cacheside/cacheside/app/config"
)

func TestLoadReportsEveryBadVariableAtOnce(t *testing.T) {
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

func TestLoadAppliesDefaults(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://app@db/app")
	t.Setenv("REDIS_URL", "redis://cache:6379/0")
	cfg, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPAddr != ":8080" || cfg.CacheTTL.String() != "5m0s" || cfg.RedisMode != "standalone" || cfg.LogFormat != "json" {
		t.Errorf("defaults not applied: %+v", cfg)
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
