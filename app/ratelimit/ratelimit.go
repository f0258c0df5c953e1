// Package ratelimit decides whether a client may make one more request: a GCRA limiter in Redis
// (redis_rate), so the budget holds across every replica, with an in-process limiter per client
// as the fallback while Redis is unusable, so a Redis outage neither lets every client through
// (failing open) nor refuses them all (failing closed).
//
// Whether Redis is usable is the cache's decision, not this package's: each Redis call goes
// through the cache's guards (cache.Cache.Guarded), so it shares the cache's connection slots,
// REDIS_TIMEOUT and circuit breaker. While the breaker is open no request waits for Redis to
// time out: it is decided in process at once. Each change of source is logged once and shown
// by the cacheside.ratelimit.fallback gauge.
//
// During the fallback each replica enforces the whole budget on its own, so a client whose
// requests are spread over N replicas gets up to N times its budget until Redis is back; a
// client whose connections stay on one replica (keep-alive) gets the same budget as before. The
// in-process limiters are kept for at most LocalClients clients per class (least recently seen
// dropped first), so a flood of distinct addresses costs bounded memory; a dropped client
// starts again with a full burst.
package ratelimit

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/time/rate"

	"github.com/cacheside/cacheside/app/cache"
)

// Policy is one budget: Rate requests per second sustained, Burst at once.
type Policy struct {
	Name  string // reads or writes; names the policy in the RateLimit header fields
	Rate  int
	Burst int
}

// Window is the time, in whole seconds, in which an exhausted Burst is whole again.
func (p Policy) Window() int { return max(1, int(math.Ceil(float64(p.Burst)/float64(p.Rate)))) }

// Guard runs a Redis operation under the service's guards (cache.Cache does).
type Guard interface {
	Guarded(ctx context.Context, op func(context.Context) error) error
}

// Options configure a Limiter.
type Options struct {
	Prefix       string // of every Redis key (CACHE_KEY_PREFIX)
	Read, Write  Policy
	LocalClients int // clients per class whose in-process limiters are kept; 0: 50,000
	Logger       *slog.Logger
}

// Result is the decision on one request.
type Result struct {
	Policy     Policy
	Allowed    bool
	Remaining  int           // requests the client may still make at once
	RetryAfter time.Duration // when not allowed: until one request will be
	ResetAfter time.Duration // until the burst is whole again
	Local      bool          // decided in process (Redis unusable)
}

// Limiter is safe for concurrent use.
type Limiter struct {
	redis    *redis_rate.Limiter
	guard    Guard
	opts     Options
	local    map[string]*otter.Cache[string, *rate.Limiter] // by policy name
	fallback atomic.Bool
	decided  metric.Int64Counter
}

// New returns a Limiter over rdb, whose calls go through guard.
func New(rdb redis.UniversalClient, guard Guard, o Options) *Limiter {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.LocalClients <= 0 {
		o.LocalClients = 50_000
	}
	l := &Limiter{redis: redis_rate.NewLimiter(rdb), guard: guard, opts: o, local: map[string]*otter.Cache[string, *rate.Limiter]{}}
	for _, p := range []Policy{o.Read, o.Write} {
		// A limiter idle for its window is full: forgetting it then changes nothing.
		l.local[p.Name] = otter.Must(&otter.Options[string, *rate.Limiter]{
			MaximumSize:      o.LocalClients,
			ExpiryCalculator: otter.ExpiryAccessing[string, *rate.Limiter](time.Duration(p.Window()+1) * time.Second),
		})
	}
	meter := otel.Meter("github.com/cacheside/cacheside/app/ratelimit")
	l.decided, _ = meter.Int64Counter("cacheside.ratelimit.requests",
		metric.WithDescription("Requests the rate limiter decided on, by policy (reads, writes), result (allowed, limited) and source (redis, local: the in-process fallback)."))
	_, _ = meter.Int64ObservableGauge("cacheside.ratelimit.fallback",
		metric.WithDescription("1 while the rate limiter decides in process because Redis is unusable (each replica then enforces the whole budget on its own), else 0."),
		metric.WithInt64Callback(func(_ context.Context, obs metric.Int64Observer) error {
			v := int64(0)
			if l.fallback.Load() {
				v = 1
			}
			obs.Observe(v)
			return nil
		}))
	return l
}

// Read and Write are the limiter's two policies.
func (l *Limiter) Read() Policy  { return l.opts.Read }
func (l *Limiter) Write() Policy { return l.opts.Write }

// Fallback reports whether the last decision was made in process because Redis was unusable.
func (l *Limiter) Fallback() bool { return l.fallback.Load() }

// Allow decides on one request of client under p.
func (l *Limiter) Allow(ctx context.Context, p Policy, client string) Result {
	var res *redis_rate.Result
	err := l.guard.Guarded(ctx, func(ctx context.Context) error {
		var err error
		res, err = l.redis.Allow(ctx, l.opts.Prefix+":ratelimit:"+p.Name+":"+client, redis_rate.Limit{Rate: p.Rate, Burst: p.Burst, Period: time.Second})
		return err
	})
	var r Result
	switch {
	case err == nil:
		if l.fallback.CompareAndSwap(true, false) {
			l.opts.Logger.InfoContext(ctx, "rate limiter: Redis is usable again; the budgets hold across replicas")
		}
		r = Result{Policy: p, Allowed: res.Allowed > 0, Remaining: res.Remaining, RetryAfter: res.RetryAfter, ResetAfter: res.ResetAfter}
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		// The client is gone; whatever is decided, nobody reads it. No news about Redis.
		r = l.allowLocal(p, client)
	default:
		// This process's own saturation says nothing about Redis: decided in process this once,
		// without declaring a fallback (it is counted as local all the same).
		if !cache.Saturated(err) && l.fallback.CompareAndSwap(false, true) {
			l.opts.Logger.WarnContext(ctx, "rate limiter: Redis is unusable; each replica now enforces the whole budget in process until it is back",
				"err", err.Error())
		}
		r = l.allowLocal(p, client)
	}
	result, source := "allowed", "redis"
	if !r.Allowed {
		result = "limited"
	}
	if r.Local {
		source = "local"
	}
	l.decided.Add(ctx, 1, metric.WithAttributes(
		attribute.String("policy", p.Name), attribute.String("result", result), attribute.String("source", source)))
	return r
}

// allowLocal decides with the client's in-process limiter: the same rate and burst, per replica.
func (l *Limiter) allowLocal(p Policy, client string) Result {
	lim, ok := l.local[p.Name].GetIfPresent(client)
	if !ok {
		lim, _ = l.local[p.Name].SetIfAbsent(client, rate.NewLimiter(rate.Limit(p.Rate), p.Burst))
	}
	now := time.Now()
	allowed := lim.AllowN(now, 1)
	tokens := lim.TokensAt(now)
	r := Result{Policy: p, Allowed: allowed, Remaining: max(0, int(tokens)), Local: true,
		ResetAfter: seconds((float64(p.Burst) - tokens) / float64(p.Rate))}
	if !allowed {
		r.RetryAfter = seconds((1 - tokens) / float64(p.Rate))
	}
	return r
}

func seconds(s float64) time.Duration { return time.Duration(max(0, s) * float64(time.Second)) }
