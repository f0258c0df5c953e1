package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// checkTraces runs app/e2e's trace test in remote mode (see app/e2e/traces_test.go): requests through the
// Service produce miss, hit and bypass traces that it reads back from the in-cluster Jaeger, where they
// arrive through the OpenTelemetry Collector (the chart's otel.endpoint, hack/cluster/values.yaml).
//
// Both are reached through kubectl port-forward on loopback, as CI's kind job does: a port-forward to the
// Service holds one pod, and the test's "a write, then a miss" needs its requests on the process that wrote
// (another replica's near-cache may lag a write by the pub/sub delivery, which the README allows).
func checkTraces(ctx context.Context, c *cluster) error {
	app, stopApp, err := c.portForward(ctx, c.o.namespace, "svc/"+c.fullname(), 80)
	if err != nil {
		return err
	}
	defer stopApp()
	jaeger, stopJaeger, err := c.portForward(ctx, "observability", "svc/jaeger", 16686)
	if err != nil {
		return err
	}
	defer stopJaeger()
	token, err := c.apiToken(ctx)
	if err != nil {
		return err
	}
	// What the test needs before it starts: the service ready and Jaeger's query API answering.
	if err := waitFor(ctx, time.Minute, "the service and Jaeger answer through the port-forwards", func() (bool, error) {
		for _, u := range []string{app + "/readyz", jaeger + "/api/v3/services"} {
			if r := c.do(ctx, u, "GET", "", "", ""); !r.ok() {
				return false, fmt.Errorf("%s: %s", u, r)
			}
		}
		return true, nil
	}); err != nil {
		return err
	}

	// The test's first read after a write must be a MISS. Just after an install the cache may still be
	// skipped for keys whose invalidation is pending (helm test's writes, on a busy machine): wait until
	// the list is served through the cache, five times in a row.
	inARow := 0
	if err := waitFor(ctx, time.Minute, "the list served through the cache (not BYPASS) five times in a row", func() (bool, error) {
		r := c.do(ctx, app, "GET", "/cache", "", "")
		if !r.ok() || r.xcache == "BYPASS" {
			inARow = 0
			return false, fmt.Errorf("%s", r)
		}
		inARow++
		return inARow >= 5, nil
	}); err != nil {
		return err
	}

	kubectl := fmt.Sprintf("%q -n %q", c.kubectl, c.o.namespace)
	redis := c.redisName()
	cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-v", "./app/e2e/")
	cmd.Dir = c.o.repo
	cmd.Env = append(os.Environ(),
		"GOWORK=off",
		"E2E_BASE_URL="+app,
		"E2E_JAEGER_URL="+jaeger,
		"E2E_SERVICE_NAME=cacheside",
		"E2E_API_TOKEN="+token,
		fmt.Sprintf("E2E_REDIS_STOP_CMD=%s scale statefulset/%s --replicas=0 && %s wait --for=delete pod/%s-0 --timeout=90s",
			kubectl, redis, kubectl, redis),
		fmt.Sprintf("E2E_REDIS_START_CMD=%s scale statefulset/%s --replicas=1 && %s rollout status statefulset/%s --timeout=180s",
			kubectl, redis, kubectl, redis),
	)
	var out strings.Builder
	cmd.Stdout = &teeIndent{&out, &indent{w: os.Stderr}}
	cmd.Stderr = cmd.Stdout
	logf("$ go test -count=1 -v ./app/e2e/ (E2E_BASE_URL=%s E2E_JAEGER_URL=%s)", app, jaeger)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("app/e2e trace test: %w", err)
	}
	// A remote run skips what it has no means for (E2E_DATABASE_URL); the three waterfalls must have run.
	for _, name := range []string{"a_miss_reads", "a_hit_reads", "with_Redis_stopped_the_lookup_shows_the_bypass"} {
		if !strings.Contains(out.String(), "--- PASS: TestTracesShowHowEachRequestWasServed/"+name) {
			return fmt.Errorf("app/e2e passed without running its subtest %s", name)
		}
	}
	return nil
}

type teeIndent struct {
	a *strings.Builder
	b *indent
}

func (t *teeIndent) Write(p []byte) (int, error) {
	t.a.Write(p)
	return t.b.Write(p)
}
