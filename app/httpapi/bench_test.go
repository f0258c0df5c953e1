package httpapi_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/cacheside/cacheside/app/cache"
)

// BenchmarkList measures the list endpoints in-process through the real router and middleware,
// over real Postgres and Redis, at the tutorial's 1,000 rows. Compare the sub-benchmarks of one
// run with each other; absolute numbers depend on the machine.
//
// The per-client rate limits are off: one in-process client this fast is what they refuse, and
// they would add their own Redis round trip to every path measured here.
func BenchmarkList(b *testing.B) {
	noLimits := []string{"RATE_LIMIT_ENABLED=false"}
	redisOnly := start(b, setup{overrides: noLimits})
	near := start(b, setup{nearCache: true, databaseURL: redisOnly.databaseURL, overrides: noLimits})
	b.Log("RATE_LIMIT_ENABLED=false: the per-client limits would refuse this one client and add a Redis round trip per request")
	if _, err := redisOnly.svc.Samples.Seed(context.Background(), 1000, true); err != nil {
		b.Fatal(err)
	}
	serve := func(b *testing.B, e *env, path string, header map[string]string, wantStatus int, wantCache string) {
		b.Helper()
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, path, nil)
		for k, v := range header {
			req.Header.Set(k, v)
		}
		e.router.ServeHTTP(rec, req)
		if rec.Code != wantStatus || (wantCache != "any" && rec.Header().Get("X-Cache") != wantCache) {
			b.Fatalf("GET %s: %d X-Cache=%q, want %d %q", path, rec.Code, rec.Header().Get("X-Cache"), wantStatus, wantCache)
		}
		b.SetBytes(int64(rec.Body.Len()))
	}
	gzipClient := map[string]string{"Accept-Encoding": "gzip"}

	b.Run("uncached /sample", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			serve(b, redisOnly, "/sample", nil, 200, "")
		}
	})
	b.Run("redis hit, gzip client", func(b *testing.B) {
		serve(b, redisOnly, "/cache", gzipClient, 200, "any") // a MISS the first time (-count runs it again)
		b.ReportAllocs()
		for b.Loop() {
			serve(b, redisOnly, "/cache", gzipClient, 200, "HIT")
		}
	})
	b.Run("redis hit, identity client", func(b *testing.B) {
		serve(b, redisOnly, "/cache", nil, 200, "any") // a MISS when run alone
		b.ReportAllocs()
		for b.Loop() {
			serve(b, redisOnly, "/cache", nil, 200, "HIT")
		}
	})
	b.Run("near-cache hit, gzip client", func(b *testing.B) {
		serve(b, near, "/cache", gzipClient, 200, "any") // fills Redis and the near tier
		b.ReportAllocs()
		for b.Loop() {
			serve(b, near, "/cache", gzipClient, 200, "HIT")
		}
	})
	b.Run("near-cache hit, identity client", func(b *testing.B) {
		serve(b, near, "/cache", nil, 200, "any") // keeps the plain copy (a MISS when run alone)
		b.ReportAllocs()
		for b.Loop() {
			serve(b, near, "/cache", nil, 200, "HIT")
		}
	})
	b.Run("revalidation 304", func(b *testing.B) {
		rec := httptest.NewRecorder()
		near.router.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/cache", nil))
		tag := map[string]string{"If-None-Match": rec.Header().Get("ETag")}
		b.ReportAllocs()
		for b.Loop() {
			serve(b, near, "/cache", tag, 304, "HIT")
		}
	})
	b.Run("cache miss", func(b *testing.B) {
		// Each iteration retires the list, as a write would, then misses: lookup, load, store.
		list := cache.Key{Space: "list", ID: "all"}
		b.ReportAllocs()
		for b.Loop() {
			if err := redisOnly.svc.Cache.Invalidate(context.Background(), list); err != nil {
				b.Fatal(err)
			}
			serve(b, redisOnly, "/cache", gzipClient, 200, "MISS")
		}
	})
}
