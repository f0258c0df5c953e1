package main_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cacheside/cacheside/app/internal/testenv"
)

// listQuery is how pg_stat_statements shows the query behind /cache and /sample.
const listQuery = "%FROM samples ORDER BY id%"

// countingDatabase is a private Postgres that counts every statement (pg_stat_statements needs
// to be preloaded, so the shared test server cannot), with a migrated database of 1,000 samples.
func countingDatabase(t *testing.T) (dbURL string, db *pgxpool.Pool) {
	t.Helper()
	pg := testenv.StartPostgres(t, "shared_preload_libraries = 'pg_stat_statements'")
	dbURL = testenv.CreateDatabase(t, pg.AdminURL())
	db = testenv.Pool(t, dbURL)
	ctx := context.Background()
	for _, stmt := range []string{
		"CREATE EXTENSION pg_stat_statements",
		"INSERT INTO samples (title) SELECT 'Sample ' || g FROM generate_series(1, 1000) AS g",
	} {
		if _, err := db.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	return dbURL, db
}

// leaseEnv is the environment of a service process in these tests: production settings but for
// REDIS_TIMEOUT (and rate limits, below). Three processes built with -race and hundreds of requests on a busy 2-core
// machine can take a lookup past 250 ms, and that read then bypasses Redis, as designed, and
// loads on its own instead of meeting the lease these tests are about.
func leaseEnv(t *testing.T, dbURL string) []string {
	return []string{"DATABASE_URL=" + dbURL, "REDIS_URL=" + testenv.RedisURL(t),
		"CACHE_KEY_PREFIX=" + testenv.Name("cstest"), "REDIS_TIMEOUT=2s",
		// A token, as every deployment has; and no per-client limits: the storm's readers all come
		// from one loopback address, which the read budget would refuse long before the lease
		// is tested.
		"API_TOKENS=" + testenv.Token(), "RATE_LIMIT_ENABLED=false"}
}

// listQueries is how many times Postgres ran the list query since pg_stat_statements was reset.
func listQueries(t *testing.T, db *pgxpool.Pool) int64 {
	t.Helper()
	var n int64
	err := db.QueryRow(context.Background(), `SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
		WHERE query LIKE $1 AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())`, listQuery).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func resetStatements(t *testing.T, db *pgxpool.Pool) {
	t.Helper()
	if _, err := db.Exec(context.Background(), "SELECT pg_stat_statements_reset()"); err != nil {
		t.Fatal(err)
	}
}

// lockSamples holds an ACCESS EXCLUSIVE lock on samples, so every load of the list blocks in
// Postgres until the returned release is called.
func lockSamples(t *testing.T, dbURL string) (release func()) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE samples IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			if err := tx.Commit(ctx); err != nil {
				t.Error(err)
			}
			conn.Close(ctx)
		})
	}
	t.Cleanup(release)
	return release
}

// blockedLoads is how many list queries wait for the lock.
func blockedLoads(t *testing.T, db *pgxpool.Pool) int {
	t.Helper()
	var n int
	err := db.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1`, listQuery).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// metric sums the samples of a Prometheus series on p's /metrics whose labels include labels.
func metric(t *testing.T, p *proc, name string, labels ...string) float64 {
	t.Helper()
	res, err := http.Get("http://" + p.admin + "/metrics") // the admin port
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
lines:
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				continue lines
			}
		}
		v, err := strconv.ParseFloat(rest[strings.LastIndexByte(rest, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		sum += v
	}
	return sum
}

type reply struct {
	status int
	cache  string
	body   string
	err    error
}

func get(p *proc, path string) reply {
	res, err := http.Get("http://" + p.addr + path)
	if err != nil {
		return reply{err: err}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return reply{status: res.StatusCode, cache: res.Header.Get("X-Cache"), body: string(b), err: err}
}

// TestAMissStormAcrossThreeProcessesCostsOneQuery: three service processes on one Redis, 300
// concurrent reads of a cold /cache, 100 through each. Postgres holds the load (a table lock)
// until every read waits on a shared load, so all 300 are misses at once; then Postgres counts
// the list queries it ran. Without leases, the control, each process sends its own.
func TestAMissStormAcrossThreeProcessesCostsOneQuery(t *testing.T) {
	const reads = 300
	dbURL, db := countingDatabase(t)
	for _, tc := range []struct {
		name   string
		leases string
		want   int64
	}{
		{"with leases the fleet sends one query", "true", 1},
		{"without leases each process sends its own", "false", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := append(leaseEnv(t, dbURL), "CACHE_LEASES="+tc.leases)
			procs := []*proc{serve(t, env...), serve(t, env...), serve(t, env...)}
			release := lockSamples(t, dbURL)
			resetStatements(t, db)

			replies := make([]reply, reads)
			var wg sync.WaitGroup
			for i := range reads {
				wg.Go(func() { replies[i] = get(procs[i%len(procs)], "/cache") })
			}
			testenv.Eventually(t, 60*time.Second, func() error {
				waiting := 0.0
				for _, p := range procs {
					waiting += metric(t, p, "cacheside_cache_loads_waiting")
				}
				if waiting < reads {
					return fmt.Errorf("%v of %d reads wait on a shared load", waiting, reads)
				}
				return nil
			})
			release()
			wg.Wait()

			queries := listQueries(t, db)
			want := get(procs[0], "/sample")
			misses := 0
			for _, r := range replies {
				if r.err != nil || r.status != http.StatusOK || r.body != want.body {
					t.Fatalf("a read got %d %v (%d bytes), want 200 and the list", r.status, r.err, len(r.body))
				}
				if r.cache == "MISS" {
					misses++
				}
			}
			if misses != reads || queries != tc.want {
				t.Errorf("%d concurrent reads across 3 processes: %d misses, %d list queries in Postgres; want %d misses, %d queries",
					reads, misses, queries, reads, tc.want)
			}
			if tc.leases == "true" {
				acquired, waited := 0.0, 0.0
				for _, p := range procs {
					acquired += metric(t, p, "cacheside_cache_leases_total", `cache_lease="acquired"`)
					waited += metric(t, p, "cacheside_cache_leases_total", `cache_lease="waited"`)
				}
				if acquired != 1 || waited != 2 {
					t.Errorf("leases acquired %v, waited %v; want 1 and 2", acquired, waited)
				}
			}
		})
	}
}

// TestALeaseHolderThatDiesIsTakenOver: the process holding a cold key's lease is killed while its
// load is blocked in Postgres; the two processes waiting on it get the value, loaded once, by
// whichever took the lease over once it expired (CACHE_LEASE_TTL, at its default).
func TestALeaseHolderThatDiesIsTakenOver(t *testing.T) {
	dbURL, db := countingDatabase(t)
	env := leaseEnv(t, dbURL)
	holder, b, c := serve(t, env...), serve(t, env...), serve(t, env...)
	release := lockSamples(t, dbURL)

	go get(holder, "/cache") // it dies with the process
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := blockedLoads(t, db); n != 1 {
			return fmt.Errorf("%d list queries wait for the lock, want the holder's", n)
		}
		return nil
	})
	results := make(chan reply, 2)
	go func() { results <- get(b, "/cache") }()
	go func() { results <- get(c, "/cache") }()
	testenv.Eventually(t, 30*time.Second, func() error {
		for _, p := range []*proc{b, c} {
			if n := metric(t, p, "cacheside_cache_lease_waiting"); n != 1 {
				return fmt.Errorf("%s: %v loads wait on a lease, want 1", p.addr, n)
			}
		}
		if n := blockedLoads(t, db); n != 1 {
			return fmt.Errorf("%d list queries wait for the lock, want only the holder's", n)
		}
		return nil
	})

	if err := holder.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = holder.cmd.Wait()
	// Its session would run the query once the lock goes; end it, so that Postgres's count is
	// what the survivors sent.
	if _, err := db.Exec(context.Background(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1`, listQuery); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := blockedLoads(t, db); n != 0 {
			return fmt.Errorf("the dead holder's query still waits (%d)", n)
		}
		return nil
	})
	resetStatements(t, db)
	release()

	got := []reply{<-results, <-results}
	if n := listQueries(t, db); n != 1 {
		t.Errorf("the two waiters' processes ran %d list queries, want 1 (the takeover's)", n)
	}
	want := get(b, "/sample")
	for _, r := range got {
		if r.err != nil || r.status != http.StatusOK || r.cache != "MISS" || r.body != want.body {
			t.Fatalf("a waiter got %d %s %v (%d bytes), want a 200 MISS with the list", r.status, r.cache, r.err, len(r.body))
		}
	}
	takenOver, waited := 0.0, 0.0
	for _, p := range []*proc{b, c} {
		takenOver += metric(t, p, "cacheside_cache_leases_total", `cache_lease="taken_over"`)
		waited += metric(t, p, "cacheside_cache_leases_total", `cache_lease="waited"`)
	}
	if takenOver != 1 || waited != 1 {
		t.Errorf("leases taken over %v, waited %v; want one of each", takenOver, waited)
	}
}
