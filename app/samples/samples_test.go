package samples_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheside/cacheside/app/cache"
	"github.com/cacheside/cacheside/app/internal/testenv"
	"github.com/cacheside/cacheside/app/samples"
)

func stores(t *testing.T) (*samples.PGStore, *samples.CachedStore) {
	return storesWith(t, false)
}

// storesWith returns the Postgres store and the cached store over it, with the near-cache on
// when nearCache is set.
func storesWith(t *testing.T, nearCache bool) (*samples.PGStore, *samples.CachedStore) {
	t.Helper()
	pool := testenv.Pool(t, testenv.Database(t))
	rdb, prefix := testenv.Redis(t)
	db := samples.NewPGStore(pool, 5*time.Second)
	c := cache.New(rdb, cache.Options{
		Prefix: prefix, TTL: time.Minute, Jitter: 0.1, NegativeTTL: 30 * time.Second,
		OpTimeout: time.Second, LoadTimeout: 5 * time.Second, BreakerFailures: 3, BreakerCooldown: time.Second,
		Compress: true, Local: nearCache, LocalTTL: time.Minute, LocalMaxBytes: 1 << 20,
	})
	t.Cleanup(func() { c.Close(context.Background()) })
	if nearCache {
		testenv.Eventually(t, 10*time.Second, func() error {
			if h := c.Health(context.Background()); h.Local != "live" {
				return fmt.Errorf("near-cache %s", h.Local)
			}
			return nil
		})
	}
	return db, samples.NewCachedStore(db, c)
}

// TestNoReadStartedAfterAWriteReturnedSeesOlderData runs writers and readers together on real
// Postgres and Redis. Writers number their titles; a reader notes the newest number whose write
// had returned when the read began, and must never see an older one, on the item or the list.
func TestNoReadStartedAfterAWriteReturnedSeesOlderData(t *testing.T) {
	for _, near := range []bool{false, true} {
		t.Run(fmt.Sprintf("near-cache %v", near), func(t *testing.T) { readAfterWrite(t, near) })
	}
}

func readAfterWrite(t *testing.T, nearCache bool) {
	db, cached := storesWith(t, nearCache)
	ctx := context.Background()
	s, err := cached.Create(ctx, "v0")
	if err != nil {
		t.Fatal(err)
	}
	var returned atomic.Int64 // newest version whose write has returned
	const writes = 150

	version := func(title string) int64 {
		n, err := strconv.ParseInt(strings.TrimPrefix(title, "v"), 10, 64)
		if err != nil {
			t.Fatalf("unexpected title %q", title)
		}
		return n
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		defer close(done)
		for v := int64(1); v <= writes; v++ {
			if _, err := cached.Update(ctx, s.ID, fmt.Sprintf("v%d", v)); err != nil {
				t.Error(err)
				return
			}
			returned.Store(v)
		}
	})
	var reads atomic.Int64
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				floor := returned.Load()
				item, err := cached.Get(ctx, s.ID)
				if err != nil {
					t.Error(err)
					return
				}
				var one samples.Sample
				if err := json.Unmarshal(plain(t, item), &one); err != nil {
					t.Error(err)
					return
				}
				if v := version(one.Title); v < floor {
					t.Errorf("item read began after v%d returned but saw v%d (%s)", floor, v, item.Cache)
				}
				list, err := cached.List(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				var all []samples.Sample
				if err := json.Unmarshal(plain(t, list), &all); err != nil || len(all) != 1 {
					t.Errorf("list: %v %s", err, plain(t, list))
					return
				}
				if v := version(all[0].Title); v < floor {
					t.Errorf("list read began after v%d returned but saw v%d (%s)", floor, v, list.Cache)
				}
				reads.Add(1)
			}
		})
	}
	wg.Wait()
	if reads.Load() < writes/10 {
		t.Errorf("only %d reads overlapped %d writes: the test did not exercise concurrency", reads.Load(), writes)
	}
	final, err := db.Get(ctx, s.ID)
	if err != nil || !strings.Contains(string(final.Body), fmt.Sprintf(`"v%d"`, writes)) {
		t.Errorf("final row %s %v", final.Body, err)
	}
}

func TestSeedReplacesSamplesAndRetiresCachedViews(t *testing.T) {
	db, cached := stores(t)
	ctx := context.Background()
	old, err := cached.Create(ctx, "old")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cached.List(ctx); err != nil { // cache the list and the item
		t.Fatal(err)
	}
	if _, err := cached.Get(ctx, old.ID); err != nil {
		t.Fatal(err)
	}

	total, err := db.Seed(ctx, 10, true)
	if err != nil || total != 10 {
		t.Fatalf("Seed = %d, %v; want 10", total, err)
	}
	if err := cached.InvalidateAll(ctx); err != nil {
		t.Fatal(err)
	}

	list, err := cached.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var all []samples.Sample
	if err := json.Unmarshal(plain(t, list), &all); err != nil || len(all) != 10 || all[0].Title != "Sample 1" {
		t.Errorf("list after seeding: %d samples, %v", len(all), err)
	}
	if _, err := cached.Get(ctx, old.ID); !errors.Is(err, samples.ErrNotFound) {
		t.Errorf("the replaced sample is still served: err=%v", err)
	}
}

func TestAnEmptyTableListsAsAnEmptyArray(t *testing.T) {
	db, _ := stores(t)
	v, err := db.List(context.Background())
	if err != nil || string(v.Body) != "[]" {
		t.Errorf("List = %s, %v; want []", v.Body, err)
	}
}

func TestValidateTitle(t *testing.T) {
	for _, tc := range []struct {
		name  string
		title string
		ok    bool
	}{
		{"one character is enough", "a", true},
		{"200 multibyte characters fit", strings.Repeat("ü", 200), true},
		{"201 characters are too many", strings.Repeat("a", 201), false},
		{"empty is rejected", "", false},
		{"only spaces is rejected", " \t ", false},
		{"NUL is rejected because Postgres text cannot hold it", "a\x00b", false},
		{"invalid UTF-8 is rejected", "a\xffb", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := samples.ValidateTitle(tc.title)
			if (err == nil) != tc.ok {
				t.Errorf("ValidateTitle = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// plain returns a view's JSON, decompressed if the cache stored it gzipped.
func plain(t *testing.T, v samples.View) []byte {
	t.Helper()
	if v.Encoding != "gzip" {
		return v.Body
	}
	return testenv.Gunzip(t, v.Body)
}

// TestEveryStoreCallIsBoundedByTheQueryTimeout: with Postgres frozen (connections open, nothing
// answered), every call returns "unavailable" after DATABASE_TIMEOUT, though its caller gave it
// no deadline at all. Each call starts with an open connection in the pool, so it is the query,
// not the dial (bounded by DATABASE_CONNECT_TIMEOUT), that waits.
func TestEveryStoreCallIsBoundedByTheQueryTimeout(t *testing.T) {
	pg := testenv.StartPostgres(t)
	svc := testenv.Service(t, "DATABASE_URL="+testenv.CreateDatabase(t, pg.AdminURL()), "DATABASE_TIMEOUT=1s")
	db := svc.Samples
	s, err := db.Create(context.Background(), "one")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		call func(context.Context) error
	}{
		{"List", func(ctx context.Context) error { _, err := db.List(ctx); return err }},
		{"Get", func(ctx context.Context) error { _, err := db.Get(ctx, s.ID); return err }},
		{"Create", func(ctx context.Context) error { _, err := db.Create(ctx, "two"); return err }},
		{"Update", func(ctx context.Context) error { _, err := db.Update(ctx, s.ID, "three"); return err }},
		{"Delete", func(ctx context.Context) error { return db.Delete(ctx, s.ID) }},
		{"Count", func(ctx context.Context) error { _, err := db.Count(ctx); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := svc.Pool.Exec(context.Background(), "SELECT 1"); err != nil { // an open connection
				t.Fatal(err)
			}
			pg.Pause()
			defer pg.Resume()
			done := make(chan error, 1)
			go func() { done <- tc.call(context.Background()) }()
			select {
			case err := <-done:
				if !errors.Is(err, samples.ErrUnavailable) {
					t.Errorf("err = %v, want ErrUnavailable", err)
				}
			case <-time.After(30 * time.Second): // a hang guard, far above the timeout
				t.Fatal("no answer after 30s with Postgres frozen: the call is not bounded")
			}
		})
	}
}
