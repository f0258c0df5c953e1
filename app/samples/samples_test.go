package samples_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheside/cacheside/app/internal/testenv"
	"github.com/cacheside/cacheside/app/samples"
	"github.com/cacheside/cacheside/app/view"
)

// stores returns the Postgres store and the cached store over it, assembled as the service
// assembles them from its default configuration (overrides are NAME=value settings).
func stores(t *testing.T, overrides ...string) (*samples.PGStore, *samples.CachedStore) {
	t.Helper()
	svc := testenv.Service(t, overrides...)
	return svc.Samples, svc.Cached
}

// TestNoReadStartedAfterAWriteReturnedSeesOlderData runs a writer and readers together on real
// Postgres and Redis, with the production settings, while Redis is frozen past REDIS_TIMEOUT and
// restarted on a random schedule and some writes are cancelled mid-flight. The writer numbers
// its titles; a reader notes the newest number whose write had returned (successfully) when the
// read began, and must never see an older successful one, on the item or the list. A cancelled
// write may or may not have happened, and may even land after later writes (its statement can
// still be on its way to the server when the next one commits), so it sets no floor and reads
// may show it at any time.
func TestNoReadStartedAfterAWriteReturnedSeesOlderData(t *testing.T) {
	for _, near := range []bool{false, true} {
		t.Run(fmt.Sprintf("near-cache %v", near), func(t *testing.T) { readAfterWrite(t, near) })
	}
}

func readAfterWrite(t *testing.T, nearCache bool) {
	redisSrv := testenv.StartRedis(t)
	db, cached := stores(t, "REDIS_URL="+redisSrv.URL(), fmt.Sprintf("CACHE_LOCAL_ENABLED=%v", nearCache))
	ctx := context.Background()
	s, err := cached.Create(ctx, "v0")
	if err != nil {
		t.Fatal(err)
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	var rngMu sync.Mutex
	random := func(n int) time.Duration { rngMu.Lock(); defer rngMu.Unlock(); return time.Duration(rng.IntN(n)) }

	var returned atomic.Int64 // newest version whose write returned successfully
	// The run ends once both are reached, not after a set time.
	const minWrites, minFaults = 120, 8
	var wg sync.WaitGroup
	done := make(chan struct{})

	var faults atomic.Int64
	wg.Go(func() { // the fault schedule: Redis frozen past its timeout, or restarted (emptied)
		for {
			select {
			case <-done:
				return
			case <-time.After(random(300) * time.Millisecond):
			}
			faults.Add(1)
			if random(4) == 0 {
				redisSrv.Stop()
				redisSrv.Start()
				continue
			}
			redisSrv.Pause()
			time.Sleep((250 + random(400)) * time.Millisecond)
			redisSrv.Resume()
		}
	})
	var cancelled, writes atomic.Int64
	var cancelledVersions sync.Map // versions whose write was cancelled
	wg.Go(func() {
		defer close(done)
		for v := int64(1); v <= minWrites || faults.Load() < minFaults; v++ {
			writes.Store(v)
			wctx, cancel := context.WithCancel(ctx)
			if random(5) == 0 { // a client that gives up mid-write
				cancelled.Add(1)
				cancelledVersions.Store(v, true) // before the write: a read may see it at once
				time.AfterFunc(random(3000)*time.Microsecond, cancel)
			}
			_, err := cached.Update(wctx, s.ID, fmt.Sprintf("v%d", v))
			cancel()
			switch {
			case err == nil:
				returned.Store(v)
			case errors.Is(err, context.Canceled):
				cancelledVersions.Store(v, true)
			default:
				t.Errorf("update v%d: %v", v, err)
				return
			}
		}
	})

	version := func(title string) (int64, bool) {
		n, err := strconv.ParseInt(strings.TrimPrefix(title, "v"), 10, 64)
		if err != nil {
			t.Errorf("unexpected title %q", title)
			return 0, false
		}
		return n, true
	}
	// stale reports a version older than floor that no cancelled write could explain.
	stale := func(v, floor int64) bool {
		_, late := cancelledVersions.Load(v)
		return v < floor && !late
	}
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
				if v, ok := version(one.Title); !ok || stale(v, floor) {
					t.Errorf("item read began after v%d returned but saw %s (%s %s)", floor, one.Title, item.Served.Outcome, item.Served.Tier)
					return
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
				if v, ok := version(all[0].Title); !ok || stale(v, floor) {
					t.Errorf("list read began after v%d returned but saw %s (%s %s)", floor, all[0].Title, list.Served.Outcome, list.Served.Tier)
					return
				}
				reads.Add(1)
			}
		})
	}
	wg.Wait()
	t.Logf("%d reads, %d writes (%d cancelled), %d Redis faults", reads.Load(), writes.Load(), cancelled.Load(), faults.Load())
	if reads.Load() < writes.Load()/10 {
		t.Errorf("only %d reads overlapped %d writes: the test did not exercise concurrency", reads.Load(), writes.Load())
	}
	final, err := db.Get(ctx, s.ID)
	var row samples.Sample
	if err == nil {
		err = json.Unmarshal(final.Body, &row)
	}
	if v, ok := version(row.Title); err != nil || !ok || stale(v, returned.Load()) {
		t.Errorf("the row holds %q (%v) after v%d returned", row.Title, err, returned.Load())
	}
}

// TestSeedReplacesSamplesAndRetiresCachedViews, also when Redis does not take the retirement
// (frozen): then both the list and the whole item space must be deferred, so reads bypass them
// until they are delivered, rather than one being dropped.
func TestSeedReplacesSamplesAndRetiresCachedViews(t *testing.T) {
	for _, frozen := range []bool{false, true} {
		t.Run(fmt.Sprintf("redis frozen %v", frozen), func(t *testing.T) {
			srv := testenv.StartRedis(t)
			db, cached := stores(t, "REDIS_URL="+srv.URL())
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
			if frozen {
				srv.Pause()
			}
			err = cached.InvalidateAll(ctx)
			if frozen {
				srv.Resume()
				if err == nil {
					t.Fatal("InvalidateAll succeeded with Redis frozen")
				}
			} else if err != nil {
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
		})
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
func plain(t *testing.T, v view.View) []byte {
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
