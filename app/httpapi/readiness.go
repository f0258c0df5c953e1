package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// readiness decides /readyz. A replica is ready once Postgres has answered it once, and stays
// ready through an outage of Postgres or Redis, which every replica shares: pulling them all out
// of the Service then would turn the cached views the cache keeps serving (HIT, then STALE) and
// the 503s with Retry-After for the rest into connection errors, and bring nothing back sooner.
// Only what is this replica's own makes it unready: not having reached Postgres yet (it just
// started, or started during an outage and has nothing to offer), and shutting down.
//
// Each check records what it saw: a gauge per dependency and one log line per change of state,
// so an outage is visible in the metrics and the logs although /readyz stays 200.
type readiness struct {
	health   Health
	log      *slog.Logger
	stopping <-chan struct{}

	reached atomic.Bool // Postgres answered a check once
	mu      sync.Mutex
	state   map[string]depState // by dependency; absent until first checked
}

type depState struct {
	up    bool
	since time.Time
}

// dependencies are the ones /readyz checks and the gauge reports, in order.
var dependencies = []string{"postgres", "redis"}

func newReadiness(h Health, log *slog.Logger, stopping <-chan struct{}) *readiness {
	r := &readiness{health: h, log: log, stopping: stopping, state: map[string]depState{}}
	meter := otel.Meter("github.com/cacheside/cacheside/app/httpapi")
	_, _ = meter.Int64ObservableGauge("cacheside.dependency.up",
		metric.WithDescription("1 when the dependency (postgres, redis) answered the last readiness check, 0 when it did not; "+
			"absent before the first check. Readiness (/readyz) stays 200 through an outage once Postgres has answered once."),
		metric.WithInt64Callback(func(_ context.Context, obs metric.Int64Observer) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			for _, name := range dependencies {
				if s, ok := r.state[name]; ok {
					v := int64(0)
					if s.up {
						v = 1
					}
					obs.Observe(v, metric.WithAttributes(attribute.String("dependency", name)))
				}
			}
			return nil
		}))
	return r
}

// observe records a check's result and logs a change of state, once.
func (r *readiness) observe(ctx context.Context, name string, err error) depState {
	up := err == nil
	r.mu.Lock()
	prev, known := r.state[name]
	s := prev
	if !known || prev.up != up {
		s = depState{up: up, since: time.Now()}
		r.state[name] = s
	}
	r.mu.Unlock()
	switch {
	case known && prev.up == up:
	case up:
		r.log.InfoContext(ctx, "dependency up", "dependency", name)
	case name == "postgres" && r.reached.Load():
		r.log.WarnContext(ctx, "dependency down; staying ready: cached views are served, the rest is 503 with Retry-After",
			"dependency", name, "err", err)
	default:
		r.log.WarnContext(ctx, "dependency down", "dependency", name, "err", err)
	}
	return s
}

type readinessReport struct {
	Status string `json:"status"` // ready or not ready
	// Reason says why not ready: starting (Postgres has not answered yet) or shutting down.
	Reason string         `json:"reason,omitempty"`
	Checks map[string]any `json:"checks"`
}

type postgresCheck struct {
	Status string    `json:"status"` // up or down
	Since  time.Time `json:"since"`  // when it last changed, as this replica saw it
	Error  string    `json:"error,omitempty"`
}

// ReadinessBudget bounds /readyz's checks. It is well inside the readiness probe's timeout (the
// chart's is 2 s): a Postgres that does not answer at all (its pod gone, and the pool's
// connections to it with it) must be reported down in time, not make the probe time out,
// which would count as unready whatever the body would have said.
const ReadinessBudget = time.Second

func (r *readiness) handle(c *gin.Context) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), ReadinessBudget)
	defer cancel()
	// Both at once: a hung Postgres using up the budget must not make Redis look down.
	type redisResult struct {
		desc any
		err  error
	}
	redis := make(chan redisResult, 1)
	go func() {
		desc, err := r.health.Redis(ctx)
		redis <- redisResult{desc, err}
	}()
	pgErr := r.health.Postgres(ctx)
	if pgErr == nil {
		r.reached.Store(true)
	}
	pgState := r.observe(ctx, "postgres", pgErr)
	pg := postgresCheck{Status: "up", Since: pgState.since}
	if pgErr != nil {
		// Not the error itself: /readyz is public, and it may name hosts and users.
		pg.Status, pg.Error = "down", "postgres is not reachable"
	}
	rd := <-redis
	r.observe(ctx, "redis", rd.err)

	report := readinessReport{Status: "ready", Checks: map[string]any{
		"postgres":    pg,
		"redis":       rd.desc,
		"replication": r.health.Replication(),
	}}
	code := http.StatusOK
	select {
	case <-r.stopping:
		report.Status, report.Reason, code = "not ready", "shutting down", http.StatusServiceUnavailable
	default:
		if !r.reached.Load() {
			report.Status, report.Reason, code = "not ready", "starting: postgres has not answered yet", http.StatusServiceUnavailable
		}
	}
	c.JSON(code, report)
}
