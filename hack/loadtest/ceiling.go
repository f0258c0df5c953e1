package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"

	"github.com/cacheside/cacheside/app/buildinfo"
	"github.com/cacheside/cacheside/app/cache"
	"github.com/cacheside/cacheside/app/config"
	"github.com/cacheside/cacheside/app/httpapi"
	"github.com/cacheside/cacheside/app/platform/logging"
	"github.com/cacheside/cacheside/app/platform/telemetry"
	"github.com/cacheside/cacheside/app/replication"
	"github.com/cacheside/cacheside/app/samples"
	appservice "github.com/cacheside/cacheside/app/service"
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
	// RedisKey, when set, makes this the ceiling+redis: the bytes live in the service's Redis
	// under RedisKey+":body" and RedisKey+":plain", and every answer fetches its client's bytes
	// with one GET (redisStore).
	RedisKey string `json:"redis_key,omitempty"`
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

	fixed := fixedStore{view: view.View{Body: spec.Body, Encoding: spec.Encoding, Plain: spec.Plain, ETag: spec.ETag, Found: true,
		Served: view.Served{Outcome: view.Outcome(spec.Cache), Tier: view.Tier(spec.Tier)}}}
	var store samples.Store = fixed
	if spec.RedisKey != "" {
		rs, err := newRedisStore(ctx, cfg, fixed, spec.RedisKey)
		if err != nil {
			return err
		}
		defer rs.close()
		store = rs
	}
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

// redisStore is the ceiling with one Redis round trip per answer: the fixed view, with the
// bytes its client is sent (the gzip body, or the plain JSON for a client that does not take
// gzip) fetched by one GET from the service's Redis, through the client the service builds
// (appservice.OpenRedis: same pool, timeouts and instrumentation), and aliased as the cache
// aliases them. It is the least a Redis tier can do on a hit, a round trip carrying the bytes
// it serves, so whatever /cache on the Redis tier costs beyond it is the cache's own logic
// (generations, the view's header, breaker, rounds), and a goal it cannot reach is out of reach
// of any Redis tier on this machine.
type redisStore struct {
	fixedStore
	rdb               redis.UniversalClient
	bodyKey, plainKey string
}

// newRedisStore stores fixed's bytes under key in the service's Redis, to be fetched on every
// answer, and removed by close.
func newRedisStore(ctx context.Context, cfg config.Config, fixed fixedStore, key string) (*redisStore, error) {
	rdb, err := appservice.OpenRedis(cfg)
	if err != nil {
		return nil, fmt.Errorf("the ceiling+redis: %w", err)
	}
	s := &redisStore{fixedStore: fixed, rdb: rdb, bodyKey: key + ":body"}
	pairs := []any{s.bodyKey, fixed.view.Body}
	if fixed.view.Plain != nil {
		s.plainKey = key + ":plain"
		pairs = append(pairs, s.plainKey, fixed.view.Plain)
	}
	if err := rdb.MSet(ctx, pairs...).Err(); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("the ceiling+redis: storing its bytes: %w", err)
	}
	return s, nil
}

func (s *redisStore) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys := []string{s.bodyKey}
	if s.plainKey != "" {
		keys = append(keys, s.plainKey)
	}
	_ = s.rdb.Del(ctx, keys...).Err()
	_ = s.rdb.Close()
}

func (s *redisStore) List(ctx context.Context) (view.View, error) {
	v := s.view
	plain := s.plainKey != "" && view.WantsPlain(ctx)
	key := s.bodyKey
	if plain {
		key = s.plainKey
	}
	got, err := s.rdb.Get(ctx, key).Result()
	if err != nil {
		return view.View{}, fmt.Errorf("the ceiling+redis: GET: %w", err)
	}
	b := unsafe.Slice(unsafe.StringData(got), len(got)) // read-only, as the cache's views
	if plain {
		v.Plain = b
	} else {
		v.Body = b
	}
	return v, nil
}
