package e2e_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// The OTLP-JSON shape Jaeger's /api/v3 answers with. Ids are hex, times and ints are strings.
type traceResponse struct {
	Result struct {
		ResourceSpans []struct {
			Resource struct {
				Attributes []kv `json:"attributes"`
			} `json:"resource"`
			ScopeSpans []struct {
				Spans []span `json:"spans"`
			} `json:"scopeSpans"`
		} `json:"resourceSpans"`
	} `json:"result"`
}

type kv struct {
	Key   string `json:"key"`
	Value struct {
		StringValue *string  `json:"stringValue"`
		BoolValue   *bool    `json:"boolValue"`
		IntValue    *string  `json:"intValue"`
		DoubleValue *float64 `json:"doubleValue"`
	} `json:"value"`
}

func (a kv) String() string {
	switch {
	case a.Value.StringValue != nil:
		return *a.Value.StringValue
	case a.Value.BoolValue != nil:
		return fmt.Sprint(*a.Value.BoolValue)
	case a.Value.IntValue != nil:
		return *a.Value.IntValue
	case a.Value.DoubleValue != nil:
		return fmt.Sprint(*a.Value.DoubleValue)
	}
	return ""
}

type span struct {
	TraceID      string  `json:"traceId"`
	SpanID       string  `json:"spanId"`
	ParentSpanID string  `json:"parentSpanId"`
	Name         string  `json:"name"`
	Kind         int     `json:"kind"`
	Start        string  `json:"startTimeUnixNano"`
	End          string  `json:"endTimeUnixNano"`
	Attributes   []kv    `json:"attributes"`
	Events       []event `json:"events"`
	Links        []link  `json:"links"`
	Status       struct {
		Code int `json:"code"`
	} `json:"status"`
}

type event struct {
	Name       string `json:"name"`
	Attributes []kv   `json:"attributes"`
}

// link points from a span to a span of another trace (or of the same one).
type link struct {
	TraceID    string `json:"traceId"`
	SpanID     string `json:"spanId"`
	Attributes []kv   `json:"attributes"`
}

const (
	kindServer  = 2
	statusError = 2
)

func (s span) attr(key string) (string, bool) { return attrOf(s.Attributes, key) }

func attrOf(attrs []kv, key string) (string, bool) {
	for _, a := range attrs {
		if a.Key == key {
			return a.String(), true
		}
	}
	return "", false
}

func (s span) hasEvent(name string) bool {
	_, ok := s.event(name)
	return ok
}

// event returns the span's first event called name.
func (s span) event(name string) (event, bool) {
	i := slices.IndexFunc(s.Events, func(e event) bool { return e.Name == name })
	if i < 0 {
		return event{}, false
	}
	return s.Events[i], true
}

// linksTo returns the span's links to the span id of trace traceID.
func (s span) linksTo(traceID, id string) []link {
	var out []link
	for _, l := range s.Links {
		if l.TraceID == traceID && l.SpanID == id {
			out = append(out, l)
		}
	}
	return out
}

// trace is one trace's spans with helpers to walk the tree.
type trace struct {
	spans   []span
	service string
}

func (t trace) find(match func(span) bool) []span {
	var out []span
	for _, s := range t.spans {
		if match(s) {
			out = append(out, s)
		}
	}
	return out
}

func (t trace) named(prefix string) []span {
	return t.find(func(s span) bool { return strings.HasPrefix(s.Name, prefix) })
}

// descendsFrom reports whether s is below ancestor in the tree.
func (t trace) descendsFrom(s, ancestor span) bool {
	byID := map[string]span{}
	for _, x := range t.spans {
		byID[x.SpanID] = x
	}
	for p, ok := byID[s.ParentSpanID]; ok; p, ok = byID[p.ParentSpanID] {
		if p.SpanID == ancestor.SpanID {
			return true
		}
	}
	return false
}

func (t trace) String() string {
	var b strings.Builder
	for _, s := range t.spans {
		fmt.Fprintf(&b, "  %s (id %s parent %s)\n", s.Name, s.SpanID, s.ParentSpanID)
	}
	return b.String()
}

func isPostgres(s span) bool {
	v, ok := s.attr("db.system.name")
	if !ok {
		v, ok = s.attr("db.system")
	}
	return ok && v == "postgresql"
}

func isRedis(s span) bool {
	v, ok := s.attr("db.system")
	if !ok {
		v, ok = s.attr("db.system.name")
	}
	return ok && v == "redis"
}

// jaeger reads traces through the stable HTTP query API (/api/v3).
type jaeger struct{ base string }

// traceByID returns the trace, or an error while Jaeger does not have it yet (404).
func (j jaeger) traceByID(id string) (trace, error) {
	return j.get("/api/v3/traces/" + id)
}

// search returns the traces of service that started in the window.
func (j jaeger) search(service string, from, to time.Time) ([]trace, error) {
	q := url.Values{
		"query.service_name":   {service},
		"query.start_time_min": {from.UTC().Format(time.RFC3339Nano)},
		"query.start_time_max": {to.UTC().Format(time.RFC3339Nano)},
		"query.num_traces":     {"100"},
	}
	t, err := j.get("/api/v3/traces?" + q.Encode())
	if err != nil {
		return nil, err
	}
	byTrace := map[string][]span{}
	for _, s := range t.spans {
		byTrace[s.TraceID] = append(byTrace[s.TraceID], s)
	}
	var out []trace
	for _, spans := range byTrace {
		out = append(out, trace{spans: spans, service: t.service})
	}
	return out, nil
}

func (j jaeger) get(path string) (trace, error) {
	res, err := http.Get(j.base + path)
	if err != nil {
		return trace{}, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return trace{}, err
	}
	if res.StatusCode == http.StatusNotFound {
		return trace{}, fmt.Errorf("not in Jaeger yet")
	}
	if res.StatusCode != http.StatusOK {
		return trace{}, fmt.Errorf("GET %s: %d %s", path, res.StatusCode, body)
	}
	var tr traceResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		return trace{}, fmt.Errorf("GET %s: not the query API's JSON: %v: %.200s", path, err, body)
	}
	var t trace
	for _, rs := range tr.Result.ResourceSpans {
		for _, a := range rs.Resource.Attributes {
			if a.Key == "service.name" {
				t.service = a.String()
			}
		}
		for _, ss := range rs.ScopeSpans {
			t.spans = append(t.spans, ss.Spans...)
		}
	}
	return t, nil
}
