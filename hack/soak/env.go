package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cacheside/cacheside/hack/servers"
)

// service is one cacheside process. It can be killed and started again on the same port.
type service struct {
	name, bin, addr string
	token           string // the API token every request carries
	adminAddr       string // its admin port: /metrics
	env             []string
	logPath         string
	client          *http.Client

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	started time.Time
}

func newService(name, bin, dir string, port, adminPort int, env []string, token string, clients int) *service {
	return &service{
		name: name, bin: bin, addr: fmt.Sprintf("127.0.0.1:%d", port), adminAddr: fmt.Sprintf("127.0.0.1:%d", adminPort), token: token,
		env:     append(env, fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", port), fmt.Sprintf("ADMIN_ADDR=127.0.0.1:%d", adminPort)),
		logPath: filepath.Join(dir, name+".log"),
		client: &http.Client{Transport: &http.Transport{
			MaxIdleConnsPerHost: clients * 2, DisableCompression: true, // gzip is asked for explicitly
		}, Timeout: 30 * time.Second},
	}
}

func (s *service) url(path string) string { return "http://" + s.addr + path }

// start runs the process and waits until it answers /healthz.
func (s *service) start(ctx context.Context) error {
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, "serve")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, s.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group (chaos signals it alone), and gone if the soak dies without stopping it.
	cmd.SysProcAttr = servers.DiesWithParent(&syscall.SysProcAttr{Setpgid: true}, syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.exited, s.started = cmd, exited, time.Now()
	s.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-exited:
			return fmt.Errorf("%s exited at start; see %s", s.name, s.logPath)
		default:
		}
		if res, err := s.client.Get(s.url("/healthz")); err == nil {
			res.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer /healthz within a minute; see %s", s.name, s.logPath)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// refusesAnonymousWrites checks that authentication is on: a write without the token is answered
// 401. A soak of a service that took anyone's writes would prove nothing about the one deployed.
func (s *service) refusesAnonymousWrites() error {
	res, err := s.client.Post(s.url("/samples"), "application/json", strings.NewReader(`{"title":"anonymous"}`))
	if err != nil {
		return fmt.Errorf("%s: an anonymous write: %w", s.name, err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("%s answered an anonymous write %d, want 401: the soak runs with authentication on", s.name, res.StatusCode)
	}
	return nil
}

// newToken returns a random API token for the services.
func newToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// kill ends the process as a crash would (SIGKILL) and waits for it.
func (s *service) kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
	<-exited
}

// stop sends SIGTERM, as Kubernetes does, and waits for the graceful shutdown.
func (s *service) stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		s.kill()
	}
}

// pending is the number of undelivered invalidations /readyz reports, or -1 if it did not answer.
func (s *service) pending() int {
	res, err := s.client.Get(s.url("/readyz"))
	if err != nil {
		return -1
	}
	defer res.Body.Close()
	var body struct {
		Checks struct {
			Redis struct {
				Pending int `json:"pending_invalidations"`
			} `json:"redis"`
		} `json:"checks"`
	}
	if json.NewDecoder(res.Body).Decode(&body) != nil {
		return -1
	}
	return body.Checks.Redis.Pending
}

// listCounts reads the service's counts about the list (its /metrics): "loads" from Postgres,
// lookups by outcome ("lookup hit", "lookup miss", …) and shared loads by lease outcome ("lease
// acquired", "lease waited", …), so a storm's loads can be told apart by where they came from.
func (s *service) listCounts() (map[string]float64, error) {
	res, err := s.client.Get("http://" + s.adminAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	text := string(b)
	counts := map[string]float64{"loads": sumSeries(text, "cacheside_cache_loads_total", `cache_keyspace="list"`)}
	for _, o := range []string{"hit", "miss", "bypass", "stale"} {
		counts["lookup "+o] = sumSeries(text, "cacheside_cache_lookups_total", `cache_keyspace="list"`, `cache_outcome="`+o+`"`)
	}
	for _, o := range []string{"acquired", "waited", "taken_over", "unleased", "left"} {
		counts["lease "+o] = sumSeries(text, "cacheside_cache_leases_total", `cache_keyspace="list"`, `cache_lease="`+o+`"`)
	}
	return counts, nil
}

// environment is what the soak runs against: one Postgres, one Redis, two service processes.
type environment struct {
	pg       *servers.Postgres
	redis    *servers.Redis
	services []*service
	// breakerCooldown is the services' CACHE_BREAKER_COOLDOWN: how long after Redis failed
	// they may still skip it.
	breakerCooldown time.Duration
}

// setting is the value of the service's variable name when it runs with env: env's own (the
// last, as exec keeps it), else the default the binary itself prints (cacheside env), so the
// soak follows the service it runs rather than a copy of its defaults.
func setting(ctx context.Context, bin string, env []string, name string) (string, error) {
	value, set := "", false
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			value, set = v, true
		}
	}
	if set {
		return value, nil
	}
	out, err := exec.CommandContext(ctx, bin, "env").Output()
	if err != nil {
		return "", fmt.Errorf("%s env: %w", bin, err)
	}
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == name {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("%s env does not list %s", bin, name)
}

func startEnvironment(ctx context.Context, o options, log io.Writer) (*environment, error) {
	if err := servers.Ensure(log); err != nil {
		return nil, err
	}
	env := &environment{}
	var err error
	env.pg, err = servers.StartPostgres(ctx, servers.PostgresOptions{Dir: filepath.Join(o.out, "pg"), Throwaway: true, Log: log})
	if err != nil {
		return nil, err
	}
	env.redis, err = servers.StartRedis(ctx, servers.RedisOptions{Dir: filepath.Join(o.out, "redis"), Log: log})
	if err != nil {
		env.close()
		return nil, err
	}
	// Authentication on, as in production: every request carries the token (workload.go).
	token := newToken()
	common := []string{
		"DATABASE_URL=" + env.pg.URL(), "REDIS_URL=" + env.redis.URL(), "API_TOKENS=" + token,
		"CACHE_LOCAL_ENABLED=" + strconv.FormatBool(o.nearCache), "LOG_LEVEL=info", "LOG_FORMAT=json",
		// Every client of the soak is one loopback address, far over a client's budget: the
		// soak checks the cache's promise, not the limits (main says so in its first line).
		"RATE_LIMIT_ENABLED=false",
	}
	cooldown, err := setting(ctx, o.bin, common, "CACHE_BREAKER_COOLDOWN")
	if err == nil {
		env.breakerCooldown, err = time.ParseDuration(cooldown)
	}
	if err != nil {
		env.close()
		return nil, fmt.Errorf("the services' CACHE_BREAKER_COOLDOWN: %w", err)
	}
	migrate := exec.CommandContext(ctx, o.bin, "migrate")
	migrate.Env = append([]string{"PATH=" + os.Getenv("PATH")}, common...)
	if out, err := migrate.CombinedOutput(); err != nil {
		env.close()
		return nil, fmt.Errorf("cacheside migrate: %v\n%s", err, out)
	}
	for _, name := range []string{"a", "b"} {
		port, err := servers.FreePort()
		if err != nil {
			env.close()
			return nil, err
		}
		adminPort, err := servers.FreePort()
		if err != nil {
			env.close()
			return nil, err
		}
		svc := newService(name, o.bin, o.out, port, adminPort, common, token, o.clients)
		if err := svc.start(ctx); err != nil {
			env.close()
			return nil, err
		}
		if err := svc.refusesAnonymousWrites(); err != nil {
			env.close()
			return nil, err
		}
		env.services = append(env.services, svc)
	}
	return env, nil
}

func (e *environment) close() {
	for _, s := range e.services {
		s.stop()
	}
	if e.redis != nil {
		_ = e.redis.Kill()
	}
	if e.pg != nil {
		_ = e.pg.Destroy()
	}
}
