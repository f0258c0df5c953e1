package cache

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// The write side. A write "retires" what it changed: it replaces the generation of each key it
// affects in Redis (replaceGenerations), then tells every process to drop the keys from its
// near-cache (a PUBLISH), and drops them from its own (dropNear). What Redis does not confirm
// stays pending (pending.go).

// Invalidate retires the current generation of each key. Call it after the database write, on
// every outcome except one where the write certainly did not happen: a write that failed with a
// timeout or a lost connection may have committed, and a needless retirement costs one miss.
//
// It retries for Options.InvalidationTimeout. If Redis still has not taken the new generations,
// the keys stay pending: this process bypasses the cache for them and redelivers in the
// background; the error is returned for logging, the write itself has succeeded.
func (c *Cache) Invalidate(ctx context.Context, keys ...Key) error {
	ctx, span := c.tracer.Start(ctx, "cache.invalidate", trace.WithAttributes(attribute.Int("cache.keys", len(keys))))
	defer span.End()
	// Registered before Redis is asked: until Redis confirms, reads of these keys in this process
	// go to the source, so none can keep an old value (in Redis's answer or in the near-cache)
	// past this call, whatever happens to the pipeline.
	c.pending.begin(keys, "")
	// Invalidations run even if the breaker is open: skipping one is what would serve stale data.
	err := c.retry(ctx, func(ctx context.Context) error { return c.retire(ctx, keys) })
	// Only now, after Redis took the new generations (or gave up; then the keys stay pending and
	// bypass the cache here until redelivered), does this process drop its own entries: a round
	// that looked in Redis before that has its local store refused (the version moves) or its
	// entry dropped here.
	c.dropNear(keys)
	c.pending.end(keys, "", err == nil)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "invalidation deferred")
		c.opts.Logger.WarnContext(ctx, "cache invalidation deferred; these keys bypass the cache in this process until Redis takes it",
			"keys", sampleKeys(keys, 10), "err", err)
	}
	return err
}

// InvalidateLater retires keys again after d, for a write whose outcome is unknown and which
// may still land on the server until then. Close retires at once what is still scheduled (early,
// but better than never).
func (c *Cache) InvalidateLater(d time.Duration, keys ...Key) {
	c.laterMu.Lock()
	defer c.laterMu.Unlock()
	if c.closing {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		c.laterMu.Lock()
		if c.closing { // Close retires them
			c.laterMu.Unlock()
			return
		}
		delete(c.later, t)
		c.laterRunning.Add(1)
		c.laterMu.Unlock()
		defer c.laterRunning.Done()
		_ = c.Invalidate(context.Background(), keys...)
	})
	c.later[t] = keys
}

// retireScheduled stops the scheduled retirements and runs them now.
func (c *Cache) retireScheduled(ctx context.Context) {
	c.laterMu.Lock()
	c.closing = true
	scheduled := c.later
	c.later = nil
	c.laterMu.Unlock()
	c.laterRunning.Wait()
	for t, keys := range scheduled {
		t.Stop()
		_ = c.Invalidate(ctx, keys...)
	}
}

// InvalidateSpace retires every key of a space, for bulk changes such as seeding. It scans the
// generation keys (on every master in Cluster mode), so it is for rare administrative use.
func (c *Cache) InvalidateSpace(ctx context.Context, space string) error {
	ctx, span := c.tracer.Start(ctx, "cache.invalidate", trace.WithAttributes(attribute.String("cache.keyspace", space)))
	defer span.End()
	c.pending.begin(nil, space)
	err := c.retry(ctx, func(ctx context.Context) error { return c.retireSpace(ctx, space) })
	if c.near != nil {
		c.near.dropAll()
	}
	c.pending.end(nil, space, err == nil)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "invalidation deferred")
		c.opts.Logger.WarnContext(ctx, "cache invalidation of a whole space deferred", "space", space, "err", err)
	}
	return err
}

// retry runs a retirement until it succeeds or InvalidationTimeout has passed. It ignores the
// caller's cancellation: the write it follows may have committed.
func (c *Cache) retry(ctx context.Context, retire func(context.Context) error) error {
	ctx = context.WithoutCancel(ctx)
	deadline := time.Now().Add(c.opts.InvalidationTimeout)
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 250*time.Millisecond) {
		err := retire(ctx)
		if err == nil || time.Now().Add(wait).After(deadline) {
			return err
		}
		time.Sleep(wait)
	}
}

// retire replaces the generations of keys and then, with the near-cache on, tells the other
// processes to drop them. The message goes out only once Redis has acknowledged the new
// generations: in a Cluster the keyless PUBLISH may go to another node than the generations,
// and if it overtook them a replica would re-read the old generation and keep its value.
func (c *Cache) retire(ctx context.Context, keys []Key) error {
	if err := c.replaceGenerations(ctx, keys); err != nil {
		return err
	}
	if c.near == nil {
		return nil
	}
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = c.valKey(k)
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.OpTimeout)
	defer cancel()
	return c.rdb.Publish(ctx, c.near.channel, c.near.message(names...)).Err()
}

func (c *Cache) replaceGenerations(ctx context.Context, keys []Key) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.OpTimeout)
	defer cancel()
	cc, cluster := c.rdb.(*redis.ClusterClient)
	if !cluster || c.opts.WaitReplicas == 0 {
		return c.setGenerations(ctx, c.rdb, keys)
	}
	// WAIT counts the writes made on its own connection, so in a Cluster each master gets its
	// keys and its WAIT in one pipeline.
	byMaster := map[*redis.Client][]Key{}
	for _, k := range keys {
		node, err := cc.MasterForKey(ctx, c.genKey(k))
		if err != nil {
			return err
		}
		byMaster[node] = append(byMaster[node], k)
	}
	for node, ks := range byMaster {
		if err := c.setGenerations(ctx, node, ks); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cache) setGenerations(ctx context.Context, rdb redis.Cmdable, keys []Key) error {
	var wait *redis.Cmd
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Set(ctx, c.genKey(k), newToken(), c.genTTL)
			p.Del(ctx, c.valKey(k), c.plainKey(k)) // not needed for correctness; frees memory at once
		}
		if c.opts.WaitReplicas > 0 {
			// WAIT is not part of go-redis's Pipeliner interface; it blocks at most half the budget.
			wait = p.Do(ctx, "wait", c.opts.WaitReplicas, max(c.opts.OpTimeout/2, time.Millisecond).Milliseconds())
		}
		return nil
	})
	if err != nil {
		return err
	}
	if wait != nil {
		if acked, err := wait.Int64(); err != nil || acked < int64(c.opts.WaitReplicas) {
			return fmt.Errorf("%d of %d Redis replicas acknowledged the invalidation (%v)", acked, c.opts.WaitReplicas, err)
		}
	}
	return nil
}

// retireSpace gives every existing key of space a new generation and empties the near-caches.
func (c *Cache) retireSpace(ctx context.Context, space string) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.LoadTimeout) // a scan, not one round trip
	defer cancel()
	pattern := c.opts.Prefix + ":{" + space + ":*}:g"
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
	if err != nil || c.near == nil {
		return err
	}
	return c.rdb.Publish(ctx, c.near.channel, c.near.message(dropEverything)).Err()
}

// dropNear drops keys from this process's near-cache.
func (c *Cache) dropNear(keys []Key) {
	if c.near == nil {
		return
	}
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = c.valKey(k)
	}
	c.near.drop(names...)
}
