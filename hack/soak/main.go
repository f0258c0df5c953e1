// Command soak runs two cacheside processes on one Postgres and one Redis, drives them with
// clients that read and write through both while a chaos loop restarts and freezes Redis,
// restarts Postgres, kills a service process and clients cancel writes mid-flight, and then
// checks the whole history against the cache's promises with porcupine:
//
//	a read that starts after a write has returned reflects that write or a later one;
//	an acknowledged write is never lost.
//
// It prints what it did and found, writes porcupine's timeline of any violation to its output
// folder, and exits 1 if a promise was broken or a 5xx came outside a fault window. The chaos
// schedule and the clients' choices come from -seed, printed, so a run can be replayed (the
// timing of course differs). It is a tool module of its own, so porcupine stays out of the
// service's go.mod.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cacheside/cacheside/hack/servers"
)

type options struct {
	duration    time.Duration
	clients     int
	seed        uint64
	out         string
	bin         string
	race        bool
	tags        string
	nearCache   bool
	items       int
	stormN      int
	grace       time.Duration
	calmMargin  time.Duration
	calm        time.Duration // the breaker's cooldown + calmMargin: set once the services' cooldown is known
	verbose     bool
	checkBudget time.Duration
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "d", 3*time.Minute, "how long the clients and the chaos run")
	flag.IntVar(&o.clients, "clients", 8, "concurrent clients")
	flag.Uint64Var(&o.seed, "seed", 0, "seed of the chaos schedule and the clients (0: from the clock)")
	flag.StringVar(&o.out, "out", "", "output folder: logs, report, violation timelines (default .run/soak)")
	flag.StringVar(&o.bin, "bin", "", "a cacheside binary to run (default: build one from this checkout)")
	flag.BoolVar(&o.race, "race", false, "build the service with the race detector")
	flag.StringVar(&o.tags, "tags", "", "build tags for the service (the checker's own test restores a bug with one)")
	flag.BoolVar(&o.nearCache, "near-cache", false, "run the services with CACHE_LOCAL_ENABLED=true")
	flag.IntVar(&o.items, "items", 12, "samples in the table at the start")
	flag.IntVar(&o.stormN, "storm", 100, "concurrent reads of each miss storm")
	flag.DurationVar(&o.grace, "grace", 3*time.Second, "how long after a fault a 5xx still counts as caused by it")
	flag.DurationVar(&o.calmMargin, "calm-margin", time.Second,
		"a calm storm starts the services' CACHE_BREAKER_COOLDOWN plus this after the last fault, once a breaker a Redis fault opened has closed again")
	flag.BoolVar(&o.verbose, "v", false, "say how long each sample's check takes")
	flag.DurationVar(&o.checkBudget, "check-budget", time.Minute, "how long the checker may take over one sample before calling it undecided")
	recorded := flag.String("check", "", "check a saved recording.json again instead of running")
	flag.Parse()

	// Interrupted (Ctrl-C, or SIGTERM to make or `go run`, which reaches us through
	// DieWithParent), the soak stops its services and servers and reports nothing.
	servers.DieWithParent()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var rep *report
	var err error
	if *recorded != "" {
		rep, err = recheck(o, *recorded, os.Stdout)
	} else {
		rep, err = run(ctx, o, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	if !rep.ok() {
		os.Exit(1)
	}
}

// run does the whole soak and returns its report, which it also prints to w.
func run(ctx context.Context, o options, w io.Writer) (*report, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	if o.out == "" {
		o.out = filepath.Join(root, ".run", "soak")
	}
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}
	// A soak killed hard leaves its servers running: stop them before taking the folder over.
	if err := servers.Clean(o.out, io.Discard); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(o.out, "soak.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	if o.bin == "" {
		o.bin = filepath.Join(o.out, "cacheside")
		args := []string{"build", "-o", o.bin}
		if o.race {
			args = append(args, "-race")
		}
		if o.tags != "" {
			args = append(args, "-tags", o.tags)
		}
		build := exec.Command("go", append(args, "./app")...)
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	fmt.Fprintf(w, "soak: seed %d, %s, %d clients, near-cache %v, rate limits off (one loopback client), output %s\n", o.seed, o.duration, o.clients, o.nearCache, o.out)

	env, err := startEnvironment(ctx, o, log)
	if err != nil {
		return nil, err
	}
	defer env.close()
	o.calm = env.breakerCooldown + o.calmMargin
	fmt.Fprintf(w, "soak: calm storms start %s after the last fault: the services' CACHE_BREAKER_COOLDOWN (%s) + %s, so a breaker a Redis fault opened is closed again\n",
		o.calm, env.breakerCooldown, o.calmMargin)
	rec, err := drive(ctx, o, env, log)
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("interrupted: %w", context.Cause(ctx))
	}
	if err != nil {
		return nil, err
	}
	for _, s := range env.services {
		s.stop()
	}
	b, err := json.Marshal(rec)
	if err == nil {
		err = os.WriteFile(filepath.Join(o.out, "recording.json"), b, 0o644)
	}
	if err != nil {
		return nil, err
	}
	rep := check(o, rec)
	rep.print(w)
	return rep, nil
}

// recheck checks a saved recording again, with the options it was made with where they matter.
func recheck(o options, path string, w io.Writer) (*report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rec recording
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, err
	}
	o.out = filepath.Dir(path)
	o.seed, o.duration, o.clients, o.nearCache = rec.Seed, rec.Duration, rec.Clients, rec.NearCache
	o.calm = rec.Calm
	if o.calm == 0 { // a recording from before calm windows were recorded: they were the grace
		o.calm = o.grace
	}
	rep := check(o, &rec)
	rep.print(w)
	return rep, nil
}

// repoRoot is the checkout this tool module lives in (two levels up from its go.mod).
func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	root := filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "..", "..")
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !strings.HasPrefix(string(b), "module github.com/cacheside/cacheside\n") {
		return "", fmt.Errorf("run the soak from hack/soak in a cacheside checkout")
	}
	return filepath.Abs(root)
}
