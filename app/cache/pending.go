package cache

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// pending tracks invalidations Redis has not confirmed: those being sent right now and those
// that failed and wait for redelivery. A key in either state is never answered from the cache
// in this process (reads of it bypass to the source), because a value cached for it may be
// older than a write that has committed, and in the failed case has already returned.
//
// Keys are registered before Redis is asked and released only after Redis has confirmed and the
// near-cache has dropped them, so no read slips in between and keeps an old value locally.
type pending struct {
	mu          sync.Mutex
	inflight    map[Key]int       // invalidations being sent, per key
	undelivered map[Key]uint64    // failed, by the sequence number of the latest failure
	spaces      map[string]int    // whole-space invalidations being sent
	lostSpaces  map[string]uint64 // whole-space invalidations that failed
	seq         uint64
	n           atomic.Int64 // len of all four maps: lets reads skip the lock when nothing is pending
	wake        chan struct{}
}

func newPending() *pending {
	return &pending{
		inflight:    make(map[Key]int),
		undelivered: make(map[Key]uint64),
		spaces:      make(map[string]int),
		lostSpaces:  make(map[string]uint64),
		wake:        make(chan struct{}, 1),
	}
}

func (p *pending) count() {
	p.n.Store(int64(len(p.inflight) + len(p.undelivered) + len(p.spaces) + len(p.lostSpaces)))
}

// has reports whether reads of k must bypass the cache.
func (p *pending) has(k Key) bool {
	if p.n.Load() == 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, lost := p.undelivered[k]
	_, lostSpace := p.lostSpaces[k.Space]
	return p.inflight[k] > 0 || lost || p.spaces[k.Space] > 0 || lostSpace
}

// begin registers invalidations about to be sent.
func (p *pending) begin(keys []Key, space string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, k := range keys {
		p.inflight[k]++
	}
	if space != "" {
		p.spaces[space]++
	}
	p.count()
}

// end releases what begin registered. If Redis did not confirm, the keys stay pending until
// redelivered, and the redelivery loop is woken.
func (p *pending) end(keys []Key, space string, delivered bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq++
	for _, k := range keys {
		if p.inflight[k]--; p.inflight[k] <= 0 {
			delete(p.inflight, k)
		}
		if !delivered {
			p.undelivered[k] = p.seq
		}
	}
	if space != "" {
		if p.spaces[space]--; p.spaces[space] <= 0 {
			delete(p.spaces, space)
		}
		if !delivered {
			p.lostSpaces[space] = p.seq
		}
	}
	p.count()
	if !delivered {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// failed is a snapshot of what awaits redelivery, with the sequence it was taken at.
type failed struct {
	keys   []Key
	spaces []string
	seq    uint64
}

func (p *pending) failed() failed {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := failed{seq: p.seq}
	for k := range p.undelivered {
		f.keys = append(f.keys, k)
	}
	for s := range p.lostSpaces {
		f.spaces = append(f.spaces, s)
	}
	sort.Slice(f.keys, func(i, j int) bool {
		return f.keys[i].Space+":"+f.keys[i].ID < f.keys[j].Space+":"+f.keys[j].ID
	})
	sort.Strings(f.spaces)
	return f
}

// delivered clears what a redelivery of f covered. A key that failed again after f was taken
// (a later write whose invalidation may postdate the redelivery) stays.
func (p *pending) delivered(f failed) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, k := range f.keys {
		if p.undelivered[k] <= f.seq {
			delete(p.undelivered, k)
		}
	}
	for _, s := range f.spaces {
		if p.lostSpaces[s] <= f.seq {
			delete(p.lostSpaces, s)
		}
	}
	p.count()
}

func (f failed) empty() bool { return len(f.keys) == 0 && len(f.spaces) == 0 }

// undeliveredCount is what /readyz and the metric report.
func (p *pending) undeliveredCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.undelivered) + len(p.lostSpaces)
}

// deliver retires what f holds and, once Redis has taken it, clears it from pending.
func (c *Cache) deliver(ctx context.Context, f failed) error {
	if len(f.keys) > 0 {
		if err := c.retire(ctx, f.keys); err != nil {
			return err
		}
	}
	for _, s := range f.spaces {
		if err := c.retireSpace(ctx, s); err != nil {
			return err
		}
	}
	c.dropNear(f.keys)
	if len(f.spaces) > 0 && c.near != nil {
		c.near.dropAll()
	}
	c.pending.delivered(f)
	c.opts.Logger.Info("deferred cache invalidations delivered", "keys", sampleKeys(f.keys, 10), "spaces", f.spaces)
	return nil
}

// redeliver runs for the life of the Cache, delivering failed invalidations with backoff.
func (c *Cache) redeliver(ctx context.Context) {
	wait := 50 * time.Millisecond
	for {
		f := c.pending.failed()
		if f.empty() {
			wait = 50 * time.Millisecond
			select {
			case <-ctx.Done():
				return
			case <-c.pending.wake:
			}
			continue
		}
		if err := c.deliver(ctx, f); err == nil {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}
