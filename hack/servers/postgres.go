package servers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// The role and database of every cluster: URLs depend on them.
const (
	pgSuperuser = "postgres"
	pgDatabase  = "cacheside"
)

// PostgresOptions configures StartPostgres.
type PostgresOptions struct {
	// Dir is the cluster's home (data/, log, socket); created if missing. A cluster already
	// there is reused (and started if it is not running, or restarted if it runs without
	// wal_level=logical).
	Dir string
	// Port to listen on, on 127.0.0.1; 0 picks a free one.
	Port int
	// Throwaway turns fsync, synchronous_commit and full_page_writes off: much faster, and fine
	// for data nobody keeps.
	Throwaway bool
	// Log receives progress lines; nil discards them.
	Log io.Writer
	// Conf are more postgresql.conf lines, e.g. a test's shared_preload_libraries.
	Conf []string
}

// Postgres is a PostgreSQL cluster run as a local process.
type Postgres struct {
	opts  PostgresOptions
	home  string // Dir, or the directory Dir links to
	bin   string
	runAs *RunAs
	proc  *proc // nil when stopped
	// Adopted is set when StartPostgres found the cluster already running: it is not this
	// process's to stop.
	Adopted bool
}

// StartPostgres initialises (once) and starts a cluster in o.Dir, or finds it running, and waits
// until it accepts connections. A cluster found running with another wal_level than logical is
// restarted, so the settings of writeConf apply.
func StartPostgres(ctx context.Context, o PostgresOptions) (*Postgres, error) {
	if o.Log == nil {
		o.Log = io.Discard
	}
	bin, err := PostgresBinDir()
	if err != nil {
		return nil, err
	}
	runAs, err := PostgresUser(o.Log)
	if err != nil {
		return nil, err
	}
	home, err := prepareHome(o.Dir, runAs, o.Log)
	if err != nil {
		return nil, err
	}
	p := &Postgres{opts: o, home: home, bin: bin, runAs: runAs}

	if pid, port, ok := p.running(); ok {
		if o.Port != 0 && port != o.Port {
			return nil, fmt.Errorf("PostgreSQL in %s already runs on port %d, not %d: stop it first", home, port, o.Port)
		}
		p.proc, p.opts.Port, p.Adopted = foundProc(pid), port, true
		fmt.Fprintf(o.Log, "PostgreSQL already running in %s (pid %d, port %d)\n", home, pid, port)
		level, err := p.walLevel(ctx)
		if err != nil {
			return nil, err
		}
		if level == "logical" {
			return p, nil
		}
		// Started before writeConf asked for logical (an older checkout's make run): wal_level
		// only changes at a restart, and without it no replication slot can be created.
		fmt.Fprintf(o.Log, "PostgreSQL in %s runs with wal_level=%s: restarting it for wal_level=logical\n", home, level)
		if err := p.Stop(); err != nil {
			return nil, fmt.Errorf("stopping PostgreSQL in %s to restart it: %w", home, err)
		}
		p.Adopted = false // the restarted server is this process's
	}
	if p.opts.Port == 0 {
		if p.opts.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	if err := p.matchVersion(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(home, ".initialised")); err != nil {
		if err := p.initialise(); err != nil {
			return nil, err
		}
	}
	if err := p.Start(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// URL is the superuser URL of the cluster's database.
func (p *Postgres) URL() string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", pgSuperuser, p.opts.Port, pgDatabase)
}

// Port is the port the cluster listens on.
func (p *Postgres) Port() int { return p.opts.Port }

// Start (re)starts a stopped cluster on its port and waits until it accepts connections.
func (p *Postgres) Start(ctx context.Context) error {
	if err := p.writeConf(); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(p.home, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(p.opts.Log, "starting PostgreSQL on 127.0.0.1:%d (data %s, log %s)\n", p.opts.Port, p.data(), logf.Name())
	cmd := p.command("postgres", "-D", p.data())
	cmd.Stdout, cmd.Stderr = logf, logf
	pr, err := startProc(cmd)
	if err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	p.proc = pr
	err = waitFor(ctx, 60*time.Second, func() error {
		if !pr.alive() {
			return stop(fmt.Errorf("postgres exited: %v\n%s", pr.err, tail(filepath.Join(p.home, "log"))))
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		conn, err := pgx.Connect(cctx, p.URL())
		if err != nil {
			return err
		}
		return conn.Close(cctx)
	})
	if err != nil {
		_ = p.Stop()
		return fmt.Errorf("PostgreSQL did not become ready: %w", err)
	}
	return nil
}

// walLevel asks a running cluster for its wal_level, waiting until it accepts connections (it
// may still be starting).
func (p *Postgres) walLevel(ctx context.Context) (string, error) {
	var level string
	err := waitFor(ctx, 60*time.Second, func() error {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		conn, err := pgx.Connect(cctx, p.URL())
		if err != nil {
			return err
		}
		defer conn.Close(cctx)
		return conn.QueryRow(cctx, "SHOW wal_level").Scan(&level)
	})
	if err != nil {
		return "", fmt.Errorf("reading wal_level of the PostgreSQL running in %s: %w", p.home, err)
	}
	return level, nil
}

// Stop shuts the cluster down (fast: sessions are rolled back) and waits for it to exit.
func (p *Postgres) Stop() error {
	if p.proc == nil {
		return nil
	}
	p.proc.resume()                                     // frozen backends cannot roll back
	err := p.proc.stop(syscall.SIGINT, syscall.SIGQUIT) // then immediate shutdown
	p.proc = nil
	return err
}

// Pause freezes the postmaster and every backend (SIGSTOP): open connections get no answer,
// and new ones are accepted by the kernel but never served, as with a server that hangs.
func (p *Postgres) Pause() {
	if p.proc != nil {
		p.proc.pause()
	}
}

// Resume undoes Pause.
func (p *Postgres) Resume() {
	if p.proc != nil {
		p.proc.resume()
	}
}

// Destroy stops the cluster and deletes it.
func (p *Postgres) Destroy() error {
	if err := p.Stop(); err != nil {
		return err
	}
	if target, err := filepath.EvalSymlinks(p.opts.Dir); err == nil && target != p.opts.Dir &&
		strings.HasPrefix(target, "/var/tmp/cacheside-pg.") {
		_ = os.RemoveAll(target) // only ever a target prepareHome made
	}
	return os.RemoveAll(p.opts.Dir)
}

func (p *Postgres) data() string { return filepath.Join(p.home, "data") }

// command runs a PostgreSQL binary as the server's user, from /, where that user can read.
func (p *Postgres) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(p.bin, name), args...)
	cmd.SysProcAttr = p.runAs.credential(syscall.SIGINT) // fast shutdown
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd
}

// running reads postmaster.pid: the cluster is running if its process is a live postgres.
func (p *Postgres) running() (pid, port int, ok bool) {
	b, err := os.ReadFile(filepath.Join(p.data(), "postmaster.pid"))
	if err != nil {
		return 0, 0, false
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 4 {
		return 0, 0, false
	}
	pid, _ = strconv.Atoi(strings.TrimSpace(lines[0]))
	port, _ = strconv.Atoi(strings.TrimSpace(lines[3]))
	return pid, port, pid > 0 && processIs(pid, "postgres")
}

// matchVersion picks the binaries of the major version that made an existing cluster (Debian
// installs versions side by side); a cluster of another version cannot be started.
func (p *Postgres) matchVersion() error {
	b, err := os.ReadFile(filepath.Join(p.data(), "PG_VERSION"))
	if err != nil {
		return nil
	}
	want := strings.TrimSpace(string(b))
	out, err := exec.Command(filepath.Join(p.bin, "postgres"), "--version").Output()
	if err != nil {
		return err
	}
	// "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"
	fields := strings.Fields(string(out))
	have := ""
	if len(fields) >= 3 {
		have, _, _ = strings.Cut(fields[2], ".")
	}
	if have == want {
		return nil
	}
	if other := "/usr/lib/postgresql/" + want + "/bin"; isPGBinDir(other) {
		p.bin = other
		return nil
	}
	return fmt.Errorf("%s was made by PostgreSQL %s, but %s is %s: delete it (make clean) to start afresh", p.home, want, p.bin, have)
}

// initialise runs initdb and creates the database, once.
func (p *Postgres) initialise() error {
	fmt.Fprintf(p.opts.Log, "initialising a PostgreSQL cluster in %s\n", p.data())
	_ = os.RemoveAll(p.data()) // a half-made data directory from an interrupted init holds nothing
	logPath := filepath.Join(p.home, "log")
	args := []string{"-D", p.data(), "-U", pgSuperuser, "--auth=trust", "--encoding=UTF8", "--no-locale"}
	if p.opts.Throwaway {
		args = append(args, "--no-sync")
	}
	if out, err := p.command("initdb", args...).CombinedOutput(); err != nil {
		_ = os.WriteFile(logPath, out, 0o644)
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	conf, err := os.OpenFile(filepath.Join(p.data(), "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(conf, "\n# Added by hack/servers\ninclude_if_exists = 'cacheside.conf'\n")
	if cerr := conf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	// In single-user mode: no server, port or socket needed yet, and no psql. It exits 0 even
	// when the statement fails, so its output is read too.
	single := p.command("postgres", "--single", "-D", p.data(), "template1")
	single.Stdin = strings.NewReader("CREATE DATABASE " + pgDatabase + ";\n")
	out, err := single.CombinedOutput()
	if err != nil || strings.Contains(string(out), "ERROR:") {
		return fmt.Errorf("creating database %s: %v\n%s", pgDatabase, err, out)
	}
	return os.WriteFile(filepath.Join(p.home, ".initialised"), nil, 0o644)
}

// writeConf writes the settings applied at every start, so the port or durability may change.
func (p *Postgres) writeConf() error {
	durable := "on"
	if p.opts.Throwaway {
		durable = "off"
	}
	// A unix socket path is limited to 107 bytes; nothing here needs the socket (clients use
	// TCP), so a deep checkout goes TCP-only.
	sockets := p.home
	if len(p.home)+len(strconv.Itoa(p.opts.Port))+13 > 107 {
		sockets = ""
	}
	conf := fmt.Sprintf(`# Written by hack/servers at every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
# Tests create a database per test and run packages in parallel.
max_connections = 200
# A small footprint for a 2-core laptop or CI machine.
shared_buffers = 64MB
work_mem = 4MB
maintenance_work_mem = 32MB
max_worker_processes = 4
max_parallel_workers = 2
max_parallel_workers_per_gather = 1
max_wal_size = 256MB
min_wal_size = 32MB
# The service follows its database through a logical replication slot (pgoutput). Each test
# creates its own database and each service under test its own slot in it, with a walsender
# while it streams: 100 of each covers the packages run in parallel. Walsenders do not count
# against max_connections (PostgreSQL 12 and later).
wal_level = logical
max_replication_slots = 100
max_wal_senders = 100
# A slot nobody reads (its test was killed before cleaning up) holds WAL back: past this much
# PostgreSQL invalidates it instead of filling the disk.
max_slot_wal_keep_size = 1GB
fsync = %s
synchronous_commit = %s
full_page_writes = %s
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%%m [%%p] %%q%%u@%%d '
`, p.opts.Port, strings.ReplaceAll(sockets, "'", "''"), durable, durable, durable)
	if len(p.opts.Conf) > 0 {
		conf += "# Asked for by the caller.\n" + strings.Join(p.opts.Conf, "\n") + "\n"
	}
	path := filepath.Join(p.data(), "cacheside.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return err
	}
	return p.runAs.chown(path)
}

// prepareHome creates dir and returns the directory the cluster really lives in: dir itself, or,
// when the server's user cannot reach dir (a checkout under /root, mode 700), a directory under
// /var/tmp that dir is made a link to.
func prepareHome(dir string, runAs *RunAs, log io.Writer) (string, error) {
	if target, err := os.Readlink(dir); err == nil {
		if st, err := os.Stat(target); err == nil && st.IsDir() {
			return target, nil
		}
		_ = os.Remove(dir) // the target vanished (cleaned up, a reboot): start afresh
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	home, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if runAs == nil {
		return home, nil
	}
	if err := runAs.chown(home); err != nil {
		return "", err
	}
	if err := os.Chmod(home, 0o700); err != nil {
		return "", err
	}
	probe := exec.Command("test", "-w", home, "-a", "-x", home)
	probe.SysProcAttr = runAs.credential(0)
	probe.Dir = "/"
	if probe.Run() == nil {
		return home, nil
	}
	if entries, _ := os.ReadDir(home); len(entries) > 0 {
		return "", fmt.Errorf("user %s cannot reach %s (check its parents' permissions), and it is not empty", runAs.Name, home)
	}
	if err := os.Remove(home); err != nil {
		return "", err
	}
	target, err := os.MkdirTemp("/var/tmp", "cacheside-pg.")
	if err != nil {
		return "", err
	}
	if err := runAs.chown(target); err != nil {
		return "", err
	}
	if err := os.Symlink(target, home); err != nil {
		return "", err
	}
	fmt.Fprintf(log, "user %s cannot reach %s: keeping the cluster in %s\n", runAs.Name, filepath.Dir(home), target)
	return target, nil
}

// tail is the end of a log, for error messages: in CI nobody can look at the file afterwards.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-25):], "\n")
}

// errStop ends waitFor at once.
type errStop struct{ error }

func stop(err error) error { return errStop{err} }

// waitFor polls cond until it returns nil, within timeout; an error made by stop ends it early.
func waitFor(ctx context.Context, timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		var final errStop
		switch {
		case err == nil:
			return nil
		case errors.As(err, &final):
			return final.error
		case time.Now().After(deadline):
			return fmt.Errorf("after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
