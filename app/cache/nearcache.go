package cache

import (
	"context"
	"crypto/rand"
	"errors"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"

	"github.com/cacheside/cacheside/app/view"
)

// nearCache is the optional in-process tier in front of Redis.
//
// Within a process it keeps the same promise as Redis: a value loaded before a write can never be
// stored after it. Invalidations bump a version on the key's stripe; a lookup notes the version
// before asking Redis and keeps its answer locally only if no drop touched the stripe meanwhile
// (a false conflict only skips one local store).
//
// Across processes, writers publish the keys they retire on a Redis pub/sub channel and every
// process drops them. Pub/sub is fire-and-forget, so: each (re)subscription flushes the tier, the
// tier is not used while the subscription is down, and entries live at most TTL. A write on one
// replica is thus invisible on another for the message's delivery time, and never for longer
// than TTL.
type nearCache struct {
	entries *otter.Cache[string, view.View]
	seed    maphash.Seed
	stripes [256]stripe
	live    atomic.Bool // subscribed: invalidations from other processes are arriving
	channel string
	// sender marks this process's own messages, which it skips: it dropped those keys itself
	// once Redis had taken them, and dropping again when its message comes back would only
	// throw away what a read stored since (one more Redis round trip for nothing).
	sender string
	log    *slog.Logger
}

type stripe struct {
	mu      sync.Mutex
	version uint64
}

// dropEverything is published to drop every key (bulk changes such as seeding).
const dropEverything = "*"

func newNearCache(prefix string, ttl time.Duration, maxBytes int64, log *slog.Logger) *nearCache {
	return &nearCache{
		entries: otter.Must(&otter.Options[string, view.View]{
			MaximumWeight:    uint64(maxBytes),
			Weigher:          weigh,
			ExpiryCalculator: nearExpiry{ttl},
		}),
		seed:    maphash.MakeSeed(),
		channel: prefix + ":invalidations",
		sender:  "@" + rand.Text(),
		log:     log,
	}
}

// weigh is the memory an entry holds, its plain copy included: the bound is of all of it.
// Capacities, not lengths, because that is what stays allocated.
func weigh(k string, v view.View) uint32 {
	return uint32(len(k) + cap(v.Body) + cap(v.Plain) + len(v.ETag) + 64)
}

// nearExpiry lets an entry live TTL from when its value was stored. Adding a plain copy to an
// entry (withPlain) keeps the value, so it does not extend its life: a value missed by an
// invalidation message still lives at most TTL.
type nearExpiry struct{ ttl time.Duration }

func (e nearExpiry) ExpireAfterCreate(otter.Entry[string, view.View]) time.Duration { return e.ttl }

func (e nearExpiry) ExpireAfterUpdate(en otter.Entry[string, view.View], old view.View) time.Duration {
	if sameValue(en.Value, old) {
		return en.ExpiresAfter()
	}
	return e.ttl
}

func (e nearExpiry) ExpireAfterRead(en otter.Entry[string, view.View]) time.Duration {
	return en.ExpiresAfter()
}

// sameValue reports whether a and b hold the same stored body (the same bytes in memory, not
// only equal ones).
func sameValue(a, b view.View) bool {
	return a.ETag == b.ETag && a.Encoding == b.Encoding && len(a.Body) == len(b.Body) &&
		(len(a.Body) == 0 || &a.Body[0] == &b.Body[0])
}

// message is what is published to drop keys: the sender, then the keys. A process of an earlier
// release reads the sender as one more key to drop, which it does not hold.
func (l *nearCache) message(keys ...string) string {
	return l.sender + " " + strings.Join(keys, " ")
}

func (l *nearCache) stripe(key string) *stripe {
	return &l.stripes[maphash.String(l.seed, key)%uint64(len(l.stripes))]
}

// version is noted before a lookup; pass it to keep.
func (l *nearCache) version(key string) uint64 {
	s := l.stripe(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

func (l *nearCache) get(key string) (view.View, bool) {
	if !l.live.Load() {
		return view.View{}, false
	}
	return l.entries.GetIfPresent(key)
}

// withPlain returns v, which get returned for key, with its plain copy. When the entry has none,
// it decompresses the body and adds the copy to the entry, if the entry still holds v: the
// entry is then hot for clients that do not take gzip, and its weight (the bound) counts the
// copy. A drop meanwhile removes the entry, so the copy never brings a dropped value back.
func (l *nearCache) withPlain(key string, v view.View) view.View {
	if v.Plain != nil || v.Encoding != "gzip" || !v.Found {
		return v
	}
	p, err := v.JSON()
	if err != nil {
		return v // the handler decompresses it again and reports the error
	}
	v.Plain = p
	l.entries.ComputeIfPresent(key, func(old view.View) (view.View, otter.ComputeOp) {
		if !sameValue(old, v) || old.Plain != nil {
			return old, otter.CancelOp
		}
		old.Plain = p
		return old, otter.WriteOp
	})
	return v
}

// keep stores v unless key was dropped since version was noted.
func (l *nearCache) keep(key string, version uint64, v view.View) {
	if !l.live.Load() {
		return
	}
	s := l.stripe(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.version == version {
		v.Served = view.Served{}
		l.entries.Set(key, v)
	}
}

// drop removes keys and fails every keep begun before it.
func (l *nearCache) drop(keys ...string) {
	for _, k := range keys {
		if k == dropEverything {
			l.dropAll()
			continue
		}
		s := l.stripe(k)
		s.mu.Lock()
		s.version++
		l.entries.Invalidate(k)
		s.mu.Unlock()
	}
}

// dropAll empties the tier and fails every keep begun before it.
func (l *nearCache) dropAll() {
	for i := range l.stripes {
		l.stripes[i].mu.Lock()
		l.stripes[i].version++
	}
	l.entries.InvalidateAll()
	for i := range l.stripes {
		l.stripes[i].mu.Unlock()
	}
}

// listen applies other processes' invalidations from ps until ctx ends and ps is closed. It
// runs in the background for the life of the Cache.
func (l *nearCache) listen(ctx context.Context, ps *redis.PubSub) {
	for {
		// A timeout makes a silently dead connection show: go-redis pings on it and reconnects.
		msg, err := ps.ReceiveTimeout(ctx, 5*time.Second)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			var netErr interface{ Timeout() bool }
			if errors.As(err, &netErr) && netErr.Timeout() {
				if perr := ps.Ping(ctx); perr == nil {
					continue
				}
			}
			if l.live.Swap(false) {
				l.log.Warn("near-cache: invalidation channel lost; serving from Redis until it is back", "err", err)
			}
			select { // go-redis reconnects on the next receive; don't spin meanwhile
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			// (Re)subscribed: whatever was published while we were away is lost, so start empty.
			l.dropAll()
			if !l.live.Swap(true) {
				l.log.Info("near-cache: invalidation channel subscribed")
			}
		case *redis.Message:
			keys := strings.Fields(m.Payload)
			if len(keys) > 0 && strings.HasPrefix(keys[0], "@") {
				if keys[0] == l.sender {
					continue
				}
				keys = keys[1:]
			}
			l.drop(keys...)
		}
	}
}
