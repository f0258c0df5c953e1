package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// fault is one injected failure and when it lasted.
type fault struct {
	Kind       string
	Proc       int // service-kill: which process
	Start, End int64
}

// stormResult is one miss storm: when, on which process, and how many Postgres loads it cost.
type stormResult struct {
	Start, End int64
	Proc       int
	Loads      float64
	Counts     map[string]float64 `json:",omitempty"` // how the process's other counts of the list moved (listCounts)
}

// pendingSample is what one process's /readyz said about undelivered invalidations.
type pendingSample struct {
	At      int64
	Proc    int
	Pending int
}

// recording is everything a run observed; it is saved as recording.json, and "-check FILE"
// checks a saved one again.
type recording struct {
	Seed      uint64
	Duration  time.Duration
	Clients   int
	NearCache bool
	Initial   []sample
	Records   []record
	Faults    []fault
	Pending   []pendingSample
	Storms    []stormResult
	Deferred  map[string]bool // trace ids of writes whose invalidation the service deferred
	Calm      time.Duration   // how long after a fault a storm counted as calm (options.calm)
	Ended     int64           // when the final reads began
}

func drive(ctx context.Context, o options, env *environment, log io.Writer) (*recording, error) {
	seedCmd := exec.CommandContext(ctx, o.bin, "seed", "-n", fmt.Sprint(o.items), "-replace")
	seedCmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env.services[0].env...)
	if out, err := seedCmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("cacheside seed: %v\n%s", err, out)
	}
	h := &history{base: time.Now(), has: map[int64]bool{}}
	rec := &recording{Seed: o.seed, Duration: o.duration, Clients: o.clients, NearCache: o.nearCache, Deferred: map[string]bool{}, Calm: o.calm}
	first := (&worker{services: env.services, h: h, rng: mrand.New(mrand.NewPCG(o.seed, 0))}).read(ctx, 0, "direct", 0)
	if first.Status != 200 {
		return nil, fmt.Errorf("reading the seeded samples: %d %s", first.Status, first.Err)
	}
	rec.Initial = first.Seen
	for _, s := range first.Seen {
		h.know(s.ID)
	}
	h.base = time.Now() // operations are timed from here; the initial state precedes them all

	runCtx, stopRun := context.WithTimeout(ctx, o.duration)
	defer stopRun()
	var wg sync.WaitGroup
	gate := &sync.RWMutex{}
	for i := range o.clients {
		w := &worker{id: i, rng: mrand.New(mrand.NewPCG(o.seed, uint64(i+1))), services: env.services, h: h, items: o.items, gate: gate}
		wg.Go(func() { w.run(runCtx) })
	}
	var mu sync.Mutex
	var calm sync.Mutex // held by the chaos loop while it injects a fault, and by a calm storm
	var lastFault atomic.Int64
	// Miss storms, every other one calm: no fault during it, and none for o.calm before it, which
	// outlasts the breaker's cooldown, so its lookups reach Redis (a storm right after a Redis
	// fault would bypass it while the breaker that fault opened is still open).
	wg.Go(func() {
		w := &worker{id: o.clients, rng: mrand.New(mrand.NewPCG(o.seed, 1000)), services: env.services, h: h, gate: gate}
		for n := 0; sleep(runCtx, 5*time.Second); n++ {
			if n%2 == 0 {
				calm.Lock()
				for h.now()-lastFault.Load() < o.calm.Nanoseconds() && sleep(runCtx, 50*time.Millisecond) {
				}
			}
			st := stormResult{Proc: w.rng.IntN(len(env.services)), Start: h.now()}
			loads, counts, err := storm(runCtx, w, st.Proc, o.stormN)
			st.Loads, st.Counts, st.End = loads, counts, h.now()
			if n%2 == 0 {
				calm.Unlock()
			}
			if err == nil {
				mu.Lock()
				rec.Storms = append(rec.Storms, st)
				mu.Unlock()
			}
		}
	})
	wg.Go(func() { // what each process still has to deliver
		for sleep(runCtx, 100*time.Millisecond) {
			for i, s := range env.services {
				at := h.now()
				if n := s.pending(); n >= 0 {
					mu.Lock()
					rec.Pending = append(rec.Pending, pendingSample{At: at, Proc: i, Pending: n})
					mu.Unlock()
				}
			}
		}
	})
	chaos := mrand.New(mrand.NewPCG(o.seed, 2000))
	for sleep(runCtx, time.Second+time.Duration(chaos.IntN(2000))*time.Millisecond) {
		calm.Lock()
		f := fault{Kind: []string{"redis-restart", "redis-freeze", "postgres-restart", "service-kill"}[chaos.IntN(4)], Start: h.now()}
		var err error
		switch f.Kind {
		case "redis-restart":
			if err = env.redis.Kill(); err == nil {
				err = env.redis.Start(ctx)
			}
		case "redis-freeze": // past REDIS_TIMEOUT, and sometimes past CACHE_INVALIDATION_TIMEOUT
			env.redis.Pause()
			sleep(ctx, 400*time.Millisecond+time.Duration(chaos.IntN(1100))*time.Millisecond) // the fault's length
			env.redis.Resume()
		case "postgres-restart":
			if err = env.pg.Stop(); err == nil {
				err = env.pg.Start(ctx)
			}
		case "service-kill":
			f.Proc = chaos.IntN(len(env.services))
			env.services[f.Proc].kill()
			err = env.services[f.Proc].start(ctx)
		}
		f.End = h.now()
		lastFault.Store(f.End)
		calm.Unlock()
		fmt.Fprintf(log, "fault %s (process %d) from %s to %s\n", f.Kind, f.Proc, time.Duration(f.Start), time.Duration(f.End))
		mu.Lock()
		rec.Faults = append(rec.Faults, f)
		mu.Unlock()
		if err != nil {
			stopRun()
			wg.Wait()
			return nil, fmt.Errorf("injecting %s: %w", f.Kind, err)
		}
	}
	wg.Wait()

	// Settle: no fault now; wait for both processes to have delivered what they deferred, then
	// read everything once more, through both: the final state must hold every acknowledged
	// write.
	deadline := time.Now().Add(30 * time.Second)
	for i, s := range env.services {
		for s.pending() != 0 && time.Now().Before(deadline) {
			if !sleep(ctx, 100*time.Millisecond) {
				break
			}
		}
		if n := s.pending(); n != 0 {
			fmt.Fprintf(log, "process %d still has %d invalidations to deliver after 30 s; reading the final state anyway\n", i, n)
		}
	}
	rec.Ended = h.now()
	fin := &worker{id: o.clients + 1, rng: mrand.New(mrand.NewPCG(o.seed, 3000)), services: env.services, h: h}
	h.mu.Lock()
	ids := append([]int64(nil), h.ids...)
	h.mu.Unlock()
	for p := range env.services {
		for _, kind := range []string{"direct", "list"} {
			r := fin.read(ctx, p, kind, 0)
			r.Final = true
			h.add(r)
		}
		for _, id := range ids {
			r := fin.read(ctx, p, "item", id)
			r.Final = true
			h.add(r)
		}
	}
	rec.Records = h.recs
	for _, s := range env.services {
		collectDeferrals(s.logPath, rec.Deferred)
	}
	return rec, nil
}

// sleep waits d, or less if ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return ctx.Err() == nil
	}
}

// collectDeferrals finds, in a service's log, the writes whose invalidation was deferred: the
// line carries the request's trace id.
func collectDeferrals(path string, into map[string]bool) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if !strings.Contains(sc.Text(), "invalidation deferred") {
			continue
		}
		var line struct {
			TraceID string `json:"trace_id"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.TraceID != "" {
			into[line.TraceID] = true
		}
	}
}
