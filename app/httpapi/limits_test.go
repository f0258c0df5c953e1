package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"github.com/cacheside/cacheside/app/internal/testenv"
	"github.com/cacheside/cacheside/app/platform/logging"
	"github.com/cacheside/cacheside/app/service"
)

// served is the service as the binary assembles it, from the production defaults and
// overrides, behind a real HTTP server.
type served struct {
	url   string
	logs  *testenv.Buffer
	cfg   string // the database URL
	token string // sent with every request that names no Authorization of its own
}

func serveWith(t *testing.T, overrides ...string) *served {
	t.Helper()
	cfg := testenv.Config(t, overrides...)
	logs := &testenv.Buffer{}
	svc, err := service.Open(context.Background(), cfg, logging.New(logs, "debug", "json"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		svc.Close(context.Background())
		if t.Failed() {
			t.Logf("service log:\n%s", logs)
		}
	})
	srv := httptest.NewServer(svc.Handler())
	t.Cleanup(srv.Close)
	return &served{url: srv.URL, logs: logs, cfg: cfg.DatabaseURL, token: cfg.APITokens[0]}
}

type answer struct {
	status int
	header http.Header
	body   string
}

// call sends one request; header holds extra "Name: value" fields.
func (s *served) call(t *testing.T, method, path string, header ...string) answer {
	t.Helper()
	req, err := http.NewRequest(method, s.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	for _, h := range header {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return answer{status: res.StatusCode, header: res.Header, body: string(b)}
}

// exhaust sends requests, a few at a time as a busy client would, until one is answered 429,
// and returns that answer. It gives up after enough requests to spend the burst many times
// over: the budget refills while requests are sent, never nearly that fast.
func (s *served) exhaust(t *testing.T, method, path string, header ...string) answer {
	t.Helper()
	const senders, most = 8, 2000
	var (
		mu      sync.Mutex
		limited *answer
		sent    int
		wg      sync.WaitGroup
	)
	for range senders {
		wg.Go(func() {
			for {
				mu.Lock()
				if limited != nil || sent >= most {
					mu.Unlock()
					return
				}
				sent++
				mu.Unlock()
				a := s.call(t, method, path, header...)
				switch a.status {
				case http.StatusTooManyRequests:
					mu.Lock()
					if limited == nil {
						limited = &a
					}
					mu.Unlock()
					return
				case http.StatusOK, http.StatusNotFound:
				default:
					t.Errorf("%s %s: %d %s", method, path, a.status, a.body)
					return
				}
			}
		})
	}
	wg.Wait()
	if limited == nil {
		t.Fatalf("%s %s: %d requests and none was limited", method, path, sent)
	}
	return *limited
}

// spent reports whether an answer shows a budget already spent: refused, or with at most half
// the burst left. Right after a 429 the budget refills (a read every 20 ms at the defaults), so
// the next request may pass; a fresh budget would show it whole. Half is a stall of a second.
func spent(t *testing.T, a answer, policy string, burst int) bool {
	t.Helper()
	return a.status == http.StatusTooManyRequests || remaining(t, a, policy) <= burst/2
}

var rateLimitField = regexp.MustCompile(`^"(reads|writes)";r=(\d+);t=(\d+)$`)

// remaining is the r of a RateLimit field, checked against the draft's syntax.
func remaining(t *testing.T, a answer, policy string) int {
	t.Helper()
	m := rateLimitField.FindStringSubmatch(a.header.Get("RateLimit"))
	if m == nil || m[1] != policy {
		t.Fatalf("RateLimit %q, want \"%s\";r=<n>;t=<seconds>", a.header.Get("RateLimit"), policy)
	}
	n, _ := strconv.Atoi(m[2])
	return n
}

func TestAClientOverItsBudgetGets429WithTheRateLimitFields(t *testing.T) {
	s := serveWith(t) // production defaults: 50 reads a second, bursts of 100

	first := s.call(t, "GET", "/cache")
	if first.status != http.StatusOK {
		t.Fatalf("first read: %d %s", first.status, first.body)
	}
	if got, want := first.header.Get("RateLimit-Policy"), `"reads";q=100;w=2`; got != want {
		t.Errorf("RateLimit-Policy on an allowed read = %q, want %q", got, want)
	}
	if r := remaining(t, first, "reads"); r != 99 {
		t.Errorf("the first read left r=%d, want 99", r)
	}

	limited := s.exhaust(t, "GET", "/cache")
	var body struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal([]byte(limited.body), &body); err != nil || body.Error.Code != "rate_limited" {
		t.Errorf("429 body %q, want the JSON error rate_limited", limited.body)
	}
	if ra, err := strconv.Atoi(limited.header.Get("Retry-After")); err != nil || ra < 1 {
		t.Errorf("Retry-After %q, want whole seconds, at least 1", limited.header.Get("Retry-After"))
	}
	if got, want := limited.header.Get("RateLimit-Policy"), `"reads";q=100;w=2`; got != want {
		t.Errorf("RateLimit-Policy on a 429 = %q, want %q", got, want)
	}
	if r := remaining(t, limited, "reads"); r != 0 {
		t.Errorf("a 429 says r=%d, want 0", r)
	}

	t.Run("probes are never limited", func(t *testing.T) {
		for _, path := range []string{"/healthz", "/readyz"} {
			if a := s.call(t, "GET", path); a.status != http.StatusOK || a.header.Get("RateLimit") != "" {
				t.Errorf("%s while the client is limited: %d, RateLimit %q", path, a.status, a.header.Get("RateLimit"))
			}
		}
	})
}

// TestGuessingTokensIsHeldToTheWriteBudget: the limiter runs before the token check, so a
// client trying tokens gets its 401s only as fast as the write budget allows, then 429s.
func TestGuessingTokensIsHeldToTheWriteBudget(t *testing.T) {
	s := serveWith(t)
	refused := 0
	for range 2000 {
		a := s.call(t, "DELETE", "/samples/1", "Authorization: Bearer "+strings.Repeat("g", 32))
		switch a.status {
		case http.StatusUnauthorized:
			refused++
			continue
		case http.StatusTooManyRequests:
			if refused < 10 {
				t.Errorf("limited after %d guesses; the write burst is 20", refused)
			}
			return
		default:
			t.Fatalf("a guessed token: %d %s", a.status, a.body)
		}
	}
	t.Fatalf("%d guessed tokens and none was limited", refused)
}

func TestReadAndWriteBudgetsAreKeptApart(t *testing.T) {
	t.Run("a client out of reads may still write", func(t *testing.T) {
		s := serveWith(t)
		s.exhaust(t, "GET", "/samples/1")
		a := s.call(t, "DELETE", "/samples/999999")
		if a.status != http.StatusNotFound {
			t.Fatalf("a write after the reads ran out: %d %s", a.status, a.body)
		}
		if got, want := a.header.Get("RateLimit-Policy"), `"writes";q=20;w=2`; got != want {
			t.Errorf("RateLimit-Policy of a write = %q, want %q", got, want)
		}
		// A whole burst less one; redis_rate's floating-point arithmetic may round one more down.
		if r := remaining(t, a, "writes"); r < 18 {
			t.Errorf("the first write left r=%d, want 19 (or 18)", r)
		}
	})
	t.Run("a client out of writes may still read", func(t *testing.T) {
		s := serveWith(t)
		limited := s.exhaust(t, "DELETE", "/samples/999999")
		if r := remaining(t, limited, "writes"); r != 0 {
			t.Errorf("a limited write says r=%d", r)
		}
		a := s.call(t, "GET", "/samples/1")
		if a.status != http.StatusNotFound {
			t.Fatalf("a read after the writes ran out: %d %s", a.status, a.body)
		}
		if r := remaining(t, a, "reads"); r < 98 {
			t.Errorf("the first read left r=%d, want 99 (or 98)", r)
		}
	})
}

func TestTheForwardedAddressCountsOnlyFromATrustedProxy(t *testing.T) {
	t.Run("from an untrusted peer X-Forwarded-For changes nothing", func(t *testing.T) {
		s := serveWith(t)
		s.exhaust(t, "GET", "/samples/1", "X-Forwarded-For: 203.0.113.1")
		if a := s.call(t, "GET", "/samples/1", "X-Forwarded-For: 203.0.113.2"); !spent(t, a, "reads", 100) {
			t.Errorf("a made-up forwarded address got a fresh budget: %d, RateLimit %q", a.status, a.header.Get("RateLimit"))
		}
	})
	t.Run("from a trusted proxy each forwarded client has its own budget", func(t *testing.T) {
		s := serveWith(t, "HTTP_TRUSTED_PROXIES=127.0.0.1/32,::1")
		s.exhaust(t, "GET", "/samples/1", "X-Forwarded-For: 203.0.113.1")
		if a := s.call(t, "GET", "/samples/1", "X-Forwarded-For: 203.0.113.2"); a.status != http.StatusNotFound || remaining(t, a, "reads") < 98 {
			t.Errorf("another client behind the proxy: %d, RateLimit %q; want its own full budget", a.status, a.header.Get("RateLimit"))
		}
		// The proxy appends the peer it saw: whatever the client wrote before it is not trusted.
		if a := s.call(t, "GET", "/samples/1", "X-Forwarded-For: 203.0.113.9, 203.0.113.1"); !spent(t, a, "reads", 100) {
			t.Errorf("a limited client prepending another address got a fresh budget: %d, RateLimit %q", a.status, a.header.Get("RateLimit"))
		}
	})
}

// TestWithRedisDownTheLimiterFallsBackInProcess stops the service's Redis: clients are still
// limited, in process, with the same headers; the change is logged once each way.
func TestWithRedisDownTheLimiterFallsBackInProcess(t *testing.T) {
	r := testenv.StartRedis(t)
	s := serveWith(t, "REDIS_URL="+r.URL())
	s.exhaust(t, "GET", "/samples/1")

	r.Stop()
	down := len(s.logs.String())
	// The in-process limiter starts each client with its whole burst: neither open nor closed.
	if a := s.call(t, "GET", "/samples/1"); a.status != http.StatusNotFound {
		t.Fatalf("the first read with Redis down: %d %s", a.status, a.body)
	}
	limited := s.exhaust(t, "GET", "/samples/1")
	if r := remaining(t, limited, "reads"); r != 0 || limited.header.Get("Retry-After") == "" {
		t.Errorf("limited in process: RateLimit %q Retry-After %q", limited.header.Get("RateLimit"), limited.header.Get("Retry-After"))
	}
	// Hundreds of requests with Redis down, one line. (A timeout on this busy machine before the
	// stop may have logged the fallback already: then the state is the fallback and none is new.)
	if n := strings.Count(s.logs.String()[down:], "rate limiter: Redis is unusable"); n > 1 {
		t.Errorf("the fallback was logged %d times, want once", n)
	}
	if logs := s.logs.String(); strings.LastIndex(logs, "rate limiter: Redis is unusable") < strings.LastIndex(logs, "rate limiter: Redis is usable again") ||
		!strings.Contains(logs, "rate limiter: Redis is unusable") {
		t.Errorf("the fallback is not the last change logged")
	}

	r.Start()
	up := len(s.logs.String())
	// Back on Redis: the client's budget there is whole again by now, or nearly.
	testenv.Eventually(t, time.Minute, func() error {
		if !strings.Contains(s.logs.String()[up:], "rate limiter: Redis is usable again") {
			s.call(t, "GET", "/healthz")
			s.call(t, "GET", "/samples/1")
			return fmt.Errorf("no return to Redis logged")
		}
		return nil
	})
	for range 20 { // decided in Redis now: no more news
		s.call(t, "GET", "/samples/1")
	}
	if n := strings.Count(s.logs.String()[up:], "rate limiter: Redis is usable again"); n != 1 {
		t.Errorf("the return was logged %d times, want once", n)
	}
}

// TestPastTheInFlightBoundRequestsAreShedAtOnce holds every /sample request inside Postgres with
// a table lock: the requests past HTTP_MAX_IN_FLIGHT (the production default) are answered 503
// while the lock is still held, the probes still answer, and the admitted ones all succeed once
// it is released.
func TestPastTheInFlightBoundRequestsAreShedAtOnce(t *testing.T) {
	// The rate limit would refuse one client's hundreds of reads first; and the held requests
	// must outlive the lock, so DATABASE_TIMEOUT is raised past the test's own bound.
	s := serveWith(t, "RATE_LIMIT_ENABLED=false", "DATABASE_TIMEOUT=5m")
	const bound, extra = 256, 40
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: bound + extra}}

	ctx := context.Background()
	locker, err := pgx.Connect(ctx, s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close(ctx)
	tx, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "LOCK TABLE samples IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}

	var (
		mu       sync.Mutex
		statuses = map[int]int{}
		shed     []answer
		wg       sync.WaitGroup
	)
	for range bound + extra {
		wg.Go(func() {
			res, err := client.Get(s.url + "/sample")
			if err != nil {
				t.Errorf("GET /sample: %v", err)
				return
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			statuses[res.StatusCode]++
			if res.StatusCode == http.StatusServiceUnavailable {
				shed = append(shed, answer{status: res.StatusCode, header: res.Header, body: string(b)})
			}
		})
	}
	// Every request past the bound is answered while the lock is held: none queued.
	testenv.Eventually(t, 2*time.Minute, func() error {
		mu.Lock()
		defer mu.Unlock()
		if statuses[http.StatusServiceUnavailable] < extra {
			return fmt.Errorf("answered while the lock is held: %v", statuses)
		}
		return nil
	})
	mu.Lock()
	early := maps(statuses)
	mu.Unlock()
	if diff := cmp.Diff(map[int]int{http.StatusServiceUnavailable: extra}, early); diff != "" {
		t.Errorf("answers while the lock is held (-want +got):\n%s", diff)
	}
	for _, a := range shed {
		if !strings.Contains(a.body, `"code":"overloaded"`) || a.header.Get("Retry-After") != "5" {
			t.Errorf("a shed request: Retry-After %q body %s", a.header.Get("Retry-After"), a.body)
			break
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if a := s.call(t, "GET", path); a.status != http.StatusOK {
			t.Errorf("%s at the bound: %d %s", path, a.status, a.body)
		}
	}

	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if diff := cmp.Diff(map[int]int{http.StatusOK: bound, http.StatusServiceUnavailable: extra}, statuses); diff != "" {
		t.Errorf("answers (-want +got):\n%s", diff)
	}
}

func maps(m map[int]int) map[int]int {
	c := make(map[int]int, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
