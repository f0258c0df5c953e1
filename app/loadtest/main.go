// Command loadtest is the benchmark behind make loadtest. It starts one cacheside per cache tier
// and a ceiling (the service's own router serving fixed bytes, in a process of its own), reseeds
// the table to each size, and drives GET /sample, GET /cache on every tier and the ceiling at
// several numbers of connections. It prints the table and writes it as report.md and report.png.
// Numbers are printed, never asserted. Load generation is vegeta's, used as a library.
//
//	DATABASE_URL=… REDIS_URL=… go run ./app/loadtest -bin .run/bin/cacheside -d 5s
//
// hack/loadtest.sh provides Postgres, Redis, the migrated schema and the binaries.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cacheside/cacheside/app/loadtest/internal/results"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

// tier is a cache configuration one cacheside instance is started with.
type tier struct {
	name  string
	local bool // CACHE_LOCAL_ENABLED
}

var knownTiers = map[string]tier{
	"redis":       {name: "redis", local: false},
	"redis+local": {name: "redis+local", local: true},
}

type options struct {
	bin            string
	rows           []int
	conns          []int
	tiers          []tier
	duration       time.Duration
	repeat         int
	warmup         time.Duration
	timeout        time.Duration
	acceptEncoding string
	out            string
	command        string
	ceilingSpec    string // set only in the ceiling's own process
}

// ceilingFlag re-executes this binary as the ceiling server. It is left out of -help: users
// never run it.
const ceilingFlag = "internal-serve-ceiling"

func parse(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("bin", ".run/bin/cacheside", "cacheside binary, started once per cache tier and used to reseed; DATABASE_URL and REDIS_URL come from the environment")
	rows := fs.String("rows", "10,1000,10000", "comma-separated table sizes; the table is reseeded to each")
	conns := fs.String("c", "1,8,32", "comma-separated numbers of concurrent keep-alive connections")
	tiers := fs.String("tiers", "redis,redis+local", "comma-separated cache tiers to measure /cache on: redis (CACHE_LOCAL_ENABLED=false), redis+local (true)")
	duration := fs.Duration("d", 5*time.Second, "length of each measurement")
	repeat := fs.Int("repeat", 1, "rounds per cell, the targets' order rotating; each target's row is its round with the median req/s (for noisy machines)")
	warmup := fs.Duration("warmup", time.Second, "load sent to each target before each measurement and not counted")
	timeout := fs.Duration("timeout", 10*time.Second, "per-request timeout")
	enc := fs.String("accept-encoding", "gzip", `Accept-Encoding header sent with every request ("" sends none, so the service answers identity)`)
	out := fs.String("out", "app/loadtest/report", "directory for report.md and report.png")
	command := fs.String("command", "", "command line recorded in report.md (default: this program's)")
	spec := fs.String(ceilingFlag, "", "")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: loadtest [flags]")
		fs.VisitAll(func(f *flag.Flag) {
			if f.Name == ceilingFlag {
				return
			}
			fmt.Fprintf(stderr, "  -%s (default %q)\n    \t%s\n", f.Name, f.DefValue, f.Usage)
		})
	}
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	o := options{
		bin: *bin, duration: *duration, repeat: *repeat, warmup: *warmup, timeout: *timeout,
		acceptEncoding: *enc, out: *out, command: *command, ceilingSpec: *spec,
	}
	if o.ceilingSpec != "" {
		return o, nil
	}
	var err error
	if o.rows, err = ints(*rows); err != nil {
		return o, fmt.Errorf("-rows: %w", err)
	}
	if o.conns, err = ints(*conns); err != nil {
		return o, fmt.Errorf("-c: %w", err)
	}
	for name := range strings.SplitSeq(*tiers, ",") {
		t, ok := knownTiers[strings.TrimSpace(name)]
		if !ok {
			return o, fmt.Errorf("-tiers: unknown tier %q (known: redis, redis+local)", name)
		}
		o.tiers = append(o.tiers, t)
	}
	if o.duration <= 0 || o.warmup < 0 || o.timeout <= 0 || o.repeat < 1 {
		return o, errors.New("-d, -timeout and -repeat must be positive, -warmup not negative")
	}
	if o.command == "" {
		o.command = shellJoin(append([]string{os.Args[0]}, args...))
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

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parse(args, stderr)
	if err != nil {
		return err
	}
	if o.ceilingSpec != "" {
		return serveCeiling(ctx, o.ceilingSpec, stderr)
	}
	began := time.Now()
	facts := machineFacts(o, began)

	b, err := newBench(ctx, o, stderr)
	if err != nil {
		return err
	}
	defer b.close()

	cells := len(o.rows) * len(o.conns) * (2 + len(b.services)) * o.repeat
	fmt.Fprintf(stderr, "measuring %d targets × %d table sizes × %d connection counts × %d rounds: %d measurements of %s after %s of warm-up, about %s\n",
		2+len(b.services), len(o.rows), len(o.conns), o.repeat, cells, o.duration, o.warmup,
		(time.Duration(cells) * (o.duration + o.warmup)).Round(time.Second))

	measured, err := b.runAll(ctx)
	if err != nil {
		// Show what was measured before the interruption, but keep the last complete report.
		if len(measured) > 0 {
			fmt.Fprintln(stdout, "partial results (not written to the report):")
			_ = results.WriteTable(stdout, measured)
		}
		return err
	}
	if err := results.WriteTable(stdout, measured); err != nil {
		return err
	}
	facts = append(facts,
		results.Fact{Name: "Load average after the run", Value: loadAverage() + " (the run's own load included)"},
		results.Fact{Name: "Duration of the run", Value: time.Since(began).Round(time.Second).String()})
	if err := writeReport(o, began, facts, b.notes, measured); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s and %s\n", filepath.Join(o.out, "report.md"), filepath.Join(o.out, "report.png"))
	return nil
}

func writeReport(o options, began time.Time, facts []results.Fact, notes []string, measured []results.Measurement) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return fmt.Errorf("creating the report directory: %w", err)
	}
	png, err := os.Create(filepath.Join(o.out, "report.png"))
	if err != nil {
		return fmt.Errorf("creating the chart: %w", err)
	}
	err = results.WritePNG(png, "cacheside: successful requests/s by target (higher is better)", chartSubtitle(o, began), measured)
	if cerr := png.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("writing the chart: %w", cerr)
	}
	if err != nil {
		return err
	}

	var md strings.Builder
	report := results.Report{
		Title: "cacheside load test",
		Facts: facts,
		Chart: "report.png",
		Notes: append(columnNotes(o), notes...),
	}
	if err := results.WriteMarkdown(&md, report, measured); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "report.md"), []byte(md.String()), 0o644); err != nil {
		return fmt.Errorf("writing the markdown report: %w", err)
	}
	return nil
}

func chartSubtitle(o options, began time.Time) string {
	enc := "Accept-Encoding: " + o.acceptEncoding
	if o.acceptEncoding == "" {
		enc = "no Accept-Encoding"
	}
	return fmt.Sprintf("%s · closed loop, %s per bar after %s warm-up · %d CPUs (%s) shared by load generator, services, Postgres and Redis · %s",
		enc, o.duration, o.warmup, cpuCount(), cpuModel(), began.UTC().Format("2006-01-02"))
}

func columnNotes(o options) []string {
	return []string{
		"**req/s**: successful responses per second in a closed loop: each connection sends its next request as soon as the previous response has been read.",
		"**p50, p90, p99**: latency from sending a request to reading the last byte of its body, as vegeta measures it.",
		"**errors**: transport errors and statuses outside 2xx/3xx.",
		"**body/resp**: mean response body as it crossed the wire (compressed when marked gzip), headers excluded.",
		"**cache hits**: share of responses with `X-Cache: HIT`, and which tier answered them (`X-Cache-Tier`); `—` for targets that are not cache tiers.",
		"**vs /sample, vs ceiling**: req/s over that of `/sample` and of the ceiling at the same table size and connections.",
		"**ceiling**: the service's own router and middleware (`httpapi.NewRouter`), in a process of its own, answering `GET /cache` from a fixed in-memory view holding the bytes, encoding, ETag and cache headers that `/cache` answered at that table size: no Redis, no Postgres. Before measuring, its answer is checked byte for byte against the service's.",
		"**/sample** is served by the instance of the first tier; it never touches the cache.",
		fmt.Sprintf("Every target was sent %s of the same load first, not counted, so caches are filled and connections open.", o.warmup),
		repeatNote(o.repeat),
		"The load generator, the services, Postgres and Redis share the machine's CPUs: absolute numbers are this machine's; compare rows of one run.",
	}
}

func repeatNote(n int) string {
	if n == 1 {
		return "Each row is one measurement (`-repeat 1`); on a shared machine, differences of 20 % between runs are common. `-repeat 3` measures every cell three times and keeps each target's median."
	}
	return fmt.Sprintf("Each row is the median of %d rounds by req/s (its latencies are that round's); the targets' order rotated between rounds.", n)
}

// shellJoin quotes args so the command can be pasted back into a shell.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=./,:+@%") == "" {
			out[i] = a
		} else {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}
