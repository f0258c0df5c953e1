package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cacheside/cacheside/hack/loadtest/internal/results"
)

// bench is one run: the service instances it started, and what the report should say about
// them.
type bench struct {
	o        options
	stderr   io.Writer
	services []*service // one per tier that started; the first also serves /sample
	tmp      string     // the ceilings' spec files
	ceilings []ceiling  // the ceilings of the table size being measured
	notes    []string
	client   *http.Client // for the single requests that prepare a measurement
}

// newBench starts one cacheside per tier. A tier whose instance does not start (say, a binary
// that rejects CACHE_LOCAL_ENABLED) is left out of the run and the report says so; the run
// fails only when no tier starts.
func newBench(ctx context.Context, o options, stderr io.Writer) (*bench, error) {
	tmp, err := os.MkdirTemp("", "cacheside-loadtest-")
	if err != nil {
		return nil, fmt.Errorf("creating a temporary directory: %w", err)
	}
	b := &bench{
		o: o, stderr: stderr, tmp: tmp,
		client: &http.Client{Timeout: o.timeout, Transport: &http.Transport{DisableCompression: true}},
	}
	for _, t := range o.tiers {
		s, err := startService(ctx, o.bin, "cacheside "+t.name, t, nil, stderr)
		if err != nil {
			if ctx.Err() != nil {
				b.close()
				return nil, ctx.Err()
			}
			fmt.Fprintf(stderr, "loadtest: tier %s left out: %v\n", t.name, err)
			b.notes = append(b.notes, fmt.Sprintf("Tier **%s** was not measured: %s", t.name, oneLine(err.Error())))
			continue
		}
		b.services = append(b.services, s)
	}
	if len(b.services) == 0 {
		b.close()
		return nil, errors.New("no cacheside instance started")
	}
	return b, nil
}

// close stops everything the run started. It is safe to call more than once.
func (b *bench) close() {
	b.stopCeiling()
	for _, s := range b.services {
		if err := s.stop(); err != nil {
			fmt.Fprintf(b.stderr, "loadtest: stopping cacheside %s: %v\n", s.tier.name, err)
		}
	}
	b.services = nil
	_ = os.RemoveAll(b.tmp)
}

func (b *bench) stopCeiling() {
	for _, c := range b.ceilings {
		if err := c.proc.stop(); err != nil {
			fmt.Fprintf(b.stderr, "loadtest: stopping the %s: %v\n", c.name, err)
		}
	}
	b.ceilings = nil
}

// A ceiling is an instrument measured beside the service: the ceiling, and the ceiling+redis.
type ceiling struct {
	name string
	kind results.Kind
	url  string
	proc *child
}

// target is one thing measured in every cell.
type target struct {
	name   string
	kind   results.Kind
	url    string
	svc    *service // nil for a ceiling
	proc   *child   // a ceiling's process
	client client
	// beforeMeasuring runs between the warm-up and the measurement; nil: nothing does.
	beforeMeasuring func() error
}

// runAll measures every table size; within a size, the targets of one cell (a number of
// connections and a kind of client) run back to back, so a noisy neighbour slowing the machine
// for a while hits them alike. With -repeat N each cell is
// measured in N rounds, the order of the targets rotating from round to round, and each target
// keeps the round with its median req/s.
func (b *bench) runAll(ctx context.Context) ([]results.Measurement, error) {
	var measured []results.Measurement
	done, total := 0, len(b.o.rows)*len(b.o.conns)*len(b.o.clients)*(3+len(b.services))*b.o.repeat
	for _, n := range b.o.rows {
		if err := b.prepare(ctx, n); err != nil {
			return measured, fmt.Errorf("preparing %d rows: %w", n, err)
		}
		for _, c := range b.o.conns {
			for _, cl := range b.o.clients {
				ms, err := b.cell(ctx, n, c, cl, &done, total)
				measured = append(measured, ms...)
				if err != nil {
					return measured, err
				}
			}
		}
		b.stopCeiling()
	}
	return measured, nil
}

// cell measures every target at n rows, c connections, as client cl.
func (b *bench) cell(ctx context.Context, n, c int, cl client, done *int, total int) ([]results.Measurement, error) {
	var targets []target
	for _, ce := range b.ceilings {
		targets = append(targets, target{name: ce.name, kind: ce.kind, url: ce.url + "/cache", proc: ce.proc, client: cl})
	}
	targets = append(targets, target{name: "/sample", kind: results.Direct, url: b.services[0].url + "/sample", svc: b.services[0], client: cl})
	for _, s := range b.services {
		targets = append(targets, target{name: "/cache " + s.tier.name, kind: results.Cached, url: s.url + "/cache", svc: s, client: cl})
	}
	rounds := make([][]results.Measurement, len(targets))
	for r := range b.o.repeat {
		for k := range targets {
			i := (k + r) % len(targets)
			t := targets[i]
			if err := b.alive(t); err != nil {
				return nil, err
			}
			m, err := measure(ctx, b.o, t, n, c)
			if err != nil {
				return nil, err
			}
			rounds[i] = append(rounds[i], m)
			*done++
			fmt.Fprintf(b.stderr, "[%d/%d] %6s rows %3d conns %-8s %-20s %8.0f req/s  p99 %-9s errors %d\n",
				*done, total, strconv.Itoa(n), c, cl.name, t.name, m.Throughput, results.Latency(m.P99), m.Errors)
		}
	}
	var measured []results.Measurement
	for _, ms := range rounds {
		measured = append(measured, results.Median(ms))
	}
	return measured, nil
}

func (b *bench) alive(t target) error {
	if t.svc != nil {
		return t.svc.exited()
	}
	if t.proc != nil {
		return t.proc.exited()
	}
	return nil
}

// prepare reseeds the table to n rows, fills every tier's cache and checks that it serves the
// new rows to every kind of client, then starts the ceilings with the bytes /cache served to
// each.
func (b *bench) prepare(ctx context.Context, n int) error {
	fmt.Fprintf(b.stderr, "reseeding %d rows\n", n)
	if err := b.reseed(ctx, n); err != nil {
		return err
	}
	recorded := map[string]response{}
	for _, cl := range b.o.clients {
		header := requestHeader(cl.acceptEncoding)
		direct, err := b.get(ctx, b.services[0].url+"/sample", header)
		if err != nil {
			return err
		}
		want, err := decoded(direct)
		if err != nil {
			return fmt.Errorf("GET /sample: %w", err)
		}
		for i, s := range b.services {
			r, err := b.filled(ctx, s, header, want)
			if err != nil {
				return fmt.Errorf("%s client: %w", cl.name, err)
			}
			if i == 0 {
				recorded[cl.name] = r
			}
		}
	}
	return b.startCeilings(ctx, n, recorded)
}

// reseed replaces the table through the first instance's configuration, then retires the
// cached views of the others: each instance has its own key prefix, and `cacheside seed` only
// retires those of the prefix it is configured with.
func (b *bench) reseed(ctx context.Context, n int) error {
	for i, s := range b.services {
		args := []string{"seed", "-n", "0"}
		if i == 0 {
			args = []string{"seed", "-replace", "-n", strconv.Itoa(n)}
		}
		cmd := exec.CommandContext(ctx, b.o.bin, args...)
		cmd.Env = s.env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("cacheside %s (tier %s): %w\n%s", strings.Join(args, " "), s.tier.name, err, out)
		}
	}
	return nil
}

// filled asks s for /cache until it answers a hit holding the rows /sample holds. A cache that
// keeps serving the previous table after the reseed is reported, because it would be measured
// serving the wrong bytes.
func (b *bench) filled(ctx context.Context, s *service, header http.Header, want []byte) (response, error) {
	const patience = 5 * time.Second
	start := time.Now()
	var last string
	for {
		r, err := b.get(ctx, s.url+"/cache", header)
		if err != nil {
			return response{}, err
		}
		body, err := decoded(r)
		switch {
		case err != nil:
			last = err.Error()
		case r.header.Get("X-Cache") != "HIT":
			last = "X-Cache: " + r.header.Get("X-Cache")
		case !bytes.Equal(body, want):
			last = fmt.Sprintf("a hit of %d bytes that differ from /sample's %d: the views the reseed retired are still served", len(body), len(want))
		default:
			if waited := time.Since(start); waited > time.Second {
				fmt.Fprintf(b.stderr, "loadtest: tier %s served the new rows only after %s\n", s.tier.name, waited.Round(time.Millisecond))
			}
			return r, nil
		}
		if time.Since(start) > patience {
			return response{}, fmt.Errorf("GET /cache on tier %s: no hit with the reseeded rows within %s; last answer: %s", s.tier.name, patience, last)
		}
		select {
		case <-ctx.Done():
			return response{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startCeilings starts the ceiling and the ceiling+redis with the answers /cache gave each kind
// of client, then checks that each gives each client the same answer: same status, body,
// framing and headers (Date aside). Anything else would make the comparison unfair, in either
// direction. The ceiling holds the gzip bytes and the plain ones side by side, as the fastest
// cache could: it decompresses nothing. The ceiling+redis holds them in Redis instead and
// fetches its client's bytes with one GET per answer (redisStore).
func (b *bench) startCeilings(ctx context.Context, n int, recorded map[string]response) error {
	b.stopCeiling()
	var spec ceilingSpec
	for _, rec := range recorded {
		switch enc := rec.header.Get("Content-Encoding"); {
		case enc == "":
			spec.Plain = rec.body
		case spec.Encoding == "":
			spec.Body, spec.Encoding = rec.body, enc
		}
		spec.ETag = strings.Trim(strings.TrimPrefix(rec.header.Get("ETag"), "W/"), `"`)
		spec.Cache, spec.Tier = rec.header.Get("X-Cache"), rec.header.Get("X-Cache-Tier")
	}
	if spec.Body == nil { // every client was answered plain JSON (CACHE_COMPRESSION=none)
		spec.Body, spec.Plain = spec.Plain, nil
	}
	for _, ce := range []ceiling{{name: "ceiling", kind: results.Ceiling}, {name: "ceiling+redis", kind: results.RedisCeiling}} {
		spec := spec
		if ce.kind == results.RedisCeiling {
			spec.RedisKey = fmt.Sprintf("loadtest-ceiling:%d:%d", os.Getpid(), n)
		}
		path := filepath.Join(b.tmp, fmt.Sprintf("%s-%d.json", ce.name, n))
		proc, url, err := startCeiling(ctx, ce.name, path, spec, b.services[0].env, b.stderr)
		if err != nil {
			return err
		}
		ce.proc, ce.url = proc, url
		b.ceilings = append(b.ceilings, ce)
		for _, cl := range b.o.clients {
			got, err := b.get(ctx, url+"/cache", requestHeader(cl.acceptEncoding))
			if err != nil {
				return fmt.Errorf("the %s: %w", ce.name, err)
			}
			if diff := recorded[cl.name].diff(got); diff != "" {
				return fmt.Errorf("the %s does not answer a %s client as /cache does (%s); the ceilings in hack/loadtest need to follow the change", ce.name, cl.name, diff)
			}
		}
	}
	return nil
}

// response is one answer, kept whole to be compared and replayed.
type response struct {
	status        int
	header        http.Header
	body          []byte
	contentLength int64 // -1 when chunked
}

func (b *bench) get(ctx context.Context, url string, header http.Header) (response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return response{}, fmt.Errorf("building GET %s: %w", url, err)
	}
	req.Header = header.Clone()
	res, err := b.client.Do(req)
	if err != nil {
		return response{}, fmt.Errorf("GET %s: %w", url, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return response{}, fmt.Errorf("reading GET %s: %w", url, err)
	}
	if res.StatusCode != http.StatusOK {
		return response{}, fmt.Errorf("GET %s: %s: %s", url, res.Status, oneLine(string(body)))
	}
	return response{status: res.StatusCode, header: res.Header, body: body, contentLength: res.ContentLength}, nil
}

// diff names the first way got differs from r.
func (r response) diff(got response) string {
	switch {
	case got.status != r.status:
		return fmt.Sprintf("status %d, not %d", got.status, r.status)
	case !bytes.Equal(got.body, r.body):
		return fmt.Sprintf("a body of %d bytes, not the %d /cache sent", len(got.body), len(r.body))
	case got.contentLength != r.contentLength:
		return fmt.Sprintf("Content-Length %d, not %d (-1: chunked)", got.contentLength, r.contentLength)
	}
	for _, h := range []http.Header{r.header, got.header} {
		for k := range h {
			if k == "Date" {
				continue
			}
			if a, b := strings.Join(r.header.Values(k), ", "), strings.Join(got.header.Values(k), ", "); a != b {
				return fmt.Sprintf("header %s: %q, not %q", k, b, a)
			}
		}
	}
	return ""
}

// decoded is the JSON a response carries, whatever its encoding.
func decoded(r response) ([]byte, error) {
	switch enc := r.header.Get("Content-Encoding"); enc {
	case "":
		return r.body, nil
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(r.body))
		if err != nil {
			return nil, fmt.Errorf("reading a gzip body: %w", err)
		}
		out, err := io.ReadAll(zr)
		if err != nil {
			return nil, fmt.Errorf("reading a gzip body: %w", err)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("unexpected Content-Encoding %q", enc)
	}
}

func requestHeader(acceptEncoding string) http.Header {
	h := http.Header{}
	if acceptEncoding != "" {
		h.Set("Accept-Encoding", acceptEncoding)
	}
	return h
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
