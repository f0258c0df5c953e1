package main

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// nearCacheTTL is CACHE_LOCAL_TTL's default: how old a near-cache hit may be.
const nearCacheTTL = 2 * time.Second

// never is the end of a write whose outcome is unknown: it may apply at any time after it began.
const never = math.MaxInt64

// histories turns the records into porcupine operations, one sample at a time (the whole run
// at once would not fit in memory: a list read is a read of every sample).
type histories struct {
	rec *recording
	ids []int64 // every sample that ever existed

	initial   map[int64]string // the seeded samples' titles
	born      map[int64]int64  // when the first write that could have made a sample began
	gone      map[int64]int64  // when an acknowledged delete of a sample had returned
	titleOf   map[string]int64 // which sample each observed title belongs to
	firstSeen map[string]int64 // when the earliest read that saw a title returned

	presentAtEnd, ackedDelete map[int64]bool
	firstUnknownDelete        map[int64]int64 // when the earliest delete of unknown outcome began
	lastFound                 map[int64]int64 // when the latest write that found the sample began
}

func newHistories(rec *recording) *histories {
	h := &histories{rec: rec, initial: map[int64]string{}, born: map[int64]int64{}, gone: map[int64]int64{},
		titleOf: map[string]int64{}, firstSeen: map[string]int64{},
		presentAtEnd: map[int64]bool{}, ackedDelete: map[int64]bool{}, firstUnknownDelete: map[int64]int64{}, lastFound: map[int64]int64{}}
	for _, s := range rec.Initial {
		h.initial[s.ID], h.born[s.ID] = s.Title, 0
	}
	for _, r := range rec.Records {
		for _, s := range r.Seen {
			h.titleOf[s.Title] = s.ID
			if t, ok := h.firstSeen[s.Title]; !ok || r.Ret < t {
				h.firstSeen[s.Title] = r.Ret
			}
		}
		switch {
		case r.Final && r.Kind == "direct" && r.Status == 200:
			// Only what Postgres answered counts: a final read through the cache may serve a
			// view the writer could not retire (it was killed between commit and retirement, a
			// documented limit), and the sample it shows may be gone.
			for _, s := range r.Seen {
				h.presentAtEnd[s.ID] = true
			}
		case r.Kind == "delete" && r.Status == 204:
			h.ackedDelete[r.ID] = true
			if t, ok := h.gone[r.ID]; !ok || r.Ret < t {
				h.gone[r.ID] = r.Ret
			}
		case r.Kind == "delete" && outcomeOf(r) == outcomeUnknown && !notSent(r):
			if t, ok := h.firstUnknownDelete[r.ID]; !ok || r.Call < t {
				h.firstUnknownDelete[r.ID] = r.Call
			}
		}
	}
	for _, r := range rec.Records {
		if r.Kind == "update" && outcomeOf(r) == outcomeOK && r.Call > h.lastFound[r.ID] {
			h.lastFound[r.ID] = r.Call
		}
		if r.Kind != "create" {
			continue
		}
		id := r.ID
		if id == 0 {
			id = h.titleOf[r.Title]
		}
		if _, known := h.born[id]; id != 0 && (!known || r.Call < h.born[id]) {
			h.born[id] = r.Call
		}
	}
	for id := range h.born {
		h.ids = append(h.ids, id)
	}
	slices.Sort(h.ids)
	return h
}

// of returns the operations on sample id, and which of them are the final reads.
func (h *histories) of(id int64) (ops []porcupine.Operation, final []bool) {
	add := func(op porcupine.Operation, isFinal bool) {
		ops, final = append(ops, op), append(final, isFinal)
	}
	_, seeded := h.initial[id]
	add(porcupine.Operation{Input: input{Kind: opInit, Key: id, Value: value{seeded, h.initial[id]}}, Output: output{}, Call: -2, Return: -1}, false)

	var reads []read
	for n, r := range h.rec.Records {
		client := r.Client + 1
		switch r.Kind {
		case "list", "direct", "item":
			if r.Kind == "item" && r.ID != id || r.Status != 200 && !(r.Kind == "item" && r.Status == 404) {
				continue // another sample, or no observation
			}
			i := slices.IndexFunc(r.Seen, func(s sample) bool { return s.ID == id })
			if t, dead := h.gone[id]; i < 0 && (h.born[id] > r.Ret || dead && t < r.Call) {
				continue // absent before it could exist, or after it was certainly gone: trivially right
			}
			observed := value{}
			if i >= 0 {
				observed = value{true, r.Seen[i].Title}
			}
			tier := tierRedis
			if r.Tier == "local" {
				tier = tierLocal
			}
			meta := fmt.Sprintf("%s on %s: %s %s at %s", r.Kind, procName(r.Proc), r.Cache, r.Tier, time.Duration(r.Call))
			reads = append(reads, read{porcupine.Operation{ClientId: client, Input: input{Kind: opRead, Key: id, Proc: r.Proc, Tier: tier},
				Output: output{Value: observed}, Call: r.Call, Return: r.Ret, Metadata: meta}, r.Final, 1})

		case "create", "update", "delete":
			key := r.ID
			if r.Kind == "create" && key == 0 {
				key = h.titleOf[r.Title]
			}
			if key != id {
				continue
			}
			out, call, ret := outcomeOf(r), r.Call, r.Ret
			if out == outcomeUnknown {
				if ret = h.unknownEnd(r); ret == 0 {
					continue
				}
				if r.Kind == "delete" {
					// A delete cannot have applied before a write that found the sample began:
					// ids are never reused. Left to start earlier it is concurrent with every read
					// in between (a list read observes every sample), and porcupine's search over
					// where it applies did not end in ten minutes for one sample.
					call = min(max(call, h.lastFound[id]), ret)
				}
			}
			kind := map[string]opKind{"create": opCreate, "update": opUpdate, "delete": opDelete}[r.Kind]
			meta := fmt.Sprintf("%s on %s: status %d %s at %s", r.Kind, procName(r.Proc), r.Status, r.Err, time.Duration(r.Call))
			// Only a write that changed something retires anything. One that found nothing (404)
			// saw the database, but what it saw may be another write whose invalidation is still
			// on its way, so it binds no read; and one whose outcome is unknown binds none either.
			var fences []input
			if out == outcomeOK {
				fences = h.fences(r, id, n)
			}
			add(porcupine.Operation{ClientId: client, Input: input{Kind: kind, Key: id, Write: n, Value: value{true, r.Title}, Fences: len(fences)},
				Output: output{Outcome: out}, Call: call, Return: ret, Metadata: meta}, false)
			for _, f := range fences {
				at := int64(f.Write) // fences() passes the instant in Write; the write's id is n
				f.Write = n
				add(porcupine.Operation{ClientId: client, Input: f, Output: output{}, Call: at, Return: at, Metadata: meta}, false)
			}
		}
	}
	for _, r := range mergeReads(dropSettledReads(ops, reads)) {
		if r.n > 1 {
			r.op.Metadata = fmt.Sprintf("%s, and %d more reads that overlap it", r.op.Metadata, r.n-1)
		}
		add(r.op, r.final)
	}
	return ops, final
}

// read is a read operation, or several merged into one.
type read struct {
	op    porcupine.Operation
	final bool
	n     int // how many reads it stands for
}

// dropSettledReads leaves out the reads that every order of the writes explains: a read of a
// title whose write had returned before the read began, with no other write of the sample in
// flight between that write's call and the read's return. In every linearization that write has
// applied before the read, and nothing after it, so its title is the current value, which the
// model lets every process and tier read (floors never pass the current value). Such a read
// constrains nothing, and most reads are such reads: between bursts of writes, a sample's
// history is thousands of them.
func dropSettledReads(ops []porcupine.Operation, reads []read) []read {
	var writes []porcupine.Operation
	for _, op := range ops {
		if k := op.Input.(input).Kind; k == opInit || k == opCreate || k == opUpdate || k == opDelete {
			writes = append(writes, op)
		}
	}
	settled := func(r read) bool {
		v := r.op.Output.(output).Value
		if !v.Exists {
			return false
		}
		w := slices.IndexFunc(writes, func(op porcupine.Operation) bool {
			in := op.Input.(input)
			return in.Kind != opDelete && in.Value == v && op.Output.(output).Outcome == outcomeOK
		})
		if w < 0 || writes[w].Return >= r.op.Call {
			return false
		}
		for i, op := range writes {
			if i != w && op.Call <= r.op.Return && op.Return >= writes[w].Call { // ties count as overlaps
				return false
			}
		}
		return true
	}
	return slices.DeleteFunc(reads, settled)
}

// mergeReads merges reads that overlap in time and saw the same title through the same process
// and tier into one read over the intersection of their intervals. A list read observes every
// sample, and a miss storm is a hundred concurrent reads: a sample's history held thousands of
// reads, many of them concurrent, and porcupine, which must consider every subset of concurrent
// operations it could linearize first, left one such sample undecided after eight minutes.
//
// The merge neither hides a violation nor makes one. Through one process and tier, the points
// of a linearization where a title may be read form an interval: it becomes readable when its
// write applies, and stops being readable when that process and tier's floor passes it; floors
// only rise, and a title is written once. Two overlapping reads placed at p1 <= p2 in a
// linearization can therefore be replaced by one read over the intersection of their
// intervals, placed after p1 and after every operation that had to precede the later call,
// which is at or before p2 (every such operation returned before the earlier read ended, so
// before every operation that had to follow it). "Absent" has no such interval (a sample is
// absent before its create and after its delete), so those reads are kept apart.
//
// Both reductions rest on two properties of the model in model.go: the current value is always
// readable, and a title is readable on one interval per process and tier. A change to the model
// that breaks either must change them too; TestMergingReadsKeepsTheVerdict is there to tell.
func mergeReads(reads []read) []read {
	type group struct {
		proc, tier int
		val        value
		final      bool
	}
	slices.SortStableFunc(reads, func(a, b read) int { return cmp.Compare(a.op.Call, b.op.Call) })
	open := map[group]int{} // the merged read each group may still extend, by index in out
	var out []read
	for _, r := range reads {
		in, o := r.op.Input.(input), r.op.Output.(output)
		if !o.Value.Exists {
			out = append(out, r)
			continue
		}
		g := group{in.Proc, in.Tier, o.Value, r.final}
		if k, ok := open[g]; ok && r.op.Call < out[k].op.Return {
			m := &out[k]
			m.op.Call, m.op.Return, m.n = r.op.Call, min(m.op.Return, r.op.Return), m.n+r.n
			continue
		}
		open[g] = len(out)
		out = append(out, r)
	}
	return out
}

// fences are the instants from which reads may no longer see what a write replaced, each with
// the floors it raises (the instant is returned in Write). With the near-cache off: every read,
// once the write returned. With it on: Redis and the writing process's near-cache then, another
// process's near-cache CACHE_LOCAL_TTL later. A deferred invalidation holds another process's
// fences until the writer has delivered it.
func (h *histories) fences(r record, id int64, n int) []input {
	at, others := r.Ret+1, r.Ret+1
	if h.rec.Deferred[r.Trace] {
		others = h.rec.deliveredAfter(r.Proc, r.Ret)
	}
	fence := func(at int64, proc, tier int) input {
		return input{Kind: opFence, Key: id, Write: int(at), Proc: proc, Tier: tier}
	}
	if !h.rec.NearCache {
		if others == at {
			return []input{fence(at, -1, -1)}
		}
		return []input{fence(at, r.Proc, -1), fence(others, 1-r.Proc, -1)}
	}
	late := others
	if late < never-1 {
		late += nearCacheTTL.Nanoseconds()
	}
	return []input{fence(at, r.Proc, -1), fence(others, 1-r.Proc, tierRedis), fence(late, 1-r.Proc, tierLocal)}
}

// unknownEnd bounds a write whose outcome is unknown, or returns 0 if it certainly did not
// happen (or constrains nothing). Such a write may apply at any time after it began; with no
// end it is concurrent with everything after it, which the checker pays for at every step. So
// what the history itself settles is settled here, soundly.
func (h *histories) unknownEnd(r record) int64 {
	switch {
	case notSent(r):
		return 0 // the connection was refused: the request never left
	case r.Kind != "delete": // its title is unique: whether and by when it happened shows
		seen, ok := h.firstSeen[r.Title]
		if !ok {
			return 0 // no read saw it: it constrains nothing
		}
		return seen // it applied before the first read that saw it returned
	case h.presentAtEnd[r.ID] || h.ackedDelete[r.ID]:
		// Ids are never reused: had it applied, the sample would be gone for good, and an
		// acknowledged delete would have found nothing.
		return 0
	case r.Call != h.firstUnknownDelete[r.ID]:
		// The deletes of a sample are interchangeable: only the first to apply changes anything,
		// and one of unknown outcome has no fence. So a sample's deletes of unknown outcome are
		// one: the earliest, which may apply at any time after it began, as may any of them.
		// Left apart, each is concurrent with everything after it, and porcupine's search over
		// where each applies grew past ten minutes for one sample with two.
		return 0
	}
	if t, ok := h.firstAbsent(r.ID, r.Call); ok {
		return t // the only delete that can explain the first absence after it
	}
	return never
}

// firstAbsent is when the earliest read that began after at and saw id absent returned.
func (h *histories) firstAbsent(id, at int64) (int64, bool) {
	best, found := int64(0), false
	for _, r := range h.rec.Records {
		absent := r.Kind == "item" && r.ID == id && r.Status == 404 ||
			(r.Kind == "list" || r.Kind == "direct") && r.Status == 200 && !slices.ContainsFunc(r.Seen, func(s sample) bool { return s.ID == id })
		if r.Call > at && absent && (!found || r.Ret < best) {
			best, found = r.Ret, true
		}
	}
	return best, found
}

// outcomeOf is what a write's response says happened.
func outcomeOf(r record) outcome {
	switch {
	case r.Status >= 200 && r.Status < 300:
		return outcomeOK
	case r.Status == 404:
		return outcomeNotFound
	}
	return outcomeUnknown // an error, a cancellation, a dead process
}

// notSent reports a request that certainly never reached the service.
func notSent(r record) bool {
	return r.Status == 0 && strings.Contains(r.Err, "connect: connection refused")
}

// deliveredAfter is when process p was first seen with nothing left to deliver after at, or
// never if it was killed first (what it had pending is lost) or never was.
func (rec *recording) deliveredAfter(p int, at int64) int64 {
	for _, s := range rec.Pending {
		if s.Proc != p || s.At <= at || s.Pending != 0 {
			continue
		}
		for _, f := range rec.Faults {
			if f.Kind == "service-kill" && f.Proc == p && f.Start > at && f.Start < s.At {
				return never - 1
			}
		}
		return s.At
	}
	return never - 1
}

func procName(p int) string { return string(rune('a' + p)) }

// Checking budgets. A history that keeps the promise is mostly decided in milliseconds, but a
// sample with many writes of unknown outcome can take seconds, and ten times that on a busy
// machine (a 3-minute soak's samples, undecided within 10 s each while other tests ran, were all
// decided when checked again later). One that breaks it makes porcupine search every order of
// the operations around the break before it gives up, which can take minutes and gigabytes. A
// sample not decided within its budget (-check-budget) is reported as undecided, which fails a
// soak as surely as a violation, and after a few violations the rest is not checked: they are
// evidence enough.
const maxViolations = 5

// check runs porcupine over each sample's history and assembles the report.
func check(o options, rec *recording) *report {
	rep := &report{opts: o, rec: rec}
	h := newHistories(rec)
	started := time.Now()
	for n, id := range h.ids {
		if len(rep.violations)+len(rep.lost) >= maxViolations {
			rep.unchecked = len(h.ids) - n
			break
		}
		ops, final := h.of(id)
		rep.ops += len(ops)
		t0 := time.Now()
		res, info := porcupine.CheckOperationsVerbose(model, ops, o.checkBudget)
		if o.verbose {
			fmt.Fprintf(os.Stderr, "sample %d: %d operations, %s in %s\n", id, len(ops), res, time.Since(t0).Round(time.Millisecond))
		}
		switch res {
		case porcupine.Ok:
			continue
		case porcupine.Unknown:
			rep.unknown = append(rep.unknown, id)
			continue
		}
		// Is it the final state that breaks it (an acknowledged write not in the database), or a
		// read during the run?
		var before []porcupine.Operation
		for i, op := range ops {
			if !final[i] {
				before = append(before, op)
			}
		}
		if porcupine.CheckOperationsTimeout(model, before, o.checkBudget) == porcupine.Ok {
			rep.lost = append(rep.lost, id)
		} else {
			rep.violations = append(rep.violations, id)
		}
		path := filepath.Join(o.out, fmt.Sprintf("violation-sample-%d.html", id))
		if err := porcupine.VisualizePath(model, info, path); err == nil {
			rep.timelines = append(rep.timelines, path)
		}
	}
	rep.checkTime = time.Since(started)
	return rep
}

// sumSeries adds the values of a Prometheus text series whose labels contain match.
func sumSeries(text, name string, match ...string) float64 {
	var sum float64
lines:
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		for _, m := range match {
			if !strings.Contains(line, m) {
				continue lines
			}
		}
		fields := strings.Fields(line)
		if v, err := strconv.ParseFloat(fields[len(fields)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

func gunzip(b []byte) ([]byte, error) {
	r, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}
