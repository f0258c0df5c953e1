// Package cache is a cache-aside tier over Redis that never serves data older than a write that
// has returned, collapses concurrent misses into one load, and fails open when Redis is sick.
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
// Concurrent misses share one load per key AND generation (singleflight), so a read that starts
// after a write never joins a load that started before it.
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
// decides. If a write cannot reach Redis to retire a generation, the key is remembered and this
// process bypasses the cache until that invalidation has been delivered.
package cache

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
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
	"golang.org/x/sync/singleflight"
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
	Shared   bool   // a miss served by another request's load

	loadSpan trace.SpanContext // the load that produced a miss, linked from the traces of sharers
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
	Compress        bool          // store values gzip-compressed
	Local           bool          // keep a near-cache in process (needs Redis pub/sub)
	LocalTTL        time.Duration // longest life of a near-cache entry
	LocalMaxBytes   int64         // memory bound of the near-cache
	Logger          *slog.Logger
}

// Cache is safe for concurrent use.
type Cache struct {
	rdb     redis.UniversalClient
	o       Options
	genTTL  time.Duration
	breaker *gobreaker.TwoStepCircuitBreaker[struct{}]
	flights singleflight.Group
	tracer  trace.Tracer
	lookups metric.Int64Counter

	mu       sync.Mutex
	pending  map[Key]struct{} // invalidations Redis has not acknowledged yet
	npending atomic.Int32

	local     *local // nil when off
	stopLocal context.CancelFunc
	localDone chan struct{}
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

// New returns a Cache over rdb.
func New(rdb redis.UniversalClient, o Options) *Cache {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Cache{
		rdb: rdb,
		o:   o,
		// A generation must outlive every value stored under it, or the value turns into a miss
		// early. Losing one early is safe (see package doc), so this bound only saves work.
		genTTL:  2 * max(time.Duration(float64(o.TTL)*(1+o.Jitter)), o.NegativeTTL),
		pending: make(map[Key]struct{}),
		tracer:  otel.Tracer("github.com/cacheside/cacheside/app/cache"),
	}
	meter := otel.Meter("github.com/cacheside/cacheside/app/cache")
	c.lookups, _ = meter.Int64Counter("cacheside.cache.lookups",
		metric.WithDescription("Cache lookups by outcome (hit, miss, bypass), keyspace and tier."))
	_, _ = meter.Int64ObservableGauge("cacheside.cache.breaker.state",
		metric.WithDescription("Redis circuit breaker: 0 closed, 1 half-open, 2 open."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(int64(c.breaker.State()))
			return nil
		}))
	_, _ = meter.Int64ObservableGauge("cacheside.cache.invalidations.pending",
		metric.WithDescription("Invalidations Redis has not taken yet; the cache is bypassed meanwhile."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(int64(c.npending.Load()))
			return nil
		}))
	if o.Local {
		c.local = newLocal(o.Prefix, o.LocalTTL, o.LocalMaxBytes, o.Logger)
		ctx, cancel := context.WithCancel(context.Background())
		ps := rdb.Subscribe(ctx, c.local.channel)
		c.localDone = make(chan struct{})
		// Cancelling does not interrupt a blocked receive; closing the subscription does.
		c.stopLocal = func() { cancel(); _ = ps.Close() }
		go func() {
			defer close(c.localDone)
			c.local.listen(ctx, ps)
		}()
	}
	c.breaker = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "redis",
		MaxRequests: 1, // half-open: one probe decides
		Timeout:     o.BreakerCooldown,
		ReadyToTrip: func(n gobreaker.Counts) bool { return n.ConsecutiveFailures >= o.BreakerFailures },
		// A client that hung up is not Redis's fault.
		IsExcluded: func(err error) bool { return errors.Is(err, context.Canceled) },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			o.Logger.Warn("redis circuit breaker", "from", from.String(), "to", to.String())
		},
	})
	return c
}

// Close stops the near-cache's subscription. The Redis client is the caller's to close, after.
func (c *Cache) Close() {
	if c.stopLocal != nil {
		c.stopLocal()
		<-c.localDone
	}
}

func (c *Cache) genKey(k Key) string { return c.o.Prefix + ":{" + k.Space + ":" + k.ID + "}:g" }

// valKey shares genKey's hash tag, so both live in one Cluster slot and one MGET reads both.
func (c *Cache) valKey(k Key) string { return c.o.Prefix + ":{" + k.Space + ":" + k.ID + "}:v" }

// Fetch serves k from Redis, or loads it with load and stores it. An error is the loader's (or
// the caller's context); Redis trouble never surfaces as an error, only as Outcome Bypass.
func (c *Cache) Fetch(ctx context.Context, k Key, load Loader) (Result, error) {
	ctx, span := c.tracer.Start(ctx, "cache.get "+k.Space, trace.WithAttributes(
		attribute.String("cache.key", c.valKey(Key{Space: k.Space, ID: "*"})),
	))
	defer span.End()

	res, err := c.fetch(ctx, span, k, load)
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
	if res.Outcome == Miss {
		span.SetAttributes(attribute.Bool("cache.shared_load", res.Shared))
		if res.Shared && res.loadSpan.IsValid() {
			// The load ran in another request's trace; point to it.
			span.AddLink(trace.Link{SpanContext: res.loadSpan, Attributes: []attribute.KeyValue{attribute.String("cache.link", "shared load")}})
		}
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

func (c *Cache) fetch(ctx context.Context, span trace.Span, k Key, load Loader) (Result, error) {
	vk := c.valKey(k)
	var version uint64
	if c.local != nil && c.npending.Load() == 0 {
		if e, ok := c.local.get(vk); ok {
			return e.result(Hit, "local"), nil
		}
		version = c.local.version(vk) // noted before Redis is asked: see local.store
	}
	gen, cached, err := c.lookup(ctx, k)
	if err != nil {
		span.AddEvent("cache.bypass", trace.WithAttributes(attribute.String("reason", err.Error())))
		span.SetStatus(codes.Error, "redis unavailable: served from source")
		raw, found, _, err := c.runLoad(ctx, k, load)
		if err != nil {
			return Result{Outcome: Bypass}, err
		}
		e := entry{found: found, body: raw}
		if found {
			e.etag = Fingerprint(raw)
		}
		return e.result(Bypass, ""), nil
	}
	if cached != nil {
		if c.local != nil {
			c.local.store(vk, version, *cached)
		}
		return cached.result(Hit, "redis"), nil
	}

	// Keyed by generation: a read that began after a write sees a new generation and so never
	// shares a load that began before the write.
	ch := c.flights.DoChan(c.valKey(k)+"@"+gen, func() (any, error) {
		// The load belongs to every waiter, not to the request that happened to start it: if
		// that request is cancelled, the others must still get their answer.
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.o.LoadTimeout)
		defer cancel()
		// A flight that finished between our lookup and this one starting has stored the value:
		// look again rather than load twice.
		if again, hit, err := c.lookup(lctx, k); err == nil && hit != nil && again == gen {
			return hit.result(Hit, "redis"), nil
		}
		raw, found, loadSpan, err := c.runLoad(lctx, k, load)
		if err != nil {
			return nil, err
		}
		e := c.encode(found, raw)
		c.store(lctx, k, gen, e)
		res := e.result(Miss, "")
		res.loadSpan = loadSpan
		return res, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return Result{Outcome: Miss, Shared: r.Shared}, r.Err
		}
		res := r.Val.(Result)
		res.Shared = r.Shared
		if c.local != nil {
			c.local.store(vk, version, entry{found: res.Found, encoding: res.Encoding, etag: res.ETag, body: res.Body})
		}
		return res, nil
	case <-ctx.Done():
		return Result{Outcome: Miss}, ctx.Err()
	}
}

// runLoad calls the loader in a child span and turns ErrNotFound into found=false. A panic in a
// singleflight DoChan function would crash the process from another goroutine, so it becomes an
// error here instead.
func (c *Cache) runLoad(ctx context.Context, k Key, load Loader) (body []byte, found bool, sc trace.SpanContext, err error) {
	ctx, span := c.tracer.Start(ctx, "cache.load "+k.Space)
	defer span.End()
	sc = span.SpanContext()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("cache loader panicked: %v", p)
			span.SetStatus(codes.Error, "loader panicked")
		}
	}()
	body, err = load(ctx)
	switch {
	case errors.Is(err, ErrNotFound):
		span.SetAttributes(attribute.Bool("cache.found", false))
		return nil, false, sc, nil
	case err != nil:
		span.RecordError(err)
		span.SetStatus(codes.Error, "load failed")
		return nil, false, sc, err
	}
	return body, true, sc, nil
}

// Reasons, besides a Redis error, that a request bypasses the cache.
var (
	errBreakerOpen = errors.New("circuit breaker open")
	errPending     = errors.New("undelivered invalidations")
)

// lookup returns the current generation and, on a hit, the cached entry. An error means Redis
// is unusable for this request (the caller bypasses it).
func (c *Cache) lookup(ctx context.Context, k Key) (gen string, hit *entry, err error) {
	if c.npending.Load() > 0 && !c.flushPending(ctx) {
		return "", nil, errPending
	}
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
	ttl, kind, enc := c.o.NegativeTTL, byte(kindGone), byte(encIdent)
	if e.found {
		ttl, kind = c.o.TTL, kindFound
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
		c.o.Logger.Debug("cache store failed", "space", k.Space, "err", err)
	}
}

// Invalidate retires the current generation of each key. Call it after the database commit. If
// Redis cannot be told, the keys are kept and this process bypasses the cache until they are
// delivered; the error is returned for logging, the write itself has succeeded.
func (c *Cache) Invalidate(ctx context.Context, keys ...Key) error {
	ctx, span := c.tracer.Start(ctx, "cache.invalidate", trace.WithAttributes(attribute.Int("cache.keys", len(keys))))
	defer span.End()
	// Invalidations run even if the breaker is open: skipping one is what would serve stale data.
	err := c.invalidate(ctx, keys)
	// Only now, after Redis holds the new generations, does this process drop its own entries: a
	// local lookup in between could otherwise fetch the old value from Redis and keep it here
	// after this write returns. Its store is refused (the version moves) or its entry dropped.
	if c.local != nil {
		names := make([]string, len(keys))
		for i, k := range keys {
			names[i] = c.valKey(k)
		}
		c.local.invalidate(names...)
	}
	if err != nil {
		c.mu.Lock()
		for _, k := range keys {
			c.pending[k] = struct{}{}
		}
		c.npending.Store(int32(len(c.pending)))
		c.mu.Unlock()
		span.RecordError(err)
		span.SetStatus(codes.Error, "invalidation deferred")
		c.o.Logger.Warn("cache invalidation deferred; bypassing the cache until Redis takes it", "keys", len(keys), "err", err)
	}
	return err
}

func (c *Cache) invalidate(ctx context.Context, keys []Key) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.o.OpTimeout)
	defer cancel()
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		names := make([]string, 0, len(keys))
		for _, k := range keys {
			p.Set(ctx, c.genKey(k), newToken(), c.genTTL)
			p.Del(ctx, c.valKey(k)) // not needed for correctness; frees memory at once
			names = append(names, c.valKey(k))
		}
		if c.local != nil {
			// After the generations: a process that drops its entry and asks Redis again must
			// find the new generation.
			p.Publish(ctx, c.local.channel, strings.Join(names, " "))
		}
		return nil
	})
	return err
}

// InvalidateSpace retires every key of a space, for bulk changes such as seeding. It scans the
// generation keys (on every master in Cluster mode), so it is for rare administrative use.
func (c *Cache) InvalidateSpace(ctx context.Context, space string) error {
	pattern := c.o.Prefix + ":{" + space + ":*}:g"
	scan := func(ctx context.Context, rdb redis.UniversalClient) error {
		it := rdb.Scan(ctx, 0, pattern, 500).Iterator()
		for it.Next(ctx) {
			if err := rdb.Set(ctx, it.Val(), newToken(), c.genTTL).Err(); err != nil {
				return err
			}
		}
		return it.Err()
	}
	var err error
	if cc, ok := c.rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return scan(ctx, node) })
	} else {
		err = scan(ctx, c.rdb)
	}
	if err != nil {
		return err
	}
	if c.local != nil {
		c.local.flush()
		return c.rdb.Publish(ctx, c.local.channel, flushAll).Err()
	}
	return nil
}

// flushPending delivers deferred invalidations; it reports whether none are left.
func (c *Cache) flushPending(ctx context.Context) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		return true
	}
	keys := make([]Key, 0, len(c.pending))
	for k := range c.pending {
		keys = append(keys, k)
	}
	if err := c.call(ctx, func(ctx context.Context) error { return c.invalidate(ctx, keys) }); err != nil {
		return false
	}
	clear(c.pending)
	c.npending.Store(0)
	c.o.Logger.Info("deferred cache invalidations delivered", "keys", len(keys))
	return true
}

// call runs one Redis operation through the breaker with the per-operation timeout.
func (c *Cache) call(ctx context.Context, op func(context.Context) error) error {
	done, err := c.breaker.Allow()
	if err != nil {
		return errBreakerOpen
	}
	ctx, cancel := context.WithTimeout(ctx, c.o.OpTimeout)
	defer cancel()
	err = op(ctx)
	done(err)
	return err
}

func (c *Cache) jitter(ttl time.Duration) time.Duration {
	if c.o.Jitter <= 0 {
		return ttl
	}
	return ttl + time.Duration(rand.Float64()*c.o.Jitter*float64(ttl))
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
	ctx, cancel := context.WithTimeout(ctx, c.o.OpTimeout)
	defer cancel()
	h := Health{Status: "up", Breaker: c.breaker.State().String(), Pending: int(c.npending.Load()), Local: "off"}
	if c.local != nil {
		h.Local = "down"
		if c.local.live.Load() {
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
	if c.o.Compress {
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
