package httpapi_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"

	"github.com/cacheside/cacheside/app/httpapi"
	"github.com/cacheside/cacheside/app/internal/testenv"
	"github.com/cacheside/cacheside/app/platform/logging"
	"github.com/cacheside/cacheside/app/platform/postgres"
	"github.com/cacheside/cacheside/app/samples"
	"github.com/cacheside/cacheside/app/service"
)

// env is the service as the binary assembles it, from the default configuration, over a real
// Postgres database and a real Redis.
type env struct {
	url         string
	router      *gin.Engine
	logs        *testenv.Buffer
	svc         *service.Service
	databaseURL string
	token       string // sent on every request of do (API_TOKENS holds it, as in production)
}

type setup struct {
	databaseURL string // default: a fresh database on the shared test server
	redisURL    string // default: the shared test Redis
	nearCache   bool   // turn the in-process tier on, with entries living a minute
	overrides   []string
}

func start(t testing.TB, s setup) *env {
	t.Helper()
	var overrides []string
	if s.databaseURL != "" {
		overrides = append(overrides, "DATABASE_URL="+s.databaseURL)
	}
	if s.redisURL != "" {
		overrides = append(overrides, "REDIS_URL="+s.redisURL)
	}
	if s.nearCache {
		overrides = append(overrides, "CACHE_LOCAL_ENABLED=true", "CACHE_LOCAL_TTL=1m")
	}
	cfg := testenv.Config(t, append(overrides, s.overrides...)...)
	logs := &testenv.Buffer{}
	log := logging.New(logs, "debug", "json")
	svc, err := service.Open(context.Background(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close(context.Background()) })
	if s.nearCache {
		testenv.Eventually(t, 10*time.Second, func() error {
			if h := svc.Cache.Health(context.Background()); h.Local != "live" {
				return fmt.Errorf("near-cache %s", h.Local)
			}
			return nil
		})
	}
	router := svc.Handler().(*gin.Engine)
	srv := httptest.NewServer(router)
	t.Cleanup(srv.Close)
	e := &env{url: srv.URL, router: router, logs: logs, svc: svc, databaseURL: cfg.DatabaseURL}
	if len(cfg.APITokens) > 0 {
		e.token = cfg.APITokens[0]
	}
	return e
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("body is not JSON: %v: %q", err, r.body)
	}
	return v
}

func (e *env) do(t *testing.T, method, path, contentType string, body io.Reader) response {
	t.Helper()
	req, err := http.NewRequest(method, e.url+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if e.token != "" {
		req.Header.Set("Authorization", "Bearer "+e.token)
	}
	return roundTrip(t, http.DefaultClient, req)
}

// roundTrip sends req with client and reads the whole response.
func roundTrip(t *testing.T, client *http.Client, req *http.Request) response {
	t.Helper()
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}
}

func (e *env) get(t *testing.T, path string) response { return e.do(t, "GET", path, "", nil) }

func (e *env) send(t *testing.T, method, path, body string) response {
	return e.do(t, method, path, "application/json", strings.NewReader(body))
}

func (e *env) create(t *testing.T, title string) samples.Sample {
	t.Helper()
	r := e.send(t, "POST", "/samples", fmt.Sprintf(`{"title":%q}`, title))
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var s samples.Sample
	if err := json.Unmarshal(r.body, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func titles(t *testing.T, body []byte) []string {
	t.Helper()
	var list []samples.Sample
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("not a list of samples: %v: %q", err, body)
	}
	out := []string{}
	for _, s := range list {
		out = append(out, s.Title)
	}
	return out
}

func TestCacheServesWhatSampleServesAndWritesShowAtOnce(t *testing.T) {
	e := start(t, setup{})
	first := e.create(t, "first")
	e.create(t, "second")

	direct := e.get(t, "/sample")
	miss := e.get(t, "/cache")
	hit := e.get(t, "/cache")
	if direct.status != 200 || miss.status != 200 || hit.status != 200 {
		t.Fatalf("statuses %d %d %d", direct.status, miss.status, hit.status)
	}
	if got := []string{direct.header.Get("X-Cache"), miss.header.Get("X-Cache"), hit.header.Get("X-Cache")}; !cmp.Equal(got, []string{"", "MISS", "HIT"}) {
		t.Errorf("X-Cache of /sample, /cache, /cache = %q", got)
	}
	if !bytes.Equal(direct.body, miss.body) || !bytes.Equal(miss.body, hit.body) {
		t.Errorf("bodies differ:\n/sample %s\n/cache  %s\nhit     %s", direct.body, miss.body, hit.body)
	}
	if diff := cmp.Diff([]string{"first", "second"}, titles(t, hit.body)); diff != "" {
		t.Errorf("list (-want +got):\n%s", diff)
	}
	if ct := hit.header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}

	steps := []struct {
		name  string
		write func()
		want  []string
	}{
		{"a created sample is listed at once", func() { e.create(t, "third") }, []string{"first", "second", "third"}},
		{"an updated title is listed at once", func() {
			if r := e.send(t, "PUT", fmt.Sprintf("/samples/%d", first.ID), `{"title":"first, renamed"}`); r.status != 200 {
				t.Fatalf("PUT: %d %s", r.status, r.body)
			}
		}, []string{"first, renamed", "second", "third"}},
		{"a deleted sample is gone at once", func() {
			if r := e.do(t, "DELETE", fmt.Sprintf("/samples/%d", first.ID), "", nil); r.status != 204 {
				t.Fatalf("DELETE: %d %s", r.status, r.body)
			}
		}, []string{"second", "third"}},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			e.get(t, "/cache") // make sure a cached list exists to be retired
			step.write()
			for _, path := range []string{"/cache", "/sample"} {
				if diff := cmp.Diff(step.want, titles(t, e.get(t, path).body)); diff != "" {
					t.Errorf("%s (-want +got):\n%s", path, diff)
				}
			}
		})
	}
}

func TestItemReadsAreCachedAndWritesRetireThem(t *testing.T) {
	e := start(t, setup{})
	s := e.create(t, "one")
	path := fmt.Sprintf("/samples/%d", s.ID)

	miss, hit := e.get(t, path), e.get(t, path)
	if miss.header.Get("X-Cache") != "MISS" || hit.header.Get("X-Cache") != "HIT" || !bytes.Equal(miss.body, hit.body) {
		t.Fatalf("item reads: %s %s / %s %s", miss.header.Get("X-Cache"), miss.body, hit.header.Get("X-Cache"), hit.body)
	}
	var got samples.Sample
	if err := json.Unmarshal(hit.body, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(s, got); diff != "" {
		t.Errorf("item (-created +read):\n%s", diff)
	}

	e.send(t, "PUT", path, `{"title":"two"}`)
	if r := e.get(t, path); !strings.Contains(string(r.body), `"title":"two"`) {
		t.Errorf("after PUT: %s", r.body)
	}
	e.do(t, "DELETE", path, "", nil)
	if r := e.get(t, path); r.status != 404 {
		t.Errorf("after DELETE: %d %s", r.status, r.body)
	}
}

func TestAMissingItemIsRememberedUntilItIsCreated(t *testing.T) {
	e := start(t, setup{})
	existing := e.create(t, "exists")
	next := fmt.Sprintf("/samples/%d", existing.ID+1)

	if r := e.get(t, next); r.status != 404 || r.header.Get("X-Cache") != "MISS" {
		t.Fatalf("first read of a missing id: %d %s", r.status, r.header.Get("X-Cache"))
	}
	if r := e.get(t, next); r.status != 404 || r.header.Get("X-Cache") != "HIT" {
		t.Fatalf("second read of a missing id: %d %s, want a cached 404", r.status, r.header.Get("X-Cache"))
	}
	e.create(t, "the next id")
	if r := e.get(t, next); r.status != 200 {
		t.Errorf("after creating it: %d %s", r.status, r.body)
	}
}

func TestBadInputGetsAClearJSONError(t *testing.T) {
	e := start(t, setup{})
	s := e.create(t, "exists")
	item := fmt.Sprintf("/samples/%d", s.ID)
	tests := []struct {
		name        string
		method      string
		path        string
		contentType string
		body        string
		status      int
		code        string
	}{
		{"an unknown id is not found", "GET", "/samples/999999", "", "", 404, "not_found"},
		{"a non-numeric id is a bad request", "GET", "/samples/abc", "", "", 400, "invalid_id"},
		{"a zero id is a bad request", "GET", "/samples/0", "", "", 400, "invalid_id"},
		{"an id past int64 is a bad request", "GET", "/samples/99999999999999999999", "", "", 400, "invalid_id"},
		{"updating an unknown id is not found", "PUT", "/samples/999999", "application/json", `{"title":"x"}`, 404, "not_found"},
		{"deleting an unknown id is not found", "DELETE", "/samples/999999", "", "", 404, "not_found"},
		{"invalid JSON is a bad request", "POST", "/samples", "application/json", `{"title":`, 400, "invalid_json"},
		{"an empty body is a bad request", "POST", "/samples", "application/json", ``, 400, "invalid_json"},
		{"a JSON array is a bad request", "POST", "/samples", "application/json", `["x"]`, 400, "invalid_json"},
		{"a JSON null is a bad request", "POST", "/samples", "application/json", `null`, 400, "invalid_json"},
		{"trailing data is a bad request", "POST", "/samples", "application/json", `{"title":"a"}{"title":"b"}`, 400, "invalid_json"},
		{"an unknown field is a bad request", "POST", "/samples", "application/json", `{"title":"a","color":"red"}`, 400, "unknown_field"},
		{"a missing title is unprocessable", "POST", "/samples", "application/json", `{}`, 422, "validation_failed"},
		{"a null title is unprocessable", "POST", "/samples", "application/json", `{"title":null}`, 422, "validation_failed"},
		{"an empty title is unprocessable", "POST", "/samples", "application/json", `{"title":""}`, 422, "validation_failed"},
		{"a blank title is unprocessable", "PUT", item, "application/json", `{"title":"   "}`, 422, "validation_failed"},
		{"a 201-character title is unprocessable", "POST", "/samples", "application/json", `{"title":"` + strings.Repeat("é", 201) + `"}`, 422, "validation_failed"},
		{"a non-string title is unprocessable", "POST", "/samples", "application/json", `{"title":42}`, 422, "validation_failed"},
		{"a NUL in the title is unprocessable", "POST", "/samples", "application/json", `{"title":"a\u0000b"}`, 422, "validation_failed"},
		{"a body over 1 MiB is too large", "POST", "/samples", "application/json", `{"title":"` + strings.Repeat("a", 2<<20) + `"}`, 413, "body_too_large"},
		{"a form body is an unsupported media type", "POST", "/samples", "application/x-www-form-urlencoded", `title=a`, 415, "unsupported_media_type"},
		{"an unknown route is not found", "GET", "/nope", "", "", 404, "route_not_found"},
		{"a wrong method is not allowed", "PATCH", "/samples", "application/json", `{}`, 405, "method_not_allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(t, tc.method, tc.path, tc.contentType, strings.NewReader(tc.body))
			var body struct {
				Error struct{ Code, Message string }
			}
			if err := json.Unmarshal(r.body, &body); err != nil {
				t.Fatalf("%d with a non-JSON body %q", r.status, r.body)
			}
			if r.status != tc.status || body.Error.Code != tc.code || body.Error.Message == "" {
				t.Errorf("got %d %+v, want %d with code %q and a message", r.status, body.Error, tc.status, tc.code)
			}
		})
	}

	// Nothing above stored anything: the one sample is still the only one, unchanged.
	if diff := cmp.Diff([]string{"exists"}, titles(t, e.get(t, "/sample").body)); diff != "" {
		t.Errorf("bad requests changed data (-want +got):\n%s", diff)
	}
}

func TestTitlesOfExactly200CharactersAreAccepted(t *testing.T) {
	e := start(t, setup{})
	title := strings.Repeat("é", 200) // 400 bytes, 200 characters
	if got := e.create(t, title); got.Title != title {
		t.Errorf("stored title differs")
	}
}

// logLine is one JSON line of the service's log.
type logLine struct {
	Level, Msg, Route, Err, Panic, Stack, Cache string
	Status                                      int
	TraceID                                     string `json:"trace_id"`
}

func (e *env) lines(t *testing.T) []logLine {
	t.Helper()
	var out []logLine
	for _, l := range strings.Split(strings.TrimSpace(e.logs.String()), "\n") {
		if l == "" {
			continue
		}
		var line logLine
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("a log line is not JSON: %q", l)
		}
		out = append(out, line)
	}
	return out
}

// TestCacheLogLinesCarryTheRequestsTraceID: what the cache logs while serving a request (here a
// write whose invalidation Redis does not take) leads to the request's trace.
func TestCacheLogLinesCarryTheRequestsTraceID(t *testing.T) {
	previous := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.TraceContext{}) // as telemetry.Setup does in the binary
	t.Cleanup(func() { otel.SetTextMapPropagator(previous) })
	redisSrv := testenv.StartRedis(t)
	e := start(t, setup{redisURL: redisSrv.URL()})
	redisSrv.Pause()
	defer redisSrv.Resume()
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	req, _ := http.NewRequest("POST", e.url+"/samples", strings.NewReader(`{"title":"traced"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	req.Header.Set("Authorization", "Bearer "+e.token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 201 {
		t.Fatalf("POST with Redis frozen: %d", res.StatusCode)
	}
	for _, l := range e.lines(t) {
		if strings.Contains(l.Msg, "invalidation deferred") {
			if l.TraceID != traceID {
				t.Errorf("the cache's line %q has trace_id %q, want the request's %s", l.Msg, l.TraceID, traceID)
			}
			return
		}
	}
	t.Errorf("no deferred-invalidation line:\n%s", e.logs)
}

// TestAFailedRequestIsLoggedOnce: the error path logs once per request, on the request's access
// line, at a level saying whose fault it is: a bug (error, with the panic's stack), a dependency
// being down (warn), the client hanging up (info). Two lines for one failure make every alert
// and every error count wrong.
func TestAFailedRequestIsLoggedOnce(t *testing.T) {
	pg := testenv.StartPostgres(t)
	e := start(t, setup{databaseURL: testenv.CreateDatabase(t, pg.AdminURL())})
	e.router.GET("/boom", func(*gin.Context) { panic("kaboom") })
	if _, err := e.svc.Pool.Exec(context.Background(), "ALTER TABLE samples RENAME TO samples_elsewhere"); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, path string
		status     int
		level      string
		prepare    func()
		check      func(logLine) bool
	}{
		{"a bug is an error with its cause", "/sample", 500, "ERROR", nil,
			func(l logLine) bool { return strings.Contains(l.Err, "samples") }},
		{"a panic is an error with its stack", "/boom", 500, "ERROR", nil,
			func(l logLine) bool { return l.Panic == "kaboom" && strings.Contains(l.Stack, "httpapi_test") }},
		{"a dependency down is a warning", "/sample", 503, "WARN", pg.Stop,
			func(l logLine) bool { return strings.Contains(l.Err, "database unavailable") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.prepare != nil {
				tc.prepare()
			}
			before := len(e.lines(t))
			r := e.get(t, tc.path)
			if r.status != tc.status || strings.Contains(string(r.body), "kaboom") || strings.Contains(string(r.body), "samples") {
				t.Errorf("answered %d %s, want %d with nothing internal in the body", r.status, r.body, tc.status)
			}
			var logged []logLine
			for _, l := range e.lines(t)[before:] {
				if l.Level != "DEBUG" {
					logged = append(logged, l)
				}
			}
			if len(logged) != 1 || logged[0].Msg != "request" || logged[0].Level != tc.level || logged[0].Status != tc.status || !tc.check(logged[0]) {
				t.Errorf("logged %+v, want one %s request line with the cause", logged, tc.level)
			}
		})
	}
	if r := e.get(t, "/healthz"); r.status != 200 {
		t.Errorf("server unhealthy after the failures: %d", r.status)
	}
	pg.Start() // for the database's clean-up
}

// readyHealth reports every dependency up.
type readyHealth struct{}

func (readyHealth) Postgres(context.Context) error     { return nil }
func (readyHealth) Redis(context.Context) (any, error) { return map[string]string{"status": "up"}, nil }
func (readyHealth) Replication() any                   { return map[string]string{"role": "off"} }

// stallUntilGone is a pgx tracer that holds a query, before it is sent, until the request that
// issued it has gone away.
type stallUntilGone struct{ reached chan struct{} }

func (s stallUntilGone) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if strings.HasPrefix(data.SQL, "SELECT id, title") {
		close(s.reached)
		<-ctx.Done()
	}
	return ctx
}

func (stallUntilGone) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestAClientThatHangsUpIsNotAnOutage: a request that goes away while its Postgres call is under
// way is the client's doing, whatever pgx was doing when it noticed: waiting for a connection
// to be opened to a Postgres that does not answer yet, or about to send the query (pgx then
// reports a timeout). No 503, no "database unavailable" warning; an access line with status 499.
func TestAClientThatHangsUpIsNotAnOutage(t *testing.T) {
	hangUp := func(t *testing.T, e *env, path string, underway func() error) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", e.url+path, nil)
		done := make(chan error, 1)
		go func() {
			res, err := http.DefaultClient.Do(req)
			if err == nil {
				res.Body.Close()
			}
			done <- err
		}()
		testenv.Eventually(t, 10*time.Second, underway)
		cancel()
		<-done
		testenv.Eventually(t, 10*time.Second, func() error {
			for _, l := range e.lines(t) {
				if l.Msg == "request" && l.Route == path {
					if l.Status != 499 || l.Level != "INFO" {
						t.Errorf("the request was logged as %+v, want status 499 at info level", l)
					}
					return nil
				}
			}
			return fmt.Errorf("no access line for %s yet", path)
		})
		if strings.Contains(e.logs.String(), "unavailable") || strings.Contains(e.logs.String(), `"level":"WARN"`) {
			t.Errorf("a client hanging up was reported as an outage:\n%s", e.logs)
		}
	}

	t.Run("while a connection is being opened", func(t *testing.T) {
		pg := testenv.StartPostgres(t)
		e := start(t, setup{databaseURL: testenv.CreateDatabase(t, pg.AdminURL())})
		pg.Pause()
		defer pg.Resume()
		hangUp(t, e, "/sample", func() error {
			if e.svc.Pool.Stat().ConstructingConns() == 0 {
				return fmt.Errorf("no Postgres connection being opened yet")
			}
			return nil
		})
	})

	t.Run("before the query is sent", func(t *testing.T) {
		e := start(t, setup{})
		stall := stallUntilGone{reached: make(chan struct{})}
		pool, err := postgres.Open(context.Background(), postgres.Options{URL: e.databaseURL, MaxConns: 10, ConnectTimeout: 5 * time.Second, Tracer: stall})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		router := httpapi.NewRouter(httpapi.Deps{
			Log: e.svc.Log, Direct: samples.NewPGStore(pool, e.svc.Config.DatabaseTimeout), Cached: e.svc.Cached,
			Health: readyHealth{}, MaxBodyBytes: 1 << 20, RetryAfter: time.Second,
		})
		srv := httptest.NewServer(router)
		t.Cleanup(srv.Close)
		e.url = srv.URL
		hangUp(t, e, "/sample", func() error {
			select {
			case <-stall.reached:
				return nil
			default:
				return fmt.Errorf("the query has not been reached yet")
			}
		})
	})
}

func TestEachRequestIsLoggedOnceWithItsOutcome(t *testing.T) {
	e := start(t, setup{})
	e.get(t, "/cache")
	var line struct {
		Msg, Method, Route, Cache string
		Status                    int
		Latency                   float64 `json:"latency_ms"`
	}
	found := 0
	for _, l := range strings.Split(strings.TrimSpace(e.logs.String()), "\n") {
		if err := json.Unmarshal([]byte(l), &line); err == nil && line.Msg == "request" && line.Route == "/cache" {
			found++
			if line.Method != "GET" || line.Status != 200 || line.Cache != "MISS" || line.Latency <= 0 {
				t.Errorf("log line %s", l)
			}
		}
	}
	if found != 1 {
		t.Errorf("%d request lines for one request:\n%s", found, e.logs)
	}
}

func TestRedisDownTheServiceStillAnswersFromPostgres(t *testing.T) {
	redisSrv := testenv.StartRedis(t)
	e := start(t, setup{redisURL: redisSrv.URL()})
	s := e.create(t, "survives")
	e.get(t, "/cache")
	redisSrv.Stop()

	for _, path := range []string{"/cache", fmt.Sprintf("/samples/%d", s.ID)} {
		r := e.get(t, path)
		if r.status != 200 || r.header.Get("X-Cache") != "BYPASS" || !strings.Contains(string(r.body), "survives") {
			t.Errorf("GET %s with Redis down: %d %s %s", path, r.status, r.header.Get("X-Cache"), r.body)
		}
	}
	if r := e.send(t, "POST", "/samples", `{"title":"written while Redis is down"}`); r.status != 201 {
		t.Errorf("POST with Redis down: %d %s", r.status, r.body)
	}
	r := e.get(t, "/readyz")
	want := map[string]any{"status": "ready"}
	if got := r.json(t).(map[string]any); r.status != 200 || got["status"] != want["status"] ||
		got["checks"].(map[string]any)["redis"].(map[string]any)["status"] != "down" {
		t.Errorf("/readyz with Redis down: %d %s, want 200 ready reporting redis down", r.status, r.body)
	}

	redisSrv.Start()
	testenv.Eventually(t, 15*time.Second, func() error {
		if r := e.get(t, "/cache"); r.header.Get("X-Cache") == "BYPASS" {
			return fmt.Errorf("still BYPASS")
		}
		return nil
	})
	if r := e.get(t, "/cache"); !strings.Contains(string(r.body), "written while Redis is down") {
		t.Errorf("after recovery the list misses the write made while Redis was down: %s", r.body)
	}
}

// TestPostgresDownIsA503ButTheReplicaStaysReady: what needs Postgres is 503 with Retry-After;
// /readyz stays 200 (Postgres answered it once: the outage is every replica's, and the cached
// views are still served) and says Postgres is down; /healthz is untouched.
func TestPostgresDownIsA503ButTheReplicaStaysReady(t *testing.T) {
	pg := testenv.StartPostgres(t)
	e := start(t, setup{databaseURL: testenv.CreateDatabase(t, pg.AdminURL())})
	e.create(t, "before the outage")
	if r := e.get(t, "/readyz"); r.status != 200 { // as the kubelet's probes do before any traffic
		t.Fatalf("/readyz before the outage: %d %s", r.status, r.body)
	}
	pg.Stop()

	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/sample", ""},
		{"GET", "/cache", ""}, // not cached yet: nothing to serve
		{"POST", "/samples", `{"title":"during the outage"}`},
	} {
		r := e.send(t, tc.method, tc.path, tc.body)
		if r.status != 503 || r.header.Get("Retry-After") == "" || !strings.Contains(string(r.body), `"code":"unavailable"`) {
			t.Errorf("%s %s with Postgres down: %d Retry-After=%q %s", tc.method, tc.path, r.status, r.header.Get("Retry-After"), r.body)
		}
	}
	if r := e.get(t, "/readyz"); r.status != 200 || !strings.Contains(string(r.body), `"postgres":{"status":"down"`) {
		t.Errorf("/readyz with Postgres down: %d %s, want 200 saying postgres is down", r.status, r.body)
	}
	if r := e.get(t, "/healthz"); r.status != 200 {
		t.Errorf("/healthz must not depend on Postgres: %d", r.status)
	}

	pg.Start()
	testenv.Eventually(t, 30*time.Second, func() error {
		if r := e.get(t, "/readyz"); r.status != 200 || !strings.Contains(string(r.body), `"postgres":{"status":"up"`) {
			return fmt.Errorf("/readyz %d %s", r.status, r.body)
		}
		return nil
	})
	if r := e.get(t, "/sample"); r.status != 200 || !strings.Contains(string(r.body), "before the outage") {
		t.Errorf("after recovery: %d %s", r.status, r.body)
	}
}

// TestWritesThatCannotReachPostgresKeepTheCachedViews: with Postgres down, a write fails before
// its statement reaches the server, so it changed nothing and must retire nothing: the cached
// views go on being served through the outage instead of turning into 503s. The writes come
// right after the reads that filled the cache, on pooled connections Postgres has just closed.
func TestWritesThatCannotReachPostgresKeepTheCachedViews(t *testing.T) {
	pg := testenv.StartPostgres(t)
	e := start(t, setup{databaseURL: testenv.CreateDatabase(t, pg.AdminURL())})
	s := e.create(t, "before the outage")
	item := fmt.Sprintf("/samples/%d", s.ID)
	for _, path := range []string{"/cache", item, "/cache", item} { // fill, then hit
		if r := e.get(t, path); r.status != 200 {
			t.Fatalf("GET %s: %d %s", path, r.status, r.body)
		}
	}
	pg.Stop()

	for _, w := range []struct{ method, path, body string }{
		{"POST", "/samples", `{"title":"during the outage"}`},
		{"PUT", item, `{"title":"changed during the outage"}`},
		{"DELETE", item, ""},
	} {
		if r := e.send(t, w.method, w.path, w.body); r.status != 503 {
			t.Errorf("%s %s with Postgres down: %d %s, want 503", w.method, w.path, r.status, r.body)
		}
	}
	for _, path := range []string{"/cache", item} {
		r := e.get(t, path)
		if r.status != 200 || r.header.Get("X-Cache") != "HIT" || !strings.Contains(string(r.body), "before the outage") {
			t.Errorf("GET %s after writes that never reached Postgres: %d X-Cache=%q %s, want the cached view",
				path, r.status, r.header.Get("X-Cache"), r.body)
		}
	}
}

// TestAWriteOnAConnectionPostgresClosedGoesThrough: Postgres closes connections on its own (a
// restart, an administrator, an idle timeout), and the pool learns of it only when it uses one.
// A write handed such a connection checks it first and moves on to a live one, rather than
// failing after it was sent with an outcome nobody knows.
func TestAWriteOnAConnectionPostgresClosedGoesThrough(t *testing.T) {
	e := start(t, setup{})
	s := e.create(t, "before")
	admin, err := pgx.Connect(context.Background(), e.databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var n int
	err = admin.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&n)
	if err != nil || n == 0 {
		t.Fatalf("terminating the service's connections: %d %v", n, err)
	}
	if r := e.send(t, "PUT", fmt.Sprintf("/samples/%d", s.ID), `{"title":"after"}`); r.status != 200 {
		t.Errorf("PUT on a pool whose connections Postgres closed: %d %s, want 200", r.status, r.body)
	}
	if r := e.get(t, "/cache"); !strings.Contains(string(r.body), `"after"`) {
		t.Errorf("GET /cache after the write: %s", r.body)
	}
}

// TestAHungPostgresDoesNotMakeRedisLookDown: /readyz checks both within one budget; Postgres
// frozen uses all of it, and Redis must still be reported as it is (up), not as down. Postgres
// never answered this replica, so it is not ready yet.
func TestAHungPostgresDoesNotMakeRedisLookDown(t *testing.T) {
	pg := testenv.StartPostgres(t)
	e := start(t, setup{databaseURL: testenv.CreateDatabase(t, pg.AdminURL())})
	pg.Pause()
	defer pg.Resume()
	r := e.get(t, "/readyz")
	if r.status != 503 || !strings.Contains(string(r.body), `"redis":{"status":"up"`) || !strings.Contains(string(r.body), `"postgres":{"status":"down"`) {
		t.Errorf("/readyz with Postgres frozen from the start: %d %s, want 503 with Redis up", r.status, r.body)
	}
}

// TestAHungPostgresAfterStartLeavesTheReplicaReadyWithinTheProbesTimeout: a Postgres that stops
// answering without refusing (its pod deleted under the pool's open connections, a partition)
// must be reported down within ReadinessBudget, well inside the readiness probe's timeout (2 s in
// the chart): a probe that times out counts as unready whatever the body would have said.
func TestAHungPostgresAfterStartLeavesTheReplicaReadyWithinTheProbesTimeout(t *testing.T) {
	pg := testenv.StartPostgres(t)
	e := start(t, setup{databaseURL: testenv.CreateDatabase(t, pg.AdminURL())})
	if r := e.get(t, "/readyz"); r.status != 200 {
		t.Fatalf("/readyz before the outage: %d %s", r.status, r.body)
	}
	pg.Pause()
	defer pg.Resume()
	began := time.Now()
	r := e.get(t, "/readyz")
	took := time.Since(began)
	if r.status != 200 || !strings.Contains(string(r.body), `"postgres":{"status":"down"`) {
		t.Errorf("/readyz with Postgres frozen after start: %d %s, want 200 saying postgres is down", r.status, r.body)
	}
	if took > httpapi.ReadinessBudget+500*time.Millisecond {
		t.Errorf("/readyz took %s with Postgres frozen, want about ReadinessBudget (%s): the chart's probe gives up at 2s", took, httpapi.ReadinessBudget)
	}
}

// TestAReplicaShuttingDownIsNotReady: from SIGTERM on (Drain), a probe that still reaches the
// replica is told 503, whatever its dependencies say, so nothing new is routed to it.
func TestAReplicaShuttingDownIsNotReady(t *testing.T) {
	e := start(t, setup{})
	if r := e.get(t, "/readyz"); r.status != 200 {
		t.Fatalf("/readyz before shutting down: %d %s", r.status, r.body)
	}
	e.svc.Drain()
	r := e.get(t, "/readyz")
	if r.status != 503 || !strings.Contains(string(r.body), `"reason":"shutting down"`) || !strings.Contains(string(r.body), `"postgres":{"status":"up"`) {
		t.Errorf("/readyz while shutting down: %d %s, want 503 shutting down (with postgres up)", r.status, r.body)
	}
	if r := e.get(t, "/healthz"); r.status != 200 {
		t.Errorf("/healthz while shutting down: %d, want 200 (draining is not dying)", r.status)
	}
}

// raw sends a GET without Go's transparent gzip handling, with the given request headers.
func (e *env) raw(t *testing.T, path string, header map[string]string) response {
	t.Helper()
	req, err := http.NewRequest("GET", e.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	return roundTrip(t, &http.Client{Transport: &http.Transport{DisableCompression: true}}, req)
}

func TestCachedBodiesGoOutGzippedToClientsThatAcceptIt(t *testing.T) {
	e := start(t, setup{})
	e.create(t, "zipped")
	direct := e.raw(t, "/sample", nil)
	e.raw(t, "/cache", nil) // fill

	for _, tc := range []struct {
		name, acceptEncoding, wantEncoding string
	}{
		{"a gzip client gets the stored gzip bytes", "gzip, deflate, br", "gzip"},
		{"a client without Accept-Encoding gets plain JSON", "", ""},
		{"a client refusing gzip gets plain JSON", "gzip;q=0, identity", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.raw(t, "/cache", map[string]string{"Accept-Encoding": tc.acceptEncoding})
			if got := r.header.Get("Content-Encoding"); got != tc.wantEncoding || r.header.Get("Vary") != "Accept-Encoding" {
				t.Fatalf("Content-Encoding %q Vary %q, want %q and Accept-Encoding", got, r.header.Get("Vary"), tc.wantEncoding)
			}
			body := r.body
			if tc.wantEncoding == "gzip" {
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				if body, err = io.ReadAll(zr); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(body, direct.body) {
				t.Errorf("decoded /cache differs from /sample:\n%s\n%s", body, direct.body)
			}
		})
	}
}

func TestRevalidatingClientsGet304WithoutABody(t *testing.T) {
	e := start(t, setup{})
	s := e.create(t, "tagged")
	for _, path := range []string{"/sample", "/cache", fmt.Sprintf("/samples/%d", s.ID)} {
		t.Run(path, func(t *testing.T) {
			first := e.raw(t, path, map[string]string{"Accept-Encoding": "gzip"})
			etag := first.header.Get("ETag")
			if !strings.HasPrefix(etag, `W/"`) {
				t.Fatalf("ETag %q, want a weak validator", etag)
			}
			again := e.raw(t, path, map[string]string{"If-None-Match": etag})
			if again.status != http.StatusNotModified || len(again.body) != 0 || again.header.Get("ETag") != etag {
				t.Errorf("revalidation: %d, %d bytes, ETag %q; want 304, no body, same ETag", again.status, len(again.body), again.header.Get("ETag"))
			}
			if other := e.raw(t, path, map[string]string{"If-None-Match": `W/"0000000000000000"`}); other.status != 200 {
				t.Errorf("a stale validator got %d, want 200", other.status)
			}
		})
	}
	if a, b := e.raw(t, "/sample", nil).header.Get("ETag"), e.raw(t, "/cache", nil).header.Get("ETag"); a != b {
		t.Errorf("/sample and /cache tag the same data differently: %s %s", a, b)
	}

	before := e.raw(t, "/cache", nil).header.Get("ETag")
	e.create(t, "changes the list")
	if r := e.raw(t, "/cache", map[string]string{"If-None-Match": before}); r.status != 200 || r.header.Get("ETag") == before {
		t.Errorf("after a write the old ETag still validates: %d %s", r.status, r.header.Get("ETag"))
	}
}

func TestTheNearCacheAnswersAndSaysSo(t *testing.T) {
	e := start(t, setup{nearCache: true})
	// The tier is used once its invalidation channel is subscribed, which a busy machine may
	// take a moment to do after the start.
	testenv.Eventually(t, 30*time.Second, func() error {
		if r := e.get(t, "/readyz"); !strings.Contains(string(r.body), `"near_cache":"live"`) {
			return fmt.Errorf("near-cache not live yet: %s", r.body)
		}
		return nil
	})
	e.create(t, "near")
	tiers := []string{}
	for range 3 {
		r := e.get(t, "/cache")
		tiers = append(tiers, r.header.Get("X-Cache")+" "+r.header.Get("X-Cache-Tier"))
	}
	if diff := cmp.Diff([]string{"MISS ", "HIT local", "HIT local"}, tiers); diff != "" {
		t.Errorf("X-Cache and X-Cache-Tier (-want +got):\n%s", diff)
	}
	e.create(t, "visible at once on this replica")
	if r := e.get(t, "/cache"); !strings.Contains(string(r.body), "visible at once") {
		t.Errorf("the writing replica served its near-cached list after the write")
	}
}

// TestGzipAndIdentityClientsGetTheSameJSONOnEveryPath: whichever kind of client reads first (and
// so which copies the tiers keep), every answer decodes to what /sample serves, with the same
// ETag and Vary, on a miss, a Redis hit and a near-cache hit, for the list and an item; and a
// write shows at once to both kinds.
func TestGzipAndIdentityClientsGetTheSameJSONOnEveryPath(t *testing.T) {
	gzipClient := map[string]string{"Accept-Encoding": "gzip"}
	identity := map[string]string{}
	for _, tc := range []struct {
		name string
		near bool
	}{
		{"redis tier alone", false},
		{"redis and near-cache", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, setup{nearCache: tc.near})
			s := e.create(t, "either way")
			for _, path := range []string{"/cache", fmt.Sprintf("/samples/%d", s.ID)} {
				for _, order := range [][]map[string]string{
					{identity, gzipClient, identity, gzipClient, identity},
					{gzipClient, identity, gzipClient, identity, identity},
				} {
					e.create(t, "retires the list") // each order starts with a miss of the list
					if path != "/cache" {
						if r := e.send(t, "PUT", path, `{"title":"retires the item"}`); r.status != 200 {
							t.Fatalf("PUT %s: %d", path, r.status)
						}
					}
					// The list's JSON is /sample's. An item has no uncached route: its JSON is
					// what its miss (by the first client of the order) decodes to.
					want := e.raw(t, "/sample", nil)
					wantOutcomes := []string{"MISS "}
					if path != "/cache" {
						want = e.raw(t, path, order[0])
						want.body = decode(t, want)
						wantOutcomes = nil
					}
					var outcomes []string
					for i, header := range order {
						r := e.raw(t, path, header)
						client := "identity"
						if header["Accept-Encoding"] != "" {
							client = "gzip"
						}
						wantEncoding := map[string]string{"identity": "", "gzip": "gzip"}[client]
						if r.status != 200 || r.header.Get("Content-Encoding") != wantEncoding || r.header.Get("Vary") != "Accept-Encoding" ||
							r.header.Get("ETag") != want.header.Get("ETag") {
							t.Fatalf("%s read %d (%s): %d Content-Encoding %q Vary %q ETag %q; want 200, %q, Accept-Encoding, %q",
								path, i, client, r.status, r.header.Get("Content-Encoding"), r.header.Get("Vary"), r.header.Get("ETag"), wantEncoding, want.header.Get("ETag"))
						}
						if body := decode(t, r); !bytes.Equal(body, want.body) {
							t.Fatalf("%s read %d (%s): %d bytes of JSON differ from the %d expected", path, i, client, len(body), len(want.body))
						}
						if again := e.raw(t, path, map[string]string{"If-None-Match": r.header.Get("ETag"), "Accept-Encoding": header["Accept-Encoding"]}); again.status != http.StatusNotModified || len(again.body) != 0 {
							t.Errorf("%s (%s) revalidation: %d with %d bytes, want 304 without a body", path, client, again.status, len(again.body))
						}
						outcomes = append(outcomes, r.header.Get("X-Cache")+" "+r.header.Get("X-Cache-Tier"))
					}
					tier := "HIT redis"
					if tc.near {
						tier = "HIT local"
					}
					for len(wantOutcomes) < len(order) {
						wantOutcomes = append(wantOutcomes, tier)
					}
					if diff := cmp.Diff(wantOutcomes, outcomes); diff != "" {
						t.Errorf("%s X-Cache and X-Cache-Tier (-want +got):\n%s", path, diff)
					}
				}
			}
		})
	}
}

// decode is the JSON r carries, whatever its encoding.
func decode(t *testing.T, r response) []byte {
	t.Helper()
	if r.header.Get("Content-Encoding") != "gzip" {
		return r.body
	}
	zr, err := gzip.NewReader(bytes.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
