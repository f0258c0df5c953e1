package testenv

import (
	"context"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cacheside/cacheside/hack/servers"
)

// RedisServer is a private redis-server a test may kill, pause and restart.
type RedisServer struct {
	*servers.Redis
	t testing.TB
}

// StartRedis starts a private redis-server on a free port, killed when the test ends. extra are
// more redis-server arguments.
func StartRedis(t testing.TB, extra ...string) *RedisServer {
	t.Helper()
	r, err := servers.StartRedis(context.Background(), servers.RedisOptions{Dir: t.TempDir(), Args: extra})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Kill() })
	return &RedisServer{Redis: r, t: t}
}

// Stop kills the server as a crash would and waits for it to exit.
func (s *RedisServer) Stop() {
	if err := s.Kill(); err != nil {
		s.t.Fatal(err)
	}
}

// Start restarts the server on its port, empty, and waits until it answers PING.
func (s *RedisServer) Start() {
	s.t.Helper()
	if err := s.Redis.Start(context.Background()); err != nil {
		s.t.Fatal(err)
	}
}

// StartRedisCluster starts a three-master Redis Cluster and returns its URL in go-redis's
// cluster form.
func StartRedisCluster(t testing.TB) string {
	t.Helper()
	nodes, url, err := servers.StartRedisCluster(context.Background(), t.TempDir())
	t.Cleanup(func() {
		for _, n := range nodes {
			_ = n.Kill()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return url
}

// StartRedisSentinel starts a master and one Sentinel watching it as "mymaster", and returns the
// URL in go-redis's failover form.
func StartRedisSentinel(t testing.TB) string {
	t.Helper()
	master, sentinel, url, err := servers.StartRedisSentinel(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sentinel.Kill(); _ = master.Kill() })
	return url
}

// PostgresServer is a private Postgres cluster a test may stop, freeze and restart.
type PostgresServer struct {
	*servers.Postgres
	t testing.TB
}

// StartPostgres initialises and starts a private throwaway cluster on a free port, deleted when
// the test ends. conf are more postgresql.conf lines.
func StartPostgres(t testing.TB, conf ...string) *PostgresServer {
	t.Helper()
	p, err := servers.StartPostgres(context.Background(), servers.PostgresOptions{Dir: filepath.Join(t.TempDir(), "pg"), Throwaway: true, Conf: conf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Destroy(); err != nil {
			t.Log(err)
		}
	})
	return &PostgresServer{Postgres: p, t: t}
}

// AdminURL is a superuser URL, for CreateDatabase.
func (s *PostgresServer) AdminURL() string { return s.URL() }

// Stop shuts the server down (open sessions are terminated) and waits for it.
func (s *PostgresServer) Stop() {
	if err := s.Postgres.Stop(); err != nil {
		s.t.Fatal(err)
	}
}

// Start restarts the server and waits until it accepts connections.
func (s *PostgresServer) Start() {
	s.t.Helper()
	if err := s.Postgres.Start(context.Background()); err != nil {
		s.t.Fatal(err)
	}
}

// Command is exec.Command for a process a test starts (a service, Jaeger): it is killed if the
// test binary dies without running its cleanups (a timeout panic, a signal).
func Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = servers.DiesWithParent(nil, syscall.SIGKILL)
	return cmd
}
