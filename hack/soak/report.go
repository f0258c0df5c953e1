package main

import (
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

// report is what a soak found.
type report struct {
	opts       options
	rec        *recording
	ops        int
	violations []int64 // samples whose history breaks the read-after-write promise
	lost       []int64 // samples whose final state lacks an acknowledged write
	unknown    []int64 // samples the checker could not decide in time
	timelines  []string
	checkTime  time.Duration
	unchecked  int // samples not checked after maxViolations
}

func (r *report) ok() bool {
	return len(r.violations) == 0 && len(r.lost) == 0 && len(r.unknown) == 0 && len(r.serverErrorsOutsideFaults()) == 0 &&
		len(r.refused()) == 0
}

// refused are the requests answered 401. Every request carries the services' token, so one means
// authentication broke; the writes it refused would otherwise pass as writes of unknown outcome.
func (r *report) refused() []record {
	var out []record
	for _, rec := range r.rec.Records {
		if rec.Status == 401 {
			out = append(out, rec)
		}
	}
	return out
}

// inFault reports whether [call, ret] overlaps a fault or the grace after it: a 5xx there is
// the fault's.
func (r *report) inFault(call, ret int64) bool { return r.overlapsFault(call, ret, r.opts.grace) }

// calmStorm reports whether a storm over [start, end] was calm: no fault during it, nor for the
// calm window (the breaker's cooldown and a margin) before it.
func (r *report) calmStorm(start, end int64) bool { return !r.overlapsFault(start, end, r.opts.calm) }

// overlapsFault reports whether [call, ret] overlaps a fault or the span after it.
func (r *report) overlapsFault(call, ret int64, after time.Duration) bool {
	for _, f := range r.rec.Faults {
		if call <= f.End+after.Nanoseconds() && ret >= f.Start {
			return true
		}
	}
	return false
}

func (r *report) serverErrorsOutsideFaults() []record {
	var out []record
	for _, rec := range r.rec.Records {
		if rec.Status >= 500 && !r.inFault(rec.Call, rec.Ret) {
			out = append(out, rec)
		}
	}
	return out
}

func (r *report) print(w io.Writer) {
	rec := r.rec
	fmt.Fprintf(w, "\nseed %d (replay: go run ./hack/soak -seed %d -d %s -clients %d%s)\n", r.opts.seed, r.opts.seed, r.opts.duration, r.opts.clients,
		map[bool]string{true: " -near-cache", false: ""}[r.opts.nearCache])

	outcomes := map[string]map[string]int{}
	kinds := []string{"list", "item", "direct", "update", "create", "delete"}
	for _, k := range kinds {
		outcomes[k] = map[string]int{}
	}
	deferred, widened := 0, 0
	for _, x := range rec.Records {
		outcomes[x.Kind][outcomeClass(x)]++
		if rec.Deferred[x.Trace] {
			deferred++
		}
		if x.Tier == "local" {
			widened++
		}
	}
	fmt.Fprintf(w, "\noperations (%d):\n", len(rec.Records))
	for _, k := range kinds {
		var parts []string
		for class, n := range outcomes[k] {
			parts = append(parts, fmt.Sprintf("%s %d", class, n))
		}
		sort.Strings(parts)
		fmt.Fprintf(w, "  %-7s %s\n", k, strings.Join(parts, ", "))
	}

	byKind := map[string]int{}
	for _, f := range rec.Faults {
		byKind[f.Kind]++
	}
	fmt.Fprintf(w, "\nfaults injected (%d):", len(rec.Faults))
	for _, k := range []string{"redis-freeze", "redis-restart", "postgres-restart", "service-kill"} {
		fmt.Fprintf(w, " %s %d,", k, byKind[k])
	}
	fmt.Fprintf(w, " and %d writes cancelled by their client mid-request\n", count(rec.Records, func(x record) bool { return x.Cancelled }))

	fmt.Fprintf(w, "\nlatency (ms), p50 / p99, outside | inside fault windows (a fault and %s after it):\n", r.opts.grace)
	for _, k := range kinds {
		var out, in []float64
		for _, x := range rec.Records {
			if x.Kind != k || x.Status == 0 || x.Final {
				continue
			}
			ms := float64(x.Ret-x.Call) / 1e6
			if r.inFault(x.Call, x.Ret) {
				in = append(in, ms)
			} else {
				out = append(out, ms)
			}
		}
		fmt.Fprintf(w, "  %-7s %s | %s\n", k, percentiles(out), percentiles(in))
	}
	var calm, faulty []float64
	bypassed := 0
	for _, st := range rec.Storms {
		if !r.calmStorm(st.Start, st.End) {
			faulty = append(faulty, st.Loads)
			continue
		}
		calm = append(calm, st.Loads)
		if st.Counts["lookup bypass"] > 0 {
			bypassed++
		}
	}
	fmt.Fprintf(w, "\nmiss storms (%d concurrent reads of a just-retired list on one process, other clients held off), Postgres loads of the list:\n", r.opts.stormN)
	fmt.Fprintf(w, "  calm (no fault for %s before):  %s\n  near or during a fault:         %s\n", r.opts.calm, spread(calm), spread(faulty))
	for _, st := range rec.Storms {
		if r.calmStorm(st.Start, st.End) {
			fmt.Fprintf(w, "  calm storm on %s: %.0f loads; %s\n", procName(st.Proc), st.Loads, countsLine(st.Counts))
		}
	}
	fmt.Fprintf(w, "  calm storms whose lookups bypassed Redis: %d of %d\n", bypassed, len(calm))
	fmt.Fprintln(w, "  (the calm window is the services' CACHE_BREAKER_COOLDOWN plus a margin, so a breaker a Redis fault opened")
	fmt.Fprintln(w, "  has closed again; a calm storm that still bypassed ran while an invalidation was deferred, or after a failed")
	fmt.Fprintln(w, "  half-open probe reopened the breaker: bypass loads are shared in rounds, not leased, one per round)")
	fmt.Fprintln(w, "  (one load per storm, plus one per retirement landing meanwhile: the second retirement of writes whose outcome was")
	fmt.Fprintln(w, "  unknown, DATABASE_TIMEOUT + 1 s after them, and redelivered invalidations; a killed process restarts its count)")
	fmt.Fprintf(w, "\nchecked %d operations with porcupine in %s, per sample, allowing the documented limits: writes whose\n", r.ops, r.checkTime.Round(time.Millisecond))
	fmt.Fprintf(w, "invalidation was deferred (%d) bind the other process only once delivered; near-cache hits (%d) on the other\n", deferred, widened)
	fmt.Fprintf(w, "process may lag a write by CACHE_LOCAL_TTL (%s)\n", nearCacheTTL)
	errs := r.serverErrorsOutsideFaults()
	fmt.Fprintf(w, "violations: %d   lost writes: %d   undecided: %d   5xx outside fault windows: %d\n", len(r.violations), len(r.lost), len(r.unknown), len(errs))
	if refused := r.refused(); len(refused) > 0 {
		fmt.Fprintf(w, "refused with 401 though the token was sent: %d (first: %s on %s)\n", len(refused), refused[0].Kind, procName(refused[0].Proc))
	}
	for _, key := range r.violations {
		fmt.Fprintf(w, "  sample %d: a read saw data older than a write that had returned\n", key)
	}
	for _, key := range r.unknown {
		fmt.Fprintf(w, "  sample %d: not decided within %s\n", key, r.opts.checkBudget)
	}
	if len(r.unknown) > 0 {
		fmt.Fprintf(w, "  (check again with more time: go run ./hack/soak -check %s -check-budget 10m)\n", filepath.Join(r.opts.out, "recording.json"))
	}
	if r.unchecked > 0 {
		fmt.Fprintf(w, "  %d more samples not checked after %d broken ones\n", r.unchecked, maxViolations)
	}
	for _, key := range r.lost {
		fmt.Fprintf(w, "  sample %d: the final state lacks an acknowledged write\n", key)
	}
	for _, e := range errs[:min(len(errs), 10)] {
		fmt.Fprintf(w, "  %s on %s at %s: %d\n", e.Kind, procName(e.Proc), time.Duration(e.Call), e.Status)
	}
	for _, t := range r.timelines {
		fmt.Fprintf(w, "  timeline: %s\n", t)
	}
	if r.ok() {
		fmt.Fprintln(w, "ok: every read reflected every write that had returned before it began; no acknowledged write was lost")
	} else {
		fmt.Fprintln(w, "FAILED")
	}
}

func spread(loads []float64) string {
	if len(loads) == 0 {
		return "none"
	}
	slices.Sort(loads)
	return fmt.Sprintf("%d storms, median %.0f, max %.0f", len(loads), loads[len(loads)/2], loads[len(loads)-1])
}

func outcomeClass(x record) string {
	switch {
	case x.Cancelled && x.Status == 0:
		return "cancelled"
	case x.Status == 0:
		return "no response"
	default:
		return fmt.Sprint(x.Status)
	}
}

func percentiles(ms []float64) string {
	if len(ms) == 0 {
		return "    -"
	}
	slices.Sort(ms)
	return fmt.Sprintf("%5.1f / %6.1f", ms[len(ms)/2], ms[min(len(ms)-1, len(ms)*99/100)])
}

func count(rs []record, f func(record) bool) int {
	n := 0
	for _, r := range rs {
		if f(r) {
			n++
		}
	}
	return n
}

// countsLine lists a storm's moved counts in a stable order.
func countsLine(counts map[string]float64) string {
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %.0f", k, counts[k])
	}
	return strings.Join(parts, ", ")
}
