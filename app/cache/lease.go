package cache

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Fleet-wide coalescing with leases.
//
// Rounds and flights (rounds.go) make a miss storm cost one load per process; N replicas that
// miss together still send N queries. So a flight, before it loads, takes a lease in Redis on
// the generation it is loading (SET NX PX, in the spirit of the leases of "Scaling Memcache at
// Facebook", NSDI 2013), and a flight that finds the lease taken waits for the holder's value
// instead of querying:
//
//	<prefix>:{<space>:<id>}:l:<generation>   the lease: a random token and the holder's span
//
// A lease belongs to a generation: its key names it. A write retires the generation, so a miss
// that starts after the write sees the new generation and takes a lease of its own at once; it
// never waits on a load that began before the write. The old holder still stores what it
// loaded, under the generation it loaded for, which put has always done and which no lookup
// counts any more (unpack compares generations): the lease adds no new way to store a value, so
// the stale-set race stays closed whatever a lease does.
//
// A lease lives Options.LeaseTTL, at most the load timeout, which bounds the holder's load
// anyway: a holder that dies (a killed process, a lost node) costs the others at most that
// long, then one of them takes the lease over. The holder releases its lease once it has stored
// the value, or once its load failed, so that a later miss of the same generation (the value
// expired or was evicted) does not wait out a lease nobody works under, and a failed load is
// retried by a waiter at once. Release compares the token before deleting (a small Lua script):
// a holder that overran its lease must not delete its successor's.
//
// Waiters poll (one MGET of the generation, the value and the lease) with back-off, from
// leaseFirstPoll doubling to leaseMaxPoll, rather than wait for a pub/sub message. A poll costs
// one round trip per waiting process and key, not per request (the flight waits for all its
// readers), so a storm on one key costs each waiting process a handful of MGETs. A pub/sub
// wake-up would save the last poll's delay (at most leaseMaxPoll after the value lands), but it
// would publish every leased load to every process, waiting or not, and since messages are lost
// while a subscription reconnects and a dead holder sends none, the poll would still be needed.
//
// A wait ends in one of these ways, none of which can turn into an error the user sees:
//   - the value is stored under the current generation (by the holder, or anybody): it is served;
//   - the lease is gone without a value (the holder died, or its load failed): this process
//     takes the lease over and loads, or keeps waiting if another took it first;
//   - a write retired the generation: this process follows the new one (see leased);
//   - Redis fails (an error, a timeout, the breaker opens): it loads on its own;
//   - LeaseTTL + LoadTimeout pass (a dead holder's lease plus a full load by its successor):
//     it loads on its own.
//
// Every reader also waits no longer than its own request's context (fetch).
const (
	leaseFirstPoll = 5 * time.Millisecond
	leaseMaxPoll   = 50 * time.Millisecond
)

// releaseLease deletes a lease only if it still holds the releasing holder's token.
var releaseLease = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

func (c *Cache) leaseKey(k Key, gen string) string {
	return c.opts.Prefix + ":{" + k.Space + ":" + k.ID + "}:l:" + gen
}

// How a flight came by its value, as the lease metric and span attributes name it.
const (
	leaseAcquired  = "acquired"   // the lease was free: this process loaded
	leaseWaited    = "waited"     // another process loaded: this one served what it stored
	leaseTakenOver = "taken_over" // the holder's lease ended without a value: this process took it and loaded
	leaseNone      = "unleased"   // this process loaded without a lease (see reason)
	leaseLeft      = "left"       // an early refresh found the lease held: the holder loads, not this process
)

// errRefreshLeft ends an early refresh's load that found the generation's lease held by another
// process (see leased). A miss that joined that load looks again (fetch).
var errRefreshLeft = errors.New("cache: early refresh left to the lease holder")

// leased runs fill (load generation gen of k and store it under gen) once per fleet: under a
// lease, or not at all if another process holding the lease stores the value first. With
// leases off it just runs fill.
//
// A write that retires the generation while this process waits makes it follow the new one:
// the readers waiting here all began before the write returned, so the new generation's value
// is right for them too, and its load is the one the fleet needs next anyway (loading the
// retired generation would cost a query whose value nobody reads). fill is then called with
// the new generation, observed current before the load begins, which is what put requires.
// Writes landing faster than a load can follow are followed a few times, then this process
// loads on its own.
//
// An early refresh (refresh true) loads only under a lease it takes at once: a lease held by
// another process means that process is loading this generation already, and its value will
// land before the current one expires (or the readers who then miss will wait for it), so the
// refresh gives up with errRefreshLeft instead of waiting. Waiting would also be wrong: what a
// waiter accepts is any value of the generation within its TTL, which the value that triggered
// the refresh still is.
func (c *Cache) leased(ctx context.Context, k Key, gen string, refresh bool, fill func(context.Context, string) (served, error)) (served, error) {
	if c.opts.LeaseTTL <= 0 {
		return fill(ctx, gen)
	}
	for follows := 0; ; follows++ {
		lk, token := c.leaseKey(k, gen), leaseToken(ctx)
		held, err := c.takeLease(ctx, lk, token)
		switch {
		case err != nil:
			c.noteLease(ctx, k, leaseNone, "redis")
			return fill(ctx, gen)
		case held:
			c.noteLease(ctx, k, leaseAcquired, "")
			return c.holding(ctx, lk, token, gen, fill)
		case refresh:
			c.noteLease(ctx, k, leaseLeft, "")
			return served{}, errRefreshLeft
		}
		s, outcome, reason, next := c.waitLease(ctx, k, gen, lk, token)
		c.noteLease(ctx, k, outcome, reason)
		switch {
		case outcome == leaseWaited:
			s.Served.Shared = true // a load another request started, in another process
			return s, nil
		case outcome == leaseTakenOver:
			return c.holding(ctx, lk, token, gen, fill)
		case reason == "retired" && next != "" && follows < maxFollows:
			gen = next
			continue
		}
		return fill(ctx, gen)
	}
}

// maxFollows bounds how many retirements one load follows (see leased).
const maxFollows = 3

// holding runs fill as the lease's holder, then releases the lease: fill has stored the value,
// or failed, and either way the lease has nothing left to protect.
func (c *Cache) holding(ctx context.Context, lk, token, gen string, fill func(context.Context, string) (served, error)) (served, error) {
	s, err := fill(ctx, gen)
	rerr := c.call(ctx, func(ctx context.Context) error {
		return releaseLease.Run(ctx, c.rdb, []string{lk}, token).Err()
	})
	if rerr != nil { // it expires on its own
		c.opts.Logger.DebugContext(ctx, "cache lease release failed", "err", rerr)
	}
	return s, err
}

// takeLease tries to take the lease lk; false means another process holds it.
func (c *Cache) takeLease(ctx context.Context, lk, token string) (bool, error) {
	var held bool
	err := c.call(ctx, func(ctx context.Context) error {
		var err error
		held, err = c.rdb.SetNX(ctx, lk, token, c.opts.LeaseTTL).Result()
		return err
	})
	return held, err
}

// waitLease waits for the holder of lease lk to store generation gen of k. It returns the value
// and leaseWaited, or leaseTakenOver once this process holds the lease, or leaseNone with the
// reason it stopped waiting (and, when a write retired gen, the generation now current).
func (c *Cache) waitLease(ctx context.Context, k Key, gen, lk, token string) (s served, outcome, reason, next string) {
	ctx, span := c.tracer.Start(ctx, "cache.lease.wait "+k.Space)
	space := metric.WithAttributes(attribute.String("cache.keyspace", k.Space))
	c.leaseWaiting.Add(ctx, 1, space)
	c.waitsOnLeases.Add(1)
	polls := 0
	defer func() {
		c.leaseWaiting.Add(ctx, -1, space)
		span.SetAttributes(attribute.String("cache.lease", outcome), attribute.Int("cache.lease.polls", polls))
		if reason != "" {
			span.SetAttributes(attribute.String("cache.lease.reason", reason))
		}
		span.End()
	}()

	deadline := time.Now().Add(c.opts.LeaseTTL + c.opts.LoadTimeout)
	linked := ""
	for wait := leaseFirstPoll; ; wait = min(2*wait, leaseMaxPoll) {
		left := time.Until(deadline)
		if left <= 0 {
			return s, leaseNone, "wait_timeout", ""
		}
		select {
		case <-ctx.Done(): // flights are detached from their readers, whose own contexts bound them
			return s, leaseNone, "cancelled", ""
		case <-time.After(min(wait, left)):
		}
		polls++
		c.leasePolls.Add(1)
		var vals []any
		err := c.call(ctx, func(ctx context.Context) error {
			var err error
			vals, err = c.rdb.MGet(ctx, c.genKey(k), c.valKey(k), lk).Result()
			return err
		})
		if err != nil {
			return s, leaseNone, "redis", ""
		}
		cur, _ := vals[0].(string)
		stored, _ := vals[1].(string)
		holder, _ := vals[2].(string)
		if holder != "" && holder != linked { // point the trace at the holder's, once per holder
			linked = holder
			if sc := holderSpan(holder); sc.IsValid() {
				s.loadSpan = sc
				span.AddLink(trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{attribute.String("cache.link", "lease holder")}})
			}
		}
		// Whatever is stored under the current generation and within its TTL is as fresh as the
		// reads waiting here need: they all began before this poll. (If a write retired gen
		// meanwhile, that value was loaded after the write.) A value past its TTL is kept only as
		// a fallback for an outage (CACHE_STALE_GRACE): it is what these reads missed on, not
		// the holder's value, so the wait goes on.
		if v, ok := unpack(stored, cur); ok && time.Now().Before(v.Expires) {
			s.View = v
			return s, leaseWaited, "", ""
		}
		if cur != gen {
			return s, leaseNone, "retired", cur
		}
		if holder != "" {
			continue
		}
		held, err := c.takeLease(ctx, lk, token)
		switch {
		case err != nil:
			return s, leaseNone, "redis", ""
		case held:
			s.loadSpan = trace.SpanContext{}
			return s, leaseTakenOver, "", ""
		}
		wait = leaseFirstPoll / 2 // a new holder has just begun: look again soon
	}
}

func (c *Cache) noteLease(ctx context.Context, k Key, outcome, reason string) {
	attrs := []attribute.KeyValue{attribute.String("cache.keyspace", k.Space), attribute.String("cache.lease", outcome)}
	if reason != "" {
		attrs = append(attrs, attribute.String("cache.lease.reason", reason))
	}
	c.leases.Add(ctx, 1, metric.WithAttributes(attrs...))
	// On the span of the read that started the flight (cache.get), next to its outcome.
	trace.SpanFromContext(ctx).SetAttributes(attrs[1:]...)
}

// leaseToken is a lease's value: random, so a holder releases only its own lease, followed by
// the span of the read that took it, so waiters in other processes can link to its trace.
func leaseToken(ctx context.Context) string {
	t := newToken()
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		t += "/" + sc.TraceID().String() + "-" + sc.SpanID().String()
	}
	return t
}

// holderSpan reads the span a lease's holder noted in its token, if any.
func holderSpan(token string) trace.SpanContext {
	_, ids, ok := strings.Cut(token, "/")
	if !ok {
		return trace.SpanContext{}
	}
	tid, sid, _ := strings.Cut(ids, "-")
	traceID, err1 := trace.TraceIDFromHex(tid)
	spanID, err2 := trace.SpanIDFromHex(sid)
	if err1 != nil || err2 != nil {
		return trace.SpanContext{}
	}
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID, SpanID: spanID, Remote: true})
}

// newLeaseMetrics registers the lease instruments and the gauge of reads waiting on loads.
func (c *Cache) newLeaseMetrics(meter metric.Meter) {
	c.leases, _ = meter.Int64Counter("cacheside.cache.leases",
		metric.WithDescription("Shared loads by how they came by their value across processes: acquired (took the lease, loaded), waited (served what the lease holder stored), taken_over (the holder's lease ended without a value; took it and loaded), unleased (loaded without a lease; reason: redis, retired, wait_timeout), left (an early refresh found the lease held and left the load to its holder)."))
	c.leaseWaiting, _ = meter.Int64UpDownCounter("cacheside.cache.lease.waiting",
		metric.WithDescription("Shared loads now waiting for another process's lease; stuck high, a holder is slow or dead."))
	_, _ = meter.Int64ObservableGauge("cacheside.cache.loads.waiting",
		metric.WithDescription("Reads now waiting on a shared load (this process's or, through a lease, another's)."),
		metric.WithInt64Callback(func(_ context.Context, obs metric.Int64Observer) error {
			obs.Observe(int64(c.loads.waiters("")))
			return nil
		}))
}
