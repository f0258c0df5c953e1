// Command dev is what make run, make test and make clean run: the service and its tests on this
// machine, with PostgreSQL and Redis as local processes (hack/servers), no Docker.
//
//	go run ./hack/dev test [go test flags]   throwaway servers, then go test ./... (make test, make bench)
//	go run ./hack/dev run                    dev servers, Jaeger, migrate, seed, serve (make run)
//	go run ./hack/dev clean                  stop whatever runs under .run and delete it (make clean)
//
// test uses TEST_DATABASE_URL and TEST_REDIS_URL when set, else starts its own servers under
// .run/test, removed afterwards; it exports PG_BINDIR, REDIS_SERVER (and PG_RUN_AS as root) so
// tests start their private servers the same way, and JAEGER_BIN for the trace tests (built by
// hack/jaeger.sh). GO_TEST_FLAGS replaces "-race -count=1".
//
// run uses DATABASE_URL and REDIS_URL when set, else keeps a dev PostgreSQL on PG_DEV_PORT
// (15432) and a dev Redis on REDIS_DEV_PORT (16379) under .run/dev, and starts Jaeger unless
// OTEL_EXPORTER_OTLP_ENDPOINT is set. Unless API_TOKENS or API_AUTH_DISABLED is set, the service
// gets the dev API token kept in .run/dev/api-token (made once, mode 0600). Ctrl-C sends the service SIGTERM, as Kubernetes does, and
// stops what was started (dev data stays). Only servers this command started are stopped.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/cacheside/cacheside/hack/servers"
)

var logw io.Writer = prefixed{os.Stderr}

// prefixed marks this command's lines among the servers' and the tests' output.
type prefixed struct{ w io.Writer }

func (p prefixed) Write(b []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line != "" {
			if _, err := io.WriteString(p.w, "[dev] "+line); err != nil {
				return 0, err
			}
		}
	}
	return len(b), nil
}

func logf(format string, args ...any) { fmt.Fprintf(logw, format+"\n", args...) }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: go run ./hack/dev test [go test flags] | run | clean")
		os.Exit(2)
	}
	// make and `go run` pass a SIGTERM (a CI timeout, kill) on to their child only, and `go run`
	// exits without waiting: this way it reaches us too, and we stop what we started.
	servers.DieWithParent()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code, err := dispatch(ctx, os.Args[1], os.Args[2:])
	stop()
	if err != nil {
		logf("%v", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func dispatch(ctx context.Context, cmd string, args []string) (int, error) {
	root, err := repoRoot()
	if err != nil {
		return 1, err
	}
	switch cmd {
	case "test":
		return test(ctx, root, args)
	case "run":
		return run(ctx, root)
	case "clean":
		return 0, clean(root)
	}
	return 2, fmt.Errorf("unknown command %q", cmd)
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	if b, err := os.ReadFile(filepath.Join(root, "go.mod")); err != nil || !strings.HasPrefix(string(b), "module github.com/cacheside/cacheside\n") {
		return "", errors.New("run it from a cacheside checkout (make run, make test)")
	}
	return root, nil
}

// test runs the root module's tests against throwaway servers.
func test(ctx context.Context, root string, args []string) (int, error) {
	if err := servers.Ensure(logw); err != nil {
		return 1, err
	}
	// The 413 tests drive curl as the client the issue was found with; a test that skipped
	// without it would pass on exactly the fresh machines that never ran it.
	if _, err := exec.LookPath("curl"); err != nil {
		if err := servers.AptInstall(logw, "curl"); err != nil {
			return 1, err
		}
	}
	if err := ensureCgo(); err != nil {
		return 1, err
	}
	if err := exportServerBinaries(); err != nil {
		return 1, err
	}
	if os.Getenv("JAEGER_BIN") == "" { // the trace tests run a real Jaeger v2
		logf("building Jaeger if needed (hack/jaeger.sh build: minutes the first time)")
		out, err := jaeger(ctx, root, "build")
		if err != nil {
			return 1, err
		}
		os.Setenv("JAEGER_BIN", strings.TrimSpace(out))
	}

	var cleanup []func()
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}()
	// Everything the run starts lives under dir, the tests' own servers too (TMPDIR, so their
	// t.TempDir is there): if a test binary dies without its cleanups (a timeout, a signal), the
	// servers it started die with it (servers.DiesWithParent) and Clean removes what they left.
	// Servers of our own are started in .run/test, one run per checkout at a time; with both
	// URLs given, a run gets a folder of its own.
	var dir string
	if os.Getenv("TEST_DATABASE_URL") != "" && os.Getenv("TEST_REDIS_URL") != "" {
		if err := os.MkdirAll(filepath.Join(root, ".run"), 0o755); err != nil {
			return 1, err
		}
		d, err := os.MkdirTemp(filepath.Join(root, ".run"), "test-")
		if err != nil {
			return 1, err
		}
		dir = d
	} else {
		dir = filepath.Join(root, ".run", "test")
		unlock, err := lock(filepath.Join(root, ".run", "test.lock"))
		if err != nil {
			return 1, err
		}
		cleanup = append(cleanup, unlock)
		// Holding the lock, anything in .run/test was left by a run killed hard: stop it.
		if err := servers.Clean(dir, logw); err != nil {
			return 1, err
		}
	}
	cleanup = append(cleanup, func() { report(servers.Clean(dir, logw)) })
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return 1, err
	}
	if os.Getenv("TEST_DATABASE_URL") == "" || os.Getenv("TEST_REDIS_URL") == "" {
		if os.Getenv("TEST_DATABASE_URL") == "" {
			pg, err := servers.StartPostgres(ctx, servers.PostgresOptions{Dir: filepath.Join(dir, "pg"), Throwaway: true, Log: logw})
			if err != nil {
				return 1, err
			}
			cleanup = append(cleanup, func() { report(pg.Destroy()) })
			os.Setenv("TEST_DATABASE_URL", pg.URL())
		}
		if os.Getenv("TEST_REDIS_URL") == "" {
			r, err := servers.StartRedis(ctx, servers.RedisOptions{Dir: filepath.Join(dir, "redis"), Log: logw})
			if err != nil {
				return 1, err
			}
			cleanup = append(cleanup, func() { report(r.Kill()) })
			os.Setenv("TEST_REDIS_URL", r.URL())
		}
	}
	os.Setenv("GOWORK", "off") // the root module only: tool modules have their own go.mod
	flags := strings.Fields(os.Getenv("GO_TEST_FLAGS"))
	if len(flags) == 0 {
		flags = []string{"-race", "-count=1"}
	}
	goArgs := append(append(append([]string{"test"}, flags...), "./..."), args...)
	if err := ctx.Err(); err != nil { // interrupted while building or starting servers
		return 1, errors.New("interrupted")
	}
	logf("TEST_DATABASE_URL=%s TEST_REDIS_URL=%s", os.Getenv("TEST_DATABASE_URL"), os.Getenv("TEST_REDIS_URL"))
	logf("go %s", strings.Join(goArgs, " "))
	cmd := exec.Command("go", goArgs...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = root, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	return exitCode(supervise(cmd, 0))
}

// run runs the service against dev servers until Ctrl-C or SIGTERM.
func run(ctx context.Context, root string) (int, error) {
	bin := filepath.Join(root, ".run", "bin", "cacheside")
	logf("go build -o %s ./app", bin)
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./app")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil { // before any server: a compile error should cost nothing
		return 1, err
	}
	if os.Getenv("DATABASE_URL") == "" || os.Getenv("REDIS_URL") == "" {
		if err := servers.Ensure(logw); err != nil {
			return 1, err
		}
	}
	dev := filepath.Join(root, ".run", "dev")
	var cleanup []func()
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}()
	if os.Getenv("DATABASE_URL") == "" {
		pg, err := servers.StartPostgres(ctx, servers.PostgresOptions{Dir: filepath.Join(dev, "pg"), Port: envPort("PG_DEV_PORT", 15432), Log: logw})
		if err != nil {
			return 1, err
		}
		if !pg.Adopted { // found running (another make run): not ours to stop
			cleanup = append(cleanup, func() { report(pg.Stop()) })
		}
		os.Setenv("DATABASE_URL", pg.URL())
	}
	if os.Getenv("REDIS_URL") == "" {
		r, err := servers.StartRedis(ctx, servers.RedisOptions{Dir: filepath.Join(dev, "redis"), Port: envPort("REDIS_DEV_PORT", 16379), Log: logw})
		if err != nil {
			return 1, err
		}
		if !r.Adopted {
			cleanup = append(cleanup, func() { report(r.Stop()) })
		}
		os.Setenv("REDIS_URL", r.URL())
	}
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" {
		logf("building Jaeger if needed (hack/jaeger.sh build: minutes the first time)")
		if _, err := jaeger(ctx, root, "build"); err != nil {
			return 1, err
		}
		jdir := filepath.Join(dev, "jaeger")
		if _, err := jaeger(ctx, root, "start", jdir); err != nil {
			return 1, err
		}
		cleanup = append(cleanup, func() { _, err := jaeger(context.Background(), root, "stop", jdir); report(err) })
		port := os.Getenv("JAEGER_OTLP_HTTP_PORT")
		if port == "" {
			port = "4318"
		}
		os.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:"+port)
		if os.Getenv("OTEL_SERVICE_NAME") == "" {
			os.Setenv("OTEL_SERVICE_NAME", "cacheside")
		}
		query := os.Getenv("JAEGER_QUERY_PORT")
		if query == "" {
			query = "16686"
		}
		logf("Jaeger query API: http://127.0.0.1:%s/api/v3/services (README: Reading the traces)", query)
	} else {
		logf("OTEL_EXPORTER_OTLP_ENDPOINT is set: not starting a local Jaeger")
	}
	if os.Getenv("HTTP_ADDR") == "" {
		os.Setenv("HTTP_ADDR", ":8080")
	}
	if os.Getenv("ADMIN_ADDR") == "" {
		os.Setenv("ADMIN_ADDR", ":9090")
	}
	logf("DATABASE_URL=%s REDIS_URL=%s HTTP_ADDR=%s ADMIN_ADDR=%s", os.Getenv("DATABASE_URL"), os.Getenv("REDIS_URL"), os.Getenv("HTTP_ADDR"), os.Getenv("ADMIN_ADDR"))
	logf("metrics: http://%s/metrics (the admin port, ADMIN_ADDR; not on the API's port)", loopback(os.Getenv("ADMIN_ADDR")))
	for _, args := range [][]string{{"migrate"}, {"seed", "-n", "1000", "-if-empty"}} {
		logf("cacheside %s", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return 1, fmt.Errorf("cacheside %s: %w", strings.Join(args, " "), err)
		}
	}
	if os.Getenv("API_TOKENS") == "" && os.Getenv("API_AUTH_DISABLED") == "" {
		path := filepath.Join(dev, "api-token")
		token, err := devToken(path)
		if err != nil {
			return 1, err
		}
		os.Setenv("API_TOKENS", token)
		rel, _ := filepath.Rel(root, path)
		port := os.Getenv("HTTP_ADDR")[strings.LastIndex(os.Getenv("HTTP_ADDR"), ":")+1:]
		logf("POST, PUT and DELETE need the dev API token, kept in %s (mode 0600, survives restarts):", rel)
		logf("  TOKEN=$(cat %s)", rel)
		logf(`  curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{"title":"hello"}' localhost:%s/samples`, port)
	}
	logf("cacheside serve (Ctrl-C to stop)")
	cmd := exec.Command(bin, "serve")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return exitCode(supervise(cmd, syscall.SIGTERM))
}

// devToken returns the dev API token kept at path, first making a random one (32 bytes, hex) in
// a file only its owner can read. API_TOKENS set in the environment wins over it.
func devToken(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		// A copy made with a looser umask, or restored from a backup, is tightened again.
		return strings.TrimSpace(string(b)), os.Chmod(path, 0o600)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("making the dev API token: %w", err)
	}
	token := hex.EncodeToString(b[:])
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("keeping the dev API token: %w", err)
	}
	return token, nil
}

// loopback turns a listen address such as :9090 into one to browse to.
func loopback(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// clean stops every server under .run, Jaeger included, and deletes .run (dev data too).
func clean(root string) error {
	jaegers, _ := filepath.Glob(filepath.Join(root, ".run", "*", "jaeger"))
	for _, dir := range jaegers {
		if _, err := jaeger(context.Background(), root, "stop", dir); err != nil {
			return err
		}
	}
	return servers.Clean(filepath.Join(root, ".run"), logw)
}

// supervise runs cmd in its own process group and waits for it. A Ctrl-C at the terminal reaches
// this process, not the group: the first SIGINT or SIGTERM is passed on to the whole group (as
// forward, if set: the service shuts down gracefully on SIGTERM), and a second one kills it.
func supervise(cmd *exec.Cmd, forward syscall.Signal) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for n := 0; ; {
		select {
		case err := <-done:
			return err
		case got := <-sigs:
			n++
			sig := forward
			if sig == 0 {
				sig = got.(syscall.Signal)
			}
			if n > 1 {
				sig = syscall.SIGKILL
			}
			logf("got %v: sending %v to %s", got, sig, filepath.Base(cmd.Path))
			_ = syscall.Kill(-cmd.Process.Pid, sig)
		}
	}
}

func exitCode(err error) (int, error) {
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exit):
		if exit.ExitCode() < 0 {
			return 1, err // killed by a signal
		}
		return exit.ExitCode(), nil
	}
	return 1, err
}

// ensureCgo: go test -race needs cgo, i.e. a C compiler, which minimal images lack; without one
// Go quietly turns cgo off and -race fails with a confusing message.
func ensureCgo() error {
	out, err := exec.Command("go", "env", "CC").Output()
	if err != nil {
		return err
	}
	cc := strings.Fields(string(out))
	name := "gcc"
	if len(cc) > 0 {
		name = cc[0]
	}
	if _, err := exec.LookPath(name); err == nil {
		return nil
	}
	logf("go test -race needs a C compiler (%s) for cgo", name)
	return servers.AptInstall(logw, "gcc", "libc6-dev")
}

// exportServerBinaries tells the tests where the server binaries are and, as root, which user
// runs PostgreSQL, so their private servers start the same way.
func exportServerBinaries() error {
	pg, err := servers.PostgresBinDir()
	if err != nil {
		return err
	}
	redis, err := servers.RedisServer()
	if err != nil {
		return err
	}
	os.Setenv("PG_BINDIR", pg)
	os.Setenv("REDIS_SERVER", redis)
	runAs, err := servers.PostgresUser(logw)
	if err != nil {
		return err
	}
	if runAs != nil {
		os.Setenv("PG_RUN_AS", runAs.Name)
	}
	return nil
}

// jaeger runs hack/jaeger.sh, which builds, starts and stops a local Jaeger v2, and returns what
// it printed.
func jaeger(ctx context.Context, root string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(root, "hack", "jaeger.sh")}, args...)...)
	cmd.Dir, cmd.Stderr = root, os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/jaeger.sh %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// lock takes an exclusive lock on path, so two test runs in one checkout do not wipe each other's
// servers; the kernel drops it if this process dies.
func lock(path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		return nil, fmt.Errorf("another test run (pid %s) is using %s; wait for it, or set TEST_DATABASE_URL and TEST_REDIS_URL",
			strings.TrimSpace(string(holder)), filepath.Join(filepath.Dir(path), "test"))
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { f.Close() }, nil
}

func envPort(name string, def int) int {
	if p, err := strconv.Atoi(os.Getenv(name)); err == nil && p > 0 {
		return p
	}
	return def
}

func report(err error) {
	if err != nil {
		logf("%v", err)
	}
}
