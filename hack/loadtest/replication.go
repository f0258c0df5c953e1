package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/cacheside/cacheside/app/replication"
	"github.com/cacheside/cacheside/hack/loadtest/internal/results"
)

// replicationSlot is the slot the section's consumer follows. It is made anew for every round
// with the consumer on and dropped after it, so that no round starts behind on what an earlier
// round's writer changed, and nothing is left holding WAL in a database the run did not start.
const replicationSlot = "cacheside_loadtest"

// The service's instruments the section reads from /metrics.
const (
	metricLatency = "cacheside_replication_retire_latency_seconds"
	metricChanges = "cacheside_replication_changes_total"
	metricRetired = "cacheside_replication_keys_retired_total"
)

// replicationBench is the replication section: /cache on the redis tier driven as in the table
// while a writer outside the API commits single-row UPDATEs, the service's replication consumer
// on in some rounds and off in others.
type replicationBench struct {
	o      options
	stderr io.Writer
	admin  *pgx.Conn // drops the slot
	writer *writer
	client *http.Client
	done   int
}

// measureReplication runs the section. The table's services must be stopped first: they would
// share the CPUs with the section's.
func measureReplication(ctx context.Context, o options, stderr io.Writer) (_ results.Replication, err error) {
	r := results.Replication{Rows: o.replRows, Conns: o.replConns, Target: "/cache redis", WriteRate: o.replWrites, Rounds: o.repeat}
	fmt.Fprintf(stderr, "replication section: reseeding %d rows\n", o.replRows)
	if err := reseedReplication(ctx, o); err != nil {
		return r, err
	}
	url := os.Getenv("DATABASE_URL")
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		return r, fmt.Errorf("connecting to postgres: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	rb := &replicationBench{o: o, stderr: stderr, admin: admin, client: &http.Client{Timeout: o.timeout}}
	// A slot of a run that was killed (kill -9) would make the first round start behind.
	if err := rb.dropSlot(ctx); err != nil {
		return r, err
	}
	if rb.writer, err = newWriter(ctx, url, o.replWrites); err != nil {
		return r, err
	}
	defer rb.writer.conn.Close(context.WithoutCancel(ctx))

	var on, off []results.Phase
	for round := range o.repeat {
		var pair [2]float64 // req/s with the consumer on, off
		// The settings take turns going first, so a machine getting busier favours neither.
		order := []bool{true, false}
		if round%2 == 1 {
			order = []bool{false, true}
		}
		for _, enabled := range order {
			p, seen, err := rb.phase(ctx, enabled)
			if err != nil {
				return r, err
			}
			if !enabled {
				off = append(off, p)
				pair[1] = p.Load.Throughput
				continue
			}
			on = append(on, p)
			pair[0] = p.Load.Throughput
			if r.Latency, err = results.AddBuckets(r.Latency, seen.latency); err != nil {
				return r, fmt.Errorf("pooling %s over the rounds: %w", metricLatency, err)
			}
			r.Changes += seen.changes
			r.KeysRetired += seen.retired
		}
		if pair[1] > 0 {
			r.PairedRatios = append(r.PairedRatios, pair[0]/pair[1])
		}
	}
	r.On, r.Off = results.MedianPhase(on), results.MedianPhase(off)
	return r, nil
}

// reseedReplication replaces the table with o.replRows samples and retires the cached views of
// both settings' key prefixes (cacheside seed retires only its own prefix's).
func reseedReplication(ctx context.Context, o options) error {
	for i, enabled := range []bool{true, false} {
		args := []string{"seed", "-n", "0"}
		if i == 0 {
			args = []string{"seed", "-replace", "-n", strconv.Itoa(o.replRows)}
		}
		cmd := exec.CommandContext(ctx, o.bin, args...)
		cmd.Env = append(os.Environ(), "LOG_LEVEL=warn", "CACHE_KEY_PREFIX="+replicationPrefix(enabled))
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("cacheside %s: %w\n%s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// replicationPrefix keeps each setting's cached views apart, and apart from the table's tiers.
func replicationPrefix(enabled bool) string {
	return "loadtest-replication-" + strconv.FormatBool(enabled)
}

// observed is what the consumer recorded during one measurement.
type observed struct {
	latency          []results.Bucket
	changes, retired float64
}

// phase measures one round of one setting: a cacheside of its own (the other setting's is not
// running, so the consumer's CPU is charged to its own row only), waited for until its consumer
// streams, the writer running through warm-up and measurement.
func (rb *replicationBench) phase(ctx context.Context, enabled bool) (_ results.Phase, _ observed, err error) {
	o := rb.o
	name := "cacheside redis REPLICATION_ENABLED=" + strconv.FormatBool(enabled)
	svc, err := startService(ctx, o.bin, name, knownTiers["redis"], []string{
		"CACHE_KEY_PREFIX=" + replicationPrefix(enabled),
		"REPLICATION_ENABLED=" + strconv.FormatBool(enabled),
		"REPLICATION_SLOT=" + replicationSlot,
	}, rb.stderr)
	if err != nil {
		return results.Phase{}, observed{}, err
	}
	defer func() {
		err = errors.Join(err, svc.stop())
		if enabled {
			err = errors.Join(err, rb.dropSlot(ctx))
		}
	}()
	if err := rb.waitConsumer(ctx, svc, enabled); err != nil {
		return results.Phase{}, observed{}, err
	}

	stopWriter := rb.writer.start(ctx)
	defer func() {
		if werr := stopWriter(); werr != nil {
			err = errors.Join(err, werr)
		}
	}()
	var (
		before    consumerMetrics
		committed int64
		began     time.Time
	)
	t := target{name: name, kind: results.Cached, url: svc.url + "/cache", svc: svc, client: o.clients[0], beforeMeasuring: func() error {
		committed, began = rb.writer.committed.Load(), time.Now()
		if enabled {
			var err error
			before, err = rb.scrape(ctx, svc)
			return err
		}
		return nil
	}}
	m, err := measure(ctx, o, t, o.replRows, o.replConns)
	if err != nil {
		return results.Phase{}, observed{}, err
	}
	p := results.Phase{Load: m, Writes: float64(rb.writer.committed.Load()-committed) / time.Since(began).Seconds()}
	var seen observed
	if enabled {
		after, err := rb.scrape(ctx, svc)
		if err != nil {
			return results.Phase{}, observed{}, err
		}
		if seen.latency, err = results.BucketDelta(after.latency, before.latency); err != nil {
			return results.Phase{}, observed{}, fmt.Errorf("%s between two scrapes: %w", metricLatency, err)
		}
		seen.changes, seen.retired = after.changes-before.changes, after.retired-before.retired
	}
	if err := svc.exited(); err != nil {
		return results.Phase{}, observed{}, err
	}

	rb.done++
	line := fmt.Sprintf("[replication %d/%d] REPLICATION_ENABLED=%-5t %8.0f req/s  p99 %-9s errors %d  hits %s  writes %.1f/s",
		rb.done, 2*o.repeat, enabled, m.Throughput, results.Latency(m.P99), m.Errors, results.Percent(m.Hits, m.Requests), p.Writes)
	if enabled {
		p50, p99 := results.Quantile(0.5, seen.latency), results.Quantile(0.99, seen.latency)
		line += fmt.Sprintf("  commit→retired p50 %s p99 %s (%.0f commits)", seconds(p50.Value), seconds(p99.Value), results.Observations(seen.latency))
	}
	fmt.Fprintln(rb.stderr, line)
	return p, seen, nil
}

func seconds(s float64) string {
	if math.IsNaN(s) {
		return "—"
	}
	return results.Latency(time.Duration(s * float64(time.Second)))
}

// waitConsumer waits until the service's /readyz reports its replication consumer as asked:
// with it on, the leader of the slot and streaming (which it is only after the one-time
// retirement a new slot needs); with it off, off.
func (rb *replicationBench) waitConsumer(ctx context.Context, s *service, enabled bool) error {
	const patience = 30 * time.Second
	deadline := time.Now().Add(patience)
	var last string
	for {
		st, err := rb.replicationState(ctx, s)
		switch {
		case err != nil:
			last = err.Error()
		case !enabled && st.Role == "off":
			return nil
		case !enabled:
			return fmt.Errorf("%s reports its replication consumer %q with REPLICATION_ENABLED=false", s.name, st.Role)
		case st.Role == "leader" && st.Streaming:
			return nil
		case st.Role == "unavailable":
			return fmt.Errorf("the replication consumer of %s is unavailable: %s", s.name, st.Reason)
		default:
			last = fmt.Sprintf("role %s, streaming %t %s", st.Role, st.Streaming, st.Reason)
		}
		if err := s.exited(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: its replication consumer was not leading and streaming within %s; /readyz last said: %s", s.name, patience, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (rb *replicationBench) replicationState(ctx context.Context, s *service) (replication.State, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url+"/readyz", nil)
	if err != nil {
		return replication.State{}, err
	}
	res, err := rb.client.Do(req)
	if err != nil {
		return replication.State{}, fmt.Errorf("GET /readyz: %w", err)
	}
	defer res.Body.Close()
	var ready struct {
		Checks struct {
			Replication *replication.State `json:"replication"`
		} `json:"checks"`
	}
	if err := json.NewDecoder(res.Body).Decode(&ready); err != nil {
		return replication.State{}, fmt.Errorf("decoding /readyz: %w", err)
	}
	if ready.Checks.Replication == nil {
		return replication.State{}, errors.New("/readyz has no checks.replication: a cacheside without the replication consumer")
	}
	return *ready.Checks.Replication, nil
}

// consumerMetrics is one scrape of the consumer's instruments.
type consumerMetrics struct {
	latency          []results.Bucket
	changes, retired float64
}

// scrape reads the consumer's instruments from the service's /metrics. An instrument that has
// recorded nothing yet is not exported, and reads as empty.
func (rb *replicationBench) scrape(ctx context.Context, s *service) (consumerMetrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.adminURL+"/metrics", nil)
	if err != nil {
		return consumerMetrics{}, err
	}
	res, err := rb.client.Do(req)
	if err != nil {
		return consumerMetrics{}, fmt.Errorf("GET /metrics: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return consumerMetrics{}, fmt.Errorf("GET /metrics: %s", res.Status)
	}
	return parseConsumerMetrics(res.Body)
}

// parseConsumerMetrics reads the consumer's instruments from the Prometheus text format, each
// summed over its series.
func parseConsumerMetrics(r io.Reader) (consumerMetrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(r)
	if err != nil {
		return consumerMetrics{}, fmt.Errorf("parsing /metrics: %w", err)
	}
	var m consumerMetrics
	if f := families[metricLatency]; f != nil {
		for _, series := range f.GetMetric() {
			b, err := results.AddBuckets(m.latency, buckets(series.GetHistogram()))
			if err != nil {
				return consumerMetrics{}, fmt.Errorf("%s: %w", metricLatency, err)
			}
			m.latency = b
		}
	}
	m.changes, m.retired = counter(families, metricChanges), counter(families, metricRetired)
	return m, nil
}

// buckets is h's buckets with the +Inf bucket, which the parser may leave implicit in the count.
func buckets(h *dto.Histogram) []results.Bucket {
	var out []results.Bucket
	for _, b := range h.GetBucket() {
		n := float64(b.GetCumulativeCount())
		if b.CumulativeCountFloat != nil {
			n = b.GetCumulativeCountFloat()
		}
		out = append(out, results.Bucket{UpperBound: b.GetUpperBound(), Count: n})
	}
	slices.SortFunc(out, func(a, b results.Bucket) int {
		switch {
		case a.UpperBound < b.UpperBound:
			return -1
		case a.UpperBound > b.UpperBound:
			return 1
		}
		return 0
	})
	if len(out) == 0 || !math.IsInf(out[len(out)-1].UpperBound, 1) {
		n := float64(h.GetSampleCount())
		if h.SampleCountFloat != nil {
			n = h.GetSampleCountFloat()
		}
		out = append(out, results.Bucket{UpperBound: math.Inf(1), Count: n})
	}
	return out
}

// counter is the sum of a counter's series. The family carries the _total suffix in the text
// format, or not, depending on the exporter's version.
func counter(families map[string]*dto.MetricFamily, name string) float64 {
	f := families[name]
	if f == nil {
		f = families[strings.TrimSuffix(name, "_total")]
	}
	var sum float64
	for _, series := range f.GetMetric() {
		sum += series.GetCounter().GetValue()
	}
	return sum
}

// dropSlot drops the section's slot, if it exists, waiting for the walsender of a consumer that
// just stopped to let go of it, and deletes the service's record of it. It works on a context
// of its own: a slot left behind after Ctrl-C would hold WAL in a database the run did not start.
func (rb *replicationBench) dropSlot(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	for {
		_, err := rb.admin.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", replicationSlot)
		var pgErr *pgconn.PgError
		if err == nil {
			break
		}
		if !errors.As(err, &pgErr) || pgErr.Code != "55006" { // object_in_use: still streamed from
			return fmt.Errorf("dropping replication slot %s: %w", replicationSlot, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("dropping replication slot %s: %w", replicationSlot, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if _, err := rb.admin.Exec(ctx, "DELETE FROM cache_replication_slots WHERE slot_name = $1", replicationSlot); err != nil {
		return fmt.Errorf("forgetting replication slot %s: %w", replicationSlot, err)
	}
	return nil
}

// writer commits single-row UPDATEs of the samples table at a fixed rate through a plain pgx
// connection of its own: a writer outside the API, whose changes the service hears of only
// through the replication stream.
type writer struct {
	conn      *pgx.Conn
	ids       []int64
	every     time.Duration
	n         int // UPDATEs sent so far, over every phase: picks the row and the title
	committed atomic.Int64
}

func newWriter(ctx context.Context, url string, rate float64) (*writer, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parsing DATABASE_URL: %w", err)
	}
	// PostgreSQL's default, which the load test's throwaway cluster turns off for speed. A commit
	// is streamed only once its WAL is flushed: with synchronous_commit off that waits for the WAL
	// writer (up to 3 × wal_writer_delay, 600ms by default), and the consumer would be charged
	// with the wait.
	cfg.RuntimeParams["synchronous_commit"] = "on"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting the writer to postgres: %w", err)
	}
	rows, _ := conn.Query(ctx, "SELECT id FROM samples ORDER BY id")
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err == nil && len(ids) == 0 {
		err = errors.New("the table is empty")
	}
	if err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("listing the samples the writer updates: %w", err)
	}
	return &writer{conn: conn, ids: ids, every: time.Duration(float64(time.Second) / rate)}, nil
}

// start runs the writer until the returned stop is called; stop waits for the UPDATE in flight
// (cancelling it would close the connection) and returns the writer's error, if any.
func (w *writer) start(ctx context.Context) (stop func() error) {
	quit, errc := make(chan struct{}), make(chan error, 1)
	go func() { errc <- w.run(ctx, quit) }()
	return func() error {
		close(quit)
		return <-errc
	}
}

func (w *writer) run(ctx context.Context, quit <-chan struct{}) error {
	// A ticker drops the ticks of a writer that fell behind: the rate committed is then lower
	// than asked, and the report shows it, rather than a burst catching up.
	tick := time.NewTicker(w.every)
	defer tick.Stop()
	for {
		select {
		case <-quit:
			return nil
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		id := w.ids[w.n%len(w.ids)]
		w.n++
		if _, err := w.conn.Exec(ctx, "UPDATE samples SET title = $2 WHERE id = $1", id, "loadtest write "+strconv.Itoa(w.n)); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("the writer's UPDATE of sample %d: %w", id, err)
		}
		w.committed.Add(1)
	}
}

// replicationNotes explain the section's columns and how it was measured.
func replicationNotes(o options, r results.Replication) []string {
	rounds := "One round per setting (`-repeat 1`); on a shared machine, differences of 20 % between runs are common: `-repeat 3` measures each setting three times and keeps its median."
	if o.repeat > 1 {
		rounds = fmt.Sprintf("Each row is the round with the median req/s of %d (its latencies are that round's); the settings took turns going first.", o.repeat)
	}
	return []string{
		"**The writer** is this program's own pgx connection, outside the API: one autocommitted `UPDATE samples SET title = … WHERE id = …` per tick, the rows taken in turn, with `synchronous_commit = on` (PostgreSQL's default; the load test's cluster runs with it off, and a commit is streamed only once its WAL is flushed, so the WAL writer's delay of up to 600ms would count as the consumer's). It runs through the warm-up and the measurement of both rows. **writes/s** is what it committed during the measurement; a writer slowed by the load falls below the rate asked.",
		"**REPLICATION_ENABLED=true**: the service follows the logical replication slot `" + replicationSlot + "` and retires the cached views that each committed change touched; every UPDATE retires the list `/cache` serves, so **cache hits** fall while it is refilled from Postgres. **false**: nothing retires the writer's changes, and `/cache` serves views older than them (until `CACHE_TTL`). **vs false** is therefore the cost of keeping the cache right under writes made outside the API (decoding in Postgres and in the service, the retirements, the refills they cause), not of decoding alone.",
		fmt.Sprintf("Each round starts one cacheside for one setting, on the redis tier (`CACHE_LOCAL_ENABLED=false`), and stops it after; the other setting's is not running, so the true row alone pays for the consumer. With the consumer on, the slot is made for the round (its one-time retirement of every view happens before the warm-up), `/readyz` must report the service `leader` and `streaming` before the writer starts, and the slot is dropped after the round, so no round starts behind on what an earlier writer changed. The table's services run with `REPLICATION_ENABLED=false` and are stopped before this section. %s warm-up, %s measured, per round.", o.warmup, o.duration),
		fmt.Sprintf("**commit→retired p50, p99**: the service's histogram `%s` (from a transaction's commit timestamp in Postgres to its views retired in Redis; both on this machine's clock), scraped from `/metrics` before and after each measurement with the consumer on, the bucket deltas pooled over the %d round(s), the quantile interpolated linearly within its bucket as Prometheus's `histogram_quantile` does: the true value may lie anywhere in the bucket in parentheses. **observations** is the histogram's count over them: the writer's transactions retired during the measurements; the consumer read %s row changes and retired %s cache keys in them.",
			metricLatency, o.repeat, strconv.FormatFloat(r.Changes, 'f', 0, 64), strconv.FormatFloat(r.KeysRetired, 'f', 0, 64)),
		rounds,
	}
}
