// Package httpapi is the HTTP transport: the Gin router, its handlers, request logging, and the
// one place where errors become status codes and JSON bodies.
package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/contrib/instrumentation/github.com/gin-gonic/gin/otelgin"

	"github.com/cacheside/cacheside/app/ratelimit"
	"github.com/cacheside/cacheside/app/samples"
	"github.com/cacheside/cacheside/app/view"
)

// Reader serves the read endpoints. A read is served as the view the store made, bytes,
// encoding and ETag as they are, with how the cache served it.
type Reader interface {
	List(ctx context.Context) (view.View, error)
	Get(ctx context.Context, id int64) (view.View, error)
}

// Writer changes samples. A write that returns nil is durable and visible to every later read.
type Writer interface {
	Create(ctx context.Context, title string) (samples.Sample, error)
	Update(ctx context.Context, id int64, title string) (samples.Sample, error)
	Delete(ctx context.Context, id int64) error
}

// Health reports on the service's dependencies for /readyz (readiness.go).
type Health interface {
	// Postgres is nil when Postgres answers. The replica is unready until it has answered once;
	// after that an outage is reported, never a reason to be unready.
	Postgres(ctx context.Context) error
	// Redis describes Redis's state as JSON, and is nil when Redis answers; it never makes the
	// service unready: the service still answers (from Postgres) without it.
	Redis(ctx context.Context) (any, error)
	// Replication describes the follower of Postgres's replication stream; never unready.
	Replication() any
}

// Deps is what the router serves.
type Deps struct {
	Log *slog.Logger
	// Direct reads Postgres on every request (GET /sample).
	Direct Reader
	// Cached serves GET /cache and the /samples resource; its writes retire cached views.
	Cached interface {
		Reader
		Writer
	}
	Health Health
	// Stopping is closed once the process is shutting down: /readyz answers 503 from then on.
	// Nil: never.
	Stopping <-chan struct{}
	// MaxBodyBytes bounds request bodies (413 above).
	MaxBodyBytes int64
	// RetryAfter is suggested to clients when the database is unavailable.
	RetryAfter time.Duration
	// TrustedProxies are the addresses and CIDRs whose X-Forwarded-For names the client; the
	// peer's address names it otherwise. Empty: no peer is trusted.
	TrustedProxies []string
	// MaxInFlight bounds the requests served at once (503 past it); 0: no bound.
	MaxInFlight int
	// Limiter holds each client to its read and write budgets (429 past them); nil: no limits.
	Limiter *ratelimit.Limiter
	// Auth says which requests need a bearer token (auth.go); the zero value refuses every write.
	Auth Auth
	// ListCaching is what GET /cache tells HTTP caches in front (see cacheControl).
	ListCaching Caching
}

// untraced routes are probes: frequent, uninteresting, and they would dominate sampling. They
// are logged at debug level for the same reason. (Metrics are not on this router at all: they
// are served on the admin port, see NewAdmin.)
var untraced = map[string]bool{"/healthz": true, "/readyz": true}

// NewRouter returns the service's HTTP handler.
func NewRouter(d Deps) *gin.Engine {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.HandleMethodNotAllowed = true
	r.ContextWithFallback = true
	// X-Forwarded-For only from the configured proxies (validated by config), read from the
	// right past them; X-Real-IP is not read, so a client cannot smuggle one through a proxy
	// that sets only X-Forwarded-For.
	r.RemoteIPHeaders = []string{"X-Forwarded-For"}
	if err := r.SetTrustedProxies(d.TrustedProxies); err != nil {
		_ = r.SetTrustedProxies(nil)
		d.Log.Error("trusted proxies ignored", "err", err)
	}

	// Tracing first, so the access log and error lines carry the request's trace id.
	r.Use(otelgin.Middleware("cacheside", otelgin.WithGinFilter(func(c *gin.Context) bool { return !untraced[c.FullPath()] })))
	// The headers first, so that every response carries them, whoever writes it; the body is
	// drained after the access log line is written, so its time is not the request's.
	r.Use(securityHeaders(), drainBody(), accessLog(d.Log), recoverMiddleware(), errorsMiddleware(d.RetryAfter))
	// Shedding before limiting: it costs nothing, and a refused request holds no Redis call.
	r.Use(shed(d.MaxInFlight, d.RetryAfter), rateLimit(d.Limiter))
	// After the error path, so a 401 is rendered, logged and traced like any other error, and
	// after the limiter, so guessing tokens is held to the write budget.
	r.Use(authenticate(d.Auth))

	h := handlers{d}
	// HTTP requires HEAD wherever GET is served (RFC 9110 9.3.2), and monitors and `curl -I` use
	// it: the same handler answers, and net/http sends its headers without the body.
	read := func(path string, handler gin.HandlerFunc) {
		r.GET(path, handler)
		r.HEAD(path, handler)
	}
	read("/healthz", h.healthz)
	read("/readyz", newReadiness(d.Health, d.Log, d.Stopping).handle)
	read("/sample", handle(h.list(d.Direct, noStore)))
	read("/cache", handle(h.list(d.Cached, d.ListCaching.header())))
	read("/samples/:id", handle(h.get))
	r.POST("/samples", handle(h.create))
	r.PUT("/samples/:id", handle(h.update))
	r.DELETE("/samples/:id", handle(h.delete))

	r.NoRoute(handle(func(c *gin.Context) error {
		return clientError(http.StatusNotFound, "route_not_found", "no route %s %s", c.Request.Method, c.Request.URL.Path)
	}))
	r.NoMethod(handle(func(c *gin.Context) error {
		return clientError(http.StatusMethodNotAllowed, "method_not_allowed", "method %s not allowed here", c.Request.Method)
	}))
	return r
}

// accessLog writes the one line of each request: at error level for a server fault (with the
// error, and the stack of a panic), at warn level when a dependency was unavailable, at debug
// level for probes so they don't drown the lines that matter.
func accessLog(log *slog.Logger) gin.HandlerFunc {
	return func(c *gin.Context) {
		start := time.Now()
		c.Next()
		route := c.FullPath()
		status := c.Writer.Status()
		level := slog.LevelInfo
		switch {
		case untraced[route]:
			level = slog.LevelDebug
		case status == http.StatusServiceUnavailable:
			level = slog.LevelWarn
		case status >= 500:
			level = slog.LevelError
		}
		attrs := []slog.Attr{
			slog.String("method", c.Request.Method),
			slog.String("route", route),
			slog.Int("status", status),
			slog.Float64("latency_ms", float64(time.Since(start).Microseconds())/1000),
			slog.Int("bytes", max(0, c.Writer.Size())),
		}
		if outcome := c.Writer.Header().Get("X-Cache"); outcome != "" {
			attrs = append(attrs, slog.String("cache", outcome))
		}
		if status >= 500 || status == 499 {
			if err := c.Errors.Last(); err != nil {
				attrs = append(attrs, slog.String("err", err.Error()))
			}
		}
		if p, ok := c.Get(panicKey); ok {
			attrs = append(attrs, slog.String("panic", p.(panicked).value), slog.String("stack", p.(panicked).stack))
		}
		log.LogAttrs(c.Request.Context(), level, "request", attrs...)
	}
}
