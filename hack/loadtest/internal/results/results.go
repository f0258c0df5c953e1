// Package results holds the measurements of one load-test run and renders them as the terminal
// table, the Markdown report and the PNG chart. It knows nothing about servers or HTTP, so every
// number it prints can be checked by a unit test.
package results

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Kind is what a target is; it decides what a row is compared with.
type Kind int

const (
	// Ceiling is the service's router and middleware answering with fixed bytes: what HTTP on
	// this machine allows before any storage is involved.
	Ceiling Kind = iota + 1
	// Direct is GET /sample: Postgres on every request.
	Direct
	// Cached is GET /cache through one cache tier.
	Cached
	// RedisCeiling is the ceiling with one GET from Redis per answer, of the bytes it sends: the
	// least any Redis tier can do on a hit.
	RedisCeiling
)

// Measurement is one target measured at one table size and one number of connections.
type Measurement struct {
	Rows   int    // samples in the table
	Conns  int    // concurrent keep-alive connections, each sending its next request on an answer
	Target string // the name shown, e.g. "ceiling", "/sample", "/cache redis"
	Kind   Kind
	// Client is the kind of client that sent the load: "gzip" (Accept-Encoding: gzip) or
	// "identity" (no Accept-Encoding). Rows are compared only with rows of the same client,
	// each against the ceiling serving that client's bytes.
	Client string

	Requests   uint64  // responses and transport errors
	Errors     uint64  // transport errors and statuses outside 2xx/3xx
	Throughput float64 // successful responses per second
	P50        time.Duration
	P90        time.Duration
	P99        time.Duration

	// BodyBytes is the mean response body as it crossed the wire: compressed when Encoding says
	// so, headers and chunk framing excluded.
	BodyBytes float64
	Encoding  string // Content-Encoding of the responses ("" for identity)

	Hits      uint64 // responses with X-Cache: HIT
	LocalHits uint64 // hits with X-Cache-Tier: local
	RedisHits uint64 // hits with X-Cache-Tier: redis
}

// Ratio is m's throughput over that of the measurement of kind ref at the same table size,
// number of connections and client. It is false when there is no such measurement, when m is that
// measurement's kind (a row is not compared with itself), or when nothing was served.
func Ratio(all []Measurement, m Measurement, ref Kind) (float64, bool) {
	if m.Kind == ref {
		return 0, false
	}
	for _, r := range all {
		if r.Kind == ref && r.Rows == m.Rows && r.Conns == m.Conns && r.Client == m.Client {
			if r.Throughput <= 0 {
				return 0, false
			}
			return m.Throughput / r.Throughput, true
		}
	}
	return 0, false
}

// Median is the measurement with the median throughput (the upper one of an even count), whole:
// its latencies are those of the same round, not medians of each column taken apart.
func Median(ms []Measurement) Measurement {
	sorted := slices.Clone(ms)
	slices.SortStableFunc(sorted, func(a, b Measurement) int { return cmp.Compare(a.Throughput, b.Throughput) })
	return sorted[len(sorted)/2]
}

// Columns are the headings of the table, in the order Row returns the cells.
var Columns = []string{"rows", "conns", "client", "target", "req/s", "p50", "p90", "p99", "errors", "body/resp", "cache hits", "vs /sample", "vs ceiling"}

// Row formats m as the cells of one table row; all is the whole run, for the ratios.
func Row(all []Measurement, m Measurement) []string {
	return []string{
		thousands(m.Rows),
		strconv.Itoa(m.Conns),
		cmp.Or(m.Client, "—"),
		m.Target,
		thousands(int(math.Round(m.Throughput))),
		Latency(m.P50), Latency(m.P90), Latency(m.P99),
		strconv.FormatUint(m.Errors, 10),
		body(m),
		hits(m),
		ratio(all, m, Direct),
		ratio(all, m, Ceiling),
	}
}

// WriteTable writes the run as an aligned text table, a blank line between table sizes.
func WriteTable(w io.Writer, all []Measurement) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(Columns, "\t")+"\t")
	for i, m := range all {
		if i > 0 && m.Rows != all[i-1].Rows {
			// A line of empty cells: a line with fewer cells would end tabwriter's columns.
			fmt.Fprintln(tw, strings.Repeat("\t", len(Columns)))
		}
		fmt.Fprintln(tw, strings.Join(Row(all, m), "\t")+"\t")
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing the table: %w", err)
	}
	return nil
}

// Report is what the Markdown file holds besides the table.
type Report struct {
	Title string
	Facts []Fact   // how the numbers were obtained: machine, versions, command, settings
	Chart string   // path of the chart relative to the Markdown file; "" for none
	Notes []string // on the table

	// Verdicts are the goals checked against the table, written after it; nil for none.
	Verdicts  []Verdict
	GoalNotes []string // on the goals

	// Replication is the replication section, written after the table's notes; nil for none.
	Replication      *Replication
	ReplicationNotes []string
}

// Fact is one line of the report's header.
type Fact struct{ Name, Value string }

// WriteMarkdown writes the report: header facts, the chart, the table and its notes, then the
// replication section. A run that measured only the replication section has no table.
func WriteMarkdown(w io.Writer, r Report, all []Measurement) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n\n", r.Title)
	for _, f := range r.Facts {
		fmt.Fprintf(&b, "- **%s:** %s\n", f.Name, f.Value)
	}
	if r.Chart != "" {
		fmt.Fprintf(&b, "\n![requests per second by target](%s)\n", r.Chart)
	}
	if len(all) > 0 {
		writeMarkdownTable(&b, r, all)
	}
	if len(r.Verdicts) > 0 {
		b.WriteString("\n## Goals\n\n| goal | rows | client | conns | target | measured | bound | met |\n|:---|---:|:---|---:|:---|---:|---:|:---|\n")
		for _, v := range r.Verdicts {
			fmt.Fprintf(&b, "| %s | %s | %s | %d | %s | %s | %s | %s |\n", markdownCell(v.Goal.String()), thousands(v.Goal.Rows),
				v.Client, v.Conns, markdownCell(v.Goal.Target), v.measured(), v.bound(), v.met())
		}
		if len(r.GoalNotes) > 0 {
			b.WriteString("\n")
			for _, n := range r.GoalNotes {
				fmt.Fprintf(&b, "- %s\n", n)
			}
		}
	}
	if r.Replication != nil {
		replicationMarkdown(&b, *r.Replication, r.ReplicationNotes)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("writing the markdown report: %w", err)
	}
	return nil
}

func writeMarkdownTable(b *strings.Builder, r Report, all []Measurement) {
	b.WriteString("\n|")
	for _, c := range Columns {
		b.WriteString(" " + c + " |")
	}
	b.WriteString("\n|")
	for i := range Columns {
		// Numbers right-aligned, names left, as in the terminal table.
		if i == 2 || i == 3 {
			b.WriteString(":---|")
		} else {
			b.WriteString("---:|")
		}
	}
	b.WriteString("\n")
	for _, m := range all {
		b.WriteString("|")
		for _, c := range Row(all, m) {
			b.WriteString(" " + markdownCell(c) + " |")
		}
		b.WriteString("\n")
	}
	if len(r.Notes) > 0 {
		b.WriteString("\n")
		for _, n := range r.Notes {
			fmt.Fprintf(b, "- %s\n", n)
		}
	}
}

// markdownCell escapes what would end a cell or start emphasis: a target name such as
// "/cache redis+local" is safe, but names come from flags.
func markdownCell(s string) string {
	return strings.NewReplacer("|", `\|`, "*", `\*`, "_", `\_`).Replace(s)
}

// Latency prints a duration in milliseconds with three significant digits or so, because the
// range runs from tens of microseconds (a cache hit) to hundreds of milliseconds.
func Latency(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms < 10:
		return strconv.FormatFloat(ms, 'f', 2, 64) + "ms"
	case ms < 100:
		return strconv.FormatFloat(ms, 'f', 1, 64) + "ms"
	default:
		return strconv.FormatFloat(ms, 'f', 0, 64) + "ms"
	}
}

// Bytes prints a size in B, KiB or MiB.
func Bytes(b float64) string {
	switch {
	case b >= 1<<20:
		return strconv.FormatFloat(b/(1<<20), 'f', 2, 64) + " MiB"
	case b >= 1<<10:
		return strconv.FormatFloat(b/(1<<10), 'f', 1, 64) + " KiB"
	default:
		return strconv.FormatFloat(b, 'f', 0, 64) + " B"
	}
}

func body(m Measurement) string {
	if m.Requests == m.Errors {
		return "—"
	}
	return strings.TrimSpace(Bytes(m.BodyBytes) + " " + m.Encoding)
}

// hits is the share of cache hits among all requests, and which tier answered them. The
// ceiling and /sample are not cache tiers, whatever headers they send.
func hits(m Measurement) string {
	if m.Kind != Cached || m.Requests == 0 {
		return "—"
	}
	s := Percent(m.Hits, m.Requests)
	var tiers []string
	if m.LocalHits > 0 {
		tiers = append(tiers, "local "+Percent(m.LocalHits, m.Requests))
	}
	if m.RedisHits > 0 {
		tiers = append(tiers, "redis "+Percent(m.RedisHits, m.Requests))
	}
	if len(tiers) > 0 {
		s += " (" + strings.Join(tiers, ", ") + ")"
	}
	return s
}

// Percent prints part/whole so that it never rounds to 100 % or 0 % unless it is exactly that:
// "99.97 % hits" must not read as "every request hit".
func Percent(part, whole uint64) string {
	if whole == 0 {
		return "—"
	}
	switch p := 100 * float64(part) / float64(whole); {
	case part == whole:
		return "100%"
	case part == 0:
		return "0%"
	case p > 99.9:
		return ">99.9%"
	case p < 0.1:
		return "<0.1%"
	case p >= 99 || p < 1:
		return strconv.FormatFloat(p, 'f', 1, 64) + "%"
	default:
		return strconv.FormatFloat(p, 'f', 0, 64) + "%"
	}
}

func ratio(all []Measurement, m Measurement, ref Kind) string {
	r, ok := Ratio(all, m, ref)
	if !ok {
		return "—"
	}
	return Times(r)
}

// Times prints a ratio with two significant digits below 10 and none after the point above.
func Times(r float64) string {
	if r < 10 {
		return strconv.FormatFloat(r, 'f', 2, 64) + "×"
	}
	return strconv.FormatFloat(r, 'f', 0, 64) + "×"
}

// thousands prints n with comma separators (10,000 rows), as the README does.
func thousands(n int) string {
	s := strconv.Itoa(n)
	if n < 0 {
		return "-" + thousands(-n)
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// targets lists the target names in the order they were first measured, which is the order
// of the bars in every group of the chart.
func targets(all []Measurement) []Measurement {
	var out []Measurement
	seen := map[string]bool{}
	for _, m := range all {
		if !seen[m.Target] {
			seen[m.Target] = true
			out = append(out, m)
		}
	}
	return out
}

// distinct returns the sorted distinct values of f over all.
func distinct(all []Measurement, f func(Measurement) int) []int {
	var out []int
	seen := map[int]bool{}
	for _, m := range all {
		if v := f(m); !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	slices.Sort(out)
	return out
}

// Goal is a performance goal: at Rows, the target named Target must reach at least Min times
// the throughput of the row of kind Ref, for every client and number of connections measured.
// Bound, when set, is the kind of the instrument that shows what any implementation of Target
// could reach in a cell with BoundConns connections (the ceiling+redis for a Redis tier at one
// connection, where no read can share another's round trip): its ratio to Ref is reported
// beside the goal's there, so a goal out of reach on the machine shows as such.
type Goal struct {
	Rows       int
	Target     string
	Ref        Kind
	Min        float64
	Bound      Kind
	BoundConns int
}

func (g Goal) String() string {
	ref := "/sample"
	if g.Ref == Ceiling {
		ref = "the ceiling"
	}
	return fmt.Sprintf("%s ≥ %s %s", g.Target, Times(g.Min), ref)
}

// Verdict is a goal checked in one cell: the ratio measured, if the cell was.
type Verdict struct {
	Goal     Goal
	Client   string
	Conns    int
	Ratio    float64
	Measured bool // false: the cell has no such target or reference

	// BoundRatio is the goal's Bound's ratio to its Ref in the cell, if both were measured.
	BoundRatio    float64
	BoundMeasured bool
}

// Reachable reports whether the goal's bound, if measured, reached the goal in this cell.
func (v Verdict) Reachable() bool { return !v.BoundMeasured || v.BoundRatio >= v.Goal.Min }

// Met reports whether the goal was reached in this cell.
func (v Verdict) Met() bool { return v.Measured && v.Ratio >= v.Goal.Min }

// measured has a digit more than the table's ratios, so that a ratio just short of its goal
// does not print as the goal itself.
func (v Verdict) measured() string {
	if !v.Measured {
		return "—"
	}
	if v.Ratio < 10 {
		return strconv.FormatFloat(v.Ratio, 'f', 3, 64) + "×"
	}
	return Times(v.Ratio)
}

// bound is the bound's ratio as measured prints, or a dash.
func (v Verdict) bound() string {
	if !v.BoundMeasured {
		return "—"
	}
	return Verdict{Ratio: v.BoundRatio, Measured: true}.measured()
}

func (v Verdict) met() string {
	switch {
	case !v.Measured:
		return "not measured"
	case v.Met():
		return "yes"
	case !v.Reachable():
		return "**no** (out of reach: the bound falls short too)"
	}
	return "**no**"
}

// Check checks every goal in every cell of its table size: each client and number of
// connections measured at that size.
func Check(all []Measurement, goals []Goal) []Verdict {
	var out []Verdict
	for _, g := range goals {
		var clients []string
		for _, m := range all {
			if m.Rows == g.Rows && !slices.Contains(clients, m.Client) {
				clients = append(clients, m.Client)
			}
		}
		for _, client := range clients {
			for _, conns := range distinct(all, func(m Measurement) int { return m.Conns }) {
				v := Verdict{Goal: g, Client: client, Conns: conns}
				for _, m := range all {
					if m.Rows == g.Rows && m.Conns == conns && m.Client == client && m.Target == g.Target {
						v.Ratio, v.Measured = Ratio(all, m, g.Ref)
					}
					if g.Bound != 0 && conns == g.BoundConns && m.Rows == g.Rows && m.Conns == conns && m.Client == client && m.Kind == g.Bound {
						v.BoundRatio, v.BoundMeasured = Ratio(all, m, g.Ref)
					}
				}
				out = append(out, v)
			}
		}
	}
	return out
}

// WriteVerdicts writes the goals as aligned text lines.
func WriteVerdicts(w io.Writer, vs []Verdict) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "goal\trows\tclient\tconns\tmeasured\tbound\tmet\t")
	for _, v := range vs {
		met := strings.Replace(v.met(), "**no**", "NO", 1)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t\n", v.Goal, thousands(v.Goal.Rows), v.Client, v.Conns, v.measured(), v.bound(), met)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing the goals: %w", err)
	}
	return nil
}
