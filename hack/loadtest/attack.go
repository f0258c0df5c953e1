package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/cacheside/cacheside/hack/loadtest/internal/results"
)

// measure sends t the warm-up load, then measures it: conns connections in a closed loop for
// o.duration. Warm-up and measurement share the connections, so the measurement starts with
// all of them open.
func measure(ctx context.Context, o options, t target, rows, conns int) (results.Measurement, error) {
	tr := &http.Transport{
		// Fairness: the body is counted and timed as it crossed the wire. Go's transparent
		// gzip would decompress it inside the measurement and hide the encoding.
		DisableCompression:  true,
		Proxy:               nil, // loopback; never a proxy from the environment
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns, // the default (2) would close and reopen connections beyond it
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     time.Minute,
	}
	defer tr.CloseIdleConnections()
	header := requestHeader(t.client.acceptEncoding)

	if o.warmup > 0 {
		if _, err := attack(ctx, tr, o, t.url, header, conns, o.warmup); err != nil {
			return results.Measurement{}, fmt.Errorf("warming up %s: %w", t.name, err)
		}
	}
	if t.beforeMeasuring != nil {
		if err := t.beforeMeasuring(); err != nil {
			return results.Measurement{}, err
		}
	}
	tl, err := attack(ctx, tr, o, t.url, header, conns, o.duration)
	if err != nil {
		return results.Measurement{}, fmt.Errorf("measuring %s: %w", t.name, err)
	}
	m := results.Measurement{
		Rows: rows, Conns: conns, Target: t.name, Kind: t.kind, Client: t.client.name,
		Requests:   tl.metrics.Requests,
		Errors:     tl.errors,
		Throughput: tl.metrics.Throughput,
		P50:        tl.metrics.Latencies.P50,
		P90:        tl.metrics.Latencies.P90,
		P99:        tl.metrics.Latencies.P99,
		Encoding:   tl.encoding(),
		Hits:       tl.hits, LocalHits: tl.local, RedisHits: tl.redis,
	}
	if tl.responses > 0 {
		m.BodyBytes = float64(tl.wire) / float64(tl.responses)
	}
	return m, nil
}

// tally is what one attack saw.
type tally struct {
	metrics            vegeta.Metrics
	errors             uint64
	responses          uint64 // requests answered with a status, whatever it was
	wire               int64  // body bytes read from the connections
	hits, local, redis uint64
	encodings          map[string]uint64
}

// encoding is the Content-Encoding most responses had.
func (t tally) encoding() string {
	best, n := "", uint64(0)
	for enc, c := range t.encodings {
		if c > n {
			best, n = enc, c
		}
	}
	return best
}

// attack runs vegeta against url for d: rate 0 with exactly conns workers is vegeta's closed
// loop, each worker sending its next request when the previous answer has been read, which is
// what the tutorial's `loadtest -k -c N` did.
func attack(ctx context.Context, tr *http.Transport, o options, url string, header http.Header, conns int, d time.Duration) (tally, error) {
	var wire atomic.Int64
	client := &http.Client{Transport: countingTransport{base: tr, n: &wire}, Timeout: o.timeout}
	a := vegeta.NewAttacker(
		vegeta.Client(client),
		vegeta.Workers(uint64(conns)), vegeta.MaxWorkers(uint64(conns)),
		// Read bodies to the end (they are counted) but keep none: the load generator's
		// allocations would otherwise grow with the body and steal CPU from the servers.
		vegeta.MaxBody(0),
	)
	stop := context.AfterFunc(ctx, func() { a.Stop() })
	defer stop()

	target := vegeta.NewStaticTargeter(vegeta.Target{Method: http.MethodGet, URL: url, Header: header})
	t := tally{encodings: map[string]uint64{}}
	for res := range a.Attack(target, vegeta.Rate{Freq: 0}, d, "") {
		t.metrics.Add(res)
		if res.Error != "" {
			t.errors++
		}
		if res.Code == 0 {
			continue
		}
		t.responses++
		t.encodings[res.Headers.Get("Content-Encoding")]++
		if res.Headers.Get("X-Cache") == "HIT" {
			t.hits++
			switch res.Headers.Get("X-Cache-Tier") {
			case "local":
				t.local++
			case "redis":
				t.redis++
			}
		}
	}
	t.metrics.Close()
	t.wire = wire.Load()
	if ctx.Err() != nil {
		return t, ctx.Err()
	}
	return t, nil
}

// countingTransport counts response body bytes as they are read off the connection; vegeta's
// own count (BytesIn) is of the bytes it keeps, none here.
type countingTransport struct {
	base http.RoundTripper
	n    *atomic.Int64
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	res, err := t.base.RoundTrip(r)
	if err == nil {
		res.Body = &countingBody{ReadCloser: res.Body, n: t.n}
	}
	return res, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
