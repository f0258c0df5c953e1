package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cacheside/cacheside/app/buildinfo"
	"github.com/cacheside/cacheside/app/cache"
	"github.com/cacheside/cacheside/app/config"
	"github.com/cacheside/cacheside/app/httpapi"
	"github.com/cacheside/cacheside/app/platform/logging"
	"github.com/cacheside/cacheside/app/platform/telemetry"
	"github.com/cacheside/cacheside/app/replication"
	"github.com/cacheside/cacheside/app/samples"
	"github.com/cacheside/cacheside/app/view"
)

// ceilingSpec is what the ceiling serves: one GET /cache answer, as the cached store handed it
// to the router, and where to listen.
type ceilingSpec struct {
	Addr     string `json:"addr"`
	Body     []byte `json:"body"`
	Encoding string `json:"encoding"`
	Plain    []byte `json:"plain,omitempty"` // the JSON as it is, next to a gzip Body
	ETag     string `json:"etag"`
	Cache    string `json:"cache"`
	Tier     string `json:"tier"`
}

// serveCeiling runs the ceiling until ctx ends: the service's router and middleware, built as
// cacheside's serve builds them (configuration, logger, telemetry, server timeouts), over a store
// whose List is a fixed view. Whatever /cache does beyond this is the cost of its cache tier.
// It lives here, not in the production binary, because it is a measuring instrument.
func serveCeiling(ctx context.Context, specPath string, stderr io.Writer) error {
	data, err := os.ReadFile(specPath)
	if err != nil {
		return fmt.Errorf("reading the ceiling's spec: %w", err)
	}
	var spec ceilingSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		return fmt.Errorf("decoding the ceiling's spec: %w", err)
	}
	// The service's own configuration (the parent passes the instance's environment), so the
	// server limits and log level are the service's.
	cfg, err := config.Load()
	if err != nil {
		return fmt.Errorf("loading the service's configuration for the ceiling: %w", err)
	}
	log := logging.New(stderr, cfg.LogLevel, cfg.LogFormat)
	// The same global tracer and meter providers as the service: otelgin records into them on
	// every request, and that cost belongs to the router.
	tel, err := telemetry.Setup(ctx, "cacheside-ceiling", buildinfo.Version)
	if err != nil {
		return fmt.Errorf("setting up the ceiling's telemetry: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()

	store := fixedStore{view: view.View{Body: spec.Body, Encoding: spec.Encoding, Plain: spec.Plain, ETag: spec.ETag, Found: true,
		Served: view.Served{Outcome: view.Outcome(spec.Cache), Tier: view.Tier(spec.Tier)}}}
	router := httpapi.NewRouter(httpapi.Deps{
		Log:          log,
		Direct:       store,
		Cached:       store,
		Health:       upHealth{},
		MaxBodyBytes: cfg.HTTPMaxBodyBytes,
		RetryAfter:   cfg.HTTPRetryAfter,
		// The service's own guard, so its cost on a read is measured too.
		Auth: httpapi.Auth{Tokens: cfg.APITokens, Reads: cfg.APIAuthReads, Disabled: cfg.APIAuthDisabled},
	})
	server := httpapi.ServerOptions{
		Addr: spec.Addr, ReadHeaderTimeout: cfg.HTTPReadHeaderTimeout, ReadTimeout: cfg.HTTPReadTimeout,
		WriteTimeout: cfg.HTTPWriteTimeout, IdleTimeout: cfg.HTTPIdleTimeout, ShutdownTimeout: cfg.ShutdownTimeout,
	}
	if err := httpapi.Serve(ctx, log, server, router, nil); err != nil {
		return fmt.Errorf("the ceiling: %w", err)
	}
	return nil
}

// upHealth reports every dependency up.
type upHealth struct{}

func (upHealth) Postgres(context.Context) error     { return nil }
func (upHealth) Redis(context.Context) (any, error) { return cache.Health{Status: "up"}, nil }
func (upHealth) Replication() any                   { return replication.State{Role: "off"} }

// fixedStore answers every list with the same view and nothing else: the ceiling only serves
// GET /cache (and GET /sample, identically).
type fixedStore struct{ view view.View }

var errFixed = errors.New("the ceiling serves one fixed list")

func (s fixedStore) List(context.Context) (view.View, error) { return s.view, nil }

func (fixedStore) Get(context.Context, int64) (view.View, error) {
	return view.View{}, samples.ErrNotFound
}

func (fixedStore) Create(context.Context, string) (samples.Sample, error) {
	return samples.Sample{}, errFixed
}

func (fixedStore) Update(context.Context, int64, string) (samples.Sample, error) {
	return samples.Sample{}, errFixed
}

func (fixedStore) Delete(context.Context, int64) error { return errFixed }
