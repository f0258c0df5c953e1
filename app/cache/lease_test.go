package cache_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cacheside/cacheside/app/cache"
	"github.com/cacheside/cacheside/app/internal/testenv"
	"github.com/cacheside/cacheside/app/view"
)

// fleet is n caches as n service processes build them on one Redis: the production options,
// each with its own client and pool (dialled, as a running service's is), all under one key
// prefix. REDIS_TIMEOUT is raised: on a busy machine a lookup can take longer than 250 ms, and
// the read then bypasses Redis, as designed, instead of meeting the lease these tests are about.
func fleet(t *testing.T, n int, overrides ...string) []*cache.Cache {
	t.Helper()
	_, prefix := testenv.Redis(t) // its keys are deleted when the test ends
	caches := make([]*cache.Cache, n)
	for i := range caches {
		// The caches never read the database: a URL that is never dialled saves creating one.
		var rdb *redis.Client
		caches[i], rdb, _ = productionCache(t, append([]string{"CACHE_KEY_PREFIX=" + prefix, "REDIS_TIMEOUT=5s",
			"DATABASE_URL=postgres://unused@127.0.0.1:1/unused"}, overrides...)...)
		warm(t, rdb)
	}
	return caches
}

// heldLoad is a loader that reads the source at once, then returns what it read only when
// released: a slow reader that took the old row.
type heldLoad struct {
	src      *source
	entered  chan struct{}
	released chan struct{}
}

func holdLoad(src *source) *heldLoad {
	return &heldLoad{src: src, entered: make(chan struct{}, 1), released: make(chan struct{})}
}

func (h *heldLoad) load(ctx context.Context) (view.View, error) {
	v, err := h.src.load(ctx)
	h.entered <- struct{}{}
	<-h.released
	return v, err
}

type fetched struct {
	v   view.View
	err error
}

func fetchAsync(c *cache.Cache, load cache.Loader) chan fetched {
	ch := make(chan fetched, 1)
	go func() {
		v, err := c.Fetch(context.Background(), key, load)
		ch <- fetched{v, err}
	}()
	return ch
}

// waitingOnALease waits until c has begun n waits on another cache's lease.
func waitingOnALease(t *testing.T, c *cache.Cache, n int64) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, func() error {
		if got := c.LeaseWaits(); got < n {
			return fmt.Errorf("%d of %d loads wait on a lease", got, n)
		}
		return nil
	})
}

// TestAWriteDuringALeasedLoadIsNotServedAfterwards: cache a takes the lease and reads the old row,
// b waits on a's lease, then a write commits and retires the generation. A read that starts after
// the write takes a lease of its own at once (a lease belongs to a generation) and gets the new
// row while a's load is still held; when a finally stores the old row, it stores it under the
// retired generation, and no cache serves it.
func TestAWriteDuringALeasedLoadIsNotServedAfterwards(t *testing.T) {
	// Leases of an hour: a read stuck behind the retired generation's lease would never end.
	caches := fleet(t, 3, "DATABASE_TIMEOUT=1h")
	a, b, c := caches[0], caches[1], caches[2]
	src := &source{value: "old"}
	held := holdLoad(src)

	first := fetchAsync(a, held.load)
	<-held.entered
	waiting := fetchAsync(b, src.load)
	waitingOnALease(t, b, 1)

	src.set("new") // the write commits, then retires what it changed
	if err := c.Invalidate(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	var after fetched
	select { // a's load is still held: only a lease of the new generation lets this read end
	case after = <-fetchAsync(c, src.load):
	case <-time.After(30 * time.Second):
		t.Fatal("the read after the write is stuck behind the retired generation's lease")
	}
	if got := gunzip(t, after.v); after.err != nil || got != "new" || after.v.Served.Outcome != view.Miss {
		t.Errorf("a read after the write = %s %q, %v; want a MISS of the new row", after.v.Served.Outcome, got, after.err)
	}
	// b began before the write returned: the old row or the new one is right for it.
	if r := <-waiting; r.err != nil || (gunzip(t, r.v) != "old" && gunzip(t, r.v) != "new") {
		t.Errorf("the waiting read = %q, %v", r.v.Body, r.err)
	}

	close(held.released)
	if r := <-first; r.err != nil || gunzip(t, r.v) != "old" {
		t.Errorf("the held read = %q, %v; want the old row it loaded", r.v.Body, r.err)
	}
	for i, cc := range caches {
		if got := fetch(t, cc, src.load); gunzip(t, got) != "new" {
			t.Errorf("cache %d serves %s %q after the old holder stored, want the new row", i, got.Served.Outcome, gunzip(t, got))
		}
	}
}

// TestRedisFailingWhileALoadWaitsFallsBackToALoadOfItsOwn: a load waiting on another process's
// lease when Redis goes away loads on its own, as it would without leases; the read gets the
// value, not an error.
func TestRedisFailingWhileALoadWaitsFallsBackToALoadOfItsOwn(t *testing.T) {
	srv := testenv.StartRedis(t)
	caches := fleet(t, 2, "REDIS_URL="+srv.URL())
	a, b := caches[0], caches[1]
	src := &source{value: "v"}
	held := holdLoad(src)

	first := fetchAsync(a, held.load)
	<-held.entered
	waiting := fetchAsync(b, src.load)
	waitingOnALease(t, b, 1)

	srv.Stop()
	r := <-waiting
	if r.err != nil || gunzip(t, r.v) != "v" {
		t.Errorf("the waiting read with Redis gone = %s %q, %v; want the value from its own load", r.v.Served.Outcome, r.v.Body, r.err)
	}
	if n := src.reads.Load(); n != 2 {
		t.Errorf("source read %d times, want 2 (the holder's, and the waiter's own)", n)
	}
	close(held.released)
	if r := <-first; r.err != nil {
		t.Errorf("the holder's read: %v", r.err)
	}
}

// TestAHolderWhoseLoadFailsHandsTheLeaseOn: the holder releases its lease when its load fails,
// so a waiting process loads at once rather than wait out the lease; each read gets its own
// load's answer.
func TestAHolderWhoseLoadFailsHandsTheLeaseOn(t *testing.T) {
	// A lease of an hour: a waiter that did not see the release would hang past the test's deadline.
	caches := fleet(t, 2, "DATABASE_TIMEOUT=1h")
	a, b := caches[0], caches[1]
	src := &source{value: "v"}
	entered, fail := make(chan struct{}), make(chan struct{})
	failing := func(context.Context) (view.View, error) {
		close(entered)
		<-fail
		return view.View{}, fmt.Errorf("database unavailable")
	}

	first := fetchAsync(a, failing)
	<-entered
	waiting := fetchAsync(b, src.load)
	waitingOnALease(t, b, 1)
	close(fail)
	if r := <-first; r.err == nil {
		t.Errorf("the holder's failed load served %q", r.v.Body)
	}
	if r := <-waiting; r.err != nil || gunzip(t, r.v) != "v" {
		t.Errorf("the waiter = %q, %v; want the value from its own load", r.v.Body, r.err)
	}
}

// TestALeaseWaiterWaitsForTheHoldersValueNotTheExpiredOne: a value past its TTL stays in Redis
// for outages (CACHE_STALE_GRACE) under its still-current generation. It is what a miss missed
// on, not the value the lease holder is loading: a process waiting on the lease must go on
// waiting for the holder's value, not serve the expired one the moment it polls.
func TestALeaseWaiterWaitsForTheHoldersValueNotTheExpiredOne(t *testing.T) {
	// A lease of an hour, so only the holder's value ends the wait; no early refresh, so the
	// value expires into a miss.
	caches := fleet(t, 2, "DATABASE_TIMEOUT=1h", "CACHE_TTL=300ms", "CACHE_TTL_JITTER=0", "CACHE_EARLY_REFRESH_BETA=0")
	a, b := caches[0], caches[1]
	src := &source{value: "old"}
	stored := fetch(t, a, src.load)
	testenv.Eventually(t, 30*time.Second, func() error {
		if left := time.Until(stored.Expires); left >= 0 {
			return fmt.Errorf("the value has %v of its TTL left", left)
		}
		return nil
	})
	src.set("new") // a change the cache has not been told of: the TTL is what bounds "old"

	held := holdLoad(src)
	holding := fetchAsync(a, held.load)
	<-held.entered
	waiting := fetchAsync(b, src.load)
	waitingOnALease(t, b, 1)
	// Two polls have read the expired value and the held lease: a waiter that took the expired
	// value would have answered at the first.
	testenv.Eventually(t, 30*time.Second, func() error {
		select {
		case r := <-waiting:
			t.Fatalf("the waiter answered %s %q (expires %v) while the holder was still loading", r.v.Served.Outcome, gunzip(t, r.v), r.v.Expires)
		default:
		}
		if n := b.LeasePolls(); n < 2 {
			return fmt.Errorf("%d polls", n)
		}
		return nil
	})
	close(held.released)
	if r := <-holding; r.err != nil || gunzip(t, r.v) != "new" {
		t.Errorf("the holder = %q, %v; want the new row", gunzip(t, r.v), r.err)
	}
	if r := <-waiting; r.err != nil || gunzip(t, r.v) != "new" || r.v.Served.Outcome != view.Miss {
		t.Errorf("the waiter = %s %q, %v; want a MISS with the holder's new row", r.v.Served.Outcome, gunzip(t, r.v), r.err)
	}
	if n := src.reads.Load(); n != 2 {
		t.Errorf("source read %d times, want 2 (the first load and the holder's)", n)
	}
}

// TestAnEarlyRefreshLeavesTheLoadToTheLeaseHolder: a hit that decides to refresh early, finding
// the generation's lease held (another process is loading it), neither loads nor waits: the fleet
// refreshes a key once. Once the lease is free, the refresh loads.
func TestAnEarlyRefreshLeavesTheLoadToTheLeaseHolder(t *testing.T) {
	// A beta so large that every hit refreshes; a TTL long enough that every read is a hit.
	caches := fleet(t, 1, "CACHE_TTL=1h", "CACHE_EARLY_REFRESH_BETA=1e12")
	c := caches[0]
	src := &source{value: "v"}
	fetch(t, c, src.load)
	release, err := c.HoldLease(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if got := fetch(t, c, src.load); got.Served.Outcome != view.Hit {
			t.Fatalf("a read of a cached value: %s, want HIT", got.Served.Outcome)
		}
		if n := c.RefreshesLeft(); n < 3 {
			return fmt.Errorf("%d refreshes left the load to the holder", n)
		}
		return nil
	})
	if n := src.reads.Load(); n != 1 {
		t.Errorf("source read %d times while another process held the lease, want 1 (the first miss)", n)
	}
	release()
	testenv.Eventually(t, 30*time.Second, func() error {
		fetch(t, c, src.load)
		if n := src.reads.Load(); n < 2 {
			return fmt.Errorf("no refresh has loaded since the lease was freed")
		}
		return nil
	})
}
