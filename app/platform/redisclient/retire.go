package redisclient

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// A run of connection faults retires every pooled connection.
//
// When a Redis server goes away without closing its connections (the node under a Redis pod
// lost, a failover to another address, a network partition), nothing tells the client: no FIN,
// no RST. go-redis checks an idle connection before handing it out, but only for a peer that
// closed it, so each connection to the vanished server is handed out once more and costs the
// operation that takes it a whole timeout (REDIS_TIMEOUT) before go-redis drops it, and the
// circuit breaker's probe, when it lands on one, fails and keeps the breaker open although a
// server is back at the address.
//
// So faultsToRetire connection faults in a row (timeouts, connections broken or refused; not
// error replies from Redis, not callers giving up), with no operation succeeding between them,
// retire every connection dialled so far: the pool's check before handing one out then fails
// for it, the pool closes it unused and takes or dials another. Faults count in series, as the
// cache's circuit breaker counts them (with the same default of three): operations in flight
// together that fail together are one fault, so a single stall is not a run. Not at the first
// fault: a machine too busy to read one reply in time would then re-dial the whole pool at once,
// inside the budgets of the operations that follow, and a storm of reads on a loaded machine
// turned one timeout into a run of them that opened the breaker (seen in
// TestAStormAcrossKeysNeverWaitsForAConnection). Three in a row is what the breaker opens on:
// Redis is then skipped for its cooldown, and the probe that ends it runs on a fresh connection
// instead of one to the vanished server, which would fail it and keep the breaker open.
type retirer struct {
	epoch     atomic.Uint64 // bumped by each retirement
	lastFault atomic.Int64  // UnixNano when the last counted fault was seen
	inARow    atomic.Int32  // faults counted since the last success or retirement
}

// faultsToRetire is how many connection faults in a row retire the pool's connections.
const faultsToRetire = 3

// dialer wraps dial so that every connection knows the epoch it was dialled in.
func (r *retirer) dialer(dial func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &epochConn{Conn: c, born: r.epoch.Load(), epoch: &r.epoch}, nil
	}
}

// done counts the outcome err of an operation that began at began: a success ends a run of
// faults; a connection fault of an operation that began after the last counted one extends it,
// and retires the connections when it reaches faultsToRetire.
func (r *retirer) done(began int64, err error) {
	if err == nil || !connectionFault(err) {
		if err == nil && r.inARow.Load() != 0 {
			r.inARow.Store(0)
		}
		return
	}
	for {
		last := r.lastFault.Load()
		if began <= last {
			return // in flight when the last counted fault was seen: the same fault
		}
		if r.lastFault.CompareAndSwap(last, time.Now().UnixNano()) {
			break
		}
	}
	if r.inARow.Add(1) >= faultsToRetire {
		r.inARow.Store(0)
		r.epoch.Add(1)
	}
}

// connectionFault reports whether err says the connection, or the server behind it, failed.
func connectionFault(err error) bool {
	var reply goredis.Error
	switch {
	case err == nil, errors.Is(err, goredis.Nil), errors.Is(err, context.Canceled),
		errors.Is(err, goredis.ErrClosed), errors.Is(err, goredis.ErrPoolTimeout), errors.Is(err, goredis.ErrPoolExhausted):
		return false
	case errors.As(err, &reply):
		return false // Redis answered
	}
	return true
}

// The hooks report each command's and pipeline's outcome to the retirer.
func (r *retirer) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (r *retirer) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		began := time.Now().UnixNano()
		err := next(ctx, cmd)
		r.done(began, err)
		return err
	}
}

func (r *retirer) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		began := time.Now().UnixNano()
		err := next(ctx, cmds)
		r.done(began, err)
		return err
	}
}

// epochConn is a pooled connection that knows the epoch it was dialled in. go-redis's pool asks
// an idle connection for its SyscallConn to check it before handing it out; a retired one
// answers with an error, which the pool takes for a dead connection and closes.
type epochConn struct {
	net.Conn
	born  uint64
	epoch *atomic.Uint64
}

var errRetired = errors.New("redis connection retired after a connection fault")

func (c *epochConn) SyscallConn() (syscall.RawConn, error) {
	if c.epoch.Load() != c.born {
		return nil, errRetired
	}
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	// TLS: go-redis checks nothing on such a connection (peeking under TLS is unsafe), and
	// neither does this.
	return uncheckable{}, nil
}

// uncheckable is the raw connection of a connection go-redis cannot check: it runs nothing.
type uncheckable struct{}

func (uncheckable) Control(func(uintptr)) error    { return nil }
func (uncheckable) Read(func(uintptr) bool) error  { return nil }
func (uncheckable) Write(func(uintptr) bool) error { return nil }
