package servers

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Clean stops every server a run left under dir, even one killed without cleaning up (a
// postmaster.pid or redis.pid whose process is still that server), and deletes dir, with any
// cluster home under /var/tmp that a link in it points to.
func Clean(dir string, log io.Writer) error {
	var homes []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // gone meanwhile, or unreadable: RemoveAll has the last word
		}
		if d.Type()&fs.ModeSymlink != 0 {
			if target, err := os.Readlink(path); err == nil && strings.HasPrefix(target, "/var/tmp/cacheside-pg.") {
				homes = append(homes, target)
			}
			return nil
		}
		stopFromPidFile(path, d.Name(), log)
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	for _, home := range homes {
		_ = filepath.WalkDir(home, func(path string, d fs.DirEntry, err error) error {
			if err == nil {
				stopFromPidFile(path, d.Name(), log)
			}
			return nil
		})
		if err := os.RemoveAll(home); err != nil {
			return err
		}
	}
	return os.RemoveAll(dir)
}

func stopFromPidFile(path, name string, log io.Writer) {
	comm, sig := map[string]string{"postmaster.pid": "postgres", "redis.pid": "redis-server"}[name], syscall.SIGINT
	if comm == "" {
		return
	}
	if comm == "redis-server" {
		sig = syscall.SIGTERM
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if pid > 0 && processIs(pid, comm) {
		fmt.Fprintf(log, "stopping the %s left running from %s (pid %d)\n", comm, filepath.Dir(path), pid)
		_ = foundProc(pid).stop(sig, syscall.SIGKILL)
	}
}
