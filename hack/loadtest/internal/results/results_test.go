package results_test

import (
	"bytes"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cacheside/cacheside/hack/loadtest/internal/results"
)

// run is one table size at one number of connections and one kind of client, every kind of
// target present.
func run() []results.Measurement {
	ms := []results.Measurement{
		{Rows: 1000, Conns: 8, Target: "ceiling", Kind: results.Ceiling, Requests: 50000, Throughput: 10000,
			P50: 700 * time.Microsecond, P90: 1500 * time.Microsecond, P99: 4 * time.Millisecond, BodyBytes: 9830, Encoding: "gzip", Hits: 50000, RedisHits: 50000},
		{Rows: 1000, Conns: 8, Target: "/sample", Kind: results.Direct, Requests: 5000, Throughput: 1000,
			P50: 7 * time.Millisecond, P90: 12345 * time.Microsecond, P99: 123456 * time.Microsecond, BodyBytes: 74885},
		{Rows: 1000, Conns: 8, Target: "/cache redis", Kind: results.Cached, Requests: 25000, Errors: 3, Throughput: 5000,
			P50: 1500 * time.Microsecond, P90: 3 * time.Millisecond, P99: 9 * time.Millisecond, BodyBytes: 9830, Encoding: "gzip", Hits: 24997, RedisHits: 24997},
		{Rows: 1000, Conns: 8, Target: "/cache redis+local", Kind: results.Cached, Requests: 40000, Throughput: 8000,
			P50: time.Millisecond, P90: 2 * time.Millisecond, P99: 5 * time.Millisecond, BodyBytes: 9830, Encoding: "gzip", Hits: 40000, LocalHits: 38800, RedisHits: 1200},
	}
	for i := range ms {
		ms[i].Client = "gzip"
	}
	return ms
}

func TestRatioComparesWithTheSameRowsAndConnectionsOnly(t *testing.T) {
	all := append(run(),
		// Another cell whose /sample must not be used for the 1,000-row, 8-connection rows.
		results.Measurement{Rows: 1000, Conns: 1, Target: "/sample", Kind: results.Direct, Throughput: 1, Client: "gzip"},
		results.Measurement{Rows: 10, Conns: 8, Target: "/sample", Kind: results.Direct, Throughput: 1, Client: "gzip"},
		// Another client's ceiling, which is not this client's.
		results.Measurement{Rows: 1000, Conns: 8, Target: "ceiling", Kind: results.Ceiling, Throughput: 1, Client: "identity"},
	)
	cached := all[2]
	tests := []struct {
		name   string
		m      results.Measurement
		ref    results.Kind
		want   float64
		wantOK bool
	}{
		{"a cache tier against /sample", cached, results.Direct, 5, true},
		{"a cache tier against the ceiling", cached, results.Ceiling, 0.5, true},
		{"the ceiling against /sample", all[0], results.Direct, 10, true},
		{"/sample is not compared with itself", all[1], results.Direct, 0, false},
		{"the ceiling is not compared with itself", all[0], results.Ceiling, 0, false},
		{"a cell without a ceiling has no ratio to it", results.Measurement{Rows: 10, Conns: 8, Kind: results.Cached, Throughput: 3, Client: "gzip"}, results.Ceiling, 0, false},
		{"a reference that served nothing gives no ratio", results.Measurement{Rows: 5, Conns: 1, Kind: results.Cached, Throughput: 3, Client: "gzip"}, results.Direct, 0, false},
		{"another client's cell has its own ceiling", results.Measurement{Rows: 1000, Conns: 8, Kind: results.Cached, Throughput: 3, Client: "identity"}, results.Ceiling, 3, true},
	}
	all = append(all, results.Measurement{Rows: 5, Conns: 1, Kind: results.Direct, Target: "/sample", Throughput: 0, Client: "gzip"})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := results.Ratio(all, tt.m, tt.ref)
			if ok != tt.wantOK || math.Abs(got-tt.want) > 1e-9 {
				t.Errorf("Ratio = %v, %v; want %v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestRowFormatsEveryColumn(t *testing.T) {
	all := run()
	want := [][]string{
		{"1,000", "8", "gzip", "ceiling", "10,000", "0.70ms", "1.50ms", "4.00ms", "0", "9.6 KiB gzip", "—", "10×", "—"},
		{"1,000", "8", "gzip", "/sample", "1,000", "7.00ms", "12.3ms", "123ms", "0", "73.1 KiB", "—", "—", "0.10×"},
		{"1,000", "8", "gzip", "/cache redis", "5,000", "1.50ms", "3.00ms", "9.00ms", "3", "9.6 KiB gzip", ">99.9% (redis >99.9%)", "5.00×", "0.50×"},
		{"1,000", "8", "gzip", "/cache redis+local", "8,000", "1.00ms", "2.00ms", "5.00ms", "0", "9.6 KiB gzip", "100% (local 97%, redis 3%)", "8.00×", "0.80×"},
	}
	var got [][]string
	for _, m := range all {
		got = append(got, results.Row(all, m))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
	if len(results.Columns) != len(want[0]) {
		t.Errorf("%d columns named, %d cells per row", len(results.Columns), len(want[0]))
	}
}

func TestPercentNeverRoundsToAllOrNothing(t *testing.T) {
	tests := []struct {
		part, whole uint64
		want        string
	}{
		{10, 10, "100%"},
		{0, 10, "0%"},
		{99999, 100000, ">99.9%"},
		{1, 100000, "<0.1%"},
		{995, 1000, "99.5%"},
		{5, 1000, "0.5%"},
		{1, 3, "33%"},
		{0, 0, "—"},
	}
	for _, tt := range tests {
		if got := results.Percent(tt.part, tt.whole); got != tt.want {
			t.Errorf("Percent(%d, %d) = %q, want %q", tt.part, tt.whole, got, tt.want)
		}
	}
}

func TestATargetThatOnlyFailedShowsNoBodySize(t *testing.T) {
	m := results.Measurement{Rows: 10, Conns: 1, Target: "/cache redis", Kind: results.Cached, Requests: 7, Errors: 7}
	got := results.Row([]results.Measurement{m}, m)
	if got[8] != "7" || got[9] != "—" || got[10] != "0%" {
		t.Errorf("errors, body, hits = %q, %q, %q; want 7, —, 0%%", got[7], got[8], got[9])
	}
}

func TestWriteTableAlignsColumnsAndSeparatesTableSizes(t *testing.T) {
	all := append(run(), results.Measurement{Rows: 10000, Conns: 1, Target: "/sample", Kind: results.Direct, Requests: 10, Throughput: 2, BodyBytes: 760000})
	var b bytes.Buffer
	if err := results.WriteTable(&b, all); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 1+4+1+1 {
		t.Fatalf("%d lines, want a heading, 4 rows, a blank line and 1 row:\n%s", len(lines), b.String())
	}
	if strings.TrimSpace(lines[5]) != "" {
		t.Errorf("line 6 = %q, want the blank line between table sizes", lines[5])
	}
	// Right-aligned columns: every line ends at the same width.
	width := len([]rune(lines[0]))
	for i, l := range lines {
		if i != 5 && len([]rune(l)) != width {
			t.Errorf("line %d is %d wide, the heading %d:\n%s", i+1, len([]rune(l)), width, b.String())
		}
	}
	if !strings.Contains(lines[6], "742.2 KiB") {
		t.Errorf("last line %q lacks the body size 742.2 KiB", lines[6])
	}
}

func TestWriteMarkdownHasTheFactsTheChartAndOneTableRowPerMeasurement(t *testing.T) {
	all := run()
	all[3].Target = "/cache a|b" // a pipe in a name must not split the cell
	var b bytes.Buffer
	err := results.WriteMarkdown(&b, results.Report{
		Title: "cacheside load test",
		Facts: []results.Fact{{Name: "Machine", Value: "2 CPUs"}, {Name: "Command", Value: "`make loadtest`"}},
		Chart: "report.png",
		Notes: []string{"numbers are not asserted"},
	}, all)
	if err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"# cacheside load test\n",
		"- **Machine:** 2 CPUs\n",
		"- **Command:** `make loadtest`\n",
		"](report.png)",
		"| rows | conns | client | target | req/s | p50 | p90 | p99 | errors | body/resp | cache hits | vs /sample | vs ceiling |\n",
		"| 1,000 | 8 | gzip | /sample | 1,000 | 7.00ms | 12.3ms | 123ms | 0 | 73.1 KiB | — | — | 0.10× |\n",
		`| /cache a\|b |`,
		"- numbers are not asserted\n",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("the report lacks %q:\n%s", want, md)
		}
	}
	var tableRows int
	for l := range strings.SplitSeq(md, "\n") {
		if strings.HasPrefix(l, "| 1,000 |") {
			tableRows++
			if n := strings.Count(l, " |"); n != len(results.Columns) {
				t.Errorf("row has %d cells, want %d: %s", n, len(results.Columns), l)
			}
		}
	}
	if tableRows != len(all) {
		t.Errorf("%d table rows, want %d", tableRows, len(all))
	}
}

func TestWritePNGDrawsAChart(t *testing.T) {
	all := run()
	// A second table size and a slow /sample force the shared log axis.
	for _, m := range run() {
		m.Rows = 10000
		m.Throughput /= 10
		if m.Kind == results.Direct {
			m.Throughput = 40
		}
		all = append(all, m)
	}
	// Two kinds of client, as the load test names them in the chart: a legend too wide for one
	// line wraps.
	for i := range all {
		m := all[i]
		all[i].Target = "gzip " + m.Target
		m.Target, m.Throughput = "identity "+m.Target, m.Throughput*0.8
		all = append(all, m)
	}
	var b bytes.Buffer
	if err := results.WritePNG(&b, "cacheside: requests/s", "5s per bar", all); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if w := img.Bounds().Dx(); w < 1000 {
		t.Errorf("chart is %d pixels wide; want at least 1000 for readable labels", w)
	}
	// Look at it: CHART_OUT=/tmp/chart.png go test ./internal/results (in hack/loadtest)
	if out := os.Getenv("CHART_OUT"); out != "" {
		if err := os.WriteFile(filepath.Clean(out), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := results.WritePNG(&b, "empty", "", nil); err == nil {
		t.Error("a chart of nothing drew without an error")
	}
}

func TestMedianKeepsTheWholeMiddleRound(t *testing.T) {
	rounds := []results.Measurement{
		{Throughput: 900, P99: 9 * time.Millisecond},
		{Throughput: 100, P99: 90 * time.Millisecond},
		{Throughput: 500, P99: 5 * time.Millisecond},
	}
	if got := results.Median(rounds); got.Throughput != 500 || got.P99 != 5*time.Millisecond {
		t.Errorf("Median = %v req/s, p99 %v; want the 500 req/s round with its p99 of 5ms", got.Throughput, got.P99)
	}
	if got := results.Median(rounds[:1]); got.Throughput != 900 {
		t.Errorf("Median of one round = %v req/s, want that round's 900", got.Throughput)
	}
	if rounds[0].Throughput != 900 {
		t.Error("Median reordered its argument")
	}
}

func TestGoalsAreCheckedPerClientAndConnections(t *testing.T) {
	all := run()
	for _, m := range run() { // an identity client, where the Redis tier falls short
		m.Client = "identity"
		if m.Target == "/cache redis" {
			m.Throughput = 4000
		}
		all = append(all, m)
	}
	// The ceiling+redis: within reach for gzip clients, out of it for identity ones. At 8
	// connections, only as a goal whose bound holds there.
	all = append(all,
		results.Measurement{Rows: 1000, Conns: 8, Target: "ceiling+redis", Kind: results.RedisCeiling, Client: "gzip", Requests: 1, Throughput: 7000},
		results.Measurement{Rows: 1000, Conns: 8, Target: "ceiling+redis", Kind: results.RedisCeiling, Client: "identity", Requests: 1, Throughput: 4500},
	)
	goals := []results.Goal{
		{Rows: 1000, Target: "/cache redis", Ref: results.Direct, Min: 5, Bound: results.RedisCeiling, BoundConns: 8},
		{Rows: 1000, Target: "/cache redis", Ref: results.Direct, Min: 4, Bound: results.RedisCeiling, BoundConns: 1},
		{Rows: 1000, Target: "/cache redis+local", Ref: results.Ceiling, Min: 0.9},
	}
	type cell struct {
		Goal, Client, Measured, Bound string
		Conns                         int
		Met, WasMeasured, Reachable   bool
	}
	var got []cell
	for _, v := range results.Check(all, goals) {
		bound := "—"
		if v.BoundMeasured {
			bound = results.Times(v.BoundRatio)
		}
		got = append(got, cell{v.Goal.String(), v.Client, results.Times(v.Ratio), bound, v.Conns, v.Met(), v.Measured, v.Reachable()})
	}
	want := []cell{
		{"/cache redis ≥ 5.00× /sample", "gzip", "5.00×", "7.00×", 8, true, true, true},
		{"/cache redis ≥ 5.00× /sample", "identity", "4.00×", "4.50×", 8, false, true, false},
		{"/cache redis ≥ 4.00× /sample", "gzip", "5.00×", "—", 8, true, true, true},
		{"/cache redis ≥ 4.00× /sample", "identity", "4.00×", "—", 8, true, true, true},
		{"/cache redis+local ≥ 0.90× the ceiling", "gzip", "0.80×", "—", 8, false, true, true},
		{"/cache redis+local ≥ 0.90× the ceiling", "identity", "0.80×", "—", 8, false, true, true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("verdicts (-want +got):\n%s", diff)
	}

	var b bytes.Buffer
	if err := results.WriteMarkdown(&b, results.Report{Title: "t", Verdicts: results.Check(all, goals)}, all); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| /cache redis ≥ 5.00× /sample | 1,000 | identity | 8 | /cache redis | 4.000× | 4.500× | **no** (out of reach: the bound falls short too) |\n",
		"| /cache redis+local ≥ 0.90× the ceiling | 1,000 | gzip | 8 | /cache redis+local | 0.800× | — | **no** |\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("the report lacks %q:\n%s", want, b.String())
		}
	}
}
