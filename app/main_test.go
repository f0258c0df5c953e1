package main_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cacheside/cacheside/app/internal/testenv"
)

// binary is the real cacheside, built with -race on the first call only: a -run that selects
// none of this package's tests (go test -run X ./app/...) pays nothing for it. Once also makes it
// one build for every test under -count and -parallel.
var binary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "cacheside-bin-")
	if err != nil {
		return "", err
	}
	binDir.Store(&dir) // removed by TestMain, built or not
	bin := filepath.Join(dir, "cacheside")
	out, err := exec.Command("go", "build", "-race", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// binDir is binary's folder once a test has asked for it; nil while none has.
var binDir atomic.Pointer[string]

func TestMain(m *testing.M) {
	code := m.Run()
	// Not binary(): asking for it here would build it after the tests, even when none ran.
	if dir := binDir.Load(); dir != nil {
		os.RemoveAll(*dir)
	}
	os.Exit(code)
}

// proc is a running cacheside with its combined output captured.
type proc struct {
	cmd   *exec.Cmd
	out   *testenv.Buffer
	addr  string
	admin string // the admin port's address: /metrics
}

func command(t *testing.T, env []string, args ...string) *exec.Cmd {
	t.Helper()
	bin, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	cmd := testenv.Command(bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	return cmd
}

func serve(t *testing.T, env ...string) *proc {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	admin := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	// Later values win: a test may pass its own ADMIN_ADDR.
	cmd := command(t, append([]string{"HTTP_ADDR=" + addr, "ADMIN_ADDR=" + admin}, env...), "serve")
	out := &testenv.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, out: out, addr: addr, admin: admin}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("cacheside output:\n%s", out)
		}
	})
	testenv.Eventually(t, 20*time.Second, func() error {
		res, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return err
		}
		res.Body.Close()
		return nil
	})
	testenv.ReplicationSettled(t, "http://"+addr)
	return p
}

// baseEnv is a service's environment: DATABASE_URL, REDIS_URL, CACHE_KEY_PREFIX and API_TOKENS
// (one random token, as a deployment's Secret gives it), in that order.
func baseEnv(t *testing.T) []string {
	return []string{
		"DATABASE_URL=" + testenv.Database(t),
		"REDIS_URL=" + testenv.RedisURL(t),
		"CACHE_KEY_PREFIX=" + testenv.Name("cstest"),
		"API_TOKENS=" + testenv.Token(),
	}
}

// tokenOf returns the token of env's API_TOKENS (baseEnv's).
func tokenOf(env []string) string { return strings.TrimPrefix(env[3], "API_TOKENS=") }

func TestAConfigErrorNamesEveryBadVariableAndLeaksNoPassword(t *testing.T) {
	cmd := command(t, []string{
		"DATABASE_URL=postgres://app:hunter2-secret@db:5432/app",
		"CACHE_TTL=soon",
		"REDIS_MODE=galaxy",
		"HTTP_MAX_BODY_BYTES=-1",
		"LOG_LEVEL=loud",
	}, "serve")
	out, err := cmd.CombinedOutput()
	if code := exitCode(err); code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	for _, name := range []string{"REDIS_URL", "CACHE_TTL", "REDIS_MODE", "HTTP_MAX_BODY_BYTES", "LOG_LEVEL"} {
		if !strings.Contains(string(out), name) {
			t.Errorf("the error does not name %s:\n%s", name, out)
		}
	}
	if strings.Contains(string(out), "DATABASE_URL") {
		t.Errorf("a valid DATABASE_URL was reported as bad:\n%s", out)
	}
	if strings.Contains(string(out), "hunter2") {
		t.Errorf("the password leaked:\n%s", out)
	}
}

func TestEnvPrintsEveryVariableWithItsDefault(t *testing.T) {
	out, err := command(t, nil, "env").CombinedOutput()
	if err != nil {
		t.Fatal(err, string(out))
	}
	for _, want := range []string{"HTTP_ADDR", ":8080", "CACHE_TTL", "300s", "DATABASE_URL", "(required)", "SHUTDOWN_TIMEOUT", "OTEL_"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("env output lacks %q:\n%s", want, out)
		}
	}
	if out, err := command(t, nil, "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), "migrate") {
		t.Errorf("--help: %v\n%s", err, out)
	}
	if out, err := command(t, nil, "frobnicate").CombinedOutput(); exitCode(err) != 2 || !strings.Contains(string(out), "unknown command") {
		t.Errorf("unknown command: exit %d\n%s", exitCode(err), out)
	}
}

func TestMigrateAndSeedPrepareADatabase(t *testing.T) {
	env := baseEnv(t) // the database is already migrated: migrate must be idempotent
	run := func(args ...string) string {
		t.Helper()
		out, err := command(t, env, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("migrate")
	run("seed", "-n", "25")
	if out := run("seed", "-n", "25", "-if-empty"); !strings.Contains(out, "seed skipped") {
		t.Errorf("-if-empty seeded a non-empty table:\n%s", out)
	}
	run("seed", "-n", "7", "-replace")

	conn, err := pgx.Connect(context.Background(), strings.TrimPrefix(env[0], "DATABASE_URL="))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM samples").Scan(&n); err != nil || n != 7 {
		t.Errorf("samples after seeding = %d, %v; want 7", n, err)
	}
}

// TestBulkCommandsAreNotHeldToTheRequestTimeout: requests' statements are cut off by Postgres
// after DATABASE_TIMEOUT (statement_timeout), but seeding and migrating are bulk work that may
// take longer, bounded by whoever runs them.
func TestBulkCommandsAreNotHeldToTheRequestTimeout(t *testing.T) {
	env := append(baseEnv(t), "DATABASE_TIMEOUT=20ms")
	for _, args := range [][]string{{"migrate"}, {"seed", "-n", "200000", "-replace"}} {
		if out, err := command(t, env, args...).CombinedOutput(); err != nil {
			t.Errorf("%v with DATABASE_TIMEOUT=20ms: %v\n%s", args, err, out)
		}
	}
}

// TestSIGTERMFinishesInFlightRequestsThenExitsZero holds a request inside Postgres with a table
// lock, sends SIGTERM, then releases the lock: the request must complete and the process exit 0.
func TestSIGTERMFinishesInFlightRequestsThenExitsZero(t *testing.T) {
	env := baseEnv(t)
	dbURL := strings.TrimPrefix(env[0], "DATABASE_URL=")
	p := serve(t, append(env, "SHUTDOWN_TIMEOUT=20s")...)

	ctx := context.Background()
	locker, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close(ctx)
	tx, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE samples IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}

	type result struct {
		status int
		err    error
	}
	inflight := make(chan result, 1)
	go func() {
		res, err := http.Get("http://" + p.addr + "/sample")
		if err != nil {
			inflight <- result{err: err}
			return
		}
		res.Body.Close()
		inflight <- result{status: res.StatusCode}
	}()
	// Wait until the request is blocked on the lock inside Postgres.
	testenv.Eventually(t, 10*time.Second, func() error {
		var waiting int
		err := locker.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND relation = 'samples'::regclass AND NOT granted").Scan(&waiting)
		if err == nil && waiting == 0 {
			err = fmt.Errorf("no request waiting on the lock yet")
		}
		return err
	})

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(p.out.String(), "shutting down") {
			return fmt.Errorf("no shutdown logged yet")
		}
		return nil
	})
	// New connections are refused once shutdown has begun, on the admin port too.
	for _, url := range []string{"http://" + p.addr + "/healthz", "http://" + p.admin + "/metrics"} {
		if res, err := http.Get(url); err == nil {
			res.Body.Close()
			t.Errorf("a new request to %s was accepted during shutdown: %d", url, res.StatusCode)
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	if r := <-inflight; r.err != nil || r.status != 200 {
		t.Errorf("in-flight request: %d %v, want 200", r.status, r.err)
	}
	if err := p.cmd.Wait(); err != nil {
		t.Errorf("exit: %v, want 0\n%s", err, p.out)
	}
}

func TestPasswordsInURLsNeverReachTheLogs(t *testing.T) {
	env := baseEnv(t)
	// Credentials the servers don't expect: Postgres (trust auth) ignores the password, and Redis
	// rejects an unknown user, so the cache errors and is bypassed — and error paths get logged.
	dbURL := strings.Replace(strings.TrimPrefix(env[0], "DATABASE_URL="), "postgres@", "postgres:pg-s3cret-pw@", 1)
	redisURL := strings.Replace(testenv.RedisURL(t), "redis://", "redis://cacheside:redis-s3cret-pw@", 1)
	p := serve(t, "DATABASE_URL="+dbURL, "REDIS_URL="+redisURL, env[2], env[3], "LOG_LEVEL=debug")
	for _, path := range []string{"/cache", "/cache", "/readyz", "/sample"} {
		res, err := http.Get("http://" + p.addr + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.cmd.Wait()
	out := p.out.String()
	if !strings.Contains(out, "database_url") {
		t.Fatalf("the start-up line with the redacted config is missing:\n%s", out)
	}
	for _, secret := range []string{"pg-s3cret-pw", "redis-s3cret-pw"} {
		if strings.Contains(out, secret) {
			t.Errorf("%s leaked into the logs:\n%s", secret, out)
		}
	}
	if !hasLine(out, `"cache":"BYPASS"`) {
		t.Errorf("expected the rejected Redis password to make /cache bypass:\n%s", out)
	}
}

func hasLine(out, frag string) bool {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if strings.Contains(sc.Text(), frag) {
			return true
		}
	}
	return false
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// TestAWriteOnOneReplicaReachesTheOthersNearCache runs two service processes on one Redis with
// the near-cache on and entries living a minute: only the published invalidation can make the
// second replica serve the write within the few seconds allowed.
func TestAWriteOnOneReplicaReachesTheOthersNearCache(t *testing.T) {
	env := append(baseEnv(t), "CACHE_LOCAL_ENABLED=true", "CACHE_LOCAL_TTL=1m")
	a, b := serve(t, env...), serve(t, env...)
	get := func(p *proc, path string) (string, string) {
		t.Helper()
		res, err := http.Get("http://" + p.addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return string(body), res.Header.Get("X-Cache-Tier")
	}
	testenv.Eventually(t, 10*time.Second, func() error { // both subscribed
		for _, p := range []*proc{a, b} {
			if body, _ := get(p, "/readyz"); !strings.Contains(body, `"near_cache":"live"`) {
				return fmt.Errorf("not live: %s", body)
			}
		}
		return nil
	})
	get(b, "/cache")
	if _, tier := get(b, "/cache"); tier != "local" {
		t.Fatalf("replica B's second read came from %q, want its near-cache", tier)
	}

	req, _ := http.NewRequest("POST", "http://"+a.addr+"/samples", strings.NewReader(`{"title":"written on A"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tokenOf(env))
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != 201 {
		t.Fatalf("POST on A: %v %v", res, err)
	}
	res.Body.Close()
	testenv.Eventually(t, 3*time.Second, func() error {
		if body, _ := get(b, "/cache"); !strings.Contains(body, "written on A") {
			return fmt.Errorf("replica B still serves the list without A's write")
		}
		return nil
	})
}

// TestMetricsAndLogsCarryWhatOperatorsNeed: request, cache and pool metrics at /metrics on the
// admin port (and not on the API's), and request log lines carrying the caller's trace id
// (continued even with tracing off).
func TestMetricsAndLogsCarryWhatOperatorsNeed(t *testing.T) {
	p := serve(t, baseEnv(t)...)
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	for range 2 {
		req, _ := http.NewRequest("GET", "http://"+p.addr+"/cache", nil)
		req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	res, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Errorf("the API port answers GET /metrics with %d, want 404: metrics belong on the admin port", res.StatusCode)
	}
	res, err = http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Errorf("the admin port answers GET /metrics with %d", res.StatusCode)
	}
	if res, err := http.Get("http://" + p.admin + "/cache"); err != nil || res.StatusCode != http.StatusNotFound {
		t.Errorf("the admin port serves the API: %v %v", res, err)
	} else {
		res.Body.Close()
	}
	for _, series := range []string{
		`cacheside_cache_lookups_total{cache_keyspace="list",cache_outcome="hit",cache_tier="redis"`,
		`cacheside_cache_lookups_total{cache_keyspace="list",cache_outcome="miss",cache_tier="redis"`,
		`cacheside_cache_breaker_state`,
		`http_server_request_duration_seconds_count{`,
		`http_route="/cache"`,
		`pgxpool_acquired_connections`, // Postgres pool
		`db_client_connections_usage{`, // Redis pool
		`go_goroutines`,
	} {
		if !strings.Contains(string(body), series) {
			t.Errorf("/metrics lacks %s", series)
		}
	}
	if strings.Contains(string(body), `http_route="/metrics"`) {
		t.Errorf("scrapes are measured as requests")
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if !hasLine(p.out.String(), `"route":"/cache"`) || !hasLine(p.out.String(), `"trace_id":"`+traceID+`"`) {
			return fmt.Errorf("no /cache log line with trace_id %s yet", traceID)
		}
		return nil
	})
}

// TestSlowClientsAreCutOff: a client that never finishes its headers is disconnected after
// HTTP_READ_HEADER_TIMEOUT instead of holding a connection forever (slowloris).
func TestSlowClientsAreCutOff(t *testing.T) {
	p := serve(t, append(baseEnv(t), "HTTP_READ_HEADER_TIMEOUT=500ms")...)
	conn, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /sample HTTP/1.1\r\nHost: x\r\n")); err != nil { // and nothing more
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // a hang guard, far above the timeout
	_, err = io.ReadAll(conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the server kept a half-sent request open for 10s")
	}
}
