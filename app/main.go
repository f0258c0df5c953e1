// Command cacheside serves samples from Postgres, directly and through a Redis cache-aside tier.
//
//	cacheside [serve]              run the HTTP API (default)
//	cacheside migrate              apply the embedded schema migrations and exit
//	cacheside seed -n N [-replace] [-if-empty]
//	cacheside env                  print the environment variables it reads
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/extra/redisotel/v9"
	goredis "github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"

	"github.com/cacheside/cacheside/app/buildinfo"
	"github.com/cacheside/cacheside/app/cache"
	"github.com/cacheside/cacheside/app/config"
	"github.com/cacheside/cacheside/app/httpapi"
	"github.com/cacheside/cacheside/app/platform/logging"
	"github.com/cacheside/cacheside/app/platform/postgres"
	"github.com/cacheside/cacheside/app/platform/redisclient"
	"github.com/cacheside/cacheside/app/platform/telemetry"
	"github.com/cacheside/cacheside/app/samples"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var usage usageError
	switch {
	case err == nil:
	case errors.As(err, &usage), isConfigError(err):
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "cacheside:", err)
		os.Exit(1)
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func isConfigError(err error) bool {
	var cerr *config.Error
	return errors.As(err, &cerr)
}

const usage = `usage: cacheside [command]

commands:
  serve     run the HTTP API (default)
  migrate   apply the embedded schema migrations and exit
  seed      insert samples: seed -n N [-replace] [-if-empty]
  env       print the environment variables cacheside reads
  version   print the version

configuration comes from the environment; "cacheside env" lists it.`

// run dispatches a subcommand. It returns instead of exiting so deferred cleanup always runs.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return withDeps(ctx, stderr, serve)
	case "migrate":
		return withDeps(ctx, stderr, func(ctx context.Context, d deps) error {
			if err := postgres.Migrate(ctx, d.pool); err != nil {
				return err
			}
			d.log.Info("migrations applied")
			return nil
		})
	case "seed":
		return seedCommand(ctx, args, stderr)
	case "env":
		return config.PrintTable(stdout)
	case "version":
		_, err := fmt.Fprintf(stdout, "cacheside %s (%s)\n", buildinfo.Version, buildinfo.CommitOrVCS())
		return err
	case "help", "-h", "-help", "--help":
		fmt.Fprintln(stdout, usage)
		fmt.Fprintln(stdout)
		return config.PrintTable(stdout)
	default:
		return usageError{fmt.Sprintf("unknown command %q\n\n%s", cmd, usage)}
	}
}

// deps are the connections every command shares, built in the order they are needed.
type deps struct {
	cfg   config.Config
	log   *slog.Logger
	tel   *telemetry.Telemetry
	pool  *pgxpool.Pool
	rdb   goredis.UniversalClient
	cache *cache.Cache
	db    *samples.PGStore
}

func withDeps(ctx context.Context, stderr io.Writer, fn func(context.Context, deps) error) error {
	cfg, err := config.Load()
	if err != nil {
		return err
	}
	log := logging.New(stderr, cfg.LogLevel, cfg.LogFormat)
	redisclient.LogTo(log)
	log.Info("starting", "version", buildinfo.Version, "commit", buildinfo.CommitOrVCS(), "config", cfg)

	tel, err := telemetry.Setup(ctx, "cacheside", buildinfo.Version)
	if err != nil {
		return fmt.Errorf("setting up telemetry: %w", err)
	}
	defer func() {
		// Flush the last spans even though ctx is cancelled by now.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := tel.Shutdown(sctx); err != nil {
			log.Warn("flushing telemetry", "err", err)
		}
	}()
	log.Info("telemetry", "tracing", tel.TracingEnabled)

	pool, err := postgres.Open(ctx, postgres.Options{
		URL: cfg.DatabaseURL, MaxConns: cfg.DatabaseMaxConns, ConnectTimeout: cfg.DatabaseConnectTimeout,
		// Query text without parameter values; spans only inside a request's trace.
		Tracer: otelpgx.NewTracer(),
	})
	if err != nil {
		return fmt.Errorf("opening postgres: %w", err)
	}
	defer pool.Close()
	if err := otelpgx.RecordStats(pool); err != nil {
		return fmt.Errorf("instrumenting postgres pool: %w", err)
	}

	rdb, err := redisclient.New(redisclient.Options{URL: cfg.RedisURL, Mode: cfg.RedisMode, Timeout: cfg.RedisTimeout, PoolSize: cfg.RedisPoolSize})
	if err != nil {
		return fmt.Errorf("opening redis: %w", err)
	}
	defer rdb.Close()
	// Without WithDBStatement(false) redisotel records whole commands, cached bodies included.
	if err := redisotel.InstrumentTracing(rdb,
		redisotel.WithTracerProvider(telemetry.ChildSpansOnly(otel.GetTracerProvider())),
		redisotel.WithDBStatement(false), redisotel.WithCallerEnabled(false),
	); err != nil {
		return fmt.Errorf("instrumenting redis: %w", err)
	}
	if err := redisotel.InstrumentMetrics(rdb); err != nil {
		return fmt.Errorf("instrumenting redis pool: %w", err)
	}

	c := cache.New(rdb, cache.Options{
		Prefix:          cfg.CacheKeyPrefix + ":" + samples.PayloadVersion,
		TTL:             cfg.CacheTTL,
		Jitter:          cfg.CacheTTLJitter,
		NegativeTTL:     cfg.CacheNegativeTTL,
		OpTimeout:       cfg.RedisTimeout,
		LoadTimeout:     cfg.DatabaseTimeout,
		BreakerFailures: cfg.CacheBreakerFailures,
		BreakerCooldown: cfg.CacheBreakerCooldown,
		Compress:        cfg.CacheCompression == "gzip",
		Local:           cfg.CacheLocalEnabled,
		LocalTTL:        cfg.CacheLocalTTL,
		LocalMaxBytes:   cfg.CacheLocalMaxBytes,
		Logger:          log,
	})
	defer c.Close()
	return fn(ctx, deps{cfg: cfg, log: log, tel: tel, pool: pool, rdb: rdb, cache: c, db: samples.NewPGStore(pool, cfg.DatabaseTimeout)})
}

// serve runs the HTTP API until ctx is cancelled (SIGINT/SIGTERM); in-flight requests finish
// within SHUTDOWN_TIMEOUT before the pools close (the deferred closes in withDeps).
func serve(ctx context.Context, d deps) error {
	if d.cfg.MigrateOnStart {
		if err := postgres.Migrate(ctx, d.pool); err != nil {
			return fmt.Errorf("migrating on start: %w", err)
		}
		d.log.Info("migrations applied")
	}

	router := httpapi.NewRouter(httpapi.Deps{
		Log:           d.log,
		Direct:        d.db,
		Cached:        samples.NewCachedStore(d.db, d.cache),
		PostgresReady: d.pool.Ping,
		RedisHealth:   d.cache.Health,
		MaxBodyBytes:  d.cfg.HTTPMaxBodyBytes,
		RetryAfter:    d.cfg.CacheBreakerCooldown,
		Metrics:       d.tel.Metrics,
	})
	return httpapi.Serve(ctx, d.log, d.cfg, router)
}

func seedCommand(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("seed", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 1000, "number of samples to insert")
	replace := fs.Bool("replace", false, "delete every sample first")
	ifEmpty := fs.Bool("if-empty", false, "insert only when there are no samples")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if *n < 0 || *n > 10_000_000 {
		return usageError{"seed: -n must be between 0 and 10000000"}
	}
	return withDeps(ctx, stderr, func(ctx context.Context, d deps) error {
		if *ifEmpty && !*replace {
			count, err := d.db.Count(ctx)
			if err != nil {
				return err
			}
			if count > 0 {
				d.log.Info("seed skipped: samples exist", "count", count)
				return nil
			}
		}
		total, err := d.db.Seed(ctx, *n, *replace)
		if err != nil {
			return err
		}
		d.log.Info("seeded", "inserted", *n, "total", total)
		// The rows changed behind the cache's back: retire its views, or /cache would serve the
		// old list until the TTL. A seed that cannot reach Redis says so rather than fail.
		if err := samples.NewCachedStore(d.db, d.cache).InvalidateAll(ctx); err != nil {
			d.log.Warn("could not retire cached views; they expire within CACHE_TTL", "err", err)
		}
		return nil
	})
}
