package cache

import (
	"context"
	"errors"
)

// Guarded runs op, a Redis operation of another part of the service (the rate limiter), under
// the same guards as the cache's own: a connection slot (so it never makes a cache operation
// wait for a pooled connection inside its budget), the circuit breaker, and OpTimeout
// (REDIS_TIMEOUT). Its failures count against the breaker, and while the breaker is open it
// fails at once without sending anything: the service has one opinion of whether Redis is
// usable, not one per user of it. A nil error means op ran and succeeded.
func (c *Cache) Guarded(ctx context.Context, op func(context.Context) error) error {
	return c.call(ctx, op)
}

// Saturated reports whether err from Guarded means only that this process had no Redis
// connection free in time: its own load, not Redis failing.
func Saturated(err error) bool { return errors.Is(err, errSaturated) }
