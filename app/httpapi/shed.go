package httpapi

import (
	"context"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
)

// shed bounds the requests this replica serves at once. Past the bound a request is answered
// 503 with Retry-After at once, instead of queueing behind the others (for Postgres connections,
// mostly) until every request in the queue times out: under overload a fast refusal keeps the
// requests already admitted within their deadlines, and tells clients and load balancers to go
// elsewhere. Probes and scrapes are never shed, so an overloaded replica is not restarted or
// pulled out for being busy, and its metrics still show why. max <= 0 turns shedding off.
func shed(limit int, retryAfter time.Duration) gin.HandlerFunc {
	var inFlight atomic.Int64
	meter := otel.Meter("github.com/cacheside/cacheside/app/httpapi")
	shedCount, _ := meter.Int64Counter("cacheside.http.shed",
		metric.WithDescription("Requests answered 503 at once because HTTP_MAX_IN_FLIGHT requests were in flight."))
	_, _ = meter.Int64ObservableGauge("cacheside.http.in_flight",
		metric.WithDescription("Requests in flight, probes and scrapes left out: what HTTP_MAX_IN_FLIGHT bounds."),
		metric.WithInt64Callback(func(_ context.Context, obs metric.Int64Observer) error {
			obs.Observe(inFlight.Load())
			return nil
		}))
	retry := strconv.Itoa(max(1, int(retryAfter.Seconds())))
	return func(c *gin.Context) {
		if untraced[c.FullPath()] {
			c.Next()
			return
		}
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		if limit > 0 && n > int64(limit) {
			shedCount.Add(c.Request.Context(), 1)
			c.Header("Retry-After", retry)
			_ = c.Error(clientError(http.StatusServiceUnavailable, "overloaded",
				"this replica is serving as many requests as it may at once; retry after the time in Retry-After"))
			c.Abort()
			return
		}
		c.Next()
	}
}
