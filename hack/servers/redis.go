package servers

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisOptions configures StartRedis.
type RedisOptions struct {
	// Dir holds the server's log and pid file; created if missing. A server already running from
	// it is reused.
	Dir string
	// Port to listen on, on 127.0.0.1; 0 picks a free one.
	Port int
	// Args are more redis-server arguments, e.g. "--cluster-enabled", "yes".
	Args []string
	// Conf, if set, is a configuration file given to redis-server first (Sentinel needs one,
	// and rewrites it).
	Conf string
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// Redis is a redis-server run as a local process. It keeps nothing on disk (no RDB, no AOF), as
// a cache should: a restart empties it.
type Redis struct {
	opts RedisOptions
	bin  string
	proc *proc
	// Adopted is set when StartRedis found the server already running: it is not this
	// process's to stop.
	Adopted bool
}

// StartRedis starts a redis-server, or finds it running, and waits until it answers PING.
func StartRedis(ctx context.Context, o RedisOptions) (*Redis, error) {
	if o.Log == nil {
		o.Log = io.Discard
	}
	bin, err := RedisServer()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	if o.Dir, err = filepath.Abs(o.Dir); err != nil {
		return nil, err
	}
	r := &Redis{opts: o, bin: bin}
	if b, err := os.ReadFile(r.pidFile()); err == nil {
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 && processIs(pid, "redis-server") {
			if o.Port != 0 && ping(ctx, o.Port) == nil {
				r.proc, r.Adopted = foundProc(pid), true
				fmt.Fprintf(o.Log, "Redis already running in %s (pid %d, port %d)\n", o.Dir, pid, o.Port)
				return r, nil
			}
			return nil, fmt.Errorf("the Redis of %s (pid %d) does not answer on port %d: stop it first", o.Dir, pid, o.Port)
		}
	}
	if r.opts.Port == 0 {
		if r.opts.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	if err := r.Start(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// URL is the server's redis:// URL.
func (r *Redis) URL() string { return "redis://" + r.Addr() + "/0" }

// Addr is the server's host:port.
func (r *Redis) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.opts.Port)) }

// Port is the port the server listens on.
func (r *Redis) Port() int { return r.opts.Port }

// Start (re)starts the server on its port and waits until it answers PING.
func (r *Redis) Start(ctx context.Context) error {
	_ = os.Remove(r.pidFile())
	if ping(ctx, r.opts.Port) == nil {
		return fmt.Errorf("port %d is already in use", r.opts.Port) // a foreign server would answer our PINGs
	}
	var args []string
	if r.opts.Conf != "" {
		args = append(args, r.opts.Conf)
	}
	args = append(append(args, "--bind", "127.0.0.1", "--port", strconv.Itoa(r.opts.Port),
		"--save", "", "--appendonly", "no", "--dir", r.opts.Dir,
		"--pidfile", r.pidFile(), "--logfile", r.logFile()), r.opts.Args...)
	fmt.Fprintf(r.opts.Log, "starting Redis on %s (dir %s)\n", r.Addr(), r.opts.Dir)
	cmd := exec.Command(r.bin, args...)
	cmd.SysProcAttr = (*RunAs)(nil).credential(syscall.SIGTERM)
	pr, err := startProc(cmd)
	if err != nil {
		return fmt.Errorf("starting redis-server: %w", err)
	}
	r.proc = pr
	err = waitFor(ctx, 30*time.Second, func() error {
		if !pr.alive() {
			return stop(fmt.Errorf("redis-server exited: %v\n%s", pr.err, tail(r.logFile())))
		}
		return ping(ctx, r.opts.Port)
	})
	if err != nil {
		_ = r.Kill()
		return fmt.Errorf("Redis did not answer PING: %w", err)
	}
	return nil
}

// Stop asks the server to exit (SIGTERM) and waits for it.
func (r *Redis) Stop() error { return r.end(syscall.SIGTERM) }

// Kill ends the server as a crash would (SIGKILL) and waits for it.
func (r *Redis) Kill() error { return r.end(syscall.SIGKILL) }

func (r *Redis) end(sig syscall.Signal) error {
	if r.proc == nil {
		return nil
	}
	err := r.proc.stop(sig, syscall.SIGKILL)
	r.proc = nil
	_ = os.Remove(r.pidFile())
	return err
}

// Pause freezes the server (SIGSTOP): connections stay open but nothing is answered, which is
// how a Redis stuck in a long command, or a paused VM, looks to a client.
func (r *Redis) Pause() {
	if r.proc != nil {
		r.proc.signal(syscall.SIGSTOP)
	}
}

// Resume undoes Pause.
func (r *Redis) Resume() {
	if r.proc != nil {
		r.proc.signal(syscall.SIGCONT)
	}
}

func (r *Redis) pidFile() string { return filepath.Join(r.opts.Dir, "redis.pid") }
func (r *Redis) logFile() string { return filepath.Join(r.opts.Dir, "log") }

// ping speaks RESP itself: a go-redis client would log every refused dial while a server starts.
func ping(ctx context.Context, port int) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	reply := make([]byte, 7)
	n, err := io.ReadAtLeast(conn, reply, 5)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(reply[:n]), "+PONG") {
		return fmt.Errorf("unexpected reply %q", reply[:n])
	}
	return nil
}

// StartRedisSentinel starts a master and one Sentinel watching it as "mymaster", in dir, and
// returns the servers and the URL in go-redis's failover form.
func StartRedisSentinel(ctx context.Context, dir string) (master, sentinel *Redis, url string, err error) {
	master, err = StartRedis(ctx, RedisOptions{Dir: filepath.Join(dir, "master")})
	if err != nil {
		return nil, nil, "", err
	}
	defer func() { // on any failure below, stop what was started
		if err != nil {
			for _, r := range []*Redis{sentinel, master} {
				if r != nil {
					_ = r.Kill()
				}
			}
			master, sentinel = nil, nil
		}
	}()
	sdir := filepath.Join(dir, "sentinel")
	if err = os.MkdirAll(sdir, 0o755); err != nil {
		return
	}
	conf := filepath.Join(sdir, "sentinel.conf")
	text := fmt.Sprintf("sentinel monitor mymaster 127.0.0.1 %d 1\n", master.Port())
	if err = os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return
	}
	sentinel, err = StartRedis(ctx, RedisOptions{Dir: sdir, Conf: conf, Args: []string{"--sentinel"}})
	if err != nil {
		return
	}
	s := redis.NewSentinelClient(&redis.Options{Addr: sentinel.Addr()})
	defer s.Close()
	err = waitFor(ctx, 30*time.Second, func() error { return s.GetMasterAddrByName(ctx, "mymaster").Err() })
	if err != nil {
		err = fmt.Errorf("the sentinel does not know its master: %w", err)
		return
	}
	return master, sentinel, fmt.Sprintf("redis://%s/0?master_name=mymaster", sentinel.Addr()), nil
}

// StartRedisCluster starts a three-master Redis Cluster in dir and returns its nodes and URL in
// go-redis's cluster form (the first node, ?addr= for the others). Slots are assigned directly,
// so no redis-cli is needed.
func StartRedisCluster(ctx context.Context, dir string) (nodes []*Redis, url string, err error) {
	for i := range 3 {
		n, err := StartRedis(ctx, RedisOptions{Dir: filepath.Join(dir, strconv.Itoa(i)),
			Args: []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"}})
		if err != nil {
			for _, n := range nodes {
				_ = n.Kill()
			}
			return nil, "", err
		}
		nodes = append(nodes, n)
	}
	const slots = 16384
	for i, n := range nodes {
		c := redis.NewClient(&redis.Options{Addr: n.Addr()})
		lo, hi := i*slots/len(nodes), (i+1)*slots/len(nodes)-1
		err := c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", lo, hi).Err()
		if err == nil && i > 0 {
			err = c.ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(nodes[0].Port())).Err()
		}
		_ = c.Close()
		if err != nil {
			return nodes, "", fmt.Errorf("forming the cluster: %w", err)
		}
	}
	for _, n := range nodes {
		c := redis.NewClient(&redis.Options{Addr: n.Addr()})
		err := waitFor(ctx, 30*time.Second, func() error {
			info, err := c.ClusterInfo(ctx).Result()
			if err == nil && !strings.Contains(info, "cluster_state:ok") {
				err = fmt.Errorf("cluster not ok yet")
			}
			return err
		})
		_ = c.Close()
		if err != nil {
			return nodes, "", err
		}
	}
	return nodes, fmt.Sprintf("redis://%s?addr=%s&addr=%s", nodes[0].Addr(), nodes[1].Addr(), nodes[2].Addr()), nil
}
