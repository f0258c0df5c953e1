package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// response is what a check needs of one answer.
type response struct {
	at         time.Time
	method     string
	path       string
	status     int
	xcache     string
	tier       string // X-Cache-Tier
	retryAfter string
	body       string
	err        error
}

func (r response) String() string {
	if r.err != nil {
		return fmt.Sprintf("%s %s: %v", r.method, r.path, r.err)
	}
	s := fmt.Sprintf("%s %s: %d", r.method, r.path, r.status)
	if r.xcache != "" {
		s += " X-Cache " + r.xcache
	}
	if r.status >= 400 {
		s += " " + strings.TrimSpace(r.body)
	}
	return s
}

// ok: the request was answered, and not with an error status.
func (r response) ok() bool { return r.err == nil && r.status >= 200 && r.status < 400 }

// do sends one request; token, when set, goes in the Authorization header (the writes need it).
func (c *cluster) do(ctx context.Context, base, method, path, body, token string) response {
	r := response{at: time.Now(), method: method, path: path}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		r.err = err
		return r
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		r.err = err
		return r
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	r.status, r.body, r.err = resp.StatusCode, string(b), err
	r.xcache, r.tier = resp.Header.Get("X-Cache"), resp.Header.Get("X-Cache-Tier")
	r.retryAfter = resp.Header.Get("Retry-After")
	return r
}

type sample struct {
	ID    int64  `json:"id"`
	Title string `json:"title"`
}

// createSample POSTs a sample and returns it.
func (c *cluster) createSample(ctx context.Context, base, token, title string) (sample, error) {
	body, _ := json.Marshal(map[string]string{"title": title})
	r := c.do(ctx, base, "POST", "/samples", string(body), token)
	if r.err != nil || r.status != http.StatusCreated {
		return sample{}, fmt.Errorf("create a sample: %s", r)
	}
	var s sample
	if err := json.Unmarshal([]byte(r.body), &s); err != nil {
		return sample{}, fmt.Errorf("create a sample: %w in %q", err, r.body)
	}
	return s, nil
}

// load sends requests at a steady rate from a few workers until stopped, and keeps every answer.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	got    []response
}

// request is one request of a load: method, path, body (empty for reads) and whether it needs the token.
type request struct {
	method, path, body string
	auth               bool
}

// startLoad sends rate requests a second in all to base, request n being next(n). The rate stays under the
// service's default read budget per client (50/s, 100 at once): every request comes from this one host, and
// a 429 would count as a failure.
func (c *cluster) startLoad(ctx context.Context, base, token string, rate int, next func(n int) request) *load {
	ctx, cancel := context.WithCancel(ctx)
	l := &load{cancel: cancel}
	const workers = 4
	interval := time.Duration(workers) * time.Second / time.Duration(rate)
	var counter sync.Mutex
	n := 0
	for w := range workers {
		l.wg.Go(func() {
			// Workers start spread over one interval, so the requests are evenly spaced.
			t := time.NewTimer(time.Duration(w) * interval / workers)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				t.Reset(interval)
				counter.Lock()
				req := next(n)
				n++
				counter.Unlock()
				tok := ""
				if req.auth {
					tok = token
				}
				// Not ctx: a request in flight when the load stops is finished, not cut off.
				r := c.do(context.Background(), base, req.method, req.path, req.body, tok)
				l.mu.Lock()
				l.got = append(l.got, r)
				l.mu.Unlock()
			}
		})
	}
	return l
}

// stop ends the load and returns every answer, in the order they were sent.
func (l *load) stop() []response {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	slices.SortFunc(l.got, func(a, b response) int { return a.at.Compare(b.at) })
	return l.got
}

// since returns the answers to requests sent after t.
func (l *load) since(t time.Time) []response {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []response
	for _, r := range l.got {
		if r.at.After(t) {
			out = append(out, r)
		}
	}
	return out
}

// waitAnswers waits until the load has had n answers matching match to requests sent after t.
func (l *load) waitAnswers(ctx context.Context, timeout time.Duration, what string, t time.Time, n int, match func(response) bool) error {
	return waitFor(ctx, timeout, what, func() (bool, error) {
		got := 0
		for _, r := range l.since(t) {
			if match(r) {
				got++
			}
		}
		return got >= n, nil
	})
}

// tally counts answers by status and X-Cache, e.g. "200 HIT: 120, 200 BYPASS: 14".
func tally(rs []response) string {
	counts := map[string]int{}
	for _, r := range rs {
		k := fmt.Sprintf("%d %s", r.status, r.xcache)
		if r.err != nil {
			k = "transport error"
		}
		counts[k]++
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%s: %d", strings.TrimSpace(k), counts[k]))
	}
	return fmt.Sprintf("%d requests (%s)", len(rs), strings.Join(parts, ", "))
}

// failures returns the answers that are not a success.
func failures(rs []response) []response {
	var out []response
	for _, r := range rs {
		if !r.ok() {
			out = append(out, r)
		}
	}
	return out
}

func describe(rs []response, most int) string {
	var lines []string
	for i, r := range rs {
		if i == most {
			lines = append(lines, fmt.Sprintf("… and %d more", len(rs)-most))
			break
		}
		lines = append(lines, r.at.Format("15:04:05.000")+" "+r.String())
	}
	return strings.Join(lines, "\n    ")
}

// reads is a load of reads only: the list and a few items, in turn.
func reads(ids []int64) func(n int) request {
	return func(n int) request {
		if n%2 == 0 || len(ids) == 0 {
			return request{method: "GET", path: "/cache"}
		}
		return request{method: "GET", path: fmt.Sprintf("/samples/%d", ids[(n/2)%len(ids)])}
	}
}
