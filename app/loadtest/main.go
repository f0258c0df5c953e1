// Command loadtest reproduces the tutorial's experiment on a running cacheside: it drives
// GET /sample (Postgres every time) and GET /cache (cache-aside) at several table sizes and
// concurrency levels and prints requests/s, latency percentiles, errors and the speed-up.
// Numbers are printed, never asserted. Load generation is vegeta's, used as a library.
//
//	go run ./app/loadtest -url http://127.0.0.1:8080 -seed .run/bin/cacheside -rows 10,1000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

type options struct {
	base        string
	seed        string
	rows        []int
	connections []int
	duration    time.Duration
	timeout     time.Duration
}

func parse(args []string) (options, error) {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	base := fs.String("url", "http://127.0.0.1:8080", "base URL of a running cacheside")
	seed := fs.String("seed", "", "cacheside binary used to reseed (`cacheside seed -replace -n ROWS`) before each table size; its environment is inherited. Empty: measure the data as it is")
	rows := fs.String("rows", "10,1000", "comma-separated table sizes (needs -seed)")
	conns := fs.String("c", "1,32", "comma-separated numbers of concurrent keep-alive connections")
	duration := fs.Duration("d", 5*time.Second, "length of each measurement")
	timeout := fs.Duration("timeout", 10*time.Second, "per-request timeout")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	o := options{base: strings.TrimRight(*base, "/"), seed: *seed, duration: *duration, timeout: *timeout}
	var err error
	if o.connections, err = ints(*conns); err != nil {
		return o, fmt.Errorf("-c: %w", err)
	}
	if o.seed != "" {
		if o.rows, err = ints(*rows); err != nil {
			return o, fmt.Errorf("-rows: %w", err)
		}
	} else {
		o.rows = []int{-1}
	}
	return o, nil
}

func ints(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive whole number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// row is one measurement.
type row struct {
	rows, conns int
	path        string
	m           vegeta.Metrics
	hits        float64 // share of X-Cache: HIT answers
	bytes       float64
}

func run(ctx context.Context, args []string, out io.Writer) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	if err := ping(o.base); err != nil {
		return fmt.Errorf("no cacheside at %s (start one with `make run`): %w", o.base, err)
	}
	var rowsOut []row
	for _, n := range o.rows {
		if n >= 0 {
			if err := reseed(ctx, o.seed, n); err != nil {
				return err
			}
		}
		for _, c := range o.connections {
			for _, path := range []string{"/sample", "/cache"} {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				fmt.Fprintf(os.Stderr, "measuring GET %s, %s rows, %d connections, %s…\n", path, label(n), c, o.duration)
				rowsOut = append(rowsOut, measure(o, n, c, path))
			}
		}
	}
	return print(out, rowsOut)
}

func ping(base string) error {
	res, err := http.Get(base + "/readyz")
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		return fmt.Errorf("/readyz answered %d", res.StatusCode)
	}
	return nil
}

func reseed(ctx context.Context, bin string, n int) error {
	cmd := exec.CommandContext(ctx, bin, "seed", "-replace", "-n", strconv.Itoa(n))
	cmd.Env = append(os.Environ(), "LOG_LEVEL=warn")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("reseeding %d rows: %w\n%s", n, err, out)
	}
	return nil
}

func measure(o options, n, conns int, path string) row {
	// Fill the cache first: the steady state of a cache tier is what the tutorial compares.
	var body int64
	if res, err := http.Get(o.base + path); err == nil {
		body, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	attacker := vegeta.NewAttacker(
		vegeta.Workers(uint64(conns)), vegeta.MaxWorkers(uint64(conns)),
		vegeta.Connections(conns), vegeta.MaxConnections(conns),
		vegeta.KeepAlive(true), vegeta.Timeout(o.timeout), vegeta.MaxBody(0),
	)
	target := vegeta.NewStaticTargeter(vegeta.Target{Method: "GET", URL: o.base + path})
	var m vegeta.Metrics
	var hits, total float64
	// Rate 0 with a fixed worker pool: each connection sends its next request as soon as the
	// previous one is answered (a closed loop, like the tutorial's loadtest -k).
	for res := range attacker.Attack(target, vegeta.Rate{Freq: 0}, o.duration, path) {
		m.Add(res)
		total++
		if res.Headers.Get("X-Cache") == "HIT" {
			hits++
		}
	}
	m.Close()
	r := row{rows: n, conns: conns, path: path, m: m, bytes: float64(body)}
	if total > 0 {
		r.hits = hits / total
	}
	return r
}

func label(n int) string {
	if n < 0 {
		return "as-is"
	}
	return strconv.Itoa(n)
}

func print(w io.Writer, rows []row) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "rows\tconns\tendpoint\treq/s\tp50\tp90\tp99\terrors\tbody\tcache hits\tvs /sample\t")
	var baseline float64
	for _, r := range rows {
		if r.path == "/sample" {
			baseline = r.m.Throughput
		}
		ratio := "—"
		if r.path != "/sample" && baseline > 0 {
			ratio = fmt.Sprintf("%.1f×", r.m.Throughput/baseline)
		}
		hits := "—"
		if r.path != "/sample" {
			hits = fmt.Sprintf("%.0f%%", 100*r.hits)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.0f\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t\n",
			label(r.rows), r.conns, r.path, r.m.Throughput,
			ms(r.m.Latencies.P50), ms(r.m.Latencies.P90), ms(r.m.Latencies.P99),
			r.m.Requests-uint64(float64(r.m.Requests)*r.m.Success+0.5), size(r.bytes), hits, ratio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rows {
		for _, e := range r.m.Errors {
			fmt.Fprintf(w, "error on %s (%s rows, %d conns): %s\n", r.path, label(r.rows), r.conns, e)
		}
	}
	if len(rows) == 0 {
		return errors.New("nothing measured")
	}
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d.Microseconds())/1000) }

func size(b float64) string {
	if b >= 1024 {
		return fmt.Sprintf("%.1fKB", b/1024)
	}
	return fmt.Sprintf("%.0fB", b)
}
