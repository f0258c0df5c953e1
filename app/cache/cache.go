// Package cache is a cache-aside tier over Redis that never serves data older than a write that
// has returned, collapses concurrent reads into one lookup and one load, and fails open when
// Redis is sick.
//
// # Why generations
//
// Naive cache-aside (read: GET, else load and SET; write: commit, then DEL) has a known race: a
// reader loads the old row, a writer commits and deletes the key, then the slow reader SETs the
// old row back, and every later read is stale until the TTL. This package closes it with a
// generation token per key, in the style of versioned keys:
//
//   - Next to each value key K:v lives a generation key K:g holding a random token. A stored value
//     is prefixed with the generation it was loaded under.
//   - A read fetches both in one MGET and counts a hit only if the value's generation equals the
//     current one. On a miss it learns the current generation (creating one if absent) BEFORE it
//     reads the database, and stores what it loaded under that generation.
//   - A write commits to the database and only THEN replaces the token (Invalidate).
//
// So a reader that took generation G before a write can only store under G, which the write has
// already retired; any read that starts after the write returned sees the new token and misses
// or hits a value loaded after the commit. Random tokens (not counters) keep this true when
// Redis evicts or loses a generation key: a recreated token never matches an old value.
//
// # One lookup and one load per storm
//
// Concurrent reads of a key share rounds (rounds.go): a read joins only a round that has not
// started, so it is never answered by work that began before it, and a storm of any size costs
// two lookups and one load. Redis operations are bounded to what the client's connection pool
// holds, so no operation waits for a connection inside its own time budget: waiting behind this
// process's own traffic is not Redis failing, and never counts against the circuit breaker.
//
// # Tiers and encoding
//
// Values are stored gzip-compressed (Options.Compress) with a fingerprint of the uncompressed
// bytes, so a hit is sent as stored to clients that accept gzip and revalidated by ETag without
// hashing. An optional in-process tier (Options.Local, see local.go) answers repeated reads
// without a Redis round trip; it is invalidated across processes through Redis pub/sub.
//
// # Failing open
//
// Every Redis call is bounded by a timeout and goes through a circuit breaker: after a run of
// failures the cache is skipped (BYPASS, served by the loader) for a cool-down, then one probe
// decides. A write retries its invalidation for Options.InvalidationTimeout; if Redis still has
// not taken it, the keys stay pending (pending.go): this process bypasses the cache for them
// and redelivers in the background, and Close makes a last attempt.
package cache

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/semaphore"
)

// Outcome says how a read was served; it is also the X-Cache response header.
type Outcome string

const (
	Hit    Outcome = "HIT"    // Redis held a current value
	Miss   Outcome = "MISS"   // loaded from the source and stored
	Bypass Outcome = "BYPASS" // Redis unusable; loaded from the source, nothing stored
)

// ErrNotFound is returned (possibly wrapped) by a Loader when the item does not exist, so that
// its absence is cached for the negative TTL.
var ErrNotFound = errors.New("cache: not found")

// Loader reads the authoritative value, already serialized.
type Loader func(ctx context.Context) ([]byte, error)

// Key names one cached view: Space groups keys of a kind ("list", "item"), ID picks one.
type Key struct{ Space, ID string }

// Result is what Fetch served.
type Result struct {
	Body     []byte // the serialized value, encoded as Encoding says; nil when !Found
	Encoding string // "gzip" or "" (identity)
	ETag     string // fingerprint of the uncompressed value, the same in every tier
	Found    bool   // false when the loader said ErrNotFound (now or when cached)
	Outcome  Outcome
	Tier     string // on a hit, which tier answered: "local" or "redis"
	Shared   bool   // a miss or bypass served by another request's load

	loadSpan trace.SpanContext // the load that produced a miss, linked from the traces of sharers
	bypass   string            // why Redis was not used, on a bypass
}

// Options configures a Cache. Zero durations are not defaults: the caller passes config values.
type Options struct {
	Prefix          string        // namespace of every key, e.g. "cacheside:v1"
	TTL             time.Duration // life of a stored value
	Jitter          float64       // TTLs are stretched by up to this fraction
	NegativeTTL     time.Duration // life of a cached absence
	OpTimeout       time.Duration // bound of one Redis round trip
	LoadTimeout     time.Duration // bound of one shared load (it outlives the request that started it)
	BreakerFailures uint32        // consecutive failures that open the breaker
	BreakerCooldown time.Duration // how long the cache is skipped once open
	// InvalidationTimeout is how long a write retries its invalidation before returning with it
	// deferred. Within it a Redis blip costs the write time, not other replicas' freshness.
	InvalidationTimeout time.Duration
	// WaitReplicas, when above zero, makes an invalidation count as delivered only once that
	// many Redis replicas acknowledge it (WAIT), so a failover to one of them cannot bring the
	// retired generation back.
	WaitReplicas  int
	Compress      bool          // store values gzip-compressed
	Local         bool          // keep a near-cache in process (needs Redis pub/sub)
	LocalTTL      time.Duration // longest life of a near-cache entry
	LocalMaxBytes int64         // memory bound of the near-cache
	Logger        *slog.Logger
}

// Cache is safe for concurrent use.
type Cache struct {
	rdb      redis.UniversalClient
	opts     Options
	genTTL   time.Duration
	breaker  *gobreaker.TwoStepCircuitBreaker[struct{}]
	failed   atomic.Int64        // when the last failure the breaker counted was seen (UnixNano)
	slots    *semaphore.Weighted // Redis operations in flight, at most the pool's size
	reads    rounds[looked]      // shared lookups
	loads    flights             // shared loads of a generation
	bypasses rounds[loaded]      // shared loads that bypass Redis
	pending  *pending
	tracer   trace.Tracer
	lookups  metric.Int64Counter
	sourced  metric.Int64Counter

	near      *local // nil when off
	stopNear  context.CancelFunc
	nearDone  chan struct{}
	stopRedo  context.CancelFunc
	redoDone  chan struct{}
	closeOnce sync.Once

	laterMu      sync.Mutex
	later        map[*time.Timer][]Key // retirements scheduled by InvalidateAfter
	laterRunning sync.WaitGroup
	closing      bool
}

// A stored value is gen | kind | encoding | etag | body.
const (
	genLen    = 16 // hex characters of a generation token
	etagLen   = 16 // hex characters of a fingerprint
	headerLen = genLen + 2 + etagLen
	kindFound = '1'
	kindGone  = '0'
	encGzip   = 'g'
	encIdent  = 'i'
)

// New returns a Cache over rdb. Close it before closing rdb.
func New(rdb redis.UniversalClient, o Options) *Cache {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Cache{
		rdb:  rdb,
		opts: o,
		// A generation must outlive every value stored under it, or the value turns into a miss
		// early. Losing one early is safe (see package doc), so this bound only saves work.
		genTTL: 2 * max(time.Duration(float64(o.TTL)*(1+o.Jitter)), o.NegativeTTL),
		// Two connections stay free for health pings and the invalidations of writes.
		slots:   semaphore.NewWeighted(int64(max(1, poolSize(rdb)-2))),
		pending: newPending(),
		later:   make(map[*time.Timer][]Key),
		tracer:  otel.Tracer("github.com/cacheside/cacheside/app/cache"),
	}
	c.breaker = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "redis",
		MaxRequests: 1, // half-open: one probe decides
		Timeout:     o.BreakerCooldown,
		ReadyToTrip: func(n gobreaker.Counts) bool { return n.ConsecutiveFailures >= o.BreakerFailures },
		IsExcluded:  func(err error) bool { return errors.Is(err, errSameFault) },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			o.Logger.Warn("redis circuit breaker", "from", from.String(), "to", to.String())
		},
	})

	meter := otel.Meter("github.com/cacheside/cacheside/app/cache")
	c.lookups, _ = meter.Int64Counter("cacheside.cache.lookups",
		metric.WithDescription("Cache lookups by outcome (hit, miss, bypass), keyspace and tier."))
	c.sourced, _ = meter.Int64Counter("cacheside.cache.loads",
		metric.WithDescription("Reads of the source of truth on a miss or bypass, by keyspace and result (found, not_found, error); one per shared load."))
	_, _ = meter.Int64ObservableGauge("cacheside.cache.breaker.state",
		metric.WithDescription("Redis circuit breaker: 0 closed, 1 half-open, 2 open."),
		metric.WithInt64Callback(func(_ context.Context, obs metric.Int64Observer) error {
			obs.Observe(int64(c.breaker.State()))
			return nil
		}))
	_, _ = meter.Int64ObservableGauge("cacheside.cache.invalidations.pending",
		metric.WithDescription("Invalidations Redis has not taken yet; their keys bypass the cache meanwhile."),
		metric.WithInt64Callback(func(_ context.Context, obs metric.Int64Observer) error {
			obs.Observe(int64(c.pending.undeliveredCount()))
			return nil
		}))

	if o.Local {
		c.near = newLocal(o.Prefix, o.LocalTTL, o.LocalMaxBytes, o.Logger)
		ctx, cancel := context.WithCancel(context.Background())
		ps := rdb.Subscribe(ctx, c.near.channel)
		c.nearDone = make(chan struct{})
		// Cancelling does not interrupt a blocked receive; closing the subscription does.
		c.stopNear = func() { cancel(); _ = ps.Close() }
		go func() {
			defer close(c.nearDone)
			c.near.listen(ctx, ps)
		}()
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.stopRedo, c.redoDone = cancel, make(chan struct{})
	go func() {
		defer close(c.redoDone)
		c.redeliver(ctx)
	}()
	return c
}

// poolSize is how many connections the client keeps per Redis node: how many operations can be
// in flight without one waiting for a connection.
func poolSize(rdb redis.UniversalClient) int {
	n := 0
	switch r := rdb.(type) {
	case *redis.Client:
		n = r.Options().PoolSize
	case *redis.ClusterClient:
		n = r.Options().PoolSize
	}
	if n <= 0 {
		n = 10 * runtime.GOMAXPROCS(0) // go-redis's default
	}
	return n
}

// Close runs the retirements InvalidateAfter scheduled, delivers what invalidations are still
// pending, trying until ctx ends, logs any it could not deliver, and stops the background work. The Redis client is the caller's to close, after.
func (c *Cache) Close(ctx context.Context) {
	c.closeOnce.Do(func() {
		c.retireScheduled(ctx)
		c.stopRedo()
		<-c.redoDone
		for f := c.pending.failed(); !f.empty(); f = c.pending.failed() {
			if err := c.deliver(ctx, f); err == nil {
				continue
			}
			select {
			case <-ctx.Done():
				f = c.pending.failed()
				c.opts.Logger.Warn("cache invalidations not delivered at shutdown; other replicas may serve the old views until they expire",
					"keys", len(f.keys), "spaces", f.spaces, "sample", sampleKeys(f.keys, 10), "ttl", c.opts.TTL.String())
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
		if c.stopNear != nil {
			c.stopNear()
			<-c.nearDone
		}
	})
}

func (c *Cache) genKey(k Key) string { return c.opts.Prefix + ":{" + k.Space + ":" + k.ID + "}:g" }

// valKey shares genKey's hash tag, so both live in one Cluster slot and one MGET reads both.
func (c *Cache) valKey(k Key) string { return c.opts.Prefix + ":{" + k.Space + ":" + k.ID + "}:v" }

// Fetch serves k from the cache, or loads it with load and stores it. An error is the loader's
// (or the caller's context); Redis trouble never surfaces as an error, only as Outcome Bypass.
func (c *Cache) Fetch(ctx context.Context, k Key, load Loader) (Result, error) {
	ctx, span := c.tracer.Start(ctx, "cache.get "+k.Space, trace.WithAttributes(
		attribute.String("cache.key", c.valKey(Key{Space: k.Space, ID: "*"})),
	))
	defer span.End()

	res, err := c.fetch(ctx, k, load)
	tier := res.Tier
	if tier == "" {
		tier = "redis" // misses and bypasses are decided at the Redis tier
	}
	span.SetAttributes(
		attribute.Bool("cache.hit", res.Outcome == Hit),
		attribute.String("cache.outcome", string(res.Outcome)),
		attribute.String("cache.tier", tier),
		attribute.Int("cache.item_size", len(res.Body)),
	)
	if res.Outcome == Bypass {
		span.AddEvent("cache.bypass", trace.WithAttributes(attribute.String("reason", res.bypass)))
		span.SetStatus(codes.Error, "redis unavailable: served from source")
	}
	if res.Outcome == Miss {
		span.SetAttributes(attribute.Bool("cache.shared_load", res.Shared))
	}
	if res.Shared && res.loadSpan.IsValid() {
		// The load ran in another request's trace; point to it.
		span.AddLink(trace.Link{SpanContext: res.loadSpan, Attributes: []attribute.KeyValue{attribute.String("cache.link", "shared load")}})
	}
	c.lookups.Add(ctx, 1, metric.WithAttributes(
		attribute.String("cache.outcome", strings.ToLower(string(res.Outcome))),
		attribute.String("cache.keyspace", k.Space),
		attribute.String("cache.tier", tier),
	))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "load failed")
	}
	return res, err
}

func (c *Cache) fetch(ctx context.Context, k Key, load Loader) (Result, error) {
	vk := c.valKey(k)
	if c.near != nil && !c.pending.has(k) {
		if e, ok := c.near.get(vk); ok {
			return e.result(Hit, "local"), nil
		}
	}
	r, joined := c.reads.join(ctx, vk, func(ctx context.Context) looked { return c.look(ctx, k, load) })
	select {
	case <-r.done:
	case <-ctx.Done():
		return Result{Outcome: Miss}, ctx.Err()
	}
	switch {
	case r.res.hit != nil:
		return *r.res.hit, nil
	case r.res.bypass != nil:
		why := r.res.bypass
		b, joined := c.bypasses.join(ctx, vk, func(ctx context.Context) loaded {
			res, err := c.bypass(ctx, k, load, why)
			return loaded{res, err}
		})
		select {
		case <-b.done:
		case <-ctx.Done():
			return Result{Outcome: Bypass}, ctx.Err()
		}
		res := b.res.res
		res.Shared = joined
		return res, b.res.err
	}
	fl := r.res.flight
	fl.waiters.Add(1)
	defer fl.waiters.Add(-1)
	select {
	case <-fl.done:
	case <-ctx.Done():
		return Result{Outcome: Miss}, ctx.Err()
	}
	res := fl.res
	res.Shared = joined || !r.res.started
	return res, fl.err
}

// look is one lookup round: the lookup in Redis, and on a miss the flight that loads the value
// of the generation it saw. It runs detached from the requests waiting on it.
func (c *Cache) look(ctx context.Context, k Key, load Loader) looked {
	if c.pending.has(k) {
		return looked{bypass: errPending}
	}
	vk := c.valKey(k)
	var version uint64
	if c.near != nil {
		version = c.near.version(vk) // noted before Redis is asked: see local.store
	}
	gen, cached, err := c.lookup(ctx, k)
	if err != nil {
		return looked{bypass: err}
	}
	if cached != nil {
		if c.near != nil {
			c.near.store(vk, version, *cached)
		}
		res := cached.result(Hit, "redis")
		return looked{hit: &res}
	}
	fl, started := c.loads.attach(ctx, vk+"@"+gen, func(ctx context.Context) (Result, error) {
		raw, found, loadSpan, err := c.runLoad(ctx, k, load)
		if err != nil {
			return Result{Outcome: Miss}, err
		}
		e := c.encode(found, raw)
		c.store(ctx, k, gen, e)
		if c.near != nil {
			c.near.store(vk, version, e)
		}
		res := e.result(Miss, "")
		res.loadSpan = loadSpan
		return res, nil
	})
	return looked{flight: fl, started: started}
}

// bypass serves a read from the source without the cache, because of why.
func (c *Cache) bypass(ctx context.Context, k Key, load Loader, why error) (Result, error) {
	raw, found, loadSpan, err := c.runLoad(ctx, k, load)
	res := Result{Outcome: Bypass}
	if err == nil {
		e := entry{found: found, body: raw}
		if found {
			e.etag = Fingerprint(raw)
		}
		res = e.result(Bypass, "")
	}
	res.bypass, res.loadSpan = why.Error(), loadSpan
	return res, err
}

// runLoad calls the loader in a child span, bounded by the load timeout, and turns ErrNotFound
// into found=false. A panic here would crash the process from a round's goroutine, so it
// becomes an error carrying the panic's stack.
func (c *Cache) runLoad(ctx context.Context, k Key, load Loader) (body []byte, found bool, sc trace.SpanContext, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.LoadTimeout)
	defer cancel()
	ctx, span := c.tracer.Start(ctx, "cache.load "+k.Space)
	defer span.End()
	sc = span.SpanContext()
	result := "error"
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("cache loader panicked: %v\n%s", p, debug.Stack())
			span.SetStatus(codes.Error, "loader panicked")
		}
		c.sourced.Add(ctx, 1, metric.WithAttributes(attribute.String("cache.keyspace", k.Space), attribute.String("result", result)))
	}()
	body, err = load(ctx)
	switch {
	case errors.Is(err, ErrNotFound):
		result = "not_found"
		span.SetAttributes(attribute.Bool("cache.found", false))
		return nil, false, sc, nil
	case err != nil:
		span.RecordError(err)
		span.SetStatus(codes.Error, "load failed")
		return nil, false, sc, err
	}
	result = "found"
	return body, true, sc, nil
}

// Reasons, besides a Redis error, that a read bypasses the cache.
var (
	errBreakerOpen = errors.New("circuit breaker open")
	errPending     = errors.New("an invalidation of this key is not confirmed")
	errSaturated   = errors.New("no Redis connection free within the timeout")
)

// lookup returns the current generation and, on a hit, the cached entry. An error means Redis
// is unusable for this read (the caller bypasses it).
func (c *Cache) lookup(ctx context.Context, k Key) (gen string, hit *entry, err error) {
	err = c.call(ctx, func(ctx context.Context) error {
		vals, err := c.rdb.MGet(ctx, c.genKey(k), c.valKey(k)).Result()
		if err != nil {
			return err
		}
		gen, _ = vals[0].(string)
		val, _ := vals[1].(string)
		if gen != "" && len(val) >= headerLen && val[:genLen] == gen {
			hit = decode(val)
			return nil
		}
		if gen != "" {
			return nil
		}
		// No generation yet: create one, or adopt the one a racing writer or reader just set.
		fresh := newToken()
		old, err := c.rdb.SetArgs(ctx, c.genKey(k), fresh, redis.SetArgs{Mode: "NX", Get: true, TTL: c.genTTL}).Result()
		switch {
		case errors.Is(err, redis.Nil):
			gen = fresh
			return nil
		case err != nil:
			return err
		}
		gen = old
		return nil
	})
	return gen, hit, err
}

// store saves a loaded value under the generation it was loaded for. Best effort: a failure only
// costs a later miss (and counts against the breaker).
func (c *Cache) store(ctx context.Context, k Key, gen string, e entry) {
	ttl, kind, enc := c.opts.NegativeTTL, byte(kindGone), byte(encIdent)
	if e.found {
		ttl, kind = c.opts.TTL, kindFound
	}
	if e.encoding == "gzip" {
		enc = encGzip
	}
	ttl = c.jitter(ttl)
	etag := e.etag
	if len(etag) != etagLen {
		etag = strings.Repeat("0", etagLen)
	}
	val := make([]byte, 0, headerLen+len(e.body))
	val = append(append(append(append(val, gen...), kind, enc), etag...), e.body...)
	err := c.call(ctx, func(ctx context.Context) error {
		_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, c.valKey(k), val, ttl)
			p.Expire(ctx, c.genKey(k), c.genTTL)
			return nil
		})
		return err
	})
	if err != nil {
		c.opts.Logger.DebugContext(ctx, "cache store failed", "space", k.Space, "err", err)
	}
}

// call runs one Redis operation: it waits for a free connection slot (at most OpTimeout, and
// outside the operation's own budget), asks the breaker, then gives the operation OpTimeout.
// With no more operations in flight than the pool holds connections, none waits for one inside
// its budget, so a timeout means Redis did not answer; waiting for a slot is this process's own
// saturation and never reaches the breaker (the read bypasses instead).
func (c *Cache) call(ctx context.Context, op func(context.Context) error) error {
	wctx, cancel := context.WithTimeout(ctx, c.opts.OpTimeout)
	err := c.slots.Acquire(wctx, 1)
	cancel()
	if err != nil {
		return errSaturated
	}
	defer c.slots.Release(1)
	done, err := c.breaker.Allow()
	if err != nil {
		return errBreakerOpen
	}
	octx, cancel := context.WithTimeout(ctx, c.opts.OpTimeout)
	defer cancel()
	began := time.Now().UnixNano()
	err = op(octx)
	if err != nil && !c.newFault(began) {
		done(fmt.Errorf("%w: %w", errSameFault, err))
		return err
	}
	done(err)
	return err
}

// errSameFault marks a failure the breaker does not count again: see newFault.
var errSameFault = errors.New("an operation in flight when an earlier failure was seen")

// newFault reports whether a failed operation that began at began is new evidence about Redis:
// it began after the last counted failure was seen. Operations in flight together fail together
// when Redis (or this process) stalls once; counting each would let a single stall seen by a
// few concurrent requests pass for a run of failures and open the breaker. So the breaker
// counts failures in series, and a hung Redis still trips it after CACHE_BREAKER_FAILURES
// timeouts in a row.
func (c *Cache) newFault(began int64) bool {
	for {
		last := c.failed.Load()
		if began <= last {
			return false
		}
		if c.failed.CompareAndSwap(last, time.Now().UnixNano()) {
			return true
		}
	}
}

func (c *Cache) jitter(ttl time.Duration) time.Duration {
	if c.opts.Jitter <= 0 {
		return ttl
	}
	return ttl + time.Duration(rand.Float64()*c.opts.Jitter*float64(ttl))
}

// Health is the Redis state as /readyz reports it.
type Health struct {
	Status  string `json:"status"`  // up or down
	Breaker string `json:"breaker"` // closed, half-open or open
	Pending int    `json:"pending_invalidations"`
	Local   string `json:"near_cache"` // off, live (invalidations arriving) or down (not used)
	Error   string `json:"error,omitempty"`
}

// Health pings Redis directly (not through the breaker, which may be open).
func (c *Cache) Health(ctx context.Context) Health {
	ctx, cancel := context.WithTimeout(ctx, c.opts.OpTimeout)
	defer cancel()
	h := Health{Status: "up", Breaker: c.breaker.State().String(), Pending: c.pending.undeliveredCount(), Local: "off"}
	if c.near != nil {
		h.Local = "down"
		if c.near.live.Load() {
			h.Local = "live"
		}
	}
	if err := c.rdb.Ping(ctx).Err(); err != nil {
		h.Status, h.Error = "down", err.Error()
	}
	return h
}

func newToken() string {
	var b [genLen / 2]byte
	v := rand.Uint64()
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	return hex.EncodeToString(b[:])
}

// encode prepares a loaded value for storing: fingerprint of the raw bytes, then compression.
func (c *Cache) encode(found bool, raw []byte) entry {
	if !found {
		return entry{}
	}
	e := entry{found: true, etag: Fingerprint(raw), body: raw}
	if c.opts.Compress {
		e.body, e.encoding = gzipBytes(raw), "gzip"
	}
	return e
}

func decode(val string) *entry {
	e := &entry{found: val[genLen] == kindFound, etag: val[genLen+2 : headerLen]}
	if !e.found {
		return e
	}
	if val[genLen+1] == encGzip {
		e.encoding = "gzip"
	}
	e.body = []byte(val[headerLen:])
	return e
}

func (e entry) result(o Outcome, tier string) Result {
	r := Result{Found: e.found, Outcome: o, Tier: tier}
	if e.found {
		r.Body, r.Encoding, r.ETag = e.body, e.encoding, e.etag
	}
	if o != Hit {
		r.Tier = ""
	}
	return r
}

// Fingerprint identifies a serialized value; it is the ETag of every representation of it.
func Fingerprint(b []byte) string {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], xxhash.Sum64(b))
	return hex.EncodeToString(buf[:])
}

func sampleKeys(keys []Key, n int) []string {
	out := make([]string, 0, min(n, len(keys)))
	for _, k := range keys[:min(n, len(keys))] {
		out = append(out, k.Space+":"+k.ID)
	}
	return out
}
