// Package redisclient builds the go-redis client for standalone, Sentinel or Cluster deployments from
// one URL, with timeouts short enough that a sick Redis costs a request little. It knows nothing
// of the domain.
package redisclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"runtime"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Options configures New.
type Options struct {
	URL      string
	Mode     string // standalone, sentinel or cluster
	Timeout  time.Duration
	PoolSize int
}

// New returns a client for the configured mode. The URL forms are go-redis's own (ParseURL,
// ParseFailoverURL, ParseClusterURL): extra seeds are added with ?addr=host:port and Sentinel's
// master with ?master_name=. Errors never echo the URL, which may hold a password. Three
// connection faults in a row retire every pooled connection (retire.go).
func New(o Options) (goredis.UniversalClient, error) {
	switch o.Mode {
	case "", "standalone":
		opt, err := goredis.ParseURL(o.URL)
		if err != nil {
			return nil, sanitize(err)
		}
		o.tune(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout, &opt.PoolTimeout, &opt.ContextTimeoutEnabled, &opt.MaxRetries, &opt.PoolSize, &opt.MinIdleConns, &opt.PipelinePoolSize)
		r := &retirer{}
		opt.Dialer = r.dialer(goredis.NewDialer(opt))
		c := goredis.NewClient(opt)
		c.AddHook(r)
		return c, nil
	case "sentinel":
		opt, err := goredis.ParseFailoverURL(o.URL)
		if err != nil {
			return nil, sanitize(err)
		}
		if opt.MasterName == "" {
			return nil, errors.New("parsing REDIS_URL: sentinel mode needs ?master_name=")
		}
		o.tune(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout, &opt.PoolTimeout, &opt.ContextTimeoutEnabled, &opt.MaxRetries, &opt.PoolSize, &opt.MinIdleConns, &opt.PipelinePoolSize)
		r := &retirer{}
		opt.Dialer = r.dialer(goredis.NewDialer(&goredis.Options{DialTimeout: opt.DialTimeout, TLSConfig: opt.TLSConfig}))
		c := goredis.NewFailoverClient(opt)
		c.AddHook(r)
		return c, nil
	case "cluster":
		opt, err := goredis.ParseClusterURL(o.URL)
		if err != nil {
			return nil, sanitize(err)
		}
		o.tune(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout, &opt.PoolTimeout, &opt.ContextTimeoutEnabled, &opt.MaxRetries, &opt.PoolSize, &opt.MinIdleConns, &opt.PipelinePoolSize)
		r := &retirer{}
		opt.Dialer = r.dialer(goredis.NewDialer(&goredis.Options{DialTimeout: opt.DialTimeout, TLSConfig: opt.TLSConfig}))
		c := goredis.NewClusterClient(opt)
		c.AddHook(r)
		return c, nil
	default:
		return nil, fmt.Errorf("unknown REDIS_MODE %q", o.Mode)
	}
}

// tune applies the same budget to every mode: each command, dial included, gets Timeout, the
// caller's context deadline wins, and one retry covers a pooled connection that Redis closed.
//
// The pool is kept full and warm (every connection dialled in the background, and pipelines on
// the same pool rather than go-redis's separate pipeline pool, which never pre-dials): a command
// that has to dial pays a TCP connect and a handshake of several round trips inside its own
// budget, and on a loaded machine that alone can exceed it, which the circuit breaker would
// count as Redis failing.
func (o Options) tune(dial, read, write, pool *time.Duration, ctxTimeout *bool, retries, poolSize, minIdle, pipelinePool *int) {
	*dial, *read, *write, *pool = o.Timeout, o.Timeout, o.Timeout, o.Timeout
	*ctxTimeout = true
	*retries = 1
	*poolSize = o.PoolSize
	if *poolSize <= 0 {
		*poolSize = 10 * runtime.GOMAXPROCS(0) // go-redis's default, made explicit to warm it all
	}
	*minIdle = *poolSize
	*pipelinePool = -1
}

// LogTo sends go-redis's own diagnostics (dial failures, pool trouble) to log at warn level, so
// every line the service writes has the same format. go-redis has one process-wide logger.
func LogTo(log *slog.Logger) { goredis.SetLogger(slogAdapter{log}) }

type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Printf(ctx context.Context, format string, v ...any) {
	a.log.WarnContext(ctx, "go-redis: "+fmt.Sprintf(format, v...))
}

// sanitize drops the URL that net/url puts into its errors.
func sanitize(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	return fmt.Errorf("parsing REDIS_URL: %v", err)
}
