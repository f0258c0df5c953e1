package cache_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cacheside/cacheside/app/cache"
	"github.com/cacheside/cacheside/app/internal/testenv"
	"github.com/cacheside/cacheside/app/platform/redisclient"
)

func options(prefix string) cache.Options {
	return cache.Options{
		Prefix:          prefix,
		TTL:             time.Minute,
		Jitter:          0.1,
		NegativeTTL:     30 * time.Second,
		OpTimeout:       300 * time.Millisecond,
		LoadTimeout:     10 * time.Second,
		BreakerFailures: 3,
		BreakerCooldown: 200 * time.Millisecond,
	}
}

// source stands for the database: a value and a count of reads.
type source struct {
	mu    sync.Mutex
	value string
	reads atomic.Int64
}

func (s *source) set(v string) { s.mu.Lock(); s.value = v; s.mu.Unlock() }

func (s *source) load(context.Context) ([]byte, error) {
	s.reads.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.value == "" {
		return nil, cache.ErrNotFound
	}
	return []byte(s.value), nil
}

var key = cache.Key{Space: "item", ID: "1"}

func fetch(t *testing.T, c *cache.Cache, load cache.Loader) cache.Result {
	t.Helper()
	res, err := c.Fetch(context.Background(), key, load)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	return res
}

func TestFetchServesFromRedisAfterTheFirstLoad(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	c := cache.New(rdb, options(prefix))
	src := &source{value: "v1"}

	first := fetch(t, c, src.load)
	second := fetch(t, c, src.load)

	if first.Outcome != cache.Miss || string(first.Body) != "v1" {
		t.Errorf("first read = %s %q, want MISS v1", first.Outcome, first.Body)
	}
	if second.Outcome != cache.Hit || string(second.Body) != "v1" {
		t.Errorf("second read = %s %q, want HIT v1", second.Outcome, second.Body)
	}
	if n := src.reads.Load(); n != 1 {
		t.Errorf("source read %d times, want 1", n)
	}
}

func TestFetchRemembersAbsentItems(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	c := cache.New(rdb, options(prefix))
	src := &source{} // nothing there

	for i := range 5 {
		res := fetch(t, c, src.load)
		if res.Found {
			t.Fatalf("read %d found %q, want absent", i, res.Body)
		}
	}
	if n := src.reads.Load(); n != 1 {
		t.Errorf("source read %d times for 5 reads of an absent item, want 1", n)
	}
	ttl := valueTTLs(t, rdb, prefix)
	if len(ttl) != 1 || ttl[0] > 30*time.Second*11/10 || ttl[0] < 25*time.Second {
		t.Errorf("absent entry TTLs = %v, want one near the 30s negative TTL", ttl)
	}

	// Creating the item retires the negative entry.
	src.set("now here")
	if err := c.Invalidate(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	if res := fetch(t, c, src.load); !res.Found || string(res.Body) != "now here" {
		t.Errorf("after create: found=%v %q", res.Found, res.Body)
	}
}

func TestStoredTTLsAreJitteredWithinBounds(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	c := cache.New(rdb, options(prefix))
	for i := range 40 {
		k := cache.Key{Space: "item", ID: fmt.Sprint(i)}
		if _, err := c.Fetch(context.Background(), k, func(context.Context) ([]byte, error) { return []byte("x"), nil }); err != nil {
			t.Fatal(err)
		}
	}
	ttls := valueTTLs(t, rdb, prefix)
	if len(ttls) != 40 {
		t.Fatalf("found %d stored values, want 40", len(ttls))
	}
	lo, hi := ttls[0], ttls[0]
	for _, d := range ttls {
		if d < time.Minute-5*time.Second || d > time.Minute*11/10 {
			t.Errorf("TTL %s outside [TTL, TTL×1.1]", d)
		}
		lo, hi = min(lo, d), max(hi, d)
	}
	if hi-lo < time.Second {
		t.Errorf("40 TTLs span only %s: keys written together would expire together", hi-lo)
	}
}

func TestKeysOfAnotherPrefixAreNeverRead(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	old := cache.New(rdb, options(prefix+":v1"))
	next := cache.New(rdb, options(prefix+":v2"))
	fetch(t, old, func(context.Context) ([]byte, error) { return []byte(`{"old":"shape"}`), nil })

	res := fetch(t, next, func(context.Context) ([]byte, error) { return []byte(`{"new":"shape"}`), nil })
	if res.Outcome != cache.Miss || string(res.Body) != `{"new":"shape"}` {
		t.Errorf("a new payload version read %s %q, want a MISS with the new shape", res.Outcome, res.Body)
	}
}

// valueTTLs returns the remaining TTL of every stored value under prefix.
func valueTTLs(t *testing.T, rdb *redis.Client, prefix string) []time.Duration {
	t.Helper()
	ctx := context.Background()
	var ttls []time.Duration
	it := rdb.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	for it.Next(ctx) {
		if strings.HasSuffix(it.Val(), ":v") {
			ttls = append(ttls, rdb.PTTL(ctx, it.Val()).Val())
		}
	}
	return ttls
}

// fetcher is the read/invalidate contract the race test holds a cache to.
type fetcher interface {
	Fetch(ctx context.Context, k cache.Key, load cache.Loader) (cache.Result, error)
	Invalidate(ctx context.Context, keys ...cache.Key) error
}

// naiveCache is textbook cache-aside: GET, else load and SET; writes DEL. It exists to show that
// the race test below really exercises the race: this implementation must fail it.
type naiveCache struct {
	rdb    *redis.Client
	prefix string
}

func (n naiveCache) Fetch(ctx context.Context, k cache.Key, load cache.Loader) (cache.Result, error) {
	name := n.prefix + ":" + k.Space + ":" + k.ID
	if v, err := n.rdb.Get(ctx, name).Bytes(); err == nil {
		return cache.Result{Body: v, Found: true, Outcome: cache.Hit}, nil
	}
	v, err := load(ctx)
	if err != nil {
		return cache.Result{}, err
	}
	n.rdb.Set(ctx, name, v, time.Minute)
	return cache.Result{Body: v, Found: true, Outcome: cache.Miss}, nil
}

func (n naiveCache) Invalidate(ctx context.Context, keys ...cache.Key) error {
	for _, k := range keys {
		n.rdb.Del(ctx, n.prefix+":"+k.Space+":"+k.ID)
	}
	return nil
}

// TestSlowReaderCannotStoreDataOlderThanAReturnedWrite replays the classic cache-aside race: a
// reader loads the old value and stalls; a writer commits and invalidates; the reader then
// stores what it loaded. Every read that starts after the write returned must see the new value.
func TestSlowReaderCannotStoreDataOlderThanAReturnedWrite(t *testing.T) {
	for _, tc := range []struct {
		name      string
		make      func(*redis.Client, string) fetcher
		wantStale bool
	}{
		{"generations never serve data older than a returned write",
			func(r *redis.Client, p string) fetcher { return cache.New(r, options(p)) }, false},
		{"generations with the near-cache on never serve data older than a returned write",
			func(r *redis.Client, p string) fetcher { return withNearCache(t, r, p) }, false},
		{"naive delete-on-write serves the stale value (the race is real)",
			func(r *redis.Client, p string) fetcher { return naiveCache{r, p} }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb, prefix := testenv.Redis(t)
			c := tc.make(rdb, prefix)
			src := &source{value: "old"}

			loaded := make(chan struct{})
			stall := make(chan struct{})
			slowDone := make(chan cache.Result)
			go func() {
				res, _ := c.Fetch(context.Background(), key, func(ctx context.Context) ([]byte, error) {
					v, err := src.load(ctx)
					close(loaded)
					<-stall // the reader is descheduled, GC-paused, or slow on the network
					return v, err
				})
				slowDone <- res
			}()
			<-loaded

			// The write: commit, then invalidate; it returns here.
			src.set("new")
			if err := c.Invalidate(context.Background(), key); err != nil {
				t.Fatal(err)
			}
			close(stall)
			if res := <-slowDone; gunzip(t, res) != "old" {
				t.Fatalf("the slow reader loaded %q before the write, want old", gunzip(t, res))
			}

			res, err := c.Fetch(context.Background(), key, src.load)
			if err != nil {
				t.Fatal(err)
			}
			stale := gunzip(t, res) == "old"
			if stale != tc.wantStale {
				t.Errorf("read after the write returned got %q (%s %s); stale=%v, want stale=%v", gunzip(t, res), res.Outcome, res.Tier, stale, tc.wantStale)
			}
		})
	}
}

// TestReadAfterWriteDoesNotJoinALoadStartedBeforeIt: collapsing misses must not hand a read that
// began after a write the result of a load that began before it.
func TestReadAfterWriteDoesNotJoinALoadStartedBeforeIt(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	c := cache.New(rdb, options(prefix))
	src := &source{value: "old"}

	loaded, stall := make(chan struct{}), make(chan struct{})
	go func() {
		_, _ = c.Fetch(context.Background(), key, func(ctx context.Context) ([]byte, error) {
			v, err := src.load(ctx)
			close(loaded)
			<-stall
			return v, err
		})
	}()
	<-loaded
	defer close(stall)

	src.set("new")
	if err := c.Invalidate(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	// The pre-write load is still in flight; this read must not wait for it nor get its value.
	res := fetch(t, c, src.load)
	if string(res.Body) != "new" || res.Shared {
		t.Errorf("read after write = %q shared=%v, want new from its own load", res.Body, res.Shared)
	}
}

// redisCounter counts the commands a client sends, by name.
type redisCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func countCommands(rdb *redis.Client) *redisCounter {
	rc := &redisCounter{n: map[string]int{}}
	rdb.AddHook(rc)
	return rc
}

func (rc *redisCounter) get(name string) int { rc.mu.Lock(); defer rc.mu.Unlock(); return rc.n[name] }
func (rc *redisCounter) total() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	sum := 0
	for _, v := range rc.n {
		sum += v
	}
	return sum
}
func (rc *redisCounter) add(cmds ...redis.Cmder) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, c := range cmds {
		rc.n[c.Name()]++
	}
}
func (rc *redisCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (rc *redisCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { rc.add(cmd); return next(ctx, cmd) }
}
func (rc *redisCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { rc.add(cmds...); return next(ctx, cmds) }
}

// TestConcurrentMissesShareOneLoad holds the load until every caller has looked in Redis and
// missed, so without collapsing each of them would load.
func TestConcurrentMissesShareOneLoad(t *testing.T) {
	const callers = 1000 // the miss storm of the performance goals
	rdb, prefix := testenv.Redis(t)
	counter := countCommands(rdb)
	c := cache.New(rdb, options(prefix))
	src := &source{value: "v"}

	gate := make(chan struct{})
	load := func(ctx context.Context) ([]byte, error) {
		<-gate
		return src.load(ctx)
	}
	var wg sync.WaitGroup
	results := make([]cache.Result, callers)
	for i := range callers {
		wg.Go(func() {
			res, err := c.Fetch(context.Background(), key, load)
			if err != nil {
				t.Error(err)
			}
			results[i] = res
		})
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		// One MGET per caller's lookup, plus the flight's own re-check.
		if n := counter.get("mget"); n < callers+1 {
			return fmt.Errorf("%d of %d callers have looked up", n-1, callers)
		}
		return nil
	})
	close(gate)
	wg.Wait()

	if n := src.reads.Load(); n != 1 {
		t.Errorf("%d concurrent misses caused %d loads, want 1", callers, n)
	}
	shared := 0
	for _, r := range results {
		if string(r.Body) != "v" {
			t.Fatalf("a caller got %q", r.Body)
		}
		if r.Shared {
			shared++
		}
	}
	// A caller between its lookup and joining may find the flight just finished; its own
	// flight's re-check then reads the stored value, so it costs no load, only the label.
	t.Logf("%d of %d callers shared the load; the rest found its stored value", shared, callers)
}

// TestCancelledFirstCallerDoesNotFailTheOthers: the request that starts a shared load may go
// away; those waiting on the same load must still get the value.
func TestCancelledFirstCallerDoesNotFailTheOthers(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	counter := countCommands(rdb)
	c := cache.New(rdb, options(prefix))

	gate := make(chan struct{})
	started := make(chan struct{})
	load := func(ctx context.Context) ([]byte, error) {
		close(started)
		select {
		case <-gate:
			return []byte("v"), nil
		case <-ctx.Done(): // a loader that honours cancellation, as pgx does
			return nil, ctx.Err()
		}
	}
	firstCtx, cancelFirst := context.WithCancel(context.Background())
	firstErr := make(chan error)
	go func() {
		_, err := c.Fetch(firstCtx, key, load)
		firstErr <- err
	}()
	<-started
	secondDone := make(chan struct{})
	var second cache.Result
	var secondErr error
	go func() {
		second, secondErr = c.Fetch(context.Background(), key, load)
		close(secondDone)
	}()
	testenv.Eventually(t, 10*time.Second, func() error {
		if counter.get("mget") < 3 { // first lookup, first flight's re-check, second lookup
			return errors.New("second caller has not looked up yet")
		}
		return nil
	})

	cancelFirst()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Errorf("first caller: err = %v, want context.Canceled", err)
	}
	close(gate)
	<-secondDone
	if secondErr != nil || string(second.Body) != "v" {
		t.Errorf("second caller got %q, %v; want the value", second.Body, secondErr)
	}
}

func TestPanickingLoaderBecomesAnError(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	c := cache.New(rdb, options(prefix))
	_, err := c.Fetch(context.Background(), key, func(context.Context) ([]byte, error) { panic("boom") })
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("err = %v, want the panic as an error", err)
	}
}

// productionClient is configured as the service configures it, timeouts included.
func productionClient(t *testing.T, srv *testenv.RedisServer) *redis.Client {
	t.Helper()
	rdb, err := redisclient.New(redisclient.Options{URL: srv.URL(), Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	return rdb.(*redis.Client)
}

func TestRedisDownServesFromTheSourceAndRecovers(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := productionClient(t, srv)
	counter := countCommands(rdb)
	o := options("t")
	o.BreakerCooldown = 3 * time.Second // longer than the checks made while open
	c := cache.New(rdb, o)
	src := &source{value: "v"}

	srv.Stop()
	for i := range 3 { // BreakerFailures
		if res := fetch(t, c, src.load); res.Outcome != cache.Bypass || string(res.Body) != "v" {
			t.Fatalf("read %d with Redis down = %s %q, want BYPASS v", i, res.Outcome, res.Body)
		}
	}
	if h := c.Health(context.Background()); h.Status != "down" || h.Breaker != "open" {
		t.Errorf("health = %+v, want down and open", h)
	}

	// With the breaker open, reads skip Redis entirely instead of each paying the timeout.
	before := counter.total()
	for range 20 {
		if res := fetch(t, c, src.load); res.Outcome != cache.Bypass {
			t.Fatalf("outcome %s with the breaker open, want BYPASS", res.Outcome)
		}
	}
	if sent := counter.total() - before; sent != 0 {
		t.Errorf("%d Redis commands sent while the breaker was open, want 0", sent)
	}

	srv.Start()
	testenv.Eventually(t, 10*time.Second, func() error {
		if res := fetch(t, c, src.load); res.Outcome == cache.Bypass {
			return errors.New("still bypassing")
		}
		return nil
	})
	if res := fetch(t, c, src.load); res.Outcome != cache.Hit {
		t.Errorf("after recovery: %s, want HIT", res.Outcome)
	}
}

func TestRedisHungServesFromTheSourceWithinTheTimeout(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := productionClient(t, srv)
	c := cache.New(rdb, options("t"))
	src := &source{value: "v"}
	fetch(t, c, src.load) // warm the connection pool

	srv.Pause()
	defer srv.Resume()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // a hang guard, not a speed check
	defer cancel()
	res, err := c.Fetch(ctx, key, src.load)
	if err != nil || res.Outcome != cache.Bypass || string(res.Body) != "v" {
		t.Fatalf("read with Redis hung = %s %q %v, want BYPASS v", res.Outcome, res.Body, err)
	}
	srv.Resume()
	testenv.Eventually(t, 10*time.Second, func() error {
		if res := fetch(t, c, src.load); res.Outcome != cache.Hit {
			return fmt.Errorf("outcome %s", res.Outcome)
		}
		return nil
	})
}

// TestInvalidationRedisMissedIsDeliveredBeforeTheCacheIsUsedAgain: a write that cannot reach
// Redis must not leave the old value to be served when Redis answers again.
func TestInvalidationRedisMissedIsDeliveredBeforeTheCacheIsUsedAgain(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := productionClient(t, srv)
	c := cache.New(rdb, options("t"))
	src := &source{value: "old"}
	fetch(t, c, src.load)
	if res := fetch(t, c, src.load); res.Outcome != cache.Hit {
		t.Fatalf("setup: %s, want HIT", res.Outcome)
	}

	srv.Pause() // Redis keeps its data but answers nothing
	src.set("new")
	if err := c.Invalidate(context.Background(), key); err == nil {
		t.Fatal("Invalidate reported success while Redis was hung")
	}
	if res := fetch(t, c, src.load); res.Outcome != cache.Bypass || string(res.Body) != "new" {
		t.Errorf("while hung: %s %q, want BYPASS new", res.Outcome, res.Body)
	}
	srv.Resume()
	testenv.Eventually(t, 10*time.Second, func() error {
		res := fetch(t, c, src.load)
		if string(res.Body) != "new" {
			t.Fatalf("served %q (%s) after Redis came back: a stale value survived the write", res.Body, res.Outcome)
		}
		if res.Outcome == cache.Bypass {
			return errors.New("still bypassing")
		}
		return nil
	})
	if h := c.Health(context.Background()); h.Pending != 0 {
		t.Errorf("pending invalidations = %d after recovery, want 0", h.Pending)
	}
}

// withNearCache returns a cache with the in-process tier on (and gzip storage), once its
// invalidation channel is subscribed.
func withNearCache(t *testing.T, rdb redis.UniversalClient, prefix string) *cache.Cache {
	t.Helper()
	o := options(prefix)
	o.Local, o.LocalTTL, o.LocalMaxBytes, o.Compress = true, time.Minute, 1<<20, true
	c := cache.New(rdb, o)
	t.Cleanup(c.Close)
	testenv.Eventually(t, 10*time.Second, func() error {
		if h := c.Health(context.Background()); h.Local != "live" {
			return fmt.Errorf("near-cache %s", h.Local)
		}
		return nil
	})
	return c
}

func TestNearCacheAnswersRepeatedReadsWithoutRedis(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	counter := countCommands(rdb)
	c := withNearCache(t, rdb, prefix)
	src := &source{value: "v"}

	if res := fetch(t, c, src.load); res.Outcome != cache.Miss {
		t.Fatalf("first read: %s", res.Outcome)
	}
	before := counter.total()
	for range 10 {
		if res := fetch(t, c, src.load); res.Outcome != cache.Hit || res.Tier != "local" {
			t.Fatalf("repeated read: %s from %q, want a local HIT", res.Outcome, res.Tier)
		}
	}
	if sent := counter.total() - before; sent != 0 {
		t.Errorf("%d Redis commands for 10 local hits, want 0", sent)
	}
}

// TestNearCacheIsInvalidatedAcrossProcesses: two caches stand for two replicas sharing Redis. The
// entry lives a minute, so only the published invalidation can explain the reader seeing the write.
func TestNearCacheIsInvalidatedAcrossProcesses(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	writer, reader := withNearCache(t, rdb, prefix), withNearCache(t, rdb, prefix)
	src := &source{value: "old"}
	fetch(t, reader, src.load)
	if res := fetch(t, reader, src.load); res.Tier != "local" || string(res.Body) == "" {
		t.Fatalf("setup: the reader's second read came from %q", res.Tier)
	}

	src.set("new")
	if err := writer.Invalidate(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	if res := fetch(t, writer, src.load); gunzip(t, res) != "new" {
		t.Fatalf("the writer itself read %q after its write", gunzip(t, res))
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if got := gunzip(t, fetch(t, reader, src.load)); got != "new" {
			return fmt.Errorf("the other replica still serves %q", got)
		}
		return nil
	})
}

func TestNearCacheIsNotUsedWhileItsChannelIsDown(t *testing.T) {
	srv := testenv.StartRedis(t)
	c := withNearCache(t, productionClient(t, srv), "t")
	src := &source{value: "v"}
	fetch(t, c, src.load)
	if res := fetch(t, c, src.load); res.Tier != "local" {
		t.Fatalf("setup: %q", res.Tier)
	}

	srv.Stop() // invalidations from other replicas can no longer arrive
	testenv.Eventually(t, 10*time.Second, func() error {
		if h := c.Health(context.Background()); h.Local != "down" {
			return fmt.Errorf("near-cache %s", h.Local)
		}
		return nil
	})
	if res := fetch(t, c, src.load); res.Outcome != cache.Bypass {
		t.Errorf("with the channel down: %s from %q, want BYPASS (no local answers)", res.Outcome, res.Tier)
	}
	srv.Start()
	testenv.Eventually(t, 15*time.Second, func() error {
		if h := c.Health(context.Background()); h.Local != "live" {
			return fmt.Errorf("near-cache %s", h.Local)
		}
		return nil
	})
}

func TestCompressedValuesKeepOneETagAcrossTiers(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	c := withNearCache(t, rdb, prefix)
	raw := strings.Repeat(`{"id":1,"title":"compressible"},`, 200)
	src := &source{value: raw}

	miss, redisHit := fetch(t, c, src.load), fetch(t, cache.New(rdb, options(prefix)), src.load)
	localHit := fetch(t, c, src.load)
	for _, r := range []cache.Result{miss, redisHit, localHit} {
		if r.Encoding != "gzip" || gunzip(t, r) != raw || r.ETag != cache.Fingerprint([]byte(raw)) {
			t.Errorf("%s from %q: encoding %q, etag %q, body intact %v", r.Outcome, r.Tier, r.Encoding, r.ETag, gunzip(t, r) == raw)
		}
		if len(r.Body) >= len(raw)/4 {
			t.Errorf("%s: stored %d bytes for %d: not compressed", r.Outcome, len(r.Body), len(raw))
		}
	}
}

func gunzip(t *testing.T, r cache.Result) string {
	t.Helper()
	if r.Encoding != "gzip" {
		return string(r.Body)
	}
	return string(testenv.Gunzip(t, r.Body))
}

// TestTheCacheWorksOnSentinelAndCluster runs reads, writes, seeding and the near-cache against a
// real Sentinel-managed master and a real three-master Cluster: hash-tagged keys must share a
// slot for MGET, pipelines must split by slot, and pub/sub and SCAN must reach every master.
func TestTheCacheWorksOnSentinelAndCluster(t *testing.T) {
	for _, tc := range []struct{ mode, url string }{
		{"sentinel", testenv.StartRedisSentinel(t)},
		{"cluster", testenv.StartRedisCluster(t)},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			rdb, err := redisclient.New(redisclient.Options{URL: tc.url, Mode: tc.mode, Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { rdb.Close() })
			c := withNearCache(t, rdb, "t")
			other := withNearCache(t, rdb, "t") // a second replica
			keys := []cache.Key{{Space: "item", ID: "1"}, {Space: "item", ID: "2"}, {Space: "list", ID: "all"}}
			src := &source{value: "v1"}
			for _, k := range keys {
				for _, want := range []cache.Outcome{cache.Miss, cache.Hit} {
					res, err := c.Fetch(context.Background(), k, src.load)
					if err != nil || res.Outcome != want || gunzip(t, res) != "v1" {
						t.Fatalf("%v: %s %q %v, want %s v1", k, res.Outcome, gunzip(t, res), err, want)
					}
				}
				if _, err := other.Fetch(context.Background(), k, src.load); err != nil {
					t.Fatal(err)
				}
			}
			src.set("v2")
			if err := c.Invalidate(context.Background(), keys...); err != nil {
				t.Fatal(err)
			}
			for _, k := range keys {
				if res := fetchKey(t, c, k, src.load); gunzip(t, res) != "v2" {
					t.Errorf("%v after the write: %q", k, gunzip(t, res))
				}
			}
			testenv.Eventually(t, 5*time.Second, func() error {
				if got := gunzip(t, fetchKey(t, other, keys[0], src.load)); got != "v2" {
					return fmt.Errorf("the other replica serves %q", got)
				}
				return nil
			})
			src.set("v3")
			if err := c.InvalidateSpace(context.Background(), "item"); err != nil {
				t.Fatal(err)
			}
			for _, k := range keys[:2] {
				if res := fetchKey(t, c, k, src.load); gunzip(t, res) != "v3" {
					t.Errorf("%v after retiring the space: %q", k, gunzip(t, res))
				}
			}
		})
	}
}

func fetchKey(t *testing.T, c *cache.Cache, k cache.Key, load cache.Loader) cache.Result {
	t.Helper()
	res, err := c.Fetch(context.Background(), k, load)
	if err != nil {
		t.Fatal(err)
	}
	return res
}
