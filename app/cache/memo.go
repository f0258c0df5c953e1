package cache

import (
	"sync"
	"sync/atomic"
)

// memo keeps values made from a few keys that are always the same few (a key space, an
// outcome, a tier), so a hot path that needs one pays a map read instead of making it again:
// the telemetry of every read (a span name, its start options, a metric's attribute set) was a
// fifth of a Redis hit's allocations and sorted and hashed its attributes each time. Reads take
// no lock; the map is copied on the rare first use of a key. Never for keys without a small bound.
type memo[K comparable, V any] struct {
	mu sync.Mutex
	m  atomic.Pointer[map[K]V]
}

func (m *memo[K, V]) get(k K, make func() V) V {
	if p := m.m.Load(); p != nil {
		if v, ok := (*p)[k]; ok {
			return v
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	next := map[K]V{}
	if p := m.m.Load(); p != nil {
		if v, ok := (*p)[k]; ok {
			return v
		}
		for k, v := range *p {
			next[k] = v
		}
	}
	v := make()
	next[k] = v
	m.m.Store(&next)
	return v
}
