package httpapi_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/cacheside/cacheside/app/internal/testenv"
)

// call sends a request with exactly the given Authorization headers (none for nil), whatever
// token the env holds.
func (e *env) call(t *testing.T, method, path, body string, authorization ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, e.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for _, a := range authorization {
		req.Header.Add("Authorization", a)
	}
	return roundTrip(t, http.DefaultClient, req)
}

// refused checks a 401: the RFC 6750 challenge with the error parameter wantError (none for
// ""), and the usual JSON error body with code.
func refused(t *testing.T, r response, wantError, code string) {
	t.Helper()
	if r.status != http.StatusUnauthorized {
		t.Errorf("answered %d %s, want 401", r.status, r.body)
		return
	}
	challenge := r.header.Get("WWW-Authenticate")
	if !strings.HasPrefix(challenge, `Bearer realm="cacheside"`) {
		t.Errorf("WWW-Authenticate %q, want a Bearer challenge", challenge)
	}
	if wantError == "" && strings.Contains(challenge, "error=") || wantError != "" && !strings.Contains(challenge, `error="`+wantError+`"`) {
		t.Errorf("WWW-Authenticate %q, want error=%q", challenge, wantError)
	}
	var body struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal(r.body, &body); err != nil || body.Error.Code != code || body.Error.Message == "" {
		t.Errorf("body %s, want the JSON error with code %s", r.body, code)
	}
}

// TestWritesNeedAnAcceptedBearerToken: POST, PUT and DELETE without a token, with a malformed
// one or a wrong one are answered 401 with a challenge and change nothing; with the token they
// go through.
func TestWritesNeedAnAcceptedBearerToken(t *testing.T) {
	// Dozens of writes from one address, more than a client's write burst: the per-client limits
	// (tested in limits_test.go, also against wrong tokens) would answer some of them 429.
	e := start(t, setup{overrides: []string{"RATE_LIMIT_ENABLED=false"}})
	kept := e.create(t, "kept")
	item := fmt.Sprintf("/samples/%d", kept.ID)
	writes := []struct{ method, path, body string }{
		{"POST", "/samples", `{"title":"sneaked in"}`},
		{"PUT", item, `{"title":"sneaked in"}`},
		{"DELETE", item, ""},
		{"PATCH", "/samples", `{"title":"sneaked in"}`}, // no such route: still a token first
	}
	for _, tc := range []struct {
		name          string
		authorization []string
		wantError     string
		code          string
	}{
		{"no Authorization header is unauthenticated", nil, "", "unauthenticated"},
		{"another scheme carries no bearer token", []string{"Basic " + e.token}, "", "unauthenticated"},
		{"an empty bearer token is malformed", []string{"Bearer "}, "invalid_request", "invalid_request"},
		{"a token with a space in it is malformed", []string{"Bearer " + e.token + " " + e.token}, "invalid_request", "invalid_request"},
		{"two Authorization headers are malformed", []string{"Bearer " + e.token, "Bearer " + e.token}, "invalid_request", "invalid_request"},
		{"a wrong token is refused", []string{"Bearer " + testenv.Token()}, "invalid_token", "invalid_token"},
		{"the token's prefix is refused", []string{"Bearer " + e.token[:len(e.token)-1]}, "invalid_token", "invalid_token"},
		{"the token with a byte more is refused", []string{"Bearer " + e.token + "0"}, "invalid_token", "invalid_token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, w := range writes {
				r := e.call(t, w.method, w.path, w.body, tc.authorization...)
				refused(t, r, tc.wantError, tc.code)
				if strings.Contains(string(r.body), e.token) {
					t.Errorf("%s %s: the response echoes the token: %s", w.method, w.path, r.body)
				}
			}
			if got := titles(t, e.get(t, "/sample").body); !cmp.Equal(got, []string{"kept"}) {
				t.Errorf("refused writes changed the samples: %q", got)
			}
		})
	}

	t.Run("the token goes through, its scheme in any case", func(t *testing.T) {
		if r := e.call(t, "POST", "/samples", `{"title":"with a token"}`, "Bearer "+e.token); r.status != 201 {
			t.Errorf("POST: %d %s", r.status, r.body)
		}
		if r := e.call(t, "PUT", item, `{"title":"renamed"}`, "bearer "+e.token); r.status != 200 {
			t.Errorf("PUT: %d %s", r.status, r.body)
		}
		if r := e.call(t, "DELETE", item, "", "BEARER "+e.token); r.status != 204 {
			t.Errorf("DELETE: %d %s", r.status, r.body)
		}
		if r := e.call(t, "PATCH", "/samples", `{}`, "Bearer "+e.token); r.status != 405 {
			t.Errorf("PATCH with the token: %d %s, want 405", r.status, r.body)
		}
	})
}

// TestReadsArePublicUnlessSwitchedOn: by default reads need no token; with API_AUTH_READS they
// do, and the probes still never do. (/metrics is not on this router: it is served on the admin
// port, which has no routes that change anything.)
func TestReadsArePublicUnlessSwitchedOn(t *testing.T) {
	reads := []string{"/sample", "/cache", "/samples/1", "/samples/999999"}
	probes := []string{"/healthz", "/readyz"}
	serve := func(t *testing.T, overrides ...string) *env {
		e := start(t, setup{overrides: overrides})
		e.create(t, "one")
		return e
	}

	t.Run("by default a read needs no token", func(t *testing.T) {
		e := serve(t)
		for _, path := range append(reads, probes...) {
			if r := e.call(t, "GET", path, ""); r.status == http.StatusUnauthorized {
				t.Errorf("GET %s without a token: 401", path)
			}
		}
	})
	t.Run("with API_AUTH_READS a read needs the token", func(t *testing.T) {
		e := serve(t, "API_AUTH_READS=true")
		for _, path := range append(reads, "/no-such-route") {
			refused(t, e.call(t, "GET", path, ""), "", "unauthenticated")
			refused(t, e.call(t, "GET", path, "", "Bearer "+testenv.Token()), "invalid_token", "invalid_token")
			if r := e.call(t, "GET", path, "", "Bearer "+e.token); r.status == http.StatusUnauthorized {
				t.Errorf("GET %s with the token: 401", path)
			}
		}
		for _, path := range probes {
			if r := e.call(t, "GET", path, ""); r.status != http.StatusOK {
				t.Errorf("GET %s without a token: %d %s, want 200 (probes and scrapes carry no token)", path, r.status, r.body)
			}
		}
	})
}

// TestTokensRotateWithoutDowntime: with the old and the new token configured both are accepted;
// once the old one is removed (the next rollout) it is refused and the new one still works.
func TestTokensRotateWithoutDowntime(t *testing.T) {
	old, next := testenv.Token(), testenv.Token()
	both := start(t, setup{overrides: []string{"API_TOKENS=" + old + ", " + next}})
	for i, token := range []string{old, next} {
		if r := both.call(t, "POST", "/samples", fmt.Sprintf(`{"title":"token %d"}`, i), "Bearer "+token); r.status != 201 {
			t.Errorf("token %d of two: %d %s, want 201", i+1, r.status, r.body)
		}
	}
	after := start(t, setup{databaseURL: both.databaseURL, overrides: []string{"API_TOKENS=" + next}})
	refused(t, after.call(t, "POST", "/samples", `{"title":"old token"}`, "Bearer "+old), "invalid_token", "invalid_token")
	if r := after.call(t, "POST", "/samples", `{"title":"new token"}`, "Bearer "+next); r.status != 201 {
		t.Errorf("the new token after the old one's removal: %d %s, want 201", r.status, r.body)
	}
}

// TestTheTokenIsNeitherLoggedNorTraced: the access log and the spans of authenticated requests,
// and of refused ones, hold neither the token nor the Authorization header.
func TestTheTokenIsNeitherLoggedNorTraced(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	previous := otel.GetTracerProvider()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)))
	t.Cleanup(func() { otel.SetTracerProvider(previous) })
	e := start(t, setup{})
	wrong := testenv.Token()

	s := e.create(t, "traced")
	item := fmt.Sprintf("/samples/%d", s.ID)
	e.send(t, "PUT", item, `{"title":"traced again"}`)
	e.get(t, item)
	refused(t, e.call(t, "DELETE", item, "", "Bearer "+wrong), "invalid_token", "invalid_token")
	e.do(t, "DELETE", item, "", nil)

	logs := e.logs.String()
	if n := strings.Count(logs, `"msg":"request"`); n < 5 {
		t.Fatalf("%d access lines, want one per request:\n%s", n, logs)
	}
	recorded := spans.Ended()
	if len(recorded) < 5 {
		t.Fatalf("%d spans recorded, want the requests' and more", len(recorded))
	}
	var traced strings.Builder
	for _, sp := range recorded {
		fmt.Fprintln(&traced, sp.Name(), sp.Status(), sp.Attributes(), sp.Events(), sp.Links(), sp.Resource())
	}
	for what, text := range map[string]string{"the log": logs, "the spans": traced.String()} {
		for _, secret := range []string{e.token, wrong, "Bearer", "uthorization"} {
			if strings.Contains(text, secret) {
				t.Errorf("%s hold %q:\n%s", what, secret, text)
			}
		}
	}
}
