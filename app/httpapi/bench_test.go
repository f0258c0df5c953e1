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
func BenchmarkList(b *testing.B) {
	e := start(b, setup{})
	if _, err := e.db.Seed(context.Background(), 1000, true); err != nil {
		b.Fatal(err)
	}
	serve := func(b *testing.B, path, wantCache string) {
		b.Helper()
		rec := httptest.NewRecorder()
		e.router.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != 200 || rec.Header().Get("X-Cache") != wantCache {
			b.Fatalf("GET %s: %d X-Cache=%q, want 200 %q", path, rec.Code, rec.Header().Get("X-Cache"), wantCache)
		}
		b.SetBytes(int64(rec.Body.Len()))
	}

	b.Run("uncached /sample", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			serve(b, "/sample", "")
		}
	})
	b.Run("cache hit /cache", func(b *testing.B) {
		serve(b, "/cache", "MISS")
		b.ReportAllocs()
		for b.Loop() {
			serve(b, "/cache", "HIT")
		}
	})
	b.Run("cache miss /cache", func(b *testing.B) {
		// Each iteration retires the list, as a write would, then misses: lookup, load, store.
		list := cache.Key{Space: "list", ID: "all"}
		b.ReportAllocs()
		for b.Loop() {
			if err := e.cache.Invalidate(context.Background(), list); err != nil {
				b.Fatal(err)
			}
			serve(b, "/cache", "MISS")
		}
	})
}
