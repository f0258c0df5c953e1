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
			Weigher:          func(k string, v view.View) uint32 { return uint32(len(k) + len(v.Body) + len(v.ETag) + 64) },
			ExpiryCalculator: otter.ExpiryWriting[string, view.View](ttl),
		}),
		seed:    maphash.MakeSeed(),
		channel: prefix + ":invalidations",
		sender:  "@" + rand.Text(),
		log:     log,
	}
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
