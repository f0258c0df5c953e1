package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// record is one operation as a client saw it.
type record struct {
	Client    int
	Proc      int    // which service process
	Kind      string // list (/cache), direct (/sample), item, create, update, delete
	ID        int64  // the sample (for create: the id it got, if it said)
	Title     string // what a write wrote
	Call, Ret int64  // nanoseconds since the run began
	Status    int    // HTTP status; 0 when no response came
	Err       string // why no response came
	Cancelled bool   // the client gave up on purpose, mid-request
	Cache     string // X-Cache
	Tier      string // X-Cache-Tier
	Trace     string // the trace id sent, to find the request in the service's log
	Final     bool   // a read of the final check, after the faults stopped
	Storm     bool   // part of a miss storm
	Seen      []sample
}

type sample struct {
	ID    int64  `json:"id"`
	Title string `json:"title"`
}

// history collects records and the ids known so far.
type history struct {
	base time.Time
	mu   sync.Mutex
	recs []record
	ids  []int64 // every id seen or created, in order
	has  map[int64]bool
	live []int64 // ids not known to be deleted: what most operations pick from
}

func (h *history) now() int64 { return time.Since(h.base).Nanoseconds() }

func (h *history) add(r record) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r)
	if r.Kind == "create" && r.ID != 0 {
		h.know(r.ID)
	}
	if r.Kind == "delete" && (r.Status == 204 || r.Status == 404) {
		h.live = slices.DeleteFunc(h.live, func(id int64) bool { return id == r.ID })
	}
	for _, s := range r.Seen {
		h.know(s.ID)
	}
}

func (h *history) liveCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.live)
}

func (h *history) know(id int64) {
	if !h.has[id] {
		h.has[id] = true
		h.ids = append(h.ids, id)
		h.live = append(h.live, id)
	}
}

// pick chooses a sample: a live one, or one time in ten any ever known (a deleted one, a 404).
func (h *history) pick(rng *mrand.Rand) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	from := h.live
	if len(from) == 0 || rng.IntN(10) == 0 {
		from = h.ids
	}
	if len(from) == 0 {
		return 1
	}
	return from[rng.IntN(len(from))]
}

// worker runs one client: a mix of cached list reads, item reads, direct reads and writes,
// through either service process, until ctx ends.
type worker struct {
	id       int
	rng      *mrand.Rand
	services []*service
	h        *history
	n        int
	items    int           // the table holds between items and 2×items live samples
	gate     *sync.RWMutex // a storm holds it to run alone
}

func (w *worker) run(ctx context.Context) {
	for ctx.Err() == nil {
		w.gate.RLock()
		w.one(ctx)
		w.gate.RUnlock()
	}
}

func (w *worker) one(ctx context.Context) {
	p := w.rng.IntN(len(w.services))
	live := w.h.liveCount()
	switch r := w.rng.IntN(100); {
	case r < 40:
		w.h.add(w.read(ctx, p, "list", 0))
	case r < 65:
		w.h.add(w.read(ctx, p, "item", w.h.pick(w.rng)))
	case r < 72:
		w.h.add(w.read(ctx, p, "direct", 0))
	case r < 94:
		w.h.add(w.write(ctx, p, "update", w.h.pick(w.rng)))
	case r < 97 && live < 2*w.items || r >= 97 && live <= w.items:
		w.h.add(w.write(ctx, p, "create", 0))
	default:
		w.h.add(w.write(ctx, p, "delete", w.h.pick(w.rng)))
	}
}

func traceID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// read does a GET; the run's context does not cut it short (the run ends between operations).
func (w *worker) read(_ context.Context, p int, kind string, id int64) record {
	path := map[string]string{"list": "/cache", "direct": "/sample", "item": "/samples/" + strconv.FormatInt(id, 10)}[kind]
	r := record{Client: w.id, Proc: p, Kind: kind, ID: id, Trace: traceID()}
	req, _ := http.NewRequest("GET", w.services[p].url(path), nil)
	req.Header.Set("traceparent", "00-"+r.Trace+"-00f067aa0ba902b7-01")
	if w.rng.IntN(2) == 0 {
		req.Header.Set("Accept-Encoding", "gzip") // both representations get read
	}
	r.Call = w.h.now()
	res, err := w.services[p].client.Do(req)
	if err != nil {
		r.Ret, r.Err = w.h.now(), err.Error()
		return r
	}
	body, err := readBody(res)
	r.Ret, r.Status = w.h.now(), res.StatusCode
	r.Cache, r.Tier = res.Header.Get("X-Cache"), res.Header.Get("X-Cache-Tier")
	if err != nil {
		r.Status, r.Err = 0, err.Error()
		return r
	}
	if res.StatusCode == 200 {
		switch kind {
		case "item":
			var s sample
			if json.Unmarshal(body, &s) != nil || s.ID != id {
				r.Status, r.Err = 0, fmt.Sprintf("unexpected body %q", body)
			}
			r.Seen = []sample{s}
		default:
			if json.Unmarshal(body, &r.Seen) != nil {
				r.Status, r.Err = 0, fmt.Sprintf("unexpected body %q", body)
			}
		}
	}
	return r
}

// write does a POST, PUT or DELETE with a title no other write uses. One write in twenty is
// cancelled by the client a few milliseconds in.
func (w *worker) write(_ context.Context, p int, kind string, id int64) record {
	w.n++
	r := record{Client: w.id, Proc: p, Kind: kind, ID: id, Trace: traceID(), Title: fmt.Sprintf("c%d-%d", w.id, w.n)}
	method, path := map[string]string{"create": "POST", "update": "PUT", "delete": "DELETE"}[kind], "/samples"
	var body io.Reader
	if kind != "create" {
		path += "/" + strconv.FormatInt(id, 10)
	}
	if kind != "delete" {
		body = strings.NewReader(`{"title":"` + r.Title + `"}`)
	} else {
		r.Title = ""
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if w.rng.IntN(20) == 0 {
		r.Cancelled = true
		time.AfterFunc(time.Duration(w.rng.IntN(5000))*time.Microsecond, cancel)
	}
	req, _ := http.NewRequestWithContext(ctx, method, w.services[p].url(path), body)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+w.services[p].token)
	req.Header.Set("traceparent", "00-"+r.Trace+"-00f067aa0ba902b7-01")
	r.Call = w.h.now()
	res, err := w.services[p].client.Do(req)
	if err != nil {
		r.Ret, r.Err = w.h.now(), err.Error()
		return r
	}
	b, err := readBody(res)
	r.Ret, r.Status = w.h.now(), res.StatusCode
	if err != nil {
		r.Status, r.Err = 0, err.Error()
		return r
	}
	if kind == "create" && res.StatusCode == 201 {
		var s sample
		if json.Unmarshal(b, &s) == nil {
			r.ID = s.ID
		}
	}
	return r
}

func readBody(res *http.Response) ([]byte, error) {
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil || res.Header.Get("Content-Encoding") != "gzip" {
		return b, err
	}
	return gunzip(b)
}

// storm holds the other clients off, retires the list with a write on one process, then sends
// it n concurrent reads of /cache, and returns how many times that process loaded the list from
// Postgres meanwhile, and how the other counts of listCounts moved.
func storm(ctx context.Context, w *worker, p, n int) (loads float64, moved map[string]float64, err error) {
	w.gate.Lock()
	defer w.gate.Unlock()
	before, err := w.services[p].listCounts()
	if err != nil {
		return 0, nil, err
	}
	w.h.add(w.write(ctx, p, "update", w.h.pick(w.rng)))
	var wg sync.WaitGroup
	recs := make([]record, n)
	for i := range n {
		wg.Go(func() {
			recs[i] = w.read(ctx, p, "list", 0)
			recs[i].Storm = true
		})
	}
	wg.Wait()
	for _, r := range recs {
		w.h.add(r)
	}
	after, err := w.services[p].listCounts()
	if err != nil {
		return 0, nil, err
	}
	moved = map[string]float64{}
	for k, v := range after {
		if d := v - before[k]; d != 0 && k != "loads" {
			moved[k] = d
		}
	}
	return after["loads"] - before["loads"], moved, nil
}
