package main_test

import (
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"github.com/cacheside/cacheside/app/internal/testenv"
)

// write POSTs a sample to p with the given Authorization header (none for "") and returns the status.
func write(t *testing.T, p *proc, authorization string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+p.addr+"/samples", strings.NewReader(`{"title":"from the binary"}`))
	req.Header.Set("Content-Type", "application/json")
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode
}

// TestServingWithoutATokenIsAConfigError: serve refuses to start without API_TOKENS, naming it,
// while migrate (no requests served) needs none.
func TestServingWithoutATokenIsAConfigError(t *testing.T) {
	env := baseEnv(t)[:3] // no API_TOKENS
	out, err := command(t, env, "serve").CombinedOutput()
	if code := exitCode(err); code != 2 || !strings.Contains(string(out), "API_TOKENS:") || !strings.Contains(string(out), "API_AUTH_DISABLED") {
		t.Errorf("serve without a token: exit %d, want 2 with a message naming API_TOKENS and the opt-out:\n%s", code, out)
	}
	if out, err := command(t, env, "migrate").CombinedOutput(); err != nil {
		t.Errorf("migrate without a token: %v\n%s", err, out)
	}
}

// TestTheDevOptOutWarnsAtEveryStart: API_AUTH_DISABLED serves writes without a token, and says
// so at start-up, every time.
func TestTheDevOptOutWarnsAtEveryStart(t *testing.T) {
	p := serve(t, append(baseEnv(t)[:3], "API_AUTH_DISABLED=true")...)
	if status := write(t, p, ""); status != 201 {
		t.Errorf("a write without a token with auth disabled: %d, want 201", status)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.cmd.Wait()
	if !hasLine(p.out.String(), `"level":"WARN","msg":"API_AUTH_DISABLED=true`) {
		t.Errorf("no start-up warning about API_AUTH_DISABLED:\n%s", p.out)
	}
}

// TestTheAPITokenNeverReachesTheLogs: the binary's whole output, at debug level, after an
// accepted write and refused ones, holds neither the configured token nor a wrong one.
func TestTheAPITokenNeverReachesTheLogs(t *testing.T) {
	env := baseEnv(t)
	token, wrong := tokenOf(env), testenv.Token()
	p := serve(t, append(env, "LOG_LEVEL=debug")...)
	if status := write(t, p, "Bearer "+token); status != 201 {
		t.Errorf("a write with the token: %d, want 201", status)
	}
	for _, auth := range []string{"", "Bearer " + wrong, "Basic " + token} {
		if status := write(t, p, auth); status != 401 {
			t.Errorf("a write with Authorization %q: %d, want 401", auth, status)
		}
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.cmd.Wait()
	out := p.out.String()
	if !hasLine(out, `"api_tokens":"(1 tokens withheld)"`) || strings.Count(out, `"msg":"request"`) < 4 {
		t.Fatalf("the start-up line with the masked config or the access lines are missing:\n%s", out)
	}
	for _, secret := range []string{token, wrong, "Bearer"} {
		if strings.Contains(out, secret) {
			t.Errorf("%q reached the logs:\n%s", secret, out)
		}
	}
}
