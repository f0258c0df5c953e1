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

// A connection fault retires every pooled connection.
//
// When a Redis server goes away without closing its connections (the node under a Redis pod
// lost, a failover to another address, a network partition), nothing tells the client: no FIN,
// no RST. go-redis checks an idle connection before handing it out, but only for a peer that
// closed it, so each connection to the vanished server is handed out once more and costs the
// operation that takes it a whole timeout (REDIS_TIMEOUT) before go-redis drops it; in series,
// those timeouts also open the circuit breaker after the server is back.
//
// So the first operation that fails with a connection fault (a timeout, or a connection broken
// or refused; not an error reply from Redis, not the caller giving up) retires every connection
// dialled so far: the pool's check before handing one out then fails for it, the pool closes it
// unused and takes or dials another. Connections are replaced once per fault: an operation that
// began before the last retirement and fails with it is the same fault, seen again. A fault
// with Redis alive (one slow command, a machine too busy to read a reply in time) costs a pool's
// worth of dials, and retirements are at least retireEvery apart, so a run of such faults cannot
// keep the pool re-dialling. With Redis gone, the dials fail fast and the breaker above decides
// what reads do.
type retirer struct {
	epoch     atomic.Uint64 // bumped by each retirement
	retiredAt atomic.Int64  // UnixNano of the last retirement
}

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

// retireEvery is the least time between two retirements.
const retireEvery = time.Second

// fault retires the connections if err, from an operation that began at began, is a new
// connection fault.
func (r *retirer) fault(began int64, err error) {
	if !connectionFault(err) {
		return
	}
	for {
		last := r.retiredAt.Load()
		now := time.Now().UnixNano()
		if began <= last || now-last < int64(retireEvery) {
			return // the fault the last retirement answered, or one too soon after it
		}
		if r.retiredAt.CompareAndSwap(last, now) {
			r.epoch.Add(1)
			return
		}
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
		r.fault(began, err)
		return err
	}
}

func (r *retirer) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		began := time.Now().UnixNano()
		err := next(ctx, cmds)
		r.fault(began, err)
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
