// Package cache is a cache-aside tier over Redis that never serves data older than a write that
// has returned, collapses concurrent reads into one lookup and one load, and fails open when
// Redis is sick. This file is the read path; the rest of the package is named for what it holds:
//
//	wire.go       how a view is laid out in Redis: keys, generation tokens, the stored header
//	rounds.go     how concurrent reads share lookups and loads
//	invalidate.go the write side: retiring generations after a write
//	pending.go    invalidations Redis has not confirmed, and their redelivery
//	nearcache.go  the optional in-process tier in front of Redis
//	lease.go      leases that make a miss storm cost one load per fleet, not per process
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
// two lookups and one load; with leases on (lease.go), one load across every process that
// shares the Redis. Redis operations are bounded to what the client's connection pool
// holds, so no operation waits for a connection inside its own time budget: waiting behind this
// process's own traffic is not Redis failing, and never counts against the circuit breaker.
//
// # Past the TTL
//
// A value whose generation is current reflects every write the cache knows about, whatever its
// TTL says; the TTL only bounds how long a value may go unrefreshed. So values are kept in Redis
// Options.StaleGrace past their TTL (the header records when it ends, see wire.go): a read then
// misses, but if the reload fails because the source is unavailable, the value its own lookup
// found under the current generation answers as Stale. A retired generation never answers, nor
// does a key whose retirement this process has not had confirmed. And a key read steadily never
// gets that far: hits refresh it in the background shortly before its TTL ends, with XFetch's
// probability (maybeRefresh), through the same shared load as a miss of that generation.
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
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/semaphore"

	"github.com/cacheside/cacheside/app/view"
)

// Key names one cached view: Space groups keys of a kind ("list", "item"), ID picks one.
type Key struct{ Space, ID string }

// Loader reads the authoritative view, uncompressed and with its ETag, or returns
// view.ErrNotFound, whose absence is then cached for the negative TTL.
type Loader func(ctx context.Context) (view.View, error)

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
	WaitReplicas      int
	Compress          bool          // store values gzip-compressed
	NearCache         bool          // keep an in-process tier in front of Redis (needs Redis pub/sub)
	NearCacheTTL      time.Duration // longest life of a near-cache entry
	NearCacheMaxBytes int64         // memory bound of the near-cache
	// StaleGrace keeps a found value in Redis this long past its TTL. Past its TTL it is a miss,
	// but while its generation is current it is as fresh as the last write the cache knows
	// about, so when the reload fails with an error StaleIfError accepts, it answers as Stale.
	// Zero keeps nothing past the TTL.
	StaleGrace   time.Duration
	StaleIfError func(error) bool // which loader errors a stale value may answer; nil: none
	// EarlyRefreshBeta is XFetch's beta: a hit refreshes its value in the background when
	// -beta × (its load time) × ln(rand) reaches the time it has left, so a key read steadily is
	// reloaded before it expires. Zero turns early refresh off; above 1 refreshes earlier.
	EarlyRefreshBeta float64
	Logger           *slog.Logger

	// LeaseTTL, when above zero, makes a miss take a lease on its generation in Redis before it
	// loads, so a miss storm costs one load per fleet, not per process (lease.go). It is how
	// long a dead holder holds the others up; keep it at most LoadTimeout.
	LeaseTTL time.Duration
}

// Cache is safe for concurrent use.
type Cache struct {
	rdb      redis.UniversalClient
	opts     Options
	genTTL   time.Duration
	breaker  *gobreaker.TwoStepCircuitBreaker[struct{}]
	failed   atomic.Int64        // when the last failure the breaker counted was seen (UnixNano)
	slots    *semaphore.Weighted // Redis operations in flight, at most the pool's size
	inFlight atomic.Int64        // Redis operations holding a slot now
	maxIn    atomic.Int64        // the most there ever were at once (the storm tests check the bound)
	lookups  rounds[looked]      // shared lookups
	loads    flights             // shared loads of a generation
	bypasses rounds[loaded]      // shared loads that bypass Redis
	pending  *pending
	near     *nearCache // nil when off

	tracer        trace.Tracer
	getSpans      memo[string, getSpan] // by key space
	outcomes      metric.Int64Counter
	outcomeAttrs  memo[outcomeLabels, []metric.AddOption]
	sourced       metric.Int64Counter
	refreshed     metric.Int64Counter
	leases        metric.Int64Counter
	leaseWaiting  metric.Int64UpDownCounter
	waitsOnLeases atomic.Int64 // loads that waited on another process's lease (tests read it)
	leasePolls    atomic.Int64 // polls of those waits (tests read it)
	refreshesLeft atomic.Int64 // early refreshes that left the load to a lease holder (tests read it)

	refreshing     sync.Map // value keys with an early refresh under way in this process
	refreshMu      sync.Mutex
	refreshesDone  sync.WaitGroup
	refreshStopped bool // Close has begun: no new refresh starts

	stopNear, stopRedelivery context.CancelFunc
	nearDone, redeliveryDone chan struct{}
	closeOnce                sync.Once

	laterMu      sync.Mutex
	later        map[*time.Timer][]Key // retirements scheduled by InvalidateLater
	laterRunning sync.WaitGroup
	closing      bool
}

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
		// Values are kept StaleGrace past their TTL, and their generation with them.
		genTTL: 2 * max(time.Duration(float64(o.TTL)*(1+o.Jitter))+o.StaleGrace, o.NegativeTTL),
		// Two connections stay free for health pings and the invalidations of writes.
		slots:   semaphore.NewWeighted(int64(max(1, poolSize(rdb)-2))),
		pending: newPending(),
		lookups: rounds[looked]{inline: true},
		later:   make(map[*time.Timer][]Key),
		tracer:  otel.Tracer("github.com/cacheside/cacheside/app/cache"),
	}
	c.breaker = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "redis",
		MaxRequests: 1, // half-open: one probe decides
		Timeout:     o.BreakerCooldown,
		ReadyToTrip: func(n gobreaker.Counts) bool { return n.ConsecutiveFailures >= o.BreakerFailures },
		IsExcluded:  func(err error) bool { return errors.Is(err, errSameFault) || errors.Is(err, errSaturated) },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			o.Logger.Warn("redis circuit breaker", "from", from.String(), "to", to.String())
		},
	})

	meter := otel.Meter("github.com/cacheside/cacheside/app/cache")
	c.outcomes, _ = meter.Int64Counter("cacheside.cache.lookups",
		metric.WithDescription("Cache lookups by outcome (hit, miss, bypass), keyspace and tier."))
	c.sourced, _ = meter.Int64Counter("cacheside.cache.loads",
		metric.WithDescription("Reads of the source of truth on a miss, bypass or early refresh, by keyspace and result (found, not_found, error); one per shared load."))
	c.refreshed, _ = meter.Int64Counter("cacheside.cache.early_refreshes",
		metric.WithDescription("Values reloaded in the background before their TTL ended (XFetch), by keyspace."))
	c.newLeaseMetrics(meter)
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

	if o.NearCache {
		c.near = newNearCache(o.Prefix, o.NearCacheTTL, o.NearCacheMaxBytes, o.Logger)
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
	c.stopRedelivery, c.redeliveryDone = cancel, make(chan struct{})
	go func() {
		defer close(c.redeliveryDone)
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

// Close runs the retirements InvalidateLater scheduled, delivers what invalidations are still
// pending, trying until ctx ends, logs any it could not deliver, and stops the background work.
// The Redis client is the caller's to close, after.
func (c *Cache) Close(ctx context.Context) {
	c.closeOnce.Do(func() {
		c.stopRefreshes()
		defer func() { // on every path, the deadline's too
			if c.stopNear != nil {
				c.stopNear()
				<-c.nearDone
			}
		}()
		c.retireScheduled(ctx)
		c.stopRedelivery()
		<-c.redeliveryDone
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
	})
}

// served is a view with what the engine's traces need to know about how it came to be.
type served struct {
	view.View
	loadSpan trace.SpanContext // the load that produced a miss or bypass, linked from sharers' traces
	bypass   string            // why Redis was not used
	loadErr  error             // why a stale value answered
}

// getSpan is how Fetch starts its span for a key space.
type getSpan struct {
	name string
	opts []trace.SpanStartOption
}

// outcomeLabels are the attributes of a read's count in cacheside.cache.lookups.
type outcomeLabels struct {
	outcome view.Outcome
	space   string
	tier    view.Tier
}

// Fetch serves k from the cache, or loads it with load and stores it. It returns
// view.ErrNotFound (with the view saying how that was served) for an absence, the loader's error
// or the caller's context's; Redis trouble never surfaces as an error, only as a Bypass. A load
// that fails with an error Options.StaleIfError accepts is answered, if the lookup found a value
// past its TTL under the current generation, with that value as Stale.
func (c *Cache) Fetch(ctx context.Context, k Key, load Loader) (view.View, error) {
	st := c.getSpans.get(k.Space, func() getSpan {
		return getSpan{name: "cache.get " + k.Space, opts: []trace.SpanStartOption{trace.WithAttributes(
			attribute.String("cache.key", c.valKey(Key{Space: k.Space, ID: "*"})),
		)}}
	})
	ctx, span := c.tracer.Start(ctx, st.name, st.opts...)
	defer span.End()

	s, err := c.fetch(ctx, k, load)
	tier := s.Served.Tier
	if tier == "" {
		tier = view.Redis // misses and bypasses are decided at the Redis tier
	}
	if span.IsRecording() { // an unsampled read's span keeps nothing: spare it the work
		span.SetAttributes(
			attribute.Bool("cache.hit", s.Served.Outcome == view.Hit),
			attribute.String("cache.outcome", string(s.Served.Outcome)),
			attribute.String("cache.tier", string(tier)),
			attribute.Int("cache.item_size", len(s.Body)),
		)
		switch s.Served.Outcome {
		case view.Bypass:
			span.AddEvent("cache.bypass", trace.WithAttributes(attribute.String("reason", s.bypass)))
			span.SetStatus(codes.Error, "redis unavailable: served from source")
		case view.Stale:
			span.SetAttributes(attribute.Bool("cache.stale", true), attribute.Int64("cache.age_ms", time.Since(s.Stored).Milliseconds()))
			span.AddEvent("cache.stale", trace.WithAttributes(attribute.String("reason", s.loadErr.Error())))
			span.SetStatus(codes.Error, "source unavailable: served a stale value of the current generation")
		case view.Miss:
			span.SetAttributes(attribute.Bool("cache.shared_load", s.Served.Shared))
		}
		if s.Served.Shared && s.loadSpan.IsValid() {
			// The load ran in another request's trace; point to it.
			span.AddLink(trace.Link{SpanContext: s.loadSpan, Attributes: []attribute.KeyValue{attribute.String("cache.link", "shared load")}})
		}
	}
	c.outcomes.Add(ctx, 1, c.outcomeAttrs.get(outcomeLabels{s.Served.Outcome, k.Space, tier}, func() []metric.AddOption {
		return []metric.AddOption{metric.WithAttributes(
			attribute.String("cache.outcome", strings.ToLower(string(s.Served.Outcome))),
			attribute.String("cache.keyspace", k.Space),
			attribute.String("cache.tier", string(tier)),
		)}
	})...)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "load failed")
		return s.View, err
	}
	if !s.Found {
		return s.View, view.ErrNotFound
	}
	return s.View, nil
}

// fetch is the read path: the near-cache, then a lookup round in Redis, then the shared load of
// the generation it saw, or, if Redis cannot be used, a shared load that bypasses it.
func (c *Cache) fetch(ctx context.Context, k Key, load Loader) (served, error) {
	vk := c.valKey(k)
	plain := view.WantsPlain(ctx)
	if c.near != nil && !c.pending.has(k) {
		if v, ok := c.near.get(vk); ok {
			if now := time.Now(); now.Before(v.Expires) {
				if plain {
					v = c.near.withPlain(vk, v)
				}
				c.maybeRefresh(ctx, k, load, v, now)
				v.Served = view.Served{Outcome: view.Hit, Tier: view.Local}
				return served{View: v}, nil
			}
		}
	}
	// Reads for clients that do not take gzip look up the plain copy too, so they share rounds
	// of their own.
	round := vk
	if plain {
		round += " plain"
	}
	r, joined := c.lookups.join(ctx, round, func(ctx context.Context) looked { return c.look(ctx, k, load, plain) })
	select {
	case <-r.done:
	case <-ctx.Done():
		return served{View: view.View{Served: view.Served{Outcome: view.Miss}}}, ctx.Err()
	}
	switch {
	case r.res.hit != nil:
		return served{View: *r.res.hit}, nil
	case r.res.bypass != nil:
		why := r.res.bypass
		b, joined := c.bypasses.join(ctx, vk, func(ctx context.Context) loaded {
			s, err := c.bypass(ctx, k, load, why)
			return loaded{s, err}
		})
		select {
		case <-b.done:
		case <-ctx.Done():
			return served{View: view.View{Served: view.Served{Outcome: view.Bypass}}}, ctx.Err()
		}
		s := b.res.s
		s.Served.Shared = joined
		return s, b.res.err
	}
	fl := r.res.flight
	fl.waiters.Add(1)
	defer fl.waiters.Add(-1)
	select {
	case <-fl.done:
	case <-ctx.Done():
		return served{View: view.View{Served: view.Served{Outcome: view.Miss}}}, ctx.Err()
	}
	if errors.Is(fl.err, errRefreshLeft) {
		// This miss joined an early refresh that left the load to another process's lease:
		// look again, which loads or waits on that lease like any miss.
		return c.fetch(ctx, k, load)
	}
	if fl.err != nil && r.res.stale != nil && c.staleMayAnswer(k, fl.err) {
		s := served{View: *r.res.stale, loadErr: fl.err}
		s.Served = view.Served{Outcome: view.Stale, Tier: view.Redis}
		return s, nil
	}
	s := fl.res
	s.Served.Shared = s.Served.Shared || joined || !r.res.started
	return s, fl.err
}

// staleMayAnswer reports whether a read of k whose load failed with err may be answered with the
// value past its TTL that its own lookup found under the generation it saw current. That lookup
// began after the read did, and the generation was current then, so the value reflects every
// write that had returned before the read began: serving it keeps the promise a hit keeps. Not
// when a retirement of k by this process is unconfirmed: the generation it saw may be one a
// write here has retired in Postgres's eyes but not yet in Redis's.
func (c *Cache) staleMayAnswer(k Key, err error) bool {
	return c.opts.StaleGrace > 0 && c.opts.StaleIfError != nil && c.opts.StaleIfError(err) && !c.pending.has(k)
}

// look is one lookup round: the lookup in Redis, and on a miss the flight that loads the value
// of the generation it saw. It runs detached from the requests waiting on it.
//
// A round for clients that do not take gzip (plain) also reads the view's plain copy. When a
// gzip view has none, the round decompresses it once for all its members and stores the copy
// under the generation it read, so the next such rounds fetch it instead of decompressing:
// measured at 1,000 rows, fetching the 75 KB copy costs a Redis hit less than gunzipping its
// 5 KB (see the commit that brought it). Views no such client reads never get a copy.
func (c *Cache) look(ctx context.Context, k Key, load Loader, plain bool) looked {
	if c.pending.has(k) {
		return looked{bypass: errPending}
	}
	vk := c.valKey(k)
	var version uint64
	if c.near != nil {
		version = c.near.version(vk) // noted before Redis is asked: see nearCache.keep
	}
	gen, cur, err := c.lookup(ctx, k, plain)
	if err != nil {
		return looked{bypass: err}
	}
	now := time.Now()
	switch {
	case cur != nil && now.Before(cur.Expires):
		if plain && cur.Plain == nil && cur.Encoding == "gzip" {
			if p, err := cur.JSON(); err == nil { // else the handler reports it
				cur.Plain = p
				c.putPlain(ctx, k, gen, *cur)
			}
		}
		if c.near != nil {
			c.near.keep(vk, version, *cur)
		}
		c.maybeRefresh(ctx, k, load, *cur, now)
		cur.Served = view.Served{Outcome: view.Hit, Tier: view.Redis}
		return looked{hit: cur}
	case cur != nil && c.refreshingKey(vk):
		// Its TTL ended while an early refresh, triggered before that, is under way: the value
		// is current (its generation is), so it is served until the refresh lands, bounded by
		// one lookup and the load timeout; waiting for a load here is what the refresh exists
		// to spare. Not kept in the near-cache, whose entries must be within their TTL.
		cur.Served = view.Served{Outcome: view.Hit, Tier: view.Redis}
		return looked{hit: cur}
	}
	fl, started := c.loadGeneration(ctx, k, gen, version, load, plain, false)
	return looked{flight: fl, started: started, stale: cur}
}

// loadGeneration attaches to the load of k's generation gen, starting it if none is running:
// the one place a value is loaded and stored, for misses and early refreshes alike. version is
// the near-cache's version of k, noted before gen was read. The load runs once per fleet, under
// the generation's lease (lease.go). plain says a client that does not take gzip starts it: its
// plain copy is stored and kept too. refresh says an early refresh starts it, which loads only
// if it takes the lease: a refresh that finds the lease held leaves the load to its holder.
func (c *Cache) loadGeneration(ctx context.Context, k Key, gen string, version uint64, load Loader, plain, refresh bool) (*flight, bool) {
	vk := c.valKey(k)
	return c.loads.attach(ctx, vk+"@"+gen, func(ctx context.Context) (served, error) {
		s, err := c.leased(ctx, k, gen, refresh, func(ctx context.Context, gen string) (served, error) {
			began := time.Now()
			s, err := c.load(ctx, k, load)
			if err != nil {
				return s, err
			}
			s.View = c.compress(s.View)
			s.View.LoadTime = time.Since(began) // XFetch's delta: what making the value again costs
			s.View = c.put(ctx, k, gen, s.View, plain)
			return s, nil
		})
		if err != nil {
			return served{View: view.View{Served: view.Served{Outcome: view.Miss}}}, err
		}
		if c.near != nil {
			kept := s.View
			if !plain { // the plain copy is kept for the clients that read it, not for all
				kept.Plain = nil
			}
			c.near.keep(vk, version, kept)
		}
		s.Served = view.Served{Outcome: view.Miss, Shared: s.Served.Shared}
		return s, nil
	})
}

// maybeRefresh starts an early refresh of k, whose current value v was just served, with
// XFetch's probability (Vattani, Chierichetti and Lowenstein, "Optimal Probabilistic Cache
// Stampede Prevention", VLDB 2015): when -beta × delta × ln(rand) reaches the time v has left,
// delta being how long v took to load. The closer the expiry and the slower the load, the likelier;
// a key read steadily is thus reloaded before it expires, by about one read, and a key read
// rarely is left to expire.
func (c *Cache) maybeRefresh(ctx context.Context, k Key, load Loader, v view.View, now time.Time) {
	beta := c.opts.EarlyRefreshBeta
	if beta <= 0 || v.LoadTime <= 0 {
		return
	}
	left := v.Expires.Sub(now)
	if float64(left) > -beta*float64(v.LoadTime)*math.Log(1-rand.Float64()) { // 1-rand: in (0, 1]
		return
	}
	c.refresh(ctx, k, load, v, left)
}

// refresh reloads k in the background, at most once at a time per key in this process, while
// reads go on being served the current value. It is a miss in all but timing: it reads the
// current generation first and stores under it, through the same shared load, so a write that
// retires that generation meanwhile makes the refreshed value count for nothing, as it would a
// miss's. A value that expires later than v is already someone's refresh (another replica's):
// nothing to do.
//
// The refresh runs in a trace of its own (it outlives the read), linked to the span of the read
// that triggered it; that span's cache.early_refresh event names the refresh's trace in turn, so
// a reader can go either way (a link is visible only from the span that holds it). The refresh
// span records why XFetch fired: the time v had left and its load time (delta).
func (c *Cache) refresh(ctx context.Context, k Key, load Loader, v view.View, left time.Duration) {
	if c.pending.has(k) {
		return // reads of k bypass the cache until its retirement is confirmed
	}
	vk := c.valKey(k)
	if _, busy := c.refreshing.LoadOrStore(vk, struct{}{}); busy {
		return
	}
	c.refreshMu.Lock()
	if c.refreshStopped {
		c.refreshMu.Unlock()
		c.refreshing.Delete(vk)
		return
	}
	c.refreshesDone.Add(1)
	c.refreshMu.Unlock()
	plain := view.WantsPlain(ctx) // a read that did not take gzip: its plain copy is refreshed too
	link := trace.LinkFromContext(ctx, attribute.String("cache.link", "triggered the early refresh"))
	rctx, span := c.tracer.Start(context.Background(), "cache.refresh "+k.Space, trace.WithNewRoot(), trace.WithLinks(link),
		trace.WithAttributes(
			attribute.String("cache.key", c.valKey(Key{Space: k.Space, ID: "*"})),
			attribute.Float64("cache.ttl_left_ms", float64(left)/float64(time.Millisecond)),
			attribute.Float64("cache.load_time_ms", float64(v.LoadTime)/float64(time.Millisecond)), // XFetch's delta
		))
	var event []attribute.KeyValue
	if sc := span.SpanContext(); sc.IsValid() {
		event = append(event, attribute.String("cache.refresh.trace_id", sc.TraceID().String()))
	}
	trace.SpanFromContext(ctx).AddEvent("cache.early_refresh", trace.WithAttributes(event...))
	expires := v.Expires
	go func() {
		defer c.refreshesDone.Done()
		defer c.refreshing.Delete(vk)
		defer span.End()
		ctx := rctx // the refresh's own trace, not the read's
		var version uint64
		if c.near != nil {
			version = c.near.version(vk)
		}
		gen, cur, err := c.lookup(ctx, k, false)
		switch {
		case err != nil:
			span.RecordError(err)
			span.SetStatus(codes.Error, "redis unavailable: not refreshed")
			return
		case cur != nil && cur.Expires.After(expires):
			span.SetAttributes(attribute.Bool("cache.refresh_done_elsewhere", true))
			return
		}
		fl, started := c.loadGeneration(ctx, k, gen, version, load, plain, true)
		<-fl.done
		switch {
		case errors.Is(fl.err, errRefreshLeft):
			// Another replica holds the generation's lease: it is loading, the fleet refreshes once.
			c.refreshesLeft.Add(1)
			span.SetAttributes(attribute.Bool("cache.refresh_done_elsewhere", true))
			return
		case started:
			c.refreshed.Add(ctx, 1, metric.WithAttributes(attribute.String("cache.keyspace", k.Space)))
		}
		if fl.err != nil {
			span.RecordError(fl.err)
			span.SetStatus(codes.Error, "load failed: the current value stays until its TTL")
		}
	}()
}

// refreshingKey reports whether an early refresh of the value key vk is under way in this
// process, from the hit that triggered it until it has stored its value or given up.
func (c *Cache) refreshingKey(vk string) bool {
	_, ok := c.refreshing.Load(vk)
	return ok
}

// stopRefreshes lets no new early refresh start and waits for those under way (each bounded by
// the load timeout), so none uses Redis after Close.
func (c *Cache) stopRefreshes() {
	c.refreshMu.Lock()
	c.refreshStopped = true
	c.refreshMu.Unlock()
	c.refreshesDone.Wait()
}

// bypass serves a read from the source without the cache, because of why.
func (c *Cache) bypass(ctx context.Context, k Key, load Loader, why error) (served, error) {
	s, err := c.load(ctx, k, load)
	s.Served, s.bypass = view.Served{Outcome: view.Bypass}, why.Error()
	return s, err
}

// load calls the loader in a child span, bounded by the load timeout; view.ErrNotFound becomes
// an absence. A panic here would crash the process from a round's goroutine, so it becomes an
// error carrying the panic's stack.
func (c *Cache) load(ctx context.Context, k Key, loader Loader) (s served, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.LoadTimeout)
	defer cancel()
	ctx, span := c.tracer.Start(ctx, "cache.load "+k.Space)
	defer span.End()
	s.loadSpan = span.SpanContext()
	result := "error"
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("cache loader panicked: %v\n%s", p, debug.Stack())
			span.SetStatus(codes.Error, "loader panicked")
		}
		c.sourced.Add(ctx, 1, metric.WithAttributes(attribute.String("cache.keyspace", k.Space), attribute.String("result", result)))
	}()
	began := time.Now()
	v, err := loader(ctx)
	took := time.Since(began)
	switch {
	case errors.Is(err, view.ErrNotFound):
		result = "not_found"
		span.SetAttributes(attribute.Bool("cache.found", false))
		s.LoadTime = took
		return s, nil
	case err != nil:
		span.RecordError(err)
		span.SetStatus(codes.Error, "load failed")
		return s, err
	}
	result = "found"
	v.Found, v.LoadTime = true, took
	s.View = v
	return s, nil
}

// Reasons, besides a Redis error, that a read bypasses the cache.
var (
	errBreakerOpen = errors.New("circuit breaker open")
	errPending     = errors.New("an invalidation of this key is not confirmed")
	errSaturated   = errors.New("no Redis connection free within the timeout")
)

// lookup returns the current generation and the view stored under it, if any, whether or not its
// TTL has ended (see view.View.Expires), with its plain copy when plain asks for it and Redis
// holds one. An error means Redis is unusable for this read (the caller bypasses it).
func (c *Cache) lookup(ctx context.Context, k Key, plain bool) (gen string, hit *view.View, err error) {
	err = c.call(ctx, func(ctx context.Context) error {
		keys := []string{c.genKey(k), c.valKey(k)}
		if plain {
			keys = append(keys, c.plainKey(k))
		}
		vals, err := c.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return err
		}
		gen, _ = vals[0].(string)
		stored, _ := vals[1].(string)
		if v, ok := unpack(stored, gen); ok {
			if plain && v.Encoding == "gzip" {
				// The copy counts only next to a current view with the same ETag: it is a copy of
				// that view, never a value of its own.
				copied, _ := vals[2].(string)
				if p, ok := unpack(copied, gen); ok && p.Found && p.Encoding == "" && p.ETag == v.ETag {
					v.Plain = p.Body
				}
			}
			hit = &v
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

// put stores a loaded view under the generation it was loaded for, and its plain copy when a
// client that does not take gzip asked for it (plain), and returns it stamped with when it was
// stored and when its TTL ends. A found value (and its copy) stays in Redis StaleGrace longer,
// to answer as stale if the source fails; an absence does not (it costs nothing to lose, and a
// scan of unknown ids would otherwise fill Redis for the grace period). Best effort: a failure
// only costs a later miss (and counts against the breaker).
func (c *Cache) put(ctx context.Context, k Key, gen string, v view.View, plain bool) view.View {
	ttl, grace := c.opts.NegativeTTL, time.Duration(0)
	if v.Found {
		ttl, grace = c.opts.TTL, c.opts.StaleGrace
	}
	ttl = c.jitter(ttl)
	v.Stored = time.Now()
	v.Expires = v.Stored.Add(ttl)
	stored := pack(gen, v)
	var copied []byte
	if plain && v.Encoding == "gzip" && v.Plain != nil {
		copied = pack(gen, plainCopy(v))
	}
	err := c.call(ctx, func(ctx context.Context) error {
		_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, c.valKey(k), stored, ttl+grace)
			if copied != nil {
				p.Set(ctx, c.plainKey(k), copied, ttl+grace)
			}
			p.Expire(ctx, c.genKey(k), c.genTTL)
			return nil
		})
		return err
	})
	if err != nil {
		c.opts.Logger.DebugContext(ctx, "cache store failed", "space", k.Space, "err", err)
	}
	return v
}

// putPlain stores the plain copy of a gzip view found in Redis under the generation it was read
// with. Like the view, it counts only while that generation is current and only next to a view
// with the same ETag (lookup), and it carries the view's header (stored, expires, load time) and
// lives in Redis exactly as long as the view (its TTL and StaleGrace from when it was stored), so
// a copy is never served for another generation nor past what the view allows. Best effort, like
// put.
func (c *Cache) putPlain(ctx context.Context, k Key, gen string, v view.View) {
	gone := v.Expires.Add(c.opts.StaleGrace)
	if !time.Now().Before(gone) {
		return
	}
	copied := pack(gen, plainCopy(v))
	err := c.call(ctx, func(ctx context.Context) error {
		return c.rdb.SetArgs(ctx, c.plainKey(k), copied, redis.SetArgs{ExpireAt: gone}).Err()
	})
	if err != nil {
		c.opts.Logger.DebugContext(ctx, "cache store of a plain copy failed", "space", k.Space, "err", err)
	}
}

// plainCopy is what the :p key stores for gzip view v: its plain body under v's header.
func plainCopy(v view.View) view.View {
	return view.View{Body: v.Plain, ETag: v.ETag, Found: true, Stored: v.Stored, Expires: v.Expires, LoadTime: v.LoadTime}
}

// compress gzips a loaded view's body once, when it is stored, if the cache is set to. The body
// as loaded stays as the plain copy: the reads that share the load and do not take gzip are
// answered with it.
func (c *Cache) compress(v view.View) view.View {
	if c.opts.Compress && v.Found {
		v.Plain, v.Body, v.Encoding = v.Body, gzipBytes(v.Body), "gzip"
	}
	return v
}

// call runs one Redis operation: it waits for a free connection slot (at most OpTimeout, and
// outside the operation's own budget), asks the breaker, then gives the operation OpTimeout.
// With no more operations in flight than the pool holds connections, none waits for one inside
// its budget, so a timeout means Redis did not answer; waiting for a slot is this process's own
// saturation and never reaches the breaker (the read bypasses instead). The one exception follows
// a failure: go-redis drops a connection whose operation failed and re-dials it in the background
// (the pool is kept full, see redisclient), holding a pool turn for the dial, so for that long
// the pool has fewer connections than the slots promise and an operation may wait a dial's time
// (on a starved machine, past the pool's timeout: that too is this process's state, not Redis's,
// and is not counted by the breaker).
func (c *Cache) call(ctx context.Context, op func(context.Context) error) error {
	if !c.slots.TryAcquire(1) { // a slot is free almost always: no timer then
		wctx, cancel := context.WithTimeout(ctx, c.opts.OpTimeout)
		err := c.slots.Acquire(wctx, 1)
		cancel()
		if err != nil {
			return errSaturated
		}
	}
	defer c.slots.Release(1)
	c.noteInFlight()
	defer c.inFlight.Add(-1)
	done, err := c.breaker.Allow()
	if err != nil {
		return errBreakerOpen
	}
	octx, cancel := context.WithTimeout(ctx, c.opts.OpTimeout)
	defer cancel()
	began := time.Now().UnixNano()
	err = op(octx)
	if errors.Is(err, redis.ErrPoolTimeout) { // see above: the pool re-dialling what it dropped
		done(errSaturated)
		return errSaturated
	}
	if err != nil && !c.newFault(began) {
		done(fmt.Errorf("%w: %w", errSameFault, err))
		return err
	}
	done(err)
	return err
}

// noteInFlight counts an operation that holds a slot, and the most there ever were at once.
func (c *Cache) noteInFlight() {
	n := c.inFlight.Add(1)
	for {
		m := c.maxIn.Load()
		if n <= m || c.maxIn.CompareAndSwap(m, n) {
			return
		}
	}
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

func sampleKeys(keys []Key, n int) []string {
	out := make([]string, 0, min(n, len(keys)))
	for _, k := range keys[:min(n, len(keys))] {
		out = append(out, k.Space+":"+k.ID)
	}
	return out
}
