// Package testenv gives tests real Postgres and Redis: an isolated database and key namespace on
// the shared servers named by TEST_DATABASE_URL and TEST_REDIS_URL (make test starts throwaway
// ones), and private servers a test may stop, pause and restart to show faults.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/cacheside/cacheside/app/config"
	"github.com/cacheside/cacheside/app/platform/postgres"
	"github.com/cacheside/cacheside/app/platform/redisclient"
	"github.com/cacheside/cacheside/app/service"
)

func mustEnv(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: run the tests with `make test`, which starts Postgres and Redis, or point %s at a server", name, name)
	}
	return v
}

// Name returns a short random identifier usable in database and key names.
func Name(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// Database creates a fresh, migrated database on the shared server and returns its URL. It is
// dropped when the test ends.
func Database(t testing.TB) string {
	t.Helper()
	admin := mustEnv(t, "TEST_DATABASE_URL")
	return CreateDatabase(t, admin)
}

// CreateDatabase creates a fresh, migrated database on the server at adminURL (a role that may
// create databases) and drops it when the test ends.
func CreateDatabase(t testing.TB, adminURL string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := Name("cacheside_test_")
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Fatalf("connecting to test postgres: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, adminURL)
		if err != nil {
			t.Logf("dropping %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if err := dropDatabase(ctx, conn, name); err != nil {
			t.Logf("dropping %s: %v", name, err)
		}
	})
	u, err := neturl.Parse(adminURL)
	if err != nil {
		t.Fatalf("parsing database url: %v", err)
	}
	u.Path = "/" + name
	dbURL := u.String()

	pool := Pool(t, dbURL)
	if err := postgres.Migrate(ctx, pool); err != nil {
		t.Fatalf("migrating test database: %v", err)
	}
	return dbURL
}

// dropDatabase drops a test database and the replication slots in it (the service under test
// creates one). DROP DATABASE refuses while a walsender streams from a slot of the database, even
// WITH (FORCE), which ends only ordinary sessions; so the slots go first: each active one's
// walsender is terminated, and each slot is dropped once inactive, until none is left. A server
// without wal_level=logical has no slots, and this is a plain DROP.
func dropDatabase(ctx context.Context, conn *pgx.Conn, name string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		left, err := dropSlots(ctx, conn, name)
		if err == nil && left == 0 {
			break
		}
		if err == nil {
			err = fmt.Errorf("%d replication slots still in it", left)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dropping its replication slots: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("dropping its replication slots: %w (last: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	_, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

// dropSlots makes one pass over the database's slots: it terminates the walsender of each active
// one and drops each inactive one. It returns how many slots it found; zero means none is left.
// A slot that became active or vanished meanwhile (a service stopping, another cleanup) is left
// for the next pass.
func dropSlots(ctx context.Context, conn *pgx.Conn, database string) (int, error) {
	type slot struct {
		name string
		pid  *int32
	}
	rows, err := conn.Query(ctx, "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = $1", database)
	if err != nil {
		return 0, err
	}
	slots, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (slot, error) {
		var s slot
		return s, row.Scan(&s.name, &s.pid)
	})
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, s := range slots {
		if s.pid != nil {
			_, err = conn.Exec(ctx, "SELECT pg_terminate_backend($1)", *s.pid)
		} else {
			_, err = conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", s.name)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("slot %s: %w", s.name, err))
		}
	}
	return len(slots), errors.Join(errs...)
}

// Pool opens a pool on dbURL, closed when the test ends.
func Pool(t testing.TB, dbURL string) *pgxpool.Pool {
	t.Helper()
	pool, err := postgres.Open(context.Background(), postgres.Options{URL: dbURL, MaxConns: 20, ConnectTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("opening pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// RedisURL returns the shared test Redis's URL.
func RedisURL(t testing.TB) string {
	t.Helper()
	return mustEnv(t, "TEST_REDIS_URL")
}

// Redis returns a client on the shared test Redis and a key prefix no other test uses; the
// prefix's keys are deleted when the test ends.
func Redis(t testing.TB) (*redis.Client, string) {
	t.Helper()
	opt, err := redis.ParseURL(RedisURL(t))
	if err != nil {
		t.Fatalf("parsing TEST_REDIS_URL: %v", err)
	}
	rdb := redis.NewClient(opt)
	prefix := Name("cstest")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		it := rdb.Scan(ctx, 0, prefix+":*", 1000).Iterator()
		for it.Next(ctx) {
			rdb.Del(ctx, it.Val())
		}
		_ = rdb.Close()
	})
	return rdb, prefix
}

// Token returns a new random bearer token, as hack/dev makes one for make run.
func Token() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// FreePort asks the kernel for a free loopback TCP port.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Eventually polls cond every interval until it holds or the deadline passes; the last
// failure message is reported.
func Eventually(t testing.TB, within time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Config returns the service's configuration as production loads it, from config.Load: every
// variable the service reads is unset (the shell's environment never leaks in), then
// DATABASE_URL names a fresh database (unless an override sets it) and REDIS_URL the shared test
// Redis, CACHE_KEY_PREFIX is private to the test (its keys are deleted at the end), API_TOKENS
// holds one random token, as a deployment's Secret would (unless an override sets API_TOKENS or
// API_AUTH_DISABLED; cfg.APITokens[0] is the token to send), and overrides ("NAME=value") are
// applied last. A test that needs another setting says so in its overrides, so defaults are what
// is tested.
func Config(t testing.TB, overrides ...string) config.Config {
	t.Helper()
	for _, v := range config.Vars() {
		t.Setenv(v.Name, "") // registers the restore
		os.Unsetenv(v.Name)
	}
	_, prefix := Redis(t)
	t.Setenv("REDIS_URL", RedisURL(t))
	t.Setenv("CACHE_KEY_PREFIX", prefix)
	if !slices.ContainsFunc(overrides, func(kv string) bool { return strings.HasPrefix(kv, "DATABASE_URL=") }) {
		t.Setenv("DATABASE_URL", Database(t))
	}
	if !slices.ContainsFunc(overrides, func(kv string) bool {
		return strings.HasPrefix(kv, "API_TOKENS=") || strings.HasPrefix(kv, "API_AUTH_DISABLED=")
	}) {
		t.Setenv("API_TOKENS", Token())
	}
	for _, kv := range overrides {
		name, value, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("override %q is not NAME=value", kv)
		}
		t.Setenv(name, value)
	}
	cfg, err := config.Load()
	if err != nil {
		t.Fatalf("loading the configuration: %v", err)
	}
	return cfg
}

// Service assembles the service exactly as the binary does, from Config(t, overrides...), and
// closes it when the test ends. Its log is shown if the test fails.
func Service(t testing.TB, overrides ...string) *service.Service {
	t.Helper()
	logs := &Buffer{}
	svc, err := service.Open(context.Background(), Config(t, overrides...), slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		svc.Close(context.Background())
		if t.Failed() {
			t.Logf("service log:\n%s", logs)
		}
	})
	return svc
}

// RedisClient is the service's Redis client for cfg, as it builds it, closed when the test ends.
func RedisClient(t testing.TB, cfg config.Config) redis.UniversalClient {
	t.Helper()
	rdb, err := redisclient.New(redisclient.Options{URL: cfg.RedisURL, Mode: cfg.RedisMode, Timeout: cfg.RedisTimeout, PoolSize: cfg.RedisPoolSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// ProxiedDatabase creates a fresh database and returns the URL of it through a Proxy (to lose
// replies or refuse connections on purpose), the proxy, and a pool that bypasses the proxy (to
// see what the server committed).
func ProxiedDatabase(t testing.TB) (url string, proxy *Proxy, direct *pgxpool.Pool) {
	t.Helper()
	dbURL := Database(t)
	u, err := neturl.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy = StartProxy(t, u.Host)
	u.Host = proxy.Addr()
	return u.String(), proxy, Pool(t, dbURL)
}

// ReplicationSettled waits until the service at base (http://host:port) has settled its
// replication follower: it streams, stands by, is off, or cannot follow; or Redis is down, so
// nothing is cached and nothing can be retired. A leader that made its slot has by then retired
// every view once, which a test reading right after the start would otherwise race (a hit
// expected on its second read would be a miss).
func ReplicationSettled(t testing.TB, base string) {
	t.Helper()
	Eventually(t, 60*time.Second, func() error {
		res, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		defer res.Body.Close()
		var r struct {
			Checks struct {
				Replication struct {
					Role      string `json:"role"`
					Streaming bool   `json:"streaming"`
				} `json:"replication"`
				Redis struct {
					Status string `json:"status"`
				} `json:"redis"`
			} `json:"checks"`
		}
		if err := json.NewDecoder(res.Body).Decode(&r); err != nil {
			return err
		}
		switch s := r.Checks.Replication; {
		case s.Role == "leader" && s.Streaming, s.Role == "standby", s.Role == "off", s.Role == "unavailable",
			r.Checks.Redis.Status == "down":
			return nil
		default:
			return fmt.Errorf("replication follower not settled: %+v", s)
		}
	})
}
