package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The hot-key section (-hot-key-ttl): one key read steadily across many expiries of a short
// TTL, once with early refresh at its default and once with it off (CACHE_EARLY_REFRESH_BETA=0),
// each on a cacheside of its own. It prints, per setting, the reads that waited for a load after
// warm-up (X-Cache: MISS; with early refresh there should be none) and p99 of the reads that
// began near a reload of the value against p99 of the others. Printed, never asserted; it writes
// no report.

// hotKeyResult is what one setting showed.
type hotKeyResult struct {
	reads, misses, stale, errors int
	reloads                      int
	p99Near, p99Between          time.Duration
	near, between                int
}

// measureHotKey runs the section.
func measureHotKey(ctx context.Context, o options, stdout, stderr io.Writer) error {
	fmt.Fprintf(stderr, "hot-key section: /cache at %d rows, %d connections, CACHE_TTL=%s, %s per setting\n",
		o.hotRows, o.hotConns, o.hotTTL, o.hotDuration)
	fmt.Fprintf(stdout, "hot key: /cache, %d rows, %d connections, CACHE_TTL=%s, %s; reads beginning within %s of a reload count as across one\n",
		o.hotRows, o.hotConns, o.hotTTL, o.hotDuration, hotKeyWindow(o.hotTTL))
	for _, beta := range []string{"1", "0"} {
		r, err := hotKeyPhase(ctx, o, beta, stderr)
		if err != nil {
			return err
		}
		ratio := "—"
		if r.p99Between > 0 && r.near > 0 {
			ratio = fmt.Sprintf("%.2f×", float64(r.p99Near)/float64(r.p99Between))
		}
		fmt.Fprintf(stdout, "  CACHE_EARLY_REFRESH_BETA=%s: %d reads, %d reloads, misses after warm-up %d, stale %d, errors %d; p99 across reloads %s (%d reads), between %s (%d reads): %s\n",
			beta, r.reads, r.reloads, r.misses, r.stale, r.errors, r.p99Near.Round(10*time.Microsecond), r.near,
			r.p99Between.Round(10*time.Microsecond), r.between, ratio)
	}
	return nil
}

// hotKeyWindow is how close to a reload a read must begin to count as across it.
func hotKeyWindow(ttl time.Duration) time.Duration { return max(ttl/20, 50*time.Millisecond) }

type hotRead struct {
	began time.Time
	took  time.Duration
	cache string
	err   bool
}

func hotKeyPhase(ctx context.Context, o options, beta string, stderr io.Writer) (_ hotKeyResult, err error) {
	prefix := "loadtest-hotkey-" + beta
	svc, err := startService(ctx, o.bin, "cacheside hot key beta="+beta, knownTiers["redis"], []string{
		"CACHE_KEY_PREFIX=" + prefix,
		"CACHE_TTL=" + o.hotTTL.String(),
		"CACHE_EARLY_REFRESH_BETA=" + beta,
	}, stderr)
	if err != nil {
		return hotKeyResult{}, err
	}
	defer func() { err = errors.Join(err, svc.stop()) }()
	cmd := exec.CommandContext(ctx, o.bin, "seed", "-replace", "-n", strconv.Itoa(o.hotRows))
	cmd.Env = svc.env
	if out, err := cmd.CombinedOutput(); err != nil {
		return hotKeyResult{}, fmt.Errorf("cacheside seed: %w\n%s", err, out)
	}

	client := &http.Client{Timeout: o.timeout, Transport: &http.Transport{
		DisableCompression: true, MaxIdleConnsPerHost: o.hotConns, MaxConnsPerHost: o.hotConns, Proxy: nil,
	}}
	defer client.CloseIdleConnections()
	header := requestHeader(o.clients[0].acceptEncoding) // the first kind of client, as the replication section
	get := func(url string) (string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return "", err
		}
		req.Header = header.Clone()
		res, err := client.Do(req)
		if err != nil {
			return "", err
		}
		defer res.Body.Close()
		if _, err := io.Copy(io.Discard, res.Body); err != nil {
			return "", err
		}
		if res.StatusCode != http.StatusOK {
			return "", fmt.Errorf("GET %s: %s", url, res.Status)
		}
		return res.Header.Get("X-Cache"), nil
	}
	// Warm-up: until the list is a hit.
	for {
		xc, err := get(svc.url + "/cache")
		if err != nil {
			return hotKeyResult{}, err
		}
		if xc == "HIT" {
			break
		}
	}

	loadsBefore, err := listLoads(ctx, client, svc.url)
	if err != nil {
		return hotKeyResult{}, err
	}
	var (
		mu      sync.Mutex
		reads   []hotRead
		reloads []time.Time
		wg      sync.WaitGroup
	)
	runCtx, stop := context.WithTimeout(ctx, o.hotDuration)
	defer stop()
	wg.Go(func() { // reloads, as the service counts them: its loads of the list
		last := loadsBefore
		for runCtx.Err() == nil {
			if n, err := listLoads(runCtx, client, svc.url); err == nil && n > last {
				mu.Lock()
				reloads = append(reloads, time.Now())
				mu.Unlock()
				last = n
			}
			select {
			case <-runCtx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
	for range o.hotConns {
		wg.Go(func() {
			var mine []hotRead
			for runCtx.Err() == nil {
				began := time.Now()
				xc, err := get(svc.url + "/cache")
				if runCtx.Err() != nil {
					break
				}
				mine = append(mine, hotRead{began: began, took: time.Since(began), cache: xc, err: err != nil})
			}
			mu.Lock()
			reads = append(reads, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return hotKeyResult{}, ctx.Err()
	}
	if err := svc.exited(); err != nil {
		return hotKeyResult{}, err
	}

	r := hotKeyResult{reads: len(reads), reloads: len(reloads)}
	window := hotKeyWindow(o.hotTTL)
	var near, between []time.Duration
	for _, rd := range reads {
		switch {
		case rd.err:
			r.errors++
			continue
		case rd.cache == "MISS":
			r.misses++
		case rd.cache == "STALE":
			r.stale++
		}
		// A reload is seen up to a poll late, so a read counts as across one when it began
		// within the window before a reload was seen or shortly after.
		across := slices.ContainsFunc(reloads, func(at time.Time) bool {
			return rd.began.After(at.Add(-window)) && rd.began.Before(at.Add(window/2))
		})
		if across {
			near = append(near, rd.took)
		} else {
			between = append(between, rd.took)
		}
	}
	r.near, r.between = len(near), len(between)
	r.p99Near, r.p99Between = p99(near), p99(between)
	fmt.Fprintf(stderr, "[hot key] beta=%s: %d reads, %d misses, %d reloads\n", beta, r.reads, r.misses, r.reloads)
	return r, nil
}

// listLoads is how many times the service has loaded the list from Postgres (its
// cacheside_cache_loads_total for keyspace list).
func listLoads(ctx context.Context, client *http.Client, base string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	res, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	n := 0.0
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "cacheside_cache_loads_total{") || !strings.Contains(line, `cache_keyspace="list"`) {
			continue
		}
		if f, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
			n += f
		}
	}
	return int(n), sc.Err()
}

func p99(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, len(d)*99/100)]
}
