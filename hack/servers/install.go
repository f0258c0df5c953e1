// Package servers runs PostgreSQL and Redis (standalone, Sentinel, Cluster) as plain local
// processes, without Docker and without system services: for make run, make test, the tests'
// fault injection, the load test and the soak. It is the one place that knows how to find,
// install, initialise, start, freeze, restart and stop them.
//
// PostgreSQL refuses to run as root; as root it is run as an unprivileged user (PG_RUN_AS, else
// "postgres" if it exists, else a system user "cacheside" created on demand).
package servers

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Ensure finds the PostgreSQL server binaries and redis-server, installing Debian's postgresql
// and redis-server packages when they are missing and this process may (root, or passwordless
// sudo); otherwise it says what to run. Installing postgresql also creates a system cluster,
// which is never used.
func Ensure(log io.Writer) error {
	var missing []string
	if _, err := PostgresBinDir(); err != nil {
		missing = append(missing, "postgresql")
	}
	if _, err := RedisServer(); err != nil {
		missing = append(missing, "redis-server")
	}
	if len(missing) == 0 {
		return nil
	}
	if err := AptInstall(log, missing...); err != nil {
		return err
	}
	if _, err := PostgresBinDir(); err != nil {
		return fmt.Errorf("after installing: %w", err)
	}
	_, err := RedisServer()
	return err
}

// AptInstall installs Debian/Ubuntu packages, as root or with passwordless sudo.
func AptInstall(log io.Writer, pkgs ...string) error {
	cmdline := "apt-get update && apt-get install -y --no-install-recommends " + strings.Join(pkgs, " ")
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("missing %s, and this is not a Debian or Ubuntu system: install the equivalent packages "+
			"(or set PG_BINDIR to the directory of initdb, pg_ctl and postgres, and REDIS_SERVER to redis-server)", strings.Join(pkgs, ", "))
	}
	var sudo []string
	if os.Geteuid() != 0 {
		if exec.Command("sudo", "-n", "true").Run() != nil {
			return fmt.Errorf("missing %s; install them with:\n    sudo sh -c '%s'", strings.Join(pkgs, ", "), cmdline)
		}
		sudo = []string{"sudo", "-n"}
	}
	fmt.Fprintf(log, "installing %s (%s)\n", strings.Join(pkgs, " "), cmdline)
	for _, args := range [][]string{
		{"apt-get", "update", "-q"},
		append([]string{"apt-get", "install", "-y", "-q", "--no-install-recommends"}, pkgs...),
	} {
		args = append(append(sudo[:len(sudo):len(sudo)], "env", "DEBIAN_FRONTEND=noninteractive"), args...)
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdout, cmd.Stderr = log, log // no stdin: nothing may prompt
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s: %w", strings.Join(args, " "), err)
		}
	}
	return nil
}

// PostgresBinDir is the directory holding initdb, pg_ctl and postgres: $PG_BINDIR, else the
// newest of Debian's /usr/lib/postgresql/*/bin, else where initdb on PATH really lives.
func PostgresBinDir() (string, error) {
	if d := os.Getenv("PG_BINDIR"); d != "" && isPGBinDir(d) {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return majorOf(dirs[i]) > majorOf(dirs[j]) })
	for _, d := range dirs {
		if isPGBinDir(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil && isPGBinDir(filepath.Dir(real)) {
			return filepath.Dir(real), nil
		}
		if isPGBinDir(filepath.Dir(p)) {
			return filepath.Dir(p), nil
		}
	}
	return "", errors.New("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install Debian's postgresql package or set PG_BINDIR")
}

func majorOf(bindir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(bindir)))
	return n
}

func isPGBinDir(d string) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		if st, err := os.Stat(filepath.Join(d, name)); err != nil || st.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// RedisServer is the redis-server binary: $REDIS_SERVER, else on PATH or in the usual places
// (/usr/sbin is often missing from a non-root PATH).
func RedisServer() (string, error) {
	candidates := []string{os.Getenv("REDIS_SERVER")}
	if p, err := exec.LookPath("redis-server"); err == nil {
		candidates = append(candidates, p)
	}
	candidates = append(candidates, "/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server")
	for _, p := range candidates {
		if st, err := os.Stat(p); p != "" && err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New("redis-server not found: install Debian's redis-server package or set REDIS_SERVER")
}

// RunAs is the unprivileged user PostgreSQL runs as when this process is root.
type RunAs struct {
	Name     string
	UID, GID int
}

// PostgresUser returns the user to run PostgreSQL as, or nil when not root: $PG_RUN_AS, else
// "postgres" if it exists, else "cacheside", created as a system user if needed.
func PostgresUser(log io.Writer) (*RunAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	name := os.Getenv("PG_RUN_AS")
	if name == "" {
		name = "cacheside"
		if _, err := user.Lookup("postgres"); err == nil {
			name = "postgres"
		}
	}
	u, err := user.Lookup(name)
	if err != nil && name == "cacheside" {
		fmt.Fprintf(log, "creating system user %s to run PostgreSQL (it refuses to run as root)\n", name)
		out, cerr := exec.Command("useradd", "--system", "--user-group", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name).CombinedOutput()
		if u, err = user.Lookup(name); err != nil { // a concurrent run may have made it first
			return nil, fmt.Errorf("creating user %s: %v: %s", name, cerr, out)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL cannot run as root and there is no user %q to run it as: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &RunAs{Name: name, UID: uid, GID: gid}, nil
}

// credential runs a command as r (nil: as ourselves), in its own process group (a Ctrl-C aimed
// at us does not hit it), sent deathsig if we die without stopping it (0: it outlives us).
func (r *RunAs) credential(deathsig syscall.Signal) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setpgid: true}
	if r != nil {
		attr.Credential = &syscall.Credential{Uid: uint32(r.UID), Gid: uint32(r.GID)}
	}
	if deathsig != 0 {
		attr = DiesWithParent(attr, deathsig)
	}
	return attr
}

func (r *RunAs) chown(path string) error {
	if r == nil {
		return nil
	}
	return os.Chown(path, r.UID, r.GID)
}
