package main

import (
	"context"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/cacheside/cacheside/app/platform/telemetry"
	"github.com/cacheside/cacheside/hack/loadtest/internal/results"
)

// The section reads the consumer's instruments by their Prometheus names. This records into
// instruments named and bounded as app/replication's (metrics.go), through the service's own
// telemetry setup and exporter, and checks that the names the section looks for are the ones
// the exporter writes.
func TestParseConsumerMetricsReadsWhatTheServiceExports(t *testing.T) {
	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, "loadtest-test", "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(ctx) })

	empty := scrapeHandler(t, tel)
	if len(empty.latency) != 0 || empty.changes != 0 || empty.retired != 0 {
		t.Errorf("before any change: %+v; want nothing", empty)
	}

	meter := otel.Meter("github.com/cacheside/cacheside/app/replication")
	changed, _ := meter.Int64Counter("cacheside.replication.changes")
	retired, _ := meter.Int64Counter("cacheside.replication.keys.retired")
	latency, _ := meter.Float64Histogram("cacheside.replication.retire.latency", metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
	for _, op := range []string{"update", "update", "insert"} { // two series: summed
		changed.Add(ctx, 1, metric.WithAttributes(attribute.String("table", "public.samples"), attribute.String("op", op)))
	}
	retired.Add(ctx, 6)
	for _, s := range []float64{0.003, 0.004, 0.007, 120} {
		latency.Record(ctx, s)
	}

	got := scrapeHandler(t, tel)
	if got.changes != 3 || got.retired != 6 {
		t.Errorf("changes %v, keys retired %v; want 3 and 6", got.changes, got.retired)
	}
	if n := results.Observations(got.latency); n != 4 {
		t.Fatalf("%v observations in %+v; want 4", n, got.latency)
	}
	if len(got.latency) != 16 {
		t.Errorf("%d buckets, want the service's 15 and +Inf: %+v", len(got.latency), got.latency)
	}
	// Two of four at most 5ms, the median at the top of (2.5ms, 5ms].
	if e := results.Quantile(0.5, got.latency); e.Value != 0.005 || e.Lower != 0.0025 {
		t.Errorf("median %+v; want 5ms at the top of the (2.5ms, 5ms] bucket", e)
	}
}

func scrapeHandler(t *testing.T, tel *telemetry.Telemetry) consumerMetrics {
	t.Helper()
	rec := httptest.NewRecorder()
	tel.Metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	m, err := parseConsumerMetrics(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
