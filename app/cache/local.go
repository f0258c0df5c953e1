package cache

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"
)

// local is the in-process near-cache in front of Redis.
//
// Within a process it keeps the same promise as Redis: a value loaded before a write can never be
// stored after it. Invalidations bump a version on the key's stripe; a lookup notes the version
// before asking Redis and stores its answer locally only if no invalidation touched the stripe
// meanwhile (a false conflict only skips one local store).
//
// Across processes, writers publish the keys they retire on a Redis pub/sub channel and every
// process drops them. Pub/sub is fire-and-forget, so: each (re)subscription flushes the tier, the
// tier is not used while the subscription is down, and entries live at most TTL. A write on one
// replica is thus invisible on another for the message's delivery time, and never for longer
// than TTL.
type local struct {
	entries *otter.Cache[string, entry]
	seed    maphash.Seed
	stripes [256]stripe
	live    atomic.Bool // subscribed: invalidations from other processes are arriving
	channel string
	log     *slog.Logger
}

type stripe struct {
	mu      sync.Mutex
	version uint64
}

// entry is a decoded stored value.
type entry struct {
	found    bool
	encoding string
	etag     string
	body     []byte
}

// flushAll is published to retire every key (bulk changes such as seeding).
const flushAll = "*"

func newLocal(prefix string, ttl time.Duration, maxBytes int64, log *slog.Logger) *local {
	return &local{
		entries: otter.Must(&otter.Options[string, entry]{
			MaximumWeight:    uint64(maxBytes),
			Weigher:          func(k string, e entry) uint32 { return uint32(len(k) + len(e.body) + len(e.etag) + 64) },
			ExpiryCalculator: otter.ExpiryWriting[string, entry](ttl),
		}),
		seed:    maphash.MakeSeed(),
		channel: prefix + ":invalidations",
		log:     log,
	}
}

func (l *local) stripe(key string) *stripe {
	return &l.stripes[maphash.String(l.seed, key)%uint64(len(l.stripes))]
}

// version is noted before a lookup; pass it to store.
func (l *local) version(key string) uint64 {
	s := l.stripe(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

func (l *local) get(key string) (entry, bool) {
	if !l.live.Load() {
		return entry{}, false
	}
	return l.entries.GetIfPresent(key)
}

// store keeps e unless key was invalidated since version was noted.
func (l *local) store(key string, version uint64, e entry) {
	if !l.live.Load() {
		return
	}
	s := l.stripe(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.version == version {
		l.entries.Set(key, e)
	}
}

func (l *local) invalidate(keys ...string) {
	for _, k := range keys {
		if k == flushAll {
			l.flush()
			continue
		}
		s := l.stripe(k)
		s.mu.Lock()
		s.version++
		l.entries.Invalidate(k)
		s.mu.Unlock()
	}
}

// flush drops everything and fails every store begun before it.
func (l *local) flush() {
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
func (l *local) listen(ctx context.Context, ps *redis.PubSub) {
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
			l.flush()
			if !l.live.Swap(true) {
				l.log.Info("near-cache: invalidation channel subscribed")
			}
		case *redis.Message:
			l.invalidate(strings.Fields(m.Payload)...)
		}
	}
}
