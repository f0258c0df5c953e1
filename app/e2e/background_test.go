package e2e_test

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/cacheside/cacheside/app/internal/testenv"
)

// TestTracesShowEarlyRefreshesAndStaleAnswers checks what the two answers that do not follow
// from the request alone leave in Jaeger: an early refresh (XFetch) runs in a trace of its own,
// after the request that triggered it has been answered, so the only ways between the two are
// the refresh span's link to the triggering read and that read's cache.early_refresh event
// naming the refresh's trace; and a STALE answer must say that it is one and how old it is, or
// an outage reads as a run of ordinary hits.
//
// Local mode only: it needs a TTL short enough to cross and a Postgres it can stop, so it runs
// its own service (CACHE_TTL=2s, replication off) on a private Postgres.
func TestTracesShowEarlyRefreshesAndStaleAnswers(t *testing.T) {
	if os.Getenv("E2E_BASE_URL") != "" {
		t.Skip("remote target: the check needs a short CACHE_TTL and a Postgres it can stop")
	}
	j := startJaeger(t)
	pg := testenv.StartPostgres(t)
	bin := buildService(t)
	token := testenv.Token()
	service := testenv.Name("cacheside-e2e-bg-")
	base := runService(t, bin, []string{
		"API_TOKENS=" + token,
		"DATABASE_URL=" + testenv.CreateDatabase(t, pg.AdminURL()),
		"REDIS_URL=" + testenv.RedisURL(t),
		"CACHE_KEY_PREFIX=" + testenv.Name("e2e"),
		"CACHE_TTL=2s",
		"CACHE_TTL_JITTER=0",
		// XFetch refreshes when beta × load time × -ln(rand) reaches the time left: with this
		// beta every hit does (one refresh per key at a time), so the first hit is the trigger.
		"CACHE_EARLY_REFRESH_BETA=1000000",
		// The follower would retire each write once more from the stream, which is not what
		// this test is about; and the private Postgres has no wal_level=logical.
		"REPLICATION_ENABLED=false",
		"OTEL_SERVICE_NAME=" + service,
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + j.otlpHTTP,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_BSP_SCHEDULE_DELAY=100",
	})
	jg := jaeger{base: j.query}
	c := client{base: base, token: token}
	if r := c.do(t, "POST", "/samples", `{"title":"refreshed"}`, ""); r.status != 201 {
		t.Fatalf("POST /samples: %d %s", r.status, r.body)
	}
	if r := c.do(t, "GET", "/cache", "", ""); r.xcache != "MISS" {
		t.Fatalf("first /cache after a write: X-Cache %q, want MISS", r.xcache)
	}

	t.Run("an early refresh is linked to the read that triggered it, and that read names its trace", func(t *testing.T) {
		var trigger traceParent
		var get span
		var refreshTrace string
		for attempt := 1; refreshTrace == ""; attempt++ {
			if attempt > 5 {
				t.Fatal("5 hits in a row triggered no early refresh (no cache.early_refresh event on their cache.get)")
			}
			trigger = newParent()
			if r := c.do(t, "GET", "/cache", "", trigger.header()); r.status != 200 || r.xcache != "HIT" {
				t.Fatalf("GET /cache: %d X-Cache %q, want a HIT", r.status, r.xcache)
			}
			awaitTrace(t, jg, trigger, func(tr trace) []string {
				var p []string
				_, g := rootAndLookup(tr, trigger, "HIT", &p)
				if g == nil {
					return p
				}
				get = *g
				if ev, ok := g.event("cache.early_refresh"); ok {
					if refreshTrace, _ = attrOf(ev.Attributes, "cache.refresh.trace_id"); refreshTrace == "" {
						p = append(p, "the cache.early_refresh event does not name the refresh's trace (cache.refresh.trace_id)")
					}
				}
				return p
			})
			if refreshTrace == "" {
				t.Logf("attempt %d: the hit triggered no refresh (one was under way); again", attempt)
			}
		}
		awaitTrace(t, jg, traceParent{traceID: refreshTrace}, func(tr trace) []string {
			refreshes := tr.named("cache.refresh list")
			if len(refreshes) != 1 {
				return []string{fmt.Sprintf("%d cache.refresh list spans in the refresh's trace", len(refreshes))}
			}
			r := refreshes[0]
			var p []string
			if r.ParentSpanID != "" || r.TraceID == trigger.traceID {
				p = append(p, "cache.refresh is not the root of a trace of its own")
			}
			links := r.linksTo(trigger.traceID, get.SpanID)
			if len(links) != 1 {
				p = append(p, fmt.Sprintf("cache.refresh has %d links to the triggering cache.get (trace %s span %s), want 1; links: %+v",
					len(links), trigger.traceID, get.SpanID, r.Links))
			} else if why, _ := attrOf(links[0].Attributes, "cache.link"); why == "" {
				p = append(p, "the link to the triggering read does not say what it is (cache.link)")
			}
			if key, _ := r.attr("cache.key"); key == "" {
				p = append(p, "cache.refresh lacks cache.key")
			}
			// Why XFetch fired: the time the value had left and what loading it costs.
			for _, name := range []string{"cache.ttl_left_ms", "cache.load_time_ms"} {
				v, ok := r.attr(name)
				if f, err := strconv.ParseFloat(v, 64); !ok || err != nil || f < 0 {
					p = append(p, fmt.Sprintf("cache.refresh %s = %q, want a number of milliseconds", name, v))
				}
			}
			if lease, _ := r.attr("cache.lease"); lease != "acquired" {
				p = append(p, fmt.Sprintf("cache.refresh cache.lease = %q, want acquired (it loaded)", lease))
			}
			loads := tr.find(func(s span) bool { return s.Name == "cache.load list" && tr.descendsFrom(s, r) })
			if len(loads) != 1 || len(tr.find(func(s span) bool { return isPostgres(s) && tr.descendsFrom(s, loads[0]) })) == 0 {
				p = append(p, "no cache.load with a Postgres query under cache.refresh")
			}
			return p
		})
	})

	t.Run("a STALE answer's span says it is stale, how old, and why", func(t *testing.T) {
		pg.Stop()
		var stale traceParent
		var age int
		testenv.Eventually(t, 30*time.Second, func() error {
			stale = newParent()
			r := c.do(t, "GET", "/cache", "", stale.header())
			switch {
			case r.status != 200:
				t.Fatalf("GET /cache with Postgres down: %d %s, want the cached list (HIT, then STALE)", r.status, r.body)
			case r.xcache != "STALE":
				return fmt.Errorf("X-Cache %q, not STALE yet (the TTL has not run out)", r.xcache)
			}
			var err error
			if age, err = strconv.Atoi(r.header.Get("Age")); err != nil {
				t.Fatalf("STALE without a whole-second Age: %q", r.header.Get("Age"))
			}
			return nil
		})
		awaitTrace(t, jg, stale, func(tr trace) []string {
			var p []string
			server, get := rootAndLookup(tr, stale, "STALE", &p)
			if get == nil {
				return p
			}
			if v, _ := get.attr("cache.stale"); v != "true" {
				p = append(p, fmt.Sprintf("cache.get cache.stale = %q, want true", v))
			}
			// The value is past its 2 s TTL, and Age counts whole seconds of the same time, taken
			// a moment later.
			v, _ := get.attr("cache.age_ms")
			if ms, err := strconv.ParseInt(v, 10, 64); err != nil || ms < 2000 || ms/1000 > int64(age) {
				p = append(p, fmt.Sprintf("cache.get cache.age_ms = %q, want the value's age in ms: past the 2 s TTL, and %d s by the Age header", v, age))
			}
			if ev, ok := get.event("cache.stale"); !ok {
				p = append(p, "no cache.stale event on cache.get")
			} else if why, _ := attrOf(ev.Attributes, "reason"); why == "" {
				p = append(p, "the cache.stale event does not say why the load failed (reason)")
			}
			if get.Status.Code != statusError {
				p = append(p, "cache.get of a STALE answer is not marked as failed: the source was unavailable")
			}
			if server.Status.Code == statusError {
				p = append(p, "the request span is marked as an error: the request was answered (200)")
			}
			loads := tr.find(func(s span) bool { return s.Name == "cache.load list" && s.ParentSpanID == get.SpanID })
			if len(loads) != 1 || loads[0].Status.Code != statusError {
				p = append(p, "no failed cache.load under cache.get: the trace does not show why the answer is stale")
			}
			return p
		})
	})
	pg.Start() // so the test database's cleanup can drop it
}
