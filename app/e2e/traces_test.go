// Package e2e_test checks, end to end, what users are promised they will see in Jaeger: for any
// request, whether the cache or Postgres answered, how long each took, and why.
//
// By default (make test) it starts a real Jaeger (JAEGER_BIN, built by hack/jaeger.sh), a private
// Redis it can stop, and the real cacheside binary. To check a deployed instance instead, set
//
//	E2E_BASE_URL=http://127.0.0.1:8080 E2E_JAEGER_URL=http://127.0.0.1:16686 \
//	E2E_SERVICE_NAME=cacheside E2E_API_TOKEN=… go test ./app/e2e/
//
// (E2E_API_TOKEN: one of the deployment's API_TOKENS, which its writes need)
// and, to include the Redis-down check, E2E_REDIS_STOP_CMD / E2E_REDIS_START_CMD (shell commands,
// e.g. kubectl scale statefulset … --replicas=0).
package e2e_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cacheside/cacheside/app/internal/testenv"
)

// target is the service under test and the Jaeger it exports to.
type target struct {
	base, service string
	token         string // an API token: the writes need it
	jaeger        jaeger
	databaseURL   string // to change rows behind the API's back (local mode, or E2E_DATABASE_URL)
	stopRedis     func(t *testing.T)
	startRedis    func(t *testing.T)
	grpcService   *target // a second instance exporting over OTLP/gRPC (local mode only)
}

func TestTracesShowHowEachRequestWasServed(t *testing.T) {
	tg := setUp(t)
	c := client{base: tg.base, token: tg.token}

	// A write retires the cached list, so the next read misses and the two after it hit. The
	// replication follower retires the same write once more from the stream, milliseconds later:
	// if that lands inside the three reads, one of them misses or bypasses, and the sequence is
	// tried again after another write.
	start := time.Now()
	c.do(t, "GET", "/healthz", "", "")
	c.do(t, "GET", "/readyz", "", "")
	var sample struct{ ID int64 }
	var miss, hit traceParent
	for attempt := 1; ; attempt++ {
		created := c.do(t, "POST", "/samples", `{"title":"traced"}`, "")
		if created.status != 201 {
			t.Fatalf("POST /samples: %d %s", created.status, created.body)
		}
		_ = json.Unmarshal([]byte(created.body), &sample)
		id := sample.ID
		t.Cleanup(func() { c.do(t, "DELETE", fmt.Sprintf("/samples/%d", id), "", "") })
		miss, hit = newParent(), newParent()
		got := []string{c.do(t, "GET", "/cache", "", miss.header()).xcache,
			c.do(t, "GET", "/cache", "", hit.header()).xcache, c.do(t, "GET", "/cache", "", "").xcache}
		if got[0] != "MISS" {
			t.Fatalf("first /cache after a write: X-Cache %q, want MISS", got[0])
		}
		if got[1] == "HIT" && got[2] == "HIT" {
			break
		}
		if attempt == 5 {
			t.Fatalf("/cache after a write: X-Cache %v, want MISS HIT HIT (5 attempts)", got)
		}
		t.Logf("attempt %d: X-Cache %v (the follower's retirement of the write landed in between); again", attempt, got)
	}

	t.Run("a miss reads server span, cache lookup, Redis GET, load, SELECT, Redis SET", func(t *testing.T) {
		tr := awaitTrace(t, tg.jaeger, miss, func(tr trace) []string {
			var p []string
			server, get := rootAndLookup(tr, miss, "MISS", &p)
			if get == nil {
				return p
			}
			redisGet := tr.find(func(s span) bool { return isRedis(s) && s.Name == "mget" && s.ParentSpanID == get.SpanID })
			loads := tr.find(func(s span) bool { return s.Name == "cache.load list" && s.ParentSpanID == get.SpanID })
			if len(redisGet) == 0 {
				p = append(p, "no Redis MGET under the cache lookup")
			}
			if len(loads) != 1 {
				return append(p, "no single cache.load under the cache lookup")
			}
			load := loads[0]
			selects := tr.find(func(s span) bool {
				return isPostgres(s) && tr.descendsFrom(s, load) && strings.Contains(queryText(s), "FROM samples")
			})
			if len(selects) == 0 {
				p = append(p, "no Postgres SELECT with its query text under cache.load")
			}
			sets := tr.find(func(s span) bool {
				return isRedis(s) && strings.Contains(s.Name, "set") && tr.descendsFrom(s, *get) && s.Start >= load.End
			})
			if len(sets) == 0 {
				p = append(p, "no Redis SET under the cache lookup after the load")
			}
			if shared, _ := get.attr("cache.shared_load"); shared != "false" {
				p = append(p, "cache.shared_load = "+shared+", want false")
			}
			_ = server
			return p
		})
		noPayloadInAttributes(t, tr)
	})

	t.Run("a hit reads server span, cache lookup, Redis GET (or the near-cache) and no Postgres", func(t *testing.T) {
		awaitTrace(t, tg.jaeger, hit, func(tr trace) []string {
			var p []string
			_, get := rootAndLookup(tr, hit, "HIT", &p)
			if get == nil {
				return p
			}
			// A deployment with the near-cache on answers repeated reads in process: no Redis span.
			if tier, _ := get.attr("cache.tier"); tier != "local" &&
				len(tr.find(func(s span) bool { return isRedis(s) && s.Name == "mget" && s.ParentSpanID == get.SpanID })) == 0 {
				p = append(p, "no Redis MGET under a Redis-tier hit")
			}
			if n := len(tr.find(isPostgres)) + len(tr.named("cache.load")); n > 0 {
				p = append(p, fmt.Sprintf("a hit has %d Postgres or load spans", n))
			}
			return p
		})
	})

	t.Run("a caller's traceparent is continued", func(t *testing.T) {
		tr := awaitTrace(t, tg.jaeger, hit, func(trace) []string { return nil })
		servers := tr.find(func(s span) bool { return s.Kind == kindServer })
		if len(servers) != 1 || servers[0].ParentSpanID != hit.spanID || servers[0].TraceID != hit.traceID {
			t.Errorf("server spans %+v, want one in trace %s with parent %s", servers, hit.traceID, hit.spanID)
		}
	})

	t.Run("a request without traceparent starts its own trace and probes are not traced", func(t *testing.T) {
		testenv.Eventually(t, 20*time.Second, func() error {
			traces, err := tg.jaeger.search(tg.service, start.Add(-time.Second), time.Now().Add(time.Second))
			if err != nil {
				return err
			}
			own := 0
			for _, tr := range traces {
				if len(tr.named("GET /healthz"))+len(tr.named("GET /readyz")) > 0 {
					t.Fatalf("a probe was traced:\n%s", tr)
				}
				for _, root := range tr.find(func(s span) bool { return s.ParentSpanID == "" }) {
					// The replication follower's batches and early refreshes are the background
					// work traced: each is a unit of work of its own, outliving any request (a
					// refresh is linked to the read that triggered it).
					refresh := strings.HasPrefix(root.Name, "cache.refresh ") && len(root.Links) > 0
					if root.Kind != kindServer && !strings.HasPrefix(root.Name, "replication.") && !refresh {
						t.Fatalf("orphan root span %q (background work must not start traces):\n%s", root.Name, tr)
					}
				}
				if id := tr.spans[0].TraceID; id != miss.traceID && id != hit.traceID && len(tr.named("GET /cache")) == 1 {
					own++
				}
			}
			if own == 0 {
				return fmt.Errorf("no trace of its own for the request without traceparent among %d", len(traces))
			}
			return nil
		})
	})

	t.Run("with Redis stopped the lookup shows the bypass and Postgres answers", func(t *testing.T) {
		if tg.stopRedis == nil {
			t.Skip("remote target without E2E_REDIS_STOP_CMD: the Redis-down check needs a way to stop Redis")
		}
		tg.stopRedis(t)
		defer tg.startRedis(t)
		// A deployment needs a moment to notice (its pods, the near-cache's subscription); a
		// near-cache entry may still answer until then, never a failure.
		var bypass traceParent
		testenv.Eventually(t, 30*time.Second, func() error {
			bypass = newParent()
			r := c.do(t, "GET", "/cache", "", bypass.header())
			if r.status != 200 {
				t.Fatalf("/cache with Redis down: %d %s", r.status, r.body)
			}
			if r.xcache != "BYPASS" {
				return fmt.Errorf("X-Cache %q, not BYPASS yet", r.xcache)
			}
			return nil
		})
		awaitTrace(t, tg.jaeger, bypass, func(tr trace) []string {
			var p []string
			server, get := rootAndLookup(tr, bypass, "BYPASS", &p)
			if get == nil {
				return p
			}
			if get.Status.Code != statusError || !get.hasEvent("cache.bypass") {
				p = append(p, "the cache lookup is not marked as failed with a cache.bypass event")
			}
			if server.Status.Code == statusError {
				p = append(p, "the request span is marked as an error: the request succeeded")
			}
			loads := tr.find(func(s span) bool { return s.Name == "cache.load list" && s.ParentSpanID == get.SpanID })
			if len(loads) != 1 || len(tr.find(func(s span) bool { return isPostgres(s) && tr.descendsFrom(s, loads[0]) })) == 0 {
				p = append(p, "no Postgres query under cache.load")
			}
			return p
		})
	})

	t.Run("a change made with plain SQL shows as a replication.apply trace with its Redis round trip", func(t *testing.T) {
		if tg.databaseURL == "" {
			t.Skip("remote target without E2E_DATABASE_URL: the check changes a row behind the API's back")
		}
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, tg.databaseURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		changed := time.Now()
		if _, err := conn.Exec(ctx, "UPDATE samples SET title = 'changed behind the API' WHERE id = $1", sample.ID); err != nil {
			t.Fatal(err)
		}
		services := []string{tg.service}
		if tg.grpcService != nil { // both instances follow; either may be the leader
			services = append(services, tg.grpcService.service)
		}
		testenv.Eventually(t, 30*time.Second, func() error {
			for _, svc := range services {
				traces, err := tg.jaeger.search(svc, changed.Add(-time.Second), time.Now().Add(time.Second))
				if err != nil {
					return err
				}
				for _, tr := range traces {
					for _, apply := range tr.named("replication.apply") {
						tables, _ := apply.attr("replication.tables")
						keys, _ := apply.attr("cache.keys")
						if !strings.Contains(tables, "public.samples") || keys != "2" {
							continue
						}
						if len(tr.find(func(s span) bool { return isRedis(s) && tr.descendsFrom(s, apply) })) == 0 {
							return fmt.Errorf("replication.apply without a Redis span under it:\n%s", tr)
						}
						noPayloadInAttributes(t, tr)
						return nil
					}
				}
			}
			return fmt.Errorf("no replication.apply trace for public.samples retiring 2 keys in %v yet", services)
		})
	})

	t.Run("traces also arrive over OTLP/gRPC", func(t *testing.T) {
		if tg.grpcService == nil {
			t.Skip("remote target: its exporter protocol is the deployment's choice")
		}
		p := newParent()
		if r := (client{base: tg.grpcService.base}).do(t, "GET", "/sample", "", p.header()); r.status != 200 {
			t.Fatalf("/sample: %d", r.status)
		}
		awaitTrace(t, tg.jaeger, p, func(tr trace) []string {
			if len(tr.named("GET /sample")) != 1 || len(tr.find(isPostgres)) == 0 {
				return []string{"want GET /sample with a Postgres query"}
			}
			if tr.service != tg.grpcService.service {
				return []string{"service.name " + tr.service}
			}
			return nil
		})
	})
}

// rootAndLookup finds the server span (named by route, continuing parent) and its cache.get
// child with the wanted outcome, appending what is wrong to p.
func rootAndLookup(tr trace, parent traceParent, outcome string, p *[]string) (server, get *span) {
	servers := tr.find(func(s span) bool { return s.Kind == kindServer && s.Name == "GET /cache" })
	if len(servers) != 1 {
		*p = append(*p, fmt.Sprintf("%d server spans named GET /cache", len(servers)))
		return nil, nil
	}
	server = &servers[0]
	if server.ParentSpanID != parent.spanID {
		*p = append(*p, "server span does not continue the caller's span")
	}
	gets := tr.find(func(s span) bool { return s.Name == "cache.get list" && s.ParentSpanID == server.SpanID })
	if len(gets) != 1 {
		*p = append(*p, "no cache.get list under the server span")
		return server, nil
	}
	get = &gets[0]
	want := map[string]string{"cache.outcome": outcome, "cache.hit": strconv.FormatBool(outcome == "HIT")}
	tiers := map[string]bool{"redis": true, "local": outcome == "HIT"} // only hits come from the near-cache
	if tier, _ := get.attr("cache.tier"); !tiers[tier] {
		*p = append(*p, fmt.Sprintf("cache.get cache.tier = %q on a %s", tier, outcome))
	}
	for k, v := range want {
		if got, _ := get.attr(k); got != v {
			*p = append(*p, fmt.Sprintf("cache.get %s = %q, want %q", k, got, v))
		}
	}
	if key, _ := get.attr("cache.key"); !strings.Contains(key, "list") {
		*p = append(*p, "cache.get lacks a cache.key naming the keyspace")
	}
	return server, get
}

func queryText(s span) string {
	if q, ok := s.attr("db.query.text"); ok {
		return q
	}
	q, _ := s.attr("db.statement")
	return q
}

// noPayloadInAttributes: cached bodies and SQL parameter values must never land in spans.
func noPayloadInAttributes(t *testing.T, tr trace) {
	t.Helper()
	for _, s := range tr.spans {
		for _, a := range s.Attributes {
			// The requests carry the API token: neither it nor its header may reach a span.
			if strings.Contains(a.String(), `"title"`) || strings.Contains(a.String(), "traced") || strings.Contains(a.String(), "Bearer") {
				t.Errorf("span %q attribute %s carries data: %.80s", s.Name, a.Key, a.String())
			}
		}
	}
}

// awaitTrace polls Jaeger until the trace satisfies check (export is asynchronous).
func awaitTrace(t *testing.T, j jaeger, p traceParent, check func(trace) []string) trace {
	t.Helper()
	var last trace
	var problems []string
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		tr, err := j.traceByID(p.traceID)
		if err != nil {
			problems = []string{err.Error()}
		} else if last, problems = tr, check(tr); len(problems) == 0 {
			return tr
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("trace %s never looked right:\n- %s\nspans:\n%s", p.traceID, strings.Join(problems, "\n- "), last)
	return trace{}
}

type traceParent struct{ traceID, spanID string }

func newParent() traceParent {
	return traceParent{traceID: randomHex(16), spanID: randomHex(8)}
}

func (p traceParent) header() string { return "00-" + p.traceID + "-" + p.spanID + "-01" }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

type client struct{ base, token string }

type reply struct {
	status int
	xcache string
	body   string
	header http.Header
}

func (c client) do(t *testing.T, method, path, body, traceparent string) reply {
	t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if traceparent != "" {
		req.Header.Set("traceparent", traceparent)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return reply{status: res.StatusCode, xcache: res.Header.Get("X-Cache"), body: string(b), header: res.Header}
}

func setUp(t *testing.T) *target {
	t.Helper()
	if base := os.Getenv("E2E_BASE_URL"); base != "" {
		jurl := os.Getenv("E2E_JAEGER_URL")
		if jurl == "" {
			t.Fatal("E2E_BASE_URL is set but E2E_JAEGER_URL is not")
		}
		tg := &target{base: strings.TrimRight(base, "/"), service: envOr("E2E_SERVICE_NAME", "cacheside"), jaeger: jaeger{base: strings.TrimRight(jurl, "/")},
			databaseURL: os.Getenv("E2E_DATABASE_URL"), token: os.Getenv("E2E_API_TOKEN")}
		if stop, start := os.Getenv("E2E_REDIS_STOP_CMD"), os.Getenv("E2E_REDIS_START_CMD"); stop != "" && start != "" {
			tg.stopRedis = func(t *testing.T) { shell(t, stop) }
			tg.startRedis = func(t *testing.T) { shell(t, start) }
		}
		return tg
	}

	j := startJaeger(t)
	redis := testenv.StartRedis(t)
	dbURL := testenv.Database(t)
	bin := buildService(t)
	token := testenv.Token()
	common := []string{
		"API_TOKENS=" + token,
		"DATABASE_URL=" + dbURL,
		"REDIS_URL=" + redis.URL(),
		"CACHE_KEY_PREFIX=" + testenv.Name("e2e"),
		"CACHE_BREAKER_COOLDOWN=1s",
		"OTEL_BSP_SCHEDULE_DELAY=100", // export within 100 ms instead of 5 s
	}
	service := testenv.Name("cacheside-e2e-")
	tg := &target{
		token:       token,
		service:     service,
		databaseURL: dbURL,
		jaeger:      jaeger{base: j.query},
		base: runService(t, bin, append(common,
			"OTEL_SERVICE_NAME="+service,
			"OTEL_EXPORTER_OTLP_ENDPOINT=http://"+j.otlpHTTP,
			"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf")),
		stopRedis:  func(*testing.T) { redis.Stop() },
		startRedis: func(*testing.T) { redis.Start() },
	}
	tg.grpcService = &target{service: service + "-grpc"}
	tg.grpcService.base = runService(t, bin, append(common,
		"OTEL_SERVICE_NAME="+tg.grpcService.service,
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://"+j.otlpGRPC,
		"OTEL_EXPORTER_OTLP_PROTOCOL=grpc"))
	return tg
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func shell(t *testing.T, command string) {
	t.Helper()
	if out, err := exec.Command("sh", "-c", command).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", command, err, out)
	}
}

type jaegerProc struct{ query, otlpHTTP, otlpGRPC string }

// startJaeger runs the Jaeger v2 all-in-one built by hack/jaeger.sh, on free ports, with the
// repo's config (memory storage, OTLP in, query API out).
func startJaeger(t *testing.T) jaegerProc {
	t.Helper()
	bin := os.Getenv("JAEGER_BIN")
	if bin == "" {
		t.Fatal("JAEGER_BIN is not set: run the tests with `make test`, which builds Jaeger (hack/jaeger.sh build)")
	}
	ports := map[string]int{}
	var env []string
	for _, name := range []string{"OTLP_GRPC", "OTLP_HTTP", "QUERY", "QUERY_GRPC", "HEALTH", "METRICS"} {
		ports[name] = testenv.FreePort(t)
		env = append(env, fmt.Sprintf("JAEGER_%s_PORT=%d", name, ports[name]))
	}
	cmd := testenv.Command(bin, "--config", filepath.Join(repoRoot(t), "hack", "jaeger", "config.yaml"))
	cmd.Env = append(os.Environ(), env...)
	log, err := os.Create(filepath.Join(t.TempDir(), "jaeger.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting jaeger: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		log.Close()
		if t.Failed() {
			out, _ := os.ReadFile(log.Name())
			t.Logf("jaeger log (tail):\n%s", tail(string(out), 3000))
		}
	})
	j := jaegerProc{
		query:    fmt.Sprintf("http://127.0.0.1:%d", ports["QUERY"]),
		otlpHTTP: fmt.Sprintf("127.0.0.1:%d", ports["OTLP_HTTP"]),
		otlpGRPC: fmt.Sprintf("127.0.0.1:%d", ports["OTLP_GRPC"]),
	}
	testenv.Eventually(t, 60*time.Second, func() error {
		res, err := http.Get(j.query + "/api/v3/services")
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			return fmt.Errorf("/api/v3/services: %d", res.StatusCode)
		}
		return nil
	})
	return j
}

func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

func buildService(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "cacheside")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(repoRoot(t), "app")).CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func runService(t *testing.T, bin string, env []string) string {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	admin := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cmd := testenv.Command(bin, "serve")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HTTP_ADDR=" + addr, "ADMIN_ADDR=" + admin}, env...)
	out := &testenv.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt) // graceful: flushes the last spans
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("cacheside log (tail):\n%s", tail(out.String(), 3000))
		}
	})
	base := "http://" + addr
	testenv.Eventually(t, 20*time.Second, func() error {
		res, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		res.Body.Close()
		return nil
	})
	testenv.ReplicationSettled(t, base)
	return base
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
