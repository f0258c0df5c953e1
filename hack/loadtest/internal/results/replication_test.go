package results_test

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cacheside/cacheside/hack/loadtest/internal/results"
)

// histogram is cumulative counts over the service's bounds, as /metrics exports them.
func histogram(counts ...float64) []results.Bucket {
	bounds := []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, math.Inf(1)}
	out := make([]results.Bucket, len(bounds))
	for i, le := range bounds {
		out[i].UpperBound = le
		if i < len(counts) {
			out[i].Count = counts[i]
		} else {
			out[i].Count = counts[len(counts)-1]
		}
	}
	return out
}

func TestQuantileInterpolatesWithinTheBucketAsHistogramQuantileDoes(t *testing.T) {
	// 100 observations: 10 in (1ms, 2.5ms], 20 in (2.5ms, 5ms], 60 in (5ms, 10ms], 10 in (10ms, 25ms].
	spread := histogram(0, 10, 30, 90, 100)
	tests := []struct {
		name    string
		q       float64
		buckets []results.Bucket
		want    results.Estimate
	}{
		// Rank 50 is the 20th of the 60 observations in (5ms, 10ms]: 5ms + 5ms×20/60.
		{"the median is a third of the way into its bucket", 0.5, spread, results.Estimate{Value: 0.005 + 0.005*20.0/60, Lower: 0.005, Upper: 0.01}},
		// Rank 99 is the 9th of the 10 in (10ms, 25ms]: 10ms + 15ms×9/10.
		{"p99 is nine tenths into the last bucket with observations", 0.99, spread, results.Estimate{Value: 0.0235, Lower: 0.01, Upper: 0.025}},
		{"a rank that fills its bucket exactly is the bucket's upper bound", 0.1, spread, results.Estimate{Value: 0.0025, Lower: 0.001, Upper: 0.0025}},
		// Rank 2 of 4 in the first bucket, which starts at 0: 1ms × 2/4.
		{"the first bucket starts at zero", 0.25, histogram(4, 8), results.Estimate{Value: 0.0005, Lower: 0, Upper: 0.001}},
		{"a rank beyond the highest finite bound gives that bound", 0.5, histogram(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 10),
			results.Estimate{Value: 60, Lower: 60, Upper: math.Inf(1)}},
		{"q above 1 is +Inf", 1.5, spread, results.Estimate{Value: math.Inf(1), Lower: math.Inf(1), Upper: math.Inf(1)}},
		{"q below 0 is -Inf", -0.5, spread, results.Estimate{Value: math.Inf(-1), Lower: math.Inf(-1), Upper: math.Inf(-1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := results.Quantile(tt.q, tt.buckets)
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b float64) bool {
				return a == b || math.Abs(a-b) < 1e-12
			})); diff != "" {
				t.Errorf("Quantile(%v) (-want +got):\n%s", tt.q, diff)
			}
		})
	}
}

func TestQuantileOfNothingIsNaN(t *testing.T) {
	tests := []struct {
		name    string
		buckets []results.Bucket
	}{
		{"no observations", histogram(0)},
		{"no buckets", nil},
		{"no +Inf bucket", histogram(1, 2, 3)[:15]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := results.Quantile(0.5, tt.buckets); !math.IsNaN(got.Value) {
				t.Errorf("Quantile = %v, want NaN", got)
			}
		})
	}
}

func TestBucketDeltaIsWhatWasObservedBetweenTwoScrapes(t *testing.T) {
	before := histogram(1, 5, 5, 7)
	after := histogram(1, 8, 20, 27)
	got, err := results.BucketDelta(after, before)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(histogram(0, 3, 15, 20), got); diff != "" {
		t.Errorf("delta (-want +got):\n%s", diff)
	}
	if got, err := results.BucketDelta(after, nil); err != nil || results.Observations(got) != 27 {
		t.Errorf("delta from an unexported histogram = %v observations, %v; want all 27", results.Observations(got), err)
	}
	if _, err := results.BucketDelta(before, after); err == nil {
		t.Error("counts that went down (a restarted process) gave a delta")
	}
	if _, err := results.BucketDelta(after, before[:4]); err == nil {
		t.Error("histograms of different buckets gave a delta")
	}
	pooled, err := results.AddBuckets(got, histogram(0, 1, 2, 3))
	if err != nil || results.Observations(pooled) != 23 {
		t.Errorf("pooled = %v observations, %v; want 20 + 3", results.Observations(pooled), err)
	}
}

func replication() results.Replication {
	return results.Replication{
		Rows: 1000, Conns: 32, Target: "/cache redis", WriteRate: 50, Rounds: 3,
		On: results.Phase{Writes: 49.8, Load: results.Measurement{Requests: 20000, Throughput: 4000, Hits: 19000,
			P50: 5 * time.Millisecond, P99: 20 * time.Millisecond}},
		Off: results.Phase{Writes: 50, Load: results.Measurement{Requests: 25000, Throughput: 5000, Hits: 25000,
			P50: 4 * time.Millisecond, P99: 15 * time.Millisecond}},
		Latency:      histogram(0, 10, 30, 90, 100),
		PairedRatios: []float64{0.8, 0.95, 1.1},
	}
}

func TestReplicationRowsShowTheRatioAndTheLatencyWithItsBucket(t *testing.T) {
	want := [][]string{
		{"true", "4,000", "0.80×", "5.00ms", "20.0ms", "0", "95%", "49.8", "6.67ms (5ms–10ms)", "23.5ms (10ms–25ms)", "100"},
		{"false", "5,000", "—", "4.00ms", "15.0ms", "0", "100%", "50.0", "—", "—", "—"},
	}
	if diff := cmp.Diff(want, results.ReplicationRows(replication())); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
	r := replication()
	r.Latency = histogram(0)
	if got := results.ReplicationRows(r)[0]; got[8] != "—" || got[10] != "0" {
		t.Errorf("with no observations: p50 %q, count %q; want — and 0", got[8], got[10])
	}
	r.Latency = histogram(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4)
	if got := results.ReplicationRows(r)[0][8]; got != "≥60s (+Inf bucket)" {
		t.Errorf("a median past the last bound = %q", got)
	}
}

func TestWriteMarkdownAddsTheReplicationSection(t *testing.T) {
	r := replication()
	var b bytes.Buffer
	err := results.WriteMarkdown(&b, results.Report{Title: "t", Replication: &r, ReplicationNotes: []string{"the writer is outside the API"}}, run())
	if err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"## Replication",
		"/cache redis, 1,000 rows, 32 connections, a writer outside the API committing 50 single-row UPDATEs/s; 3 round(s) per setting.\n",
		`| REPLICATION\_ENABLED | req/s |`,
		"| true | 4,000 | 0.80× |",
		"round by round (each pair measured back to back): 0.80×, 0.95×, 1.10×.\n",
		"- the writer is outside the API\n",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("the report lacks %q:\n%s", want, md)
		}
	}
	if strings.Index(md, "| 1,000 | 8 |") > strings.Index(md, "## Replication") {
		t.Error("the replication section comes before the table")
	}

	b.Reset()
	r.Skipped = "wal_level is replica"
	if err := results.WriteMarkdown(&b, results.Report{Title: "t", Replication: &r}, nil); err != nil {
		t.Fatal(err)
	}
	if md := b.String(); !strings.Contains(md, "Not measured: wal\\_level is replica") || strings.Contains(md, "| rows |") {
		t.Errorf("a skipped section alone:\n%s", md)
	}
}
