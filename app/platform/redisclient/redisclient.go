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
// master with ?master_name=. Errors never echo the URL, which may hold a password.
func New(o Options) (goredis.UniversalClient, error) {
	switch o.Mode {
	case "", "standalone":
		opt, err := goredis.ParseURL(o.URL)
		if err != nil {
			return nil, sanitize(err)
		}
		o.tune(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout, &opt.PoolTimeout, &opt.ContextTimeoutEnabled, &opt.MaxRetries, &opt.PoolSize)
		return goredis.NewClient(opt), nil
	case "sentinel":
		opt, err := goredis.ParseFailoverURL(o.URL)
		if err != nil {
			return nil, sanitize(err)
		}
		if opt.MasterName == "" {
			return nil, errors.New("parsing REDIS_URL: sentinel mode needs ?master_name=")
		}
		o.tune(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout, &opt.PoolTimeout, &opt.ContextTimeoutEnabled, &opt.MaxRetries, &opt.PoolSize)
		return goredis.NewFailoverClient(opt), nil
	case "cluster":
		opt, err := goredis.ParseClusterURL(o.URL)
		if err != nil {
			return nil, sanitize(err)
		}
		o.tune(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout, &opt.PoolTimeout, &opt.ContextTimeoutEnabled, &opt.MaxRetries, &opt.PoolSize)
		return goredis.NewClusterClient(opt), nil
	default:
		return nil, fmt.Errorf("unknown REDIS_MODE %q", o.Mode)
	}
}

// tune applies the same budget to every mode: each command, dial included, gets Timeout, the
// caller's context deadline wins, and one retry covers a pooled connection that Redis closed.
func (o Options) tune(dial, read, write, pool *time.Duration, ctxTimeout *bool, retries, poolSize *int) {
	*dial, *read, *write, *pool = o.Timeout, o.Timeout, o.Timeout, o.Timeout
	*ctxTimeout = true
	*retries = 1
	if o.PoolSize > 0 {
		*poolSize = o.PoolSize
	}
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
