package httpapi_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// oversized are the bodies the 413 tests send: the 3 MB, three times HTTP_MAX_BODY_BYTES,
// and 12 MB. Over loopback the kernel's socket buffers take in what a real network would still be
// carrying, so a 3 MB client has finished sending before the server closes; 12 MB is more than
// they hold, so that client is still uploading then, as the was.
var oversized = []int{3 << 20, 12 << 20}

func oversizedBody() []byte { return bodyOf(oversized[0]) }

func bodyOf(size int) []byte {
	return []byte(`{"title":"` + strings.Repeat("a", size) + `"}`)
}

// countingReader counts the bytes the client took from it: what it uploaded, or was about to.
type countingReader struct {
	r    io.Reader
	read atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// errorCode reads the code of a JSON error body.
func errorCode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct{ Error struct{ Code string } }
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("not a JSON error: %v: %q", err, body)
	}
	return e.Error.Code
}

// TestOversizedBodiesGetTheir413: over a real TCP connection, the client reads its 413 however
// the body is sent, and never gets a reset instead. Each case runs several times, so a race
// between the server closing and the client still uploading would show.
func TestOversizedBodiesGetTheir413(t *testing.T) {
	// Seventy writes from one address, more than a client's write burst: the per-client limits
	// (limits_test.go) would answer most of them 429 before the body is looked at.
	e := start(t, setup{overrides: []string{"RATE_LIMIT_ENABLED=false"}})
	const rounds = 10

	t.Run("a declared length over the limit is refused before the client uploads a byte", func(t *testing.T) {
		// The client waits for 100 Continue as long as the test may run: if the server read
		// the body, it would send one and the client would upload.
		client := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: time.Hour}}
		defer client.CloseIdleConnections()
		for range rounds {
			body := &countingReader{r: bytes.NewReader(oversizedBody())}
			req, _ := http.NewRequest("POST", e.url+"/samples", body)
			req.ContentLength = int64(len(oversizedBody()))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Expect", "100-continue")
			req.Header.Set("Authorization", "Bearer "+e.token)
			res, err := client.Do(req)
			if err != nil {
				t.Fatalf("POST: %v", err)
			}
			b, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil || res.StatusCode != http.StatusRequestEntityTooLarge || errorCode(t, b) != "body_too_large" {
				t.Fatalf("got %d %q (%v), want 413 body_too_large", res.StatusCode, b, err)
			}
			if n := body.read.Load(); n != 0 {
				t.Fatalf("the client uploaded %d bytes of a body the server refused from its length", n)
			}
		}
	})

	for _, tc := range []struct {
		name    string
		chunked bool
	}{
		{"a declared length over the limit, sent without waiting, gets its 413", false},
		{"a chunked body over the limit gets its 413", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := &http.Client{Transport: &http.Transport{}}
			defer client.CloseIdleConnections()
			for i := range rounds {
				size := oversized[i%len(oversized)]
				var body io.Reader = bytes.NewReader(bodyOf(size))
				if tc.chunked {
					body = io.MultiReader(body) // hides the length: Go sends it chunked
				}
				req, _ := http.NewRequest("POST", e.url+"/samples", body)
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+e.token)
				res, err := client.Do(req)
				if err != nil {
					t.Fatalf("round %d: POST of %d bytes ended without a response: %v", i, size, err)
				}
				b, err := io.ReadAll(res.Body)
				res.Body.Close()
				if err != nil || res.StatusCode != http.StatusRequestEntityTooLarge || errorCode(t, b) != "body_too_large" {
					t.Fatalf("round %d: POST of %d bytes: got %d %q (%v), want 413 body_too_large", i, size, res.StatusCode, b, err)
				}
			}
		})
	}

	// The clients above read while they upload, so a response that comes early stops them. A
	// simpler client writes its whole request, then reads: it is still writing when a server that
	// stopped reading closes, and gets a reset instead of the 413 already sent to it.
	for _, tc := range []struct {
		name    string
		chunked bool
	}{
		{"a client that reads only once its declared-length body is sent gets its 413", false},
		{"a client that reads only once its chunked body is sent gets its 413", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range rounds {
				size := oversized[i%len(oversized)]
				res, err := writeThenRead(e.url, e.token, bodyOf(size), tc.chunked)
				if err != nil {
					t.Fatalf("round %d: POST of %d bytes: %v", i, size, err)
				}
				if res.status != http.StatusRequestEntityTooLarge || errorCode(t, res.body) != "body_too_large" {
					t.Fatalf("round %d: POST of %d bytes: got %d %q, want 413 body_too_large", i, size, res.status, res.body)
				}
			}
		})
	}

	t.Run("curl gets its 413 however it sends the body", func(t *testing.T) {
		curl, err := exec.LookPath("curl")
		if err != nil {
			t.Fatal("curl is not installed (make test installs it: go run ./hack/dev test)")
		}
		var files []string
		for _, size := range oversized {
			file := filepath.Join(t.TempDir(), fmt.Sprintf("body-%d.json", size))
			if err := os.WriteFile(file, bodyOf(size), 0o600); err != nil {
				t.Fatal(err)
			}
			files = append(files, file)
		}
		for _, how := range []struct {
			name string
			args []string
		}{
			// curl sends Expect: 100-continue for a body this large, and waits a second for it.
			{"with its length and Expect: 100-continue", nil},
			{"with its length and no Expect", []string{"-H", "Expect:"}},
			{"chunked", []string{"-H", "Transfer-Encoding: chunked"}},
		} {
			t.Run(how.name, func(t *testing.T) {
				for i := range rounds {
					file := files[i%len(files)]
					args := append([]string{"-sS", "-o", "-", "-w", "\n%{http_code}", "-H", "Content-Type: application/json",
						"-H", "Authorization: Bearer " + e.token, "--data-binary", "@" + file}, how.args...)
					out, err := exec.Command(curl, append(args, e.url+"/samples")...).CombinedOutput()
					body, status, _ := strings.Cut(string(out), "\n")
					if err != nil || status != "413" || !strings.Contains(body, `"body_too_large"`) {
						t.Fatalf("round %d: curl --data-binary @%s: %v: %s", i, filepath.Base(file), err, out)
					}
				}
			})
		}
	})
}

// TestInputIsTakenAsSentOrRefused: what the service stores is exactly what the client sent;
// input it would have to alter to store (invalid UTF-8, an escaped lone surrogate, a body in
// another charset, a field given twice) is refused with a 4xx and changes nothing.
func TestInputIsTakenAsSentOrRefused(t *testing.T) {
	// More writes from one address than a client's write burst (see TestOversizedBodiesGetTheir413).
	e := start(t, setup{overrides: []string{"RATE_LIMIT_ENABLED=false"}})
	refused := []struct {
		name, contentType, body string
		status                  int
		code                    string
	}{
		{"invalid UTF-8 bytes in the title", "application/json", "{\"title\":\"caf\xe9\"}", 400, "invalid_utf8"},
		{"a truncated UTF-8 sequence in the title", "application/json", "{\"title\":\"ab\xe2\x82\"}", 400, "invalid_utf8"},
		{"an escaped lone high surrogate", "application/json", `{"title":"a\ud800b"}`, 400, "invalid_json"},
		{"an escaped lone low surrogate", "application/json", `{"title":"\udc00"}`, 400, "invalid_json"},
		{"surrogates in the wrong order", "application/json", `{"title":"\ude00\ud83d"}`, 400, "invalid_json"},
		{"a body declared UTF-16", "application/json; charset=utf-16", `{"title":"x"}`, 415, "unsupported_charset"},
		{"a body declared Latin-1", "application/json; charset=iso-8859-1", `{"title":"x"}`, 415, "unsupported_charset"},
		{"a title given twice", "application/json", `{"title":"first","title":"second"}`, 400, "duplicate_field"},
		{"a title given twice, the second null", "application/json", `{"title":"first","title":null}`, 400, "duplicate_field"},
		{"a field in another case", "application/json", `{"Title":"x"}`, 400, "unknown_field"},
	}
	for _, tc := range refused {
		t.Run(tc.name+" is refused", func(t *testing.T) {
			for _, method := range []string{"POST", "PUT"} {
				path := "/samples"
				if method == "PUT" {
					path = "/samples/1"
				}
				r := e.do(t, method, path, tc.contentType, strings.NewReader(tc.body))
				if r.status != tc.status || errorCode(t, r.body) != tc.code {
					t.Errorf("%s: got %d %s, want %d %s", method, r.status, r.body, tc.status, tc.code)
				}
			}
		})
	}
	if got := titles(t, e.get(t, "/sample").body); len(got) != 0 {
		t.Errorf("refused bodies stored samples: %q", got)
	}

	accepted := []struct {
		name, contentType, body, want string
	}{
		{"an escaped surrogate pair", "application/json", `{"title":"smile \ud83d\ude00"}`, "smile 😀"},
		{"UTF-8 as it is", "application/json", `{"title":"café ☕"}`, "café ☕"},
		{"an escaped replacement character the client meant", "application/json", `{"title":"\ufffd"}`, "\ufffd"},
		{"a body declared UTF-8, in any case", "application/json; charset=UTF-8", `{"title":"declared"}`, "declared"},
	}
	for _, tc := range accepted {
		t.Run(tc.name+" is stored exactly", func(t *testing.T) {
			r := e.do(t, "POST", "/samples", tc.contentType, strings.NewReader(tc.body))
			if r.status != http.StatusCreated {
				t.Fatalf("got %d %s", r.status, r.body)
			}
			var s struct {
				ID    int64
				Title string
			}
			if err := json.Unmarshal(r.body, &s); err != nil {
				t.Fatal(err)
			}
			stored := e.get(t, fmt.Sprintf("/samples/%d", s.ID))
			if err := json.Unmarshal(stored.body, &s); err != nil {
				t.Fatal(err)
			}
			if s.Title != tc.want {
				t.Errorf("stored %q, sent %q", s.Title, tc.want)
			}
		})
	}
}

// TestHEADAnswersLikeGETWithoutABody: every GET route answers HEAD with GET's status and
// headers and no body, as HTTP requires and monitors and `curl -I` expect.
func TestHEADAnswersLikeGETWithoutABody(t *testing.T) {
	e := start(t, setup{})
	s := e.create(t, "head")
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	send := func(t *testing.T, method, path string) response {
		t.Helper()
		req, _ := http.NewRequest(method, e.url+path, nil)
		return roundTrip(t, client, req)
	}
	for _, path := range []string{"/healthz", "/readyz", "/sample", "/cache", fmt.Sprintf("/samples/%d", s.ID), "/samples/999999"} {
		t.Run(path, func(t *testing.T) {
			send(t, "GET", path) // whatever a first read caches, both below see the same
			get, head := send(t, "GET", path), send(t, "HEAD", path)
			if head.status != get.status {
				t.Errorf("HEAD %d, GET %d", head.status, get.status)
			}
			if len(head.body) != 0 {
				t.Errorf("HEAD sent a body: %q", head.body)
			}
			for _, name := range []string{"Content-Type", "ETag", "X-Cache", "X-Content-Type-Options", "Cache-Control"} {
				if h, g := head.header.Get(name), get.header.Get(name); h != g {
					t.Errorf("%s: HEAD %q, GET %q", name, h, g)
				}
			}
		})
	}
}

// TestResponsesCarryTheHeadersAJSONAPIShould: nosniff on every response; no-store on every
// error and every write, and not on successful reads (their caching is the read handlers').
func TestResponsesCarryTheHeadersAJSONAPIShould(t *testing.T) {
	e := start(t, setup{})
	s := e.create(t, "headers")
	item := fmt.Sprintf("/samples/%d", s.ID)
	tests := []struct {
		name, method, path, contentType, body string
		status                                int
		noStore                               bool
	}{
		{"a list read", "GET", "/cache", "", "", 200, false},
		{"an item read", "GET", item, "", "", 200, false},
		{"a direct read", "GET", "/sample", "", "", 200, true}, // the uncached baseline: no-store by design (caching.go)
		{"a probe", "GET", "/healthz", "", "", 200, false},
		{"a create", "POST", "/samples", "application/json", `{"title":"new"}`, 201, true},
		{"an update", "PUT", item, "application/json", `{"title":"renamed"}`, 200, true},
		{"a missing item", "GET", "/samples/999999", "", "", 404, true},
		{"a bad id", "GET", "/samples/x", "", "", 400, true},
		{"an unknown route", "GET", "/nope", "", "", 404, true},
		{"a wrong method", "PATCH", item, "application/json", `{}`, 405, true},
		{"an unprocessable title", "POST", "/samples", "application/json", `{"title":""}`, 422, true},
		{"a body too large", "POST", "/samples", "application/json", string(oversizedBody()), 413, true},
		{"a charset refused", "POST", "/samples", "application/json; charset=utf-16", `{}`, 415, true},
		{"a delete", "DELETE", item, "", "", 204, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(t, tc.method, tc.path, tc.contentType, strings.NewReader(tc.body))
			if r.status != tc.status {
				t.Fatalf("got %d %s, want %d", r.status, r.body, tc.status)
			}
			if got := r.header.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options = %q, want nosniff", got)
			}
			// Successful reads may be cached (their Cache-Control is the read handlers'), so
			// only no-store's absence is checked there.
			if cc := r.header.Get("Cache-Control"); strings.Contains(cc, "no-store") != tc.noStore {
				t.Errorf("Cache-Control = %q, want no-store: %v", cc, tc.noStore)
			}
		})
	}
}

// writeThenRead POSTs body to base's /samples over a connection of its own, writing the whole
// request before it reads a byte of the response.
func writeThenRead(base, token string, body []byte, chunked bool) (response, error) {
	u, err := url.Parse(base)
	if err != nil {
		return response{}, err
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		return response{}, err
	}
	defer conn.Close()
	// Only so that a broken server fails the test instead of hanging it.
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	req := &bytes.Buffer{}
	fmt.Fprintf(req, "POST /samples HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAuthorization: Bearer %s\r\n", u.Host, token)
	if chunked {
		req.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		for rest := body; len(rest) > 0; {
			n := min(len(rest), 32<<10)
			fmt.Fprintf(req, "%x\r\n%s\r\n", n, rest[:n])
			rest = rest[n:]
		}
		req.WriteString("0\r\n\r\n")
	} else {
		fmt.Fprintf(req, "Content-Length: %d\r\n\r\n%s", len(body), body)
	}
	if _, err := conn.Write(req.Bytes()); err != nil {
		return response{}, fmt.Errorf("sending the request: %w", err)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return response{}, fmt.Errorf("reading the response: %w", err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return response{}, fmt.Errorf("reading the response body: %w", err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}, nil
}
