// Command loadtest is the benchmark behind make loadtest. It builds cacheside, starts throwaway
// PostgreSQL and Redis under .run/loadtest (each unless DATABASE_URL or REDIS_URL names one)
// and migrates, then starts one cacheside per cache tier, a ceiling (the service's own router
// serving fixed bytes, in a process of its own) and a ceiling+redis (the same, fetching the bytes
// from Redis with one GET per answer), reseeds the table to each size, and drives GET /sample,
// GET /cache on every tier and the ceilings at several numbers of connections. Then
// its replication section drives /cache on the redis tier while a writer outside the API commits
// single-row UPDATEs, with the service's replication consumer on and off: the commit-to-retired
// latency the service's histogram recorded, and what the consumer costs in req/s. It prints the
// tables and writes them as report.md and report.png. Numbers are printed, never asserted. Load
// generation is vegeta's, used as a library. Everything it started is stopped when it ends, also
// on Ctrl-C or SIGTERM.
//
//	make loadtest ARGS="-rows 10,1000 -c 1,32 -d 2s"
//	make loadtest ARGS="-replication-only -out .run/replication"
//	cd hack/loadtest && go run . -rows 10,1000 -c 1,32 -d 2s
//
// Relative paths in its flags are the repository root's, where make runs. It is a module of its
// own, so vegeta and the chart's fonts stay out of the service's go.mod.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cacheside/cacheside/hack/loadtest/internal/results"
	"github.com/cacheside/cacheside/hack/servers"
)

func main() {
	ctx, cancel := context.WithCancelCause(context.Background())
	// Caught until the end, so a second Ctrl-C does not cut the cleanup short. SIGHUP only when
	// it is not ignored (nohup): catching it would undo that.
	sigs := []os.Signal{os.Interrupt, syscall.SIGTERM}
	if !signal.Ignored(syscall.SIGHUP) {
		sigs = append(sigs, syscall.SIGHUP)
	}
	caught := make(chan os.Signal, 1)
	signal.Notify(caught, sigs...)
	go func() {
		s := <-caught
		cancel(interrupted{s.(syscall.Signal)})
	}()
	// `go run` and make pass a SIGTERM on to their child only, and `go run` exits without
	// waiting: this way the load test hears of it too, and stops what it started.
	servers.DieWithParent()

	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	var sig interrupted
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	case errors.As(context.Cause(ctx), &sig):
		fmt.Fprintf(os.Stderr, "loadtest: stopped by %s; everything it started is stopped\n", sig.String())
		os.Exit(128 + int(sig.Signal))
	default:
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

// interrupted is the cause of a run cancelled by a signal.
type interrupted struct{ syscall.Signal }

func (i interrupted) Error() string { return "interrupted by " + i.String() }

func (i interrupted) String() string {
	switch i.Signal {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGHUP:
		return "SIGHUP"
	}
	return i.Signal.String()
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

// client is a kind of client the load is sent as: what it says in Accept-Encoding.
type client struct {
	name           string
	acceptEncoding string // "" sends none
}

var knownClients = map[string]client{
	"gzip":     {name: "gzip", acceptEncoding: "gzip"},
	"identity": {name: "identity", acceptEncoding: ""},
}

type options struct {
	bin         string
	rows        []int
	conns       []int
	tiers       []tier
	duration    time.Duration
	repeat      int
	warmup      time.Duration
	timeout     time.Duration
	clients     []client // the first also drives the replication section
	out         string
	command     string
	root        string // the repository's checkout
	ceilingSpec string // set only in the ceiling's own process

	// The replication section.
	replWrites float64 // UPDATEs/s of the writer outside the API; 0: no section
	replRows   int
	replConns  int
	replOnly   bool // the section alone, without the table

	// The hot-key section (hotkey.go), run alone when hotTTL is set.
	hotTTL      time.Duration
	hotDuration time.Duration
	hotRows     int
	hotConns    int
}

// ceilingFlag re-executes this binary as the ceiling server. It is left out of -help: users
// never run it.
const ceilingFlag = "internal-serve-ceiling"

func parse(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("bin", "", "cacheside binary, started once per cache tier and used to migrate and reseed (default: built from this checkout into .run/bin/cacheside)")
	rows := fs.String("rows", "10,1000,10000", "comma-separated table sizes; the table is reseeded to each")
	conns := fs.String("c", "1,8,32", "comma-separated numbers of concurrent keep-alive connections")
	tiers := fs.String("tiers", "redis,redis+local", "comma-separated cache tiers to measure /cache on: redis (CACHE_LOCAL_ENABLED=false), redis+local (true)")
	duration := fs.Duration("d", 5*time.Second, "length of each measurement")
	repeat := fs.Int("repeat", 1, "rounds per cell, the targets' order rotating; each target's row is its round with the median req/s (for noisy machines)")
	warmup := fs.Duration("warmup", time.Second, "load sent to each target before each measurement and not counted")
	timeout := fs.Duration("timeout", 10*time.Second, "per-request timeout")
	clients := fs.String("clients", "gzip,identity", "comma-separated kinds of client, each measured against a ceiling of its own: gzip (Accept-Encoding: gzip, as browsers send), identity (no Accept-Encoding, as curl, wrk and the tutorial's loadtest send)")
	out := fs.String("out", "hack/loadtest/report", "directory for report.md and report.png")
	replWrites := fs.Float64("replication-writes", 50, "UPDATEs per second a writer outside the API commits in the replication section, which measures /cache with the service's replication consumer on and off; 0 leaves the section out")
	replRows := fs.Int("replication-rows", 1000, "table size of the replication section")
	replConns := fs.Int("replication-c", 32, "connections of the replication section")
	replOnly := fs.Bool("replication-only", false, "measure the replication section alone, without the table (the report is written all the same: see -out)")
	hotTTL := fs.Duration("hot-key-ttl", 0, "run only the hot-key section: /cache read steadily across expiries of this CACHE_TTL (e.g. 2s), with early refresh on and off; prints misses after warm-up and p99 across reloads against between them")
	hotDuration := fs.Duration("hot-key-d", 30*time.Second, "length of each hot-key measurement")
	hotRows := fs.Int("hot-key-rows", 1000, "table size of the hot-key section")
	hotConns := fs.Int("hot-key-c", 8, "connections of the hot-key section")
	command := fs.String("command", "", `command line recorded in report.md (default: make loadtest ARGS="…" with this run's flags)`)
	spec := fs.String(ceilingFlag, "", "")
	fs.Usage = func() {
		fmt.Fprintln(stderr, `usage: make loadtest ARGS="[flags]", or go run . [flags] in hack/loadtest

PostgreSQL and Redis are started under .run/loadtest and stopped at the end, each unless
DATABASE_URL or REDIS_URL names one to use. Relative paths are the repository root's.`)
		fs.VisitAll(func(f *flag.Flag) {
			switch {
			case f.Name == ceilingFlag:
			case f.DefValue == "":
				fmt.Fprintf(stderr, "  -%s\n    \t%s\n", f.Name, f.Usage)
			default:
				fmt.Fprintf(stderr, "  -%s (default %q)\n    \t%s\n", f.Name, f.DefValue, f.Usage)
			}
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
		out: *out, command: *command, ceilingSpec: *spec,
		replWrites: *replWrites, replRows: *replRows, replConns: *replConns, replOnly: *replOnly,
		hotTTL: *hotTTL, hotDuration: *hotDuration, hotRows: *hotRows, hotConns: *hotConns,
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
	for name := range strings.SplitSeq(*clients, ",") {
		c, ok := knownClients[strings.TrimSpace(name)]
		if !ok {
			return o, fmt.Errorf("-clients: unknown client %q (known: gzip, identity)", name)
		}
		o.clients = append(o.clients, c)
	}
	if o.duration <= 0 || o.warmup < 0 || o.timeout <= 0 || o.repeat < 1 {
		return o, errors.New("-d, -timeout and -repeat must be positive, -warmup not negative")
	}
	if o.replWrites < 0 || math.IsNaN(o.replWrites) || math.IsInf(o.replWrites, 0) || o.replRows < 1 || o.replConns < 1 {
		return o, errors.New("-replication-rows and -replication-c must be positive, -replication-writes a rate of 0 or more")
	}
	if o.hotTTL < 0 || o.hotDuration <= 0 || o.hotRows < 1 || o.hotConns < 1 {
		return o, errors.New("-hot-key-ttl must not be negative; -hot-key-d, -hot-key-rows and -hot-key-c must be positive")
	}
	if o.replOnly && o.replWrites == 0 {
		return o, errors.New("-replication-only measures nothing with -replication-writes 0")
	}
	if o.command == "" {
		o.command = makeCommand(args)
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

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	o, err := parse(args, stderr)
	if err != nil {
		return err
	}
	if o.ceilingSpec != "" {
		return serveCeiling(ctx, o.ceilingSpec, stderr)
	}
	env, err := setUp(ctx, &o, stderr)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := env.close(); cerr != nil {
			if err == nil {
				err = cerr
			} else {
				fmt.Fprintf(stderr, "loadtest: %v\n", cerr)
			}
		}
	}()

	if o.hotTTL > 0 {
		return measureHotKey(ctx, o, stdout, stderr)
	}
	began := time.Now()
	facts := machineFacts(o, began)

	var measured []results.Measurement
	var notes []string
	fmt.Fprintln(stderr, "the services run with RATE_LIMIT_ENABLED=false: one loopback client this fast is what the per-client limits refuse; HTTP_MAX_IN_FLIGHT stays at its default")
	var verdicts []results.Verdict
	if !o.replOnly {
		b, err := newBench(ctx, o, stderr)
		if err != nil {
			return err
		}
		defer b.close()

		cells := len(o.rows) * len(o.conns) * len(o.clients) * (2 + len(b.services)) * o.repeat
		fmt.Fprintf(stderr, "measuring %d targets × %d table sizes × %d connection counts × %d kinds of client × %d rounds: %d measurements of %s after %s of warm-up, about %s\n",
			2+len(b.services), len(o.rows), len(o.conns), len(o.clients), o.repeat, cells, o.duration, o.warmup,
			(time.Duration(cells) * (o.duration + o.warmup)).Round(time.Second))

		measured, err = b.runAll(ctx)
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
		verdicts = results.Check(measured, goals)
		if len(verdicts) > 0 {
			fmt.Fprintln(stdout)
			if err := results.WriteVerdicts(stdout, verdicts); err != nil {
				return err
			}
		}
		notes = b.notes
		// The replication section's services run alone, not next to these.
		b.close()
	}

	var rep *results.Replication
	if o.replWrites > 0 {
		fmt.Fprintf(stderr, "replication section: 2 settings × %d rounds: %d measurements of %s after %s of warm-up, each with a cacheside of its own, about %s\n",
			o.repeat, 2*o.repeat, o.duration, o.warmup, (time.Duration(2*o.repeat) * (o.duration + o.warmup + 3*time.Second)).Round(time.Second))
		r, err := measureReplication(ctx, o, stderr)
		if err != nil {
			if ctx.Err() != nil || o.replOnly {
				return err
			}
			// As a tier that does not start: the report says why, the table stands.
			fmt.Fprintf(stderr, "loadtest: the replication section was not measured: %v\n", err)
			r.Skipped = oneLine(err.Error())
		}
		if len(measured) > 0 {
			fmt.Fprintln(stdout)
		}
		if err := results.WriteReplicationTable(stdout, r); err != nil {
			return err
		}
		rep = &r
	}

	facts = append(facts,
		results.Fact{Name: "Load average after the run", Value: loadAverage() + " (the run's own load included)"},
		results.Fact{Name: "Duration of the run", Value: time.Since(began).Round(time.Second).String()})
	if err := writeReport(o, began, facts, notes, measured, verdicts, rep); err != nil {
		return err
	}
	if len(measured) == 0 {
		fmt.Fprintf(stderr, "wrote %s\n", filepath.Join(o.out, "report.md"))
		return nil
	}
	fmt.Fprintf(stderr, "wrote %s and %s\n", filepath.Join(o.out, "report.md"), filepath.Join(o.out, "report.png"))
	return nil
}

// writeReport writes report.md and, when the table was measured, report.png.
func writeReport(o options, began time.Time, facts []results.Fact, notes []string, measured []results.Measurement, verdicts []results.Verdict, rep *results.Replication) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return fmt.Errorf("creating the report directory: %w", err)
	}
	report := results.Report{Title: "cacheside load test", Facts: facts}
	if len(measured) > 0 {
		png, err := os.Create(filepath.Join(o.out, "report.png"))
		if err != nil {
			return fmt.Errorf("creating the chart: %w", err)
		}
		err = results.WritePNG(png, "cacheside: successful requests/s by target (higher is better)", chartSubtitle(o, began), byClient(measured))
		if cerr := png.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("writing the chart: %w", cerr)
		}
		if err != nil {
			return err
		}
		report.Chart = "report.png"
		report.Notes = append(columnNotes(o), notes...)
		report.Verdicts = verdicts
		report.GoalNotes = goalNotes
	}
	if rep != nil {
		report.Replication = rep
		if rep.Skipped == "" {
			report.ReplicationNotes = replicationNotes(o, *rep)
		}
	}

	var md strings.Builder
	if err := results.WriteMarkdown(&md, report, measured); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "report.md"), []byte(md.String()), 0o644); err != nil {
		return fmt.Errorf("writing the markdown report: %w", err)
	}
	return nil
}

// goals are the performance goals the report checks (issue 14): at 1,000 rows, for every kind
// of client and number of connections, /cache with the Redis tier alone at 5× /sample, and
// with the near-cache at 0.9 of the ceiling. The Redis tier's goal at one connection is shown
// beside what the ceiling+redis reaches: there no Redis tier can beat a round trip carrying the
// bytes it serves.
var goals = []results.Goal{
	{Rows: 1000, Target: "/cache redis", Ref: results.Direct, Min: 5, Bound: results.RedisCeiling, BoundConns: 1},
	{Rows: 1000, Target: "/cache redis+local", Ref: results.Ceiling, Min: 0.9},
}

var goalNotes = []string{
	"**bound**: at one connection, the same ratio for the ceiling+redis: the least any Redis tier can do on a hit (the service's router and middleware, and one GET of the bytes it sends through the service's own Redis client). With one connection no read can share another's round trip, so where the bound falls short of the goal too, the goal is out of reach on this machine for any cache whose hits fetch their bytes from Redis, and `/cache redis` over the ceiling+redis is what the cache's own logic costs. With more connections the cache's lookup rounds fetch once for all the reads of a key that arrive while one runs, which the ceiling+redis (a GET per answer) does not: there it is no bound, and the table shows `/cache redis` above it.",
}

// byClient names each bar of the chart after its client too, when more than one kind of client
// was measured: the chart groups bars by target name.
func byClient(all []results.Measurement) []results.Measurement {
	out := slices.Clone(all)
	clients := map[string]bool{}
	for _, m := range all {
		clients[m.Client] = true
	}
	if len(clients) < 2 {
		return out
	}
	for i := range out {
		out[i].Target = out[i].Client + " " + out[i].Target
	}
	return out
}

func chartSubtitle(o options, began time.Time) string {
	var names []string
	for _, c := range o.clients {
		names = append(names, c.name)
	}
	enc := strings.Join(names, " and ") + " clients"
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
		"**client**: `gzip` sends `Accept-Encoding: gzip` (browsers, most HTTP libraries), `identity` sends none (curl, wrk, the tutorial's `loadtest`) and is answered plain JSON.",
		"**vs /sample, vs ceiling**: req/s over that of `/sample` and of the ceiling at the same table size, connections and client.",
		"**ceiling**: the service's own router and middleware (`httpapi.NewRouter`), in a process of its own, answering `GET /cache` from a fixed in-memory view holding the bytes (gzip and plain), ETag and cache headers that `/cache` answered at that table size: no Redis, no Postgres, no decompression. Each client kind is measured against it with its own bytes, and before measuring its answer to each is checked byte for byte against the service's.",
		"**ceiling+redis**: the ceiling with the bytes kept in the service's Redis instead of its memory: each answer fetches its client's bytes (the gzip body, or the plain JSON) with one GET through the client the service builds (same pool, timeouts and instrumentation), and nothing else: no generation, no header to check, no breaker. The least a Redis tier can do on a hit; its answers are checked against the service's like the ceiling's.",
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

// makeCommand is how to run this again, as the report records it: make loadtest with the flags
// as ARGS, quoted for the shell that reads ARGS="…", for make, which expands $, and for the shell
// of the recipe. Relative paths in them are the repository root's, as make's are.
func makeCommand(args []string) string {
	if len(args) == 0 {
		return "make loadtest"
	}
	quoted := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "`", "\\`", "$", `\$\$`).Replace(shellJoin(args))
	return `make loadtest ARGS="` + quoted + `"`
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
