package main

import (
	"testing"
	"time"
)

// TestCalmStormsWaitOutTheBreakerWhile5xxKeepTheirGrace: a storm that starts after the 5xx grace
// but within the breaker's cooldown of a Redis fault may bypass Redis (the breaker that fault
// opened is still open), so it is not calm; one past the cooldown and margin is. The 5xx check
// keeps its own, shorter grace: widening the calm window must not excuse more 5xx.
func TestCalmStormsWaitOutTheBreakerWhile5xxKeepTheirGrace(t *testing.T) {
	s := int64(time.Second)
	r := &report{
		opts: options{grace: 3 * time.Second, calm: 6 * time.Second}, // CACHE_BREAKER_COOLDOWN 5 s + 1 s
		rec: &recording{
			Faults: []fault{{Kind: "redis-restart", Start: 9 * s, End: 10 * s}},
			Records: []record{
				{Kind: "list", Status: 503, Call: 14 * s, Ret: 14*s + s/10}, // 4 s after: past the grace
				{Kind: "list", Status: 503, Call: 12 * s, Ret: 12*s + s/10}, // 2 s after: the fault's
			},
		},
	}
	for _, tc := range []struct {
		start, end int64
		calm       bool
	}{
		{14 * s, 15 * s, false}, // within the cooldown: the breaker may still be open
		{8 * s, 9*s + s/2, false},
		{16*s + s/10, 17 * s, true},
		{2 * s, 3 * s, true}, // before the fault
	} {
		if got := r.calmStorm(tc.start, tc.end); got != tc.calm {
			t.Errorf("storm from %s to %s: calm %v, want %v", time.Duration(tc.start), time.Duration(tc.end), got, tc.calm)
		}
	}
	if errs := r.serverErrorsOutsideFaults(); len(errs) != 1 || errs[0].Call != 14*s {
		t.Errorf("5xx outside fault windows: %+v, want the one 4 s after the fault (grace 3 s)", errs)
	}
}
