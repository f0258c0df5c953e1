package replication

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Span attributes of replication.apply; never a row's values.
const (
	attrTables     = attribute.Key("replication.tables")
	attrRows       = attribute.Key("replication.rows")
	attrKeys       = attribute.Key("cache.keys")
	attrLSN        = attribute.Key("replication.lsn")
	attrCommitTime = attribute.Key("replication.commit_time")
)

type metrics struct {
	changed       metric.Int64Counter
	retired       metric.Int64Counter
	latency       metric.Float64Histogram
	leaderChanges metric.Int64Counter
}

func newMetrics(f *Follower) *metrics {
	meter := otel.Meter("github.com/cacheside/cacheside/app/replication")
	m := &metrics{}
	m.changed, _ = meter.Int64Counter("cacheside.replication.changes",
		metric.WithDescription("Row changes (and truncates) read from the replication stream, by table and operation."))
	m.retired, _ = meter.Int64Counter("cacheside.replication.keys.retired",
		metric.WithDescription("Cache keys retired because of changes read from the replication stream."))
	m.latency, _ = meter.Float64Histogram("cacheside.replication.retire.latency",
		metric.WithUnit("s"),
		metric.WithDescription("From a transaction's commit in Postgres to its cached views retired in Redis."),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
	m.leaderChanges, _ = meter.Int64Counter("cacheside.replication.leadership.changes",
		metric.WithDescription("Times this replica became or stopped being the replication leader."))
	_, _ = meter.Int64ObservableGauge("cacheside.replication.leader",
		metric.WithDescription("1 while this replica follows the replication stream, else 0."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			v := int64(0)
			if f.isLeader.Load() {
				v = 1
			}
			o.Observe(v)
			return nil
		}))
	_, _ = meter.Int64ObservableGauge("cacheside.replication.lag.bytes",
		metric.WithUnit("By"),
		metric.WithDescription("WAL between the server's end and the position up to which every change is retired (leader only)."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			if f.isLeader.Load() {
				o.Observe(int64(max(f.walEnd.Load(), f.applied.Load()) - f.applied.Load()))
			}
			return nil
		}))
	_, _ = meter.Float64ObservableGauge("cacheside.replication.lag",
		metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest committed change not yet retired; 0 when caught up (leader only)."),
		metric.WithFloat64Callback(func(_ context.Context, o metric.Float64Observer) error {
			if f.isLeader.Load() {
				v := 0.0
				if t := f.oldest.Load(); t != 0 {
					v = time.Since(time.Unix(0, t)).Seconds()
				}
				o.Observe(v)
			}
			return nil
		}))
	return m
}

func (m *metrics) changes(ctx context.Context, t Table, op string) {
	m.changed.Add(ctx, 1, metric.WithAttributes(attribute.String("table", t.String()), attribute.String("op", op)))
}
