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
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cacheside/cacheside/app/buildinfo"
	"github.com/cacheside/cacheside/app/config"
	"github.com/cacheside/cacheside/app/httpapi"
	"github.com/cacheside/cacheside/app/platform/logging"
	"github.com/cacheside/cacheside/app/platform/postgres"
	"github.com/cacheside/cacheside/app/platform/redisclient"
	"github.com/cacheside/cacheside/app/platform/telemetry"
	"github.com/cacheside/cacheside/app/service"
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
		return withDeps(ctx, stderr, config.Load, serve)
	case "migrate":
		return withDeps(ctx, stderr, config.LoadForCommand, func(ctx context.Context, svc *service.Service, _ *telemetry.Telemetry) error {
			if err := postgres.Migrate(ctx, svc.Pool); err != nil {
				return err
			}
			svc.Log.Info("migrations applied")
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

// withDeps loads the configuration with load, sets up logging and telemetry, assembles the
// service and runs fn with it; everything is closed in reverse order when fn returns.
func withDeps(ctx context.Context, stderr io.Writer, load func() (config.Config, error), fn func(context.Context, *service.Service, *telemetry.Telemetry) error) error {
	cfg, err := load()
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

	svc, err := service.Open(ctx, cfg, log)
	if err != nil {
		return err
	}
	// SHUTDOWN_TIMEOUT runs from the signal: requests drain within it (httpapi.Serve), then the
	// cache delivers what invalidations are still pending within what is left.
	signalled := make(chan time.Time, 1)
	stopWatching := context.AfterFunc(ctx, func() { signalled <- time.Now() })
	defer func() {
		began := time.Now()
		if !stopWatching() {
			began = <-signalled
		}
		cctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), began.Add(cfg.ShutdownTimeout))
		defer cancel()
		svc.Close(cctx)
	}()
	return fn(ctx, svc, tel)
}

// serve runs the HTTP API until ctx is cancelled (SIGINT/SIGTERM); in-flight requests finish
// within SHUTDOWN_TIMEOUT before the service is closed (the deferred close in withDeps).
func serve(ctx context.Context, svc *service.Service, tel *telemetry.Telemetry) error {
	if svc.Config.MigrateOnStart {
		if err := postgres.Migrate(ctx, svc.Pool); err != nil {
			return fmt.Errorf("migrating on start: %w", err)
		}
		svc.Log.Info("migrations applied")
	}
	if svc.Config.APIAuthDisabled {
		// Every start, so a developer's setting that reached a cluster is seen in its logs.
		svc.Log.Warn("API_AUTH_DISABLED=true: POST, PUT and DELETE are served to anyone without a token; for local development only, never in a deployment")
	}
	svc.Follow()
	// From SIGTERM on, a probe that still reaches /readyz is told 503 (the listener closes at once too).
	defer context.AfterFunc(ctx, svc.Drain)()
	return httpapi.Serve(ctx, svc.Log, svc.ServerOptions(), svc.Handler(), svc.AdminHandler(tel.Metrics))
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
	return withDeps(ctx, stderr, config.LoadForCommand, func(ctx context.Context, svc *service.Service, _ *telemetry.Telemetry) error {
		if *ifEmpty && !*replace {
			count, err := svc.Samples.Count(ctx)
			if err != nil {
				return err
			}
			if count > 0 {
				svc.Log.Info("seed skipped: samples exist", "count", count)
				return nil
			}
		}
		total, err := svc.Samples.Seed(ctx, *n, *replace)
		if err != nil {
			return err
		}
		svc.Log.Info("seeded", "inserted", *n, "total", total)
		// The rows changed behind the cache's back: retire its views, or /cache would serve the
		// old list until the TTL. A seed that cannot reach Redis says so rather than fail.
		if err := svc.Cached.InvalidateAll(ctx); err != nil {
			svc.Log.Warn("could not retire cached views; they expire within CACHE_TTL", "err", err)
		}
		return nil
	})
}
