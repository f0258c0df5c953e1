package main

import (
	"fmt"
	"hash/maphash"
	"slices"
	"strings"

	"github.com/anishathalye/porcupine"
)

// The promise under test, per sample (one partition each): a read that starts after a write has
// returned reflects that write or a later one; an acknowledged write is never lost.
//
// That is weaker than linearizability, on purpose: between a write's commit and its
// invalidation a cached read and a direct read may disagree, and reads during a write may see
// the old and the new value in any order. So a write is an apply, somewhere in its interval, and
// fences, instants from which reads may no longer see what it replaced. The state holds every
// value applied since the oldest fence still in force; a read may return any of them that is not
// older than its own floor. There is a floor per process and tier, because the promise differs:
// with the near-cache on, a write drops its own process's entries before it returns, while
// another process's near-cache may serve the replaced value for CACHE_LOCAL_TTL (its documented
// bound), and a deferred invalidation holds other processes' fences until it is delivered.
//
// A write whose outcome is unknown (an error, a cancelled request, a killed process) has no
// fence: it may apply at any time after it began, or never. Nor has a write that found nothing
// to change (404): it retires nothing, and the change it saw, another write's, may still be
// being retired.

// Tiers a read can be served from, for floors: Redis (or the source itself), and a process's
// near-cache.
const (
	tierRedis = iota
	tierLocal
	tiers
)

const processes = 2

// value is a sample's state: absent, or present with a title (titles are unique per write).
type value struct {
	Exists bool
	Title  string
}

func (v value) String() string {
	if !v.Exists {
		return "absent"
	}
	return fmt.Sprintf("%q", v.Title)
}

type opKind int

const (
	opInit   opKind = iota // the sample's state before the run
	opRead                 // output: the value observed
	opCreate               // input: the title
	opUpdate               // input: the title
	opDelete
	opFence // a write's return
)

// outcome of a write.
type outcome int

const (
	outcomeOK outcome = iota
	outcomeNotFound
	outcomeUnknown
)

type input struct {
	Kind  opKind
	Key   int64 // the sample's id
	Write int   // the write an apply or fence belongs to
	Value value // opInit: the initial value; writes: what they write
	// opRead: the process and tier that served it. opFence: the floors it raises (-1: all).
	Proc, Tier int
	// opCreate, opUpdate, opDelete: how many fences follow.
	Fences int
}

type output struct {
	Value   value // opRead
	Outcome outcome
}

// entry is a value a read may return, and the order it was applied in.
type entry struct {
	seq int
	val value
}

type state struct {
	visible []entry               // oldest first; the last is the current value
	next    int                   // seq of the next applied value
	marks   []mark                // writes applied whose fences have not all come
	floors  [processes][tiers]int // the oldest seq each process and tier may still serve
	inited  bool
}

// mark remembers, for a write's fences, the value that was current once it applied.
type mark struct {
	write, seq, fences int
}

func step(s0 any, in any, out any) (bool, any) {
	s, i, o := s0.(state), in.(input), out.(output)
	if i.Kind == opInit {
		if s.inited {
			return false, s
		}
		return true, state{visible: []entry{{0, i.Value}}, next: 1, inited: true}
	}
	if !s.inited {
		return false, s
	}
	current := s.visible[len(s.visible)-1]
	switch i.Kind {
	case opRead:
		floor := s.floors[i.Proc][i.Tier]
		for _, e := range s.visible {
			if e.seq >= floor && e.val == o.Value {
				return true, s
			}
		}
		return false, s
	case opFence:
		k := slices.IndexFunc(s.marks, func(m mark) bool { return m.write == i.Write })
		if k < 0 {
			return false, s // not applied yet
		}
		n := s
		n.marks = slices.Clone(s.marks)
		m := &n.marks[k]
		for p := range processes {
			for t := range tiers {
				if (i.Proc < 0 || i.Proc == p) && (i.Tier < 0 || i.Tier == t) {
					n.floors[p][t] = max(n.floors[p][t], m.seq)
				}
			}
		}
		if m.fences--; m.fences == 0 {
			n.marks = slices.Delete(n.marks, k, k+1)
		}
		oldest := n.floors[0][0]
		for p := range processes {
			for t := range tiers {
				oldest = min(oldest, n.floors[p][t])
			}
		}
		n.visible = nil
		for _, e := range s.visible {
			if e.seq >= oldest {
				n.visible = append(n.visible, e)
			}
		}
		return true, n
	}
	// A write: does its outcome fit the current value, and what does it leave?
	var applies bool // it changes the value (else it found nothing to change)
	switch i.Kind {
	case opCreate:
		if current.val.Exists {
			return false, s
		}
		applies = true
	case opUpdate, opDelete:
		applies = current.val.Exists
	}
	switch {
	case o.Outcome == outcomeOK && !applies, o.Outcome == outcomeNotFound && applies:
		return false, s
	}
	n := s
	seq := current.seq
	if applies {
		v := value{}
		if i.Kind != opDelete {
			v = value{Exists: true, Title: i.Value.Title}
		}
		n.visible = append(slices.Clone(s.visible), entry{s.next, v})
		seq, n.next = s.next, s.next+1
	}
	if o.Outcome != outcomeUnknown && i.Fences > 0 {
		n.marks = append(slices.Clone(s.marks), mark{write: i.Write, seq: seq, fences: i.Fences})
	}
	return true, n
}

var seed = maphash.MakeSeed()

// model is the sequential specification of one sample; the soak partitions by sample itself.
var model = porcupine.Model{
	Init: func() any { return state{} },
	Step: step,
	Equal: func(a, b any) bool {
		x, y := a.(state), b.(state)
		return x.inited == y.inited && x.next == y.next && x.floors == y.floors && slices.Equal(x.visible, y.visible) && slices.Equal(x.marks, y.marks)
	},
	Hash: func(a any) uint64 {
		s := a.(state)
		var h maphash.Hash
		h.SetSeed(seed)
		fmt.Fprint(&h, s.next, len(s.visible), len(s.marks), s.floors)
		for _, e := range s.visible {
			fmt.Fprint(&h, e.seq, e.val.Exists, e.val.Title)
		}
		for _, m := range s.marks {
			fmt.Fprint(&h, m.write, m.seq, m.fences)
		}
		return h.Sum64()
	},
	DescribeOperation: func(in, out any) string {
		i, o := in.(input), out.(output)
		switch i.Kind {
		case opInit:
			return "init " + i.Value.String()
		case opRead:
			return fmt.Sprintf("read %s (%s, %s)", o.Value, procName(i.Proc), []string{"redis", "near-cache"}[i.Tier])
		case opFence:
			return fmt.Sprintf("write %d fenced (%s)", i.Write, fenceScope(i))
		}
		name := map[opKind]string{opCreate: "create", opUpdate: "update", opDelete: "delete"}[i.Kind]
		res := map[outcome]string{outcomeOK: "ok", outcomeNotFound: "not found", outcomeUnknown: "unknown outcome"}[o.Outcome]
		if i.Kind == opDelete {
			return fmt.Sprintf("%s (write %d) -> %s", name, i.Write, res)
		}
		return fmt.Sprintf("%s %q (write %d) -> %s", name, i.Value.Title, i.Write, res)
	},
	DescribeState: func(a any) string {
		s := a.(state)
		var vs []string
		for _, e := range s.visible {
			vs = append(vs, e.val.String())
		}
		return fmt.Sprintf("may read: %s (oldest per process and tier: %v)", strings.Join(vs, ", "), s.floors)
	},
	DescribeOperationMetadata: func(info any) string {
		if info == nil {
			return ""
		}
		return fmt.Sprint(info)
	},
}

func fenceScope(i input) string {
	proc, tier := "every process", "every tier"
	if i.Proc >= 0 {
		proc = "process " + procName(i.Proc)
	}
	if i.Tier == tierRedis {
		tier = "redis"
	} else if i.Tier == tierLocal {
		tier = "near-cache"
	}
	return proc + ", " + tier
}
