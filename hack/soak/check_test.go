package main

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/anishathalye/porcupine"
)

// TestMergingReadsKeepsTheVerdict: porcupine's verdict on a sample's history is the same with its
// settled reads dropped and its overlapping reads merged as with every read as it came, on random histories dense enough that reads overlap writes,
// fences and each other, with the near-cache's staggered fences. Both verdicts must occur, or the
// test proves nothing.
func TestMergingReadsKeepsTheVerdict(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	verdicts := map[porcupine.CheckResult]int{}
	merged := 0 // reads dropped or merged away
	for n := range 3000 {
		ops, reads := randomHistory(rng)
		want := porcupine.CheckOperationsTimeout(model, append(ops, opsOf(reads)...), 0)
		m := mergeReads(dropSettledReads(ops, slices.Clone(reads)))
		merged += len(reads) - len(m)
		if got := porcupine.CheckOperationsTimeout(model, append(ops, opsOf(m)...), 0); got != want {
			t.Fatalf("history %d: %v unmerged, %v merged\n%s", n, want, got, describe(append(ops, opsOf(reads)...)))
		}
		verdicts[want]++
	}
	t.Logf("verdicts %v, %d reads merged away", verdicts, merged)
	if verdicts[porcupine.Ok] < 100 || verdicts[porcupine.Illegal] < 100 || merged < 1000 {
		t.Errorf("the random histories do not exercise the merge: verdicts %v, %d reads merged away", verdicts, merged)
	}
}

// randomHistory is a sample written a few times, with fences as the near-cache soak sets them,
// and reads through random processes and tiers, all within a short span. Half the samples are
// created during the history and half are deleted at its end, so reads see "absent" on both
// sides of the sample's life.
func randomHistory(rng *rand.Rand) (ops []porcupine.Operation, reads []read) {
	const span = 60
	writes := 1 + rng.IntN(4)
	born := rng.IntN(2) == 0
	deleteAt := 2 + rng.IntN(4)     // past the last write: the sample lives on
	vals := make([]value, writes+1) // the value each write leaves; vals[0] was there first
	calls := make([]int64, writes+1)
	calls[0] = -2
	vals[0] = value{!born, "t0"}
	if born {
		vals[0] = value{}
	}
	ops = append(ops, porcupine.Operation{Input: input{Kind: opInit, Value: vals[0]}, Output: output{}, Call: -2, Return: -1})
	for w := 1; w <= writes; w++ {
		calls[w] = calls[w-1] + 1 + int64(rng.IntN(span/writes))
		call := calls[w]
		ret := call + 1 + int64(rng.IntN(10))
		kind, out := opUpdate, outcomeOK
		vals[w] = value{true, fmt.Sprint("t", w)}
		switch {
		case w == 1 && born:
			kind = opCreate
		case w == deleteAt:
			kind, vals[w] = opDelete, value{}
		case w > deleteAt: // an update of a deleted sample: it finds nothing, or its client never hears
			out, vals[w] = outcomeNotFound, value{}
		}
		if rng.IntN(4) == 0 { // its client never heard back: no fences, and it may land late
			out = outcomeUnknown
		}
		fences := []input{
			{Kind: opFence, Write: w, Proc: 0, Tier: -1},
			{Kind: opFence, Write: w, Proc: 1, Tier: tierRedis},
			{Kind: opFence, Write: w, Proc: 1, Tier: tierLocal},
		}
		at := []int64{ret + 1, ret + 1, ret + 1 + int64(rng.IntN(15))}
		switch out {
		case outcomeUnknown:
			ret += int64(rng.IntN(30)) // it may land late
			fallthrough
		case outcomeNotFound:
			fences = nil
		}
		ops = append(ops, porcupine.Operation{ClientId: w, Input: input{Kind: kind, Write: w, Value: value{true, fmt.Sprint("t", w)}, Fences: len(fences)},
			Output: output{Outcome: out}, Call: call, Return: ret})
		for i, f := range fences {
			ops = append(ops, porcupine.Operation{ClientId: w, Input: f, Output: output{}, Call: at[i], Return: at[i]})
		}
	}
	for range 4 + rng.IntN(8) {
		call := int64(rng.IntN(span + 20))
		ret := call + 1 + int64(rng.IntN(25))
		// A value written before the read ended, mostly one of the last two: a plausible read.
		last := 0
		for w, c := range calls {
			if c < ret {
				last = w
			}
		}
		v := vals[max(0, last-rng.IntN(2))]
		if rng.IntN(8) == 0 { // or any title at all
			v = value{true, fmt.Sprint("t", rng.IntN(writes+1))}
		}
		reads = append(reads, read{porcupine.Operation{ClientId: 10, Input: input{Kind: opRead, Proc: rng.IntN(2), Tier: rng.IntN(2)},
			Output: output{Value: v}, Call: call, Return: ret}, false, 1})
		// Reads come in bursts, as a miss storm's do: the same value through the same tier.
		if rng.IntN(2) == 0 {
			r := reads[len(reads)-1]
			r.op.Call += int64(rng.IntN(5))
			r.op.Return = r.op.Call + 1 + int64(rng.IntN(25))
			reads = append(reads, r)
		}
	}
	return ops, reads
}

func opsOf(reads []read) []porcupine.Operation {
	var ops []porcupine.Operation
	for _, r := range reads {
		ops = append(ops, r.op)
	}
	return ops
}

func describe(ops []porcupine.Operation) string {
	var s string
	for _, op := range ops {
		s += fmt.Sprintf("[%d, %d] %s\n", op.Call, op.Return, model.DescribeOperation(op.Input, op.Output))
	}
	return s
}
