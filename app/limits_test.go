package main_test

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
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
	// The budget refills at 50 a second: unless this machine stalls for a second between the two
	// requests, the other process finds at most half the burst.
	status, left := read(b)
	if status != http.StatusTooManyRequests && left > 50 {
		t.Errorf("the other process answered %d with %d reads left of 100: its budget is its own", status, left)
	}

	metrics, err := http.Get("http://" + a.addr + "/metrics")
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
