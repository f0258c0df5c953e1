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

// Health reports on the service's dependencies for /readyz.
type Health interface {
	// Postgres is nil when Postgres answers; readiness depends on it.
	Postgres(ctx context.Context) error
	// Redis describes Redis's state as JSON; it never makes the service unready: the service
	// still answers (from Postgres) without it.
	Redis(ctx context.Context) any
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
	// MaxBodyBytes bounds request bodies (413 above).
	MaxBodyBytes int64
	// RetryAfter is suggested to clients when the database is unavailable.
	RetryAfter time.Duration
	// ListCaching is what GET /cache tells HTTP caches in front (see cacheControl).
	ListCaching Caching
	// Metrics serves GET /metrics (Prometheus format); nil leaves the route out.
	Metrics http.Handler
}

// untraced routes are probes and scrapes: frequent, uninteresting, and they would dominate
// sampling. They are logged at debug level for the same reason.
var untraced = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// NewRouter returns the service's HTTP handler.
func NewRouter(d Deps) *gin.Engine {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.HandleMethodNotAllowed = true
	r.ContextWithFallback = true
	_ = r.SetTrustedProxies(nil) // never trust X-Forwarded-For from arbitrary peers

	// Tracing first, so the access log and error lines carry the request's trace id.
	r.Use(otelgin.Middleware("cacheside", otelgin.WithGinFilter(func(c *gin.Context) bool { return !untraced[c.FullPath()] })))
	r.Use(accessLog(d.Log), recoverMiddleware(), errorsMiddleware(d.RetryAfter))

	h := handlers{d}
	r.GET("/healthz", h.healthz)
	r.GET("/readyz", h.readyz)
	r.GET("/sample", handle(h.list(d.Direct, noStore)))
	r.GET("/cache", handle(h.list(d.Cached, d.ListCaching.header())))
	r.GET("/samples/:id", handle(h.get))
	r.POST("/samples", handle(h.create))
	r.PUT("/samples/:id", handle(h.update))
	r.DELETE("/samples/:id", handle(h.delete))
	if d.Metrics != nil {
		r.GET("/metrics", gin.WrapH(d.Metrics))
	}

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
