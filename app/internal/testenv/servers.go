package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// RedisServer is a private redis-server a test may kill, pause and restart.
type RedisServer struct {
	t     testing.TB
	bin   string
	dir   string
	Port  int
	cmd   *exec.Cmd
	extra []string
}

// StartRedis starts a private redis-server on a free port, stopped when the test ends. The binary
// is $REDIS_SERVER or redis-server on PATH (make test provides it). extra are more arguments.
func StartRedis(t testing.TB, extra ...string) *RedisServer {
	t.Helper()
	bin := os.Getenv("REDIS_SERVER")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("redis-server"); err != nil {
			t.Fatalf("redis-server not found: run the tests with `make test`, which installs it")
		}
	}
	s := &RedisServer{t: t, bin: bin, dir: t.TempDir(), Port: FreePort(t), extra: extra}
	s.Start()
	t.Cleanup(func() {
		if s.cmd != nil {
			_ = s.cmd.Process.Signal(syscall.SIGCONT)
			s.Stop()
		}
	})
	return s
}

// URL is the server's redis:// URL.
func (s *RedisServer) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.Port) }

// Start (re)starts the server on its port and waits until it answers PING.
func (s *RedisServer) Start() {
	s.t.Helper()
	args := append([]string{"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--logfile", filepath.Join(s.dir, "redis.log")}, s.extra...)
	s.cmd = exec.Command(s.bin, args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server: %v", err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)), MaxRetries: -1})
	defer rdb.Close()
	Eventually(s.t, 10*time.Second, func() error { return rdb.Ping(context.Background()).Err() })
}

// Stop kills the server as a crash would and waits for it to exit.
func (s *RedisServer) Stop() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Pause freezes the server (SIGSTOP): connections stay open but nothing is answered, which is
// how a Redis stuck in a long command or a GC-paused proxy looks to a client.
func (s *RedisServer) Pause() { _ = s.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume undoes Pause.
func (s *RedisServer) Resume() { _ = s.cmd.Process.Signal(syscall.SIGCONT) }

// StartRedisCluster starts a three-master Redis Cluster and returns its URL in go-redis's
// cluster form (the first node, ?addr= for the others). Slots are assigned directly, so no
// redis-cli is needed.
func StartRedisCluster(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	var nodes []*RedisServer
	for range 3 {
		nodes = append(nodes, StartRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"))
	}
	const slots = 16384
	for i, n := range nodes {
		c := redis.NewClient(&redis.Options{Addr: n.addr()})
		lo, hi := i*slots/len(nodes), (i+1)*slots/len(nodes)-1
		if err := c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", lo, hi).Err(); err != nil {
			t.Fatalf("assigning slots: %v", err)
		}
		if i > 0 {
			if err := c.ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(nodes[0].Port)).Err(); err != nil {
				t.Fatalf("joining the cluster: %v", err)
			}
		}
		_ = c.Close()
	}
	for _, n := range nodes {
		c := redis.NewClient(&redis.Options{Addr: n.addr()})
		Eventually(t, 30*time.Second, func() error {
			info, err := c.ClusterInfo(ctx).Result()
			if err == nil && !strings.Contains(info, "cluster_state:ok") {
				err = fmt.Errorf("cluster not ok yet")
			}
			return err
		})
		_ = c.Close()
	}
	return fmt.Sprintf("redis://%s?addr=%s&addr=%s", nodes[0].addr(), nodes[1].addr(), nodes[2].addr())
}

// StartRedisSentinel starts a master and one Sentinel watching it as "mymaster", and returns the
// URL in go-redis's failover form.
func StartRedisSentinel(t testing.TB) string {
	t.Helper()
	master := StartRedis(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	port := FreePort(t)
	text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor mymaster 127.0.0.1 %d 1\n", port, dir, master.Port)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(master.bin, conf, "--sentinel")
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting sentinel: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	s := redis.NewSentinelClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	defer s.Close()
	Eventually(t, 30*time.Second, func() error {
		return s.GetMasterAddrByName(context.Background(), "mymaster").Err()
	})
	return fmt.Sprintf("redis://127.0.0.1:%d/0?master_name=mymaster", port)
}

func (s *RedisServer) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// PostgresServer is a private Postgres cluster a test may stop and restart.
type PostgresServer struct {
	t     testing.TB
	bin   string
	dir   string
	Port  int
	cred  *syscall.Credential
	cmd   *exec.Cmd
	admin string
}

// StartPostgres initialises and starts a private cluster on a free port, removed when the test
// ends. Postgres refuses to run as root, so as root it runs as $PG_RUN_AS (else "postgres"). Binaries come
// from $PG_BINDIR, else pg_ctl's directory on PATH, else Debian's /usr/lib/postgresql/*/bin.
func StartPostgres(t testing.TB) *PostgresServer {
	t.Helper()
	bin := pgBinDir(t)
	dir, err := os.MkdirTemp("", "cacheside-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	s := &PostgresServer{t: t, bin: bin, dir: dir, Port: FreePort(t)}
	if os.Geteuid() == 0 {
		name := os.Getenv("PG_RUN_AS") // set by make test
		if name == "" {
			name = "postgres"
		}
		u, err := user.Lookup(name)
		if err != nil {
			t.Fatalf("running as root needs an unprivileged user to run Postgres as (PG_RUN_AS, else postgres): %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	initdb := s.command("initdb", "-D", s.data(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	s.admin = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.Port)
	s.Start()
	t.Cleanup(func() {
		if s.cmd != nil {
			s.Stop()
		}
	})
	return s
}

// AdminURL is a superuser URL on the server's "postgres" database.
func (s *PostgresServer) AdminURL() string { return s.admin }

func (s *PostgresServer) data() string { return filepath.Join(s.dir, "data") }

func (s *PostgresServer) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	cmd.Dir = s.dir
	return cmd
}

// Start (re)starts the server and waits until it accepts connections.
func (s *PostgresServer) Start() {
	s.t.Helper()
	s.cmd = s.command("postgres", "-D", s.data(), "-p", strconv.Itoa(s.Port), "-k", s.dir,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50")
	logf, err := os.Create(filepath.Join(s.dir, "postgres.log"))
	if err == nil {
		s.cmd.Stdout, s.cmd.Stderr = logf, logf
		defer logf.Close()
	}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("starting postgres: %v", err)
	}
	Eventually(s.t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, s.admin)
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	})
}

// Stop shuts the server down (fast mode: open sessions are terminated) and waits for it.
func (s *PostgresServer) Stop() {
	s.Resume()
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Pause freezes the postmaster and every backend (SIGSTOP): open connections get no answer, and
// new ones are accepted by the kernel but never served, as with a server that hangs.
func (s *PostgresServer) Pause() {
	_ = s.cmd.Process.Signal(syscall.SIGSTOP) // first, so it forks no new backend meanwhile
	for _, pid := range childrenOf(s.cmd.Process.Pid) {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
}

// Resume undoes Pause.
func (s *PostgresServer) Resume() {
	for _, pid := range childrenOf(s.cmd.Process.Pid) {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
	_ = s.cmd.Process.Signal(syscall.SIGCONT)
}

// childrenOf lists the processes whose parent is pid, from /proc.
func childrenOf(pid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var kids []int
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces, so split after its closing paren.
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		fields := strings.Fields(rest)
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			child, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			kids = append(kids, child)
		}
	}
	return kids
}

func pgBinDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("PG_BINDIR"); d != "" {
		return d
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(real)
		}
	}
	if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres"); len(m) > 0 {
		return filepath.Dir(m[len(m)-1])
	}
	t.Fatalf("PostgreSQL server binaries not found: run the tests with `make test`, which installs them")
	return ""
}
