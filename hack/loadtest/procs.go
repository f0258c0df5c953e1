package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cacheside/cacheside/hack/servers"
)

// child is a process the run started and must stop, also when interrupted.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, set before done is closed
	log  *lineLog
}

func startChild(name, bin string, args, env []string, stderr io.Writer) (*child, error) {
	c := &child{name: name, done: make(chan struct{}), log: &lineLog{prefix: "[" + name + "] ", out: stderr}}
	c.cmd = exec.Command(bin, args...)
	c.cmd.Env = env
	c.cmd.Stdout = c.log
	c.cmd.Stderr = c.log
	c.cmd.SysProcAttr = servers.DiesWithParent(nil, syscall.SIGTERM) // no cacheside left serving on a forgotten port
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// exited is an error once the process has exited, with the last lines it wrote.
func (c *child) exited() error {
	select {
	case <-c.done:
		return fmt.Errorf("%s exited (%v); its last lines:\n%s", c.name, c.err, c.log.tail())
	default:
		return nil
	}
}

// stop asks for a graceful shutdown (SIGTERM), then kills after a grace period. A child that
// already exited (Ctrl-C reaches the whole process group) is not an error.
func (c *child) stop() error {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
		return fmt.Errorf("%s did not stop within 20s of SIGTERM; killed", c.name)
	}
	var exit *exec.ExitError
	if c.err != nil && !(errors.As(c.err, &exit) && (exit.ExitCode() == 0 || !exit.Exited())) {
		return fmt.Errorf("%s: %w", c.name, c.err)
	}
	return nil
}

// waitReady polls url until it answers 200, the process exits, or the deadline passes.
func (c *child) waitReady(ctx context.Context, url string) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if res, err := client.Get(url); err == nil {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		if err := c.exited(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready at %s within 30s; its last lines:\n%s", c.name, url, c.log.tail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// service is one cacheside serving one cache tier.
type service struct {
	*child
	tier tier
	env  []string // also the environment its reseeding runs with
	url  string
	// adminURL is its admin port's, where /metrics is.
	adminURL string
}

// startService starts cacheside for t on a free loopback port, with its own key prefix so
// that tiers never share cached views, and waits until it is ready. The replication consumer is
// off: nothing writes while the table is measured, so it would only decode each reseed, into the
// first measurements after it; the replication section measures it. extra is appended to the
// environment (a later value of a variable wins); name is the process's in the logs.
func startService(ctx context.Context, bin, name string, t tier, extra []string, stderr io.Writer) (*service, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	adminAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	env := append(os.Environ(),
		"HTTP_ADDR="+addr,
		"ADMIN_ADDR="+adminAddr,
		// Request logging would measure the terminal, not the service.
		"LOG_LEVEL=warn",
		"CACHE_KEY_PREFIX=loadtest-"+strings.ReplaceAll(t.name, "+", "-"),
		"CACHE_LOCAL_ENABLED="+strconv.FormatBool(t.local),
		"REPLICATION_ENABLED=false",
		// One loopback client at thousands of requests a second is what the per-client rate
		// limits exist to refuse; the table measures the cache, so they are off (and main says so).
		// The in-flight bound stays at its default, above the most connections measured.
		"RATE_LIMIT_ENABLED=false",
	)
	env = append(env, extra...)
	c, err := startChild(name, bin, []string{"serve"}, env, stderr)
	if err != nil {
		return nil, err
	}
	s := &service{child: c, tier: t, env: env, url: "http://" + addr, adminURL: "http://" + adminAddr}
	if err := c.waitReady(ctx, s.url+"/readyz"); err != nil {
		_ = c.stop()
		return nil, err
	}
	return s, nil
}

// startCeiling writes spec and starts this binary again as the ceiling server, so that the
// ceiling competes with the load generator for the CPUs the way the service does, rather than
// sharing its process (and garbage collector).
func startCeiling(ctx context.Context, name, path string, spec ceilingSpec, env []string, stderr io.Writer) (*child, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	spec.Addr = addr
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, "", fmt.Errorf("encoding the ceiling's spec: %w", err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return nil, "", fmt.Errorf("writing the ceiling's spec: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, "", fmt.Errorf("finding this program to start the ceiling: %w", err)
	}
	c, err := startChild(name, self, []string{"-" + ceilingFlag, path}, env, stderr)
	if err != nil {
		return nil, "", err
	}
	url := "http://" + addr
	if err := c.waitReady(ctx, url+"/readyz"); err != nil {
		_ = c.stop()
		return nil, "", err
	}
	return c, url, nil
}

// freeAddr picks a loopback port the kernel says is free. Another process could take it
// before the child binds it; the child then fails to start and says why.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free port: %w", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		return "", fmt.Errorf("finding a free port: %w", err)
	}
	return addr, nil
}

// lineLog passes a child's output on, each line prefixed with its name, and keeps the last
// lines for error messages.
type lineLog struct {
	prefix string
	out    io.Writer

	mu      sync.Mutex
	partial []byte
	last    []string
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := string(l.partial[:i])
		l.partial = l.partial[i+1:]
		fmt.Fprintln(l.out, l.prefix+line)
		l.last = append(l.last, line)
		if len(l.last) > 20 {
			l.last = l.last[1:]
		}
	}
	return len(p), nil
}

func (l *lineLog) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := append(slices.Clone(l.last), string(l.partial))
	return "    " + strings.Join(lines, "\n    ")
}
