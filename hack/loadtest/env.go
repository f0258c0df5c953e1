package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/cacheside/cacheside/hack/servers"
)

// environment is what the benchmark runs against: the service binary, PostgreSQL and Redis, the
// schema migrated. It starts what the caller's environment does not provide (DATABASE_URL,
// REDIS_URL) under .run/loadtest, and close stops it again.
type environment struct {
	stderr io.Writer
	runDir string   // .run/loadtest, deleted by close when anything was started in it
	lock   *os.File // held while the servers of runDir are this run's
	pg     *servers.Postgres
	redis  *servers.Redis
}

// setUp finds the checkout, resolves o's paths against it, builds the service unless -bin names
// one, starts PostgreSQL and Redis unless DATABASE_URL and REDIS_URL are set, and migrates.
// DATABASE_URL and REDIS_URL are set in this process's environment, which every cacheside it
// starts inherits. On an error, what it started is stopped again.
func setUp(ctx context.Context, o *options, stderr io.Writer) (_ *environment, err error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	o.root = root
	if !filepath.IsAbs(o.out) {
		o.out = filepath.Join(root, o.out)
	}
	if o.bin == "" {
		o.bin = filepath.Join(root, ".run", "bin", "cacheside")
		fmt.Fprintf(stderr, "loadtest: building cacheside (go build -o %s ./app)\n", rel(root, o.bin))
		build := exec.CommandContext(ctx, "go", "build", "-o", o.bin, "./app")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("building cacheside: %w\n%s", err, out)
		}
	} else if !filepath.IsAbs(o.bin) {
		o.bin = filepath.Join(root, o.bin)
	}

	env := &environment{stderr: stderr, runDir: filepath.Join(root, ".run", "loadtest")}
	defer func() {
		if err != nil {
			if cerr := env.close(); cerr != nil {
				fmt.Fprintf(stderr, "loadtest: %v\n", cerr)
			}
		}
	}()
	databaseURL, redisURL := os.Getenv("DATABASE_URL"), os.Getenv("REDIS_URL")
	if databaseURL == "" || redisURL == "" {
		if err := env.claim(); err != nil {
			return nil, err
		}
		if err := servers.Ensure(stderr); err != nil {
			return nil, err
		}
	}
	if databaseURL == "" {
		env.pg, err = servers.StartPostgres(ctx, servers.PostgresOptions{
			Dir: filepath.Join(env.runDir, "pg"), Throwaway: true, Log: prefixed(stderr),
		})
		if err != nil {
			return nil, fmt.Errorf("starting PostgreSQL: %w", err)
		}
		databaseURL = env.pg.URL()
	}
	if redisURL == "" {
		env.redis, err = servers.StartRedis(ctx, servers.RedisOptions{Dir: filepath.Join(env.runDir, "redis"), Log: prefixed(stderr)})
		if err != nil {
			return nil, fmt.Errorf("starting Redis: %w", err)
		}
		redisURL = env.redis.URL()
	}
	if err := os.Setenv("DATABASE_URL", databaseURL); err != nil {
		return nil, err
	}
	if err := os.Setenv("REDIS_URL", redisURL); err != nil {
		return nil, err
	}
	// serve refuses to start without API tokens. The load test only reads, so the token is never
	// sent; it is a random one, as a deployment's would be, and API_TOKENS set by the caller wins.
	if os.Getenv("API_TOKENS") == "" {
		var b [32]byte
		_, _ = rand.Read(b[:])
		if err := os.Setenv("API_TOKENS", hex.EncodeToString(b[:])); err != nil {
			return nil, err
		}
	}

	migrate := exec.CommandContext(ctx, o.bin, "migrate")
	migrate.Env = append(os.Environ(), "LOG_LEVEL=warn")
	migrate.Stdout, migrate.Stderr = stderr, stderr
	if err := migrate.Run(); err != nil {
		return nil, fmt.Errorf("%s migrate: %w", rel(root, o.bin), err)
	}
	return env, nil
}

// claim makes runDir this run's: another load test running in the same checkout holds the lock
// and is left alone; servers still running there without one were left by a run that was killed
// (kill -9) before it could stop them, and are stopped or reused.
func (e *environment) claim() error {
	if err := os.MkdirAll(filepath.Dir(e.runDir), 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(e.runDir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("another load test is running in this checkout (it holds %s); wait for it or stop it", e.runDir+".lock")
		}
		return fmt.Errorf("locking %s: %w", e.runDir+".lock", err)
	}
	e.lock = lock
	// Holding the lock, anything left in runDir was left by a run killed before it could stop
	// its servers (kill -9): stop them and start afresh.
	return servers.Clean(e.runDir, prefixed(e.stderr))
}

// close stops Redis and PostgreSQL (deleting the cluster) if this run started them, then the
// rest of .run/loadtest. It is safe to call more than once.
func (e *environment) close() error {
	var errs []error
	if e.redis != nil {
		if err := e.redis.Kill(); err != nil {
			errs = append(errs, fmt.Errorf("stopping Redis: %w", err))
		}
		e.redis = nil
	}
	if e.pg != nil {
		if err := e.pg.Destroy(); err != nil {
			errs = append(errs, fmt.Errorf("stopping PostgreSQL: %w", err))
		}
		e.pg = nil
	}
	if e.lock != nil {
		if len(errs) == 0 {
			if err := os.RemoveAll(e.runDir); err != nil {
				errs = append(errs, err)
			}
		}
		e.lock.Close() // the lock file stays: removing it would race with a run waiting on it
		e.lock = nil
	}
	return errors.Join(errs...)
}

// repoRoot is the checkout this tool module lives in: two levels up from its go.mod (go env GOMOD
// in hack/loadtest), or the directory of the service's go.mod when run from the root.
func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := filepath.Dir(strings.TrimSpace(string(out)))
	for _, root := range []string{filepath.Join(mod, "..", ".."), mod} {
		b, err := os.ReadFile(filepath.Join(root, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), "module github.com/cacheside/cacheside\n") {
			return filepath.Abs(root)
		}
	}
	return "", errors.New("run the load test in a cacheside checkout: make loadtest, or go run . in hack/loadtest")
}

// rel is path as the repository root sees it, for messages.
func rel(root, path string) string {
	if r, err := filepath.Rel(root, path); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return path
}

// prefixed marks the servers' progress lines as this program's.
func prefixed(w io.Writer) io.Writer { return &lineLog{prefix: "loadtest: ", out: w} }
