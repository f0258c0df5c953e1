package main_test

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var readsLeft = regexp.MustCompile(`^"reads";r=(\d+);t=\d+$`)

// TestTheRateLimitHoldsAcrossProcessesSharingRedis runs two service processes on one Redis at
// the production limits: a client that spent its burst on one finds it spent on the other,
// where a limiter of each process's own would hand it a second, whole burst.
func TestTheRateLimitHoldsAcrossProcessesSharingRedis(t *testing.T) {
	env := baseEnv(t)
	a, b := serve(t, env...), serve(t, env...)

	read := func(p *proc) (status, left int) {
		t.Helper()
		res, err := http.Get("http://" + p.addr + "/samples/1")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		m := readsLeft.FindStringSubmatch(res.Header.Get("RateLimit"))
		if m == nil {
			t.Fatalf("RateLimit %q from %s", res.Header.Get("RateLimit"), p.addr)
		}
		n, _ := strconv.Atoi(m[1])
		return res.StatusCode, n
	}

	// Spend the burst on a, then read once from b. The budget refills at 50 a second, so b finds
	// at most half the burst left unless a second passed between the two requests; on a machine
	// that stalled that long the round proves nothing and is repeated (a limiter of b's own would
	// show a whole burst however fast the round went).
	for round := 1; ; round++ {
		sent := 0
		for {
			status, _ := read(a)
			if status == http.StatusTooManyRequests {
				break
			}
			if sent++; sent > 2000 {
				t.Fatal("2,000 reads and none limited")
			}
		}
		began := time.Now()
		status, left := read(b)
		if status == http.StatusTooManyRequests || left <= 50 {
			break
		}
		if took := time.Since(began); took < 500*time.Millisecond || round == 5 {
			t.Fatalf("the other process answered %d with %d reads left of 100 (round %d, %v after the limit): its budget is its own", status, left, round, took)
		}
	}

	metrics, err := http.Get("http://" + a.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer metrics.Body.Close()
	body, _ := io.ReadAll(metrics.Body)
	for _, want := range []string{
		`cacheside_ratelimit_requests_total{`,
		`result="limited"`,
		`source="redis"`,
		`cacheside_ratelimit_fallback{`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
