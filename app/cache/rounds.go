package cache

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cacheside/cacheside/app/view"
)

// Concurrent reads of a key share their work.
//
// Lookups are shared in rounds. A read joins only a round that has not started yet; per key at
// most one round runs and one waits, and the waiting one starts when the running one ends. So a
// read is never answered by a lookup that began before it did (singleflight would hand a
// newcomer the answer of a call in flight, which may have read Redis before a write that
// returned before the newcomer started), and a storm of any size costs a couple of lookups
// instead of one per read queueing for pooled connections.
//
// Loads are shared in flights, one per key and generation. A round that misses attaches its
// members to the flight of the generation it saw, starting it if there is none. Sharing a load
// that began earlier is safe here: a write retires the generation, so a read that starts after
// a write returned sees a new generation and never joins a flight of the old one. A flight runs
// outside the rounds, so a slow load never holds up the lookups behind it.
//
// Loads that bypass Redis (it is unusable, or an invalidation of the key is unconfirmed) have no
// generation to key a flight by, so they are shared in rounds of their own: a read joins only a
// bypass load that has not started yet, and a storm costs two loads even while the breaker is
// open and lookups fail at once.
//
// A round that opens while none of its key runs, the case of every read when reads are few,
// runs on the goroutine of the read that opened it when the rounds are inline (lookups: their
// work is bounded by REDIS_TIMEOUT), and on a goroutine of its own otherwise (bypass loads, as
// long as a Postgres query). Measured on a Redis hit at one connection, a goroutine per round
// cost a quarter of the hit's CPU: starting it and waking its reader each woke an idle thread
// (futex), and its stack grew anew each time. The rounds queued behind a running one always get
// a goroutine, so a read's latency is its own round's and never a later one's.
type rounds[T any] struct {
	mu     sync.Mutex
	keys   map[string]*keyRounds[T]
	inline bool // the opener of a round with none running runs it itself
}

type keyRounds[T any] struct {
	running, next *round[T]
}

// A round is one piece of shared work. It runs with the context of the read that opened it,
// detached from that read's cancellation: the others waiting on it must still get their answer
// (so an inline round's opener, cancelled, returns only when its round is done).
type round[T any] struct {
	ctx     context.Context
	work    func(context.Context) T
	done    chan struct{}
	res     T
	members int // reads that joined, the opener included
}

// looked is a lookup round's answer: a hit, the flight that serves a miss (and whether this
// round started it, and the value past its TTL the lookup found under the current generation,
// which may answer if the load fails), or why Redis cannot be used.
type looked struct {
	hit     *view.View
	flight  *flight
	started bool
	stale   *view.View
	bypass  error
}

// loaded is a bypass round's answer.
type loaded struct {
	s   served
	err error
}

// join returns the round the read takes part in and whether another read opened it. With
// inline rounds, a read that opens a round while none of its key runs has run it when join
// returns.
func (g *rounds[T]) join(ctx context.Context, key string, work func(context.Context) T) (r *round[T], joined bool) {
	g.mu.Lock()
	if g.keys == nil {
		g.keys = make(map[string]*keyRounds[T])
	}
	kr := g.keys[key]
	if kr == nil {
		kr = &keyRounds[T]{}
		g.keys[key] = kr
	}
	switch {
	case kr.running == nil:
		r = newRound(ctx, work)
		r.members++
		kr.running = r
		g.mu.Unlock()
		if g.inline {
			g.run(key, kr, r)
		} else {
			go g.run(key, kr, r)
		}
		return r, false
	case kr.next == nil:
		r = newRound(ctx, work)
		kr.next = r
	default:
		r, joined = kr.next, true
	}
	r.members++
	g.mu.Unlock()
	return r, joined
}

func newRound[T any](ctx context.Context, work func(context.Context) T) *round[T] {
	return &round[T]{ctx: context.WithoutCancel(ctx), work: work, done: make(chan struct{})}
}

// run runs the key's running round r, then hands the round that queued behind it, if any, to
// a goroutine of its own.
func (g *rounds[T]) run(key string, kr *keyRounds[T], r *round[T]) {
	r.res = r.work(r.ctx)
	close(r.done)
	g.mu.Lock()
	kr.running, kr.next = kr.next, nil
	next := kr.running
	if next == nil {
		delete(g.keys, key)
	}
	g.mu.Unlock()
	if next != nil {
		go g.run(key, kr, next)
	}
}

// members is how many reads of key are in a round.
func (g *rounds[T]) members(key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	if kr := g.keys[key]; kr != nil {
		for _, r := range []*round[T]{kr.running, kr.next} {
			if r != nil {
				n += r.members
			}
		}
	}
	return n
}

// A flight is one load, shared by every read that waits on it. It runs on its own goroutine,
// detached from the requests waiting on it.
type flight struct {
	done    chan struct{}
	res     served
	err     error
	waiters atomic.Int32
}

type flights struct {
	mu sync.Mutex
	m  map[string]*flight
}

// attach returns the flight named name, starting it with load if none is running, and whether
// it started it.
func (f *flights) attach(ctx context.Context, name string, load func(context.Context) (served, error)) (*flight, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl := f.m[name]; fl != nil {
		return fl, false
	}
	fl := &flight{done: make(chan struct{})}
	if f.m == nil {
		f.m = make(map[string]*flight)
	}
	f.m[name] = fl
	ctx = context.WithoutCancel(ctx)
	go func() {
		fl.res, fl.err = load(ctx)
		f.mu.Lock()
		delete(f.m, name)
		f.mu.Unlock()
		close(fl.done)
	}()
	return fl, true
}

// waiters is how many reads wait on flights whose name starts with prefix.
func (f *flights) waiters(prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for name, fl := range f.m {
		if strings.HasPrefix(name, prefix) {
			n += int(fl.waiters.Load())
		}
	}
	return n
}
