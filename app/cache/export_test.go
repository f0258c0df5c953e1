package cache

import (
	"context"
	"time"
)

// WaitingOnLoad reports how many reads of k wait on a shared load, so a test can tell that a
// miss storm has gathered.
func (c *Cache) WaitingOnLoad(k Key) int { return c.loads.waiters(c.valKey(k) + "@") }

// WaitingOnLookup reports how many reads of k are in a round that has not finished its lookup.
func (c *Cache) WaitingOnLookup(k Key) int { return c.lookups.members(c.valKey(k)) }

// WaitingOnBypass reports how many reads of k are in a round of loads that bypass Redis.
func (c *Cache) WaitingOnBypass(k Key) int { return c.bypasses.members(c.valKey(k)) }

// NearCacheStopped reports whether the near-cache's listener has returned (true when it is off).
func (c *Cache) NearCacheStopped() bool {
	if c.nearDone == nil {
		return true
	}
	select {
	case <-c.nearDone:
		return true
	default:
		return false
	}
}

// MostRedisOperationsInFlight is the most Redis operations this cache ever had in flight at once,
// and the bound its slots put on them.
func (c *Cache) MostRedisOperationsInFlight() (most, bound int64) {
	return c.maxIn.Load(), int64(max(1, poolSize(c.rdb)-2))
}

// NearCacheMessage is the invalidation message this cache publishes to drop k from every
// near-cache, and the channel it goes to.
func (c *Cache) NearCacheMessage(k Key) (channel, payload string) {
	return c.near.channel, c.near.message(c.valKey(k))
}

// LeaseWaits is how many of this cache's loads have waited on another cache's lease.
func (c *Cache) LeaseWaits() int64 { return c.waitsOnLeases.Load() }

// LeasePolls is how many times those waits have polled Redis.
func (c *Cache) LeasePolls() int64 { return c.leasePolls.Load() }

// NearCacheHeld is the memory the near-cache's entries hold, counted from the entries themselves
// (bodies and plain copies by capacity, keys, ETags, and the same per-entry overhead the weigher
// charges), once pending evictions have run; and how many entries carry a plain copy.
func (c *Cache) NearCacheHeld() (bytes int64, plainCopies int) {
	c.near.entries.CleanUp()
	for k, v := range c.near.entries.All() {
		bytes += int64(len(k) + cap(v.Body) + cap(v.Plain) + len(v.ETag) + 64)
		if v.Plain != nil {
			plainCopies++
		}
	}
	return bytes, plainCopies
}

// RefreshesLeft is how many early refreshes found the lease held and left the load to its holder.
func (c *Cache) RefreshesLeft() int64 { return c.refreshesLeft.Load() }

// HoldLease takes the lease of k's current generation as another process would, until release.
func (c *Cache) HoldLease(ctx context.Context, k Key) (release func(), err error) {
	gen, err := c.rdb.Get(ctx, c.genKey(k)).Result()
	if err != nil {
		return nil, err
	}
	lk := c.leaseKey(k, gen)
	if err := c.rdb.Set(ctx, lk, "another process", time.Hour).Err(); err != nil {
		return nil, err
	}
	return func() { c.rdb.Del(context.Background(), lk) }, nil
}
