package main_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cacheside/cacheside/app/internal/testenv"
)

// readiness is /readyz's answer, as far as these tests read it.
type readiness struct {
	code   int
	Status string `json:"status"`
	Reason string `json:"reason"`
	Checks struct {
		Postgres struct {
			Status string `json:"status"`
		} `json:"postgres"`
		Redis struct {
			Status string `json:"status"`
		} `json:"redis"`
	} `json:"checks"`
}

func (p *proc) readiness(t *testing.T) readiness {
	t.Helper()
	code, b := body(t, p, "/readyz")
	r := readiness{code: code}
	if err := json.Unmarshal([]byte(b), &r); err != nil {
		t.Fatalf("/readyz %d: %v: %s", code, err, b)
	}
	return r
}

// logLines counts p's log lines that contain every fragment.
func logLines(p *proc, fragments ...string) int {
	n := 0
lines:
	for _, line := range strings.Split(p.out.String(), "\n") {
		for _, f := range fragments {
			if !strings.Contains(line, f) {
				continue lines
			}
		}
		n++
	}
	return n
}

// TestAPostgresOutageLeavesTheReplicaReadyAndSaysSo: once Postgres has answered, an outage of it
// (shared by every replica) must not take the replica out of the Service, or the cached views it
// still serves reach no one. /readyz stays 200 and its body, the dependency gauge and one log
// line (not one per probe) say Postgres is down; /healthz is untouched, so nothing restarts it.
// Recovery is seen the same three ways.
func TestAPostgresOutageLeavesTheReplicaReadyAndSaysSo(t *testing.T) {
	pg := testenv.StartPostgres(t)
	env := baseEnv(t)
	env[0] = "DATABASE_URL=" + testenv.CreateDatabase(t, pg.AdminURL())
	p := serve(t, env...) // it waits for /readyz: Postgres has answered once
	if r := p.readiness(t); r.code != 200 || r.Checks.Postgres.Status != "up" {
		t.Fatalf("/readyz before the outage: %+v, want 200 with postgres up", r)
	}
	if up := metric(t, p, "cacheside_dependency_up", `dependency="postgres"`); up != 1 {
		t.Errorf("cacheside_dependency_up{dependency=postgres} = %v before the outage, want 1", up)
	}
	for range 2 { // fill, then hit
		if r := get(p, "/cache"); r.status != 200 {
			t.Fatalf("GET /cache: %+v", r)
		}
	}

	pg.Stop()
	for range 3 { // three probes, one log line
		if r := p.readiness(t); r.code != 200 || r.Status != "ready" || r.Checks.Postgres.Status != "down" || r.Checks.Redis.Status != "up" {
			t.Errorf("/readyz with Postgres down: %+v, want 200 ready, postgres down, redis up", r)
		}
	}
	if r := get(p, "/cache"); r.status != 200 || (r.cache != "HIT" && r.cache != "STALE") {
		t.Errorf("GET /cache with Postgres down: %d X-Cache=%q, want the cached view", r.status, r.cache)
	}
	if r := get(p, "/sample"); r.status != 503 {
		t.Errorf("GET /sample with Postgres down: %d, want 503", r.status)
	}
	if code, _ := body(t, p, "/healthz"); code != 200 {
		t.Errorf("/healthz with Postgres down: %d, want 200", code)
	}
	if up := metric(t, p, "cacheside_dependency_up", `dependency="postgres"`); up != 0 {
		t.Errorf("cacheside_dependency_up{dependency=postgres} = %v with Postgres down, want 0", up)
	}
	if n := logLines(p, `"msg":"dependency down`, `"dependency":"postgres"`); n != 1 {
		t.Errorf("%d log lines say Postgres went down, want exactly 1:\n%s", n, p.out)
	}

	pg.Start()
	testenv.Eventually(t, 30*time.Second, func() error {
		if r := p.readiness(t); r.code != 200 || r.Checks.Postgres.Status != "up" {
			return fmt.Errorf("/readyz %+v", r)
		}
		return nil
	})
	if up := metric(t, p, "cacheside_dependency_up", `dependency="postgres"`); up != 1 {
		t.Errorf("cacheside_dependency_up{dependency=postgres} = %v after recovery, want 1", up)
	}
	if n := logLines(p, `"msg":"dependency up"`, `"dependency":"postgres"`); n != 2 { // at start, and back
		t.Errorf("%d log lines say Postgres is up, want 2 (start, recovery):\n%s", n, p.out)
	}
	if r := get(p, "/sample"); r.status != 200 {
		t.Errorf("GET /sample after recovery: %+v", r)
	}
}

// TestAReplicaThatNeverReachedPostgresIsNotReady: a replica started while Postgres does not answer
// has nothing to serve (it cannot load a view, nor know a cached one is current): it stays out of
// the Service, saying why, until Postgres answers; then it is ready without a restart.
func TestAReplicaThatNeverReachedPostgresIsNotReady(t *testing.T) {
	pg := testenv.StartPostgres(t)
	env := baseEnv(t)
	env[0] = "DATABASE_URL=" + testenv.CreateDatabase(t, pg.AdminURL())
	pg.Stop()

	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	admin := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cmd := command(t, append(env, "HTTP_ADDR="+addr, "ADMIN_ADDR="+admin), "serve")
	p := &proc{cmd: cmd, out: &testenv.Buffer{}, addr: addr, admin: admin}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("cacheside output:\n%s", p.out)
		}
	})
	testenv.Eventually(t, 20*time.Second, func() error {
		res, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return err
		}
		return res.Body.Close()
	})

	for range 2 {
		if r := p.readiness(t); r.code != 503 || r.Status != "not ready" || !strings.HasPrefix(r.Reason, "starting") || r.Checks.Postgres.Status != "down" {
			t.Errorf("/readyz before Postgres ever answered: %+v, want 503 not ready, starting, postgres down", r)
		}
	}
	if code, _ := body(t, p, "/healthz"); code != 200 {
		t.Errorf("/healthz while waiting for Postgres: %d, want 200 (a restart would not bring it)", code)
	}

	pg.Start()
	testenv.Eventually(t, 30*time.Second, func() error {
		if r := p.readiness(t); r.code != 200 || r.Status != "ready" || r.Reason != "" {
			return fmt.Errorf("/readyz %+v", r)
		}
		return nil
	})
}
