package cache_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/cacheside/cacheside/app/cache"
	"github.com/cacheside/cacheside/app/internal/testenv"
	"github.com/cacheside/cacheside/app/view"
)

// errDown stands for the source being unreachable, the one error a stale value may answer.
var errDown = errors.New("source unavailable")

func staleOptions(prefix string) cache.Options {
	o := options(prefix)
	o.TTL, o.Jitter, o.StaleGrace = 300*time.Millisecond, 0, time.Hour
	// These tests are about which value answers, not about Redis being slow: on a starved
	// machine a store or lookup past the usual bound would make a read bypass or a value go
	// unstored, and the test fail for a reason it does not test.
	o.OpTimeout = 5 * time.Second
	o.StaleIfError = func(err error) bool { return errors.Is(err, errDown) }
	return o
}

// newCache returns a cache with o, closed when the test ends, once its near-cache (if on) is
// subscribed.
func newCache(t *testing.T, rdb *redis.Client, o cache.Options) *cache.Cache {
	t.Helper()
	if o.NearCache {
		return withOptions(t, rdb, o)
	}
	c := cache.New(rdb, o)
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// down is a loader for a source that cannot be reached.
func down(context.Context) (view.View, error) { return view.View{}, errDown }

// cached reads key through load until a read is a hit: the value is stored.
func cached(t *testing.T, c *cache.Cache, load cache.Loader) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, func() error {
		if res := fetch(t, c, load); res.Served.Outcome != view.Hit {
			return fmt.Errorf("read %s", res.Served.Outcome)
		}
		return nil
	})
}

// expired waits until the value of key is past its TTL: a read with the source down then answers
// STALE. Before that it answers HIT; anything else fails the test.
func expired(t *testing.T, c *cache.Cache, want string) view.View {
	t.Helper()
	var res view.View
	testenv.Eventually(t, 30*time.Second, func() error {
		var err error
		res, err = c.Fetch(context.Background(), key, down)
		switch {
		case err != nil:
			t.Fatalf("a read of a cached value with the source down failed: %v", err)
		case string(res.Body) != want:
			t.Fatalf("a read with the source down served %q, want %q", res.Body, want)
		case res.Served.Outcome == view.Hit:
			return fmt.Errorf("still within its TTL")
		case res.Served.Outcome != view.Stale:
			t.Fatalf("a read with the source down: %s, want HIT or STALE", res.Served.Outcome)
		}
		return nil
	})
	return res
}

func TestAValueWhoseGenerationIsCurrentAnswersStaleWhenTheSourceFails(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	c := newCache(t, rdb, staleOptions(prefix))
	src := &source{value: "current"}
	cached(t, c, src.load)

	res := expired(t, c, "current")
	if res.Stored.IsZero() || time.Since(res.Stored) < 300*time.Millisecond {
		t.Errorf("a stale value stored at %v, want one older than its TTL", res.Stored)
	}

	t.Run("an error that is not the source being down is not papered over", func(t *testing.T) {
		_, err := c.Fetch(context.Background(), key, func(context.Context) (view.View, error) { return view.View{}, errors.New("a bug") })
		if err == nil || errors.Is(err, errDown) {
			t.Errorf("Fetch = %v, want the loader's own error", err)
		}
	})
	t.Run("once the source answers, the value is reloaded", func(t *testing.T) {
		src.set("reloaded")
		if res := fetch(t, c, src.load); res.Served.Outcome != view.Miss || string(res.Body) != "reloaded" {
			t.Errorf("read with the source back: %s %q, want MISS reloaded", res.Served.Outcome, res.Body)
		}
	})
}

func TestARetiredGenerationIsNeverServedStale(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	c := newCache(t, rdb, staleOptions(prefix))
	src := &source{value: "before the write"}
	cached(t, c, src.load)
	expired(t, c, "before the write")

	// A slow reader that loaded before the write stores its value after the write retired the
	// generation (the stale-set race): the old bytes are back in Redis, under the old generation.
	valueKey := prefix + ":{" + key.Space + ":" + key.ID + "}:v"
	old, err := rdb.Get(context.Background(), valueKey).Result()
	if err != nil {
		t.Fatalf("reading the stored value: %v", err)
	}
	src.set("the write") // commits, then retires
	if err := c.Invalidate(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(context.Background(), valueKey, old, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if res, err := c.Fetch(context.Background(), key, down); !errors.Is(err, errDown) {
		t.Errorf("a read of a retired key with the source down: %s %q %v, want the source's error", res.Served.Outcome, res.Body, err)
	}
}

// TestAKeyWhoseRetirementIsUnconfirmedIsNeverServedStale: while this process waits for Redis to
// take a write's new generation, Redis still holds the old one, and the value stored under it
// must not answer even though the lookup would call it current.
func TestAKeyWhoseRetirementIsUnconfirmedIsNeverServedStale(t *testing.T) {
	for _, near := range []bool{false, true} {
		t.Run(fmt.Sprintf("near-cache %v", near), func(t *testing.T) {
			rdb, prefix := testenv.Redis(t)
			held, release := holdGenerationWrites(rdb)
			o := staleOptions(prefix)
			if near {
				o.NearCache, o.NearCacheTTL, o.NearCacheMaxBytes = true, time.Minute, 1<<20
			}
			c := newCache(t, rdb, o)
			src := &source{value: "before the write"}
			cached(t, c, src.load)
			expired(t, c, "before the write")

			invalidated := make(chan error)
			go func() { invalidated <- c.Invalidate(context.Background(), key) }()
			<-held
			res, err := c.Fetch(context.Background(), key, down)
			close(release)
			<-invalidated
			if !errors.Is(err, errDown) || res.Served.Outcome == view.Stale {
				t.Errorf("a read while the retirement was unconfirmed: %s %q %v, want the source's error", res.Served.Outcome, res.Body, err)
			}
		})
	}
}

// slowSource is a source whose every read takes a while, as a large view does.
type slowSource struct {
	source
	took time.Duration
}

func (s *slowSource) load(ctx context.Context) (view.View, error) {
	select {
	case <-time.After(s.took):
	case <-ctx.Done():
		return view.View{}, ctx.Err()
	}
	return s.source.load(ctx)
}

// TestASteadilyReadKeyIsRefreshedBeforeItExpires runs readers against one key whose TTL is short
// until its value has been loaded again several times, and counts the reads that waited for a
// load (MISS). With early refresh at its default (beta 1) there must be none after the first;
// with it off, every reload is a miss, which shows that the test really crosses expiries.
func TestASteadilyReadKeyIsRefreshedBeforeItExpires(t *testing.T) {
	for _, tc := range []struct {
		name       string
		beta       float64
		wantMisses bool
	}{
		{"with early refresh no read waits for a load", 1, false},
		{"without it the expiries show as misses", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reader := sdkmetric.NewManualReader()
			previous := otel.GetMeterProvider()
			otel.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))
			t.Cleanup(func() { otel.SetMeterProvider(previous) })

			rdb, prefix := testenv.Redis(t)
			o := staleOptions(prefix)
			o.TTL, o.Jitter, o.EarlyRefreshBeta = 500*time.Millisecond, 0.1, tc.beta
			c := newCache(t, rdb, o)
			// The load time is XFetch's delta: 50 ms makes a refresh all but certain to begin
			// while reads arrive every few milliseconds, on a busy machine too.
			src := &slowSource{source: source{value: "v"}, took: 50 * time.Millisecond}
			cached(t, c, src.load) // warm-up: the one miss

			const reloads = 4
			var misses, reads atomic.Int64
			var wg sync.WaitGroup
			stop := make(chan struct{})
			for range 4 {
				wg.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
						}
						res, err := c.Fetch(context.Background(), key, src.load)
						if err != nil {
							t.Errorf("Fetch: %v", err)
							return
						}
						reads.Add(1)
						if res.Served.Outcome == view.Miss {
							misses.Add(1)
						}
					}
				})
			}
			testenv.Eventually(t, 2*time.Minute, func() error {
				if n := src.reads.Load(); n < 1+reloads {
					return fmt.Errorf("loaded %d times, want %d", n, 1+reloads)
				}
				return nil
			})
			close(stop)
			wg.Wait()
			t.Logf("%d reads, %d misses, %d loads", reads.Load(), misses.Load(), src.reads.Load())

			if got := misses.Load(); (got > 0) != tc.wantMisses {
				t.Errorf("%d reads waited for a load across %d reloads; want misses: %v", got, reloads, tc.wantMisses)
			}
			if got := counted(t, reader, "cacheside.cache.early_refreshes"); (got >= reloads) != !tc.wantMisses {
				t.Errorf("cacheside.cache.early_refreshes = %d for %d reloads", got, reloads)
			}
		})
	}
}

// counted sums a counter's data points.
func counted(t *testing.T, reader *sdkmetric.ManualReader, name string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, dp := range sum.DataPoints {
					n += dp.Value
				}
			}
		}
	}
	return n
}
