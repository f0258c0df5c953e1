// Package service assembles cacheside from its configuration: the Postgres pool, the Redis
// client, the cache, the stores and the HTTP handler, instrumented, and closes them in order.
// The binary and the tests build the service through it, so tests run the production wiring
// with the production defaults.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/extra/redisotel/v9"
	goredis "github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"

	"github.com/cacheside/cacheside/app/cache"
	"github.com/cacheside/cacheside/app/config"
	"github.com/cacheside/cacheside/app/httpapi"
	"github.com/cacheside/cacheside/app/platform/postgres"
	"github.com/cacheside/cacheside/app/platform/redisclient"
	"github.com/cacheside/cacheside/app/platform/telemetry"
	"github.com/cacheside/cacheside/app/ratelimit"
	"github.com/cacheside/cacheside/app/replication"
	"github.com/cacheside/cacheside/app/samples"
)

// Service is cacheside's object graph. Open builds it; Close takes it down.
type Service struct {
	Config config.Config
	Log    *slog.Logger
	Pool   *pgxpool.Pool
	Redis  goredis.UniversalClient
	Cache  *cache.Cache
	// Samples is the Postgres store: the source of truth, read by GET /sample.
	Samples *samples.PGStore
	// Cached serves GET /cache and the /samples resource through the cache.
	Cached *samples.CachedStore
	// Follower retires the views that writers other than this API changed, from Postgres's
	// logical replication stream; nil when REPLICATION_ENABLED is false. Follow starts it.
	Follower *replication.Follower

	stopFollowing context.CancelFunc
	followerDone  chan struct{}
	stopping      chan struct{} // closed by Drain
	drainOnce     sync.Once
}

// OpenRedis returns the Redis client the service uses, instrumented as the service instruments
// it: pool and timeouts from cfg (redisclient), metrics on every command, spans only inside a
// request's trace and without the commands' arguments.
func OpenRedis(cfg config.Config) (goredis.UniversalClient, error) {
	rdb, err := redisclient.New(redisclient.Options{URL: cfg.RedisURL, Mode: cfg.RedisMode, Timeout: cfg.RedisTimeout, PoolSize: cfg.RedisPoolSize})
	if err != nil {
		return nil, fmt.Errorf("opening redis: %w", err)
	}
	// Without WithDBStatement(false) redisotel records whole commands, cached bodies included.
	err = errors.Join(
		redisotel.InstrumentTracing(rdb,
			redisotel.WithTracerProvider(telemetry.ChildSpansOnly(otel.GetTracerProvider())),
			redisotel.WithDBStatement(false), redisotel.WithCallerEnabled(false)),
		redisotel.InstrumentMetrics(rdb),
	)
	if err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("instrumenting redis: %w", err)
	}
	return rdb, nil
}

// Open returns the assembled service without waiting for its dependencies: the pools dial in
// the background (the Redis pool is kept full, the near-cache subscribes), so the service can
// start and report itself unready while a dependency is still coming up.
func Open(ctx context.Context, cfg config.Config, log *slog.Logger) (*Service, error) {
	pool, err := postgres.Open(ctx, postgres.Options{
		URL: cfg.DatabaseURL, MaxConns: cfg.DatabaseMaxConns, ConnectTimeout: cfg.DatabaseConnectTimeout,
		StatementTimeout: cfg.DatabaseTimeout,
		// Query text without parameter values; spans only inside a request's trace.
		Tracer: otelpgx.NewTracer(),
	})
	if err != nil {
		return nil, fmt.Errorf("opening postgres: %w", err)
	}
	if err := otelpgx.RecordStats(pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("instrumenting postgres pool: %w", err)
	}

	rdb, err := OpenRedis(cfg)
	if err != nil {
		pool.Close()
		return nil, err
	}

	c := cache.New(rdb, CacheOptions(cfg, log))
	db := samples.NewPGStore(pool, cfg.DatabaseTimeout)
	s := &Service{
		Config: cfg, Log: log, Pool: pool, Redis: rdb, Cache: c,
		Samples: db, Cached: samples.NewCachedStore(db, c, LateWriteBound(cfg)),
		stopping: make(chan struct{}),
	}
	if cfg.ReplicationEnabled {
		s.Follower = replication.New(replication.Options{
			URL:            cfg.DatabaseURL,
			Slot:           ReplicationSlot(cfg),
			Publication:    cfg.ReplicationPublication,
			StatusInterval: cfg.ReplicationStatusInterval,
			Views:          samples.Views{},
			Retirer:        c,
			Logger:         log,
		})
	}
	return s, nil
}

// ReplicationSlot is REPLICATION_SLOT, or <CACHE_KEY_PREFIX>_<database> when it is empty
// (cacheside_<database> by default): slot names are unique across a Postgres cluster, and
// deployments that share a database but not a key prefix (so not the cached views) each need
// their own stream.
func ReplicationSlot(cfg config.Config) string {
	if cfg.ReplicationSlot != "" {
		return cfg.ReplicationSlot
	}
	db := ""
	if pc, err := pgconn.ParseConfig(cfg.DatabaseURL); err == nil {
		db = pc.Database
	}
	name := []byte(strings.ToLower(cfg.CacheKeyPrefix + "_" + db))
	for i, b := range name {
		if (b < 'a' || b > 'z') && (b < '0' || b > '9') {
			name[i] = '_'
		}
	}
	return string(name[:min(len(name), 63)])
}

// Follow starts the replication follower, if it is enabled, until Close. Only the serving
// process follows: one-off commands (seed, migrate) do not.
func (s *Service) Follow() {
	if s.Follower == nil || s.stopFollowing != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopFollowing, s.followerDone = cancel, make(chan struct{})
	go func() {
		defer close(s.followerDone)
		s.Follower.Run(ctx)
	}()
}

// LateWriteBound is how long after it returned a write whose outcome is unknown can still land:
// Postgres abandons a statement after its statement_timeout (DATABASE_TIMEOUT), and a second is
// added for the statement to reach the server and for clocks to tick apart.
func LateWriteBound(cfg config.Config) time.Duration { return cfg.DatabaseTimeout + time.Second }

// CacheOptions maps the configuration onto the cache engine's options.
func CacheOptions(cfg config.Config, log *slog.Logger) cache.Options {
	return cache.Options{
		Prefix:          cfg.CacheKeyPrefix + ":" + samples.PayloadVersion,
		TTL:             cfg.CacheTTL,
		Jitter:          cfg.CacheTTLJitter,
		NegativeTTL:     cfg.CacheNegativeTTL,
		OpTimeout:       cfg.RedisTimeout,
		LoadTimeout:     cfg.DatabaseTimeout,
		BreakerFailures: cfg.CacheBreakerFailures,
		BreakerCooldown: cfg.CacheBreakerCooldown,
		// An invalidation's own attempts are bounded by REDIS_TIMEOUT; this bounds the retries.
		InvalidationTimeout: cfg.CacheInvalidationTimeout,
		WaitReplicas:        cfg.CacheInvalidationReplicas,
		Compress:            cfg.CacheCompression == "gzip",
		NearCache:           cfg.CacheLocalEnabled,
		NearCacheTTL:        cfg.CacheLocalTTL,
		NearCacheMaxBytes:   cfg.CacheLocalMaxBytes,
		StaleGrace:          cfg.CacheStaleGrace,
		// Only Postgres being unreachable (the 503 path): a query Postgres refused, a bug or the
		// client hanging up must not be papered over with an older value.
		StaleIfError:     func(err error) bool { return errors.Is(err, samples.ErrUnavailable) },
		EarlyRefreshBeta: cfg.CacheEarlyRefreshBeta,
		LeaseTTL:         leaseTTL(cfg),
		Logger:           log,
	}
}

// leaseTTL is how long a miss's lease lives: DATABASE_TIMEOUT unless set shorter, since no load
// outlives it (zero: leases off).
func leaseTTL(cfg config.Config) time.Duration {
	switch {
	case !cfg.CacheLeases:
		return 0
	case cfg.CacheLeaseTTL > 0:
		return cfg.CacheLeaseTTL
	}
	return cfg.DatabaseTimeout
}

// Handler is the HTTP API clients reach.
func (s *Service) Handler() http.Handler {
	return httpapi.NewRouter(httpapi.Deps{
		Log:          s.Log,
		Direct:       s.Samples,
		Cached:       s.Cached,
		Health:       health{s},
		Stopping:     s.stopping,
		MaxBodyBytes: s.Config.HTTPMaxBodyBytes,
		RetryAfter:   s.Config.HTTPRetryAfter,
		Auth:         Auth(s.Config),

		TrustedProxies: s.Config.HTTPTrustedProxies,
		MaxInFlight:    s.Config.HTTPMaxInFlight,
		Limiter:        s.rateLimiter(),
		ListCaching: httpapi.Caching{
			MaxAge:               s.Config.HTTPCacheMaxAge,
			StaleWhileRevalidate: s.Config.HTTPCacheStaleWhileRevalidate,
			StaleIfError:         s.Config.HTTPCacheStaleIfError,
		},
	})
}

// rateLimiter is the per-client limiter from the configuration, nil when it is off. Its Redis
// calls go through the cache's guards (one view of whether Redis is usable), under the same
// key prefix.
func (s *Service) rateLimiter() *ratelimit.Limiter {
	if !s.Config.RateLimitEnabled {
		return nil
	}
	return ratelimit.New(s.Redis, s.Cache, ratelimit.Options{
		Prefix: s.Config.CacheKeyPrefix,
		Read:   ratelimit.Policy{Name: "reads", Rate: s.Config.RateLimitReadsPerSecond, Burst: s.Config.RateLimitReadBurst},
		Write:  ratelimit.Policy{Name: "writes", Rate: s.Config.RateLimitWritesPerSecond, Burst: s.Config.RateLimitWriteBurst},
		Logger: s.Log,
	})
}

// Auth maps the configuration onto the router's authentication.
func Auth(cfg config.Config) httpapi.Auth {
	return httpapi.Auth{Tokens: cfg.APITokens, Reads: cfg.APIAuthReads, Disabled: cfg.APIAuthDisabled}
}

// AdminHandler is what the admin port (ADMIN_ADDR) serves: metrics at GET /metrics.
func (s *Service) AdminHandler(metrics http.Handler) http.Handler {
	return httpapi.NewAdmin(metrics)
}

// ServerOptions are the HTTP servers' addresses and limits from the configuration.
func (s *Service) ServerOptions() httpapi.ServerOptions {
	return httpapi.ServerOptions{
		Addr:              s.Config.HTTPAddr,
		AdminAddr:         s.Config.AdminAddr,
		ReadHeaderTimeout: s.Config.HTTPReadHeaderTimeout,
		ReadTimeout:       s.Config.HTTPReadTimeout,
		WriteTimeout:      s.Config.HTTPWriteTimeout,
		IdleTimeout:       s.Config.HTTPIdleTimeout,
		ShutdownTimeout:   s.Config.ShutdownTimeout,
	}
}

// Drain marks the service as shutting down: /readyz answers 503 from then on, to the probes that
// still reach it before the listener closes. The serving process calls it on SIGTERM; Close too.
func (s *Service) Drain() { s.drainOnce.Do(func() { close(s.stopping) }) }

// health is what /readyz reports on: Postgres, whose first answer makes the replica ready, and
// Redis, described.
type health struct{ s *Service }

func (h health) Redis(ctx context.Context) (any, error) {
	rh := h.s.Cache.Health(ctx)
	if rh.Status != "up" {
		return rh, errors.New(rh.Error)
	}
	return rh, nil
}

// Postgres pings through the pool, unless every pooled connection is busy serving requests (a
// slow query, a held lock, the in-flight bound reached): waiting for one would report a busy
// Postgres as down and take the replica, and with it its cache hits, out of the Service. Postgres
// is then asked on a connection of its own.
func (h health) Postgres(ctx context.Context) error {
	if st := h.s.Pool.Stat(); st.IdleConns() > 0 || st.TotalConns() < st.MaxConns() {
		return h.s.Pool.Ping(ctx)
	}
	conn, err := pgx.ConnectConfig(ctx, h.s.Pool.Config().ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("connecting to postgres beside a busy pool: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.Ping(ctx)
}

// Replication describes the replication follower.
func (h health) Replication() any {
	if h.s.Follower == nil {
		return replication.State{Role: "off"}
	}
	return h.s.Follower.State()
}

// Close stops the cache, delivering what invalidations are pending until ctx ends, then closes
// the Redis client and the Postgres pool.
func (s *Service) Close(ctx context.Context) {
	s.Drain()
	if s.stopFollowing != nil { // it retires through the cache: stopped first
		s.stopFollowing()
		select {
		case <-s.followerDone:
		case <-ctx.Done():
		}
	}
	s.Cache.Close(ctx)
	_ = s.Redis.Close()
	s.Pool.Close()
}
