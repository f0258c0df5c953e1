package results

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Bucket is one bucket of a Prometheus histogram: how many observations were at most
// UpperBound (cumulative, as the exposition format has it).
type Bucket struct {
	UpperBound float64
	Count      float64
}

// BucketDelta is what was observed between two scrapes of one histogram: after's counts minus
// before's, bucket by bucket. before may be empty (the histogram had no observations yet, so it
// was not exported). The bounds must match, and no count may have gone down: a process that
// restarted between the scrapes would otherwise pass for a quiet one.
func BucketDelta(after, before []Bucket) ([]Bucket, error) {
	out := slices.Clone(after)
	if len(before) == 0 {
		return out, nil
	}
	if len(before) != len(after) {
		return nil, fmt.Errorf("the histogram had %d buckets, then %d", len(before), len(after))
	}
	for i := range out {
		if before[i].UpperBound != after[i].UpperBound {
			return nil, fmt.Errorf("bucket %d bounded at %g, then %g", i, before[i].UpperBound, after[i].UpperBound)
		}
		out[i].Count -= before[i].Count
		if out[i].Count < 0 {
			return nil, fmt.Errorf("the count of bucket le=%g went down (%g to %g): a counter reset", after[i].UpperBound, before[i].Count, after[i].Count)
		}
	}
	return out, nil
}

// AddBuckets is a and b pooled: the counts of equal bounds summed. Either may be empty.
func AddBuckets(a, b []Bucket) ([]Bucket, error) {
	switch {
	case len(a) == 0:
		return slices.Clone(b), nil
	case len(b) == 0:
		return slices.Clone(a), nil
	case len(a) != len(b):
		return nil, fmt.Errorf("histograms of %d and %d buckets", len(a), len(b))
	}
	out := slices.Clone(a)
	for i := range out {
		if a[i].UpperBound != b[i].UpperBound {
			return nil, fmt.Errorf("bucket %d bounded at %g in one histogram, %g in the other", i, a[i].UpperBound, b[i].UpperBound)
		}
		out[i].Count += b[i].Count
	}
	return out, nil
}

// Observations is the number of observations in buckets: the count of the +Inf bucket.
func Observations(buckets []Bucket) float64 {
	if len(buckets) == 0 {
		return 0
	}
	return buckets[len(buckets)-1].Count
}

// Estimate is a quantile estimated from a histogram: Value, and the bounds of the bucket it
// lies in. The true quantile may be anywhere in that bucket.
type Estimate struct {
	Value        float64
	Lower, Upper float64 // Upper is +Inf when the quantile is beyond the highest finite bound
}

// Quantile estimates the q-quantile of the observations in buckets as Prometheus's
// histogram_quantile does: it finds the bucket holding the observation of rank q×count and
// interpolates linearly between that bucket's bounds, the first bucket starting at 0. A rank in
// the +Inf bucket gives the highest finite bound (Upper is then +Inf). buckets must be sorted by
// bound and end with +Inf; with no observations, or without the +Inf bucket, Value is NaN.
func Quantile(q float64, buckets []Bucket) Estimate {
	nan := Estimate{Value: math.NaN(), Lower: math.NaN(), Upper: math.NaN()}
	switch {
	case math.IsNaN(q):
		return nan
	case q < 0:
		return Estimate{Value: math.Inf(-1), Lower: math.Inf(-1), Upper: math.Inf(-1)}
	case q > 1:
		return Estimate{Value: math.Inf(1), Lower: math.Inf(1), Upper: math.Inf(1)}
	case len(buckets) < 2 || !math.IsInf(buckets[len(buckets)-1].UpperBound, 1):
		return nan
	}
	total := Observations(buckets)
	if total == 0 {
		return nan
	}
	rank := q * total
	// The first bucket holding the rank, among the finite ones; none: the +Inf bucket.
	b := len(buckets) - 1
	for i := range buckets[:len(buckets)-1] {
		if buckets[i].Count >= rank {
			b = i
			break
		}
	}
	if b == len(buckets)-1 {
		top := buckets[b-1].UpperBound
		return Estimate{Value: top, Lower: top, Upper: math.Inf(1)}
	}
	if b == 0 && buckets[0].UpperBound <= 0 {
		return Estimate{Value: buckets[0].UpperBound, Lower: buckets[0].UpperBound, Upper: buckets[0].UpperBound}
	}
	start, end, count := 0.0, buckets[b].UpperBound, buckets[b].Count
	if b > 0 {
		start = buckets[b-1].UpperBound
		count -= buckets[b-1].Count
		rank -= buckets[b-1].Count
	}
	return Estimate{Value: start + (end-start)*(rank/count), Lower: start, Upper: end}
}

// Replication is the report's replication section: /cache driven as in the table while a writer
// outside the API commits single-row UPDATEs at a fixed rate, once with the service's replication
// consumer on and once with it off.
type Replication struct {
	Rows      int
	Conns     int
	Target    string  // what was driven, e.g. "/cache redis"
	WriteRate float64 // UPDATEs per second asked of the writer
	Rounds    int

	On, Off Phase // each the round with the median req/s
	// PairedRatios is, for every round, req/s with the consumer on over req/s with it off, the
	// two measured back to back: the spread shows what the machine's noise does to the ratio.
	PairedRatios []float64

	// Latency is the commit-to-retired histogram observed during the measurements with the
	// consumer on (the deltas of its buckets, pooled over every such round).
	Latency []Bucket
	// Changes and KeysRetired are the consumer's counters over the same measurements.
	Changes, KeysRetired float64

	// Skipped says why the section was not measured; "" when it was.
	Skipped string
}

// Phase is one setting of the consumer, measured.
type Phase struct {
	Load   Measurement
	Writes float64 // UPDATEs per second the writer committed during the measurement
}

// MedianPhase is the phase with the median req/s (the upper one of an even count), whole, as
// Median chooses among measurements.
func MedianPhase(ps []Phase) Phase {
	sorted := slices.Clone(ps)
	slices.SortStableFunc(sorted, func(a, b Phase) int {
		switch {
		case a.Load.Throughput < b.Load.Throughput:
			return -1
		case a.Load.Throughput > b.Load.Throughput:
			return 1
		}
		return 0
	})
	return sorted[len(sorted)/2]
}

// ReplicationColumns are the headings of the replication table, in the order ReplicationRows
// returns the cells.
var ReplicationColumns = []string{"REPLICATION_ENABLED", "req/s", "vs false", "p50", "p99", "errors", "cache hits", "writes/s", "commit→retired p50", "commit→retired p99", "observations"}

// ReplicationRows formats r as the cells of its two rows: the consumer on, then off.
func ReplicationRows(r Replication) [][]string {
	row := func(p Phase, on bool) []string {
		cells := []string{
			strconv.FormatBool(on),
			thousands(int(math.Round(p.Load.Throughput))),
			"—",
			Latency(p.Load.P50), Latency(p.Load.P99),
			strconv.FormatUint(p.Load.Errors, 10),
			Percent(p.Load.Hits, p.Load.Requests),
			strconv.FormatFloat(p.Writes, 'f', 1, 64),
			"—", "—", "—",
		}
		if on {
			if r.Off.Load.Throughput > 0 {
				cells[2] = Times(p.Load.Throughput / r.Off.Load.Throughput)
			}
			cells[8] = estimate(Quantile(0.5, r.Latency))
			cells[9] = estimate(Quantile(0.99, r.Latency))
			cells[10] = thousands(int(math.Round(Observations(r.Latency))))
		}
		return cells
	}
	return [][]string{row(r.On, true), row(r.Off, false)}
}

// estimate prints a quantile with the bucket it lies in, so the histogram's resolution shows.
func estimate(e Estimate) string {
	switch {
	case math.IsNaN(e.Value):
		return "—"
	case math.IsInf(e.Upper, 1):
		return "≥" + bound(e.Lower) + " (+Inf bucket)"
	}
	return Latency(time.Duration(e.Value*float64(time.Second))) + " (" + bound(e.Lower) + "–" + bound(e.Upper) + ")"
}

// bound prints a bucket bound as the histogram declares it: 2.5ms, 1s.
func bound(s float64) string {
	if s < 1 {
		return strconv.FormatFloat(math.Round(s*1e6)/1e3, 'g', -1, 64) + "ms"
	}
	return strconv.FormatFloat(s, 'g', -1, 64) + "s"
}

// ReplicationSetting is the one-line description of what the section measured.
func ReplicationSetting(r Replication) string {
	return fmt.Sprintf("%s, %s rows, %d connections, a writer outside the API committing %s single-row UPDATEs/s; %d round(s) per setting",
		r.Target, thousands(r.Rows), r.Conns, strconv.FormatFloat(r.WriteRate, 'g', -1, 64), r.Rounds)
}

// Paired prints the ratio of each round: "0.93×, 0.88×, 0.97×".
func Paired(r Replication) string {
	var out []string
	for _, x := range r.PairedRatios {
		out = append(out, Times(x))
	}
	return strings.Join(out, ", ")
}

// WriteReplicationTable writes the section as an aligned text table.
func WriteReplicationTable(w io.Writer, r Replication) error {
	if r.Skipped != "" {
		_, err := fmt.Fprintf(w, "replication: not measured: %s\n", r.Skipped)
		return err
	}
	fmt.Fprintf(w, "replication: %s\n", ReplicationSetting(r))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(ReplicationColumns, "\t")+"\t")
	for _, cells := range ReplicationRows(r) {
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing the replication table: %w", err)
	}
	if len(r.PairedRatios) > 0 {
		fmt.Fprintf(w, "true over false, round by round: %s\n", Paired(r))
	}
	return nil
}

// replicationMarkdown is the section of the Markdown report.
func replicationMarkdown(b *strings.Builder, r Replication, notes []string) {
	b.WriteString("\n## Replication: commit-to-retired latency, and the throughput cost of the consumer\n\n")
	if r.Skipped != "" {
		fmt.Fprintf(b, "Not measured: %s\n", markdownCell(r.Skipped))
		return
	}
	fmt.Fprintf(b, "%s.\n\n|", ReplicationSetting(r))
	for _, c := range ReplicationColumns {
		b.WriteString(" " + markdownCell(c) + " |")
	}
	b.WriteString("\n|" + strings.Repeat("---:|", len(ReplicationColumns)) + "\n")
	for _, cells := range ReplicationRows(r) {
		b.WriteString("|")
		for _, c := range cells {
			b.WriteString(" " + markdownCell(c) + " |")
		}
		b.WriteString("\n")
	}
	if len(r.PairedRatios) > 0 {
		fmt.Fprintf(b, "\nReq/s with the consumer on over off, round by round (each pair measured back to back): %s.\n", Paired(r))
	}
	if len(notes) > 0 {
		b.WriteString("\n")
		for _, n := range notes {
			fmt.Fprintf(b, "- %s\n", n)
		}
	}
}
